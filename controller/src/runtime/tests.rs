use super::*;
use crate::model::{Health, HealthCheck, SourceFile, SourceTree};
use std::process::Command;
use std::sync::Arc;

fn svc(runtime: RuntimeKind) -> Service {
    let mut env = BTreeMap::new();
    env.insert(
        "A".to_string(),
        EnvValue::literal("it's \"x\" $HOME `id` \\ \n2"),
    );
    env.insert("SECRET".to_string(), EnvValue::secret("s3cr3t"));
    Service {
        name: "web".into(),
        labels: BTreeMap::new(),
        hosts: vec!["h".into()],
        rollout: Default::default(),
        runtime,
        version: "1.0 'beta' $(x)".into(),
        delivery: match runtime {
            RuntimeKind::Podman => Delivery::Image {
                image: "rootfs:/srv/root fs".into(),
            },
            _ => Delivery::Source(SourceTree {
                path: "s".into(),
                digest: "d".into(),
                files: Arc::new(vec![SourceFile {
                    path: "app".into(),
                    executable: true,
                    contents: b"x".to_vec(),
                }]),
            }),
        },
        install: vec!["echo 'step' $(date)".into()],
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "exec sleep 1; # it's %h $X".into(),
        ],
        env,
        ports: vec![8100],
        memory: Some(64 << 20),
        health: Some(Health {
            check: HealthCheck::Tcp { port: 8100 },
            interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
            retries: 1,
        }),
        depends_on: vec![],
        suspend: false,
    }
}

fn sh_n(script: &str) {
    let out = Command::new("sh")
        .arg("-n")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "sh -n: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_rendered_script_is_valid_sh() {
    for kind in [
        RuntimeKind::Process,
        RuntimeKind::Systemd,
        RuntimeKind::Podman,
    ] {
        let s = svc(kind);
        let r = Release::new("/var/lib/te nd'", &s, Some("abc"));
        let rt = for_kind(kind);
        sh_n(&install_release(rt, &r).unwrap());
        sh_n(&rt.start(&r).unwrap());
        sh_n(&rt.stop(r.root, "web").unwrap());
        sh_n(&rt.remove(r.root, "web").unwrap());
        sh_n(&rt.status(r.root, "web").unwrap());
        sh_n(&switch(r.root, "web", &r.name).unwrap());
        sh_n(&gc_releases(r.root, "web", &[&r.name, "old"]).unwrap());
    }
}

#[test]
fn a_release_name_is_one_safe_path_component() {
    let mut s = svc(RuntimeKind::Process);
    s.version = "../1.0/x y".into();
    let n = release_name(&s);
    assert!(!n.contains('/') && !n.contains(' '), "{n}");
    assert!(n.ends_with(&s.config_hash()[..8]));
}

#[test]
fn a_nul_byte_in_any_value_is_refused() {
    let mut s = svc(RuntimeKind::Process);
    s.env.insert("B".into(), EnvValue::literal("a\0b"));
    let r = Release::new("/r", &s, None);
    assert!(install_release(&process::Process, &r).is_err());
    let mut s = svc(RuntimeKind::Process);
    s.command.push("x\0".into());
    let r = Release::new("/r", &s, None);
    assert!(process::Process.start(&r).is_err());
}

#[test]
fn an_env_key_that_is_not_a_name_is_refused() {
    let mut s = svc(RuntimeKind::Process);
    s.env.insert("A-B".into(), EnvValue::literal("x"));
    assert!(matches!(
        render_env_file("web", &s.env),
        Err(RuntimeError::EnvKey { .. })
    ));
}

#[test]
fn the_env_file_reads_back_exactly_through_sh() {
    let s = svc(RuntimeKind::Process);
    let file = render_env_file("web", &s.env).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("env");
    std::fs::write(&p, &file).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("set -a; . \"$1\"; printf '%s' \"$A\"")
        .arg("sh")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), s.env["A"].value);
}

#[test]
fn a_systemd_unit_holds_the_limit_the_release_dir_and_escaped_argv() {
    let s = svc(RuntimeKind::Systemd);
    let r = Release::new("/var/lib/tend", &s, None);
    let u = systemd::render_unit(&r).unwrap();
    assert!(u.contains("MemoryMax=67108864"), "{u}");
    // `%` (from the escaped version) is doubled: systemd would expand it.
    let dir = format!(
        "WorkingDirectory=/var/lib/tend/releases/web/{}",
        r.name.replace('%', "%%")
    );
    assert!(u.contains(&dir), "{u}");
    assert!(u.contains("EnvironmentFile=/var/lib/tend/env/web.env"));
    assert!(u.contains("Restart=on-failure") && u.contains("Type=simple"));
    assert!(u.contains("\"exec sleep 1; # it's %%h $$X\""), "{u}");
    // A relative program is made absolute in the release dir.
    let mut s2 = s.clone();
    s2.command = vec![".venv/bin/python".into(), "app.py".into()];
    let u2 = systemd::render_unit(&Release::new("/r", &s2, None)).unwrap();
    assert!(u2.contains("ExecStart=\"/r/releases/web/"), "{u2}");
}

/// `systemd-analyze verify` on rendered units (systemd is installed here but
/// does not run as PID 1, so units are verified, not started).
#[test]
fn systemd_analyze_verifies_rendered_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("TEND_E2E").as_deref() == Ok("required") {
            panic!("systemd-analyze is required (TEND_E2E=required)");
        }
        println!("skipped: systemd-analyze is not installed");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let rootp = root.path().to_str().unwrap();
    let mut s = svc(RuntimeKind::Systemd);
    s.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "exec sleep 100 # %i $HOME 'q' \"d\"".into(),
    ];
    let r = Release::new(rootp, &s, None);
    std::fs::create_dir_all(r.dir()).unwrap();
    std::fs::create_dir_all(root.path().join("env")).unwrap();
    std::fs::write(
        root.path().join("env/web.env"),
        render_env_file("web", &s.env).unwrap(),
    )
    .unwrap();
    let unit = root.path().join(systemd::unit_name("web"));
    std::fs::write(&unit, systemd::render_unit(&r).unwrap()).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {err}");
    assert!(!err.contains("web.service:"), "verify complained: {err}");

    // And a broken one fails: a relative program that does not exist.
    let mut bad = s.clone();
    bad.command = vec!["/nonexistent/prog".into()];
    std::fs::write(
        &unit,
        systemd::render_unit(&Release::new(rootp, &bad, None)).unwrap(),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a missing program passed verify");
}

#[test]
fn exec_words_escape_what_systemd_would_expand() {
    assert_eq!(systemd::exec_word("a b"), "\"a b\"");
    assert_eq!(systemd::exec_word("%h$X"), "\"%%h$$X\"");
    assert_eq!(systemd::exec_word("q\"\\\n"), "\"q\\\"\\\\\\n\"");
    assert_eq!(systemd::exec_word(";"), "\\;");
}

#[test]
fn the_unit_runs_the_record_hooks_after_start_and_stop() {
    let s = svc(RuntimeKind::Systemd);
    let u = systemd::render_unit(&Release::new("/var/lib/tend", &s, None)).unwrap();
    for (key, hook) in [
        ("ExecStartPost=-/bin/sh -c ", systemd::HOOK_START),
        ("ExecStopPost=-/bin/sh -c ", systemd::HOOK_STOP),
    ] {
        let line = u.lines().find(|l| l.starts_with(key)).expect(key);
        let word = systemd::exec_word(&format!(
            "rec={}\ntmp={}\n{hook}",
            q("/var/lib/tend/records/web.rec").unwrap(),
            q("/var/lib/tend/records/.tmp-web.hook").unwrap()
        ));
        assert_eq!(line, format!("{key}{word} tend-hook"));
        sh_n(hook);
    }
}

/// Runs a hook as systemd would (its variables set) on a record in a temp dir.
fn run_hook(hook: &str, rec: &std::path::Path, env: &[(&str, &str)]) -> String {
    let script = format!(
        "rec={}\ntmp={}\n{hook}",
        q(rec.to_str().unwrap()).unwrap(),
        q(&format!("{}.tmp", rec.display())).unwrap()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(rec).unwrap()
}

#[test]
fn the_start_hook_records_the_new_main_pid_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("web.rec");
    let old = "tend-record 1\nname=web\nversion=1\nconfig_hash=ab\nruntime=systemd\nrelease=1-ab\npid=1\nstart_time=2\nboot_id=x\noom_kills=3\n";
    std::fs::write(&rec, old).unwrap();
    let mut child = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = child.id().to_string();
    let text = run_hook(systemd::HOOK_START, &rec, &[("MAINPID", &pid)]);
    let _ = child.kill();
    let _ = child.wait();
    let r = crate::record::Record::parse(&text).unwrap();
    assert_eq!(r.pid, Some(child.id()));
    assert!(r.start_time.unwrap() > 0);
    assert!(
        text.contains("oom_kills=3\n") && text.contains("release=1-ab\n"),
        "{text}"
    );
    assert_eq!(text.matches("pid=").count(), 1, "{text}");
    // Another runtime's record, or no main pid: untouched.
    let other = old.replace("runtime=systemd", "runtime=process");
    std::fs::write(&rec, &other).unwrap();
    assert_eq!(
        run_hook(systemd::HOOK_START, &rec, &[("MAINPID", &pid)]),
        other
    );
    std::fs::write(&rec, old).unwrap();
    assert_eq!(
        run_hook(systemd::HOOK_START, &rec, &[("MAINPID", "0")]),
        old
    );
}

#[test]
fn the_stop_hook_adds_an_oom_kill_to_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("web.rec");
    std::fs::write(&rec, "tend-record 1\nname=web\noom_kills=3\n").unwrap();
    let text = run_hook(systemd::HOOK_STOP, &rec, &[("SERVICE_RESULT", "oom-kill")]);
    let n: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("oom_kills="))
        .unwrap()
        .parse()
        .unwrap();
    // At least this kill (the hook also reads its own cgroup's counter).
    assert!(n >= 4, "{text}");
    assert_eq!(text.matches("oom_kills=").count(), 1, "{text}");
    assert!(text.starts_with("tend-record 1\nname=web\n"), "{text}");
}

#[test]
fn a_podman_container_restarts_always_and_the_host_enables_podman_restart() {
    let s = svc(RuntimeKind::Podman);
    let r = Release::new("/r", &s, None);
    let start = podman::Podman.start(&r).unwrap();
    assert!(start.contains("'run' '-d' '--restart' 'always'"), "{start}");
    let enable = podman::enable_restart().unwrap();
    assert!(start.contains(&enable), "{start}");
    // Enabled before the container runs, and only where systemd is PID 1.
    let at = start.find("systemctl enable").unwrap();
    assert!(at < start.find("'podman' 'run'").unwrap(), "{start}");
    assert!(enable.starts_with("if [ -d /run/systemd/system ]"));
}

#[test]
fn the_containers_scopes_are_ordered_after_podman_restart_and_reloaded_only_on_a_change() {
    let enable = podman::enable_restart().unwrap();
    sh_n(&enable);
    // The drop-in's path and text reach the shell quoted.
    assert!(
        enable.contains("dropin='/etc/systemd/system/libpod-.scope.d'"),
        "{enable}"
    );
    assert!(
        enable.contains(&crate::shell::quote(podman::SCOPE_DROPIN).unwrap()),
        "{enable}"
    );
    assert!(podman::SCOPE_DROPIN.ends_with("[Unit]\nBefore=podman-restart.service"));
    // daemon-reload only inside the branch taken when the file differs.
    let differs = enable.find("!= \"$want\" ]; then").unwrap();
    let reload = enable.find("daemon-reload").unwrap();
    let fi = enable[differs..].find("\n  fi\n").unwrap() + differs;
    assert!(differs < reload && reload < fi, "{enable}");
    assert_eq!(enable.matches("daemon-reload").count(), 1, "{enable}");

    // What the script writes reads back equal, so a re-run does not reload.
    let write = "printf '%s\\n' \"$want\" >\"$dropin/.tend.conf.tmp\" && mv -f \"$dropin/.tend.conf.tmp\" \"$dropin/tend.conf\"";
    let differs = "[ \"$(cat \"$dropin/tend.conf\" 2>/dev/null)\" != \"$want\" ]";
    assert!(
        enable.contains(write) && enable.contains(differs),
        "{enable}"
    );
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "dropin={}\nwant={}\nif {differs}; then echo differs; fi\n{write}\nif {differs}; then echo differs; fi\n",
        crate::shell::quote(&dir.path().to_string_lossy()).unwrap(),
        crate::shell::quote(podman::SCOPE_DROPIN).unwrap(),
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "differs\n",
        "{script}"
    );
    let written = std::fs::read_to_string(dir.path().join("tend.conf")).unwrap();
    assert_eq!(written, format!("{}\n", podman::SCOPE_DROPIN));
}

#[test]
fn a_stopped_podman_service_leaves_no_container_for_podman_restart_to_start_at_boot() {
    let stop = podman::Podman.stop("/r", "web").unwrap();
    assert!(stop.contains("podman rm -f -t 10 \"tend-$svc\""), "{stop}");
    assert!(!stop.contains("podman stop"), "{stop}");
}

#[test]
fn an_env_key_with_a_dot_reaches_a_container_through_podmans_env_file() {
    let mut s = svc(RuntimeKind::Podman);
    s.env
        .insert("discovery.type".into(), EnvValue::literal("single-node"));
    s.env
        .insert("x.y".into(), EnvValue::secret("a b=c \"d\" $e"));
    assert_eq!(
        render_podman_env_file("web", &s.env).unwrap(),
        "discovery.type=single-node\nx.y=a b=c \"d\" $e\n"
    );
    let r = Release::new("/r", &s, None);
    let install = install_release(&podman::Podman, &r).unwrap();
    assert!(install.contains("> \"$r/.tend/podman.env\""), "{install}");
    // The sh env file keeps only the shell names.
    let sh_env = render_env_file(
        "web",
        &s.env
            .iter()
            .filter(|(k, _)| valid_env_key(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
    .unwrap();
    assert!(install.contains(&q(&sh_env).unwrap()), "{install}");
    let start = podman::Podman.start(&r).unwrap();
    assert!(
        start.contains("'podman' 'run' '-d' --env-file \"$r/.tend/podman.env\" '--restart'"),
        "{start}"
    );
    assert!(!start.contains("'discovery.type'"), "{start}");
    assert!(start.contains("'--env' 'SECRET'"), "{start}");
    sh_n(&install);
    sh_n(&start);
}

#[test]
fn a_container_without_dotted_keys_gets_no_env_file() {
    let s = svc(RuntimeKind::Podman);
    let r = Release::new("/r", &s, None);
    assert!(!install_release(&podman::Podman, &r)
        .unwrap()
        .contains("podman.env"));
    assert!(!podman::Podman.start(&r).unwrap().contains("--env-file"));
}

#[test]
fn a_dotted_key_is_refused_outside_a_container_and_a_line_break_in_its_value() {
    let mut s = svc(RuntimeKind::Process);
    s.env.insert("a.b".into(), EnvValue::literal("x"));
    let r = Release::new("/r", &s, None);
    assert!(matches!(
        install_release(&process::Process, &r),
        Err(RuntimeError::EnvKey { .. })
    ));
    let mut s = svc(RuntimeKind::Podman);
    s.env.insert("a.b".into(), EnvValue::literal("x\ny"));
    let r = Release::new("/r", &s, None);
    assert!(matches!(
        install_release(&podman::Podman, &r),
        Err(RuntimeError::Invalid { .. })
    ));
    s.env.remove("a.b");
    s.env.insert("a-b".into(), EnvValue::literal("x"));
    let r = Release::new("/r", &s, None);
    assert!(matches!(
        podman::Podman.start(&r),
        Err(RuntimeError::EnvKey { .. })
    ));
}
