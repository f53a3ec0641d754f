//! `imgclass serve` end to end: a real server process on an ephemeral port, synthetic weights,
//! real HTTP requests over loopback (a minimal HTTP/1.1 client, so every byte sent is explicit).

mod common;

use common::{encode, imgclass_cmd, synthetic_weights_file, test_image};
use imgclass::models::ModelKind;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- weights

/// A weights directory holding the files `profile` needs (symlinks to the synthetic weights).
fn weights_dir(profile: &str) -> PathBuf {
    let kinds: &[ModelKind] = match profile {
        "full" => &[ModelKind::WideResnet50_2, ModelKind::MobilenetV3Large],
        _ => &[ModelKind::MobilenetV3Large],
    };
    let dir = common::binary_scratch_dir().join(format!("serve-weights-{profile}"));
    std::fs::create_dir_all(&dir).unwrap();
    for &k in kinds {
        let src = synthetic_weights_file(k);
        let dst = dir.join(src.file_name().unwrap());
        // tests run in parallel: another one may have made the link since we looked
        if std::fs::symlink_metadata(&dst).is_err() {
            match std::os::unix::fs::symlink(&src, &dst) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    panic!("cannot link {}: {e}", dst.display())
                }
                _ => {}
            }
        }
    }
    dir
}

// ---------------------------------------------------------------- HTTP client

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn parse_response(raw: &[u8]) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no complete response head"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("head not utf-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = raw[end + 4..].to_vec();
    let r = Resp {
        status,
        headers,
        body,
    };
    if let Some(n) = r.header("content-length") {
        let n: usize = n.parse().map_err(|_| bad("bad content-length"))?;
        if r.body.len() != n {
            return Err(bad("truncated body"));
        }
    }
    Ok(r)
}

/// One request on a fresh connection (`Connection: close`); `Err` when no complete response came.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    // The server may answer (and stop reading) before the whole body is sent (e.g. 413).
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"").unwrap()
}

fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Resp {
    request(addr, "POST", path, &[("Content-Type", content_type)], body).unwrap()
}

const BOUNDARY: &str = "----imgclass-test-boundary-7MA4YWxkTrZu0gW";

fn multipart_ct() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// A multipart/form-data body with the given (name, filename, bytes) parts.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, filename, data) in parts {
        b.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match filename {
            Some(f) => b.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: image/jpeg\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => b.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

// ---------------------------------------------------------------- images

fn jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    encode(&test_image(w, h, seed), image::ImageFormat::Jpeg)
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid PNG header declaring `w`x`h` pixels (IHDR only, no pixel data).
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png
}

// ---------------------------------------------------------------- server process

struct Server {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn start_server(profile: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
    let home = common::binary_scratch_dir();
    let wdir = weights_dir(profile);
    let mut cmd = imgclass_cmd(&home);
    cmd.args([
        "serve",
        "--profile",
        profile,
        "--addr",
        "127.0.0.1:0",
        "--json-logs",
    ])
    .arg("--weights-dir")
    .arg(&wdir)
    .args(args)
    .envs(env.iter().copied())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let l = logs.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on http://") {
                let v: Value = serde_json::from_str(&line).unwrap();
                let _ = tx.send(v["addr"].as_str().unwrap().parse::<SocketAddr>().unwrap());
            }
            l.lock().unwrap().push(line);
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "server did not report its address; logs:\n{}",
                logs.lock().unwrap().join("\n")
            );
        }
    };
    Server {
        child,
        addr,
        logs,
        reader: Some(reader),
    }
}

impl Server {
    fn wait_ready(&self) {
        let t = Instant::now();
        loop {
            if let Ok(r) = request(self.addr, "GET", "/readyz", &[], b"") {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(600),
                "not ready after 600 s; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    fn log_lines(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The first JSON log line matching `pred`, waiting for it (the server logs a request just
    /// before answering it; the line may still be in the pipe).
    fn wait_log(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            if let Some(l) = self.log_lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no such log line; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB.
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // every log line read before looking at them
                if let Some(r) = self.reader.take() {
                    r.join().unwrap();
                }
                return st;
            }
            assert!(
                t.elapsed() < limit,
                "server did not exit; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn metric(&self, series: &str) -> f64 {
        self.metric_or(series, None)
    }

    /// The series' value, or `missing` when the server has no such series yet (a labelled
    /// series appears at its first increment).
    fn metric_or(&self, series: &str, missing: Option<f64>) -> f64 {
        let text = get(self.addr, "/metrics").text();
        match text
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        {
            Some(v) => v.trim().parse().unwrap(),
            None => missing.unwrap_or_else(|| panic!("no series {series} in\n{text}")),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_error(r: &Resp, status: u16, error_type: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error_type"], error_type, "{v}");
    assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-request-id").is_some());
}

fn predictions(v: &Value) -> Vec<(u64, String, f64)> {
    v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["index"].as_u64().unwrap(),
                p["label"].as_str().unwrap().to_string(),
                p["probability"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn assert_same_predictions(a: &Value, b: &Value) {
    assert_close_predictions(a, b, 1e-5);
}

/// The same classes in the same order, probabilities within `tol`.
fn assert_close_predictions(a: &Value, b: &Value, tol: f64) {
    let (pa, pb) = (predictions(a), predictions(b));
    assert_eq!(pa.len(), pb.len(), "{a} vs {b}");
    for (x, y) in pa.iter().zip(&pb) {
        assert_eq!((x.0, &x.1), (y.0, &y.1), "{a} vs {b}");
        assert!((x.2 - y.2).abs() < tol, "{a} vs {b}");
    }
}

/// `imgclass classify` on `image` with `kind`, offline, from the same weights.
fn cli_classify(kind: ModelKind, image: &[u8]) -> Value {
    // One input file per call: tests run in parallel, and two of them classifying different images
    // with the same model must not overwrite each other's input.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let home = common::binary_scratch_dir();
    let file = home.join(format!(
        "cli-input-{}-{}-{call}.jpg",
        kind.name(),
        std::process::id()
    ));
    std::fs::write(&file, image).unwrap();
    let out = common::run(
        &home,
        &[
            "classify",
            "--offline",
            "--model",
            kind.name(),
            "--weights-dir",
            weights_dir("full").to_str().unwrap(),
            file.to_str().unwrap(),
        ],
    );
    let _ = std::fs::remove_file(&file);
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
    common::json_lines(&out).remove(0)
}

// ---------------------------------------------------------------- tests

#[test]
fn lite_http_contract_every_status_code() {
    let s = start_server(
        "lite",
        &[
            "--header-read-timeout-ms",
            "1000",
            "--request-timeout-ms",
            "8000",
        ],
        &[],
    );
    s.wait_ready();
    let a = s.addr;
    let img = jpeg(640, 480, 1);

    // 200, raw body
    let r = request(
        a,
        "POST",
        "/classify",
        &[("Content-Type", "image/jpeg"), ("X-Request-ID", "req-123")],
        &img,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("req-123"));
    assert_eq!(r.header("x-imgclass-model"), Some("mobilenet_v3_large"));
    let raw = r.json();
    assert_eq!(raw["model"], "mobilenet_v3_large");
    assert_eq!(raw["profile"], "lite");
    assert_eq!(raw["fallback"], false);
    assert!(raw.get("fallback_reason").is_none(), "{raw}");
    let mut keys: Vec<&String> = raw.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["fallback", "model", "predictions", "profile"]);
    let t = r.text();
    assert!(
        t.starts_with(r#"{"model":"mobilenet_v3_large","profile":"lite","fallback":false,"predictions":[{"label":"#),
        "{t}"
    );
    let p = predictions(&raw);
    assert_eq!(p.len(), 5);
    assert!(p.windows(2).all(|w| w[0].2 >= w[1].2), "{raw}");
    assert!(p.iter().all(|x| x.0 < 1000 && x.2 > 0.0 && x.2 <= 1.0));
    assert_eq!(
        p[0].1,
        imgclass::labels::categories()[p[0].0 as usize],
        "label matches index"
    );

    // a generated request id when none is sent
    let gen = post(a, "/classify", "application/octet-stream", &img);
    assert_eq!(gen.status, 200);
    assert_eq!(gen.header("x-request-id").unwrap().len(), 36);
    assert_same_predictions(&gen.json(), &raw);

    // POST / == POST /classify; multipart == raw
    let root = post(a, "/", "image/jpeg", &img);
    assert_eq!(root.status, 200);
    assert_eq!(root.json(), raw);
    let mp = post(
        a,
        "/classify",
        &multipart_ct(),
        &multipart(&[("note", None, b"hello"), ("file", Some("cat.jpg"), &img)]),
    );
    assert_eq!(mp.status, 200, "{}", mp.text());
    assert_eq!(mp.json(), raw);
    let mp_root = post(
        a,
        "/",
        &multipart_ct(),
        &multipart(&[("file", Some("cat.jpg"), &img)]),
    );
    assert_eq!(mp_root.json(), raw);

    // top_k
    let r = post(a, "/classify?top_k=3", "image/jpeg", &img);
    assert_eq!(predictions(&r.json()).len(), 3);
    assert_eq!(
        predictions(&post(a, "/classify?top_k=1000", "image/jpeg", &img).json()).len(),
        1000
    );
    for q in ["top_k=0", "top_k=1001", "top_k=abc", "top_k="] {
        assert_error(
            &post(a, &format!("/classify?{q}"), "image/jpeg", &img),
            400,
            "invalid_top_k",
        );
    }

    // 400: empty body, multipart without `file`, broken multipart
    assert_error(&post(a, "/classify", "image/jpeg", b""), 400, "empty_input");
    assert_error(
        &post(
            a,
            "/classify",
            &multipart_ct(),
            &multipart(&[("image", None, &img)]),
        ),
        400,
        "missing_file",
    );
    assert_error(
        &post(
            a,
            "/classify",
            &multipart_ct(),
            b"--nothing like the boundary",
        ),
        400,
        "invalid_multipart",
    );
    assert_error(
        &post(a, "/classify", "multipart/form-data", &img),
        400,
        "invalid_multipart",
    );

    // 415: text saved as .jpg (raw and multipart), wrong or missing content type
    let text = b"this is not an image, just text saved as cat.jpg\n".repeat(20);
    assert_error(
        &post(a, "/classify", "image/jpeg", &text),
        415,
        "not_an_image",
    );
    assert_error(
        &post(
            a,
            "/classify",
            &multipart_ct(),
            &multipart(&[("file", Some("cat.jpg"), &text)]),
        ),
        415,
        "not_an_image",
    );
    assert_error(
        &post(a, "/classify", "text/plain", &img),
        415,
        "unsupported_media_type",
    );
    assert_error(
        &post(a, "/classify", "application/json", b"{}"),
        415,
        "unsupported_media_type",
    );
    assert_error(
        &request(a, "POST", "/classify", &[], &img).unwrap(),
        415,
        "unsupported_media_type",
    );

    // 422: truncated JPEG, PNG declaring 100000x100000
    assert_error(
        &post(a, "/classify", "image/jpeg", &img[..img.len() / 2]),
        422,
        "corrupt_image",
    );
    assert_error(
        &post(
            a,
            "/classify",
            "image/png",
            &png_declaring(100_000, 100_000),
        ),
        422,
        "image_too_large",
    );

    // 413: a 30 MB body, with Content-Length and streamed (chunked, no length)
    let big = vec![0u8; 30 * 1024 * 1024];
    let r = post(a, "/classify", "image/jpeg", &big);
    assert_error(&r, 413, "payload_too_large");
    let r = chunked_post(a, "/classify", "image/jpeg", &big);
    assert_error(&r, 413, "payload_too_large");
    // a client that waits for `100 Continue` gets the 413 before sending anything
    let mut c = TcpStream::connect(a).unwrap();
    c.write_all(
        format!(
            "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut raw413 = Vec::new();
    c.read_to_end(&mut raw413).unwrap();
    let r = parse_response(&raw413).unwrap();
    assert_error(&r, 413, "payload_too_large");
    // chunked bodies under the limit are fine
    assert_eq!(chunked_post(a, "/classify", "image/jpeg", &img).json(), raw);

    // 404 / 405
    assert_error(&get(a, "/nope"), 404, "not_found");
    let r = get(a, "/classify");
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    assert_error(
        &post(a, "/healthz", "image/jpeg", &img),
        405,
        "method_not_allowed",
    );

    // 408: a body that never finishes within the request timeout
    let mut c = TcpStream::connect(a).unwrap();
    c.write_all(
        b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .unwrap();
    let mut raw408 = Vec::new();
    c.read_to_end(&mut raw408).unwrap();
    assert_error(&parse_response(&raw408).unwrap(), 408, "request_timeout");

    // a client that sends its headers too slowly is cut off (no response, connection closed)
    let mut c = TcpStream::connect(a).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c.write_all(b"POST /classify HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let closed = match c.read_to_end(&mut buf) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    let got = String::from_utf8_lossy(&buf);
    assert!(closed, "slow-header connection was not closed: {got}");
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got}");
    eprintln!(
        "slow headers: connection closed, {} bytes answered",
        buf.len()
    );

    // health, readiness, info
    assert_eq!(get(a, "/healthz").json()["status"], "ok");
    assert_eq!(get(a, "/readyz").json()["status"], "ready");
    let info = get(a, "/info").json();
    assert_eq!(info["profile"], "lite");
    assert_eq!(info["models"]["primary"], "mobilenet_v3_large");
    assert_eq!(info["models"]["fallback"], Value::Null);
    assert_eq!(info["limits"]["max_body_bytes"], 20 * 1024 * 1024);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["fault"], "none");

    // the ingress fallback headers are logged
    let r = request(
        a,
        "POST",
        "/",
        &[
            ("Content-Type", "image/jpeg"),
            ("X-Code", "503"),
            ("X-Original-URI", "/classify?top_k=2"),
            ("X-Request-ID", "from-ingress-1"),
        ],
        &img,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let logged = s.wait_log(|l| l["request_id"] == "from-ingress-1");
    assert_eq!(logged["x_code"], "503");
    assert_eq!(logged["x_original_uri"], "/classify?top_k=2");
    assert_eq!(logged["status"], 200);
    assert_eq!(logged["model"], "mobilenet_v3_large");
    assert_eq!(logged["route"], "/");
    assert!(logged["duration_ms"].as_f64().is_some());

    // metrics: the named series, counting what happened above
    let m = get(a, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.text();
    for series in [
        "imgclass_http_requests_total{model=\"mobilenet_v3_large\",route=\"/classify\",status=\"200\"}",
        "imgclass_http_requests_total{model=\"none\",route=\"/classify\",status=\"415\"}",
        "imgclass_http_requests_total{model=\"none\",route=\"/classify\",status=\"413\"}",
        "imgclass_http_requests_total{model=\"mobilenet_v3_large\",route=\"/\",status=\"200\"}",
        "imgclass_http_request_duration_seconds_bucket{route=\"/classify\",le=\"+Inf\"}",
        "imgclass_preprocess_duration_seconds_count",
        "imgclass_inference_duration_seconds_count{model=\"mobilenet_v3_large\"}",
        "imgclass_inference_batch_size_count{model=\"mobilenet_v3_large\"}",
        "imgclass_inference_passes_total{mode=\"pool\",model=\"mobilenet_v3_large\"}",
        "imgclass_http_requests_in_flight",
        "imgclass_queue_depth",
        "imgclass_engine_queue_depth{model=\"mobilenet_v3_large\"}",
        "imgclass_fallbacks_total{reason=\"error\"}",
        "imgclass_fallbacks_total{reason=\"deadline\"}",
        "imgclass_shed_requests_total{reason=\"overloaded\"}",
        "imgclass_ready 1",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
    assert!(s.metric("imgclass_preprocess_duration_seconds_count") >= 8.0);
    assert!(
        s.metric("imgclass_inference_duration_seconds_count{model=\"mobilenet_v3_large\"}") >= 8.0
    );

    // nothing above was a 500
    assert!(!text.contains("status=\"500\""), "{text}");
}

/// `POST` with `Transfer-Encoding: chunked` (no Content-Length), in 64 KiB chunks.
fn chunked_post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut w = || -> std::io::Result<()> {
        for c in body.chunks(64 * 1024) {
            s.write_all(format!("{:x}\r\n", c.len()).as_bytes())?;
            s.write_all(c)?;
            s.write_all(b"\r\n")?;
        }
        s.write_all(b"0\r\n\r\n")
    };
    let _ = w();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw).unwrap()
}

#[test]
fn openapi_document_matches_the_real_routes() {
    let s = start_server("lite", &[], &[]);
    s.wait_ready();
    let doc = get(s.addr, "/openapi.json").json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let img = jpeg(320, 240, 9);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/classify") && paths.contains_key("/"));
    let mut checked = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let r = match method.as_str() {
                "get" => get(s.addr, path),
                "post" => post(s.addr, path, "image/jpeg", &img),
                m => panic!("undocumented method kind {m}"),
            };
            let code = r.status.to_string();
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.contains_key(&code),
                "{method} {path} answered {code}, not documented"
            );
            assert_eq!(code, "200", "{method} {path}: {}", r.text());
            // required properties of the documented 200 schema are present
            let schema = &op["responses"]["200"]["content"]["application/json"]["schema"];
            let schema = match schema["$ref"].as_str() {
                Some(rf) => doc.pointer(rf.trim_start_matches('#')).unwrap().clone(),
                None => schema.clone(),
            };
            if let Some(req) = schema["required"].as_array() {
                let body = r.json();
                for k in req {
                    assert!(
                        body.get(k.as_str().unwrap()).is_some(),
                        "{path}: no {k} in {body}"
                    );
                }
            }
            // a documented POST also documents every error code the contract has
            if method == "post" {
                for c in ["400", "413", "415", "422", "500", "503"] {
                    assert!(responses.contains_key(c), "{path} lacks {c}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 7);
    // and what is not documented does not exist
    assert_eq!(get(s.addr, "/classify/extra").status, 404);
    assert_eq!(get(s.addr, "/docs").status, 404);
}

#[test]
fn lite_results_equal_the_classify_command() {
    let images: Vec<Vec<u8>> = [3, 4].map(|seed| jpeg(500, 375, seed)).into();
    let cli: Vec<Value> = images
        .iter()
        .map(|img| cli_classify(ModelKind::MobilenetV3Large, img))
        .collect();
    // decoded by the engine instance (the lite default) or on the decoding pool: same answers,
    // same client errors
    for decode_on in ["engine", "pool"] {
        let s = start_server("lite", &["--decode-on", decode_on], &[]);
        s.wait_ready();
        assert_eq!(get(s.addr, "/info").json()["decode_on"], decode_on);
        for (img, cli) in images.iter().zip(&cli) {
            let served = post(s.addr, "/classify", "image/jpeg", img).json();
            assert_eq!(cli["model"], "mobilenet_v3_large");
            assert_same_predictions(&served, cli);
        }
        let img = &images[0];
        assert_error(
            &post(s.addr, "/classify", "image/jpeg", &img[..img.len() / 2]),
            422,
            "corrupt_image",
        );
        let text = b"not an image at all".repeat(10);
        assert_error(
            &post(s.addr, "/classify", "image/jpeg", &text),
            415,
            "not_an_image",
        );
        assert_eq!(
            s.metric("imgclass_preprocess_duration_seconds_count"),
            4.0,
            "{decode_on}: every image preprocessed once"
        );
    }
}

/// Deterministic variants of `src` with the damage real uploads carry: bytes flipped in the
/// entropy-coded data or in the headers, ranges deleted, duplicated or inserted, truncations.
fn mutations(src: &[u8], count: usize, mut seed: u64) -> Vec<Vec<u8>> {
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..count)
        .map(|k| {
            let mut m = src.to_vec();
            let r = next();
            let pos = 2 + (r as usize) % (m.len() - 2);
            let span = 1 + (r >> 32) as usize % 64;
            match k % 6 {
                0 => {
                    for j in 0..1 + k % 8 {
                        let at = 2 + (next() as usize) % (m.len() - 2);
                        m[at] ^= (j as u8).wrapping_mul(37) | 1;
                    }
                }
                // the headers: sizes, tables, component counts, markers
                1 => {
                    let at = 2 + pos % 600.min(m.len() - 2);
                    m[at] ^= (r >> 40) as u8 | 1;
                }
                2 => {
                    m.drain(pos..(pos + span).min(m.len()));
                }
                3 => {
                    let junk: Vec<u8> = (0..span).map(|_| next() as u8).collect();
                    m.splice(pos..pos, junk);
                }
                4 => {
                    let from = 2 + (next() as usize) % (m.len() - 2);
                    let chunk = m[from..(from + span).min(m.len())].to_vec();
                    m.splice(pos..pos, chunk);
                }
                _ => m.truncate(pos),
            }
            m
        })
        .collect()
}

#[test]
fn mutated_images_from_concurrent_clients_get_only_200_415_or_422() {
    // Damaged JPEGs (baseline, progressive, 4:4:4, grayscale, CMYK, EXIF-rotated, restart
    // markers), PNGs and WebPs from four clients at once, decoded on the engine instances (the
    // lite default: two decoders at once on the engine's own threads) and on the decoding pool:
    // every answer is a 200 with five predictions or a JSON 415 / 422, never a 5xx, and the
    // server answers a clean image as before.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("tests/fixtures/preprocess");
    let sources: Vec<Vec<u8>> = [
        root.join("samples/chelsea.jpg"),
        root.join("samples/rocket.jpg"),
        fixtures.join("formats/progressive.jpg"),
        fixtures.join("formats/baseline444.jpg"),
        fixtures.join("formats/gray.jpg"),
        fixtures.join("formats/cmyk.jpg"),
        fixtures.join("formats/exif6.jpg"),
        fixtures.join("dct/prog420_rst.jpg"),
        fixtures.join("dct/base444_rst.jpg"),
        fixtures.join("formats/rgb8.png"),
        fixtures.join("formats/lossy.webp"),
    ]
    .iter()
    .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
    .collect();
    let bodies: Vec<Vec<u8>> = sources
        .iter()
        .enumerate()
        .flat_map(|(i, src)| mutations(src, 24, 0x2545_F491_4F6C_DD1D ^ (i as u64 + 1)))
        .collect();
    let bodies = Arc::new(bodies);
    let clean = jpeg(320, 240, 11);
    let mut statuses: Vec<Vec<u16>> = Vec::new();
    for decode_on in ["engine", "pool"] {
        let s = start_server("lite", &["--decode-on", decode_on], &[]);
        s.wait_ready();
        let before = post(s.addr, "/classify", "image/jpeg", &clean).json();
        let clients = 4;
        let answers: Vec<(usize, Resp)> = (0..clients)
            .map(|c| {
                let (bodies, addr) = (bodies.clone(), s.addr);
                std::thread::spawn(move || {
                    (c..bodies.len())
                        .step_by(clients)
                        .map(|i| {
                            let r = request(
                                addr,
                                "POST",
                                "/classify",
                                &[("Content-Type", "application/octet-stream")],
                                &bodies[i],
                            );
                            (i, r.unwrap_or_else(|e| panic!("body {i}: no answer: {e}")))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(answers.len(), bodies.len());
        let mut counts = std::collections::BTreeMap::new();
        for (i, r) in &answers {
            *counts.entry(r.status).or_insert(0usize) += 1;
            match r.status {
                200 => assert_eq!(predictions(&r.json()).len(), 5, "body {i}"),
                415 | 422 => {
                    let v = r.json();
                    let t = v["error_type"].as_str().unwrap_or_default();
                    assert!(
                        [
                            "not_an_image",
                            "unsupported_format",
                            "corrupt_image",
                            "image_too_large"
                        ]
                        .contains(&t),
                        "{decode_on}: body {i}: {v}"
                    );
                }
                st => panic!("{decode_on}: body {i}: status {st}: {}", r.text()),
            }
        }
        eprintln!("{decode_on}: {counts:?}");
        // the damage was real: some variants still decode, many do not
        assert!(counts.get(&200).is_some_and(|&n| n >= 20), "{counts:?}");
        assert!(counts.get(&422).is_some_and(|&n| n >= 20), "{counts:?}");
        assert_eq!(get(s.addr, "/healthz").status, 200, "{decode_on}");
        let after = post(s.addr, "/classify", "image/jpeg", &clean).json();
        assert_same_predictions(&after, &before);
        let mut by_body = vec![0; bodies.len()];
        for (i, r) in &answers {
            by_body[*i] = r.status;
        }
        statuses.push(by_body);
    }
    // decoding is deterministic: the same body gets the same answer wherever it is decoded
    assert_eq!(statuses[0], statuses[1]);
}

#[test]
fn readyz_is_503_until_warm() {
    let gate = common::binary_scratch_dir().join("warmup-gate");
    let _ = std::fs::remove_file(&gate);
    let s = start_server(
        "lite",
        &[],
        &[("IMGCLASS_TEST_WARMUP_GATE", gate.to_str().unwrap())],
    );
    // listening, alive, but not ready: no warm-up ran yet
    assert_eq!(get(s.addr, "/healthz").status, 200);
    let r = get(s.addr, "/readyz");
    assert_error(&r, 503, "not_ready");
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = post(s.addr, "/classify", "image/jpeg", &jpeg(64, 64, 1));
    assert_error(&r, 503, "not_ready");
    assert_eq!(get(s.addr, "/info").json()["ready"], false);
    assert_eq!(s.metric("imgclass_ready"), 0.0);
    std::fs::write(&gate, b"go").unwrap();
    s.wait_ready();
    assert_eq!(get(s.addr, "/readyz").status, 200);
    assert_eq!(
        post(s.addr, "/classify", "image/jpeg", &jpeg(64, 64, 1)).status,
        200
    );
    assert!(s.logs().contains("TEST-ONLY HOOKS ON"));
}

#[test]
fn missing_or_invalid_weights_exit_nonzero_at_start() {
    let home = common::binary_scratch_dir();
    let empty = home.join("no-weights-here");
    std::fs::create_dir_all(&empty).unwrap();
    for profile in ["lite", "full"] {
        let out = imgclass_cmd(&home)
            .args([
                "serve",
                "--profile",
                profile,
                "--addr",
                "127.0.0.1:0",
                "--weights-dir",
            ])
            .arg(&empty)
            .output()
            .unwrap();
        assert_eq!(common::code(&out), 5, "{}", common::stderr(&out));
        let err = common::stderr(&out);
        assert!(err.contains("never downloads"), "{err}");
        assert!(
            err.contains("mobilenet_v3_large") || err.contains("wide_resnet50_2"),
            "{err}"
        );
        assert!(!err.contains("listening"), "{err}");
    }
    let bad = home.join("bad-weights");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("mobilenet_v3_large.safetensors"),
        b"definitely not safetensors",
    )
    .unwrap();
    let out = imgclass_cmd(&home)
        .args([
            "serve",
            "--profile",
            "lite",
            "--addr",
            "127.0.0.1:0",
            "--weights-dir",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    assert_ne!(common::code(&out), 0);
    assert_eq!(common::code(&out), 5, "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("mobilenet_v3_large.safetensors"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn full_profile_primary_answers_like_the_classify_command() {
    let s = start_server("full", &["--primary-deadline-ms", "600000"], &[]);
    s.wait_ready();
    let img = jpeg(640, 480, 5);
    let r = post(s.addr, "/classify", "image/jpeg", &img);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-imgclass-model"), Some("wide_resnet50_2"));
    let v = r.json();
    assert_eq!(v["model"], "wide_resnet50_2");
    assert_eq!(v["profile"], "full");
    assert_eq!(v["fallback"], false);
    assert!(v.get("fallback_reason").is_none());
    assert_same_predictions(&v, &cli_classify(ModelKind::WideResnet50_2, &img));
    let info = get(s.addr, "/info").json();
    assert_eq!(info["models"]["fallback"], "mobilenet_v3_large");
    assert_eq!(s.metric("imgclass_fallbacks_total{reason=\"error\"}"), 0.0);
}

#[test]
fn full_profile_concurrent_requests_run_on_two_instances_with_the_same_answers() {
    // The full profile runs two Wide ResNet passes at once (`--instances` default 2 on two or more
    // compute threads): a request that arrives while a pass runs is run beside it on a thread of
    // its own. Every answer must still be Wide ResNet's, equal to `imgclass classify` on the same
    // image (whole pool, one image), whichever kind of pass it took, within 1e-4: a whole-pool
    // pass may take several queued images as one batch, whose stages 3-4 share GEMMs between the
    // images, so the last bits of the logits differ (these test weights put the top logits ~70
    // apart from the fifth; measured up to 1.5e-5 with `--instances 1`).
    let s = start_server(
        "full",
        &["--primary-deadline-ms", "600000", "--threads", "2"],
        &[],
    );
    s.wait_ready();
    let images: Vec<Vec<u8>> = (0..4u32).map(|i| jpeg(320 + 64 * i, 240, 40 + i)).collect();
    let want: Vec<Value> = images
        .iter()
        .map(|img| cli_classify(ModelKind::WideResnet50_2, img))
        .collect();
    let addr = s.addr;
    let clients: Vec<_> = images
        .iter()
        .cloned()
        .map(|img| {
            std::thread::spawn(move || {
                (0..2)
                    .map(|_| post(addr, "/classify", "image/jpeg", &img))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (c, w) in clients.into_iter().zip(&want) {
        for r in c.join().unwrap() {
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            assert_eq!(v["model"], "wide_resnet50_2", "{v}");
            assert_eq!(v["fallback"], false, "{v}");
            assert_close_predictions(&v, w, 1e-4);
        }
    }
    let series = |mode: &str| {
        s.metric_or(
            &format!(
                "imgclass_inference_passes_total{{mode=\"{mode}\",model=\"wide_resnet50_2\"}}"
            ),
            Some(0.0),
        )
    };
    // warm-up passes run on the pool; four clients at once put at least one pass beside another
    assert!(
        series("instance") >= 1.0,
        "no pass ran on an instance's own thread"
    );
    assert_eq!(
        s.metric("imgclass_fallbacks_total{reason=\"deadline\"}"),
        0.0
    );
}

#[test]
fn full_profile_falls_back_in_process_when_the_primary_errors() {
    let s = start_server(
        "full",
        &["--primary-deadline-ms", "600000"],
        &[("IMGCLASS_TEST_PRIMARY_FAULT", "1")],
    );
    s.wait_ready();
    let img = jpeg(640, 480, 6);
    let r = post(s.addr, "/classify", "image/jpeg", &img);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-imgclass-model"), Some("mobilenet_v3_large"));
    let v = r.json();
    assert_eq!(v["model"], "mobilenet_v3_large");
    assert_eq!(v["profile"], "full");
    assert_eq!(v["fallback"], true);
    assert_eq!(v["fallback_reason"], "error");
    assert_same_predictions(&v, &cli_classify(ModelKind::MobilenetV3Large, &img));
    // client errors stay client errors in the full profile
    assert_error(
        &post(s.addr, "/classify", "image/jpeg", b"text"),
        415,
        "not_an_image",
    );
    assert_eq!(s.metric("imgclass_fallbacks_total{reason=\"error\"}"), 1.0);
    let logged = s
        .wait_log(|l| l["message"] == "request" && l["status"] == 200 && l["route"] == "/classify");
    assert_eq!(logged["fallback"], "error");
}

#[test]
fn full_profile_falls_back_in_process_when_the_primary_misses_its_deadline() {
    let s = start_server(
        "full",
        &["--primary-deadline-ms", "1500"],
        &[("IMGCLASS_TEST_PRIMARY_DELAY_MS", "3600000")],
    );
    s.wait_ready();
    let img = jpeg(640, 480, 7);
    for _ in 0..2 {
        let r = post(s.addr, "/classify?top_k=3", "image/jpeg", &img);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["model"], "mobilenet_v3_large");
        assert_eq!(v["fallback"], true);
        assert_eq!(v["fallback_reason"], "deadline");
        assert_eq!(predictions(&v).len(), 3);
    }
    assert_eq!(
        s.metric("imgclass_fallbacks_total{reason=\"deadline\"}"),
        2.0
    );
}

#[test]
fn fault_injection_error_and_stall() {
    let s = start_server("lite", &["--fault", "error"], &[]);
    s.wait_ready();
    assert!(s.logs().contains("FAULT INJECTION ON"));
    let r = post(s.addr, "/classify", "image/jpeg", &jpeg(64, 64, 1));
    assert_error(&r, 500, "fault_injected");
    assert_error(
        &post(s.addr, "/", "text/plain", b"x"),
        500,
        "fault_injected",
    );
    assert_eq!(get(s.addr, "/healthz").status, 200);
    assert_eq!(get(s.addr, "/readyz").status, 200);
    assert_eq!(get(s.addr, "/info").json()["fault"], "error");
    drop(s);

    let s = start_server("lite", &[], &[("IMGCLASS_FAULT", "stall")]);
    s.wait_ready();
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let img = jpeg(64, 64, 1);
    c.write_all(
        format!(
            "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            img.len()
        )
        .as_bytes(),
    )
    .unwrap();
    c.write_all(&img).unwrap();
    let mut buf = [0u8; 64];
    let e = c.read(&mut buf).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e:?}"
    );
    // the process is otherwise alive
    assert_eq!(get(s.addr, "/healthz").status, 200);
}

/// Run `clients` threads, each sending `per_client` classify requests; returns every outcome.
fn load(
    addr: SocketAddr,
    clients: usize,
    per_client: usize,
    img: &[u8],
) -> Vec<std::io::Result<Resp>> {
    let img = Arc::new(img.to_vec());
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let img = img.clone();
            std::thread::spawn(move || {
                (0..per_client)
                    .map(|_| {
                        request(
                            addr,
                            "POST",
                            "/classify",
                            &[("Content-Type", "image/jpeg")],
                            &img,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

#[test]
fn load_32_clients_all_answered_200_or_503_and_memory_returns() {
    let s = start_server(
        "lite",
        &[
            "--max-concurrent",
            "8",
            "--queue-depth",
            "16",
            "--request-timeout-ms",
            "120000",
            // two compute threads, hence two engine instances (lite's default: one per thread)
            "--threads",
            "2",
        ],
        &[],
    );
    s.wait_ready();
    let img = jpeg(640, 480, 11);
    // steady level: after warm-up and a first round of concurrent traffic
    let warm = load(s.addr, 8, 4, &img);
    assert!(warm
        .iter()
        .all(|r| r.as_ref().is_ok_and(|r| r.status == 200)));
    let expected = warm[0].as_ref().unwrap().json();
    std::thread::sleep(Duration::from_millis(500));
    let steady = s.rss_kib();

    let results = load(s.addr, 32, 10, &img);
    assert_eq!(results.len(), 320);
    let mut ok = 0;
    let mut shed = 0;
    for r in &results {
        let r = r
            .as_ref()
            .expect("a request was lost (no complete response)");
        match r.status {
            200 => {
                assert_eq!(r.json()["model"], "mobilenet_v3_large");
                // the same image gets the same answer, whichever instance or batch ran it
                assert_same_predictions(&r.json(), &expected);
                ok += 1;
            }
            503 => {
                assert_error(r, 503, "overloaded");
                assert_eq!(r.header("retry-after"), Some("1"));
                shed += 1;
            }
            other => panic!("unexpected status {other}: {}", r.text()),
        }
    }
    assert_eq!(ok + shed, 320);
    assert!(ok > 0);
    let peak = s.rss_kib();
    std::thread::sleep(Duration::from_secs(2));
    let after = s.rss_kib();
    eprintln!(
        "load: {ok} x 200, {shed} x 503; RSS steady {} MiB, right after load {} MiB, 2 s later {} MiB",
        steady / 1024,
        peak / 1024,
        after / 1024
    );
    // back to the steady level (allowing allocator slack), and nothing in flight
    assert!(
        after <= steady + steady / 4 + 16 * 1024,
        "RSS {after} KiB after load vs {steady} KiB steady"
    );
    assert_eq!(s.metric("imgclass_http_requests_in_flight"), 1.0); // this /metrics request
    assert_eq!(s.metric("imgclass_queue_depth"), 0.0);
    assert_eq!(
        s.metric("imgclass_shed_requests_total{reason=\"overloaded\"}"),
        shed as f64
    );
    // under this load passes ran side by side, one per instance
    let passes = |mode: &str| {
        s.metric_or(
            &format!(
                "imgclass_inference_passes_total{{mode=\"{mode}\",model=\"mobilenet_v3_large\"}}"
            ),
            Some(0.0),
        )
    };
    assert!(passes("instance") > 0.0);
    // whether the last requests of a round ran alone on the whole pool depends on timing; a
    // request sent alone always does (the other instance idle, no other request in process)
    let pool_before = passes("pool");
    let alone = post(s.addr, "/classify", "image/jpeg", &img);
    assert_eq!(alone.status, 200, "{}", alone.text());
    assert_same_predictions(&alone.json(), &expected);
    assert_eq!(passes("pool"), pool_before + 1.0);
    let text = get(s.addr, "/metrics").text();
    assert!(!text.contains("status=\"500\""), "{text}");
}

#[test]
fn sigterm_during_load_completes_accepted_requests_and_exits_0() {
    let mut s = start_server("lite", &["--shutdown-grace-ms", "60000"], &[]);
    s.wait_ready();
    let addr = s.addr;
    let img = Arc::new(jpeg(640, 480, 12));
    let signalled = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let ok_after_signal = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (img, signalled, done, ok_after) = (
                img.clone(),
                signalled.clone(),
                done.clone(),
                ok_after_signal.clone(),
            );
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                loop {
                    match request(
                        addr,
                        "POST",
                        "/classify",
                        &[("Content-Type", "image/jpeg")],
                        &img,
                    ) {
                        Ok(r) => {
                            assert!(
                                r.status == 200 || r.status == 503,
                                "{} {}",
                                r.status,
                                r.text()
                            );
                            if r.status == 503 {
                                assert_error(&r, 503, "shutting_down");
                            }
                            if r.status == 200 && signalled.load(Ordering::SeqCst) {
                                ok_after.fetch_add(1, Ordering::SeqCst);
                            }
                            done.fetch_add(1, Ordering::SeqCst);
                            statuses.push(r.status);
                            if r.status == 503 {
                                break;
                            }
                        }
                        // after the listener closed: refused / reset; only once shutdown began
                        Err(e) => {
                            assert!(
                                signalled.load(Ordering::SeqCst),
                                "request failed before SIGTERM: {e}"
                            );
                            break;
                        }
                    }
                }
                statuses
            })
        })
        .collect();
    while done.load(Ordering::SeqCst) < 48 {
        std::thread::sleep(Duration::from_millis(5));
    }
    signalled.store(true, Ordering::SeqCst);
    s.signal("TERM");
    let statuses: Vec<u16> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let st = s.wait_exit(Duration::from_secs(120));
    assert_eq!(st.code(), Some(0), "logs:\n{}", s.logs());
    // requests in flight when the signal came were completed, with 200
    assert!(ok_after_signal.load(Ordering::SeqCst) >= 1, "{statuses:?}");
    // every 200 the server logged reached its client
    let logged_200 = s
        .log_lines()
        .iter()
        .filter(|l| l["message"] == "request" && l["status"] == 200 && l["route"] == "/classify")
        .count();
    let client_200 = statuses.iter().filter(|&&c| c == 200).count();
    assert_eq!(logged_200, client_200);
    let logs = s.logs();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(logs.contains("drained; exiting"), "{logs}");
}
