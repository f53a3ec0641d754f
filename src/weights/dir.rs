//! Where weights live.
//!
//! Resolution order (first match wins):
//! 1. `--weights-dir DIR` (the CLI flag; clap also fills it from `IMGCLASS_WEIGHTS_DIR`);
//! 2. `IMGCLASS_WEIGHTS_DIR` (read here too, for library callers that pass no flag);
//! 3. `./weights`, but only when it holds the weights of every model asked for;
//! 4. the user cache directory, `$XDG_CACHE_HOME/imgclass` (normally `~/.cache/imgclass`).
//!
//! The file of a model is `<dir>/<model>.safetensors`; `fetch` records where it came from in
//! `<dir>/<model>.safetensors.json`.

use crate::models::ModelKind;
use std::path::{Path, PathBuf};

/// Environment variable naming the weights directory.
pub const WEIGHTS_DIR_ENV: &str = "IMGCLASS_WEIGHTS_DIR";

/// The directory next to the working directory that is used when it holds the weights.
pub const LOCAL_DIR: &str = "./weights";

/// Why a directory was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirSource {
    /// `--weights-dir` (or `IMGCLASS_WEIGHTS_DIR` read by clap into the flag).
    Flag,
    /// `IMGCLASS_WEIGHTS_DIR`.
    Env,
    /// `./weights`, which holds every file asked for.
    Local,
    /// The user cache directory.
    UserCache,
    /// No cache directory is known (no home directory): `./weights` as the last resort.
    LocalFallback,
}

/// A resolved weights directory and the places that were considered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedDir {
    pub dir: PathBuf,
    pub source: DirSource,
    /// Every directory that was considered, in order (for "where it looked" messages).
    pub considered: Vec<PathBuf>,
}

impl ResolvedDir {
    /// True when the directory was named explicitly (flag or environment).
    pub fn is_explicit(&self) -> bool {
        matches!(self.source, DirSource::Flag | DirSource::Env)
    }

    /// Human description of the places considered, e.g. `./weights, /home/u/.cache/imgclass`.
    pub fn considered_display(&self) -> String {
        self.considered
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `$XDG_CACHE_HOME/imgclass` or `~/.cache/imgclass` (None when there is no home directory).
pub fn user_cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("imgclass"))
}

/// Resolve the weights directory for `kinds` (empty = every model), explaining the choice.
pub fn resolve(flag: Option<&Path>, kinds: &[ModelKind]) -> ResolvedDir {
    let env = std::env::var_os(WEIGHTS_DIR_ENV).filter(|v| !v.is_empty());
    resolve_with(
        flag,
        env.as_deref().map(Path::new),
        Path::new(LOCAL_DIR),
        user_cache_dir(),
        kinds,
    )
}

/// The resolution rule itself, with every input explicit (testable without touching the process).
pub fn resolve_with(
    flag: Option<&Path>,
    env: Option<&Path>,
    local: &Path,
    cache: Option<PathBuf>,
    kinds: &[ModelKind],
) -> ResolvedDir {
    if let Some(d) = flag {
        return ResolvedDir {
            dir: d.to_path_buf(),
            source: DirSource::Flag,
            considered: vec![d.to_path_buf()],
        };
    }
    if let Some(d) = env {
        return ResolvedDir {
            dir: d.to_path_buf(),
            source: DirSource::Env,
            considered: vec![d.to_path_buf()],
        };
    }
    let kinds: &[ModelKind] = if kinds.is_empty() {
        &ModelKind::ALL
    } else {
        kinds
    };
    let local = local.to_path_buf();
    if kinds.iter().all(|&k| weights_path(&local, k).is_file()) {
        return ResolvedDir {
            dir: local.clone(),
            source: DirSource::Local,
            considered: vec![local],
        };
    }
    match cache {
        Some(c) => ResolvedDir {
            dir: c.clone(),
            source: DirSource::UserCache,
            considered: vec![local, c],
        },
        None => ResolvedDir {
            dir: local.clone(),
            source: DirSource::LocalFallback,
            considered: vec![local],
        },
    }
}

/// `--weights-dir` flag > `IMGCLASS_WEIGHTS_DIR` > `./weights` (when it holds the files) > `~/.cache/imgclass`.
/// (The env var is normally read by clap into the flag; this also reads it for library callers.)
pub fn resolve_weights_dir(flag: Option<&Path>, kinds: &[ModelKind]) -> PathBuf {
    resolve(flag, kinds).dir
}

/// `<dir>/<model>.safetensors`.
pub fn weights_path(dir: &Path, kind: ModelKind) -> PathBuf {
    dir.join(format!("{}.safetensors", kind.name()))
}

/// `<dir>/<model>.safetensors.json`: the record `weights fetch` keeps of where the file came from.
pub fn record_path(dir: &Path, kind: ModelKind) -> PathBuf {
    dir.join(format!("{}.safetensors.json", kind.name()))
}

/// The command that fetches the weights of `kind` into `dir`.
pub fn fetch_command(kind: ModelKind, dir: &Path) -> String {
    let d = dir.display().to_string();
    let quoted = if d
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-~+=:,@".contains(c))
    {
        d
    } else {
        format!("'{}'", d.replace('\'', r"'\''"))
    };
    format!(
        "imgclass weights fetch --model {} --weights-dir {quoted}",
        kind.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: ModelKind = ModelKind::MobilenetV3Large;

    #[test]
    fn flag_beats_env_beats_local_beats_cache() {
        let t = tempfile::tempdir().unwrap();
        let local = t.path().join("weights");
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(weights_path(&local, MB), b"x").unwrap();
        let cache = Some(t.path().join("cache"));
        let flag = t.path().join("flag");
        let env = t.path().join("env");

        let r = resolve_with(Some(&flag), Some(&env), &local, cache.clone(), &[MB]);
        assert_eq!((r.dir, r.source), (flag.clone(), DirSource::Flag));
        let r = resolve_with(None, Some(&env), &local, cache.clone(), &[MB]);
        assert_eq!((r.dir, r.source), (env.clone(), DirSource::Env));
        let r = resolve_with(None, None, &local, cache.clone(), &[MB]);
        assert_eq!((r.dir, r.source), (local.clone(), DirSource::Local));
    }

    #[test]
    fn local_dir_is_used_only_when_it_holds_every_file_asked_for() {
        let t = tempfile::tempdir().unwrap();
        let local = t.path().join("weights");
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(weights_path(&local, MB), b"x").unwrap();
        let cache = t.path().join("cache");
        // Both models asked for (explicitly, and by the empty list): only one is there.
        for kinds in [&ModelKind::ALL[..], &[][..]] {
            let r = resolve_with(None, None, &local, Some(cache.clone()), kinds);
            assert_eq!(r.dir, cache);
            assert_eq!(r.source, DirSource::UserCache);
            assert_eq!(r.considered, vec![local.clone(), cache.clone()]);
        }
        // No cache directory at all: fall back to ./weights.
        let r = resolve_with(None, None, &local, None, &ModelKind::ALL);
        assert_eq!((r.dir, r.source), (local, DirSource::LocalFallback));
    }

    #[test]
    fn file_names_and_fetch_command() {
        let d = Path::new("/tmp/w");
        assert_eq!(
            weights_path(d, MB),
            PathBuf::from("/tmp/w/mobilenet_v3_large.safetensors")
        );
        assert_eq!(
            record_path(d, ModelKind::WideResnet50_2),
            PathBuf::from("/tmp/w/wide_resnet50_2.safetensors.json")
        );
        assert_eq!(
            fetch_command(MB, d),
            "imgclass weights fetch --model mobilenet_v3_large --weights-dir /tmp/w"
        );
        assert_eq!(
            fetch_command(MB, Path::new("/tmp/my w")),
            "imgclass weights fetch --model mobilenet_v3_large --weights-dir '/tmp/my w'"
        );
    }
}
