//! Fast CPU kernels (owner: performance). The only place `unsafe` is allowed.
