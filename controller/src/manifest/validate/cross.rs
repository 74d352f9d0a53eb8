//! Rules across documents: references, ports, memory budget, dependency cycles.

use super::rules::format_bytes;
use super::{HostInfo, Origin, Report, ServiceInfo};
use crate::model::Desired;
use std::collections::{BTreeMap, BTreeSet};

pub(super) fn cross_checks(
    desired: &Desired,
    host_info: &BTreeMap<String, HostInfo>,
    services: &BTreeMap<String, ServiceInfo>,
    r: &mut Report,
) {
    // References.
    for (name, s) in services {
        for (i, d) in s.depends_on.iter().enumerate() {
            if d.value != *name && !services.contains_key(&d.value) {
                r.error(
                    &s.file,
                    d.at,
                    format!("spec.dependsOn[{i}]"),
                    format!("unknown service `{}`", d.value),
                );
            }
        }
        if let Some((port, at, field)) = &s.health_port {
            if !s.ports.iter().any(|p| p.value == *port) {
                r.warn(
                    &s.file,
                    *at,
                    field,
                    format!("health check port {port} is not in the service's ports"),
                );
            }
        }
    }

    // Two services on one port of a host.
    let mut taken: BTreeMap<(&str, u16), (&str, Origin)> = BTreeMap::new();
    for (name, s) in services {
        for (h, (i, p)) in s
            .hosts
            .iter()
            .flat_map(|h| s.ports.iter().enumerate().map(move |ip| (h, ip)))
        {
            let origin = Origin {
                file: s.file.clone(),
                at: p.at,
            };
            match taken.get(&(h.as_str(), p.value)) {
                Some((other, first)) if *other != name.as_str() => r.error(
                    &s.file,
                    p.at,
                    format!("spec.ports[{i}]"),
                    format!(
                        "port {} on host `{}` is taken by both `{other}` ({first}) and `{name}` ({origin})",
                        p.value, h
                    ),
                ),
                Some(_) => {}
                None => {
                    taken.insert((h.as_str(), p.value), (name.as_str(), origin));
                }
            }
        }
    }

    cycles(services, r);

    // Memory budget per host: the sum of limits must fit capacity − reserved.
    for (hname, host) in &desired.hosts {
        let Some(capacity) = host.capacity else {
            continue;
        };
        let budget = capacity.saturating_sub(host.reserved);
        let mut parts = Vec::new();
        let mut sum = 0u64;
        for (sname, s) in services.iter().filter(|(_, s)| s.hosts.contains(hname)) {
            match desired.services.get(sname).and_then(|svc| svc.memory) {
                Some(m) => {
                    sum = sum.saturating_add(m);
                    parts.push(format!("{sname} {}", format_bytes(m)));
                }
                None if desired.services.contains_key(sname) => r.warn(
                    &s.file,
                    s.spec_at,
                    "spec.memory",
                    format!("no memory limit: not counted in host `{hname}`'s budget"),
                ),
                None => {}
            }
        }
        if sum > budget {
            let info = &host_info[hname];
            r.error(
                &info.file,
                info.capacity_at,
                "spec.capacity",
                format!(
                    "memory overcommitted on host `{hname}`: limits sum to {} but capacity {} − reserved {} leaves {}, {} short ({})",
                    format_bytes(sum),
                    format_bytes(capacity),
                    format_bytes(host.reserved),
                    format_bytes(budget),
                    format_bytes(sum - budget),
                    parts.join(", ")
                ),
            );
        }
    }
}

/// Reports each dependency cycle once, as `a -> b -> a`.
pub(super) fn cycles(services: &BTreeMap<String, ServiceInfo>, r: &mut Report) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark: BTreeMap<&str, Mark> = services.keys().map(|k| (k.as_str(), Mark::New)).collect();
    let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();

    fn visit<'a>(
        n: &'a str,
        services: &'a BTreeMap<String, ServiceInfo>,
        mark: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
        seen: &mut BTreeSet<Vec<String>>,
        r: &mut Report,
    ) {
        mark.insert(n, Mark::Open);
        stack.push(n);
        let s = &services[n];
        for (i, d) in s.depends_on.iter().enumerate() {
            let Some((dep, _)) = services.get_key_value(&d.value) else {
                continue;
            };
            if dep == n {
                continue; // reported as self-dependency
            }
            match mark.get(dep.as_str()).copied() {
                Some(Mark::New) => visit(dep, services, mark, stack, seen, r),
                Some(Mark::Open) => {
                    let start = stack.iter().position(|x| *x == dep).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|x| x.to_string()).collect();
                    let mut key = cycle.clone();
                    key.sort();
                    if seen.insert(key) {
                        cycle.push(dep.clone());
                        r.error(
                            &s.file,
                            d.at,
                            format!("spec.dependsOn[{i}]"),
                            format!("dependency cycle: {}", cycle.join(" -> ")),
                        );
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        mark.insert(n, Mark::Done);
    }

    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    for n in names {
        if mark[n] == Mark::New {
            visit(n, services, &mut mark, &mut Vec::new(), &mut seen, r);
        }
    }
}
