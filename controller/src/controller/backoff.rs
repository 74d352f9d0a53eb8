//! Exponential backoff of unreachable hosts: policy, apart from the loop.

use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, Default)]
pub struct Backoff {
    pub failures: u32,
    pub until: Option<Instant>,
    pub until_wall: Option<SystemTime>,
    pub last_reason: String,
}

const BACKOFF_BASE: Duration = Duration::from_secs(5);

impl Backoff {
    pub fn fail(&mut self, reason: String, max: Duration) {
        self.failures = self.failures.saturating_add(1);
        let factor = 1u32
            .checked_shl(self.failures.saturating_sub(1).min(16))
            .unwrap_or(u32::MAX);
        let delay = BACKOFF_BASE.saturating_mul(factor).min(max);
        self.until = Some(Instant::now() + delay);
        self.until_wall = Some(SystemTime::now() + delay);
        self.last_reason = reason;
    }
    pub fn waiting(&self) -> bool {
        self.until.is_some_and(|u| Instant::now() < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let mut b = Backoff::default();
        let max = Duration::from_secs(60);
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            b.fail("x".into(), max);
            let d = b.until.unwrap().saturating_duration_since(Instant::now());
            assert!(d <= max);
            assert!(d + Duration::from_secs(1) >= last.min(max));
            last = d;
        }
        assert!(b.waiting());
        assert!(last > Duration::from_secs(50));
    }
}
