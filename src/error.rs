//! The one error type of imgclass.
//!
//! Every failure has a stable snake_case `error_type` (used in CLI JSON lines and HTTP bodies)
//! and a CLI exit code. The HTTP status mapping lives in `server::status` (one place per policy).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line / bad request parameters.
    #[error("{0}")]
    Usage(String),

    /// An input file could not be read (missing, permission denied, a directory, ...).
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Zero bytes of input.
    #[error("empty input: there are no bytes to decode")]
    EmptyInput,

    /// The bytes are not any image format we know (e.g. text saved as `.jpg`).
    #[error("not an image: {0}")]
    NotAnImage(String),

    /// A recognised image format that we do not decode.
    #[error("unsupported image format: {0}")]
    UnsupportedFormat(String),

    /// Truncated or corrupt image data.
    #[error("corrupt or truncated image: {0}")]
    CorruptImage(String),

    /// Declared dimensions exceed the pixel limit (refused before any pixel buffer is allocated).
    #[error(
        "image too large: {width}x{height} is {pixels} pixels, over the limit of {limit} pixels"
    )]
    ImageTooLarge {
        width: u64,
        height: u64,
        pixels: u64,
        limit: u64,
    },

    /// A weights file is not where we looked.
    #[error("{0}")]
    WeightsMissing(String),

    /// A weights file exists but is wrong: bad format, bad hash, missing/extra/mis-shaped key.
    #[error("invalid weights {path}: {reason}")]
    WeightsInvalid { path: String, reason: String },

    /// Downloading weights failed.
    #[error("download failed: {0}")]
    Download(String),

    /// A tensor operation failed inside a model (a server-side failure, never the client's fault).
    #[error("inference failed: {0}")]
    Inference(String),

    /// Anything else that is our own fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// CLI exit codes (documented in `--help` and the README).
pub mod exit_code {
    pub const OK: i32 = 0;
    /// Internal failure (inference error, I/O error writing output, ...).
    pub const INTERNAL: i32 = 1;
    /// Command-line usage error (clap uses 2 as well).
    pub const USAGE: i32 = 2;
    /// An input file could not be read.
    pub const UNREADABLE: i32 = 3;
    /// An input is empty, not an image, unsupported, corrupt or over the pixel limit.
    pub const BAD_IMAGE: i32 = 4;
    /// Weights missing, invalid, or could not be downloaded.
    pub const WEIGHTS: i32 = 5;
}

impl Error {
    /// Stable, snake_case kind of the error: part of the CLI and HTTP contracts.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::Usage(_) => "usage_error",
            Error::Unreadable { .. } => "unreadable_file",
            Error::EmptyInput => "empty_input",
            Error::NotAnImage(_) => "not_an_image",
            Error::UnsupportedFormat(_) => "unsupported_format",
            Error::CorruptImage(_) => "corrupt_image",
            Error::ImageTooLarge { .. } => "image_too_large",
            Error::WeightsMissing(_) => "weights_missing",
            Error::WeightsInvalid { .. } => "weights_invalid",
            Error::Download(_) => "download_failed",
            Error::Inference(_) => "inference_failed",
            Error::Internal(_) => "internal_error",
        }
    }

    /// Exit code of the CLI for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => exit_code::USAGE,
            Error::Unreadable { .. } => exit_code::UNREADABLE,
            Error::EmptyInput
            | Error::NotAnImage(_)
            | Error::UnsupportedFormat(_)
            | Error::CorruptImage(_)
            | Error::ImageTooLarge { .. } => exit_code::BAD_IMAGE,
            Error::WeightsMissing(_) | Error::WeightsInvalid { .. } | Error::Download(_) => {
                exit_code::WEIGHTS
            }
            Error::Inference(_) | Error::Internal(_) => exit_code::INTERNAL,
        }
    }

    /// True when the error is the caller's fault (bad input), false when it is ours.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::Usage(_)
                | Error::EmptyInput
                | Error::NotAnImage(_)
                | Error::UnsupportedFormat(_)
                | Error::CorruptImage(_)
                | Error::ImageTooLarge { .. }
        )
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Inference(e.to_string())
    }
}
