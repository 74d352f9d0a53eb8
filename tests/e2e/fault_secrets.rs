//! Secrets on a managed host: while an install runs, no process's argv, and
//! no process's environment other than the service's own, carries a secret
//! value. Read as a local user would (`ps -ef`, `/proc/*/environ`).

use super::apply::{converge, desired, pool, service, ROOT};
use super::common::fleet;
use std::path::Path;
use tend::apply::ApplyOptions;
use tend::model::EnvValue;

/// Every process whose argv, or whose environment without `marker`, holds
/// `secret`: (pid, where, argv).
fn leaks(secret: &str, marker: &str) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let read =
            |f: &str| std::fs::read(Path::new("/proc").join(&pid).join(f)).unwrap_or_default();
        let has = |b: &[u8], s: &str| b.windows(s.len()).any(|w| w == s.as_bytes());
        let argv = read("cmdline");
        let shown = String::from_utf8_lossy(&argv).replace('\0', " ");
        if has(&argv, secret) {
            out.push((pid.clone(), "cmdline", shown.clone()));
        }
        let env = read("environ");
        if has(&env, secret) && !has(&env, marker) {
            out.push((pid, "environ", shown));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_is_readable_in_any_argv_or_foreign_environment_while_an_install_runs() {
    let Some(f) = fleet("no_secret_is_readable_in_any_argv_during_an_install", 1) else {
        return;
    };
    let h = f.host(0).name.clone();
    let secret = format!("s3cret-{}-{}", std::process::id(), f.number());
    let marker = format!("tend-own-{}", std::process::id());
    // Paths inside the host; the test sees them through `path`.
    let (started_in, gate_in) = ("/srv/secret-started", "/srv/secret-gate");
    let (started, gate) = (f.host(0).path(started_in), f.host(0).path(gate_in));
    let mut s = service("vault", &h, "1", &["sleep", "1000"]);
    s.env
        .insert("DB_PASSWORD".into(), EnvValue::secret(secret.clone()));
    // Marks the service's own processes (its install step inherits its env).
    s.env
        .insert("TEND_TEST_OWN".into(), EnvValue::literal(marker.clone()));
    s.install = vec![format!(
        "touch {started_in}; while [ ! -e {gate_in} ]; do sleep 0.1; done"
    )];
    let d = desired(&f, vec![s]);
    let pool = pool();
    let opts = ApplyOptions::default();
    let apply = tokio::spawn(async move { converge(&pool, &d, &opts).await });
    super::common::wait_for_file(&started, "the install never started").await;
    let found = leaks(&secret, &marker);
    std::fs::write(&gate, "").unwrap();
    let r = apply.await.unwrap();
    assert!(r.converged(), "{:#?}", r.actions);
    assert!(
        found.is_empty(),
        "the secret is readable on the host: {found:#?}"
    );
    // The env file on the host is the service's, mode 0600.
    let mode = f
        .host(0)
        .exec_ok(&format!("stat -c %a {}/env/vault.env", ROOT))
        .unwrap();
    assert_eq!(mode.trim(), "600");
    let found_after = leaks(&secret, &marker);
    assert!(
        found_after.is_empty(),
        "after the install: {found_after:#?}"
    );
    f.host(0)
        .exec_ok(&format!(
            "kill $(sed -n 's/^pid=//p' {}/records/vault.rec) 2>/dev/null; true",
            ROOT
        ))
        .unwrap();
}
