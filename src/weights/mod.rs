//! Weights: reading state_dicts strictly and the synthetic generator (owner: models); the manifest,
//! directory resolution and fetching (owner: CLI/weights).

pub mod dir;
pub mod fetch;
pub mod load;
pub mod manifest;
pub mod synthetic;
