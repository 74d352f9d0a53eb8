//! Fault: shell metacharacters in every string that reaches a host — env
//! values, command argv, install steps, the version, the health command.
//! Exactly those bytes arrive on the host; nothing is evaluated twice (no
//! file a payload would create exists), and the next plan is empty (what
//! the probe reads back equals what was sent).

use super::apply::{desired, service, ROOT};
use super::common::checks::all_records;
use super::common::fleet;
use super::common::{fast_opts, fast_pool};
use std::time::Duration;
use tend::apply;
use tend::model::{EnvValue, Health, HealthCheck};

/// Payloads; each would create `/tmp/pwned-<n>` if a shell evaluated it.
fn payloads() -> Vec<String> {
    vec![
        "$(touch /tmp/pwned-1)".into(),
        "`touch /tmp/pwned-2`".into(),
        "'; touch /tmp/pwned-3; '".into(),
        "\"; touch /tmp/pwned-4; \"".into(),
        "a\nb\\c\\\\n $HOME ${HOME} \\$ !! ~".into(),
        "* ? [a-z] {a,b} | & ; < > ( ) # %s %% \\x41".into(),
        "-n".into(),
        "".into(),
        " leading and trailing ".into(),
        "\u{1b}[31mred\u{1b}[0m ünïcødé \t tab".into(),
        "x=1 eval touch /tmp/pwned-5 && touch /tmp/pwned-6 || touch /tmp/pwned-7".into(),
        "'\"'\"'`$(\\".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metacharacters_in_every_field_arrive_on_the_host_as_exactly_their_bytes() {
    let Some(f) = fleet("metacharacters_in_every_field_arrive_on_the_host", 1) else {
        return;
    };
    let h = f.host(0);
    let evil = payloads();
    let env_value = evil.join("|");
    // A version is one line of printable text; everything else is allowed.
    let version = "1.0-$(touch /tmp/pwned-8);`touch /tmp/pwned-9`'\"\\|&<>*?/..%2F".to_string();
    // An install step is a shell command by design: it runs once, as written.
    let step_literal = evil
        .iter()
        .map(|p| p.replace('\'', ""))
        .collect::<Vec<_>>()
        .join("|");
    let step = format!("printf '%s' '{step_literal}' > install.out");

    let script =
        "printf '%s\\0' \"$@\" > argv.out; printf '%s' \"$EVIL\" > env.out; exec sleep 100000";
    let mut argv: Vec<&str> = vec!["sh", "-c", script, "tend-argv"];
    argv.extend(evil.iter().map(String::as_str));
    let mut s = service("inj", &h.name, &version, &argv);
    s.env
        .insert("EVIL".into(), EnvValue::literal(env_value.clone()));
    s.install = vec![step];
    let mut health_argv = vec![
        "sh".to_string(),
        "-c".into(),
        "printf '%s\\0' \"$@\" > health.out".into(),
        "h".into(),
    ];
    health_argv.extend(evil.iter().cloned());
    s.health = Some(Health {
        check: HealthCheck::Command {
            command: health_argv,
        },
        interval: Duration::from_millis(300),
        timeout: Duration::from_secs(5),
        retries: 10,
    });
    let d = desired(&f, vec![s]);
    let pool = fast_pool();
    let r = apply::converge(&d, &pool, &fast_opts(), None).await;
    assert!(r.converged(), "{:#?}", r.actions);

    let cur = format!("{ROOT}/releases/inj/current");
    let read = |file: &str| -> Vec<u8> {
        let out = h.exec(&format!("cat {cur}/{file}")).unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let nul_joined = |v: &[String]| -> Vec<u8> {
        let mut b = Vec::new();
        for p in v {
            b.extend_from_slice(p.as_bytes());
            b.push(0);
        }
        b
    };
    assert_eq!(read("argv.out"), nul_joined(&evil), "command argv");
    assert_eq!(read("env.out"), env_value.as_bytes(), "env value");
    assert_eq!(read("install.out"), step_literal.as_bytes(), "install step");
    assert_eq!(read("health.out"), nul_joined(&evil), "health command argv");
    let rec = &all_records(h, ROOT)["inj"];
    assert_eq!(rec.version, version, "version in the record");

    // Nothing was evaluated: no payload left a file, on the host or here.
    let pwned = h
        .exec_ok("ls /tmp /srv /root / | grep -c pwned || true")
        .unwrap();
    assert_eq!(pwned.trim(), "0", "a payload ran on the host");
    assert!(
        !std::fs::read_dir("/tmp")
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("pwned")),
        "a payload ran on the controller"
    );
    // The probe reads back what was written: nothing to do next time.
    let again = apply::converge(&d, &pool, &fast_opts(), None).await;
    assert!(again.converged(), "{:#?}", again.actions);
    assert!(again.plan.actions.is_empty(), "{:#?}", again.plan);
    let _ = h.exec("kill $(sed -n 's/^pid=//p' /var/lib/tend/records/inj.rec)");
}
