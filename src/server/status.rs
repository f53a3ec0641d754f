//! THE one place that maps failures to HTTP status codes and `{"error","error_type"}` bodies.
//!
//! Client mistakes are 4xx; 503 means "not now, try elsewhere" (not ready, shutting down,
//! overloaded, out of time) and carries `Retry-After`; 500 is only for the server's own failures.

use hyper::StatusCode;

/// Everything a request can fail with.
#[derive(Debug)]
pub enum ApiError {
    /// A failure from the library (decoding, limits, inference, ...).
    Core(crate::Error),
    /// Malformed request: `error_type` is one of `invalid_multipart`, `missing_file`, `invalid_top_k`.
    BadRequest {
        error_type: &'static str,
        message: String,
    },
    /// Body larger than `--max-body-bytes`.
    PayloadTooLarge { limit: u64 },
    /// Content type neither multipart/form-data, image/* nor application/octet-stream.
    UnsupportedMediaType(String),
    /// The client did not send its body within the request timeout.
    RequestTimeout,
    /// Unknown path.
    NotFound,
    /// Known path, wrong method.
    MethodNotAllowed { allow: &'static str },
    /// Weights not loaded or warm-up not finished yet.
    NotReady,
    /// SIGTERM/SIGINT received.
    ShuttingDown,
    /// Queue full.
    Overloaded,
    /// The request could not be answered within the request timeout.
    Timeout,
    /// `--fault error`.
    FaultInjected,
    /// An inference engine thread is gone (a bug): the pod must be restarted.
    EngineStopped(&'static str),
    /// Both models of the full profile failed.
    BothModelsFailed { primary: String, fallback: String },
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        ApiError::Core(e)
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use crate::Error as E;
        match self {
            ApiError::Core(e) => match e {
                E::Usage(_) | E::EmptyInput => StatusCode::BAD_REQUEST,
                E::NotAnImage(_) | E::UnsupportedFormat(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                E::CorruptImage(_) | E::ImageTooLarge { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                E::Unreadable { .. }
                | E::WeightsMissing(_)
                | E::WeightsInvalid { .. }
                | E::Download(_)
                | E::Inference(_)
                | E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotReady
            | ApiError::ShuttingDown
            | ApiError::Overloaded
            | ApiError::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::FaultInjected
            | ApiError::BothModelsFailed { .. }
            | ApiError::EngineStopped(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Core(e) => e.error_type(),
            ApiError::BadRequest { error_type, .. } => error_type,
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::NotReady => "not_ready",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Overloaded => "overloaded",
            ApiError::Timeout => "timeout",
            ApiError::FaultInjected => "fault_injected",
            ApiError::EngineStopped(_) => "engine_stopped",
            ApiError::BothModelsFailed { .. } => "inference_failed",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::Core(e) => e.to_string(),
            ApiError::BadRequest { message, .. } => message.clone(),
            ApiError::PayloadTooLarge { limit } => {
                format!("request body is larger than the limit of {limit} bytes")
            }
            ApiError::UnsupportedMediaType(ct) => format!(
                "unsupported content type {ct:?}: send multipart/form-data with the image in the \
                 field \"file\", or the raw image with Content-Type image/* or application/octet-stream"
            ),
            ApiError::RequestTimeout => "the request body was not received in time".into(),
            ApiError::NotFound => "no such route".into(),
            ApiError::MethodNotAllowed { allow } => format!("method not allowed; allowed: {allow}"),
            ApiError::NotReady => "not ready: models are loading or warming up".into(),
            ApiError::ShuttingDown => "shutting down".into(),
            ApiError::Overloaded => "overloaded: too many requests queued, retry later".into(),
            ApiError::Timeout => "the request could not be answered within the request timeout".into(),
            ApiError::FaultInjected => "fault injected (--fault error): this pod acts broken".into(),
            ApiError::EngineStopped(model) => {
                format!("the inference engine of {model} has stopped; this process needs a restart")
            }
            ApiError::BothModelsFailed { primary, fallback } => {
                format!("both models failed: primary: {primary}; fallback: {fallback}")
            }
        }
    }

    /// 503s tell the client (and the ingress) to retry later or elsewhere.
    pub fn retry_after(&self) -> bool {
        self.status() == StatusCode::SERVICE_UNAVAILABLE
    }

    /// The JSON body `{"error": ..., "error_type": ...}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.message(), "error_type": self.error_type() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn no_client_error_is_a_5xx() {
        let client_errors = [
            Error::Usage("x".into()),
            Error::EmptyInput,
            Error::NotAnImage("x".into()),
            Error::UnsupportedFormat("x".into()),
            Error::CorruptImage("x".into()),
            Error::ImageTooLarge {
                width: 1,
                height: 1,
                pixels: 1,
                limit: 0,
            },
        ];
        for e in client_errors {
            assert!(e.is_client_error());
            let a = ApiError::from(e);
            assert!(a.status().is_client_error(), "{a:?} -> {}", a.status());
        }
        assert_eq!(
            ApiError::from(Error::Inference("x".into())).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn contract_codes() {
        assert_eq!(ApiError::from(Error::EmptyInput).status().as_u16(), 400);
        assert_eq!(
            ApiError::from(Error::NotAnImage("t".into()))
                .status()
                .as_u16(),
            415
        );
        assert_eq!(
            ApiError::from(Error::CorruptImage("t".into()))
                .status()
                .as_u16(),
            422
        );
        assert_eq!(
            ApiError::PayloadTooLarge { limit: 1 }.status().as_u16(),
            413
        );
        for e in [
            ApiError::NotReady,
            ApiError::ShuttingDown,
            ApiError::Overloaded,
            ApiError::Timeout,
        ] {
            assert_eq!(e.status().as_u16(), 503);
            assert!(e.retry_after());
        }
        let b = ApiError::Overloaded.body();
        assert_eq!(b["error_type"], "overloaded");
        assert!(b["error"].as_str().unwrap().contains("overloaded"));
    }
}
