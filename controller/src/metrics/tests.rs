use super::*;

fn sample() -> Metrics {
    let m = Metrics::new();
    m.set_held(&[("freeze".to_string(), 1)].into_iter().collect());
    m.set_fleet(
        &[HostSample {
            host: "tencent".into(),
            up: true,
            committed: 1 << 30,
            capacity: Some(3 << 30),
            reserved: 1 << 29,
            available: Some(1 << 30),
        }],
        &[ServiceSample {
            host: "tencent".into(),
            service: "ai-service-1".into(),
            in_sync: false,
            reasons: vec!["version", "stopped"],
            healthy: Some(false),
            memory_usage: Some(100),
            memory_limit: Some(512 << 20),
            oom_kills: 2,
        }],
    );
    m.reconcile_done("schedule", "success", Some(1.7e9));
    m.action("upgrade", "rolled_back");
    m.rollback("tencent", "ai-service-1");
    m.trigger("api");
    m.host_error("tencent", "timeout");
    m.host_error("tencent", "backoff");
    m.source_error("fetch");
    m.source_ok(1.7e9);
    m.source("abc123", "main");
    m.manifests_valid(true);
    m.set_rollouts(&[crate::plan::RolloutStatus {
        service: "web".into(),
        instances: 5,
        current: 2,
        progress: "2/5 current, batch 2 of 3".into(),
        unavailable: 1,
        max_unavailable: 1,
        batches: vec![],
        halted: Some("failed on h1".into()),
    }]);
    drop(m.reconcile_timer());
    drop(m.phase_timer("observe"));
    m
}

#[test]
fn every_contract_name_is_exported() {
    let text = sample().encode();
    for name in [
        "tend_service_in_sync{",
        "tend_service_drift{",
        "tend_service_healthy{",
        "tend_service_memory_usage_bytes{",
        "tend_service_memory_limit_bytes{",
        "tend_host_up{",
        "tend_host_memory_committed_bytes{",
        "tend_host_memory_capacity_bytes{",
        "tend_host_memory_reserved_bytes{",
        "tend_host_memory_available_bytes{",
        "tend_reconciles_total{",
        "tend_reconcile_duration_seconds_bucket{",
        "tend_phase_duration_seconds_bucket{",
        "tend_actions_total{",
        "tend_rollbacks_total{",
        "tend_source_info{",
        "tend_manifests_valid ",
        "tend_last_success_timestamp_seconds ",
        "tend_triggers_total{",
        "tend_service_oom_kills{",
        "tend_host_errors_total{",
        "tend_source_errors_total{",
        "tend_source_last_success_timestamp_seconds ",
        "tend_rollout_instances{",
        "tend_rollout_max_unavailable{",
        "tend_rollout_halted{",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_start_time_seconds ",
        "process_open_fds ",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
}

/// docs/METRICS.md is the contract the dashboard and alert rules are
/// checked against (tests/e2e/deploy.rs): every name in it is exported.
#[test]
fn every_name_in_the_metrics_doc_is_exported() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/METRICS.md"))
        .expect("docs/METRICS.md");
    let text = sample().encode();
    let mut names = 0;
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        let kind = cols.get(2).copied().unwrap_or("");
        for name in cols[1].split('`').skip(1).step_by(2) {
            names += 1;
            let series = match kind {
                "counter" if !name.ends_with("_total") => format!("{name}_total"),
                "histogram" => format!("{name}_bucket"),
                _ => name.to_string(),
            };
            let found = text.lines().any(|l| {
                l.starts_with(&format!("{series}{{")) || l.starts_with(&format!("{series} "))
            });
            assert!(found, "{series} (docs/METRICS.md) is not exported:\n{text}");
        }
    }
    assert!(names > 20, "read only {names} names from docs/METRICS.md");
}

#[test]
fn host_errors_count_by_reason_and_a_host_in_backoff_is_not_counted() {
    let text = sample().encode();
    assert!(
        text.contains("tend_host_errors_total{host=\"tencent\",reason=\"timeout\"} 1"),
        "{text}"
    );
    assert!(!text.contains("reason=\"backoff\""), "{text}");
    assert!(
        text.contains("tend_service_oom_kills{host=\"tencent\",service=\"ai-service-1\"} 2"),
        "{text}"
    );
}

#[test]
fn a_rollout_is_counted_by_state_and_a_halt_is_one() {
    let text = sample().encode();
    for line in [
        "tend_rollout_instances{service=\"web\",state=\"desired\"} 5",
        "tend_rollout_instances{service=\"web\",state=\"current\"} 2",
        "tend_rollout_instances{service=\"web\",state=\"unavailable\"} 1",
        "tend_rollout_max_unavailable{service=\"web\"} 1",
        "tend_rollout_halted{service=\"web\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    let m = sample();
    m.set_rollouts(&[]);
    assert!(!m.encode().contains("tend_rollout_"));
}

#[test]
fn a_service_that_left_git_leaves_the_metrics() {
    let m = sample();
    m.set_fleet(&[], &[]);
    let text = m.encode();
    assert!(!text.contains("tend_service_drift{"), "{text}");
    assert!(!text.contains("tend_service_in_sync{"), "{text}");
}

#[test]
fn a_real_scrape_passes_promtool() {
    let text = sample().encode_prometheus();
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        if std::env::var("TEND_E2E").as_deref() == Ok("required") {
            panic!("promtool not installed");
        }
        eprintln!("skip: promtool not installed");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn process_stats_are_read_from_proc() {
    let p = process_stats().expect("/proc/self");
    assert!(p.resident_bytes > 0);
    assert!(p.open_fds > 0);
    assert!(p.start_time_seconds > 1.0e9);
}
