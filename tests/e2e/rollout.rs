//! One service on five hosts: upgrades in batches, a version that fails in
//! the second batch rolled back everywhere, a `tend apply` SIGKILLed
//! mid-rollout that resumes, and a host selector gaining and losing a host.
//! A sampler outside the hosts asks every instance for `/health` all along
//! and counts how many do not answer at once.

use super::apply::{converge, desired, httpd, pool, ROOT};
use super::common::checks::{all_records, cgroup_procs, httpds};
use super::common::{fast_opts, fleet, hosts_yaml, run, tend_bin};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tend::apply::ActionOutcome;
use tend::model::{Rollout, Share};
use tend::plan::ActionKind;
use tend_e2e::testbed::Fleet;

const PORT: u16 = 19801;
/// The killed-rollout test's port (tests run at once; `httpds` counts
/// machine-wide).
const KPORT: u16 = 19811;

/// Whether `GET /health` answers 200 within a second.
fn serving(addr: SocketAddr) -> bool {
    let t = Duration::from_secs(1);
    let Ok(mut s) = TcpStream::connect_timeout(&addr, t) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(t));
    let _ = s.set_write_timeout(Some(t));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Samples every instance from outside until dropped: the most found down
/// at once, and how many samples were taken.
struct Sampler {
    stop: Arc<AtomicBool>,
    worst: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(f: &Fleet, port: u16) -> Sampler {
        let addrs: Vec<SocketAddr> = f
            .hosts()
            .iter()
            .map(|h| format!("{}:{port}", h.ip).parse().expect("address"))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(AtomicUsize::new(0));
        let (s, w, n) = (stop.clone(), worst.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let down = std::thread::scope(|sc| {
                    let hs: Vec<_> = addrs
                        .iter()
                        .map(|a| sc.spawn(move || !serving(*a)))
                        .collect();
                    hs.into_iter()
                        .map(|h| h.join().unwrap_or(true))
                        .filter(|down| *down)
                        .count()
                });
                w.fetch_max(down, Ordering::SeqCst);
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            worst,
            samples,
            thread: Some(thread),
        }
    }

    /// (most instances down at once, samples taken)
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.worst.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

fn body(version: &str) -> String {
    format!("rweb {version}\n")
}

fn answers(f: &Fleet, i: usize) -> Option<String> {
    answers_on(f, PORT, i)
}

fn answers_on(f: &Fleet, port: u16, i: usize) -> Option<String> {
    super::apply::get(f.host(i), port, "/health")
}

#[tokio::test(flavor = "multi_thread")]
async fn five_instances_upgrade_in_batches_and_a_version_failing_in_the_second_batch_is_rolled_back_everywhere(
) {
    let Some(f) = fleet("five_instances_upgrade_in_batches", 5) else {
        return;
    };
    let names: Vec<String> = f.hosts().iter().map(|h| h.name.clone()).collect();
    let web = |version: &str| {
        let mut s = httpd("rweb", &names[0], PORT, version, &body(version));
        s.hosts = names.clone();
        s.rollout = Rollout {
            max_unavailable: Share::Count(2),
            ..Rollout::default()
        };
        s
    };
    let pool = pool();
    let opts = fast_opts();

    // From empty: every instance is a repair, all at once.
    let r = converge(&pool, &desired(&f, vec![web("1")]), &opts).await;
    assert!(r.converged(), "{:#?}", r.actions);
    for i in 0..5 {
        assert_eq!(answers(&f, i).as_deref(), Some("rweb 1\n"), "host {i}");
    }

    // 1 → 2: batches of two, never more than two down.
    let sampler = Sampler::start(&f, PORT);
    let r = converge(&pool, &desired(&f, vec![web("2")]), &opts).await;
    let (worst, samples) = sampler.finish();
    assert!(r.converged(), "{:#?}", r.actions);
    let batches = &r.plan.rollouts[0].batches;
    assert_eq!(
        batches,
        &vec![
            vec![names[0].clone(), names[1].clone()],
            vec![names[2].clone(), names[3].clone()],
            vec![names[4].clone()],
        ]
    );
    println!("1 → 2: at most {worst} of 5 down over {samples} samples");
    assert!(samples > 0);
    assert!(worst <= 2, "{worst} instances down at once");
    for i in 0..5 {
        assert_eq!(answers(&f, i).as_deref(), Some("rweb 2\n"), "host {i}");
    }

    // 2 → 3, where 3 never listens on host2 (second batch).
    f.host(2).exec_ok("touch /srv/refuse").unwrap();
    let mut v3 = web("3");
    v3.command = [
        "sh",
        "-c",
        "test -e /srv/refuse && exec sleep 1000; exec busybox httpd -f -p 19801 -h www",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let d3 = desired(&f, vec![v3]);
    let sampler = Sampler::start(&f, PORT);
    let r = converge(&pool, &d3, &opts).await;
    let (worst, samples) = sampler.finish();
    println!("2 → 3: at most {worst} of 5 down over {samples} samples");
    assert!(worst <= 2, "{worst} instances down at once");
    let by_host = |h: &str, kind: ActionKind| {
        r.actions
            .iter()
            .filter(|a| a.action.host == h && a.action.kind == kind)
            .map(|a| a.outcome.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by_host(&names[0], ActionKind::Upgrade),
        vec![ActionOutcome::Succeeded]
    );
    assert!(matches!(
        by_host(&names[2], ActionKind::Upgrade).as_slice(),
        [ActionOutcome::RolledBack(_)]
    ));
    // host3, beside host2 in the second batch, passed; host4 never started.
    assert_eq!(
        by_host(&names[3], ActionKind::Upgrade),
        vec![ActionOutcome::Succeeded]
    );
    assert!(
        matches!(
            by_host(&names[4], ActionKind::Upgrade).as_slice(),
            [ActionOutcome::Skipped(_)]
        ),
        "{:#?}",
        r.actions
    );
    // Every instance that had 3 taken back to 2, in batches.
    for h in [&names[0], &names[1], &names[3]] {
        assert_eq!(
            by_host(h, ActionKind::Rollback),
            vec![ActionOutcome::Succeeded],
            "{h}: {:#?}",
            r.actions
        );
    }
    for i in 0..5 {
        assert_eq!(answers(&f, i).as_deref(), Some("rweb 2\n"), "host {i}");
        let rec = &all_records(f.host(i), ROOT)["rweb"];
        assert_eq!(rec.version, "2", "host {i}");
    }
    assert_eq!(httpds(f.host(0), PORT), 5, "one httpd per host");

    // The next plan is halted, not retried.
    let p = tend::apply::preview(&d3, &pool, &opts).await;
    assert!(p.actions.is_empty(), "{:#?}", p.actions);
    let why = p.rollouts[0].halted.clone().unwrap_or_default();
    assert!(
        why.contains("failed its health check (rolled back on "),
        "{why}"
    );
    assert!(why.contains(&names[2]), "{why}");
}

/// The manifests: hosts labelled `role: web` where `web[i]`, `rweb` on
/// them by selector, and `side` on host0 so host0 keeps a service.
fn write(dir: &Path, f: &Fleet, web: &[bool], version: &str) {
    let mut y = String::new();
    for (i, doc) in hosts_yaml(f)
        .split("---\n")
        .filter(|d| !d.is_empty())
        .enumerate()
    {
        let doc = if web[i] {
            doc.replacen(
                "metadata: {name: ",
                "metadata: {labels: {role: web}, name: ",
                1,
            )
        } else {
            doc.to_string()
        };
        y.push_str(&doc);
        y.push_str("---\n");
    }
    for (name, placement, port) in [
        ("rweb", "hostSelector: {role: web}", KPORT),
        (
            "side",
            &format!("host: {}", f.host(0).name) as &str,
            KPORT + 1,
        ),
    ] {
        let src = dir.join("services").join(name).join("www");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("health"), format!("{name} {version}\n")).unwrap();
        y.push_str(&format!(
            "apiVersion: tend/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  {placement}\n  rollout: {{maxUnavailable: 2}}\n  runtime: process\n  version: \"{version}\"\n  source: {{path: services/{name}}}\n  install: [\"sleep 1\"]\n  command: [busybox, httpd, -f, -p, \"{port}\", -h, www]\n  ports: [{port}]\n  memory: 32MiB\n  health: {{http: {{port: {port}, path: /health}}, interval: 300ms, timeout: 2s, retries: 10}}\n---\n"
        ));
    }
    std::fs::write(dir.join("fleet.yaml"), y).unwrap();
}

fn apply(bin: &Path, dir: &Path, extra: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(bin);
    cmd.arg("apply").arg(dir).arg("--yes").args(extra);
    cmd.stdin(Stdio::null());
    run(&mut cmd)
}

#[test]
fn a_rollout_killed_mid_way_resumes_and_a_selector_gains_and_loses_hosts() {
    let Some(f) = fleet("a_rollout_killed_mid_way_resumes", 5) else {
        return;
    };
    let bin = tend_bin();
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = f.hosts().iter().map(|h| h.name.clone()).collect();

    // rweb on host0..host3 (labelled), not host4.
    let mut web = [true, true, true, true, false];
    write(dir.path(), &f, &web, "1");
    let (code, text) = apply(&bin, dir.path(), &[]);
    assert_eq!(code, 0, "{text}");

    // 1 → 2, SIGKILLed once the second batch started.
    write(dir.path(), &f, &web, "2");
    let sampler = Sampler::start(&f, KPORT);
    let mut child = Command::new(&bin)
        .arg("apply")
        .arg(dir.path())
        .arg("--yes")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tend apply starts");
    let second = format!("{}: rweb: upgrade started", names[2]);
    let mut seen = Vec::new();
    for l in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let stop = l == second;
        seen.push(l);
        if stop {
            break;
        }
    }
    // SAFETY: kill(2) on our own child's pid (not yet reaped).
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert_eq!(seen.last(), Some(&second), "{seen:#?}");
    let batch1: Vec<String> = seen
        .iter()
        .filter(|l| l.contains("rweb: upgrade succeeded"))
        .cloned()
        .collect();
    assert_eq!(batch1.len(), 2, "the first batch finished first: {seen:#?}");

    // The rerun resumes: the first batch is not touched again.
    let (code, text) = apply(&bin, dir.path(), &[]);
    let (worst, samples) = sampler.finish();
    println!("killed and resumed: at most {worst} of 4 down over {samples} samples\n{text}");
    assert_eq!(code, 0, "{text}");
    for h in &names[..2] {
        assert!(
            !text.contains(&format!("{h}: rweb: upgrade")),
            "{h} upgraded twice:\n{text}"
        );
    }
    // host4 has no rweb, so it counts as down in every sample: 1 + 2.
    assert!(worst <= 3, "{worst} down at once (host4 never runs rweb)");
    for (i, h) in f.hosts().iter().enumerate().take(4) {
        assert_eq!(all_records(h, ROOT)["rweb"].version, "2", "host {i}");
        assert_eq!(cgroup_procs(h, ROOT, "rweb"), 1, "host {i}");
        assert_eq!(
            answers_on(&f, KPORT, i).as_deref(),
            Some("rweb 2\n"),
            "host {i}"
        );
    }

    // host4 labelled: it gets its instance on the next run.
    web[4] = true;
    write(dir.path(), &f, &web, "2");
    let (code, text) = apply(&bin, dir.path(), &[]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("{}: rweb: start succeeded", names[4])),
        "{text}"
    );
    assert_eq!(answers_on(&f, KPORT, 4).as_deref(), Some("rweb 2\n"));

    // host0 un-labelled: its instance is pruned (under the prune guard:
    // refused without --prune).
    web[0] = false;
    write(dir.path(), &f, &web, "2");
    let (_, text) = apply(&bin, dir.path(), &[]);
    assert!(text.contains("pruning is off"), "{text}");
    assert!(all_records(f.host(0), ROOT).contains_key("rweb"));
    let (code, text) = apply(&bin, dir.path(), &["--prune"]);
    assert_eq!(code, 0, "{text}");
    assert!(!all_records(f.host(0), ROOT).contains_key("rweb"), "{text}");
    assert_eq!(answers_on(&f, KPORT, 0), None);
    assert!(all_records(f.host(0), ROOT).contains_key("side"));
    for i in 1..5 {
        assert_eq!(
            answers_on(&f, KPORT, i).as_deref(),
            Some("rweb 2\n"),
            "host {i}"
        );
    }
    let (code, text) = apply(&bin, dir.path(), &["--dry-run"]);
    assert_eq!(code, 0, "{text}");
}
