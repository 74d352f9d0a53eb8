//! The gates as one value that travels into `apply`: apply plans again under
//! each host's lock (fresh observations), and what the windows and modes
//! hold must stay held in that plan too. Pure.

use crate::approval::{self, Held, Modes};
use crate::plan::Plan;
use crate::window::{self, Gated, Windows};

#[derive(Debug, Clone, Default)]
pub struct Gates {
    pub windows: Windows,
    /// A manual trigger asked to act past windows that allow it.
    pub overriding: bool,
    pub modes: Modes,
    pub revision: String,
    /// The approved plan id these actions may run under.
    pub approved: Option<String>,
}

impl Gates {
    /// Take what is held out of `p`, as of now.
    pub fn hold(&self, p: &mut Plan) -> (Gated, Held) {
        let gated = if self.windows.is_empty() {
            Gated::default()
        } else {
            window::gate(p, &self.windows.at(chrono::Utc::now()), self.overriding)
        };
        let held = if self.modes.all_auto() {
            Held::default()
        } else {
            approval::hold(p, &self.modes, &self.revision, self.approved.as_deref())
        };
        (gated, held)
    }
}
