//! Manifest documents exactly as written: serde + JSON Schema types, no rules.
//!
//! Every value a rule may point at is wrapped in [`S`] so diagnostics carry
//! its line and column. Rules live in `validate/`; the untyped pass in `node.rs`.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// A position in a YAML file, 1-based (0 when unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct At {
    pub line: usize,
    pub column: usize,
}

impl From<serde_saphyr::Location> for At {
    fn from(l: serde_saphyr::Location) -> Self {
        At {
            line: usize::try_from(l.line()).unwrap_or(0),
            column: usize::try_from(l.column()).unwrap_or(0),
        }
    }
}

/// A value with where it was written. Transparent to JSON Schema.
#[derive(Debug, Clone, PartialEq)]
pub struct S<T> {
    pub value: T,
    pub at: At,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for S<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(S {
            value: s.value,
            at: At::from(s.referenced),
        })
    }
}

impl<T: JsonSchema> JsonSchema for S<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

// ------------------------------------------------------------------ documents

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "tend/v1")]
    V1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum HostKind {
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum ServiceKind {
    Service,
}

/// A machine tend reaches over SSH (or the machine it runs on).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "Host")]
pub struct HostDoc {
    pub api_version: S<ApiVersion>,
    pub kind: S<HostKind>,
    pub metadata: S<Metadata>,
    pub spec: S<HostSpec>,
}

/// A program tend keeps running on one host.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "Service")]
pub struct ServiceDoc {
    pub api_version: S<ApiVersion>,
    pub kind: S<ServiceKind>,
    pub metadata: S<Metadata>,
    pub spec: S<ServiceSpec>,
}

/// The schema's root: any one tend document.
#[derive(JsonSchema)]
#[serde(untagged)]
#[schemars(title = "tend/v1 document")]
#[allow(dead_code)] // only its schema is used
pub enum Document {
    Host(Box<HostDoc>),
    Service(Box<ServiceDoc>),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// A DNS label (RFC 1123): lowercase letters, digits and `-`, at most 63.
    pub name: S<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, S<String>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostSpec {
    /// IP address or hostname, or `local` for the machine tend runs on.
    pub address: S<String>,
    /// SSH port (default 22).
    pub port: Option<S<u16>>,
    /// SSH user (default root).
    pub user: Option<S<String>>,
    /// Private key path on the controller (never in Git).
    pub identity: Option<S<String>>,
    /// Pinned host public keys, OpenSSH format: `ssh-ed25519 AAAA...`.
    #[serde(default)]
    pub host_keys: Vec<S<String>>,
    /// known_hosts file on the controller, used when no key is pinned.
    pub known_hosts: Option<S<String>>,
    /// tend's directory on the host (default /var/lib/tend). For `local`
    /// hosts a relative path or `~/...` is resolved on the controller.
    pub root: Option<S<String>>,
    pub capacity: Option<S<Capacity>>,
}

/// The host's memory budget: services' limits must fit in memory − reserved.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Total memory, e.g. `3.6GiB`.
    pub memory: S<ByteSize>,
    /// Used by things outside tend, e.g. `1.4GiB` (default 0).
    pub reserved: Option<S<ByteSize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Process,
    Systemd,
    Podman,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Name of a Host. Exactly one of `host`, `hosts`, `hostSelector`.
    pub host: Option<S<String>>,
    /// Names of Hosts: one instance on each.
    pub hosts: Option<S<Vec<S<String>>>>,
    /// Labels a Host must all have: one instance on each such host.
    pub host_selector: Option<S<BTreeMap<String, S<String>>>>,
    /// A `hostSelector` may match no host (otherwise that is an error).
    #[serde(default)]
    pub allow_no_hosts: bool,
    /// How an upgrade moves across the instances.
    pub rollout: Option<S<RolloutSpec>>,
    pub runtime: S<Runtime>,
    /// Required unless `source` is set (then `src-<digest>`).
    pub version: Option<S<String>>,
    /// Files shipped from this repository.
    pub source: Option<S<SourceRef>>,
    /// A file fetched on the host and checked against its sha256.
    pub artifact: Option<S<Artifact>>,
    /// Container image (podman only).
    pub image: Option<S<String>>,
    /// Shell steps run in the new release directory before it goes live.
    #[serde(default)]
    pub install: Vec<S<String>>,
    /// argv, run in the release directory.
    #[serde(default)]
    pub command: Vec<S<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, S<EnvSource>>,
    /// TCP ports the service listens on (host ports for podman).
    #[serde(default)]
    pub ports: Vec<S<u16>>,
    /// Memory limit, e.g. `512MiB` or `512MB`.
    pub memory: Option<S<ByteSize>>,
    pub health: Option<S<HealthSpec>>,
    /// Services (on any host) that must be healthy first.
    #[serde(default)]
    pub depends_on: Vec<S<String>>,
    /// Observe and report only; never act.
    #[serde(default)]
    pub suspend: bool,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    /// Directory relative to the repository root.
    pub path: S<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub url: S<String>,
    /// 64 hex digits.
    pub sha256: S<String>,
}

/// Exactly one of `http`, `tcp`, `command`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    pub http: Option<S<HttpCheck>>,
    pub tcp: Option<S<TcpCheck>>,
    /// argv run on the host in the release directory; exit 0 is healthy.
    pub command: Option<S<Vec<S<String>>>>,
    /// Between checks, e.g. `10s` (default 10s).
    pub interval: Option<S<String>>,
    /// For one check, e.g. `5s` (default 5s).
    pub timeout: Option<S<String>>,
    /// Failed checks before unhealthy (default 3).
    pub retries: Option<S<u32>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub port: S<u16>,
    /// Default `/`.
    pub path: Option<S<String>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    pub port: S<u16>,
}

/// Batches of an upgrade across a service's instances.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Instances down at once, counting those already down: `1` (default)
    /// or a percentage such as `25%` (rounded down, at least 1).
    pub max_unavailable: Option<S<ShareSpec>>,
    /// Wait after a batch turned healthy before the next starts, e.g. `10s`.
    pub pause_between: Option<S<String>>,
    /// `rollback` (default): a failed batch takes every upgraded instance
    /// back; `pause`: instances that passed their gate stay upgraded.
    pub failure_action: Option<S<FailureActionSpec>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureActionSpec {
    Rollback,
    Pause,
}

// ------------------------------------------------------------------ scalars

/// A count (`2`) or a percentage (`"25%"`) as written.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareSpec(pub String);

impl<'de> Deserialize<'de> for ShareSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ShareSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of instances or a percentage such as 25%")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ShareSpec, E> {
                Ok(ShareSpec(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ShareSpec, E> {
                Ok(ShareSpec(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ShareSpec, E> {
                Ok(ShareSpec(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for ShareSpec {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Share".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "description": "A number of instances (at least 1), or a percentage of them such as 25%.",
            "type": ["string", "integer"],
            "minimum": 1,
            "pattern": "^[0-9]+%?$"
        })
    }
}

/// A byte quantity as written: `512MiB`, `1.5GiB`, `2GB` or a number of bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ByteSize(pub String);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 512MiB or 1.5GiB")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                Ok(ByteSize(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                Ok(ByteSize(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                Ok(ByteSize(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for ByteSize {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "description": "Bytes, or a number with a unit: B, KiB, MiB, GiB, TiB (1024) or kB, MB, GB, TB (1000).",
            "type": ["string", "integer"],
            "minimum": 0,
            "pattern": "^[0-9]+(\\.[0-9]+)? ?(B|KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB)?$"
        })
    }
}

/// An environment value: a literal, or a secret resolved on the controller.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvSource {
    Literal(String),
    /// `{fromEnv: NAME}`: the controller's environment variable NAME.
    FromEnv(String),
    /// `{fromFile: PATH}`: the contents of a file on the controller.
    FromFile(String),
    /// `{fromAge: "-----BEGIN AGE ENCRYPTED FILE-----…"}`: an armored age
    /// file in Git, decrypted on the controller.
    FromAge(String),
}

impl<'de> Deserialize<'de> for EnvSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvSource;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, {fromEnv: NAME}, {fromFile: PATH} or {fromAge: ARMORED}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvSource, E> {
                Ok(EnvSource::Literal(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvSource, E> {
                Ok(EnvSource::Literal(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvSource, E> {
                Ok(EnvSource::Literal(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvSource, E> {
                Ok(EnvSource::Literal(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<EnvSource, E> {
                // The parser has already turned `1.10` into 1.1: refuse the guess.
                Err(E::custom(
                    "a decimal number would lose its spelling: quote it",
                ))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<EnvSource, A::Error> {
                let mut out = None;
                while let Some(key) = m.next_key::<String>()? {
                    let v: String = m.next_value()?;
                    let src = match key.as_str() {
                        "fromEnv" => EnvSource::FromEnv(v),
                        "fromFile" => EnvSource::FromFile(v),
                        "fromAge" => EnvSource::FromAge(v),
                        other => {
                            return Err(de::Error::unknown_field(
                                other,
                                &["fromEnv", "fromFile", "fromAge"],
                            ))
                        }
                    };
                    if out.replace(src).is_some() {
                        return Err(de::Error::custom(
                            "use one of fromEnv, fromFile or fromAge, not two",
                        ));
                    }
                }
                out.ok_or_else(|| de::Error::custom("expected fromEnv, fromFile or fromAge"))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for EnvSource {
    fn schema_name() -> Cow<'static, str> {
        "EnvValue".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "description": "A literal value, or a secret resolved on the controller: {fromEnv: NAME}, {fromFile: PATH} or {fromAge: ARMORED} (an ASCII-armored age file, decrypted with the controller's secrets.age_identities).",
            "oneOf": [
                {"type": ["string", "integer", "boolean"]},
                {"type": "object", "properties": {"fromEnv": {"type": "string"}},
                 "required": ["fromEnv"], "additionalProperties": false},
                {"type": "object", "properties": {"fromFile": {"type": "string"}},
                 "required": ["fromFile"], "additionalProperties": false},
                {"type": "object", "properties": {"fromAge": {"type": "string",
                   "pattern": "^\\s*-----BEGIN AGE ENCRYPTED FILE-----"}},
                 "required": ["fromAge"], "additionalProperties": false}
            ]
        })
    }
}

// ------------------------------------------------------------------ typed pass

/// What the first pass decided each document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    Host,
    Service,
    /// Already reported: consume and ignore.
    Skip,
}

/// A document in its typed form.
#[derive(Debug, Clone)]
pub enum TypedDoc {
    Host(Box<HostDoc>),
    Service(Box<ServiceDoc>),
    Skipped,
}

thread_local! {
    // serde-saphyr's multi-document reader takes a type, not a seed: the kinds
    // found by the first pass are queued here for the second pass on this thread.
    static KINDS: RefCell<VecDeque<DocKind>> = const { RefCell::new(VecDeque::new()) };
}

/// Runs `f` with `kinds` queued for [`TypedDoc`]'s deserializer.
pub fn with_kinds<R>(kinds: Vec<DocKind>, f: impl FnOnce() -> R) -> R {
    KINDS.with(|k| *k.borrow_mut() = kinds.into());
    let r = f();
    KINDS.with(|k| k.borrow_mut().clear());
    r
}

impl<'de> Deserialize<'de> for TypedDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let kind = KINDS
            .with(|k| k.borrow_mut().pop_front())
            .unwrap_or(DocKind::Skip);
        match kind {
            DocKind::Host => HostDoc::deserialize(d).map(|h| TypedDoc::Host(Box::new(h))),
            DocKind::Service => ServiceDoc::deserialize(d).map(|s| TypedDoc::Service(Box::new(s))),
            DocKind::Skip => IgnoredAny::deserialize(d).map(|_| TypedDoc::Skipped),
        }
    }
}
