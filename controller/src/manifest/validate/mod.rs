//! Rules: raw documents → [`Desired`], collecting every problem on the way.

mod cross;
mod hosts;
mod placement;
mod rules;
mod services;

use super::raw::{At, HostDoc, ServiceDoc, S};
use super::tree::Tree;
use super::Diagnostic;
use super::Resolver;
use crate::model::Desired;
use std::collections::BTreeMap;
use std::time::Duration;

use cross::cross_checks;
use hosts::host;
pub use rules::{format_bytes, parse_bytes};
use services::service;

/// A document that parsed into its typed form.
#[derive(Debug, Clone)]
pub(crate) enum Parsed {
    Host(Box<HostDoc>),
    Service(Box<ServiceDoc>),
}

#[derive(Debug, Clone)]
pub(crate) struct ParsedDoc {
    pub file: String,
    pub doc: Parsed,
}

pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_RETRIES: u32 = 3;

#[derive(Default)]
pub(crate) struct Report {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Report {
    fn error(&mut self, file: &str, at: At, field: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(Diagnostic::new(file, at, field, msg));
    }
    fn warn(&mut self, file: &str, at: At, field: impl Into<String>, msg: impl Into<String>) {
        self.warnings.push(Diagnostic::new(file, at, field, msg));
    }
}

/// Where a thing was written, for messages that point at two places.
#[derive(Debug, Clone)]
struct Origin {
    file: String,
    at: At,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.at.line, self.at.column)
    }
}

/// What the cross-document rules need to know about a service.
struct ServiceInfo {
    file: String,
    spec_at: At,
    placement: placement::Placement,
    /// Resolved from `placement`.
    hosts: Vec<String>,
    ports: Vec<S<u16>>,
    depends_on: Vec<S<String>>,
    health_port: Option<(u16, At, String)>,
}

struct HostInfo {
    file: String,
    capacity_at: At,
}

/// Applies every rule to `docs`; returns the desired state when there was no error.
pub(crate) fn build(
    docs: Vec<ParsedDoc>,
    tree: &dyn Tree,
    resolver: Resolver,
    report: &mut Report,
) -> Option<Desired> {
    let mut desired = Desired::default();
    let mut host_info: BTreeMap<String, HostInfo> = BTreeMap::new();
    let mut host_names: BTreeMap<String, Origin> = BTreeMap::new();
    let mut service_names: BTreeMap<String, Origin> = BTreeMap::new();
    let mut service_info: BTreeMap<String, ServiceInfo> = BTreeMap::new();

    for d in docs {
        match d.doc {
            Parsed::Host(h) => {
                let name = &h.metadata.value.name;
                if let Some(first) = host_names.get(&name.value) {
                    report.error(
                        &d.file,
                        name.at,
                        "metadata.name",
                        format!("duplicate Host `{}`: first defined at {first}", name.value),
                    );
                    continue;
                }
                host_names.insert(
                    name.value.clone(),
                    Origin {
                        file: d.file.clone(),
                        at: name.at,
                    },
                );
                let capacity_at = h
                    .spec
                    .value
                    .capacity
                    .as_ref()
                    .map(|c| c.at)
                    .unwrap_or(h.spec.at);
                if let Some(host) = host(&d.file, &h, report) {
                    host_info.insert(
                        host.name.clone(),
                        HostInfo {
                            file: d.file.clone(),
                            capacity_at,
                        },
                    );
                    desired.hosts.insert(host.name.clone(), host);
                }
            }
            Parsed::Service(s) => {
                let name = &s.metadata.value.name;
                if let Some(first) = service_names.get(&name.value) {
                    report.error(
                        &d.file,
                        name.at,
                        "metadata.name",
                        format!(
                            "duplicate Service `{}`: first defined at {first}",
                            name.value
                        ),
                    );
                    continue;
                }
                service_names.insert(
                    name.value.clone(),
                    Origin {
                        file: d.file.clone(),
                        at: name.at,
                    },
                );
                let spec = &s.spec.value;
                let info = ServiceInfo {
                    file: d.file.clone(),
                    spec_at: s.spec.at,
                    placement: placement::read(&d.file, spec, s.spec.at, report),
                    hosts: Vec::new(),
                    ports: spec.ports.clone(),
                    depends_on: spec.depends_on.clone(),
                    health_port: spec.health.as_ref().and_then(|h| {
                        let h = &h.value;
                        if let Some(c) = &h.http {
                            Some((
                                c.value.port.value,
                                c.value.port.at,
                                "spec.health.http.port".into(),
                            ))
                        } else {
                            h.tcp.as_ref().map(|c| {
                                (
                                    c.value.port.value,
                                    c.value.port.at,
                                    "spec.health.tcp.port".into(),
                                )
                            })
                        }
                    }),
                };
                service_info.insert(name.value.clone(), info);
                if let Some(svc) = service(&d.file, &s, tree, resolver, report) {
                    desired.services.insert(svc.name.clone(), svc);
                }
            }
        }
    }

    placement::resolve(&mut desired, &mut service_info, report);
    cross_checks(&desired, &host_info, &service_info, report);
    report.errors.is_empty().then_some(desired)
}
