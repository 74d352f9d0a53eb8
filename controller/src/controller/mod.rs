//! The controller loop: triggers → source → load → observe → plan → apply →
//! report. One reconcile at a time; each host in its own task with its own
//! timeout and backoff. `worker` is the pipeline, one file per step
//! (`source_step`, `observe_step`, `engine` for apply, `report`); `context`
//! is the state the loop and the HTTP server share; the policies
//! (`backoff`, `coalesce`, `checks`, `schedule`) sit beside it.

mod apply_step;
mod backoff;
pub mod checks;
pub mod coalesce;
pub mod context;
pub mod engine;
mod error;
mod forge_step;
mod gate_step;
mod ledger_step;
pub mod memory;
mod observe_step;
mod report;
mod running;
pub mod schedule;
mod source_step;
pub mod status;
mod worker;

pub use context::Context;
pub use error::ControllerError;
pub use running::{make_source, run, spawn, Running};
