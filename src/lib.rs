//! imgclass: fast, dependable ImageNet classification on candle (CPU).

pub mod bench;
pub mod classify;
pub mod cli;
pub mod error;
pub mod labels;
pub mod models;
pub mod ops;
pub mod preprocess;
pub mod server;
pub mod weights;

pub use error::{Error, Result};
