//! The hyper service: routing, response headers, the per-request log line and request metrics.

use super::classify;
use super::openapi;
use super::state::AppState;
use super::status::ApiError;
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::time::Instant;

/// Every route the server answers: (method, path). The router and the OpenAPI document both
/// derive from this table (a test checks the document against the live server).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/classify"),
    ("POST", "/"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/info"),
    ("GET", "/openapi.json"),
];

pub const REQUEST_ID: &str = "x-request-id";
pub const MODEL_HEADER: &str = "x-imgclass-model";

/// What a handler produced, before headers are added.
struct Out {
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
    model: Option<&'static str>,
    fallback: Option<&'static str>,
    error: Option<ApiError>,
}

impl Out {
    fn json(status: StatusCode, v: &impl serde::Serialize) -> Out {
        let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
        Out {
            status,
            body: Bytes::from(body),
            content_type: "application/json",
            model: None,
            fallback: None,
            error: None,
        }
    }

    fn error(e: ApiError) -> Out {
        let mut o = Out::json(e.status(), &e.body());
        o.error = Some(e);
        o
    }
}

struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(g: &prometheus::IntGauge) -> InFlight {
        g.inc();
        InFlight(g.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn request_id(req: &Request<Incoming>) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn header_str(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(512).collect())
}

/// The route label for metrics (bounded set).
fn route_label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|(_, p)| *p == path)
        .map(|(_, p)| *p)
        .unwrap_or("other")
}

pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    // a guard, so that a request whose future is dropped (client gone, shutdown) is not counted forever
    let _in_flight = InFlight::new(&state.metrics.in_flight);
    let request_id = request_id(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = route_label(&path);
    let x_code = header_str(&req, "x-code");
    let x_original_uri = header_str(&req, "x-original-uri");

    let out = match AssertUnwindSafe(dispatch(state.clone(), req, started))
        .catch_unwind()
        .await
    {
        Ok(o) => o,
        Err(_) => Out::error(ApiError::Core(crate::Error::Internal(
            "request handler panicked".into(),
        ))),
    };

    let elapsed = started.elapsed();
    let status = out.status;
    let model = out.model.unwrap_or("none");
    state
        .metrics
        .requests
        .with_label_values(&[route, status.as_str(), model])
        .inc();
    state
        .metrics
        .request_duration
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        if let Some(e) = &out.error {
            state
                .metrics
                .shed
                .with_label_values(&[e.error_type()])
                .inc();
        }
    }
    let error_type = out.error.as_ref().map(|e| e.error_type());
    let error_msg = out
        .error
        .as_ref()
        .filter(|e| e.status().is_server_error())
        .map(|e| e.message());
    tracing::info!(
        request_id = %request_id,
        method = %method,
        route = %path,
        status = status.as_u16(),
        model,
        fallback = out.fallback.unwrap_or("none"),
        duration_ms = (elapsed.as_secs_f64() * 1000.0),
        error_type,
        error = error_msg.as_deref(),
        x_code = x_code.as_deref(),
        x_original_uri = x_original_uri.as_deref(),
        "request"
    );

    let mut resp = Response::new(Full::new(out.body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(out.content_type));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(REQUEST_ID, v);
    }
    if let Some(m) = out.model {
        h.insert(MODEL_HEADER, HeaderValue::from_static(m));
    }
    if let Some(e) = &out.error {
        if e.retry_after() {
            h.insert(
                RETRY_AFTER,
                HeaderValue::from(state.settings.retry_after_secs),
            );
        }
        if let ApiError::MethodNotAllowed { allow } = e {
            h.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if matches!(
            e,
            ApiError::PayloadTooLarge { .. } | ApiError::RequestTimeout
        ) {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
    resp
}

async fn dispatch(state: Arc<AppState>, req: Request<Incoming>, started: Instant) -> Out {
    let path = req.uri().path();
    let method = req.method();
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, p)| *p == path)
        .map(|(m, _)| *m)
        .collect();
    if allowed.is_empty() {
        return Out::error(ApiError::NotFound);
    }
    if !allowed.contains(&method.as_str()) {
        let allow = if allowed.contains(&"POST") {
            "POST"
        } else {
            "GET"
        };
        return Out::error(ApiError::MethodNotAllowed { allow });
    }
    match (method, path) {
        (&Method::POST, "/classify") | (&Method::POST, "/") => {
            match classify::handle(state, req, started).await {
                Ok(c) => {
                    let mut o = Out::json(StatusCode::OK, &c.body);
                    o.model = Some(c.model.name());
                    o.fallback = c.body.fallback_reason;
                    o
                }
                Err(e) => Out::error(e),
            }
        }
        (&Method::GET, "/healthz") => match state.check_alive() {
            Ok(()) => Out::json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            Err(e) => Out::error(e),
        },
        (&Method::GET, "/readyz") => match state.check_ready() {
            Ok(_) => Out::json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
            Err(e) => Out::error(e),
        },
        (&Method::GET, "/metrics") => Out {
            status: StatusCode::OK,
            body: Bytes::from(state.metrics.render()),
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            model: None,
            fallback: None,
            error: None,
        },
        (&Method::GET, "/info") => Out::json(StatusCode::OK, &info(&state)),
        (&Method::GET, "/openapi.json") => Out::json(StatusCode::OK, &openapi::document()),
        _ => Out::error(ApiError::NotFound),
    }
}

fn info(state: &AppState) -> serde_json::Value {
    let s = &state.settings;
    serde_json::json!({
        "name": "imgclass",
        "version": env!("CARGO_PKG_VERSION"),
        "profile": s.profile.name(),
        "models": {
            "primary": s.profile.primary().name(),
            "fallback": s.profile.fallback().map(|m| m.name()),
        },
        "ready": state.check_ready().is_ok(),
        "limits": {
            "max_body_bytes": s.max_body_bytes,
            "max_pixels": s.decode_limits.max_pixels,
            "max_concurrent": s.max_concurrent,
            "queue_depth": s.queue_depth,
            "max_batch_size": s.max_batch_size,
            "primary_deadline_ms": s.primary_deadline.as_millis() as u64,
            "header_read_timeout_ms": s.header_read_timeout.as_millis() as u64,
            "request_timeout_ms": s.request_timeout.as_millis() as u64,
            "shutdown_grace_ms": s.shutdown_grace.as_millis() as u64,
            "top_k_max": classify::MAX_TOP_K,
        },
        "threads": s.threads,
        "decode_threads": s.decode_threads,
        "decode_on": s.decode_on,
        "fault": s.fault,
    })
}
