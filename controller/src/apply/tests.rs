//! Every string that reaches a shell arrives as exactly those bytes: deploy
//! scripts run for real through the local transport.

use super::exec::deploy_plan;
use super::lock::{wrap, HostLock, Owner};
use crate::model::{Delivery, EnvValue, Service, SourceFile, SourceTree};
use crate::record::{Record, RuntimeKind};
use crate::runtime::{self, Runtime};
use crate::transport::local::LocalTransport;
use crate::transport::Transport;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

static N: AtomicUsize = AtomicUsize::new(0);

fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("it's".to_string()),
        Just("$(touch pwned)".to_string()),
        Just("`touch pwned`".to_string()),
        Just("a\nb\n".to_string()),
        Just("\"\\$x'\\''".to_string()),
        Just(String::new()),
        "[^\\x00]{0,24}",
    ]
}

fn file_name() -> impl Strategy<Value = String> {
    "[^\\x00/]{1,16}".prop_filter("a plain name", |s| s != "." && s != ".." && s != ".tend")
}

fn lock(root: &str) -> HostLock {
    HostLock {
        host: "local".into(),
        root: root.into(),
        owner: Owner::me(Some("unit-test")),
        takeover: None,
        lease: Duration::from_secs(60),
        wait: Duration::from_secs(10),
        scripts: Default::default(),
        lost: Default::default(),
    }
}

async fn run(t: &LocalTransport, lock: &HostLock, body: &str, stdin: &[u8]) -> String {
    let out = t
        .exec(&wrap(&lock.prelude().unwrap(), body), stdin)
        .await
        .unwrap();
    let text = format!("{}{}", out.stdout_lossy(), out.stderr_lossy());
    assert!(out.success(), "script failed: {text}");
    text
}

/// Deploy a process service carrying the values, read back what arrived.
fn check(env_v: &str, arg: &str, step: &str, version: &str, fname: &str) {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("r o'o$t`x`\nz");
    std::fs::create_dir_all(&root).unwrap();
    let root_s = root.to_str().unwrap().to_string();
    let name = format!(
        "tend-prop-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut env = BTreeMap::new();
    env.insert("V".to_string(), EnvValue::literal(env_v));
    let s = Service {
        name: name.clone(),
        labels: BTreeMap::new(),
        hosts: vec!["local".into()],
        rollout: Default::default(),
        runtime: RuntimeKind::Process,
        version: version.into(),
        delivery: Delivery::Source(SourceTree {
            path: "x".into(),
            digest: "d".into(),
            files: Arc::new(vec![SourceFile {
                path: format!("dir/{fname}"),
                executable: false,
                contents: arg.as_bytes().to_vec(),
            }]),
        }),
        install: vec![format!("printf '%s' {} > out.step", crate::shell::quote(step).unwrap())],
        command: vec![
            "sh".into(),
            "-c".into(),
            "printf '%s' \"$V\" > out.env; printf '%s' \"$1\" > out.arg; : > out.done; exec sleep 30"
                .into(),
            "tend-prop".into(),
            arg.into(),
        ],
        env,
        ports: vec![],
        memory: None,
        health: None,
        depends_on: vec![],
        suspend: false,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t = LocalTransport::new();
        let lock = lock(&root_s);
        let p = deploy_plan(&root_s, &s, None, Some("rev 'x'")).unwrap();
        run(&t, &lock, &p.body, &p.stdin).await;
        let rel = root.join("releases").join(&name).join(&p.release);
        let done = rel.join("out.done");
        for _ in 0..200 {
            if done.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if !done.exists() {
            let log = std::fs::read_to_string(root.join("logs").join(format!("{name}.log")));
            let ls = std::process::Command::new("ls")
                .arg("-laR")
                .arg(&root)
                .output()
                .unwrap();
            panic!(
                "never ran: {log:?}\n{}",
                String::from_utf8_lossy(&ls.stdout)
            );
        }
        let read = |f: &str| std::fs::read(rel.join(f)).unwrap_or_default();
        let (got_env, got_arg, got_step) = (read("out.env"), read("out.arg"), read("out.step"));
        let shipped = read(&format!("dir/{fname}"));
        let rec = std::fs::read_to_string(root.join("records").join(format!("{name}.rec")));
        let body = runtime::process::Process.remove(&root_s, &name).unwrap();
        run(&t, &lock, &body, &[]).await;
        assert_eq!(got_env, env_v.as_bytes(), "env value");
        assert_eq!(got_arg, arg.as_bytes(), "argv");
        assert_eq!(got_step, step.as_bytes(), "install step");
        assert_eq!(shipped, arg.as_bytes(), "a shipped file's name and bytes");
        let rec = Record::parse(&rec.unwrap()).unwrap();
        assert_eq!(rec.version, version);
        assert_eq!(rec.revision.as_deref(), Some("rev 'x'"));
        assert!(
            !root.join("records").join(format!("{name}.rec")).exists(),
            "removed"
        );
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn arbitrary_strings_reach_the_host_as_exactly_those_bytes(
        env_v in nasty(),
        arg in nasty(),
        step in nasty(),
        version in nasty().prop_filter("non-empty", |v| !v.is_empty()),
        fname in file_name(),
    ) {
        check(&env_v, &arg, &step, &version, &fname);
    }
}

#[test]
fn a_shipped_file_keeps_its_name_and_bytes() {
    let fname = "we ird 'name' $(x) `y`\n.txt";
    let base = tempfile::tempdir().unwrap();
    let tree = SourceTree {
        path: "x".into(),
        digest: "d".into(),
        files: Arc::new(vec![SourceFile {
            path: format!("d/{fname}"),
            executable: true,
            contents: b"\x01\xff\n".to_vec(),
        }]),
    };
    let tar = super::exec::source_tar(&tree).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("tar -x -f - -C \"$1\" --no-same-owner")
        .arg("sh")
        .arg(base.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&tar)?;
            c.wait()
        })
        .unwrap();
    assert!(out.success());
    let p = base.path().join("d").join(fname);
    assert_eq!(std::fs::read(&p).unwrap(), b"\x01\xff\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o755
    );
}

#[test]
fn a_stale_lease_of_a_dead_local_controller_can_be_taken_over() {
    let me = Owner::me(Some("ctl"));
    let dead =
        super::lock::Holder::parse("controller=ctl pid=999999999 since=1 token=ctl:999999999:1");
    assert!(dead.is_dead_local(&me));
    let alive = super::lock::Holder::parse("controller=ctl pid=1 since=1 token=ctl:1:1");
    assert!(!alive.is_dead_local(&me));
    let elsewhere = super::lock::Holder::parse("controller=other pid=999999999 since=1 token=t");
    assert!(!elsewhere.is_dead_local(&me));
    let earlier_self =
        super::lock::Holder::parse(&format!("controller=ctl pid={} since=1 token=old", me.pid));
    assert!(
        earlier_self.is_dead_local(&me),
        "an earlier apply of this process"
    );
}

/// Serve `body` to every GET on 127.0.0.1 (the artifact's origin).
async fn serve(body: &'static [u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut b = [0u8; 2048];
            let _ = s.read(&mut b).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body).await;
        }
    });
    port
}

#[test]
fn an_artifact_is_fetched_and_refused_when_its_sha256_differs() {
    use sha2::{Digest, Sha256};
    const BODY: &[u8] = b"#!/bin/sh\necho tool ran\n";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let port = serve(BODY).await;
        let base = tempfile::tempdir().unwrap();
        let root = base.path().to_str().unwrap().to_string();
        let t = LocalTransport::new();
        let lock = lock(&root);
        let name = format!("tend-art-{}", std::process::id());
        let mk = |sha: String| Service {
            name: name.clone(),
            labels: BTreeMap::new(),
            hosts: vec!["local".into()],
            rollout: Default::default(),
            runtime: RuntimeKind::Process,
            version: "1".into(),
            delivery: Delivery::Artifact {
                url: format!("http://127.0.0.1:{port}/dl/tool?token=x"),
                sha256: sha,
            },
            install: vec![],
            command: vec!["./tool".into()],
            env: BTreeMap::new(),
            ports: vec![],
            memory: None,
            health: None,
            depends_on: vec![],
            suspend: false,
        };
        let good = mk(hex::encode(Sha256::digest(BODY)));
        let p = deploy_plan(&root, &good, None, None).unwrap();
        run(&t, &lock, &p.body, &p.stdin).await;
        let tool = base
            .path()
            .join("releases")
            .join(&name)
            .join(&p.release)
            .join("tool");
        assert_eq!(std::fs::read(&tool).unwrap(), BODY);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&tool).unwrap().permissions().mode() & 0o777,
            0o755
        );

        let bad = mk("0".repeat(64));
        let p = deploy_plan(&root, &bad, None, None).unwrap();
        let out = t
            .exec(&wrap(&lock.prelude().unwrap(), &p.body), &p.stdin)
            .await
            .unwrap();
        assert!(!out.success());
        assert!(
            out.stdout_lossy().contains("sha256"),
            "{}",
            out.stdout_lossy()
        );
        let rel = base.path().join("releases").join(&name).join(&p.release);
        assert!(
            !rel.join(".tend/complete").exists(),
            "a bad artifact was installed"
        );
        let body = runtime::process::Process.remove(&root, &name).unwrap();
        run(&t, &lock, &body, &[]).await;
    });
}
