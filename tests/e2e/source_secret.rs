//! A secret kept in Git encrypted with age (the real `age` CLI, `age -a -r`):
//! `tend run`, given the identity file in `tend.yaml`, decrypts it and the
//! service on a real sshd host gets the plaintext in its environment. The
//! plaintext is nowhere else: not in the controller's log (at debug), its
//! cache, `/status`, `/metrics`, the page, the notifications, nor in any
//! file on the host that anyone but its owner may read. A value encrypted to
//! another key is refused at its file and line, and nothing of it is applied.

use super::apply::ROOT;
use super::common::http::{eventually, free_port, get_json, http, post_as};
use super::common::repo::{git, service, Controller, Repo, NEVER, TOKEN};
use super::common::{fleet, hosts_yaml, tend_bin};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Runs `cmd` with `stdin`; its stdout, trimmed.
fn run_with_input(cmd: &mut Command, stdin: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command runs (apt-get install age)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every request a webhook receiver got, headers and body, as text.
fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", l.local_addr().expect("addr"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let len = head
                    .lines()
                    .find_map(|l| {
                        let l = l.to_ascii_lowercase();
                        l.strip_prefix("content-length:")
                            .and_then(|v| v.trim().parse::<usize>().ok())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    keep.lock().expect("lock").push(text);
                    break;
                }
            }
        }
    });
    (url, got)
}

/// A new age identity file at `path` (age-keygen); its recipient.
fn keygen(path: &Path) -> String {
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(path)
        .output()
        .expect("age-keygen runs (apt-get install age)");
    assert!(out.status.success(), "{out:?}");
    run_with_input(Command::new("age-keygen").arg("-y").arg(path), "")
}

/// The fleet's hosts and `vault` at `version`, its DB_PASSWORD `plaintext`
/// encrypted to `recipient` by `age -a`; the line of its `fromAge:` key.
fn manifests(
    f: &tend_e2e::testbed::Fleet,
    version: &str,
    recipient: &str,
    plaintext: &str,
) -> (String, usize) {
    let armored = run_with_input(Command::new("age").args(["-a", "-r", recipient]), plaintext);
    assert!(armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
    let block: String = armored.lines().map(|l| format!("        {l}\n")).collect();
    let text = format!(
        "{hosts}apiVersion: tend/v1\nkind: Service\nmetadata: {{name: vault}}\nspec:\n  host: {h}\n  runtime: process\n  version: \"{version}\"\n  command: [sleep, \"100000\"]\n  env:\n    GREETING: hello\n    DB_PASSWORD:\n      fromAge: |\n{block}",
        hosts = hosts_yaml(f),
        h = f.host(0).name
    );
    let line = 1 + text
        .lines()
        .position(|l| l.trim_start().starts_with("fromAge:"))
        .expect("a fromAge line");
    (text, line)
}

/// Files under `dir` whose contents hold `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_holding(&p, needle)),
            Ok(t) if t.is_file() => {
                let bytes = std::fs::read(&p).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    out.push(p.display().to_string());
                }
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_age_encrypted_value_in_git_reaches_the_service_on_the_host_and_nowhere_else() {
    let Some(f) = fleet("an_age_encrypted_value_in_git_reaches_the_service", 1) else {
        return;
    };
    let h = f.host(0);
    let repo = Repo::new(&h.name, &[]);
    let dir = repo.tmp.path();

    // The controller's identity and a value encrypted to it, both by the age CLI.
    let recipient = keygen(&dir.join("age.key"));
    let plaintext = format!("age-pl41n-{}-{}", std::process::id(), f.number());
    let (v1, _) = manifests(&f, "1", &recipient, &plaintext);
    let good = repo.commit(&v1, "v1: a secret encrypted with age");
    assert!(
        !git(&repo.work(), &["log", "-p"]).contains(&plaintext),
        "the plaintext is in Git"
    );

    // `tend run` as deployed: a tend.yaml naming the identity file, logs at debug.
    let (hook, hooks) = receiver();
    let port = free_port();
    let cache = dir.join("cache");
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let config = dir.join("tend.yaml");
    std::fs::write(
        &config,
        format!(
            "repository: file://{bare}\nbranch: main\npath: fleet\nschedule: '{NEVER}'\n\
listen: 127.0.0.1:{port}\ntoken_file: token\ncache_dir: {cache}\nident: e2e-age\n\
secrets:\n  age_identities: age.key\n\
notifications:\n  - {{kind: generic, url: '{hook}'}}\n",
            bare = repo.bare().display(),
            cache = cache.display(),
        ),
    )
    .unwrap();
    let log_path = dir.join("tend.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let tend = Command::new(tend_bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("TEND_LOG", "debug")
        .env_remove("TEND_AGE_IDENTITIES")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("tend run starts");
    let tend = Controller(tend);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let st = eventually(180, "vault in sync on the host", || async {
        let (code, body) = http(addr, "GET", "/status", &[], b"").await;
        if code != 200 {
            return None;
        }
        let st: serde_json::Value = serde_json::from_str(&body).ok()?;
        service(&st, "vault")
            .is_some_and(|s| s["status"] == "in_sync")
            .then_some(st)
    })
    .await;
    assert_eq!(st["source"]["manifests_valid"], true, "{}", st["source"]);

    // The service got the plaintext, through the env file (mode 0600).
    let rec = format!("{ROOT}/records/vault.rec");
    let environ = h
        .exec_ok(&format!(
            "tr '\\0' '\\n' < /proc/$(sed -n 's/^pid=//p' {rec})/environ"
        ))
        .unwrap();
    assert!(
        environ
            .lines()
            .any(|l| l == format!("DB_PASSWORD={plaintext}")),
        "the service's environment: {environ}"
    );
    let mode = h
        .exec_ok(&format!("stat -c %a {ROOT}/env/vault.env"))
        .unwrap();
    assert_eq!(mode.trim(), "600");

    // Encrypted to another key: refused where it is written, v1 stays in force.
    let stranger = keygen(&dir.join("stranger.key"));
    let other = format!("{plaintext}-for-a-stranger");
    let (v2, line) = manifests(&f, "2", &stranger, &other);
    repo.commit(&v2, "v2: a secret the controller cannot decrypt");
    let (code, body) = post_as(addr, "/reconcile?wait=true", &repo.auth()).await;
    assert_eq!(code, 200, "{body}");
    let st = get_json(addr, "/status").await;
    let src = &st["source"];
    assert_eq!(src["manifests_valid"], false, "{src}");
    assert_eq!(src["revision"], good.as_str(), "{src}");
    let err = src["errors"][0].as_str().unwrap_or_default();
    assert!(
        err.starts_with(&format!("fleet/fleet.yaml:{line}:"))
            && err.contains("spec.env.DB_PASSWORD.fromAge")
            && err.contains("none of the age identities"),
        "{src}"
    );
    let vault = service(&st, "vault").expect("vault in /status");
    assert_eq!(vault["observed_version"], "1", "{vault}");
    let environ = h
        .exec_ok(&format!(
            "tr '\\0' '\\n' < /proc/$(sed -n 's/^pid=//p' {rec})/environ"
        ))
        .unwrap();
    assert!(
        environ
            .lines()
            .any(|l| l == format!("DB_PASSWORD={plaintext}")),
        "v1's value stays: {environ}"
    );

    // Nowhere else. The same search finds the env file, which only its owner reads.
    let holding = h
        .exec_ok(&format!(
            "find {ROOT} -type f -exec grep -l -F -e '{plaintext}' {{}} + ; true"
        ))
        .unwrap();
    assert!(
        holding
            .lines()
            .any(|l| l == format!("{ROOT}/env/vault.env")),
        "{holding}"
    );
    let readable = h
        .exec_ok(&format!(
            "find {ROOT} /tmp -perm /044 -type f -exec grep -l -F -e '{plaintext}' {{}} + ; true"
        ))
        .unwrap();
    assert_eq!(readable.trim(), "", "files others may read hold the secret");
    let sent = eventually(60, "the applied and the refusal notifications", || async {
        let got = hooks.lock().expect("lock").clone();
        (got.iter().any(|b| b.contains("\"kind\":\"applied\""))
            && got.iter().any(|b| b.contains("manifests refused")))
        .then_some(got)
    })
    .await;
    for body in &sent {
        assert!(!body.contains(&plaintext), "a notification: {body}");
    }
    for path in ["/status", "/metrics", "/"] {
        let (code, body) = http(addr, "GET", path, &[], b"").await;
        assert_eq!(code, 200, "{path}");
        assert!(!body.contains(&plaintext), "{path}: {body}");
    }
    let st = get_json(addr, "/status").await;
    assert!(!st.to_string().contains(&plaintext));
    drop(tend);
    let logged = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        logged.contains("manifests valid"),
        "the log at debug: {logged}"
    );
    assert!(
        !logged.contains(&plaintext),
        "the controller's log: {logged}"
    );
    let cached = files_holding(&cache, plaintext.as_bytes());
    assert!(cached.is_empty(), "controller files: {cached:?}");

    h.exec_ok(&format!(
        "kill $(sed -n 's/^pid=//p' {rec}) 2>/dev/null; true"
    ))
    .unwrap();
}
