//! deploy/: the systemd unit, the example config, the Prometheus rules, the
//! Grafana dashboard, the pull-request workflow and the demo script, checked
//! with the real tools (`systemd-analyze`, `systemd-sysusers`, `promtool`,
//! `bash`), against the metrics contract in docs/METRICS.md, and on a live
//! controller scraped by a real `prometheus` with the shipped config and rules.
//!
//! These need no root, only the tools: a missing tool skips the test with a
//! reason, or fails it when `TEND_E2E=required`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The tool on PATH, or None after printing why the test is skipped.
pub(crate) fn tool(name: &str, package: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let why = format!("{name} is not installed (apt-get install -y {package})");
        if std::env::var("TEND_E2E").as_deref() == Ok("required") {
            panic!("{test}: required (TEND_E2E=required) but {why}");
        }
        println!("skipped {test}: {why}");
    }
    found
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------- systemd

const UNIT: &str = "deploy/systemd/tend.service";
const EXEC_START: &str = "ExecStart=/usr/local/bin/tend run --config /etc/tend/tend.yaml";

/// The unit with ExecStart pointing at `binary`, in its own directory.
/// `systemd-analyze verify` refuses an ExecStart whose binary does not exist,
/// and /usr/local/bin/tend is not installed here; verify never runs it, so any
/// existing executable stands in for it.
fn unit_with_binary(dir: &Path, binary: &str) -> PathBuf {
    let unit = read(UNIT);
    assert!(unit.contains(EXEC_START), "{UNIT} must run `{EXEC_START}`");
    let exec = EXEC_START.replace("/usr/local/bin/tend", binary);
    let path = dir.join("tend.service");
    std::fs::write(&path, unit.replace(EXEC_START, &exec)).unwrap();
    path
}

fn unit_directives(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    out
}

/// `90`, `90s`, `10min`, `1h` in seconds (systemd.time(7), the forms used here).
fn systemd_seconds(v: &str) -> u64 {
    let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("{v:?} is not a time span"));
    match &v[digits.len()..] {
        "" | "s" | "sec" => n,
        "m" | "min" => n * 60,
        "h" => n * 3600,
        other => panic!("unit {other:?} of {v:?} not understood here"),
    }
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let test = "the_unit_passes_systemd_analyze_verify";
    let Some(sa) = tool("systemd-analyze", "systemd", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_binary(dir.path(), "/usr/bin/true");
    let out = run(Command::new(&sa).arg("verify").arg(&unit));
    assert!(out.status.success(), "{}", show(&out));
    // Warnings (unknown keys, bad values) go to stderr with exit 0: none allowed.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{stderr}"
    );
}

#[test]
fn systemd_analyze_verify_refuses_a_missing_binary() {
    // The check above can fail: the same unit with a binary that is not there.
    let test = "systemd_analyze_verify_refuses_a_missing_binary";
    let Some(sa) = tool("systemd-analyze", "systemd", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_binary(dir.path(), "/nonexistent/tend");
    let out = run(Command::new(&sa).arg("verify").arg(&unit));
    assert!(!out.status.success(), "{}", show(&out));
}

#[test]
fn the_unit_is_sandboxed_and_lets_an_action_finish() {
    let test = "the_unit_is_sandboxed_and_lets_an_action_finish";
    let unit = read(UNIT);
    let d = unit_directives(&unit);
    let one = |k: &str| -> String {
        let v = d.get(k).unwrap_or_else(|| panic!("{UNIT}: {k}= missing"));
        v.last().cloned().unwrap_or_default()
    };
    assert_eq!(one("User"), "tend");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("StateDirectory"), "tend");
    assert_eq!(one("CapabilityBoundingSet"), "", "no capabilities at all");
    assert_eq!(one("RestrictAddressFamilies"), "AF_INET AF_INET6 AF_UNIX");
    assert!(d["SystemCallFilter"].iter().any(|v| v == "@system-service"));
    assert!(
        !d.contains_key("ReadWritePaths"),
        "state goes to StateDirectory only"
    );
    assert_eq!(one("KillSignal"), "SIGTERM");
    let stop = systemd_seconds(&one("TimeoutStopSec"));
    assert!(
        stop >= 300,
        "TimeoutStopSec {stop}s is too short for an install"
    );

    // systemd's own score: 0 (locked down) .. 10 (exposed), times 10 for --threshold.
    let Some(sa) = tool("systemd-analyze", "systemd", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = unit_with_binary(dir.path(), "/usr/bin/true");
    let out = run(Command::new(&sa)
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&path));
    assert!(out.status.success(), "exposure above 2.0:\n{}", show(&out));
}

#[test]
fn the_sysusers_file_creates_the_tend_user_with_its_state_directory_as_home() {
    let test = "the_sysusers_file_creates_the_tend_user_with_its_state_directory_as_home";
    let Some(su) = tool("systemd-sysusers", "systemd", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    let out = run(Command::new(&su)
        .arg(format!("--root={}", dir.path().display()))
        .arg(root().join("deploy/systemd/tend.sysusers")));
    assert!(out.status.success(), "{}", show(&out));
    let passwd = std::fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
    let tend = passwd
        .lines()
        .find(|l| l.starts_with("tend:"))
        .unwrap_or_else(|| panic!("no tend user in\n{passwd}"));
    let fields: Vec<&str> = tend.split(':').collect();
    assert_eq!(fields[5], "/var/lib/tend", "{tend}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{tend}");
}

#[test]
fn the_example_config_loads_and_agrees_with_the_unit() {
    let cfg = tend::config::Config::load(&root().join("deploy/systemd/tend.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let unit = read(UNIT);
    let d = unit_directives(&unit);
    // The bearer token comes from the credential the unit loads.
    let creds: Vec<&String> = d
        .get("LoadCredential")
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    let token = cfg.token_file.clone().expect("token_file set");
    let id = token.file_name().unwrap().to_string_lossy().to_string();
    assert_eq!(
        token.parent().unwrap(),
        Path::new("/run/credentials/tend.service")
    );
    assert!(
        creds.iter().any(|c| c.starts_with(&format!("{id}:"))),
        "{creds:?} lacks {id}"
    );
    // The only writable place is the StateDirectory.
    assert_eq!(cfg.cache_dir, Path::new("/var/lib/tend"));
    // The cache lives where StateDirectory= puts it.
    assert_eq!(d["StateDirectory"].last().map(String::as_str), Some("tend"));
    assert!(cfg.listen_addr().is_ok());
    assert!(cfg.prune.enabled && !cfg.prune.force && cfg.prune.max_share <= 0.5);
    assert!(!cfg.notifications.is_empty());
}

#[test]
fn the_example_config_shows_every_key_the_controller_accepts() {
    let text = read("deploy/systemd/tend.yaml");
    // Keys written as `key:` at the start of a line, commented out or not.
    let shown: BTreeSet<String> = text
        .lines()
        .map(|l| l.trim_start().trim_start_matches('#').trim_start())
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, _)| k.trim_start_matches("- ").to_string())
        })
        .collect();
    let all = serde_json::to_value(tend::config::Config::default()).unwrap();
    let mut missing = Vec::new();
    for (k, v) in all.as_object().unwrap() {
        if !shown.contains(k) {
            missing.push(k.clone());
        }
        for (sub, _) in v.as_object().into_iter().flatten() {
            if !shown.contains(sub) {
                missing.push(format!("{k}.{sub}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "deploy/systemd/tend.yaml does not show {missing:?}"
    );
}

// ------------------------------------------------------- metrics contract

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
    Other,
}

/// Names and types from the table in docs/METRICS.md.
fn contract() -> BTreeMap<String, Kind> {
    let md = read("docs/METRICS.md");
    let mut out = BTreeMap::new();
    for line in md.lines().filter(|l| l.starts_with('|')) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() < 3 {
            continue;
        }
        let kind = match cols[2] {
            "gauge" => Kind::Gauge,
            "counter" => Kind::Counter,
            "histogram" => Kind::Histogram,
            _ => Kind::Other,
        };
        for name in cols[1].split('`').skip(1).step_by(2) {
            out.insert(name.to_string(), kind);
        }
    }
    assert!(
        out.len() > 15,
        "cannot read the table of docs/METRICS.md: {out:?}"
    );
    out
}

/// The series names a query may use: histograms only through their parts.
fn allowed_series() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (name, kind) in contract() {
        match kind {
            Kind::Histogram => {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
            Kind::Counter if !name.ends_with("_total") => {
                out.insert(format!("{name}_total"));
            }
            _ => {
                out.insert(name);
            }
        }
    }
    out
}

const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "start",
    "end",
];

/// Aggregation operators: their label list may come before the parenthesis.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords whose parenthesised list holds label names, not metrics.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Metric names in a PromQL expression (Grafana variables allowed): what is
/// left after strings, label matchers, ranges, label lists, numbers,
/// functions and keywords are taken out.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let c: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < c.len() {
            if c[i] == open {
                depth += 1;
            } else if c[i] == close {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            } else if c[i] == '"' || c[i] == '\'' || c[i] == '`' {
                let q = c[i];
                i += 1;
                while i < c.len() && c[i] != q {
                    if c[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            i += 1;
        }
        i
    };
    let next_non_space = |mut i: usize| -> Option<char> {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        c.get(i).copied()
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i += 1;
            while i < c.len() && c[i] != ch {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if ch == '{' {
            i = skip_to(i, '{', '}');
        } else if ch == '[' {
            i = skip_to(i, '[', ']');
        } else if ch == '$' {
            // Grafana variable: $name or ${name}.
            i += 1;
            if c.get(i) == Some(&'{') {
                i = skip_to(i, '{', '}');
            } else {
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '.' || c[i] == '_') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if next_non_space(i) == Some('(') {
                    while c[i] != '(' {
                        i += 1;
                    }
                    i = skip_to(i, '(', ')');
                }
            } else if PROMQL_KEYWORDS.contains(&lower.as_str())
                || AGGREGATIONS.contains(&lower.as_str())
                || next_non_space(i) == Some('(')
            {
                // A keyword, or a function / aggregation.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every metric a query names must be in the contract; returns the names used.
fn check_exprs(what: &str, exprs: &[(String, String)], extra: &[&str]) -> BTreeSet<String> {
    let allowed = allowed_series();
    let mut used = BTreeSet::new();
    let mut bad = Vec::new();
    for (where_, expr) in exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "{what}: {where_}: no metric found in {expr:?}"
        );
        for n in names {
            if !allowed.contains(&n) && !extra.contains(&n.as_str()) {
                bad.push(format!("{where_}: {n} (in {expr:?})"));
            }
            used.insert(n);
        }
    }
    assert!(
        bad.is_empty(),
        "{what} uses metrics docs/METRICS.md does not list:\n{}",
        bad.join("\n")
    );
    used
}

#[test]
fn the_metric_name_check_sees_through_promql() {
    let e = r#"histogram_quantile(0.9, sum by (le, phase) (rate(tend_phase_duration_seconds_bucket{instance=~"$instance",phase!="x y"}[$__rate_interval])))
        / on (host) group_left(service) tend_host_up offset 15m > 1e3 unless ignoring(x) foo:bar"#;
    let names = metric_names(e);
    let want: BTreeSet<String> = [
        "tend_phase_duration_seconds_bucket",
        "tend_host_up",
        "foo:bar",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, want);
    // And it can fail: a name outside the contract is reported.
    let allowed = allowed_series();
    assert!(allowed.contains("tend_reconcile_duration_seconds_bucket"));
    assert!(
        !allowed.contains("tend_reconcile_duration_seconds"),
        "a histogram is only its parts"
    );
    assert!(allowed.contains("tend_reconciles_total"));
    let bad = metric_names("sum(rate(tend_reconcile_total[5m]))");
    assert!(bad.iter().any(|n| !allowed.contains(n)), "{bad:?}");
}

// ---------------------------------------------------------------- Grafana

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/grafana/tend-dashboard.json"))
        .unwrap_or_else(|e| panic!("deploy/grafana/tend-dashboard.json: {e}"))
}

/// (where, expr) for every query of the dashboard: panel targets (rows
/// included), annotations, and the metric of each `label_values(...)` variable.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<(String, String)> {
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel {title:?} {}", t["refId"]), e.to_string()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&d["panels"], &mut out);
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(e) = a["expr"].as_str() {
            out.push((format!("annotation {}", a["name"]), e.to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or("");
        if let Some(args) = q.strip_prefix("label_values(") {
            // label_values(metric{...}, label): the metric is what precedes the last comma.
            let metric = args.rsplit_once(',').map(|(m, _)| m).unwrap_or(args);
            out.push((format!("variable {}", v["name"]), metric.to_string()));
        }
    }
    out
}

#[test]
fn every_dashboard_query_uses_only_metrics_from_the_contract() {
    let d = dashboard();
    let exprs = dashboard_exprs(&d);
    assert!(exprs.len() > 20, "only {} queries found", exprs.len());
    let used = check_exprs("deploy/grafana/tend-dashboard.json", &exprs, &[]);
    // What the dashboard is for.
    for m in [
        "tend_service_in_sync",
        "tend_service_drift",
        "tend_host_up",
        "tend_reconciles_total",
        "tend_reconcile_duration_seconds_bucket",
        "tend_phase_duration_seconds_bucket",
        "tend_actions_total",
        "tend_host_memory_committed_bytes",
        "tend_host_memory_capacity_bytes",
        "tend_host_memory_reserved_bytes",
        "tend_rollbacks_total",
    ] {
        assert!(used.contains(m), "the dashboard shows nothing of {m}");
    }
    // Durations come from the buckets through histogram_quantile.
    assert!(exprs
        .iter()
        .any(|(_, e)| e.contains("histogram_quantile") && e.contains("_bucket")));
}

#[test]
fn the_dashboard_is_importable_grafana_json() {
    let d = dashboard();
    assert_eq!(d["uid"], "tend-fleet");
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id {}",
            p["id"]
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24, "panel {} is wider than the grid", p["title"]);
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        }
    }
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["datasource", "job", "instance", "host"] {
        assert!(vars.contains(&v), "variable ${v} missing: {vars:?}");
    }
}

/// Grafana's variables, replaced by what they expand to at query time.
fn expand_grafana(expr: &str) -> String {
    expr.replace("$__rate_interval", "2m")
        .replace("${datasource}", "x")
        .replace("$instance", ".*")
        .replace("$host", ".*")
        .replace("$job", "tend")
}

#[test]
fn every_dashboard_query_parses_as_promql() {
    let test = "every_dashboard_query_parses_as_promql";
    let Some(promtool) = tool("promtool", "prometheus", test) else {
        return;
    };
    let d = dashboard();
    // promtool parses the queries of recording rules: one rule per query.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in dashboard_exprs(&d).iter().enumerate() {
        let e = serde_json::to_string(&expand_grafana(e)).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {e}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("dashboard.yml");
    std::fs::write(&f, &rules).unwrap();
    let out = run(Command::new(&promtool).args(["check", "rules"]).arg(&f));
    assert!(out.status.success(), "{rules}\n{}", show(&out));
    // And it can fail.
    std::fs::write(
        &f,
        "groups:\n  - name: x\n    rules:\n      - record: x\n        expr: sum(\n",
    )
    .unwrap();
    let out = run(Command::new(&promtool).args(["check", "rules"]).arg(&f));
    assert!(!out.status.success(), "{}", show(&out));
}

// ------------------------------------------------------------- Prometheus

const ALERTS: &str = "deploy/prometheus/tend-alerts.yml";

/// `(alert name, expr)` of every rule, read from the YAML by its layout
/// (`- alert: X`, then `expr:` inline or as a block scalar).
fn alert_exprs() -> Vec<(String, String)> {
    let text = read(ALERTS);
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut alert = None;
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        if let Some(a) = l.strip_prefix("- alert:") {
            alert = Some(a.trim().to_string());
        } else if let Some(e) = l.strip_prefix("expr:") {
            let name = alert
                .clone()
                .unwrap_or_else(|| panic!("{ALERTS}:{}: expr outside an alert", i + 1));
            let e = e.trim();
            if e.starts_with('|') || e.starts_with('>') {
                let base = indent(lines[i]);
                let mut body = Vec::new();
                while i + 1 < lines.len()
                    && (lines[i + 1].trim().is_empty() || indent(lines[i + 1]) > base)
                {
                    i += 1;
                    body.push(lines[i].trim());
                }
                out.push((name, body.join("\n")));
            } else {
                out.push((name, e.to_string()));
            }
        }
        i += 1;
    }
    out
}

#[test]
fn every_alert_rule_uses_only_metrics_from_the_contract() {
    let exprs = alert_exprs();
    assert!(exprs.len() >= 8, "{exprs:?}");
    // `up` is written by Prometheus itself for every scrape target.
    let used = check_exprs(ALERTS, &exprs, &["up"]);
    for m in [
        "tend_service_in_sync",
        "tend_host_up",
        "tend_reconciles_total",
        "tend_last_success_timestamp_seconds",
        "tend_manifests_valid",
        "tend_rollbacks_total",
        "tend_service_memory_usage_bytes",
        "tend_service_memory_limit_bytes",
        "tend_host_memory_committed_bytes",
    ] {
        assert!(used.contains(m), "no alert on {m}");
    }
}

#[test]
fn the_alert_rules_and_scrape_config_pass_promtool_check() {
    let test = "the_alert_rules_and_scrape_config_pass_promtool_check";
    let Some(promtool) = tool("promtool", "prometheus", test) else {
        return;
    };
    let out = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(root().join(ALERTS)));
    assert!(out.status.success(), "{}", show(&out));
    // The config names the rule file relative to itself: promtool loads that too.
    let out = run(Command::new(&promtool)
        .args(["check", "config"])
        .arg(root().join("deploy/prometheus/prometheus.yml")));
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("rules found"),
        "the config loads no rules:\n{stdout}"
    );
}

fn rule_tests() -> Vec<PathBuf> {
    let dir = root().join("deploy/prometheus/tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_alert_rule_unit_tests_pass_in_promtool() {
    let test = "the_alert_rule_unit_tests_pass_in_promtool";
    let Some(promtool) = tool("promtool", "prometheus", test) else {
        return;
    };
    let files = rule_tests();
    assert!(!files.is_empty());
    // Run from elsewhere: rule_files are relative to each test file.
    let out = run(Command::new(&promtool)
        .args(["test", "rules"])
        .args(&files)
        .current_dir(std::env::temp_dir()));
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn every_alert_rule_has_a_firing_and_a_quiet_test() {
    let alerts: BTreeSet<String> = alert_exprs().into_iter().map(|(a, _)| a).collect();
    // alertname -> (has a case expecting alerts, has a case expecting none)
    let mut cases: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for f in rule_tests() {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let mut name = None;
        for (i, l) in lines.iter().enumerate() {
            if let Some(a) = l.strip_prefix("alertname:") {
                name = Some(a.trim().to_string());
            } else if let Some(rest) = l.strip_prefix("exp_alerts:") {
                let a = name
                    .take()
                    .unwrap_or_else(|| panic!("{}:{}: no alertname", f.display(), i + 1));
                let e = cases.entry(a).or_default();
                if rest.trim() == "[]" {
                    e.1 = true;
                } else {
                    assert!(
                        lines
                            .get(i + 1)
                            .is_some_and(|n| n.starts_with("- exp_labels:")),
                        "{}:{}: expected a list of alerts",
                        f.display(),
                        i + 2
                    );
                    e.0 = true;
                }
            }
        }
    }
    for a in &alerts {
        let (fires, quiet) = cases.get(a).copied().unwrap_or_default();
        assert!(fires, "{a}: no test where it fires");
        assert!(quiet, "{a}: no test where it stays quiet");
    }
    for a in cases.keys() {
        assert!(alerts.contains(a), "tests name {a}, which is not a rule");
    }
}

// ------------------------------------------------------------ the workflow

#[test]
fn the_pull_request_workflow_validates_and_plans_with_documented_secrets() {
    let wf = read("deploy/github/validate.yml");
    assert!(!wf.contains('\t'), "tabs are not YAML indentation");
    let top: Vec<&str> = wf
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(' ') && !l.trim().is_empty())
        .collect();
    for key in ["name:", "on:", "jobs:", "permissions:"] {
        assert!(
            top.iter().any(|l| l.starts_with(key)),
            "top-level {key} missing: {top:?}"
        );
    }
    assert!(wf.contains("\n  pull_request:"), "runs on pull requests");
    assert!(wf.contains("tend validate \"$MANIFESTS\""));
    assert!(wf.contains("tend plan \"$MANIFESTS\""));
    // The plan step is skipped when there is no SSH key.
    assert!(wf.contains("if: env.CAN_PLAN == 'true'"));
    // Keys and secrets placed for the plan are removed whatever happened.
    assert!(wf.contains("if: always() && env.CAN_PLAN == 'true'"));
    let code: String = wf
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        !code.contains("pull_request_target"),
        "would hand fork code the secrets"
    );
    // Each `run: |` script is valid bash (the runner's shell).
    let lines: Vec<&str> = wf.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut scripts = 0;
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == "run: |" {
            let body: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|n| n.trim().is_empty() || indent(n) > indent(l))
                .map(|n| n.get(indent(l) + 2..).unwrap_or(""))
                .collect();
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("step.sh");
            std::fs::write(&f, body.join("\n")).unwrap();
            let out = run(Command::new("bash").arg("-n").arg(&f));
            assert!(out.status.success(), "{}\n{}", body.join("\n"), show(&out));
            scripts += 1;
        }
    }
    assert!(scripts >= 3, "{scripts} scripts found");
    // Every secret and variable it reads is documented in the file and in deploy/README.md.
    let readme = read("deploy/README.md");
    for kind in ["secrets.", "vars."] {
        for part in wf.split(kind).skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(!name.is_empty());
            assert!(
                wf.contains(&format!("#   {name} ")),
                "{name} is not documented in the header"
            );
            assert!(
                readme.contains(&name),
                "deploy/README.md does not mention {name}"
            );
        }
    }
}

// ------------------------------------------- the rules on a live controller

/// For a URL query string: everything but unreserved characters escaped.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus child process, killed with the test.
struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll a Prometheus API path until `done` returns Some; bounded, not asserted on.
fn wait_api<T>(
    addr: std::net::SocketAddr,
    path: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut last = serde_json::Value::Null;
    while std::time::Instant::now() < deadline {
        if let Some(v) = super::status_page::get(addr, path)
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        {
            if let Some(t) = done(&v) {
                return t;
            }
            last = v;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("{path} never showed {what}; last:\n{last:#}");
}

fn alerts(v: &serde_json::Value, name: &str) -> Vec<serde_json::Value> {
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["alertname"] == name)
        .cloned()
        .collect()
}

#[test]
fn the_shipped_scrape_config_and_rules_alert_on_a_live_controllers_drift() {
    let test = "the_shipped_scrape_config_and_rules_alert_on_a_live_controllers_drift";
    let Some(prometheus) = tool("prometheus", "prometheus", test) else {
        return;
    };
    let fleet = super::status_page::DriftedFleet::start("prom");
    let target = fleet.addr.to_string();

    // deploy/prometheus/prometheus.yml, pointed at this controller, every second.
    let mut cfg = read("deploy/prometheus/prometheus.yml");
    let alerts_file = root().join(ALERTS);
    for (from, to) in [
        ("scrape_interval: 30s", "scrape_interval: 1s".to_string()),
        (
            "evaluation_interval: 30s",
            "evaluation_interval: 1s".to_string(),
        ),
        (
            "  - tend-alerts.yml",
            format!("  - {}", alerts_file.display()),
        ),
        (
            "          - tend-1.example.com:9617\n          - tend-2.example.com:9617\n",
            format!("          - {target}\n"),
        ),
    ] {
        assert!(cfg.contains(from), "prometheus.yml changed: no {from:?}");
        cfg = cfg.replace(from, &to);
    }
    let dir = fleet.tmp.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("prometheus.yml"), &cfg).unwrap();
    let port = super::status_page::free_port();
    let api: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prom = Prometheus(
        Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={api}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    fleet.wait_drifted();

    // Every rule evaluates cleanly against what tend really exports.
    wait_api(
        api,
        "/api/v1/rules",
        "every rule evaluated without error",
        |v| {
            let rules: Vec<&serde_json::Value> = v["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            for r in &rules {
                assert_ne!(
                    r["health"], "err",
                    "rule {} fails: {}",
                    r["name"], r["lastError"]
                );
            }
            (rules.len() >= 8 && rules.iter().all(|r| r["health"] == "ok")).then_some(())
        },
    );
    // The drifted service is pending (it fires after 10 minutes); the other is quiet.
    let drift = wait_api(api, "/api/v1/alerts", "TendServiceDrift pending", |v| {
        let a = alerts(v, "TendServiceDrift");
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(drift.len(), 1, "{drift:#?}");
    let a = &drift[0];
    assert_eq!(a["state"], "pending", "{a:#}");
    assert_eq!(a["labels"]["service"], fleet.bad.as_str(), "{a:#}");
    assert_eq!(a["labels"]["host"], fleet.host.as_str(), "{a:#}");
    assert_eq!(a["labels"]["instance"], target.as_str(), "{a:#}");
    assert_eq!(a["labels"]["severity"], "warning", "{a:#}");

    // Every dashboard query runs on the live data; the fleet's panels have some.
    let d = dashboard();
    for (where_, expr) in dashboard_exprs(&d) {
        if where_.starts_with("variable") {
            continue;
        }
        let q = format!(
            "/api/v1/query?query={}",
            percent_encode(&expand_grafana(&expr))
        );
        let body = super::status_page::get(api, &q)
            .unwrap_or_else(|| panic!("{where_}: query refused: {expr}"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{where_}: {expr}: {v}");
    }
    for m in [
        "tend_service_in_sync",
        "tend_host_up",
        "tend_host_memory_committed_bytes",
    ] {
        let body = super::status_page::get(api, &format!("/api/v1/query?query={m}")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let n = v["data"]["result"].as_array().map_or(0, Vec::len);
        assert!(n > 0, "{m}: no series scraped: {v}");
    }

    // A refused revision fires at once, naming the revision still in force.
    let st = fleet.refuse_manifests();
    let in_force = st["source"]["revision"]
        .as_str()
        .expect("a revision in force")
        .to_string();
    let invalid = wait_api(api, "/api/v1/alerts", "TendManifestsInvalid firing", |v| {
        alerts(v, "TendManifestsInvalid")
            .into_iter()
            .find(|a| a["state"] == "firing")
    });
    assert_eq!(
        invalid["labels"]["instance"],
        target.as_str(),
        "{invalid:#}"
    );
    let description = invalid["annotations"]["description"].as_str().unwrap_or("");
    assert!(description.contains(&in_force), "{description}");
}

// ---------------------------------------------------------------- the demo

#[test]
fn the_demo_points_the_shipped_prometheus_config_at_its_controller() {
    let test = "the_demo_points_the_shipped_prometheus_config_at_its_controller";
    let script = root().join("deploy/demo.sh");
    let out = run(Command::new("sh").arg("-n").arg(&script));
    assert!(out.status.success(), "{}", show(&out));
    let out = run(Command::new("sh").arg(&script).arg("--prometheus-config"));
    assert!(out.status.success(), "{}", show(&out));
    let cfg = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(cfg.contains("- 127.0.0.1:9617"), "{cfg}");
    assert!(!cfg.contains("example.com"), "{cfg}");
    let rules = root().join(ALERTS);
    assert!(cfg.contains(&format!("- {}", rules.display())), "{cfg}");
    let Some(promtool) = tool("promtool", "prometheus", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("prometheus.yml");
    std::fs::write(&f, &cfg).unwrap();
    let out = run(Command::new(&promtool).args(["check", "config"]).arg(&f));
    assert!(out.status.success(), "{cfg}\n{}", show(&out));
}
