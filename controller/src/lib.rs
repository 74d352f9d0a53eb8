//! tend: a GitOps reconcile controller for plain servers reached over SSH.
//!
//! One module per pipeline stage: `source` → `manifest` → `observe` → `plan`
//! → `apply` → `report`/`server`. `plan` is pure; `runtime`s render shell
//! scripts; `transport`s run them.

pub mod apply;
pub mod approval;
pub mod config;
pub mod controller;
pub mod forge;
pub mod gate;
pub mod health;
pub mod instance;
pub mod ledger;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod observe;
pub mod plan;
pub mod record;
pub mod runtime;
pub mod server;
pub mod shell;
pub mod source;
pub mod transport;
pub mod window;
