//! STUB (owner: performance): `imgclass bench`.

use crate::{Error, Result};

/// Flags of `imgclass bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> Result<()> {
    Err(Error::Internal("bench not implemented yet".into()))
}
