//! Weights: reading state_dicts strictly and the synthetic generator (owner: models); the manifest,
//! directory resolution and fetching (owner: CLI/weights).

pub mod dir;
pub mod load;
pub mod synthetic;
pub mod fetch;
pub mod manifest;
