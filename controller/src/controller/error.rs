//! The controller's error type.

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Window(#[from] crate::window::WindowError),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("cannot listen on {addr}: {why}")]
    Listen { addr: String, why: String },
}

impl ControllerError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ControllerError::Config(_) | ControllerError::Window(_) => "config",
            ControllerError::Source(e) => e.metric_label(),
            ControllerError::Listen { .. } => "listen",
            ControllerError::Ledger(_) => "ledger",
        }
    }
}
