//! Weights: reading state_dicts strictly (owner: models), the manifest, directory resolution and
//! fetching (owner: CLI/weights).
