//! Placement (`host`, `hosts`, `hostSelector`) and the rollout policy as
//! validation reads them: one test per rule or refusal.

use super::tests::{errors, expect_error, load, tf};
use crate::manifest::TreeFile;
use crate::model::{FailureAction, Share};
use std::time::Duration;

/// Three hosts: two labelled `role: apps`, one `role: db`.
const HOSTS: &str = "\
apiVersion: tend/v1
kind: Host
metadata: {name: a1, labels: {role: apps}}
spec:
  address: 192.0.2.1
  capacity: {memory: 1GiB, reserved: 256MiB}
---
apiVersion: tend/v1
kind: Host
metadata: {name: a2, labels: {role: apps, zone: b}}
spec:
  address: 192.0.2.2
  capacity: {memory: 512MiB, reserved: 256MiB}
---
apiVersion: tend/v1
kind: Host
metadata: {name: d1, labels: {role: db}}
spec:
  address: 192.0.2.3
";

fn tree(placement: &str, extra: &str) -> Vec<TreeFile> {
    let web = format!(
        "\
apiVersion: tend/v1
kind: Service
metadata: {{name: web}}
spec:
{placement}
  runtime: process
  version: '1'
  command: [sleep, '1000']
  ports: [8080]
  memory: 128MiB
{extra}"
    );
    vec![tf("m/hosts.yaml", HOSTS), tf("m/web.yaml", &web)]
}

fn hosts_of(files: &[TreeFile]) -> Vec<String> {
    match load(files) {
        Ok(l) => l.desired.services["web"].hosts.clone(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_single_host_is_one_instance_as_before() {
    assert_eq!(hosts_of(&tree("  host: a1", "")), vec!["a1"]);
}

#[test]
fn a_list_of_hosts_is_one_instance_on_each_in_name_order() {
    assert_eq!(hosts_of(&tree("  hosts: [d1, a1]", "")), vec!["a1", "d1"]);
}

#[test]
fn a_host_selector_matches_hosts_having_every_label() {
    assert_eq!(
        hosts_of(&tree("  hostSelector: {role: apps}", "")),
        vec!["a1", "a2"]
    );
    assert_eq!(
        hosts_of(&tree("  hostSelector: {role: apps, zone: b}", "")),
        vec!["a2"]
    );
}

#[test]
fn a_selector_matching_nothing_is_refused_unless_allowed() {
    expect_error(
        &tree("  hostSelector: {role: cache}", ""),
        "m/web.yaml",
        5,
        "spec.hostSelector",
        "matches no host (role=cache); set allowNoHosts: true",
    );
    let files = tree("  hostSelector: {role: cache}\n  allowNoHosts: true", "");
    assert!(hosts_of(&files).is_empty());
}

#[test]
fn an_unknown_host_in_a_list_is_refused_at_its_line() {
    expect_error(
        &tree("  hosts:\n  - a1\n  - nope", ""),
        "m/web.yaml",
        7,
        "spec.hosts[1]",
        "unknown host `nope` (hosts: a1, a2, d1)",
    );
}

#[test]
fn a_host_listed_twice_is_refused() {
    expect_error(
        &tree("  hosts: [a1, a1]", ""),
        "m/web.yaml",
        5,
        "spec.hosts[1]",
        "`a1` is listed twice",
    );
}

#[test]
fn two_placements_at_once_are_refused() {
    let errs = errors(&tree("  host: a1\n  hosts: [a2]", ""));
    assert!(
        errs.iter()
            .any(|d| d.message.contains("use one of host, hosts or hostSelector")),
        "{errs:?}"
    );
}

#[test]
fn no_placement_is_refused() {
    let errs = errors(&tree("", ""));
    assert!(
        errs.iter()
            .any(|d| d.field == "spec.host" && d.message.contains("missing")),
        "{errs:?}"
    );
}

#[test]
fn memory_is_admitted_on_every_matched_host_and_the_one_that_overflows_is_named() {
    // 128 MiB fits a1 (768 MiB free) but three of them do not fit a2 (256 MiB).
    let mut files = tree("  hostSelector: {role: apps}", "");
    let more = "\
apiVersion: tend/v1
kind: Service
metadata: {name: cache}
spec:
  hostSelector: {role: apps}
  runtime: process
  version: '1'
  command: [sleep, '1000']
  memory: 192MiB
";
    files.push(tf("m/cache.yaml", more));
    let errs = errors(&files);
    let over: Vec<_> = errs
        .iter()
        .filter(|d| d.message.contains("overcommitted"))
        .collect();
    assert_eq!(over.len(), 1, "{errs:?}");
    assert!(over[0].message.contains("host `a2`"), "{}", over[0].message);
    assert_eq!((over[0].file.as_str(), over[0].line), ("m/hosts.yaml", 13));
}

#[test]
fn a_port_is_taken_per_host_so_replicas_share_it_across_hosts() {
    assert_eq!(hosts_of(&tree("  hosts: [a1, a2, d1]", "")).len(), 3);
    let mut files = tree("  hosts: [a1, a2]", "");
    let other = "\
apiVersion: tend/v1
kind: Service
metadata: {name: other}
spec:
  host: a2
  runtime: process
  version: '1'
  command: [sleep, '1000']
  ports: [8080]
";
    files.push(tf("m/other.yaml", other));
    let errs = errors(&files);
    assert!(
        errs.iter().any(|d| d
            .message
            .contains("port 8080 on host `a2` is taken by both")),
        "{errs:?}"
    );
}

#[test]
fn a_rollout_policy_is_read_with_defaults_for_what_is_not_written() {
    let files = tree(
        "  hostSelector: {role: apps}",
        "  rollout: {maxUnavailable: 50%, pauseBetween: 10s, failureAction: pause}\n",
    );
    let l = load(&files).unwrap_or_else(|e| panic!("{e}"));
    let r = &l.desired.services["web"].rollout;
    assert_eq!(r.max_unavailable, Share::Percent(50));
    assert_eq!(r.pause_between, Duration::from_secs(10));
    assert_eq!(r.failure_action, FailureAction::Pause);
    let l = load(&tree("  host: a1", "")).unwrap_or_else(|e| panic!("{e}"));
    let r = &l.desired.services["web"].rollout;
    assert_eq!(r.max_unavailable, Share::Count(1));
    assert_eq!(r.failure_action, FailureAction::Rollback);
}

#[test]
fn a_bad_max_unavailable_is_refused_at_its_line() {
    for bad in ["0", "0%", "150%", "many"] {
        expect_error(
            &tree(
                "  hosts: [a1, a2]",
                &format!("  rollout:\n    maxUnavailable: {bad}\n"),
            ),
            "m/web.yaml",
            12,
            "spec.rollout.maxUnavailable",
            "is not a number of instances",
        );
    }
}

#[test]
fn a_bad_pause_is_refused_at_its_line() {
    expect_error(
        &tree("  hosts: [a1, a2]", "  rollout:\n    pauseBetween: soon\n"),
        "m/web.yaml",
        12,
        "spec.rollout.pauseBetween",
        "not a duration",
    );
}
