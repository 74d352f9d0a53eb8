//! The identity of one service on one host: what plan, order, apply, status,
//! metrics and notifications key by. A service name alone is not enough: a
//! service moving from host A to B has an instance on each for one run.

use crate::model::Desired;
use serde::{Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId {
    pub service: String,
    pub host: String,
}

impl InstanceId {
    pub fn new(service: impl Into<String>, host: impl Into<String>) -> InstanceId {
        InstanceId {
            service: service.into(),
            host: host.into(),
        }
    }
}

/// `service@host`, as the plan, status page and logs print it.
impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.service, self.host)
    }
}

impl Serialize for InstanceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The instances Git asks for of `service` (none when it is not in Git).
pub fn desired_instances(desired: &Desired, service: &str) -> Vec<InstanceId> {
    desired
        .services
        .get(service)
        .map(|s| {
            s.hosts
                .iter()
                .map(|h| InstanceId::new(&s.name, h))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_prints_and_serializes_as_service_at_host() {
        let i = InstanceId::new("api", "tencent");
        assert_eq!(i.to_string(), "api@tencent");
        assert_eq!(serde_json::to_string(&i).unwrap(), "\"api@tencent\"");
    }
}
