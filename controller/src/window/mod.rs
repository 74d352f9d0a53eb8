//! Sync windows: when drift may be acted on. Pure arithmetic over wall time.
//!
//! The rule: only *active* windows count; an active deny window that applies
//! to an instance holds it, whatever allow windows say (deny wins); when allow
//! windows apply to an instance, it is held outside all of them; with no allow
//! window, everything not denied is allowed. A window is active from each
//! firing of its cron (in its time zone) for `duration`; firings whose
//! periods touch or overlap make one longer period.

mod gate;

pub use gate::{gate, Gated};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Overlapping firings followed when computing where an active period ends;
/// past it the end reported is a lower bound (a window that never closes).
const MAX_CHAIN: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    Allow,
    Deny,
}

impl WindowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Allow => "allow",
            WindowKind::Deny => "deny",
        }
    }
}

/// One window as written in tend.yaml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    pub name: String,
    pub kind: WindowKind,
    /// Cron: 5 fields, or 6 with seconds first; read in `timezone`.
    pub schedule: String,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// IANA name (`Europe/Berlin`); UTC when absent.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Host names it applies to (none: every host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Service names it applies to (none: every service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// A manual trigger that asks for it (`--override-window`) may act
    /// while this window holds.
    #[serde(default)]
    pub manual_override: bool,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WindowError {
    #[error("windows: a window needs a name")]
    NoName,
    #[error("windows: {0:?} is declared twice")]
    Duplicate(String),
    #[error("windows: {name:?}: schedule {schedule:?}: {why}")]
    Schedule {
        name: String,
        schedule: String,
        why: String,
    },
    #[error("windows: {name:?}: {tz:?} is not an IANA time zone")]
    TimeZone { name: String, tz: String },
    #[error("windows: {0:?}: duration must be positive")]
    Duration(String),
}

#[derive(Debug, Clone)]
pub struct Window {
    pub spec: WindowSpec,
    cron: Cron,
    tz: Tz,
    duration: chrono::Duration,
}

impl Window {
    pub fn new(spec: WindowSpec) -> Result<Window, WindowError> {
        if spec.name.trim().is_empty() {
            return Err(WindowError::NoName);
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(spec.schedule.trim())
            .map_err(|e| WindowError::Schedule {
                name: spec.name.clone(),
                schedule: spec.schedule.clone(),
                why: e.to_string(),
            })?;
        let tz: Tz = spec.timezone.parse().map_err(|_| WindowError::TimeZone {
            name: spec.name.clone(),
            tz: spec.timezone.clone(),
        })?;
        let duration = chrono::Duration::from_std(spec.duration)
            .ok()
            .filter(|d| *d > chrono::Duration::zero())
            .ok_or_else(|| WindowError::Duration(spec.name.clone()))?;
        Ok(Window {
            spec,
            cron,
            tz,
            duration,
        })
    }

    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// Whether it applies to this instance (an empty list selects all).
    pub fn applies(&self, service: &str, host: &str) -> bool {
        let s = &self.spec;
        (s.services.is_empty() || s.services.iter().any(|x| x == service))
            && (s.hosts.is_empty() || s.hosts.iter().any(|x| x == host))
    }

    /// When active at `now`, the end of its active period.
    pub fn active_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.tz);
        // A firing `s` covers `now` when s <= now < s + duration.
        let first = self
            .cron
            .find_next_occurrence(&(local - self.duration), false)
            .ok()?;
        if first > local {
            return None;
        }
        let mut end = first + self.duration;
        let mut cursor = first;
        for _ in 0..MAX_CHAIN {
            match self.cron.find_next_occurrence(&cursor, false) {
                Ok(next) if next <= end => {
                    end = end.max(next + self.duration);
                    cursor = next;
                }
                _ => break,
            }
        }
        Some(end.with_timezone(&Utc))
    }

    /// The next firing strictly after `now`.
    pub fn next_start(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Every window of the configuration, validated.
#[derive(Debug, Clone, Default)]
pub struct Windows(Vec<Window>);

impl Windows {
    pub fn new(specs: &[WindowSpec]) -> Result<Windows, WindowError> {
        let mut out: Vec<Window> = Vec::with_capacity(specs.len());
        for s in specs {
            if out.iter().any(|w| w.spec.name == s.name) {
                return Err(WindowError::Duplicate(s.name.clone()));
            }
            out.push(Window::new(s.clone())?);
        }
        Ok(Windows(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each window's state at `now`, computed once for every instance.
    pub fn at(&self, now: DateTime<Utc>) -> Snapshot<'_> {
        let states = self
            .0
            .iter()
            .map(|w| WindowState {
                window: w,
                until: w.active_until(now),
            })
            .collect();
        Snapshot { now, states }
    }
}

#[derive(Debug, Clone)]
pub struct WindowState<'a> {
    pub window: &'a Window,
    /// Some(end) while active.
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    pub now: DateTime<Utc>,
    pub states: Vec<WindowState<'a>>,
}

/// Why an instance may not be acted on now.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub window: String,
    pub kind: WindowKind,
    /// Deny: when it ends; allow: when the next allow window opens.
    pub until: Option<DateTime<Utc>>,
    pub tz: Tz,
    /// A manual trigger with `--override-window` may act anyway.
    pub overridable: bool,
    now: DateTime<Utc>,
}

impl Hold {
    /// "held by deny window `business-hours` until 18:00 Europe/Berlin".
    pub fn reason(&self) -> String {
        let when = self
            .until
            .map(|t| local_time(t, self.now, self.tz))
            .unwrap_or_else(|| "an unknown time".into());
        match self.kind {
            WindowKind::Deny => {
                format!("held by deny window `{}` until {when}", self.window)
            }
            WindowKind::Allow => {
                format!("held outside allow window `{}` (opens {when})", self.window)
            }
        }
    }
}

/// `18:00 Europe/Berlin`, with the date when it is not today there and the
/// seconds when they are not zero.
pub fn local_time(t: DateTime<Utc>, now: DateTime<Utc>, tz: Tz) -> String {
    let (t, today) = (t.with_timezone(&tz), now.with_timezone(&tz));
    let clock = if t.format("%S").to_string() == "00" {
        "%H:%M"
    } else {
        "%H:%M:%S"
    };
    let fmt = if t.date_naive() == today.date_naive() {
        clock.to_string()
    } else {
        format!("%Y-%m-%d {clock}")
    };
    format!("{} {}", t.format(&fmt), tz.name())
}

impl Snapshot<'_> {
    /// Whether `service` on `host` is held, and by which window.
    pub fn hold(&self, service: &str, host: &str) -> Option<Hold> {
        let applying: Vec<&WindowState> = self
            .states
            .iter()
            .filter(|s| s.window.applies(service, host))
            .collect();
        let denying: Vec<&&WindowState> = applying
            .iter()
            .filter(|s| s.window.spec.kind == WindowKind::Deny && s.until.is_some())
            .collect();
        // Held until the last active deny ends; overridable only if all allow it.
        if let Some(last) = denying.iter().max_by_key(|s| s.until) {
            return Some(Hold {
                window: last.window.spec.name.clone(),
                kind: WindowKind::Deny,
                until: last.until,
                tz: last.window.tz,
                overridable: denying.iter().all(|s| s.window.spec.manual_override),
                now: self.now,
            });
        }
        let allows: Vec<&&WindowState> = applying
            .iter()
            .filter(|s| s.window.spec.kind == WindowKind::Allow)
            .collect();
        if allows.is_empty() || allows.iter().any(|s| s.until.is_some()) {
            return None;
        }
        let next = allows
            .iter()
            .map(|s| (s.window.next_start(self.now), s))
            .min_by_key(|(t, _)| t.unwrap_or(DateTime::<Utc>::MAX_UTC))?;
        Some(Hold {
            window: next.1.window.spec.name.clone(),
            kind: WindowKind::Allow,
            until: next.0,
            tz: next.1.window.tz,
            overridable: allows.iter().any(|s| s.window.spec.manual_override),
            now: self.now,
        })
    }
}

#[cfg(test)]
mod tests;
