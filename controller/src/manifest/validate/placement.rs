//! Where a service runs (`host`, `hosts` or `hostSelector`, resolved against
//! the Hosts) and how an upgrade rolls across its instances.

use super::{Report, ServiceInfo};
use crate::manifest::raw::{At, FailureActionSpec, ServiceSpec, S};
use crate::model::{Desired, FailureAction, Rollout, Share};
use std::collections::BTreeMap;

/// The placement as written.
#[derive(Debug, Clone)]
pub(super) enum Placement {
    Host(S<String>),
    Hosts(S<Vec<S<String>>>),
    Selector {
        labels: S<BTreeMap<String, S<String>>>,
        allow_none: bool,
    },
    /// None given (reported).
    Missing,
}

/// Read the placement fields: exactly one of them.
pub(super) fn read(file: &str, spec: &ServiceSpec, spec_at: At, r: &mut Report) -> Placement {
    let given: Vec<&str> = [
        spec.host.as_ref().map(|_| "host"),
        spec.hosts.as_ref().map(|_| "hosts"),
        spec.host_selector.as_ref().map(|_| "hostSelector"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() > 1 {
        r.error(
            file,
            spec_at,
            format!("spec.{}", given[1]),
            format!(
                "use one of host, hosts or hostSelector, not {}",
                given.join(" and ")
            ),
        );
        return Placement::Missing;
    }
    if spec.allow_no_hosts && spec.host_selector.is_none() {
        r.error(
            file,
            spec_at,
            "spec.allowNoHosts",
            "allowNoHosts only applies to hostSelector",
        );
    }
    if let Some(h) = &spec.host {
        Placement::Host(h.clone())
    } else if let Some(hs) = &spec.hosts {
        Placement::Hosts(hs.clone())
    } else if let Some(sel) = &spec.host_selector {
        Placement::Selector {
            labels: sel.clone(),
            allow_none: spec.allow_no_hosts,
        }
    } else {
        r.error(
            file,
            spec_at,
            "spec.host",
            "missing: name a host, a list of hosts or a hostSelector",
        );
        Placement::Missing
    }
}

/// Resolve every service's placement to host names, set them on the
/// desired services, and keep them for the cross-document rules.
pub(super) fn resolve(
    desired: &mut Desired,
    services: &mut BTreeMap<String, ServiceInfo>,
    r: &mut Report,
) {
    let known: Vec<&str> = desired.hosts.keys().map(String::as_str).collect();
    let unknown = |name: &str| {
        format!(
            "unknown host `{name}` (hosts: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        )
    };
    let mut resolved: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, s) in services.iter() {
        let hosts = match &s.placement {
            Placement::Missing => Vec::new(),
            Placement::Host(h) => {
                if desired.hosts.contains_key(&h.value) {
                    vec![h.value.clone()]
                } else {
                    r.error(&s.file, h.at, "spec.host", unknown(&h.value));
                    Vec::new()
                }
            }
            Placement::Hosts(list) => {
                if list.value.is_empty() {
                    r.error(&s.file, list.at, "spec.hosts", "name at least one host");
                }
                let mut out: Vec<String> = Vec::new();
                for (i, h) in list.value.iter().enumerate() {
                    let field = format!("spec.hosts[{i}]");
                    if !desired.hosts.contains_key(&h.value) {
                        r.error(&s.file, h.at, field, unknown(&h.value));
                    } else if out.contains(&h.value) {
                        r.error(
                            &s.file,
                            h.at,
                            field,
                            format!("`{}` is listed twice", h.value),
                        );
                    } else {
                        out.push(h.value.clone());
                    }
                }
                out
            }
            Placement::Selector { labels, allow_none } => {
                let out: Vec<String> = desired
                    .hosts
                    .values()
                    .filter(|h| {
                        labels
                            .value
                            .iter()
                            .all(|(k, v)| h.labels.get(k) == Some(&v.value))
                    })
                    .map(|h| h.name.clone())
                    .collect();
                if out.is_empty() && !allow_none {
                    let want: Vec<String> = labels
                        .value
                        .iter()
                        .map(|(k, v)| format!("{k}={}", v.value))
                        .collect();
                    r.error(
                        &s.file,
                        labels.at,
                        "spec.hostSelector",
                        format!(
                            "matches no host ({}); set allowNoHosts: true if that is meant",
                            want.join(", ")
                        ),
                    );
                }
                out
            }
        };
        let mut hosts = hosts;
        hosts.sort();
        resolved.insert(name.clone(), hosts);
    }
    for (name, hosts) in resolved {
        if let Some(svc) = desired.services.get_mut(&name) {
            svc.hosts = hosts.clone();
        }
        if let Some(info) = services.get_mut(&name) {
            info.hosts = hosts;
        }
    }
}

/// The rollout policy, with defaults for what is not written.
pub(super) fn rollout(file: &str, spec: &ServiceSpec, r: &mut Report) -> Rollout {
    let mut out = Rollout::default();
    let Some(ro) = &spec.rollout else {
        return out;
    };
    let ro = &ro.value;
    if let Some(m) = &ro.max_unavailable {
        match parse_share(&m.value.0) {
            Some(s) => out.max_unavailable = s,
            None => r.error(
                file,
                m.at,
                "spec.rollout.maxUnavailable",
                format!(
                    "`{}` is not a number of instances (1 or more) or a percentage (1% to 100%)",
                    m.value.0
                ),
            ),
        }
    }
    if let Some(p) = &ro.pause_between {
        match humantime::parse_duration(p.value.trim()) {
            Ok(d) => out.pause_between = d,
            Err(e) => r.error(
                file,
                p.at,
                "spec.rollout.pauseBetween",
                format!("not a duration like 10s or 1m: {e}"),
            ),
        }
    }
    if let Some(f) = &ro.failure_action {
        out.failure_action = match f.value {
            FailureActionSpec::Rollback => FailureAction::Rollback,
            FailureActionSpec::Pause => FailureAction::Pause,
        };
    }
    out
}

/// `2` or `25%`; zero and more than 100 % are refused.
pub(crate) fn parse_share(s: &str) -> Option<Share> {
    let s = s.trim();
    match s.strip_suffix('%') {
        Some(p) => match p.trim().parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => Some(Share::Percent(n)),
            _ => None,
        },
        None => match s.parse::<u32>() {
            Ok(n) if n >= 1 => Some(Share::Count(n)),
            _ => None,
        },
    }
}
