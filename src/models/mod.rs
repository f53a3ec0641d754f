//! torchvision's ImageNet classifiers, in candle.

use std::fmt;

/// The models imgclass serves. Names are torchvision's builder names.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum ModelKind {
    /// Wide ResNet-50-2 (IMAGENET1K_V2, 81.6% top-1).
    #[value(name = "wide_resnet50_2")]
    #[serde(rename = "wide_resnet50_2")]
    WideResnet50_2,
    /// MobileNetV3-Large (IMAGENET1K_V2, 75.3% top-1).
    #[value(name = "mobilenet_v3_large")]
    #[serde(rename = "mobilenet_v3_large")]
    MobilenetV3Large,
}

impl ModelKind {
    pub const ALL: [ModelKind; 2] = [ModelKind::WideResnet50_2, ModelKind::MobilenetV3Large];

    /// torchvision's name of the model (also the weights file stem).
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::WideResnet50_2 => "wide_resnet50_2",
            ModelKind::MobilenetV3Large => "mobilenet_v3_large",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod classifier;
pub use classifier::Classifier;
