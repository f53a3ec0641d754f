//! Downloading, verifying and converting weights; their on-disk status.
//!
//! `fetch` downloads the manifest's URL into a hidden temp file in the weights directory
//! (`.<model>.<random>.download`), checks the sha256 prefix, converts a torchvision `.pth` to
//! safetensors (a `.safetensors` mirror is taken as is), loads the result strictly, and only then
//! renames it to `<model>.safetensors`; a record `<model>.safetensors.json` notes where it came from.
//! An interrupted fetch leaves only hidden temp files, removed by the next fetch.

use super::dir::{self, ResolvedDir};
use super::manifest::{Manifest, ModelEntry};
use crate::models::{Classifier, ModelKind};
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::NamedTempFile;

/// What `fetch` writes next to a weights file: where it came from and its own hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FetchRecord {
    pub model: String,
    pub weights: String,
    pub url: String,
    /// sha256 of the downloaded file (checked against the manifest's prefix).
    pub source_sha256: String,
    pub source_bytes: u64,
    /// `pth` or `safetensors`.
    pub source_format: String,
    /// sha256 and size of `<model>.safetensors` as written.
    pub sha256: String,
    pub bytes: u64,
    pub imgclass_version: String,
}

/// Status of one model's weights in a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Present, and identical to what `fetch` wrote from the manifest's source.
    Verified,
    /// Present and readable as safetensors, but not known to come from the manifest's source.
    Present,
    /// Not there.
    Missing,
    /// There, but broken (truncated, altered, not safetensors, or failing the strict load).
    Invalid,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Verified => "verified",
            Status::Present => "present",
            Status::Missing => "missing",
            Status::Invalid => "invalid",
        })
    }
}

/// One row of `weights list`.
#[derive(Clone, Debug, Serialize)]
pub struct WeightsStatus {
    pub model: ModelKind,
    pub path: PathBuf,
    pub bytes: Option<u64>,
    pub status: Status,
    pub detail: String,
}

/// Options of `fetch`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FetchOptions {
    /// Download even when the weights are present.
    pub force: bool,
    /// Progress bar: `None` = only when stderr is a terminal.
    pub progress: Option<bool>,
}

/// What `fetch` did.
#[derive(Clone, Debug)]
pub enum FetchOutcome {
    /// Nothing downloaded: the file is already there (verified, or present without a record).
    AlreadyPresent(WeightsStatus),
    /// Downloaded, verified, converted and written.
    Fetched { path: PathBuf, record: FetchRecord },
}

fn download_err(url: &str, what: impl std::fmt::Display) -> Error {
    Error::Download(format!("{url}: {what}"))
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Download(format!("cannot {what} {}: {e}", path.display()))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// sha256 (lowercase hex) and size of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((hex(&h.finalize()), n_total))
}

/// Checks that `path` starts like a safetensors file (header length and JSON header within the file).
pub fn check_safetensors_header(path: &Path) -> std::result::Result<(), String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| "shorter than a safetensors header".to_string())?;
    let n = u64::from_le_bytes(len);
    if n == 0 || n > 100 << 20 || 8 + n > size {
        return Err(format!(
            "not a safetensors file (header length {n}, file size {size})"
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| e.to_string())?;
    match serde_json::from_slice::<serde_json::Value>(&header) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        _ => Err("not a safetensors file (its header is not a JSON object)".into()),
    }
}

fn read_record(path: &Path) -> std::result::Result<Option<FetchRecord>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("fetch record {} is unreadable: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "fetch record {} is unreadable: {e}",
            path.display()
        )),
    }
}

/// The status of `kind`'s weights in `dir`. With `check_load`, present files are also loaded strictly.
pub fn status(kind: ModelKind, dir: &Path, manifest: &Manifest, check_load: bool) -> WeightsStatus {
    let path = dir::weights_path(dir, kind);
    let mut row = WeightsStatus {
        model: kind,
        path: path.clone(),
        bytes: None,
        status: Status::Missing,
        detail: String::new(),
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            row.detail = format!("not there; get it with: {}", dir::fetch_command(kind, dir));
            return row;
        }
        Err(e) => {
            row.status = Status::Invalid;
            row.detail = format!("cannot read it: {e}");
            return row;
        }
    };
    row.bytes = Some(meta.len());
    if !meta.is_file() {
        row.status = Status::Invalid;
        row.detail = "not a regular file".into();
        return row;
    }
    if let Err(e) = check_safetensors_header(&path) {
        row.status = Status::Invalid;
        row.detail = e;
        return row;
    }
    let (status, detail) = match read_record(&dir::record_path(dir, kind)) {
        Err(e) => (Status::Present, e),
        Ok(None) => (
            Status::Present,
            "no fetch record (copied in or generated; `weights fetch --force` replaces it with the official weights)"
                .into(),
        ),
        Ok(Some(rec)) => match sha256_file(&path) {
            Err(e) => (Status::Invalid, format!("cannot read it: {e}")),
            Ok((sha, n)) if n != rec.bytes || sha != rec.sha256 => (
                Status::Invalid,
                format!(
                    "changed since it was fetched (sha256 {}, {} bytes; fetch record says {}, {} bytes)",
                    short(&sha), n, short(&rec.sha256), rec.bytes
                ),
            ),
            Ok(_) => match manifest.entry(kind) {
                Ok(entry) if entry.hash_matches(&rec.source_sha256) && rec.model == kind.name() => (
                    Status::Verified,
                    format!(
                        "fetched from {} (sha256 {}), matches the manifest",
                        rec.url,
                        short(&rec.source_sha256)
                    ),
                ),
                Ok(entry) => (
                    Status::Present,
                    format!(
                        "fetched from {} (sha256 {}), which is not the manifest's source ({}, sha256 {}...)",
                        rec.url,
                        short(&rec.source_sha256),
                        entry.url,
                        entry.sha256_prefix
                    ),
                ),
                Err(e) => (Status::Present, e.to_string()),
            },
        },
    };
    row.status = status;
    row.detail = detail;
    if check_load && matches!(row.status, Status::Present | Status::Verified) {
        if let Err(e) = Classifier::load(kind, &path) {
            row.status = Status::Invalid;
            row.detail = format!("strict load failed: {e}");
        }
    }
    row
}

fn short(sha: &str) -> String {
    format!("{}...", &sha[..sha.len().min(12)])
}

/// Remove this model's temp files left by an interrupted fetch (not touched for 10 minutes).
fn clean_stale_temp_files(dir: &Path, kind: ModelKind) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{}.", kind.name());
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `.<model>.*.download` etc., and the loader's own `..<model>.*.partial.*.partial`.
        let is_ours = name.starts_with('.')
            && name.trim_start_matches('.').starts_with(&prefix)
            && [".download", ".partial", ".record"]
                .iter()
                .any(|s| name.ends_with(s));
        if !is_ours {
            continue;
        }
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(600));
        if stale {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::info!(path = %e.path().display(), "removed a stale temp file"),
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), %err, "cannot remove a stale temp file")
                }
            }
        }
    }
}

fn temp_in(dir: &Path, kind: ModelKind, suffix: &str) -> Result<NamedTempFile> {
    let prefix = format!(".{}.", kind.name());
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix).suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Weights are not secret: readable by other users (e.g. a non-root service user).
        b.permissions(std::fs::Permissions::from_mode(0o644));
    }
    b.tempfile_in(dir)
        .map_err(|e| io_err("create a temp file in", dir, e))
}

fn progress_bar(len: Option<u64>, show: bool, msg: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    let template = if len.is_some() {
        "{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
    } else {
        "{msg} {spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg);
    pb
}

/// Most bytes a download of `entry` may have: its parameters at 8 bytes each (twice the f32
/// state_dict, which also holds BatchNorm statistics and pickle/zip or safetensors headers), plus
/// 1 MiB. A mirror sending more (an endless or wrong file) is cut off before it fills the disk.
pub fn max_download_bytes(entry: &ModelEntry) -> u64 {
    entry.num_params.saturating_mul(8).saturating_add(1 << 20)
}

/// Download `entry.url` into a temp file in `dir`, hashing as it goes. Returns the file, its sha256, its size.
fn download(
    entry: &ModelEntry,
    kind: ModelKind,
    dir: &Path,
    show_progress: bool,
) -> Result<(NamedTempFile, String, u64)> {
    let url = entry.url.as_str();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        // The bytes hashed must be the file's bytes: no transparent decompression.
        .accept_encoding("identity")
        .build()
        .into();
    tracing::info!(model = kind.name(), url, dir = %dir.display(), "downloading weights");
    let mut resp = agent.get(url).call().map_err(|e| download_err(url, e))?;
    let expected = resp.body().content_length();
    let cap = max_download_bytes(entry);
    let too_large = |what: String| {
        download_err(
            url,
            format!(
                "{what}, more than the {cap} bytes a state_dict of {} parameters can take; \
                 not downloaded further",
                entry.num_params
            ),
        )
    };
    if let Some(n) = expected.filter(|&n| n > cap) {
        return Err(too_large(format!("the server announces {n} bytes")));
    }
    let mut reader = resp.body_mut().as_reader();
    let mut tmp = temp_in(dir, kind, ".download")?;
    let pb = progress_bar(expected, show_progress, kind.name().to_string());
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                pb.abandon();
                return Err(download_err(
                    url,
                    format!("connection failed after {total} bytes: {e}"),
                ));
            }
        };
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| io_err("write", tmp.path(), e))?;
        total += n as u64;
        pb.inc(n as u64);
        if total > cap {
            pb.abandon();
            return Err(too_large(format!("the server sent over {total} bytes")));
        }
    }
    pb.finish_and_clear();
    if let Some(exp) = expected {
        if total != exp {
            return Err(download_err(
                url,
                format!("the server sent {total} of {exp} bytes"),
            ));
        }
    }
    if total == 0 {
        return Err(download_err(url, "the server sent an empty file"));
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_err("sync", tmp.path(), e))?;
    Ok((tmp, hex(&hasher.finalize()), total))
}

/// Download, verify, convert and install `kind`'s weights into `dir` (see the module docs).
pub fn fetch(
    kind: ModelKind,
    dir: &Path,
    manifest: &Manifest,
    opts: FetchOptions,
) -> Result<FetchOutcome> {
    let entry = manifest.entry(kind)?;
    if !opts.force {
        let st = status(kind, dir, manifest, false);
        match st.status {
            Status::Verified | Status::Present => return Ok(FetchOutcome::AlreadyPresent(st)),
            Status::Missing => {}
            Status::Invalid => {
                tracing::warn!(path = %st.path.display(), detail = %st.detail, "replacing invalid weights")
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err("create the weights directory", dir, e))?;
    clean_stale_temp_files(dir, kind);
    let show = opts
        .progress
        .unwrap_or_else(|| std::io::stderr().is_terminal());

    let (download, source_sha256, source_bytes) = download(entry, kind, dir, show)?;
    if !entry.hash_matches(&source_sha256) {
        return Err(Error::WeightsInvalid {
            path: entry.url.clone(),
            reason: format!(
                "sha256 {source_sha256} does not start with {} as the manifest ({}) requires; the download was discarded",
                entry.sha256_prefix, manifest.source
            ),
        });
    }
    tracing::info!(model = kind.name(), sha256 = %source_sha256, bytes = source_bytes, "download verified");

    let invalid = |reason: String| Error::WeightsInvalid {
        path: entry.url.clone(),
        reason,
    };
    let (installed, source_format) = if check_safetensors_header(download.path()).is_ok() {
        (download, "safetensors")
    } else {
        let tensors = super::load::read_tensors(download.path())
            .map_err(|e| invalid(format!("cannot read it as a torchvision state_dict: {e}")))?;
        let out = temp_in(dir, kind, ".partial")?;
        super::load::write_safetensors(&tensors, out.path())
            .map_err(|e| invalid(format!("cannot convert it to safetensors: {e}")))?;
        drop(tensors);
        drop(download);
        (out, "pth")
    };
    Classifier::load(kind, installed.path())
        .map_err(|e| invalid(format!("it does not load as {kind}: {e}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Weights are not secret: readable by other users (e.g. a non-root service user).
        std::fs::set_permissions(installed.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(|e| io_err("set permissions of", installed.path(), e))?;
    }
    File::open(installed.path())
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err("sync", installed.path(), e))?;
    let (sha256, bytes) =
        sha256_file(installed.path()).map_err(|e| io_err("read", installed.path(), e))?;
    let record = FetchRecord {
        model: kind.name().to_string(),
        weights: entry.weights.clone(),
        url: entry.url.clone(),
        source_sha256,
        source_bytes,
        source_format: source_format.to_string(),
        sha256,
        bytes,
        imgclass_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut rec_tmp = temp_in(dir, kind, ".record")?;
    let rec_json = serde_json::to_vec_pretty(&record)
        .map_err(|e| Error::Internal(format!("fetch record: {e}")))?;
    rec_tmp
        .write_all(&rec_json)
        .and_then(|()| rec_tmp.as_file().sync_all())
        .map_err(|e| io_err("write", rec_tmp.path(), e))?;

    // Install: drop the old record first, so a crash in between never pairs a new file with an old record.
    let path = dir::weights_path(dir, kind);
    let rec_path = dir::record_path(dir, kind);
    match std::fs::remove_file(&rec_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &rec_path, e)),
    }
    installed
        .persist(&path)
        .map_err(|e| io_err("install", &path, e.error))?;
    rec_tmp
        .persist(&rec_path)
        .map_err(|e| io_err("install", &rec_path, e.error))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    tracing::info!(model = kind.name(), path = %path.display(), bytes, "weights installed");
    Ok(FetchOutcome::Fetched { path, record })
}

/// The weights file classify should load for `kind`: the file in the resolved directory,
/// fetched first when it is missing (unless `offline`). Errors say what is missing, where it
/// looked, and the command that gets it.
pub fn ensure_weights(kind: ModelKind, resolved: &ResolvedDir, offline: bool) -> Result<PathBuf> {
    let path = dir::weights_path(&resolved.dir, kind);
    if path.exists() {
        return Ok(path);
    }
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let missing = format!(
        "weights missing: {file} is not in {} (looked in: {})",
        resolved.dir.display(),
        resolved.considered_display()
    );
    let get = format!("Get them with: {}", dir::fetch_command(kind, &resolved.dir));
    if offline {
        return Err(Error::WeightsMissing(format!(
            "{missing}; not downloading (--offline / IMGCLASS_OFFLINE). {get}"
        )));
    }
    let fetched =
        Manifest::load().and_then(|m| fetch(kind, &resolved.dir, &m, FetchOptions::default()));
    match fetched {
        Ok(_) => Ok(path),
        Err(e) => Err(Error::WeightsMissing(format!(
            "{missing}, and fetching them failed: {e}. {get} (without internet: copy {file} into {}, or point IMGCLASS_WEIGHTS_MANIFEST at a mirror)",
            resolved.dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_file_hash() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let (sha, n) = sha256_file(&p).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn safetensors_header_check() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, b"PK\x03\x04 this is a zip").unwrap();
        assert!(check_safetensors_header(&p).is_err());
        let header = br#"{"__metadata__":{}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        std::fs::write(&p, &bytes).unwrap();
        assert!(check_safetensors_header(&p).is_ok());
        // Truncated header.
        std::fs::write(&p, &bytes[..bytes.len() - 2]).unwrap();
        assert!(check_safetensors_header(&p).is_err());
    }

    #[test]
    fn status_missing_names_the_fetch_command() {
        let t = tempfile::tempdir().unwrap();
        let m = Manifest::embedded().unwrap();
        let s = status(ModelKind::MobilenetV3Large, t.path(), &m, false);
        assert_eq!(s.status, Status::Missing);
        assert!(s
            .detail
            .contains("imgclass weights fetch --model mobilenet_v3_large"));
    }

    #[test]
    fn stale_temp_files_are_cleaned_and_fresh_ones_kept() {
        let t = tempfile::tempdir().unwrap();
        let old = t.path().join(".mobilenet_v3_large.abc.download");
        let fresh = t.path().join(".mobilenet_v3_large.def.partial");
        let other = t.path().join(".wide_resnet50_2.abc.download");
        for p in [&old, &fresh, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        for p in [&old, &other] {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        clean_stale_temp_files(t.path(), ModelKind::MobilenetV3Large);
        assert!(!old.exists());
        assert!(fresh.exists());
        assert!(other.exists());
    }
}
