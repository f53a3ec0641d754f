//! STUB (owner: server): `imgclass serve`.

use crate::{Error, Result};

/// Flags of `imgclass serve` (each also read from an `IMGCLASS_*` environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {}

/// Run the server until SIGTERM/SIGINT.
pub fn run(_args: ServeArgs) -> Result<()> {
    Err(Error::Internal("serve not implemented yet".into()))
}
