//! Decoding and torchvision's eval transform (owner: preprocessing).
//!
//! `preprocess` = [`decode`] (any supported format → RGB8, EXIF orientation applied) +
//! [`resize_center_crop`] (torchvision `Resize(232)` with PIL's antialiased bilinear, then
//! `CenterCrop(224)`) + [`normalize`] (`ToTensor` + `Normalize(mean, std)` → CHW f32).
//! The README section "Preprocessing" documents the exact transform, limits and parity.

mod dct_resize;
mod decode;
mod jpeg_dc;
mod resample;

use crate::{Error, Result};
use image::RgbImage;
use std::time::{Duration, Instant};

pub use decode::decode;

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

impl DecodeLimits {
    /// Largest decoded pixel buffer (bytes) any decoder may allocate: 4 bytes per allowed pixel
    /// (RGBA8 at the pixel limit), at least 64 MiB. Wider sample types (16-bit) thus get a
    /// proportionally lower pixel limit, reported as such in `Error::ImageTooLarge`.
    pub fn max_alloc_bytes(&self) -> u64 {
        self.max_pixels.saturating_mul(4).max(64 << 20)
    }

    /// Largest encoded input worth reading: an image file is at most about as large as its
    /// decoded pixels (uncompressed BMP/TIFF) plus headers and metadata, so a larger input cannot
    /// decode within [`max_alloc_bytes`](Self::max_alloc_bytes). Readers stop here instead of
    /// holding an endless input (`/dev/zero`, a pipe) or a huge non-image file in memory.
    pub fn max_input_bytes(&self) -> u64 {
        self.max_alloc_bytes().saturating_add(16 << 20)
    }
}

/// torchvision's `_compute_resized_output_size` for `Resize(size)` with an int size:
/// the shorter side becomes `size`, the longer `int(size * long / short)` (truncation).
/// Returns `(new_w, new_h)`.
pub fn resized_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    if w == 0 || h == 0 {
        return (0, 0);
    }
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    // Python: int(requested_new_short * long / short), true division in double.
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u32;
    if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Python's `int(round(x / 2.0))` for a non-negative integer `x` (round half to even).
fn round_half_even_div2(x: u32) -> u32 {
    let q = x / 2;
    if x % 2 == 1 && q % 2 == 1 {
        q + 1
    } else {
        q
    }
}

/// Placement of the crop along one axis of a resized image of length `size`:
/// `(first source index, first destination index, length)`, as torchvision's `center_crop`
/// does it (zero padding when the image is smaller than the crop).
fn crop_axis(size: u32, crop: u32) -> (u32, u32, u32) {
    if crop > size {
        // torchvision pads (crop - size) // 2 before; the padded image then equals the crop.
        (0, (crop - size) / 2, size)
    } else {
        (round_half_even_div2(size - crop), 0, crop)
    }
}

/// Resize the RGB8 buffer (`w`×`h`) as torchvision's `Resize(t.resize)` on a PIL image and
/// center-crop `t.crop`. Only the crop window is computed; values are those of the full resize.
pub(crate) fn resize_center_crop_raw(
    src: &[u8],
    w: u32,
    h: u32,
    t: &Transform,
) -> Result<RgbImage> {
    if w == 0 || h == 0 {
        return Err(Error::CorruptImage("image has zero width or height".into()));
    }
    if src.len() != (w as usize) * (h as usize) * 3 {
        return Err(Error::Internal(format!(
            "RGB buffer of {} bytes does not match {w}x{h}",
            src.len()
        )));
    }
    if t.resize == 0 || t.crop == 0 {
        return Err(Error::Usage(
            "resize and crop sizes must be positive".into(),
        ));
    }
    let (rw, rh) = resized_size(w, h, t.resize);
    if rw == 0 || rh == 0 {
        return Err(Error::CorruptImage(format!(
            "a {w}x{h} image resizes to an empty {rw}x{rh} image"
        )));
    }
    let (sx, dx, lx) = crop_axis(rw, t.crop);
    let (sy, dy, ly) = crop_axis(rh, t.crop);
    let window = resample::resize_window(
        src,
        w as usize,
        h as usize,
        rw as usize,
        rh as usize,
        sx as usize..(sx + lx) as usize,
        sy as usize..(sy + ly) as usize,
    );
    assemble_crop(&window, (dx, lx), (dy, ly), t)
}

/// Place the computed window (`lx`×`ly`) at (`dx`, `dy`) of a zero crop (torchvision's padding).
fn assemble_crop(
    window: &[u8],
    (dx, lx): (u32, u32),
    (dy, ly): (u32, u32),
    t: &Transform,
) -> Result<RgbImage> {
    let c = t.crop as usize;
    let mut out = vec![0u8; c * c * 3];
    let (lx, ly, dx, dy) = (lx as usize, ly as usize, dx as usize, dy as usize);
    for r in 0..ly {
        let d = ((dy + r) * c + dx) * 3;
        out[d..d + lx * 3].copy_from_slice(&window[r * lx * 3..(r + 1) * lx * 3]);
    }
    RgbImage::from_raw(t.crop, t.crop, out)
        .ok_or_else(|| Error::Internal("crop buffer has the wrong size".into()))
}

/// Resize the shorter side to `t.resize` (bilinear, antialiased, as PIL) and center-crop `t.crop`.
pub fn resize_center_crop(img: &RgbImage, t: &Transform) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    resize_center_crop_raw(img.as_raw(), w, h, t)
}

/// Scale to [0,1] and normalise: CHW f32, length 3*crop*crop.
pub fn normalize(crop: &RgbImage, t: &Transform) -> Vec<f32> {
    let raw = crop.as_raw();
    let mut out = Vec::with_capacity(raw.len());
    for c in 0..3 {
        // torchvision's float32 arithmetic, done once per byte value instead of once per sample
        let lut: [f32; 256] =
            std::array::from_fn(|v| (f32::from(v as u8) / 255.0 - t.mean[c]) / t.std[c]);
        out.extend(raw.iter().skip(c).step_by(3).map(|&v| lut[usize::from(v)]));
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
    preprocess_timed(bytes, limits, t).map(|(p, _)| p)
}

/// DCT-domain downscaling of large JPEGs: decode only the low-frequency DCT coefficients and
/// compute the resized crop from them directly (PIL's weights projected on the DCT basis, see
/// `dct_resize`), skipping the inverse DCT, upsampling and colour conversion of every pixel; for
/// progressive files most of the Huffman decoding too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum DctScaling {
    /// Always decode at full resolution (reference path).
    Off,
    /// Use the DCT path for JPEGs whose shorter side is at least [`DCT_MIN_SHRINK`] (progressive)
    /// or [`DCT_MIN_SHRINK_BASELINE`] (baseline) × `t.resize` (default).
    #[default]
    Auto,
    /// Use the DCT path for every eligible JPEG, whatever its size (tests, measurements).
    Always,
}

/// The DCT path is used (in `Auto`) when the shorter side is at least this many times the resize
/// target: PIL's triangle then spans at least 3 blocks along each axis and is nearly linear over
/// each, so the dropped high frequencies contribute little. A 12 MP photo (3000 px short
/// side → 232) shrinks 12.9×, a 42 MP one 22.9×: both qualify; a 1000×750 photo (3.2×) does not.
pub const DCT_MIN_SHRINK: f64 = 12.0;

/// The same threshold for baseline (sequential) JPEGs, whose every coefficient must be
/// Huffman-decoded: the saving is the inverse DCT, upsampling and colour conversion.
pub const DCT_MIN_SHRINK_BASELINE: f64 = 12.0;

/// [`preprocess_timed`] with an explicit [`DctScaling`] choice.
pub fn preprocess_with(
    bytes: &[u8],
    limits: &DecodeLimits,
    t: &Transform,
    scaling: DctScaling,
) -> Result<(Preprocessed, StageTimes)> {
    let t0 = Instant::now();
    if scaling != DctScaling::Off {
        if let Some((crop, times)) = dc_path(bytes, limits, t, scaling, t0)? {
            let t2 = Instant::now();
            let chw = normalize(&crop, t);
            let times = StageTimes {
                normalize: t2.elapsed(),
                ..times
            };
            return Ok((Preprocessed { crop, chw }, times));
        }
    }
    let img = decode(bytes, limits)?;
    let t1 = Instant::now();
    let crop = resize_center_crop(&img, t)?;
    let t2 = Instant::now();
    let chw = normalize(&crop, t);
    let t3 = Instant::now();
    Ok((
        Preprocessed { crop, chw },
        StageTimes {
            decode: t1 - t0,
            resize_crop: t2 - t1,
            normalize: t3 - t2,
        },
    ))
}

/// The DCT-domain path; `Ok(None)` when not applicable (the caller decodes fully).
fn dc_path(
    bytes: &[u8],
    limits: &DecodeLimits,
    t: &Transform,
    scaling: DctScaling,
    t0: Instant,
) -> Result<Option<(RgbImage, StageTimes)>> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Ok(None);
    }
    let Some(frame) = jpeg_dc::probe(bytes) else {
        return Ok(None);
    };
    decode::check_dims(frame.width, frame.height, limits)?;
    let short = frame.width.min(frame.height);
    let min_shrink = if frame.progressive {
        DCT_MIN_SHRINK
    } else {
        DCT_MIN_SHRINK_BASELINE
    };
    if scaling == DctScaling::Auto && f64::from(short) < min_shrink * f64::from(t.resize) {
        return Ok(None);
    }
    // Same refusals as the full decoder (truncation, scan count) before any work.
    decode::check_jpeg(bytes)?;
    let img = match std::panic::catch_unwind(|| jpeg_dc::decode(bytes, &frame, true)) {
        Ok(Some(img)) => img,
        _ => return Ok(None),
    };
    let t1 = Instant::now();
    let (full_w, full_h) = dct_resize::oriented_size(&img);
    let (rw, rh) = resized_size(full_w, full_h, t.resize);
    if rw == 0 || rh == 0 {
        return Ok(None);
    }
    let (sx, dx, lx) = crop_axis(rw, t.crop);
    let (sy, dy, ly) = crop_axis(rh, t.crop);
    let axis = |size: u32, start: u32, len: u32| dct_resize::OutAxis {
        size: size as usize,
        range: start as usize..(start + len) as usize,
        reversed: false,
    };
    let window = match std::panic::catch_unwind(|| {
        dct_resize::resize_window(&img, &axis(rw, sx, lx), &axis(rh, sy, ly))
    }) {
        Ok(w) => w,
        Err(_) => return Ok(None),
    };
    let crop = assemble_crop(&window, (dx, lx), (dy, ly), t)?;
    let t2 = Instant::now();
    Ok(Some((
        crop,
        StageTimes {
            decode: t1 - t0,
            resize_crop: t2 - t1,
            normalize: Duration::ZERO,
        },
    )))
}

/// Wall-clock time of each preprocessing stage (for `imgclass bench --stage preprocess`).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StageTimes {
    /// Decoding to RGB8 (with orientation), including any decode-time downscaling.
    pub decode: Duration,
    /// Resize + center crop.
    pub resize_crop: Duration,
    /// ToTensor + Normalize.
    pub normalize: Duration,
}

impl StageTimes {
    pub fn total(&self) -> Duration {
        self.decode + self.resize_crop + self.normalize
    }
}

/// [`preprocess`], also returning how long each stage took.
pub fn preprocess_timed(
    bytes: &[u8],
    limits: &DecodeLimits,
    t: &Transform,
) -> Result<(Preprocessed, StageTimes)> {
    preprocess_with(bytes, limits, t, DctScaling::Auto)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_torchvision_arithmetic_per_sample_in_chw_order() {
        // every byte value in every channel, at pixels that differ per channel
        let (w, h) = (32u32, 24u32);
        let img = RgbImage::from_fn(w, h, |x, y| {
            let i = (y * w + x) as u8;
            image::Rgb([i, i.wrapping_mul(7).wrapping_add(3), 255 - i])
        });
        let t = Transform::IMAGENET;
        let got = normalize(&img, &t);
        let n = (w * h) as usize;
        assert_eq!(got.len(), 3 * n);
        for (i, p) in img.pixels().enumerate() {
            for c in 0..3 {
                let want = (f32::from(p[c]) / 255.0 - t.mean[c]) / t.std[c];
                assert_eq!(
                    got[c * n + i].to_bits(),
                    want.to_bits(),
                    "pixel {i} channel {c}"
                );
            }
        }
    }

    #[test]
    fn resized_size_matches_torchvision() {
        // int(232 * 451 / 300) = 348
        assert_eq!(resized_size(451, 300, 232), (348, 232));
        assert_eq!(resized_size(300, 451, 232), (232, 348));
        assert_eq!(resized_size(512, 512, 232), (232, 232));
        // int(232 * 4000 / 3000) = 309
        assert_eq!(resized_size(4000, 3000, 232), (309, 232));
        assert_eq!(resized_size(1, 10, 232), (232, 2320));
    }

    #[test]
    fn center_crop_offsets_use_bankers_rounding() {
        // round(1/2) = 0, round(3/2) = 2, round(5/2) = 2, round(124/2) = 62
        assert_eq!(crop_axis(225, 224), (0, 0, 224));
        assert_eq!(crop_axis(227, 224), (2, 0, 224));
        assert_eq!(crop_axis(229, 224), (2, 0, 224));
        assert_eq!(crop_axis(348, 224), (62, 0, 224));
        // smaller than the crop: zero padding, left pad (224-221)//2 = 1
        assert_eq!(crop_axis(221, 224), (0, 1, 221));
    }

    #[test]
    fn pads_with_zeros_when_resize_is_smaller_than_crop() {
        let t = Transform {
            resize: 8,
            crop: 10,
            ..Transform::IMAGENET
        };
        let img = RgbImage::from_pixel(16, 8, image::Rgb([200, 100, 50]));
        let out = resize_center_crop(&img, &t).unwrap();
        // resized 16x8 → 16x8 (no change), crop 10 wide from x=3, 8 rows padded 1 above/below.
        assert_eq!(out.dimensions(), (10, 10));
        assert_eq!(out.get_pixel(5, 0).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(5, 9).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(5, 5).0, [200, 100, 50]);
    }
}
