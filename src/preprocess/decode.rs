//! Untrusted bytes → RGB8 with the EXIF orientation applied.
//!
//! Order of checks: empty input; format sniffing (not an image / recognised but unsupported);
//! for JPEG a marker walk that refuses truncated data, unsupported coding and absurd scan
//! counts without decoding; declared dimensions against the pixel limit (read from the header,
//! before any pixel buffer exists); then decoding under `image::Limits::max_alloc`, inside
//! `catch_unwind` so that a decoder bug on hostile input becomes `CorruptImage`, not a crash.

use super::DecodeLimits;
use crate::{Error, Result};
use image::error::{ImageError, LimitErrorKind};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Formats we decode (the `image` features enabled in Cargo.toml).
const SUPPORTED: [ImageFormat; 6] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Gif,
    ImageFormat::Bmp,
    ImageFormat::Tiff,
];

/// More scans than any real progressive JPEG has (libjpeg's scripts use about 10): a file with
/// thousands of tiny scans is a known way to make decoders spin.
const MAX_JPEG_SCANS: usize = 256;

/// Decode any supported format to RGB8, EXIF orientation applied.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
    let format = sniff(bytes)?;
    if format == ImageFormat::Jpeg {
        check_jpeg(bytes)?;
    }
    match catch_unwind(AssertUnwindSafe(|| decode_with(bytes, format, limits))) {
        Ok(r) => r,
        Err(_) => Err(Error::CorruptImage(format!(
            "the {} decoder failed on this input",
            format_name(format)
        ))),
    }
}

pub(crate) fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Avif => "AVIF",
        ImageFormat::Ico => "ICO",
        ImageFormat::Hdr => "Radiance HDR",
        ImageFormat::OpenExr => "OpenEXR",
        ImageFormat::Pnm => "PNM",
        ImageFormat::Qoi => "QOI",
        ImageFormat::Tga => "TGA",
        ImageFormat::Dds => "DDS",
        ImageFormat::Farbfeld => "farbfeld",
        _ => "this",
    }
}

/// Which format the bytes are, or why we refuse them.
pub(crate) fn sniff(bytes: &[u8]) -> Result<ImageFormat> {
    if bytes.is_empty() {
        return Err(Error::EmptyInput);
    }
    if let Ok(f) = image::guess_format(bytes) {
        if SUPPORTED.contains(&f) {
            return Ok(f);
        }
        return Err(Error::UnsupportedFormat(format!(
            "{} images are not supported (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)",
            format_name(f)
        )));
    }
    if let Some(name) = other_image_format(bytes) {
        return Err(Error::UnsupportedFormat(format!(
            "{name} images are not supported (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)"
        )));
    }
    let head = &bytes[..bytes.len().min(512)];
    let texty = head
        .iter()
        .all(|&b| b == b'\n' || b == b'\r' || b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80);
    Err(Error::NotAnImage(if texty {
        "the data looks like text, not an image (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)".into()
    } else {
        "no known image signature at the start of the data (supported: JPEG, PNG, WebP, GIF, BMP, TIFF)"
            .into()
    }))
}

/// Image formats `image::guess_format` does not know but we can name.
fn other_image_format(b: &[u8]) -> Option<&'static str> {
    if b.len() >= 12 && &b[4..8] == b"ftyp" {
        let brand = &b[8..12];
        if [
            b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1",
        ]
        .iter()
        .any(|x| brand == *x)
        {
            return Some("HEIF/HEIC");
        }
        if brand == b"avis" {
            return Some("AVIF");
        }
    }
    if b.starts_with(&[0xFF, 0x0A]) || b.starts_with(b"\0\0\0\x0cJXL \r\n\x87\n") {
        return Some("JPEG XL");
    }
    if b.starts_with(b"\0\0\0\x0cjP  \r\n\x87\n") || b.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return Some("JPEG 2000");
    }
    if b.starts_with(b"8BPS") {
        return Some("Photoshop PSD");
    }
    let head = &b[..b.len().min(1024)];
    if head.windows(4).any(|w| w == b"<svg") {
        return Some("SVG");
    }
    None
}

fn be16(b: &[u8], i: usize) -> Option<usize> {
    Some(usize::from(*b.get(i)?) << 8 | usize::from(*b.get(i + 1)?))
}

fn truncated() -> Error {
    Error::CorruptImage("truncated JPEG: the data ends before the end-of-image marker".into())
}

/// Index of the first 0xFF byte at or after `from` (8 bytes at a time: entropy-coded data is
/// megabytes long and holds few of them).
pub(crate) fn find_ff(b: &[u8], from: usize) -> Option<usize> {
    let mut j = from;
    while let Some(c) = b.get(j..j + 8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        let x = !u64::from_le_bytes(a);
        let hit = x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080;
        if hit != 0 {
            return Some(j + (hit.trailing_zeros() / 8) as usize);
        }
        j += 8;
    }
    b.get(j..)?.iter().position(|&x| x == 0xFF).map(|p| j + p)
}

/// Walk the JPEG marker segments (no decoding): refuse truncated files (no EOI after the last
/// scan), frame types the decoder does not implement, and absurd scan counts.
pub(crate) fn check_jpeg(b: &[u8]) -> Result<()> {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Err(Error::CorruptImage(
            "missing JPEG start-of-image marker".into(),
        ));
    }
    let mut i = 2;
    let mut scans = 0usize;
    let mut frame = false;
    loop {
        // Skip to a marker: 0xFF (fill bytes allowed) followed by a non-0xFF code.
        if i >= b.len() {
            return Err(truncated());
        }
        if b[i] != 0xFF {
            return Err(Error::CorruptImage(format!(
                "JPEG marker expected at byte {i}"
            )));
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&m) = b.get(i) else {
            return Err(truncated());
        };
        i += 1;
        match m {
            0xD9 => {
                if !frame {
                    return Err(Error::CorruptImage("JPEG has no frame header".into()));
                }
                if scans == 0 {
                    return Err(Error::CorruptImage("JPEG has no image data".into()));
                }
                return Ok(());
            }
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = be16(b, i).ok_or_else(truncated)?;
        if len < 2 {
            return Err(Error::CorruptImage(format!(
                "bad JPEG segment length at byte {i}"
            )));
        }
        let end = i + len;
        if end > b.len() {
            return Err(truncated());
        }
        match m {
            0xC0..=0xCF if m != 0xC4 && m != 0xC8 && m != 0xCC => {
                let kind = match m {
                    0xC3 | 0xC7 | 0xCB | 0xCF => Some("lossless JPEG"),
                    0xC5 | 0xC6 => Some("hierarchical JPEG"),
                    0xC9 | 0xCA => Some("arithmetic-coded JPEG"),
                    _ => None,
                };
                if let Some(kind) = kind {
                    return Err(Error::UnsupportedFormat(format!("{kind} is not supported")));
                }
                match b.get(i + 2) {
                    Some(8) => {}
                    Some(p) => {
                        return Err(Error::UnsupportedFormat(format!(
                            "{p}-bit JPEG is not supported (8-bit only)"
                        )))
                    }
                    None => return Err(truncated()),
                }
                frame = true;
            }
            0xDA => {
                if !frame {
                    return Err(Error::CorruptImage(
                        "JPEG scan before the frame header".into(),
                    ));
                }
                scans += 1;
                if scans > MAX_JPEG_SCANS {
                    return Err(Error::CorruptImage(format!(
                        "JPEG has more than {MAX_JPEG_SCANS} scans"
                    )));
                }
                // Entropy-coded data: runs to the next marker other than RSTn / stuffed 0xFF00.
                let mut j = end;
                loop {
                    match find_ff(b, j) {
                        None => return Err(truncated()),
                        Some(p) => j = p,
                    }
                    match b.get(j + 1) {
                        None => return Err(truncated()),
                        Some(0x00) | Some(0xD0..=0xD7) => j += 2,
                        Some(0xFF) => j += 1,
                        Some(_) => break,
                    }
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i = end;
    }
}

fn map_image_error(
    e: ImageError,
    format: ImageFormat,
    dims: Option<(u32, u32)>,
    limits: &DecodeLimits,
) -> Error {
    let name = format_name(format);
    match e {
        ImageError::Decoding(d) => Error::CorruptImage(format!("{name}: {d}")),
        ImageError::Unsupported(u) => Error::UnsupportedFormat(format!("{name}: {u}")),
        ImageError::Limits(l) => match (l.kind(), dims) {
            (LimitErrorKind::InsufficientMemory | LimitErrorKind::DimensionError, Some((w, h))) => {
                too_large(w, h, limits.max_pixels)
            }
            _ => Error::CorruptImage(format!("{name}: {l}")),
        },
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::CorruptImage(format!("truncated {name}: {io}"))
        }
        ImageError::IoError(io) => Error::CorruptImage(format!("{name}: {io}")),
        ImageError::Parameter(p) => Error::CorruptImage(format!("{name}: {p}")),
        ImageError::Encoding(en) => Error::Internal(format!("{name}: {en}")),
    }
}

fn too_large(w: u32, h: u32, limit: u64) -> Error {
    Error::ImageTooLarge {
        width: u64::from(w),
        height: u64::from(h),
        pixels: u64::from(w) * u64::from(h),
        limit,
    }
}

/// PNG's IHDR dimensions, for the error message when the PNG decoder refuses a size itself.
fn png_declared_dims(b: &[u8]) -> Option<(u32, u32)> {
    if b.len() >= 24 && &b[12..16] == b"IHDR" {
        let w = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
        let h = u32::from_be_bytes([b[20], b[21], b[22], b[23]]);
        return Some((w, h));
    }
    None
}

/// Check declared dimensions against the limits (before any pixel buffer is allocated).
pub(crate) fn check_dims(w: u32, h: u32, limits: &DecodeLimits) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(Error::CorruptImage(format!(
            "image declares an empty size {w}x{h}"
        )));
    }
    if u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(too_large(w, h, limits.max_pixels));
    }
    Ok(())
}

fn decode_with(bytes: &[u8], format: ImageFormat, limits: &DecodeLimits) -> Result<RgbImage> {
    let max_alloc = limits.max_alloc_bytes();
    let mut il = image::Limits::default();
    il.max_alloc = Some(max_alloc);
    il.max_image_width = None;
    il.max_image_height = None;

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(il.clone());
    let mut decoder = match reader.into_decoder() {
        Ok(d) => d,
        Err(e) => {
            let dims = if format == ImageFormat::Png {
                png_declared_dims(bytes)
            } else {
                None
            };
            if let Some((w, h)) = dims {
                check_dims(w, h, limits)?;
            }
            return Err(map_image_error(e, format, dims, limits));
        }
    };
    let (w, h) = decoder.dimensions();
    check_dims(w, h, limits)?;
    let total = decoder.total_bytes();
    if total > max_alloc {
        let bpp = u64::from(decoder.color_type().bytes_per_pixel()).max(1);
        return Err(too_large(w, h, max_alloc / bpp));
    }
    // A broken EXIF block must not make a good image fail: no orientation then.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let turbo = if format == ImageFormat::Jpeg {
        turbo_rgb(bytes, (w, h))
    } else {
        None
    };
    let mut img = match turbo {
        Some(rgb) => DynamicImage::ImageRgb8(rgb),
        None => DynamicImage::from_decoder(decoder)
            .map_err(|e| map_image_error(e, format, Some((w, h)), limits))?,
    };
    img.apply_orientation(orientation);
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// A JPEG's RGB pixels from libjpeg-turbo: the decoder PIL uses, with PIL's settings (accurate
/// integer IDCT, "fancy" triangle upsampling of subsampled chroma), so the pixels are PIL's, and
/// 1.3–1.5× as fast as `image`'s decoder on a 640×480 photo (Huffman decoding dominates).
/// `None` when libjpeg-turbo cannot give RGB (CMYK / YCCK, 12-bit, a decoding error, dimensions
/// other than those `image` read): the caller then decodes with `image`, whose error messages and
/// colour handling stay the reference for anything unusual.
fn turbo_rgb(bytes: &[u8], (w, h): (u32, u32)) -> Option<RgbImage> {
    let mut d = turbojpeg::Decompressor::new().ok()?;
    let header = d.read_header(bytes).ok()?;
    if (header.width, header.height) != (w as usize, h as usize) || header.is_lossless {
        return None;
    }
    d.set_scan_limit(MAX_JPEG_SCANS as u32).ok()?;
    let len = header.width.checked_mul(header.height)?.checked_mul(3)?;
    let mut pixels = vec![0u8; len];
    let out = turbojpeg::Image {
        pixels: pixels.as_mut_slice(),
        width: header.width,
        pitch: header.width * 3,
        height: header.height,
        format: turbojpeg::PixelFormat::RGB,
    };
    d.decompress(bytes, out).ok()?;
    RgbImage::from_raw(w, h, pixels)
}

#[cfg(test)]
mod tests {
    use super::find_ff;

    #[test]
    fn find_ff_equals_a_plain_search_at_every_offset() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..300)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Sparse 0xFF bytes, some adjacent, and 0xFE/0x7F neighbours for the bit trick.
                match (x % 23, i % 50 == 0) {
                    (0, _) | (_, true) => 0xFF,
                    (1, _) => 0xFE,
                    (2, _) => 0x7F,
                    _ => (x >> 8) as u8 & 0x7E,
                }
            })
            .collect();
        for from in 0..=data.len() + 2 {
            let want = data
                .get(from..)
                .and_then(|d| d.iter().position(|&b| b == 0xFF))
                .map(|p| from + p);
            assert_eq!(find_ff(&data, from), want, "from {from}");
        }
        assert_eq!(find_ff(&[0u8; 17], 0), None);
    }
}
