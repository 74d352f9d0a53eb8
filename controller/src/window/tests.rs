use super::*;
use chrono::TimeZone;

fn spec(name: &str, kind: WindowKind, cron: &str, secs: u64, tz: &str) -> WindowSpec {
    WindowSpec {
        name: name.into(),
        kind,
        schedule: cron.into(),
        duration: Duration::from_secs(secs),
        timezone: tz.into(),
        hosts: vec![],
        services: vec![],
        manual_override: false,
    }
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn windows(specs: &[WindowSpec]) -> Windows {
    Windows::new(specs).unwrap()
}

const H: u64 = 3600;

#[test]
fn a_window_is_active_from_its_firing_for_its_duration_only() {
    let w = Window::new(spec("w", WindowKind::Deny, "0 9 * * *", 2 * H, "UTC")).unwrap();
    assert_eq!(w.active_until(utc(2026, 6, 1, 8, 59)), None);
    assert_eq!(
        w.active_until(utc(2026, 6, 1, 9, 0)),
        Some(utc(2026, 6, 1, 11, 0))
    );
    assert_eq!(
        w.active_until(utc(2026, 6, 1, 10, 59)),
        Some(utc(2026, 6, 1, 11, 0))
    );
    assert_eq!(
        w.active_until(utc(2026, 6, 1, 11, 0)),
        None,
        "the end is open"
    );
}

#[test]
fn a_window_spanning_midnight_is_active_after_midnight() {
    let w = Window::new(spec("night", WindowKind::Allow, "0 22 * * *", 4 * H, "UTC")).unwrap();
    assert_eq!(
        w.active_until(utc(2026, 6, 2, 1, 30)),
        Some(utc(2026, 6, 2, 2, 0))
    );
    assert_eq!(w.active_until(utc(2026, 6, 2, 2, 30)), None);
    assert_eq!(
        w.active_until(utc(2026, 6, 1, 23, 0)),
        Some(utc(2026, 6, 2, 2, 0))
    );
}

#[test]
fn a_duration_longer_than_the_cron_period_merges_firings_into_one_period() {
    // Every hour on the hour for 90 minutes: one long period.
    let w = Window::new(spec("w", WindowKind::Deny, "0 * * * *", 90 * 60, "UTC")).unwrap();
    let until = w.active_until(utc(2026, 6, 1, 10, 10)).unwrap();
    assert!(until > utc(2026, 6, 1, 12, 0), "{until}");
    // Two firings a day, each 13 h long: never closes, end reported far out.
    let w = Window::new(spec("w", WindowKind::Deny, "0 0,12 * * *", 13 * H, "UTC")).unwrap();
    let until = w.active_until(utc(2026, 6, 1, 5, 0)).unwrap();
    assert!(until > utc(2026, 7, 1, 0, 0), "{until}");
}

#[test]
fn periods_that_only_touch_are_one_period() {
    let w = Window::new(spec("w", WindowKind::Deny, "0 */2 * * *", 2 * H, "UTC")).unwrap();
    let until = w.active_until(utc(2026, 6, 1, 1, 0)).unwrap();
    assert!(until > utc(2026, 6, 2, 0, 0), "{until}");
}

#[test]
fn a_named_zone_follows_daylight_saving_time() {
    // Europe/Berlin went to CEST on 2026-03-29: 09:00 local is 08:00 UTC
    // before, 07:00 UTC after.
    let w = Window::new(spec(
        "office",
        WindowKind::Deny,
        "0 9 * * *",
        H,
        "Europe/Berlin",
    ))
    .unwrap();
    assert_eq!(
        w.active_until(utc(2026, 3, 28, 8, 30)),
        Some(utc(2026, 3, 28, 9, 0))
    );
    assert_eq!(w.active_until(utc(2026, 3, 30, 8, 30)), None);
    assert_eq!(
        w.active_until(utc(2026, 3, 30, 7, 30)),
        Some(utc(2026, 3, 30, 8, 0))
    );
}

#[test]
fn a_firing_in_the_spring_forward_gap_still_opens_the_window() {
    // 02:30 does not exist in Berlin on 2026-03-29: croner fires at 03:00.
    let w = Window::new(spec(
        "w",
        WindowKind::Deny,
        "30 2 * * *",
        H,
        "Europe/Berlin",
    ))
    .unwrap();
    // 03:00 CEST is 01:00 UTC.
    assert!(w.active_until(utc(2026, 3, 29, 1, 30)).is_some());
}

#[test]
fn deny_wins_over_allow_when_both_are_active() {
    let ws = windows(&[
        spec("always", WindowKind::Allow, "0 0 * * *", 24 * H, "UTC"),
        spec("freeze", WindowKind::Deny, "0 9 * * *", 2 * H, "UTC"),
    ]);
    let hold = ws.at(utc(2026, 6, 1, 10, 0)).hold("api", "h1").unwrap();
    assert_eq!(hold.window, "freeze");
    assert_eq!(hold.kind, WindowKind::Deny);
    assert_eq!(
        hold.reason(),
        "held by deny window `freeze` until 11:00 UTC"
    );
    assert_eq!(ws.at(utc(2026, 6, 1, 12, 0)).hold("api", "h1"), None);
}

#[test]
fn an_inactive_deny_window_never_blocks() {
    let ws = windows(&[spec("freeze", WindowKind::Deny, "0 9 * * *", H, "UTC")]);
    assert_eq!(ws.at(utc(2026, 6, 1, 12, 0)).hold("api", "h1"), None);
    // Nor does it stop an active allow window from allowing.
    let ws = windows(&[
        spec("freeze", WindowKind::Deny, "0 9 * * *", H, "UTC"),
        spec("day", WindowKind::Allow, "0 8 * * *", 8 * H, "UTC"),
    ]);
    assert_eq!(ws.at(utc(2026, 6, 1, 12, 0)).hold("api", "h1"), None);
}

#[test]
fn without_allow_windows_everything_not_denied_is_allowed() {
    assert_eq!(windows(&[]).at(utc(2026, 6, 1, 3, 0)).hold("a", "h"), None);
}

#[test]
fn outside_every_allow_window_an_instance_is_held_until_the_next_one_opens() {
    let ws = windows(&[
        spec(
            "night",
            WindowKind::Allow,
            "0 22 * * *",
            4 * H,
            "Europe/Berlin",
        ),
        spec("noon", WindowKind::Allow, "0 12 * * *", H, "Europe/Berlin"),
    ]);
    // 08:00 UTC is 10:00 in Berlin in June: noon opens first.
    let now = utc(2026, 6, 1, 8, 0);
    let hold = ws.at(now).hold("api", "h1").unwrap();
    assert_eq!(hold.window, "noon");
    assert_eq!(
        hold.reason(),
        "held outside allow window `noon` (opens 12:00 Europe/Berlin)"
    );
    assert_eq!(ws.at(utc(2026, 6, 1, 10, 30)).hold("api", "h1"), None);
}

#[test]
fn windows_apply_only_to_the_hosts_and_services_they_select() {
    let mut deny = spec("db-freeze", WindowKind::Deny, "0 0 * * *", 24 * H, "UTC");
    deny.services = vec!["db".into()];
    deny.hosts = vec!["h1".into()];
    let ws = windows(&[deny]);
    let snap = ws.at(utc(2026, 6, 1, 12, 0));
    assert!(snap.hold("db", "h1").is_some());
    assert_eq!(snap.hold("db", "h2"), None);
    assert_eq!(snap.hold("api", "h1"), None);
    // An allow window for other services does not hold this one.
    let mut allow = spec("api-nights", WindowKind::Allow, "0 22 * * *", H, "UTC");
    allow.services = vec!["api".into()];
    let ws = windows(&[allow]);
    let snap = ws.at(utc(2026, 6, 1, 12, 0));
    assert!(snap.hold("api", "h1").is_some());
    assert_eq!(snap.hold("web", "h1"), None);
}

#[test]
fn overlapping_deny_windows_hold_until_the_last_one_ends_and_override_needs_all() {
    let mut a = spec("a", WindowKind::Deny, "0 9 * * *", 2 * H, "UTC");
    a.manual_override = true;
    let b = spec("b", WindowKind::Deny, "0 10 * * *", 3 * H, "UTC");
    let ws = windows(&[a, b]);
    let hold = ws.at(utc(2026, 6, 1, 10, 30)).hold("x", "h").unwrap();
    assert_eq!(
        (hold.window.as_str(), hold.until),
        ("b", Some(utc(2026, 6, 1, 13, 0)))
    );
    assert!(!hold.overridable);
    let hold = ws.at(utc(2026, 6, 1, 9, 30)).hold("x", "h").unwrap();
    assert!(hold.overridable, "only `a` is active");
}

#[test]
fn a_time_on_another_day_carries_its_date_and_seconds_show_when_set() {
    let tz: Tz = "Europe/Berlin".parse().unwrap();
    let now = utc(2026, 6, 1, 20, 0);
    assert_eq!(
        local_time(utc(2026, 6, 2, 7, 0), now, tz),
        "2026-06-02 09:00 Europe/Berlin"
    );
    let t = Utc.with_ymd_and_hms(2026, 6, 1, 20, 0, 15).unwrap();
    assert_eq!(local_time(t, now, tz), "22:00:15 Europe/Berlin");
}

#[test]
fn a_six_field_schedule_gives_windows_of_seconds() {
    let w = Window::new(spec("w", WindowKind::Deny, "0,30 * * * * *", 15, "UTC")).unwrap();
    let t = |s| Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, s).unwrap();
    assert_eq!(w.active_until(t(5)), Some(t(15)));
    assert_eq!(w.active_until(t(20)), None);
    assert_eq!(w.active_until(t(44)), Some(t(45)));
}

#[test]
fn bad_windows_are_refused_with_their_name() {
    let bad_tz = spec("w", WindowKind::Deny, "0 9 * * *", H, "Mars/Olympus");
    assert!(matches!(
        Windows::new(&[bad_tz]),
        Err(WindowError::TimeZone { .. })
    ));
    let bad_cron = spec("w", WindowKind::Deny, "0 25 * * *", H, "UTC");
    assert!(matches!(
        Windows::new(&[bad_cron]),
        Err(WindowError::Schedule { .. })
    ));
    let zero = spec("w", WindowKind::Deny, "0 9 * * *", 0, "UTC");
    assert_eq!(
        Windows::new(&[zero]).err(),
        Some(WindowError::Duration("w".into()))
    );
    let twice = spec("w", WindowKind::Deny, "0 9 * * *", H, "UTC");
    assert_eq!(
        Windows::new(&[twice.clone(), twice]).err(),
        Some(WindowError::Duplicate("w".into()))
    );
}
