//! `POST /classify` (and `POST /`): request parsing, body limits, decoding off the runtime,
//! inference through the engines, and the full profile's in-process fallback.

use super::config::{DecodeOn, DecodePriority, Fault, Profile};
use super::engine::{EngineError, Input};
use super::state::AppState;
use super::status::ApiError;
use crate::labels::Prediction;
use crate::models::ModelKind;
use crate::ops::sched::IdlePriority;
use crate::preprocess::{preprocess, Transform};
use crate::Error;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, EXPECT};
use hyper::Request;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// Default and bounds of the `top_k` query parameter.
pub const DEFAULT_TOP_K: usize = 5;
pub const MAX_TOP_K: usize = crate::labels::NUM_CLASSES;

/// After a body is refused as too large, read and discard at most this much more (so the client
/// can read the 413 instead of hitting a reset) before closing the connection.
const DRAIN_CAP_BYTES: u64 = 64 * 1024 * 1024;
const DRAIN_CAP_TIME: Duration = Duration::from_secs(5);

/// The 200 body.
#[derive(Debug, serde::Serialize)]
pub struct ClassifyResponse {
    pub model: &'static str,
    pub profile: &'static str,
    pub fallback: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<&'static str>,
    pub predictions: Vec<Prediction>,
}

/// How the image arrives.
#[derive(Debug, PartialEq)]
enum BodyKind {
    Multipart(String),
    Raw,
}

pub fn parse_top_k(query: Option<&str>) -> Result<usize, ApiError> {
    let Some(q) = query else {
        return Ok(DEFAULT_TOP_K);
    };
    for pair in q.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "top_k" {
            return match value.parse::<usize>() {
                Ok(k) if (1..=MAX_TOP_K).contains(&k) => Ok(k),
                _ => Err(ApiError::BadRequest {
                    error_type: "invalid_top_k",
                    message: format!(
                        "top_k must be an integer from 1 to {MAX_TOP_K}, got {value:?}"
                    ),
                }),
            };
        }
    }
    Ok(DEFAULT_TOP_K)
}

fn body_kind(content_type: Option<&str>) -> Result<BodyKind, ApiError> {
    let Some(ct) = content_type else {
        return Err(ApiError::UnsupportedMediaType("(none)".into()));
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "multipart/form-data" {
        let boundary = multer::parse_boundary(ct).map_err(|e| ApiError::BadRequest {
            error_type: "invalid_multipart",
            message: format!("bad multipart/form-data content type: {e}"),
        })?;
        Ok(BodyKind::Multipart(boundary))
    } else if essence.starts_with("image/") || essence == "application/octet-stream" {
        Ok(BodyKind::Raw)
    } else {
        Err(ApiError::UnsupportedMediaType(ct.to_string()))
    }
}

/// What the request head says about its body.
#[derive(Clone, Copy, Debug)]
struct BodyHead {
    content_length: Option<u64>,
    expect_continue: bool,
}

/// Read the whole body, refusing it (413) as soon as it grows over `limit`: never more than
/// `limit` bytes are held.
async fn read_body(
    body: Incoming,
    head: BodyHead,
    limit: u64,
    deadline: Instant,
) -> Result<Bytes, ApiError> {
    let mut body = body;
    let content_length = head.content_length;
    if content_length.is_some_and(|n| n > limit) {
        // A client waiting for `100 Continue` has sent nothing yet: answer at once (hyper sends
        // no 100 for a body never read). Others are sending already: discard so they can read it.
        if !head.expect_continue {
            drain(body, deadline).await;
        }
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let initial = content_length.unwrap_or(64 * 1024).min(limit) as usize;
    let mut buf = BytesMut::with_capacity(initial);
    loop {
        let frame = match timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ApiError::RequestTimeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::BadRequest {
                    error_type: "invalid_body",
                    message: format!("cannot read the request body: {e}"),
                })
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                drop(buf);
                drain(body, deadline).await;
                return Err(ApiError::PayloadTooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Discard the rest of a refused body (bounded in bytes and time).
async fn drain(mut body: Incoming, deadline: Instant) {
    let stop = deadline.min(Instant::now() + DRAIN_CAP_TIME);
    let mut seen = 0u64;
    while seen < DRAIN_CAP_BYTES {
        match timeout_at(stop, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    seen += d.len() as u64;
                }
            }
            _ => break,
        }
    }
}

async fn multipart_file(body: Bytes, boundary: String) -> Result<Bytes, ApiError> {
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let bad = |e: multer::Error| ApiError::BadRequest {
        error_type: "invalid_multipart",
        message: format!("malformed multipart/form-data body: {e}"),
    };
    loop {
        match mp.next_field().await.map_err(bad)? {
            Some(field) if field.name() == Some("file") => {
                return field.bytes().await.map_err(bad);
            }
            Some(_) => continue,
            None => {
                return Err(ApiError::BadRequest {
                    error_type: "missing_file",
                    message: "multipart/form-data body has no field named \"file\"".into(),
                })
            }
        }
    }
}

/// The preprocessing of one request's image, timed into `imgclass_preprocess_duration_seconds`:
/// run by the engine instance that takes the job (`--decode-on engine`) or on the blocking pool.
fn preprocess_job(state: &AppState, bytes: Bytes) -> impl FnOnce() -> crate::Result<Vec<f32>> {
    let limits = state.settings.decode_limits;
    let hist = state.metrics.preprocess_duration.clone();
    move || {
        let t = std::time::Instant::now();
        let r = preprocess(&bytes, &limits, &Transform::IMAGENET);
        hist.observe(t.elapsed().as_secs_f64());
        r.map(|p| p.chw)
    }
}

/// Decode and preprocess on the blocking pool, at most `decode_threads` at once.
async fn preprocess_off_runtime(
    state: &AppState,
    bytes: Bytes,
    deadline: Instant,
) -> Result<Vec<f32>, ApiError> {
    let permit = match timeout_at(deadline, state.decode_permits.clone().acquire_owned()).await {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return Err(ApiError::ShuttingDown),
        Err(_) => return Err(ApiError::Timeout),
    };
    let idle = state.settings.decode_priority == DecodePriority::Idle;
    let job = preprocess_job(state, bytes);
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        // Restored when the task ends: the blocking pool's thread may run other work next.
        let _priority = if idle { IdlePriority::enter() } else { None };
        job()
    });
    match timeout_at(deadline, task).await {
        Err(_) => Err(ApiError::Timeout),
        Ok(Ok(r)) => r.map_err(ApiError::Core),
        // A decoder that panics on some input: the input is bad, not the server.
        Ok(Err(e)) if e.is_panic() => Err(ApiError::Core(Error::CorruptImage(
            "the decoder failed on this input".into(),
        ))),
        Ok(Err(e)) => Err(ApiError::Core(Error::Internal(format!(
            "decoding task failed: {e}"
        )))),
    }
}

/// Outcome of a classify request, for the response headers and the request log.
pub struct Classified {
    pub model: ModelKind,
    pub body: ClassifyResponse,
}

pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    started: Instant,
) -> Result<Classified, ApiError> {
    let engines = state.check_ready()?;
    let s = &state.settings;
    let deadline = started + s.request_timeout;
    let head = BodyHead {
        content_length: req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok()),
        expect_continue: req
            .headers()
            .get(EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue")),
    };

    match s.fault {
        Fault::None => {}
        Fault::Error => {
            let _ = read_body(req.into_body(), head, s.max_body_bytes, deadline).await;
            return Err(ApiError::FaultInjected);
        }
        Fault::Stall => {
            let _ = read_body(req.into_body(), head, s.max_body_bytes, deadline).await;
            tracing::warn!("fault injection: stalling this request forever (--fault stall)");
            return std::future::pending().await;
        }
    }

    let k = parse_top_k(req.uri().query())?;
    let kind = body_kind(
        req.headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )?;

    let _slot = state.admission.admit(deadline).await?;
    let body = read_body(req.into_body(), head, s.max_body_bytes, deadline).await?;
    let image = match kind {
        BodyKind::Raw => body,
        BodyKind::Multipart(boundary) => multipart_file(body, boundary).await?,
    };
    if image.is_empty() {
        return Err(ApiError::Core(Error::EmptyInput));
    }
    let profile = s.profile;
    let answer = |model: ModelKind, reason: Option<&'static str>, predictions| Classified {
        model,
        body: ClassifyResponse {
            model: model.name(),
            profile: profile.name(),
            fallback: reason.is_some(),
            fallback_reason: reason,
            predictions,
        },
    };

    let primary = &engines.primary;
    let Some(fallback) = &engines.fallback else {
        // lite: one model, no fallback; the image decoded by the engine instance that runs its
        // pass (`--decode-on engine`) or here, on the decoding pool
        let input = match s.decode_on {
            DecodeOn::Engine => Input::Deferred(Box::new(preprocess_job(&state, image))),
            DecodeOn::Pool => Input::Ready(Arc::new(
                preprocess_off_runtime(&state, image, deadline).await?,
            )),
        };
        return match timeout_at(deadline, primary.infer(input, k, deadline.into_std())).await {
            Ok(Ok(p)) => Ok(answer(primary.kind(), None, p)),
            Ok(Err(e)) => Err(engine_error(e, primary.kind())),
            Err(_) => Err(ApiError::Timeout),
        };
    };

    debug_assert_eq!(profile, Profile::Full);
    let chw = Arc::new(preprocess_off_runtime(&state, image, deadline).await?);
    let primary_deadline = (started + s.primary_deadline).min(deadline);
    let (reason, primary_error) = if Instant::now() >= primary_deadline {
        ("deadline", None)
    } else {
        let fut = primary.infer(Input::Ready(chw.clone()), k, primary_deadline.into_std());
        match timeout_at(primary_deadline, fut).await {
            Ok(Ok(p)) => return Ok(answer(primary.kind(), None, p)),
            Ok(Err(EngineError::Deadline | EngineError::QueueFull)) | Err(_) => ("deadline", None),
            Ok(Err(e)) => ("error", Some(e.to_string())),
        }
    };
    state.metrics.fallbacks.with_label_values(&[reason]).inc();
    match &primary_error {
        Some(e) => tracing::warn!(reason, error = %e, "primary model failed; falling back"),
        None => tracing::info!(reason, "primary model missed its deadline; falling back"),
    }
    match timeout_at(
        deadline,
        fallback.infer(Input::Ready(chw), k, deadline.into_std()),
    )
    .await
    {
        Ok(Ok(p)) => Ok(answer(fallback.kind(), Some(reason), p)),
        Ok(Err(EngineError::Failed(e))) => Err(ApiError::BothModelsFailed {
            primary: primary_error.unwrap_or_else(|| "missed its deadline".into()),
            fallback: e.to_string(),
        }),
        Ok(Err(e)) => Err(engine_error(e, fallback.kind())),
        Err(_) => Err(ApiError::Timeout),
    }
}

fn engine_error(e: EngineError, model: ModelKind) -> ApiError {
    match e {
        EngineError::Failed(e) => ApiError::Core(e),
        EngineError::Deadline => ApiError::Timeout,
        EngineError::QueueFull => ApiError::Overloaded,
        EngineError::Stopped => ApiError::EngineStopped(model.name()),
        EngineError::Input(e) => ApiError::Core(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_query() {
        assert_eq!(parse_top_k(None).unwrap(), 5);
        assert_eq!(parse_top_k(Some("a=1")).unwrap(), 5);
        assert_eq!(parse_top_k(Some("a=1&top_k=3")).unwrap(), 3);
        assert_eq!(parse_top_k(Some("top_k=1000")).unwrap(), 1000);
        for bad in [
            "top_k=0",
            "top_k=1001",
            "top_k=x",
            "top_k=",
            "top_k",
            "top_k=-1",
        ] {
            let e = parse_top_k(Some(bad)).unwrap_err();
            assert_eq!(e.status().as_u16(), 400, "{bad}");
            assert_eq!(e.error_type(), "invalid_top_k");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(body_kind(Some("image/jpeg")).unwrap(), BodyKind::Raw);
        assert_eq!(body_kind(Some("Image/PNG")).unwrap(), BodyKind::Raw);
        assert_eq!(
            body_kind(Some("application/octet-stream")).unwrap(),
            BodyKind::Raw
        );
        assert_eq!(
            body_kind(Some("multipart/form-data; boundary=abc")).unwrap(),
            BodyKind::Multipart("abc".into())
        );
        assert_eq!(
            body_kind(Some("multipart/form-data"))
                .unwrap_err()
                .status()
                .as_u16(),
            400
        );
        for ct in [None, Some("text/plain"), Some("application/json")] {
            assert_eq!(body_kind(ct).unwrap_err().status().as_u16(), 415, "{ct:?}");
        }
    }

    #[tokio::test]
    async fn multipart_file_field() {
        let body = Bytes::from_static(
            b"--XX\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nhello\r\n\
              --XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\
              Content-Type: image/jpeg\r\n\r\nJPEGDATA\r\n--XX--\r\n",
        );
        assert_eq!(
            &multipart_file(body, "XX".into()).await.unwrap()[..],
            b"JPEGDATA"
        );
        let nofile = Bytes::from_static(
            b"--XX\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nhello\r\n--XX--\r\n",
        );
        let e = multipart_file(nofile, "XX".into()).await.unwrap_err();
        assert_eq!((e.status().as_u16(), e.error_type()), (400, "missing_file"));
        let broken =
            Bytes::from_static(b"--XX\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc");
        let e = multipart_file(broken, "XX".into()).await.unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.error_type()),
            (400, "invalid_multipart")
        );
    }
}
