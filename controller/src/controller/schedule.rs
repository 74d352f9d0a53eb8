//! The cron schedule (croner; 5 POSIX fields, or 6 with seconds first) and
//! the task that turns it into `schedule` triggers.

use super::coalesce::{Coalescer, Trigger};
use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    text: String,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(text.trim())
            .map_err(|e| format!("{text:?}: {e}"))?;
        Ok(Schedule {
            cron,
            text: text.trim().to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first firing strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&t, false).ok()
    }
}

/// Wall time that follows tokio's clock, so paused-time tests drive the
/// schedule; in production it is the system clock.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    /// Wall time at `.1`, advanced by tokio's (possibly paused) clock.
    Tokio(DateTime<Utc>, tokio::time::Instant),
}

impl Clock {
    pub fn tokio_at(start: DateTime<Utc>) -> Clock {
        Clock::Tokio(start, tokio::time::Instant::now())
    }
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio(wall, at) => {
                let d = tokio::time::Instant::now().saturating_duration_since(*at);
                *wall + chrono::Duration::from_std(d).unwrap_or_default()
            }
        }
    }
}

/// Fire `schedule` triggers through `fire` (which counts and queues them, as
/// every other trigger is) forever, until the coalescer closes.
pub async fn run(
    schedule: Schedule,
    coalescer: Arc<Coalescer>,
    clock: Clock,
    fire: impl Fn(Trigger) + Send,
) {
    let mut after = clock.now();
    loop {
        let Some(next) = schedule.next_after(after) else {
            tracing::warn!(
                schedule = schedule.as_str(),
                "schedule has no next firing; stopping it"
            );
            return;
        };
        let wait = (next - clock.now()).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
        if coalescer.is_closed() {
            return;
        }
        fire(Trigger::Schedule);
        // A slow machine (or a suspended laptop) skips missed firings: one is enough.
        after = next.max(clock.now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_schedules_parse() {
        let s5 = Schedule::parse("*/5 * * * *").unwrap();
        let s6 = Schedule::parse("*/10 * * * * *").unwrap();
        let t: DateTime<Utc> = "2026-01-01T00:00:01Z".parse().unwrap();
        assert_eq!(
            s5.next_after(t).unwrap().to_rfc3339(),
            "2026-01-01T00:05:00+00:00"
        );
        assert_eq!(
            s6.next_after(t).unwrap().to_rfc3339(),
            "2026-01-01T00:00:10+00:00"
        );
        assert!(Schedule::parse("every minute").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_minutely_schedule_fires_once_a_minute() {
        let c = Arc::new(Coalescer::new());
        let start: DateTime<Utc> = "2026-01-01T00:00:30Z".parse().unwrap();
        let counted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (q, n) = (c.clone(), counted.clone());
        let task = tokio::spawn(run(
            Schedule::parse("* * * * *").unwrap(),
            c.clone(),
            Clock::tokio_at(start),
            move |t| {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                q.trigger(t);
            },
        ));
        // Drain the queue as a worker would, counting schedule firings.
        let mut fired = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5 * 60 + 1);
        while let Ok(Some(q)) = tokio::time::timeout_at(deadline, c.next()).await {
            assert_eq!(q.trigger, Trigger::Schedule);
            fired += 1;
            c.finish();
        }
        // 00:01, 00:02, 00:03, 00:04, 00:05
        assert_eq!(fired, 5);
        assert_eq!(
            counted.load(std::sync::atomic::Ordering::SeqCst),
            5,
            "each firing counted"
        );
        task.abort();
    }
}
