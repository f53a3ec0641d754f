//! The weights manifest: where each model's official torchvision weights come from and how to check them.
//!
//! The committed `weights/manifest.json` is embedded in the binary. `IMGCLASS_WEIGHTS_MANIFEST`
//! names another file of the same shape (mirrors, air-gapped installs, tests).

use crate::models::ModelKind;
use crate::preprocess::Transform;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The committed manifest, embedded at build time.
pub const EMBEDDED_MANIFEST: &str = include_str!("../../weights/manifest.json");

/// Environment variable naming an override manifest file.
pub const MANIFEST_ENV: &str = "IMGCLASS_WEIGHTS_MANIFEST";

/// The whole manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    #[serde(default)]
    pub description: Option<String>,
    pub models: Vec<ModelEntry>,
    /// Where this manifest came from (`embedded` or a file path); not part of the file.
    #[serde(skip)]
    pub source: String,
}

/// One model's weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// torchvision builder name, e.g. `wide_resnet50_2`.
    pub name: String,
    /// torchvision weights enum name, e.g. `IMAGENET1K_V2`.
    pub weights: String,
    /// Download URL (`https://` or `http://`) of a torchvision `.pth` (or a `.safetensors` mirror).
    pub url: String,
    /// Lowercase hex prefix of the sha256 of the downloaded file (torchvision's file-name convention).
    pub sha256_prefix: String,
    /// Number of parameters of the model (BatchNorm running statistics excluded).
    pub num_params: u64,
    /// torchvision's eval transform of these weights.
    pub transform: TransformSpec,
    /// Published ImageNet-1k top-1 accuracy (%).
    pub acc_top1: f64,
    /// Published ImageNet-1k top-5 accuracy (%).
    pub acc_top5: f64,
}

/// An eval transform as written in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    pub resize: u32,
    pub crop: u32,
    pub interpolation: String,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl TransformSpec {
    pub fn to_transform(&self) -> Transform {
        Transform {
            resize: self.resize,
            crop: self.crop,
            mean: self.mean,
            std: self.std,
        }
    }
}

impl Manifest {
    /// Parse and validate manifest text. `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Manifest> {
        let invalid = |reason: String| Error::WeightsInvalid {
            path: format!("manifest {source}"),
            reason,
        };
        let mut m: Manifest = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        m.source = source.to_string();
        if m.format_version != 1 {
            return Err(invalid(format!(
                "format_version {} is not supported (expected 1)",
                m.format_version
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for e in &m.models {
            if !seen.insert(e.name.as_str()) {
                return Err(invalid(format!("model {} is listed twice", e.name)));
            }
            if !(e.url.starts_with("https://") || e.url.starts_with("http://")) {
                return Err(invalid(format!(
                    "model {}: url {:?} is not http(s)",
                    e.name, e.url
                )));
            }
            let p = &e.sha256_prefix;
            if p.len() < 8
                || p.len() > 64
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(invalid(format!(
                    "model {}: sha256_prefix {:?} must be 8 to 64 lowercase hex digits",
                    e.name, p
                )));
            }
            if e.transform.crop == 0 || e.transform.resize < e.transform.crop {
                return Err(invalid(format!(
                    "model {}: transform resize {} / crop {} is not a valid eval transform",
                    e.name, e.transform.resize, e.transform.crop
                )));
            }
        }
        Ok(m)
    }

    /// The manifest committed with this version of imgclass.
    pub fn embedded() -> Result<Manifest> {
        Manifest::parse(EMBEDDED_MANIFEST, "embedded weights/manifest.json")
    }

    /// Read a manifest file.
    pub fn from_file(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::WeightsInvalid {
            path: format!("manifest {}", path.display()),
            reason: format!("cannot read it: {e}"),
        })?;
        Manifest::parse(&text, &path.display().to_string())
    }

    /// The manifest in effect: the file named by `IMGCLASS_WEIGHTS_MANIFEST` when set (and not empty),
    /// otherwise the embedded one.
    pub fn load() -> Result<Manifest> {
        match std::env::var_os(MANIFEST_ENV) {
            Some(p) if !p.is_empty() => Manifest::from_file(Path::new(&p)),
            _ => Manifest::embedded(),
        }
    }

    /// The entry of one model.
    pub fn entry(&self, kind: ModelKind) -> Result<&ModelEntry> {
        self.models
            .iter()
            .find(|e| e.name == kind.name())
            .ok_or_else(|| Error::WeightsInvalid {
                path: format!("manifest {}", self.source),
                reason: format!("it has no entry for model {}", kind.name()),
            })
    }
}

impl ModelEntry {
    /// The last path segment of the URL (query and fragment removed).
    pub fn file_name(&self) -> &str {
        let no_query = self.url.split(['?', '#']).next().unwrap_or(&self.url);
        no_query.rsplit('/').next().unwrap_or(no_query)
    }

    /// True when the full lowercase hex sha256 `digest_hex` starts with this entry's prefix.
    pub fn hash_matches(&self, digest_hex: &str) -> bool {
        digest_hex.starts_with(&self.sha256_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_manifest_names_both_models_with_torchvision_facts() {
        let m = Manifest::embedded().unwrap();
        let facts = [
            (
                ModelKind::WideResnet50_2,
                "https://download.pytorch.org/models/wide_resnet50_2-9ba9bcbe.pth",
                68_883_240,
                81.602,
                95.758,
            ),
            (
                ModelKind::MobilenetV3Large,
                "https://download.pytorch.org/models/mobilenet_v3_large-5c1a4163.pth",
                5_483_032,
                75.274,
                92.566,
            ),
        ];
        for (kind, url, num_params, acc_top1, acc_top5) in facts {
            let e = m.entry(kind).unwrap();
            assert_eq!(e.url, url);
            assert_eq!(e.num_params, num_params, "{kind}");
            assert_eq!(e.acc_top1, acc_top1, "{kind}");
            assert_eq!(e.acc_top5, acc_top5, "{kind}");
        }
        for e in &m.models {
            assert_eq!(e.weights, "IMAGENET1K_V2");
            assert_eq!(e.transform.interpolation, "bilinear");
            // The one eval transform the preprocessing implements.
            assert_eq!(e.transform.to_transform(), Transform::IMAGENET);
            // torchvision's convention: the hex after the last '-' of the file name prefixes the sha256.
            let stem = e.file_name().trim_end_matches(".pth");
            assert_eq!(stem.rsplit('-').next().unwrap(), e.sha256_prefix);
            assert_eq!(stem.rsplit_once('-').unwrap().0, e.name);
        }
        assert_eq!(m.models.len(), ModelKind::ALL.len());
    }

    #[test]
    fn hash_prefix_matching() {
        let m = Manifest::embedded().unwrap();
        let e = m.entry(ModelKind::MobilenetV3Large).unwrap();
        assert!(e.hash_matches("5c1a4163aaaa"));
        assert!(!e.hash_matches("5c1a4164aaaa"));
        assert!(!e.hash_matches(""));
    }

    #[test]
    fn invalid_manifests_are_refused_with_a_reason() {
        let good = EMBEDDED_MANIFEST;
        let cases = [
            (good.replace("\"9ba9bcbe\"", "\"9BA9\""), "sha256_prefix"),
            (
                good.replace("https://download.pytorch.org/models/wide", "ftp://x/wide"),
                "not http(s)",
            ),
            (
                good.replace("\"format_version\": 1", "\"format_version\": 7"),
                "format_version",
            ),
            (
                good.replace("\"num_params\": 68883240", "\"num_params\": \"many\""),
                "expected u64",
            ),
            (
                good.replace(
                    "\"name\": \"mobilenet_v3_large\"",
                    "\"name\": \"wide_resnet50_2\"",
                ),
                "twice",
            ),
            ("not json".to_string(), "expected"),
        ];
        for (text, needle) in cases {
            let err = Manifest::parse(&text, "test").unwrap_err();
            assert_eq!(err.error_type(), "weights_invalid");
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
        }
    }

    #[test]
    fn missing_entry_is_an_error_naming_the_model() {
        let text = r#"{"format_version":1,"models":[]}"#;
        let m = Manifest::parse(text, "t").unwrap();
        let err = m.entry(ModelKind::MobilenetV3Large).unwrap_err();
        assert!(err.to_string().contains("mobilenet_v3_large"));
    }
}
