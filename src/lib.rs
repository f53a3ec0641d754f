//! imgclass: fast, dependable ImageNet classification on candle (CPU).

pub mod error;
pub mod labels;
pub mod models;

pub use error::{Error, Result};
