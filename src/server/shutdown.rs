//! SIGTERM / SIGINT handling.

use crate::{Error, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Both termination signals, registered once at start (so a signal that arrives early is not lost).
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn register() -> Result<Signals> {
        let term = signal(SignalKind::terminate())
            .map_err(|e| Error::Internal(format!("cannot install the SIGTERM handler: {e}")))?;
        let int = signal(SignalKind::interrupt())
            .map_err(|e| Error::Internal(format!("cannot install the SIGINT handler: {e}")))?;
        Ok(Signals { term, int })
    }

    /// Wait for the next SIGTERM or SIGINT; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
