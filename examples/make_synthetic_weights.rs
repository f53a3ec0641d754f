//! Write synthetic weights for the e2e tests and for images built without the real weights.
//!
//! ```text
//! cargo run --release --example make_synthetic_weights -- DIR [full|lite]
//! ```
//!
//! Writes `DIR/mobilenet_v3_large.safetensors` (and, for `full`, the default,
//! `DIR/wide_resnet50_2.safetensors`) with exactly the tensor names, shapes and dtype of
//! torchvision's state_dicts, so they load strictly, run real forward passes and make images of the
//! same size as the real weights do. Values come from `imgclass::weights::synthetic`, calibrated
//! with the committed BatchNorm statistics (`tests/fixtures/parity/bn_stats.safetensors`) so that
//! activations stay finite and predictions differ from image to image.

use imgclass::models::ModelKind;
use imgclass::weights::load::write_safetensors;
use imgclass::weights::synthetic::{generate_calibrated, Calibration};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const CALIBRATION: &str = "tests/fixtures/parity/bn_stats.safetensors";

fn write(dir: &Path, kind: ModelKind, calibration: &Path) -> imgclass::Result<PathBuf> {
    let cal = Calibration::load(kind, calibration)?;
    let tensors = generate_calibrated(kind, &cal)?;
    std::fs::create_dir_all(dir).map_err(|e| imgclass::Error::Unreadable {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let path = dir.join(format!("{}.safetensors", kind.name()));
    write_safetensors(&tensors, &path)?;
    Ok(path)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, profile) = match args.as_slice() {
        [dir] => (PathBuf::from(dir), "full"),
        [dir, p] if p == "full" || p == "lite" => (PathBuf::from(dir), p.as_str()),
        _ => {
            eprintln!("usage: make_synthetic_weights DIR [full|lite]");
            return ExitCode::from(2);
        }
    };
    let kinds: &[ModelKind] = if profile == "full" {
        &[ModelKind::MobilenetV3Large, ModelKind::WideResnet50_2]
    } else {
        &[ModelKind::MobilenetV3Large]
    };
    let calibration = Path::new(env!("CARGO_MANIFEST_DIR")).join(CALIBRATION);
    for &kind in kinds {
        match write(&dir, kind, &calibration) {
            Ok(p) => println!("wrote {}", p.display()),
            Err(e) => {
                eprintln!("error: {kind}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
