//! Decoding and torchvision's eval transform (owner: preprocessing).
//! STUB: signatures are the contract other modules code against; bodies are being written.

use crate::{Error, Result};
use image::RgbImage;

/// The eval transform of torchvision's IMAGENET1K_V2 weights.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Transform {
    pub resize: u32,
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Transform {
    pub const IMAGENET: Transform = Transform {
        resize: 232,
        crop: 224,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
}

/// Limits applied while decoding untrusted bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DecodeLimits {
    /// Largest accepted width*height (declared), checked before any pixel buffer is allocated.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 100_000_000,
        }
    }
}

/// Decode any supported format to RGB8, EXIF orientation applied.
pub fn decode(_bytes: &[u8], _limits: &DecodeLimits) -> Result<RgbImage> {
    Err(Error::Internal(
        "preprocess::decode not implemented yet".into(),
    ))
}

/// Resize the shorter side to `t.resize` (bilinear, antialiased, as PIL) and center-crop `t.crop`.
pub fn resize_center_crop(_img: &RgbImage, _t: &Transform) -> Result<RgbImage> {
    Err(Error::Internal(
        "preprocess::resize_center_crop not implemented yet".into(),
    ))
}

/// Scale to [0,1] and normalise: CHW f32, length 3*crop*crop.
pub fn normalize(crop: &RgbImage, t: &Transform) -> Vec<f32> {
    let (w, h) = crop.dimensions();
    let n = (w * h) as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, p) in crop.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = (f32::from(p[c]) / 255.0 - t.mean[c]) / t.std[c];
        }
    }
    out
}

/// The model input of one image: the crop the model saw and its normalised CHW tensor data.
#[derive(Clone, Debug)]
pub struct Preprocessed {
    pub crop: RgbImage,
    pub chw: Vec<f32>,
}

/// decode + resize_center_crop + normalize.
pub fn preprocess(bytes: &[u8], limits: &DecodeLimits, t: &Transform) -> Result<Preprocessed> {
    let img = decode(bytes, limits)?;
    let crop = resize_center_crop(&img, t)?;
    let chw = normalize(&crop, t);
    Ok(Preprocessed { crop, chw })
}
