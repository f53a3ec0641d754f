//! The server's tracing subscriber: human-readable lines by default, JSON lines with `--json-logs`.
//! Logs go to stderr.

use crate::{Error, Result};
use tracing_subscriber::EnvFilter;

pub fn init(json: bool, filter: &str) -> Result<()> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| Error::Usage(format!("invalid --log filter {filter:?}: {e}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a subscriber installed earlier (e.g. by an embedding program) wins.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
    Ok(())
}
