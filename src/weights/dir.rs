//! STUB (owner: CLI/weights): where weights live.

use crate::models::ModelKind;
use std::path::{Path, PathBuf};

/// `--weights-dir` flag > `IMGCLASS_WEIGHTS_DIR` > `./weights` (when it holds the files) > `~/.cache/imgclass`.
/// (The env var is normally read by clap into the flag; this also reads it for library callers.)
pub fn resolve_weights_dir(flag: Option<&Path>, _kinds: &[ModelKind]) -> PathBuf {
    flag.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("weights"))
}

/// `<dir>/<model>.safetensors`.
pub fn weights_path(dir: &Path, kind: ModelKind) -> PathBuf {
    dir.join(format!("{}.safetensors", kind.name()))
}
