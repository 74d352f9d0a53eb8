//! The status page for people: server-rendered, refreshes itself, no script.

use crate::controller::status::StatusReport;
use crate::plan::Status;
use std::fmt::Write as _;

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn bytes(b: Option<u64>) -> String {
    match b {
        Some(b) => crate::manifest::format_bytes(b),
        None => "–".into(),
    }
}

fn ago(t: f64) -> String {
    let now = crate::controller::status::unix_time::secs(std::time::SystemTime::now());
    let d = (now - t).max(0.0) as u64;
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        _ => format!("{}h ago", d / 3600),
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}\
th{background:#f4f4f4}.in_sync td.st{color:#176f2c}.drifted{background:#fff1e6}.drifted td.st{color:#b54708;font-weight:bold}\
.unknown{background:#f6f6f6}.unknown td.st{color:#666}.suspended td.st{color:#555}.bad{color:#b42318;font-weight:bold}\
.ok{color:#176f2c}code,pre{font:12px ui-monospace,monospace}pre{background:#f6f6f6;padding:.5em;max-height:12em;overflow:auto;margin:0}\
details summary{cursor:pointer}";

pub fn render(st: &StatusReport) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
<title>tend — {}</title><style>{STYLE}</style></head><body>",
        esc(&st.controller)
    );
    let drifted: usize = st
        .hosts
        .iter()
        .flat_map(|h| &h.services)
        .filter(|s| s.status == Status::Drifted)
        .count();
    let total: usize = st.hosts.iter().map(|h| h.services.len()).sum();
    let _ = write!(
        h,
        "<h1>tend <small>{}</small></h1><p>{} services, <span class=\"{}\">{} drifted</span>; \
schedule <code>{}</code>{}</p>",
        esc(&st.controller),
        total,
        if drifted > 0 { "bad" } else { "ok" },
        drifted,
        esc(&st.schedule),
        if st.ready {
            ""
        } else {
            " — <b>first reconcile running</b>"
        }
    );

    gates(&mut h, st);

    // Source
    let src = &st.source;
    let _ = write!(h, "<h2>Source</h2><table>");
    let location = match &src.info {
        crate::source::SourceInfo::Git { url, branch } => format!("git {url} ({branch})"),
        crate::source::SourceInfo::Dir { path } => format!("directory {path} (watched)"),
    };
    let _ = write!(
        h,
        "<tr><th>location</th><td><code>{}</code></td></tr>",
        esc(&location)
    );
    let _ = write!(
        h,
        "<tr><th>in force</th><td><code>{}</code> {}</td></tr>",
        esc(src.revision.as_deref().unwrap_or("none")),
        esc(src.subject.as_deref().unwrap_or(""))
    );
    let _ = write!(
        h,
        "<tr><th>manifests</th><td id=\"manifests\" class=\"{}\">{}</td></tr>",
        if src.manifests_valid { "ok" } else { "bad" },
        if src.manifests_valid {
            "valid".to_string()
        } else {
            format!(
                "newest revision {} refused",
                esc(src.newest.as_deref().unwrap_or("?"))
            )
        }
    );
    if let Some(e) = &src.fetch_error {
        let _ = write!(
            h,
            "<tr><th>fetch</th><td class=\"bad\">{}</td></tr>",
            esc(e)
        );
    }
    h.push_str("</table>");
    if !src.errors.is_empty() {
        h.push_str("<pre class=\"bad\">");
        for e in &src.errors {
            let _ = writeln!(h, "{}", esc(e));
        }
        h.push_str("</pre>");
    }

    rollouts(&mut h, st);

    // Hosts and services
    h.push_str("<h2>Hosts</h2>");
    for host in &st.hosts {
        let _ = write!(
            h,
            "<h3 id=\"host-{0}\">{0} <span class=\"{1}\">{2}</span></h3>",
            esc(&host.name),
            if host.up { "ok" } else { "bad" },
            if host.up {
                "up".to_string()
            } else {
                format!("down: {}", esc(host.reason.as_deref().unwrap_or("?")))
            }
        );
        if let Some(note) = &host.limits_note {
            let _ = write!(h, "<p><i>{}</i></p>", esc(note));
        }
        if let Some(m) = &host.memory {
            let _ = write!(
                h,
                "<p>memory: committed {} of capacity {} (reserved {}), available {}</p>",
                bytes(Some(m.committed)),
                bytes(m.capacity),
                bytes(Some(m.reserved)),
                bytes(m.available)
            );
        }
        h.push_str(
            "<table><tr><th>service</th><th>status</th><th>drift</th><th>desired</th><th>observed</th>\
<th>health</th><th>memory</th><th>last action</th></tr>",
        );
        for s in &host.services {
            let class = match s.status {
                Status::InSync => "in_sync",
                Status::Drifted => "drifted",
                Status::Suspended => "suspended",
                Status::Unknown => "unknown",
            };
            let mut reasons: Vec<String> =
                s.reasons.iter().map(|r| r.as_str().to_string()).collect();
            if s.oom_kills > 0 {
                reasons.push(format!("{}× OOM-killed", s.oom_kills));
            }
            let health = match s.healthy {
                Some(true) => "healthy",
                Some(false) => "failing",
                None => "–",
            };
            let _ = write!(
                h,
                "<tr class=\"{class}\" id=\"svc-{}-{}\"><td>{}</td><td class=\"st\">{}</td><td>{}{}</td>\
<td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>",
                esc(&s.host),
                esc(&s.name),
                esc(&s.name),
                class.replace('_', " "),
                esc(&reasons.join(", ")),
                s.blocked.as_deref().map(|b| format!(" <i>(blocked: {})</i>", esc(b))).unwrap_or_default(),
                esc(s.desired_version.as_deref().unwrap_or("–")),
                esc(s.observed_version.as_deref().unwrap_or("–")),
                health,
                bytes(s.memory_usage),
                bytes(s.memory_limit),
            );
            if let Some(a) = &s.last_action {
                let _ = write!(
                    h,
                    "<details><summary>{} {} ({}, #{})</summary>{}<pre>{}</pre></details>",
                    esc(&a.kind),
                    esc(&a.result),
                    ago(a.at),
                    a.reconcile,
                    a.message
                        .as_deref()
                        .map(|m| format!("<p>{}</p>", esc(m)))
                        .unwrap_or_default(),
                    esc(&a.output)
                );
            } else {
                h.push('–');
            }
            h.push_str("</td></tr>");
        }
        h.push_str("</table>");
    }

    // Reconciles
    h.push_str("<h2>Reconciles</h2><table><tr><th>#</th><th>trigger</th><th>when</th><th>took</th><th>result</th><th>revision</th><th>actions</th><th>error</th></tr>");
    for r in &st.reconciles {
        let acts: Vec<String> = r
            .actions
            .iter()
            .map(|a| format!("{} {}/{} {}", a.kind, a.host, a.service, a.result))
            .collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}s</td><td class=\"{}\">{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            r.id,
            r.trigger.as_str(),
            ago(r.started_at),
            r.duration_seconds,
            if r.result == "success" { "ok" } else { "bad" },
            esc(&r.result),
            esc(r.revision.as_deref().map(crate::source::short).unwrap_or("–")),
            esc(&acts.join(", ")),
            esc(r.error.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table>");

    // Ledger: kept on disk, across restarts.
    if !st.ledger.is_empty() {
        h.push_str("<h2>Ledger <small><a href=\"/ledger\">all</a></small></h2><table><tr><th>#</th><th>when</th><th>who</th><th>result</th><th>revision</th><th>actions</th></tr>");
        for e in &st.ledger {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td><code>{}</code></td><td>{}</td></tr>",
                e.seq,
                ago(e.at),
                esc(&e.who),
                if e.result == "success" { "ok" } else { "bad" },
                esc(&e.result),
                esc(e.revision.as_deref().map(crate::source::short).unwrap_or("–")),
                esc(&e.actions.join(", "))
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

/// The plan awaiting approval and the sync windows, when there are any.
fn gates(h: &mut String, st: &StatusReport) {
    if let Some(a) = &st.awaiting_approval {
        let acts: Vec<String> = a
            .pending
            .actions
            .iter()
            .map(|x| format!("{} {}@{}", x.kind.as_str(), x.service, x.host))
            .collect();
        let _ = write!(
            h,
            "<p id=\"awaiting\" class=\"bad\">plan <code>{}</code> awaits approval ({}) since {}: \
<code>tend approve {}</code></p>",
            esc(&a.pending.id),
            esc(&acts.join(", ")),
            ago(a.since),
            esc(&a.pending.id)
        );
    }
    if st.windows.is_empty() {
        return;
    }
    h.push_str("<h2>Sync windows</h2><table><tr><th>window</th><th>kind</th><th>schedule</th><th>now</th></tr>");
    for w in &st.windows {
        let now = match (w.active, &w.until_local) {
            (true, Some(u)) => format!("active until {u}"),
            (false, Some(u)) => format!("opens {u}"),
            _ => "never opens".into(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code> {}</td><td>{}</td></tr>",
            esc(&w.name),
            w.kind.as_str(),
            esc(&w.schedule),
            esc(&w.timezone),
            esc(&now)
        );
    }
    h.push_str("</table>");
}

/// Services on several hosts, their instances grouped: progress and each
/// instance's state, so a rollout reads in one place.
fn rollouts(h: &mut String, st: &StatusReport) {
    if st.rollouts.is_empty() {
        return;
    }
    h.push_str("<h2>Services on several hosts</h2>");
    for r in &st.rollouts {
        let _ = write!(
            h,
            "<h3 id=\"rollout-{0}\">{0} <small>{1}; {2} unavailable of at most {3}</small></h3>",
            esc(&r.service),
            esc(&r.progress),
            r.unavailable,
            r.max_unavailable
        );
        if let Some(why) = &r.halted {
            let _ = write!(h, "<p class=\"bad\">{}</p>", esc(why));
        }
        h.push_str("<table><tr><th>instance</th><th>status</th><th>desired</th><th>observed</th><th>health</th></tr>");
        for s in st
            .hosts
            .iter()
            .flat_map(|x| &x.services)
            .filter(|s| s.name == r.service)
        {
            let class = match s.status {
                Status::InSync => "in_sync",
                Status::Drifted => "drifted",
                Status::Suspended => "suspended",
                Status::Unknown => "unknown",
            };
            let _ = write!(
                h,
                "<tr class=\"{class}\"><td><a href=\"#svc-{1}-{0}\">{0}@{1}</a></td><td class=\"st\">{2}</td>\
<td>{3}</td><td>{4}</td><td>{5}</td></tr>",
                esc(&s.name),
                esc(&s.host),
                class.replace('_', " "),
                esc(s.desired_version.as_deref().unwrap_or("–")),
                esc(s.observed_version.as_deref().unwrap_or("–")),
                match s.healthy {
                    Some(true) => "healthy",
                    Some(false) => "failing",
                    None => "–",
                }
            );
        }
        h.push_str("</table>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }
}
