//! Preprocessing: parity with torchvision + PIL, every accepted format, every refused input.
//! Fixtures come from `scripts/make_preprocess_fixtures.py` (committed; CI does not run it).

use imgclass::preprocess::{self, DecodeLimits, Transform};
use imgclass::Error;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fix(rel: &str) -> PathBuf {
    root().join("tests/fixtures/preprocess").join(rel)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&read(p)).unwrap()
}

/// A PNG fixture as RGB8 (PNG decoding is lossless: this is exactly what PIL wrote).
fn png_rgb(p: &Path) -> image::RgbImage {
    image::load_from_memory_with_format(&read(p), image::ImageFormat::Png)
        .unwrap()
        .to_rgb8()
}

/// One case of a fixture set: `<set>.json` lists the cases, their files are in `<set>/`.
struct Case {
    set: &'static str,
    /// The case's JSON entry.
    meta: serde_json::Value,
    /// Its `file` field.
    file: String,
}

impl Case {
    /// The bytes of the case's input file.
    fn bytes(&self) -> Vec<u8> {
        read(&fix(&format!("{}/{}", self.set, self.file)))
    }

    /// The PNG the case names as `expected` (what PIL produced), as RGB8.
    fn expected(&self) -> image::RgbImage {
        let name = self.meta["expected"].as_str().unwrap();
        png_rgb(&fix(&format!("{}/{name}", self.set)))
    }
}

/// The cases of fixture set `set` (at least `min` of them).
fn cases(set: &'static str, min: usize) -> Vec<Case> {
    let list = json(&fix(&format!("{set}.json")));
    let list = list.as_array().unwrap();
    assert!(list.len() >= min, "{set}.json lists {} cases", list.len());
    list.iter()
        .map(|meta| Case {
            set,
            meta: meta.clone(),
            file: meta["file"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// (mean |Δ| in levels, max |Δ| in levels, mean |Δ| of the normalised tensor).
fn diff(a: &image::RgbImage, b: &image::RgbImage) -> (f64, u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions(), "dimensions differ");
    let t = Transform::IMAGENET;
    let (mut sum, mut max, mut nsum) = (0f64, 0u8, 0f64);
    for (pa, pb) in a.pixels().zip(b.pixels()) {
        for c in 0..3 {
            let d = pa[c].abs_diff(pb[c]);
            sum += f64::from(d);
            max = max.max(d);
            nsum += f64::from(d) / 255.0 / f64::from(t.std[c]);
        }
    }
    let n = f64::from(a.width() * a.height() * 3);
    (sum / n, max, nsum / n)
}

#[test]
fn samples_match_torchvision_pil_bit_for_bit() {
    let expected = json(&root().join("samples/expected.json"));
    let names: Vec<&String> = expected.as_object().unwrap().keys().collect();
    assert!(
        names.len() >= 3,
        "samples/expected.json lists {} samples",
        names.len()
    );
    for name in names {
        let bytes = read(&root().join("samples").join(name));
        let p =
            preprocess::preprocess(&bytes, &DecodeLimits::default(), &Transform::IMAGENET).unwrap();
        assert_eq!(p.crop.dimensions(), (224, 224));
        assert_eq!(p.chw.len(), 3 * 224 * 224);
        let stem = name.trim_end_matches(".jpg");
        let want = png_rgb(&fix(&format!("samples/{stem}.crop.png")));
        let (mean_lv, max_lv, mean_norm) = diff(&p.crop, &want);
        eprintln!(
            "{name}: mean |Δ| normalised = {mean_norm:.5}, mean |Δ| = {mean_lv:.4} levels, max |Δ| = {max_lv} levels"
        );
        assert!(
            mean_norm <= 0.005,
            "{name}: mean |Δ| of the normalised tensor {mean_norm} > 0.005"
        );
        // libjpeg-turbo decodes them as PIL does and the resize is PIL's, bit for bit
        assert_eq!(max_lv, 0, "{name}: the crop differs from PIL's");
        // The chw tensor is the normalisation of the crop.
        assert_eq!(p.chw, preprocess::normalize(&p.crop, &Transform::IMAGENET));
    }
}

#[test]
fn normalize_matches_torchvision_to_tensor_and_normalize() {
    let probe = json(&fix("samples/probe.json"));
    for (name, pr) in probe.as_object().unwrap() {
        let stem = name.trim_end_matches(".jpg");
        let crop = png_rgb(&fix(&format!("samples/{stem}.crop.png")));
        let chw = preprocess::normalize(&crop, &Transform::IMAGENET);
        let n = 224 * 224;
        for v in pr["values"].as_array().unwrap() {
            let v = v.as_array().unwrap();
            let (c, y, x) = (
                v[0].as_u64().unwrap() as usize,
                v[1].as_u64().unwrap() as usize,
                v[2].as_u64().unwrap() as usize,
            );
            let want = v[3].as_f64().unwrap() as f32;
            let got = chw[c * n + y * 224 + x];
            assert!(
                (got - want).abs() <= 1e-6,
                "{name} [{c},{y},{x}]: {got} vs torchvision {want}"
            );
        }
        for (c, s) in pr["channel_sums"].as_array().unwrap().iter().enumerate() {
            let got: f64 = chw[c * n..(c + 1) * n].iter().map(|&v| f64::from(v)).sum();
            let want = s.as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                "{name} channel {c} sum {got} vs {want}"
            );
        }
    }
}

#[test]
fn resize_and_crop_are_bit_exact_with_pil_on_lossless_inputs() {
    for case in cases("resize", 5) {
        let file = &case.file;
        let input = png_rgb(&fix(&format!("resize/{file}")));
        let want = case.expected();
        let got = preprocess::resize_center_crop(&input, &Transform::IMAGENET).unwrap();
        let (mean, max, _) = diff(&got, &want);
        assert_eq!(
            max, 0,
            "{file}: resize differs from PIL (mean {mean} levels, max {max})"
        );
    }
}

#[test]
fn every_format_decodes_like_pil() {
    for case in cases("formats", 15) {
        let (file, bytes) = (&case.file, case.bytes());
        let got = preprocess::decode(&bytes, &DecodeLimits::default())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let want = case.expected();
        assert_eq!(
            got.dimensions(),
            want.dimensions(),
            "{file}: dimensions (orientation?)"
        );
        let (mean, max, _) = diff(&got, &want);
        eprintln!("{file}: mean |Δ| = {mean:.3} levels, max |Δ| = {max}");
        let max_ok = case.meta["max_abs"].as_u64().unwrap() as u8;
        let mean_ok = case.meta["mean_abs"].as_f64().unwrap();
        assert!(
            max <= max_ok && mean <= mean_ok,
            "{file}: mean {mean} (≤ {mean_ok}), max {max} (≤ {max_ok})"
        );
        // The whole pipeline runs on every format.
        let p =
            preprocess::preprocess(&bytes, &DecodeLimits::default(), &Transform::IMAGENET).unwrap();
        assert_eq!(p.crop.dimensions(), (224, 224));
    }
}

#[test]
fn exif_orientation_6_is_applied() {
    let img =
        preprocess::decode(&read(&fix("formats/exif6.jpg")), &DecodeLimits::default()).unwrap();
    // Stored 48x32 with orientation 6 (rotate 90° clockwise to display) → 32x48.
    assert_eq!(img.dimensions(), (32, 48));
    let plain = preprocess::decode(
        &read(&fix("formats/baseline.jpg")),
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!(plain.dimensions(), (48, 32));
    // Displayed top-left pixel is the stored bottom-left one.
    let (a, b) = (img.get_pixel(0, 0), plain.get_pixel(0, 31));
    for c in 0..3 {
        assert!(a[c].abs_diff(b[c]) <= 12, "{a:?} vs {b:?}");
    }
}

#[test]
fn bad_inputs_are_refused_with_the_right_error() {
    for case in cases("bad", 8) {
        let file = &case.file;
        let want = case.meta["error_type"].as_str().unwrap();
        let r = preprocess::preprocess(
            &case.bytes(),
            &DecodeLimits::default(),
            &Transform::IMAGENET,
        );
        match r {
            Ok(_) => panic!("{file}: accepted, expected {want}"),
            Err(e) => {
                eprintln!("{file}: {} ({e})", e.error_type());
                assert_eq!(e.error_type(), want, "{file}: {e}");
                assert!(e.is_client_error(), "{file}: {e}");
            }
        }
    }
}

#[test]
fn empty_input_is_refused() {
    let e = preprocess::decode(&[], &DecodeLimits::default()).unwrap_err();
    assert!(matches!(e, Error::EmptyInput), "{e}");
}

#[test]
fn declared_size_over_the_limit_is_refused_with_its_dimensions() {
    let e = preprocess::decode(&read(&fix("bad/huge.png")), &DecodeLimits::default()).unwrap_err();
    match e {
        Error::ImageTooLarge {
            width,
            height,
            pixels,
            limit,
        } => {
            assert_eq!(
                (width, height, pixels, limit),
                (100_000, 100_000, 10_000_000_000, 100_000_000)
            );
        }
        other => panic!("expected ImageTooLarge, got {other}"),
    }
    let e = preprocess::decode(&read(&fix("bad/huge.jpg")), &DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ImageTooLarge {
                width: 60_000,
                height: 60_000,
                ..
            }
        ),
        "{e}"
    );
    // A lower limit applies to every format.
    let small = DecodeLimits { max_pixels: 1000 };
    for f in [
        "formats/rgb8.png",
        "formats/progressive.jpg",
        "formats/lossless.webp",
        "formats/anim.gif",
        "formats/image.tiff",
        "formats/image.bmp",
    ] {
        let e = preprocess::decode(&read(&fix(f)), &small).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ImageTooLarge {
                    width: 48,
                    height: 32,
                    pixels: 1536,
                    limit: 1000
                }
            ),
            "{f}: {e}"
        );
    }
}

#[test]
fn mutated_inputs_never_panic() {
    // Truncations and byte flips of every fixture: each call returns Ok or an Err, never panics.
    let mut runs = 0;
    for case in cases("formats", 1) {
        let bytes = case.bytes();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ bytes.len() as u64;
        for k in 0..40usize {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut m = bytes.clone();
            if k % 2 == 0 {
                m.truncate((seed as usize) % bytes.len());
            } else {
                for j in 0..4 {
                    let pos = ((seed >> (j * 16)) as usize) % m.len();
                    m[pos] ^= (seed >> (j * 8)) as u8 | 1;
                }
            }
            let r = preprocess::preprocess(&m, &DecodeLimits::default(), &Transform::IMAGENET);
            if let Err(e) = r {
                assert!(e.is_client_error(), "{}: {e}", case.file);
            }
            runs += 1;
        }
    }
    assert!(runs > 500);
}

// ---------------------------------------------------------------------------------------------
// DCT-domain (DC-only, 1/8 scale) decoding of large progressive JPEGs.

use imgclass::preprocess::DctScaling;

/// Insert an APP1 Exif segment with the given orientation right after SOI.
fn with_exif_orientation(jpeg: &[u8], o: u16) -> Vec<u8> {
    let mut seg = b"Exif\0\0".to_vec();
    seg.extend_from_slice(&[
        b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1,
    ]);
    seg.extend_from_slice(&o.to_be_bytes());
    seg.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend_from_slice(&((seg.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&seg);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn crop_with(bytes: &[u8], s: DctScaling) -> image::RgbImage {
    preprocess::preprocess_with(bytes, &DecodeLimits::default(), &Transform::IMAGENET, s)
        .unwrap()
        .0
        .crop
}

#[test]
fn auto_dct_scaling_leaves_small_images_alone() {
    // Samples and small progressive JPEGs are far below the shrink threshold: bit-identical.
    for f in [
        "samples/chelsea.jpg",
        "tests/fixtures/preprocess/dct/prog420.jpg",
        "tests/fixtures/preprocess/formats/progressive.jpg",
    ] {
        let b = read(&root().join(f));
        assert_eq!(
            crop_with(&b, DctScaling::Auto),
            crop_with(&b, DctScaling::Off),
            "{f}"
        );
    }
}

#[test]
fn dct_scaling_follows_exif_orientation() {
    let plain = read(&fix("dct/prog420.jpg"));
    let (_, _, base) = diff(
        &crop_with(&plain, DctScaling::Always),
        &crop_with(&plain, DctScaling::Off),
    );
    eprintln!("orientation 1: DC path vs full decode mean |Δ| normalised {base:.4}");
    for o in 2..=8u16 {
        let b = with_exif_orientation(&plain, o);
        let full = preprocess::decode(&b, &DecodeLimits::default()).unwrap();
        let expect_dims = if o >= 5 { (221, 333) } else { (333, 221) };
        assert_eq!(full.dimensions(), expect_dims, "orientation {o}");
        let (_, _, d) = diff(
            &crop_with(&b, DctScaling::Always),
            &crop_with(&b, DctScaling::Off),
        );
        eprintln!("orientation {o}: DC path vs full decode mean |Δ| normalised {d:.4}");
        assert!(
            d <= base * 1.03 + 0.002,
            "orientation {o}: {d} vs {base} without orientation"
        );
    }
}

#[test]
fn dct_scaling_keeps_the_refusals() {
    let limits = DecodeLimits::default();
    let t = Transform::IMAGENET;
    let e = preprocess::preprocess_with(
        &read(&fix("bad/truncated_progressive.jpg")),
        &limits,
        &t,
        DctScaling::Always,
    )
    .unwrap_err();
    assert_eq!(e.error_type(), "corrupt_image", "{e}");
    // A progressive JPEG declaring 60000x60000 is refused from its header on the DC path too.
    let mut b = read(&fix("dct/prog420.jpg"));
    let sof = b.windows(2).position(|w| w == [0xFF, 0xC2]).unwrap();
    b[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    for s in [DctScaling::Auto, DctScaling::Always] {
        let e = preprocess::preprocess_with(&b, &limits, &t, s).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ImageTooLarge {
                    width: 60_000,
                    height: 60_000,
                    ..
                }
            ),
            "{e}"
        );
    }
    let e = preprocess::preprocess_with(
        &read(&fix("dct/prog420.jpg")),
        &DecodeLimits { max_pixels: 1000 },
        &t,
        DctScaling::Always,
    )
    .unwrap_err();
    assert_eq!(e.error_type(), "image_too_large");
}

const DCT_FIXTURES: [&str; 7] = [
    "prog420.jpg",
    "prog444.jpg",
    "prog_gray.jpg",
    "prog420_rst.jpg",
    "base420.jpg",
    "base444_rst.jpg",
    "base_gray.jpg",
];

#[test]
fn dct_path_matches_the_full_decode_when_shrinking() {
    // The fixtures are small, so shrink them about as much as a 12 MP photo is (221 → 18 px,
    // 12.3×): the DCT-domain resize must then agree with full decode + PIL-exact resize as
    // closely as the 12-42 MP benchmark images do (README: mean |Δ| <= 0.005 there).
    let t = Transform {
        resize: 18,
        crop: 16,
        ..Transform::IMAGENET
    };
    let limits = DecodeLimits::default();
    for f in DCT_FIXTURES {
        let b = read(&fix(&format!("dct/{f}")));
        let fast = preprocess::preprocess_with(&b, &limits, &t, DctScaling::Always)
            .unwrap()
            .0
            .crop;
        let full = preprocess::preprocess_with(&b, &limits, &t, DctScaling::Off)
            .unwrap()
            .0
            .crop;
        let (mean, max, norm) = diff(&fast, &full);
        eprintln!("{f}: DCT path vs full decode at 12x shrink: mean |Δ| {mean:.3} levels, max {max}, normalised {norm:.4}");
        assert!(norm <= 0.007 && max <= 2, "{f}: {norm} {max}");
    }
}

#[test]
fn dct_scaling_handles_every_eligible_layout() {
    // 4:2:0, 4:4:4, grayscale, restart markers, baseline: the DCT path runs and stays close to
    // the full decode even when upscaling (where the dropped high frequencies show most).
    for f in DCT_FIXTURES {
        let b = read(&fix(&format!("dct/{f}")));
        let (p, _) = preprocess::preprocess_with(
            &b,
            &DecodeLimits::default(),
            &Transform::IMAGENET,
            DctScaling::Always,
        )
        .unwrap();
        let (_, _, d) = diff(&p.crop, &crop_with(&b, DctScaling::Off));
        eprintln!("{f}: DCT path (upscaled here) vs full decode mean |Δ| normalised {d:.4}");
        assert!(d < 0.06, "{f}: {d}");
    }
    // Restart markers change nothing in the decoded values.
    let a = crop_with(&read(&fix("dct/prog420.jpg")), DctScaling::Always);
    let b = crop_with(&read(&fix("dct/prog420_rst.jpg")), DctScaling::Always);
    assert_eq!(a, b);
}

#[test]
fn mutated_inputs_never_panic_on_the_dct_path() {
    let mut runs = 0;
    for f in DCT_FIXTURES {
        let bytes = read(&fix(&format!("dct/{f}")));
        let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ bytes.len() as u64;
        for k in 0..60usize {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut m = bytes.clone();
            if k % 3 == 0 {
                m.truncate((seed as usize) % bytes.len());
            } else {
                // Flip bytes past the headers, in the entropy-coded data.
                for j in 0..3 {
                    let pos = 600 + ((seed >> (j * 16)) as usize) % (m.len() - 600);
                    m[pos] ^= (seed >> (j * 8)) as u8 | 1;
                }
            }
            let r = preprocess::preprocess_with(
                &m,
                &DecodeLimits::default(),
                &Transform::IMAGENET,
                DctScaling::Always,
            );
            if let Err(e) = r {
                assert!(e.is_client_error(), "{f}: {e}");
            }
            runs += 1;
        }
    }
    assert_eq!(runs, 60 * DCT_FIXTURES.len());
}
