//! The seed fleet (`manifests/seed`) converged on replicas of its two clouds:
//! a VM like `aliyun` (2 vCPU, 2 GiB: the instance size whose MemTotal is the
//! seed's 1.8 GiB capacity) and one like `tencent` (2 vCPU, this machine's
//! cores, 4 GiB for the 3.6 GiB capacity), Debian 12 booted from the cached
//! image, reached over ssh with their real host keys pinned.
//!
//! The manifests are a copy of `manifests/seed`, with exactly these changes:
//! - Hosts: `address` → 127.0.0.1 plus the VM's forwarded `port`, `identity`
//!   and `hostKeys` → the VM's; tencent's `user: deploy` → `root` (the VM has
//!   only root's key). Labels and `capacity` are unchanged.
//! - `fromFile: /etc/tend/secrets/…` → the same file names in a temp dir;
//!   the two `fromEnv` variables are set for the tend process. The `fromAge`
//!   values are the seed's, decrypted with its test-only key.
//! - The six podman databases: `image:` → `rootfs:/srv/standin` (no
//!   registry here), and `command:` → busybox httpd on each declared port
//!   under a `sh` that traps TERM; the rootfs serves the paths of the
//!   seed's http health checks (`/`, `/_cluster/health`,
//!   `/v1/.well-known/ready`). Env, ports, memory, health are unchanged.
//! - The three systemd databases: `command:` → busybox httpd on the port
//!   (mysqld, postgres, redis-server are not installed on the VM).
//! - The five apps: their `source` dirs hold stand-ins (a shell script
//!   that serves `/health` on the declared port with busybox httpd, idles
//!   as zervigo-shared's worker and answers its `worker.py --check`). The
//!   `install:` steps (go build; python venv + pip, which need a network)
//!   are replaced: zervigo-auth's is dropped (the stand-in ships as
//!   `./zervigo-auth`), the python ones become one step that puts the
//!   stand-in at `.venv/bin/python` (tend never ships a `.venv`). Commands,
//!   env, ports, memory, health and `dependsOn` are unchanged.
//!
//! Every stand-in (container, systemd unit, app) runs `hold` beside its
//! server: it keeps half of its cgroup's `memory.max` written, so the VMs
//! carry half the declared footprint (aliyun 736 of 1472 MiB, tencent 1072
//! of 2144 MiB) on top of the budget check as tend computes it (declared
//! limits against capacity, and the observed MemTotal).
//!
//! After `tend apply`, the same manifests are committed to a Git repository
//! and `tend run` follows it: its first reconcile finds nothing to do (a
//! release from Git is the release from the directory), then a commit that
//! upgrades ai-service-1 and raises tencent-redis's memory limit is
//! converged on a trigger, and nothing else is restarted.

use super::common::http::{free_port, http, post_as};
use super::common::repo::{git, service, Controller, Repo, NEVER, TOKEN};
use super::common::tend_bin;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tend_e2e::testbed::{skip_unless_vm, VmHost, VmOptions};

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/seed");
const STANDIN: &str = "/srv/standin";

/// Replace `from` (which must occur exactly `n` times) with `to`.
fn swap(text: &mut String, from: &str, to: &str, n: usize) {
    let found = text.matches(from).count();
    assert_eq!(
        found, n,
        "{from:?} occurs {found} times in the seed, not {n}"
    );
    *text = text.replace(from, to);
}

/// A container command: the memory holder and busybox httpd on each port,
/// under a `sh` that stops them on TERM (a PID 1 without a handler holds a
/// shutdown for 90 s).
fn container_command(ports: &[u16]) -> String {
    let mut sh = String::from("/bin/hold & h=$!; ");
    for (i, p) in ports.iter().enumerate() {
        sh.push_str(&format!("httpd -f -p {p} -h /www & p{i}=$!; "));
    }
    let pids: Vec<String> = (0..ports.len()).map(|i| format!("$p{i}")).collect();
    sh.push_str(&format!(
        "trap \"kill $h {}; exit 0\" TERM; wait $p0",
        pids.join(" ")
    ));
    format!("command: [/bin/sh, -c, '{sh}']")
}

/// A systemd database: the memory holder beside busybox httpd on the port.
fn host_command(port: u16) -> String {
    format!(
        "command: [/bin/sh, -c, '{STANDIN}/bin/hold & exec /bin/busybox httpd -f -p {port} -h {STANDIN}/www']"
    )
}

/// Holds half of its cgroup's `memory.max`, written (1 MiB strings in a
/// busybox awk: its peak is what it keeps), until it is killed. The same
/// file is the rootfs's `/bin/hold` and the host's `/srv/standin/bin/hold`;
/// in a container the cgroup namespace makes `0::/` the container's.
const HOLD: &str = r#"#!/bin/sh
exec /bin/busybox awk 'BEGIN {
  while ((getline l < "/proc/self/cgroup") > 0) if (l ~ /^0::/) p = substr(l, 4)
  if (p == "/") p = ""
  m = ""; getline m < ("/sys/fs/cgroup" p "/memory.max")
  n = (m ~ /^[0-9]+$/) ? int(m / 2097152) : 0
  c = "x"; while (length(c) < 1048576) c = c c
  for (i = 0; i < n; i++) a[i] = c
  for (;;) system("exec sleep 3600")
}'
"#;

/// The stand-in programs of the five apps, under the seed's command names.
const AUTH_STANDIN: &str = "#!/bin/sh\n# stand-in for zervigo-auth: -port N\n/srv/standin/bin/hold &\nexec /bin/busybox httpd -f -p \"$2\" -h www\n";
const PYTHON_STANDIN: &str = r#"#!/bin/sh
# stand-in for the venv's python: app.py --port N serves www/; worker.py
# idles; worker.py --check succeeds. Both hold half their memory limit.
case "$1 $2" in
  "app.py --port") /srv/standin/bin/hold & exec /bin/busybox httpd -f -p "$3" -h www ;;
  "worker.py --check") exit 0 ;;
  "worker.py ") /srv/standin/bin/hold & trap 'exit 0' TERM; while :; do /bin/busybox sleep 3600 & wait $!; done ;;
esac
echo "stand-in: unexpected arguments: $*" >&2
exit 2
"#;

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The seed's manifests for these two VMs, with the changes the module doc lists.
fn seed_copy(aliyun: &VmHost, tencent: &VmHost, dir: &Path) {
    let read = |f: &str| std::fs::read_to_string(Path::new(SEED).join(f)).expect("seed file");
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).expect("mkdir");
    for (f, v) in [
        ("aliyun-postgres", "pg-test-password"),
        ("aliyun-neo4j-auth", "neo4j/test-password"),
        ("tencent-db-password", "db-test-password"),
    ] {
        std::fs::write(secrets.join(f), v).expect("write secret");
    }
    let secrets_to = format!("fromFile: {}/", secrets.display());

    // Hosts: one document each.
    let hosts = read("hosts.yaml");
    let (a, t) = hosts.split_once("\n---\n").expect("two host documents");
    let mut a = a.to_string();
    let mut t = t.to_string();
    for (doc, vm, addr) in [
        (&mut a, aliyun, "203.0.113.10"),
        (&mut t, tencent, "198.51.100.20"),
    ] {
        swap(
            doc,
            &format!("address: {addr}\n"),
            &format!("address: {}\n  port: {}\n", vm.ip, vm.port),
            1,
        );
        swap(
            doc,
            "identity: /etc/tend/keys/basic.pem",
            &format!("identity: {}", vm.identity().display()),
            1,
        );
        let key_line = doc
            .lines()
            .find(|l| l.trim_start().starts_with("- ssh-ed25519 "))
            .expect("a pinned key")
            .to_string();
        swap(doc, &key_line, &format!("    - {}", vm.host_key_line), 1);
    }
    swap(&mut t, "user: deploy\n", "user: root\n", 1);
    std::fs::write(dir.join("hosts.yaml"), format!("{a}\n---\n{t}")).expect("write");

    // aliyun: six podman databases on a busybox rootfs.
    let mut y = read("aliyun-databases.yaml");
    for (image, old_command, ports) in [
        (
            "docker.io/library/mysql:8.0",
            Some(r#"command: ["--innodb-buffer-pool-size=128M", "--performance-schema=OFF"]"#),
            &[3306u16][..],
        ),
        (
            "docker.io/library/postgres:15",
            Some(
                r#"command: ["postgres", "-c", "shared_buffers=64MB", "-c", "max_connections=50"]"#,
            ),
            &[5432],
        ),
        (
            "docker.io/library/redis:7.2",
            Some(
                r#"command: ["redis-server", "--maxmemory", "48mb", "--maxmemory-policy", "allkeys-lru"]"#,
            ),
            &[6379],
        ),
        ("docker.io/library/neo4j:5.15", None, &[7474, 7687]),
        (
            "docker.elastic.co/elasticsearch/elasticsearch:8.11.3",
            None,
            &[9200],
        ),
        (
            "cr.weaviate.io/semitechnologies/weaviate:1.24.1",
            None,
            &[8080],
        ),
    ] {
        let cmd = container_command(ports);
        match old_command {
            Some(c) => {
                swap(
                    &mut y,
                    &format!("image: {image}\n"),
                    &format!("image: rootfs:{STANDIN}\n"),
                    1,
                );
                swap(&mut y, c, &cmd, 1);
            }
            None => swap(
                &mut y,
                &format!("image: {image}\n"),
                &format!("image: rootfs:{STANDIN}\n  {cmd}\n"),
                1,
            ),
        }
    }
    swap(&mut y, "fromFile: /etc/tend/secrets/", &secrets_to, 2);
    std::fs::write(dir.join("aliyun-databases.yaml"), y).expect("write");

    // tencent: three systemd databases.
    let mut y = read("tencent-databases.yaml");
    swap(
        &mut y,
        r#"command: ["/usr/sbin/mysqld", "--user=mysql", "--innodb-buffer-pool-size=64M"]"#,
        &host_command(3306),
        1,
    );
    swap(
        &mut y,
        concat!(
            r#"command: ["/usr/lib/postgresql/15/bin/postgres", "-D", "/var/lib/postgresql/15/main","#,
            "\n",
            r#"            "-c", "config_file=/etc/postgresql/15/main/postgresql.conf"]"#
        ),
        &host_command(5432),
        1,
    );
    swap(
        &mut y,
        r#"command: ["/usr/bin/redis-server", "--port", "6379", "--maxmemory", "48mb"]"#,
        &host_command(6379),
        1,
    );
    std::fs::write(dir.join("tencent-databases.yaml"), y).expect("write");

    // tencent: five apps, install steps dropped, stand-in programs.
    let mut y = read("tencent-apps.yaml");
    swap(
        &mut y,
        "  install:\n    - go build -trimpath -o zervigo-auth .\n",
        "",
        1,
    );
    swap(
        &mut y,
        "  install:\n    - python3 -m venv .venv\n    - .venv/bin/pip install --quiet -r requirements.txt\n",
        "  install:\n    - mkdir -p .venv/bin && cp python-standin .venv/bin/python\n",
        4,
    );
    swap(&mut y, "fromFile: /etc/tend/secrets/", &secrets_to, 4);
    std::fs::write(dir.join("tencent-apps.yaml"), y).expect("write");
    for svc in [
        "zervigo-auth",
        "zervigo-shared",
        "ai-service-1",
        "ai-service-2",
        "looma-crm",
    ] {
        let d = dir.join("services").join(svc);
        std::fs::create_dir_all(d.join("www")).expect("mkdir");
        std::fs::write(d.join("www/health"), "ok\n").expect("write");
        if svc == "zervigo-auth" {
            write_exec(&d.join("zervigo-auth"), AUTH_STANDIN);
        } else {
            write_exec(&d.join("python-standin"), PYTHON_STANDIN);
        }
    }
}

/// The stand-in rootfs (and the systemd databases' www) on a VM.
fn prepare(vm: &VmHost) {
    vm.exec_ok(&format!(
        concat!(
            "set -e; r={}; mkdir -p $r/bin $r/www/_cluster $r/www/v1/.well-known $r/tmp $r/proc $r/sys $r/dev $r/etc; ",
            "cp /bin/busybox $r/bin/busybox; for a in sh httpd cat sleep; do ln -sf busybox $r/bin/$a; done; ",
            "for f in health index.html _cluster/health v1/.well-known/ready; do echo ok > $r/www/$f; done; ",
            "cat > $r/bin/hold <<'EOF'\n{}EOF\nchmod 755 $r/bin/hold"
        ),
        STANDIN, HOLD
    ))
    .unwrap_or_else(|e| panic!("stand-in rootfs on {}: {e:#}\n{}", vm.name, vm.diagnostics()));
}

/// `tend <cmd> DIR --age-identities KEY [args]`, with the seed's fromEnv
/// variables set: exit code and both streams.
fn tend(cmd: &str, dir: &Path, args: &[&str]) -> (i32, String, f64) {
    let started = Instant::now();
    let out = Command::new(tend_bin())
        .arg(cmd)
        .arg(dir)
        .arg("--age-identities")
        .arg(Path::new(SEED).join("TEST-ONLY-age-identity.txt"))
        .args(args)
        .env("TEND_WEAVIATE_API_KEYS", "test-key-1")
        .env("TEND_WEAVIATE_API_KEY", "test-key-1")
        .stdin(Stdio::null())
        .output()
        .expect("tend runs");
    let secs = started.elapsed().as_secs_f64();
    eprintln!("tend {cmd} {} took {secs:.1} s", args.join(" "));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text, secs)
}

/// `(service, dependsOn)` of every service of the seed that has one.
fn seed_dependencies() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for f in [
        "aliyun-databases.yaml",
        "tencent-apps.yaml",
        "tencent-databases.yaml",
    ] {
        let text = std::fs::read_to_string(Path::new(SEED).join(f)).expect("seed file");
        let mut name = None;
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("metadata: {name: ") {
                name = rest.split([',', '}']).next().map(str::to_string);
            }
            if let Some(rest) = l.trim().strip_prefix("dependsOn: [") {
                let deps = rest.split(']').next().unwrap_or("");
                let deps = deps.split(',').map(|d| d.trim().to_string()).collect();
                out.push((name.clone().expect("dependsOn after a name"), deps));
            }
        }
    }
    out
}

/// Index of the first apply-output line `<host>: <svc>: … started`, and of
/// the last line that ends one of its actions (`… (1.2s)`).
fn started_and_finished(lines: &[&str], svc: &str) -> (Option<usize>, Option<usize>) {
    let mine = |l: &&str| {
        l.split_once(": ")
            .is_some_and(|(_, rest)| rest.starts_with(&format!("{svc}: ")))
    };
    let started = lines
        .iter()
        .position(|l| mine(l) && l.ends_with(" started"));
    let finished = lines
        .iter()
        .rposition(|l| mine(l) && (l.ends_with("s)") || l.contains("s): ")));
    (started, finished)
}

fn memory_entry(plan: &serde_json::Value, host: &str) -> serde_json::Value {
    plan["memory"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["host"] == host).cloned())
        .unwrap_or_else(|| panic!("no memory budget for {host}: {plan}"))
}

fn boot(name: &str, memory_mib: u32) -> VmHost {
    let mut o = VmOptions::new(name);
    o.memory_mib = memory_mib;
    o.cpus = 2;
    let vm = VmHost::start(o).unwrap_or_else(|e| panic!("VM {name}: {e:#}"));
    prepare(&vm);
    vm
}

#[test]
fn the_seed_fleet_converges_on_replicas_of_its_two_clouds_in_dependency_order() {
    let test = "the_seed_fleet_converges_on_replicas_of_its_two_clouds_in_dependency_order";
    if !skip_unless_vm(test) {
        return;
    }
    let (aliyun, tencent) = std::thread::scope(|s| {
        let a = s.spawn(|| boot("aliyun", 2048));
        let t = s.spawn(|| boot("tencent", 4096));
        (
            a.join().expect("aliyun boots"),
            t.join().expect("tencent boots"),
        )
    });
    let dir = tempfile::tempdir().expect("tempdir");
    seed_copy(&aliyun, &tencent, dir.path());

    let (code, text, _) = tend("validate", dir.path(), &[]);
    assert_eq!(code, 0, "the seed copy validates:\n{text}");

    // The budget against what the VMs really have.
    let (code, text, _) = tend("plan", dir.path(), &["--output", "json"]);
    assert_eq!(
        code, 2,
        "before the first apply everything is to deploy:\n{text}"
    );
    let plan: serde_json::Value =
        serde_json::from_str(&text[text.find('{').unwrap_or(0)..]).expect("plan json");
    for vm in [&aliyun, &tencent] {
        let m = memory_entry(&plan, &vm.name);
        let total = m["mem_total"].as_u64().expect("MemTotal observed");
        let capacity = m["capacity"].as_u64().expect("capacity declared");
        let budget = capacity - m["reserved"].as_u64().expect("reserved");
        let committed = m["committed"].as_u64().expect("committed");
        eprintln!(
            "testbed: {}: MemTotal {} MiB, capacity {} MiB, budget {} MiB, committed {} MiB",
            vm.name,
            total >> 20,
            capacity >> 20,
            budget >> 20,
            committed >> 20
        );
        assert!(
            total >= capacity,
            "{}: MemTotal below the capacity: {m}",
            vm.name
        );
        assert!(committed <= budget, "{}: over budget: {m}", vm.name);
    }

    let (code, text, apply_secs) = tend("apply", dir.path(), &["--yes"]);
    assert_eq!(
        code,
        0,
        "the seed converges:\n{text}\n{}\n{}",
        aliyun.diagnostics(),
        tencent.diagnostics()
    );
    let (code, plan_text, _) = tend("plan", dir.path(), &[]);
    assert_eq!(code, 0, "plan clean after the apply:\n{plan_text}");

    // dependsOn: each service starts only after its dependencies finished.
    let lines: Vec<&str> = text.lines().collect();
    for l in lines
        .iter()
        .filter(|l| l.ends_with(" started") || l.contains(" succeeded ("))
    {
        eprintln!("apply: {l}");
    }
    for (svc, deps) in seed_dependencies() {
        let (started, _) = started_and_finished(&lines, &svc);
        let started = started.unwrap_or_else(|| panic!("{svc} never started:\n{text}"));
        for dep in deps {
            let (_, finished) = started_and_finished(&lines, &dep);
            let finished = finished.unwrap_or_else(|| panic!("{dep} never finished:\n{text}"));
            assert!(
                finished < started,
                "{svc} started before its dependency {dep} finished:\n{text}"
            );
        }
    }

    // Every declared port answers on its VM.
    for (vm, ports) in [
        (&aliyun, &[3306u16, 5432, 6379, 7474, 7687, 8080, 9200][..]),
        (&tencent, &[3306, 5432, 6379, 8100, 8110, 8207, 8700]),
    ] {
        for p in ports {
            vm.exec_ok(&format!(
                "curl -fsS --max-time 10 -o /dev/null http://127.0.0.1:{p}/health"
            ))
            .unwrap_or_else(|e| panic!("{}: port {p}: {e:#}", vm.name));
        }
    }
    let worker = tencent
        .exec_ok("cat /var/lib/tend/records/zervigo-shared.rec")
        .expect("zervigo-shared record");
    assert!(worker.contains("pid="), "zervigo-shared runs: {worker}");

    for vm in [&aliyun, &tencent] {
        held_half(vm);
    }
    from_git(&aliyun, &tencent, dir.path());

    eprintln!(
        "testbed: seed converged in {apply_secs:.1} s; boots to ssh aliyun {:?} s, tencent {:?} s; qemu RSS aliyun {:?} KiB, tencent {:?} KiB",
        aliyun.boot_seconds(),
        tencent.boot_seconds(),
        aliyun.qemu_rss_kib(),
        tencent.qemu_rss_kib()
    );
}

/// `service@vm` → the pid tend recorded, for every record on the VMs.
fn recorded_pids(vms: &[&VmHost]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for vm in vms {
        let text = vm
            .exec_ok("grep -H '^pid=' /var/lib/tend/records/*.rec")
            .unwrap_or_else(|e| panic!("{}: records: {e:#}", vm.name));
        for l in text.lines() {
            let Some((path, pid)) = l.split_once(":pid=") else {
                continue;
            };
            let svc = path
                .rsplit('/')
                .next()
                .and_then(|f| f.strip_suffix(".rec"))
                .unwrap_or(path);
            out.insert(format!("{svc}@{}", vm.name), pid.trim().to_string());
        }
    }
    out
}

/// Copies a directory tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("dir entry");
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&src, &dst);
        } else {
            // fs::copy keeps the mode: the stand-ins stay executable in Git.
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// `/status`, or None while the controller does not answer yet.
async fn status(addr: SocketAddr) -> Option<serde_json::Value> {
    let (code, body) = http(addr, "GET", "/status", &[], b"").await;
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// Polls `/status` (bounded) until the controller is idle after a reconcile
/// of `revision`; that status.
async fn idle_at(addr: SocketAddr, revision: &str, secs: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = status(addr).await {
            if st["running"].is_null()
                && st["pending"].is_null()
                && st["reconciles"][0]["revision"] == revision
            {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "no reconcile of {revision} within {secs} s: {st}"
            );
        } else {
            assert!(Instant::now() < deadline, "tend run does not answer");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every instance of the status in sync; their count.
fn all_in_sync(st: &serde_json::Value, when: &str) -> usize {
    let mut n = 0;
    for h in st["hosts"].as_array().into_iter().flatten() {
        assert_eq!(h["up"], true, "{when}: host {}", h["name"]);
        for svc in h["services"].as_array().into_iter().flatten() {
            assert_eq!(
                svc["status"], "in_sync",
                "{when}: {}@{}: {svc}",
                svc["name"], h["name"]
            );
            n += 1;
        }
    }
    n
}

/// The seed's manifests committed to a Git repository, followed by `tend
/// run`: a first reconcile with nothing to do, then a commit that upgrades
/// one app and raises one database's limit, converged on a trigger.
fn from_git(aliyun: &VmHost, tencent: &VmHost, dir: &Path) {
    let before = recorded_pids(&[aliyun, tencent]);
    let repo = Repo::new("seed", &[]);
    // As the seed's repository has it: manifests in a directory, the apps'
    // sources under `services/` at the root (source paths are relative to
    // it). The secrets stay outside, where `fromFile` names them.
    let fleet = repo.work().join("fleet");
    std::fs::create_dir_all(&fleet).expect("mkdir");
    for f in [
        "hosts.yaml",
        "aliyun-databases.yaml",
        "tencent-databases.yaml",
        "tencent-apps.yaml",
    ] {
        std::fs::copy(dir.join(f), fleet.join(f)).expect("copy a manifest");
    }
    copy_tree(&dir.join("services"), &repo.work().join("services"));
    git(&repo.work(), &["add", "-A"]);
    git(
        &repo.work(),
        &["commit", "-q", "-m", "the seed, as applied"],
    );
    git(&repo.work(), &["push", "-q", "origin", "main"]);
    let first = git(&repo.work(), &["rev-parse", "HEAD"]);

    let tmp = repo.tmp.path();
    std::fs::write(tmp.join("token"), format!("{TOKEN}\n")).expect("token");
    let port = free_port();
    let config = tmp.join("tend.yaml");
    std::fs::write(
        &config,
        format!(
            "repository: file://{bare}\nbranch: main\npath: fleet\nschedule: '{NEVER}'\n\
listen: 127.0.0.1:{port}\ntoken_file: {token}\ncache_dir: {cache}\nident: e2e-seed\n\
secrets:\n  age_identities: {key}\n",
            bare = repo.bare().display(),
            token = tmp.join("token").display(),
            cache = tmp.join("cache").display(),
            key = Path::new(SEED).join("TEST-ONLY-age-identity.txt").display(),
        ),
    )
    .expect("tend.yaml");
    let log_path = tmp.join("tend.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let child = Command::new(tend_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("TEND_WEAVIATE_API_KEYS", "test-key-1")
        .env("TEND_WEAVIATE_API_KEY", "test-key-1")
        .env_remove("TEND_AGE_IDENTITIES")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("tend run starts");
    let controller = Controller(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().expect("tokio");

    // The startup reconcile: a release from Git is the one from the directory.
    let started = Instant::now();
    let st = rt.block_on(idle_at(addr, &first, 600));
    let noop_secs = started.elapsed().as_secs_f64();
    let r = &st["reconciles"][0];
    assert_eq!(r["result"], "success", "{r}\n{}", log_text());
    assert_eq!(r["actions"], serde_json::json!([]), "from Git: {r}");
    let instances = all_in_sync(&st, "after tend run's first reconcile");
    assert_eq!(instances, 14, "{st}");

    // A commit: ai-service-1 2.3.1 → 2.3.2; tencent-redis 64 → 80 MiB
    // (tencent's budget has room: 2144 of 2560 MiB committed).
    let apps = fleet.join("tencent-apps.yaml");
    let mut y = std::fs::read_to_string(&apps).expect("apps");
    swap(&mut y, "version: \"2.3.1\"\n", "version: \"2.3.2\"\n", 1);
    std::fs::write(&apps, y).expect("write");
    let dbs = fleet.join("tencent-databases.yaml");
    let mut y = std::fs::read_to_string(&dbs).expect("databases");
    swap(
        &mut y,
        "  ports: [6379]\n  memory: 64MiB\n",
        "  ports: [6379]\n  memory: 80MiB\n",
        1,
    );
    std::fs::write(&dbs, y).expect("write");
    git(
        &repo.work(),
        &[
            "commit",
            "-q",
            "-a",
            "-m",
            "ai-service-1 2.3.2, tencent-redis 80MiB",
        ],
    );
    git(&repo.work(), &["push", "-q", "origin", "main"]);
    let second = git(&repo.work(), &["rev-parse", "HEAD"]);
    let started = Instant::now();
    let (code, body) = rt.block_on(post_as(
        addr,
        "/reconcile?wait=true",
        &format!("Bearer {TOKEN}"),
    ));
    assert_eq!(code, 200, "{body}\n{}", log_text());
    let st = rt.block_on(idle_at(addr, &second, 60));
    let change_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        st["source"]["revision"],
        second.as_str(),
        "{}",
        st["source"]
    );
    let r = &st["reconciles"][0];
    assert_eq!(r["result"], "success", "{r}\n{}", log_text());
    let mut acted: Vec<String> = r["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            assert_eq!(a["result"], "succeeded", "{a}");
            format!(
                "{}@{}",
                a["service"].as_str().unwrap_or(""),
                a["host"].as_str().unwrap_or("")
            )
        })
        .collect();
    acted.sort();
    assert_eq!(
        acted,
        ["ai-service-1@tencent", "tencent-redis@tencent"],
        "the actions of the change: {r}"
    );
    all_in_sync(&st, "after the change");
    let ai = service(&st, "ai-service-1").expect("ai-service-1 in /status");
    assert_eq!(ai["observed_version"], "2.3.2", "{ai}");
    let redis = service(&st, "tencent-redis").expect("tencent-redis in /status");
    assert_eq!(redis["memory_limit"], 80u64 << 20, "{redis}");
    let limit = tencent
        .exec_ok("cat /sys/fs/cgroup$(sed -n 's/^cgroup=//p' /var/lib/tend/records/tencent-redis.rec)/memory.max")
        .expect("redis's memory.max");
    assert_eq!(limit.trim(), (80u64 << 20).to_string());

    // Nothing else was restarted.
    let after = recorded_pids(&[aliyun, tencent]);
    assert_eq!(before.len(), after.len(), "{before:?}\n{after:?}");
    for (instance, pid) in &before {
        let now = after
            .get(instance)
            .unwrap_or_else(|| panic!("{instance} lost its record"));
        match instance.as_str() {
            "ai-service-1@tencent" => assert_ne!(pid, now, "ai-service-1 was not upgraded"),
            "tencent-redis@tencent" => {}
            _ => assert_eq!(pid, now, "{instance} was restarted"),
        }
    }
    drop(controller);

    let (code, text, _) = tend("plan", &fleet, &[]);
    assert_eq!(code, 0, "plan clean after tend run:\n{text}");
    eprintln!(
        "testbed: tend run from Git: first reconcile (no-op) {noop_secs:.1} s, the change {change_secs:.1} s"
    );
}

/// Polls (bounded) until every service on the VM uses at least half its
/// memory limit (`hold`); prints what each uses, and the VM's MemAvailable.
fn held_half(vm: &VmHost) {
    let script = concat!(
        "for f in /var/lib/tend/records/*.rec; do n=${f##*/}; cg=$(sed -n 's/^cgroup=//p' \"$f\"); ",
        "echo \"${n%.rec} $(cat /sys/fs/cgroup$cg/memory.current) $(cat /sys/fs/cgroup$cg/memory.max)\"; done; ",
        "grep MemAvailable /proc/meminfo"
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = vm
            .exec_ok(script)
            .unwrap_or_else(|e| panic!("{}: memory of the services: {e:#}", vm.name));
        let short: Vec<&str> = text
            .lines()
            .filter(|l| {
                let w: Vec<u64> = l
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                w.len() == 2 && w[0] < w[1] / 2
            })
            .collect();
        if short.is_empty() {
            eprintln!(
                "testbed: {} holds half of each limit (name, memory.current, memory.max):\n{text}",
                vm.name
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: below half their limit after 180 s: {short:?}\n{text}",
            vm.name
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}
