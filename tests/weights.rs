//! `imgclass weights fetch|list` and classify's own fetch, against a tiny HTTP server on 127.0.0.1
//! (the manifest override `IMGCLASS_WEIGHTS_MANIFEST` points the downloader at it). No other network.

mod common;

use common::*;
use imgclass::error::exit_code;
use imgclass::models::ModelKind;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

const MB: ModelKind = ModelKind::MobilenetV3Large;

/// What the server answers on a path.
#[derive(Clone)]
enum Reply {
    /// 200 with this body.
    Body(Arc<Vec<u8>>),
    /// 200 announcing the full length, then the first `send` bytes, then the connection is closed.
    Truncated(Arc<Vec<u8>>, usize),
    /// This status, empty body.
    Status(u16),
    /// 200 with this body and no Content-Length (the end is the connection's close).
    Unannounced(Arc<Vec<u8>>),
}

struct Server {
    base: String,
    hits: Arc<AtomicUsize>,
}

fn handle(mut s: TcpStream, routes: &HashMap<String, Reply>) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut first = String::new();
    r.read_line(&mut first)?;
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 || l == "\r\n" || l == "\n" {
            break;
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    match routes.get(&path).cloned().unwrap_or(Reply::Status(404)) {
        Reply::Body(b) => {
            write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n", b.len())?;
            s.write_all(&b)?;
        }
        Reply::Truncated(b, send) => {
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                b.len()
            )?;
            s.write_all(&b[..send])?;
            s.flush()?;
            s.shutdown(std::net::Shutdown::Both)?;
        }
        Reply::Unannounced(b) => {
            write!(s, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            s.write_all(&b)?;
        }
        Reply::Status(code) => {
            write!(
                s,
                "HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
        }
    }
    Ok(())
}

/// Serve `routes` on an ephemeral loopback port for the rest of the test process.
fn serve(routes: HashMap<String, Reply>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let routes = Arc::new(routes);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            h.fetch_add(1, Ordering::SeqCst);
            let routes = routes.clone();
            std::thread::spawn(move || {
                let _ = handle(s, &routes);
            });
        }
    });
    Server { base, hits }
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn mb_safetensors() -> Arc<Vec<u8>> {
    static B: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    B.get_or_init(|| Arc::new(std::fs::read(synthetic_weights_file(MB)).unwrap()))
        .clone()
}

fn mb_pth() -> Arc<Vec<u8>> {
    static B: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    B.get_or_init(|| Arc::new(synthetic_pth_bytes(MB))).clone()
}

/// A server with `reply` at `/<name>`, and a manifest in `home` naming it for MobileNet with
/// `prefix` (default: the true one of the body). Returns the server and the manifest path.
fn setup(home: &Path, name: &str, reply: Reply, prefix: Option<&str>) -> (Server, PathBuf) {
    let body_prefix = match &reply {
        Reply::Body(b) | Reply::Truncated(b, _) | Reply::Unannounced(b) => {
            sha256_hex(b)[..8].to_string()
        }
        Reply::Status(_) => "abcdef12".into(),
    };
    let prefix = prefix.map(str::to_string).unwrap_or(body_prefix);
    let server = serve(HashMap::from([(format!("/{name}"), reply)]));
    let manifest = home.join("mirror-manifest.json");
    write_manifest(&manifest, MB, &format!("{}/{name}", server.base), &prefix);
    (server, manifest)
}

fn weights_cmd(home: &Path, manifest: &Path, args: &[&str]) -> std::process::Output {
    imgclass_cmd(home)
        .env("IMGCLASS_WEIGHTS_MANIFEST", manifest)
        .args(args)
        .output()
        .unwrap()
}

fn fetch_mb(home: &Path, manifest: &Path, dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "weights",
        "fetch",
        "--model",
        "mobilenet_v3_large",
        "--weights-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    weights_cmd(home, manifest, &args)
}

fn list_json(
    home: &Path,
    manifest: &Path,
    dir: &Path,
    extra: &[&str],
) -> (i32, Vec<serde_json::Value>) {
    let mut args = vec![
        "weights",
        "list",
        "--json",
        "--weights-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = weights_cmd(home, manifest, &args);
    (code(&o), json_lines(&o))
}

fn status_of<'a>(rows: &'a [serde_json::Value], model: &str) -> &'a serde_json::Value {
    rows.iter().find(|r| r["model"] == model).unwrap()
}

fn classify_offline(home: &Path, dir: &Path) -> Vec<serde_json::Value> {
    write_png(&home.join("probe.png"), 250, 230, 42);
    let o = run(
        home,
        &[
            "classify",
            "--model",
            "mobilenet_v3_large",
            "--weights-dir",
            dir.to_str().unwrap(),
            "--offline",
            "probe.png",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    json_lines(&o)
}

#[test]
fn fetch_a_safetensors_mirror_verifies_installs_and_records_it() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let body = mb_safetensors();
    let (server, manifest) = setup(
        h,
        "mobilenet_v3_large-mirror.safetensors",
        Reply::Body(body.clone()),
        None,
    );
    let dir = h.join("w");
    let o = fetch_mb(h, &manifest, &dir, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        !stderr(&o).contains('\r'),
        "no progress bar when stderr is not a terminal"
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    // Installed byte for byte, with a record of the source, and no temp file left.
    assert_eq!(
        std::fs::read(dir.join("mobilenet_v3_large.safetensors")).unwrap(),
        *body
    );
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("mobilenet_v3_large.safetensors.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["source_sha256"], sha256_hex(&body));
    assert_eq!(rec["source_format"], "safetensors");
    assert_eq!(rec["bytes"], body.len());
    assert_eq!(
        list_dir(&dir),
        [
            "mobilenet_v3_large.safetensors",
            "mobilenet_v3_large.safetensors.json"
        ]
    );

    // list: MobileNet verified, Wide ResNet missing with the command that gets it.
    let (c, rows) = list_json(h, &manifest, &dir, &[]);
    assert_eq!(c, 0);
    assert_eq!(rows.len(), 2);
    assert_eq!(status_of(&rows, "mobilenet_v3_large")["status"], "verified");
    assert_eq!(status_of(&rows, "mobilenet_v3_large")["bytes"], body.len());
    let w = status_of(&rows, "wide_resnet50_2");
    assert_eq!(w["status"], "missing");
    assert!(w["detail"]
        .as_str()
        .unwrap()
        .contains("imgclass weights fetch --model wide_resnet50_2"));
    // --check loads it strictly: still verified.
    let (c, rows) = list_json(h, &manifest, &dir, &["--check"]);
    assert_eq!(c, 0);
    assert_eq!(status_of(&rows, "mobilenet_v3_large")["status"], "verified");
    // The human table says the same.
    let o = weights_cmd(
        h,
        &manifest,
        &["weights", "list", "--weights-dir", dir.to_str().unwrap()],
    );
    let table = stdout(&o);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("mobilenet_v3_large") && l.contains("verified")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("wide_resnet50_2") && l.contains("missing")),
        "{table}"
    );

    // A second fetch downloads nothing; --force downloads again.
    let o = fetch_mb(h, &manifest, &dir, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("already verified"), "{}", stdout(&o));
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    let o = fetch_mb(h, &manifest, &dir, &["--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);

    // The fetched weights classify like the originals.
    assert_eq!(
        classify_offline(h, &dir),
        classify_offline(h, synthetic_weights_dir(MB))
    );
}

#[test]
fn fetch_a_torchvision_pth_converts_it_to_safetensors() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let pth = mb_pth();
    let prefix = sha256_hex(&pth)[..8].to_string();
    let name = format!("mobilenet_v3_large-{prefix}.pth");
    let (_server, manifest) = setup(h, &name, Reply::Body(pth.clone()), None);
    let dir = h.join("w");
    let o = fetch_mb(h, &manifest, &dir, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let installed = dir.join("mobilenet_v3_large.safetensors");
    imgclass::weights::fetch::check_safetensors_header(&installed).unwrap();
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("mobilenet_v3_large.safetensors.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["source_format"], "pth");
    assert_eq!(rec["source_sha256"], sha256_hex(&pth));
    assert_eq!(
        list_dir(&dir),
        [
            "mobilenet_v3_large.safetensors",
            "mobilenet_v3_large.safetensors.json"
        ]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o044,
            0o044,
            "weights are readable by other users: {mode:o}"
        );
    }
    let (_, rows) = list_json(h, &manifest, &dir, &[]);
    assert_eq!(status_of(&rows, "mobilenet_v3_large")["status"], "verified");
    // Same tensors, same answers.
    assert_eq!(
        classify_offline(h, &dir),
        classify_offline(h, synthetic_weights_dir(MB))
    );
}

#[test]
fn a_wrong_hash_is_refused_and_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let body = mb_safetensors();
    let real = sha256_hex(&body);
    let wrong = if real.starts_with("00000000") {
        "11111111"
    } else {
        "00000000"
    };
    let (_server, manifest) = setup(h, "m.safetensors", Reply::Body(body), Some(wrong));
    let dir = h.join("w");
    let o = fetch_mb(h, &manifest, &dir, &[]);
    assert_eq!(code(&o), exit_code::WEIGHTS, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(&real), "names the hash it got: {err}");
    assert!(err.contains(wrong), "and the one it expected: {err}");
    assert_dir_empty(&dir);
}

#[test]
fn a_connection_dropped_mid_body_is_an_error_and_leaves_nothing_complete() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let body = mb_safetensors();
    let half = body.len() / 2;
    let (_server, manifest) = setup(h, "m.safetensors", Reply::Truncated(body, half), None);
    let dir = h.join("w");
    let o = fetch_mb(h, &manifest, &dir, &[]);
    assert_eq!(code(&o), exit_code::WEIGHTS, "{}", stderr(&o));
    assert!(stderr(&o).contains("download_failed"), "{}", stderr(&o));
    assert_dir_empty(&dir);
    let (_, rows) = list_json(h, &manifest, &dir, &[]);
    assert_eq!(status_of(&rows, "mobilenet_v3_large")["status"], "missing");
}

#[test]
fn a_download_larger_than_the_model_can_be_is_cut_off_and_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // A manifest claiming 1000 parameters: at most 8 * 1000 bytes + 1 MiB may come.
    let cap = 8 * 1000 + (1 << 20);
    let body = Arc::new(vec![7u8; 2 << 20]);
    for reply in [Reply::Body(body.clone()), Reply::Unannounced(body.clone())] {
        let announced = matches!(reply, Reply::Body(_));
        let (_server, manifest) = setup(h, "big.safetensors", reply, None);
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        for e in m["models"].as_array_mut().unwrap() {
            e["num_params"] = 1000.into();
        }
        std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
        let dir = h.join("w");
        let o = fetch_mb(h, &manifest, &dir, &[]);
        assert_eq!(code(&o), exit_code::WEIGHTS, "{}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("download_failed"), "{err}");
        assert!(err.contains(&format!("more than the {cap} bytes")), "{err}");
        if announced {
            assert!(err.contains(&format!("announces {}", 2 << 20)), "{err}");
        } else {
            assert!(err.contains("sent over"), "{err}");
        }
        assert_dir_empty(&dir);
    }
}

#[test]
fn http_errors_and_bad_files_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let dir = h.join("w");
    // 404.
    let (_s, manifest) = setup(h, "gone.pth", Reply::Status(404), None);
    let o = fetch_mb(h, &manifest, &dir, &[]);
    assert_eq!(code(&o), exit_code::WEIGHTS);
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));
    assert_dir_empty(&dir);
    // The right hash, but not weights of this model: refused by the strict load, nothing installed.
    let junk = Arc::new(b"PK\x03\x04 definitely not a torch file".repeat(100));
    let (_s, manifest) = setup(h, "junk.pth", Reply::Body(junk), None);
    let o = fetch_mb(h, &manifest, &dir, &[]);
    assert_eq!(code(&o), exit_code::WEIGHTS);
    assert!(stderr(&o).contains("weights_invalid"), "{}", stderr(&o));
    assert_dir_empty(&dir);
    // Wide ResNet's file name, MobileNet's weights.
    let (_s, manifest) = setup(h, "wrn.safetensors", Reply::Body(mb_safetensors()), None);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let mb_entry = m["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "mobilenet_v3_large")
        .unwrap()
        .clone();
    let mut swapped = m.clone();
    for e in swapped["models"].as_array_mut().unwrap() {
        if e["name"] == "wide_resnet50_2" {
            e["url"] = mb_entry["url"].clone();
            e["sha256_prefix"] = mb_entry["sha256_prefix"].clone();
        }
    }
    std::fs::write(&manifest, serde_json::to_vec(&swapped).unwrap()).unwrap();
    let o = weights_cmd(
        h,
        &manifest,
        &[
            "weights",
            "fetch",
            "--model",
            "wide_resnet50_2",
            "--weights-dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), exit_code::WEIGHTS);
    assert!(
        stderr(&o).contains("does not load as wide_resnet50_2"),
        "{}",
        stderr(&o)
    );
    assert_dir_empty(&dir);
    // A broken manifest override.
    std::fs::write(
        h.join("broken.json"),
        b"{\"format_version\": 1, \"models\": [",
    )
    .unwrap();
    let o = fetch_mb(h, &h.join("broken.json"), &dir, &[]);
    assert_eq!(code(&o), exit_code::WEIGHTS);
    assert!(stderr(&o).contains("broken.json"), "{}", stderr(&o));
}

#[test]
fn classify_fetches_missing_weights_itself_once() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let (server, manifest) = setup(h, "mb.safetensors", Reply::Body(mb_safetensors()), None);
    write_png(&h.join("a.png"), 300, 240, 3);
    // No --weights-dir: the user cache (XDG_CACHE_HOME=<home>/.cache) is where it goes.
    let classify = || {
        imgclass_cmd(h)
            .env("IMGCLASS_WEIGHTS_MANIFEST", &manifest)
            .args(["classify", "--model", "mobilenet_v3_large", "a.png"])
            .output()
            .unwrap()
    };
    let o = classify();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json_lines(&o).len(), 1);
    let cache = h.join(".cache/imgclass");
    assert!(cache.join("mobilenet_v3_large.safetensors").is_file());
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    let o = classify();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        server.hits.load(Ordering::SeqCst),
        1,
        "the second run uses the cached file"
    );
    let (_, rows) = list_json(h, &manifest, &cache, &[]);
    assert_eq!(status_of(&rows, "mobilenet_v3_large")["status"], "verified");
}

#[test]
fn list_tells_verified_present_and_invalid_apart() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let (_s, manifest) = setup(h, "mb.safetensors", Reply::Body(mb_safetensors()), None);
    let dir = h.join("w");
    assert_eq!(code(&fetch_mb(h, &manifest, &dir, &[])), 0);
    let file = dir.join("mobilenet_v3_large.safetensors");

    // One byte changed in the tensor data, same size: invalid ("changed since it was fetched").
    let mut bytes = std::fs::read(&file).unwrap();
    let i = bytes.len() - 1000;
    bytes[i] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let (c, rows) = list_json(h, &manifest, &dir, &[]);
    assert_eq!(c, exit_code::WEIGHTS);
    let r = status_of(&rows, "mobilenet_v3_large");
    assert_eq!(r["status"], "invalid");
    assert!(r["detail"].as_str().unwrap().contains("changed"), "{r}");
    // ...and `fetch` replaces invalid weights.
    let o = fetch_mb(h, &manifest, &dir, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        status_of(&list_json(h, &manifest, &dir, &[]).1, "mobilenet_v3_large")["status"],
        "verified"
    );

    // Truncated: invalid.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 3]).unwrap();
    assert_eq!(
        status_of(&list_json(h, &manifest, &dir, &[]).1, "mobilenet_v3_large")["status"],
        "invalid"
    );

    // Copied in without a record: present (kept by fetch), and --check loads it.
    std::fs::remove_file(dir.join("mobilenet_v3_large.safetensors.json")).unwrap();
    std::fs::copy(synthetic_weights_file(MB), &file).unwrap();
    let (c, rows) = list_json(h, &manifest, &dir, &["--check"]);
    assert_eq!(c, 0);
    assert_eq!(status_of(&rows, "mobilenet_v3_large")["status"], "present");
    let o = fetch_mb(h, &manifest, &dir, &[]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("already present"), "{}", stdout(&o));
    assert!(
        !dir.join("mobilenet_v3_large.safetensors.json").exists(),
        "kept as it was"
    );

    // A well-formed safetensors file that is not this model: present, but invalid under --check.
    let other = dir.join("other");
    std::fs::create_dir(&other).unwrap();
    let header = br#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&1f32.to_le_bytes());
    std::fs::write(other.join("mobilenet_v3_large.safetensors"), &st).unwrap();
    let (_, rows) = list_json(h, &manifest, &other, &[]);
    assert_eq!(status_of(&rows, "mobilenet_v3_large")["status"], "present");
    let (c, rows) = list_json(h, &manifest, &other, &["--check"]);
    assert_eq!(c, exit_code::WEIGHTS);
    let r = status_of(&rows, "mobilenet_v3_large");
    assert_eq!(r["status"], "invalid");
    assert!(
        r["detail"].as_str().unwrap().contains("strict load failed"),
        "{r}"
    );
}

#[test]
fn stale_temp_files_of_an_interrupted_fetch_are_removed() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let (_s, manifest) = setup(h, "mb.safetensors", Reply::Body(mb_safetensors()), None);
    let dir = h.join("w");
    std::fs::create_dir_all(&dir).unwrap();
    let stale = dir.join(".mobilenet_v3_large.AbC123.download");
    std::fs::write(&stale, b"half a download").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    // A leftover never looks complete to list or classify.
    let (_, rows) = list_json(h, &manifest, &dir, &[]);
    assert_eq!(status_of(&rows, "mobilenet_v3_large")["status"], "missing");
    let o = fetch_mb(h, &manifest, &dir, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        list_dir(&dir),
        [
            "mobilenet_v3_large.safetensors",
            "mobilenet_v3_large.safetensors.json"
        ]
    );
}

#[test]
fn fetch_by_profile_fetches_what_the_profile_needs() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let (server, manifest) = setup(h, "mb.safetensors", Reply::Body(mb_safetensors()), None);
    let dir = h.join("w");
    let o = weights_cmd(
        h,
        &manifest,
        &[
            "weights",
            "fetch",
            "--profile",
            "lite",
            "--weights-dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    assert!(dir.join("mobilenet_v3_large.safetensors").is_file());
    assert!(!dir.join("wide_resnet50_2.safetensors").exists());
    // `full` also needs Wide ResNet, whose (test) manifest URL is a closed port: MobileNet is kept,
    // the command fails with the weights exit code.
    let o = weights_cmd(
        h,
        &manifest,
        &[
            "weights",
            "fetch",
            "--profile",
            "full",
            "--weights-dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), exit_code::WEIGHTS, "{}", stderr(&o));
    assert!(stderr(&o).contains("wide_resnet50_2"), "{}", stderr(&o));
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    assert!(dir.join("mobilenet_v3_large.safetensors").is_file());
}
