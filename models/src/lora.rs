//! LoRA adapters in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`),
//! applied to a base model's weights at load.
//!
//! PEFT's LoRA replaces a linear layer `y = x·Wᵀ + b` by `y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ`, with A
//! `[r, in]`, B `[out, r]` and `s = lora_alpha / r` (`lora_alpha / √r` with `use_rslora`).
//! Two ways to run it, with the same result up to rounding:
//! - **unmerged**: the graph keeps W, A and B and runs the fused `LoraMatMul` op, so one base
//!   model in memory can serve with or without the adapter, and adapters swap without
//!   touching the base weights;
//! - **merged**: `W' = W + s·B·A` once at load, and the graph is the base model's, as fast.
//!
//! What PEFT can express and this loader cannot (DoRA, biases trained by the adapter,
//! `modules_to_save`, per-module ranks or alphas, `fan_in_fan_out` layers) is refused with
//! an error naming the setting, never silently ignored.

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tandem_runtime::graph::Weights;
use tandem_runtime::{DType, HostTensor};

/// Largest rank accepted: far above what adapters use, low enough to bound the work.
pub const MAX_RANK: usize = 1024;
/// Largest adapter_config.json read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// How the adapter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraMode {
    /// The graph runs `LoraMatMul` with the base weight and the adapter's A and B.
    Unmerged,
    /// The adapter is folded into the base weights at load.
    Merged,
}

/// An adapter to load a model with: its PEFT folder and how it runs. What the CLI's
/// `--adapter DIR [--merge-adapter]` and the server's `models.embed.adapter` both say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSpec {
    pub dir: PathBuf,
    pub mode: LoraMode,
}

impl AdapterSpec {
    /// `merge`: fold the adapter into the weights at load rather than run the fused op.
    pub fn new(dir: PathBuf, merge: bool) -> AdapterSpec {
        AdapterSpec { dir, mode: if merge { LoraMode::Merged } else { LoraMode::Unmerged } }
    }
}

/// The subset of PEFT's `LoraConfig` that decides the arithmetic.
#[derive(Debug, Deserialize)]
struct AdapterConfig {
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default = "no_bias")]
    bias: String,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    lora_bias: bool,
}

fn no_bias() -> String {
    "none".into()
}

/// One adapted linear layer.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// `[r, in]`.
    pub a: HostTensor,
    /// `[out, r]`.
    pub b: HostTensor,
}

/// A loaded adapter: the scale and, per module path (`encoder.layer.0.attention.self.query`,
/// as in the base model's tensor names without `.weight`), its A and B.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub rank: usize,
    pub scale: f32,
    pub modules: BTreeMap<String, LoraModule>,
    pub dir: PathBuf,
    /// Names the adapter's content: the first 12 hex digits of a digest over its scale and
    /// tensors. Caches keyed by model (EBRM's QE scores) must tell adapters apart.
    pub fingerprint: String,
}

/// Tensor-name suffixes in PEFT's saved files (the adapter name is stripped on save).
const A_SUFFIX: &str = ".lora_A.weight";
const B_SUFFIX: &str = ".lora_B.weight";
/// PEFT saves the wrapped model's names under this prefix.
const PEFT_PREFIX: &str = "base_model.model.";

impl LoraAdapter {
    /// Reads `adapter_config.json` and `adapter_model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> Result<LoraAdapter> {
        let config_path = dir.join("adapter_config.json");
        let len =
            std::fs::metadata(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?.len();
        if len > MAX_CONFIG_BYTES {
            bail!("{}: {len} bytes, over the limit of {MAX_CONFIG_BYTES}", config_path.display());
        }
        let text = std::fs::read(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
        let config: AdapterConfig =
            serde_json::from_slice(&text).map_err(|e| anyhow!("{}: {e}", config_path.display()))?;
        let scale = check_config(&config).map_err(|e| anyhow!("{}: {e}", config_path.display()))?;
        let weights = Weights::open(&dir.join("adapter_model.safetensors"))?;
        let modules = read_modules(&weights, config.r)?;
        if modules.is_empty() {
            bail!("{}: no LoRA tensors (names ending in {A_SUFFIX})", weights.path().display());
        }
        let fingerprint = fingerprint(scale, &modules);
        Ok(LoraAdapter { rank: config.r, scale, modules, dir: dir.to_path_buf(), fingerprint })
    }

    /// The base weights with the adapter applied: A and B added as `{module}.lora_A.weight`
    /// and `{module}.lora_B.weight` (unmerged), or W replaced by `W + s·B·A` (merged). `prefix`
    /// is the base file's name prefix (`bert.` for a classification checkpoint, else empty).
    /// Every adapted module must exist in the base with matching shapes.
    pub fn apply(&self, base: &Weights, prefix: &str, mode: LoraMode) -> Result<Weights> {
        let mut tensors: Vec<(String, HostTensor)> = Vec::with_capacity(base.names().len() + 2 * self.modules.len());
        let mut adapted = BTreeMap::new();
        for (module, m) in &self.modules {
            let name = format!("{prefix}{module}.weight");
            let shape = base.shape(&name).ok_or_else(|| {
                anyhow!(
                    "{}: the adapter changes '{module}', but the base model has no tensor '{name}' (an adapter for another model?)",
                    self.dir.display()
                )
            })?;
            let (r, out, inp) = (self.rank, m.b.shape[0], m.a.shape[1]);
            if shape != [out, inp] {
                bail!(
                    "{}: '{module}' has A {:?} and B {:?}, which do not fit the base weight {shape:?} (rank {r})",
                    self.dir.display(),
                    m.a.shape,
                    m.b.shape
                );
            }
            adapted.insert(name, m);
        }
        // Integer buffers (BERT's `position_ids`) are not weights any graph reads.
        for name in base.names().iter().filter(|n| base.is_float(n)) {
            let tensor = base.tensor(name, DType::F32)?;
            match (adapted.get(name), mode) {
                (Some(m), LoraMode::Merged) => tensors.push((name.clone(), merge(&tensor, m, self.scale)?)),
                (Some(m), LoraMode::Unmerged) => {
                    let module = name.trim_end_matches(".weight");
                    tensors.push((name.clone(), tensor));
                    tensors.push((format!("{module}.lora_A.weight"), m.a.clone()));
                    tensors.push((format!("{module}.lora_B.weight"), m.b.clone()));
                }
                (None, _) => tensors.push((name.clone(), tensor)),
            }
        }
        let label = format!("{} + {}", base.path().display(), self.dir.display());
        Ok(Weights::from_tensors(Path::new(&label), &tensors)?)
    }
}

/// The scale `s`, after refusing what this loader does not implement.
fn check_config(c: &AdapterConfig) -> Result<f32> {
    if let Some(t) = &c.peft_type
        && t != "LORA"
    {
        bail!("peft_type is {t:?}; only LORA adapters are supported");
    }
    if c.r == 0 || c.r > MAX_RANK {
        bail!("r is {}; expected 1 to {MAX_RANK}", c.r);
    }
    if !c.lora_alpha.is_finite() {
        bail!("lora_alpha is not a finite number");
    }
    let unsupported = [
        (c.use_dora, "use_dora (DoRA)"),
        (c.fan_in_fan_out, "fan_in_fan_out (Conv1D layers)"),
        (c.bias != "none", "bias other than \"none\""),
        (c.lora_bias, "lora_bias"),
        (c.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()), "modules_to_save"),
        (!c.rank_pattern.is_empty(), "rank_pattern (per-module ranks)"),
        (!c.alpha_pattern.is_empty(), "alpha_pattern (per-module alphas)"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(set, _)| *set) {
        bail!("{what} is not supported");
    }
    let r = c.r as f64;
    Ok((if c.use_rslora { c.lora_alpha / r.sqrt() } else { c.lora_alpha / r }) as f32)
}

/// Pairs each module's A and B, checking ranks and that nothing is left unpaired.
fn read_modules(weights: &Weights, rank: usize) -> Result<BTreeMap<String, LoraModule>> {
    let file = weights.path().display();
    let mut modules = BTreeMap::new();
    for name in weights.names() {
        let Some(module) = name.strip_suffix(A_SUFFIX) else {
            if !name.ends_with(B_SUFFIX) {
                bail!("{file}: tensor '{name}' is not a LoRA A or B matrix (this loader applies LoRA only)");
            }
            continue;
        };
        let b_name = format!("{module}{B_SUFFIX}");
        let a = weights.tensor(name, DType::F32)?;
        let b = weights.tensor(&b_name, DType::F32).map_err(|_| anyhow!("{file}: '{name}' has no '{b_name}'"))?;
        if a.shape.len() != 2 || b.shape.len() != 2 || a.shape[0] != rank || b.shape[1] != rank {
            bail!(
                "{file}: '{module}' has A {:?} and B {:?}; expected [{rank}, in] and [out, {rank}]",
                a.shape,
                b.shape
            );
        }
        if a.to_f32().iter().chain(&b.to_f32()).any(|x| !x.is_finite()) {
            bail!("{file}: '{module}' has a non-finite value");
        }
        let module = module.strip_prefix(PEFT_PREFIX).unwrap_or(module);
        // A classification checkpoint's names start with `bert.`; the builder adds the base
        // file's prefix back.
        let module = module.strip_prefix("bert.").unwrap_or(module);
        modules.insert(module.to_string(), LoraModule { a, b });
    }
    for name in weights.names().iter().filter(|n| n.ends_with(B_SUFFIX)) {
        let a_name = format!("{}{A_SUFFIX}", name.trim_end_matches(B_SUFFIX));
        if weights.shape(&a_name).is_none() {
            bail!("{file}: '{name}' has no '{a_name}'");
        }
    }
    Ok(modules)
}

/// FNV-1a over the scale, module names and tensor bytes: stable across platforms and runs,
/// and enough to tell adapters apart (it keys caches, it does not defend against forgery).
fn fingerprint(scale: f32, modules: &BTreeMap<String, LoraModule>) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
    };
    feed(&scale.to_le_bytes());
    for (name, m) in modules {
        feed(name.as_bytes());
        feed(m.a.data.as_bytes());
        feed(m.b.data.as_bytes());
    }
    format!("{hash:016x}")[..12].to_string()
}

/// `W + s·B·A`, accumulated in f64 so that merging adds no rounding beyond the final f32.
fn merge(w: &HostTensor, m: &LoraModule, scale: f32) -> Result<HostTensor> {
    let (out, inp, r) = (w.shape[0], w.shape[1], m.a.shape[0]);
    let (w, a, b) = (w.to_f32(), m.a.to_f32(), m.b.to_f32());
    let mut merged = Vec::with_capacity(out * inp);
    for o in 0..out {
        for i in 0..inp {
            let low_rank: f64 = (0..r).map(|k| f64::from(b[o * r + k]) * f64::from(a[k * inp + i])).sum();
            merged.push((f64::from(w[o * inp + i]) + f64::from(scale) * low_rank) as f32);
        }
    }
    Ok(HostTensor::f32(vec![out, inp], merged)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Result<f32> {
        check_config(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn scale_and_refusals() {
        assert_eq!(config(r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16}"#).unwrap(), 2.0);
        assert_eq!(config(r#"{"r": 4, "lora_alpha": 8, "use_rslora": true}"#).unwrap(), 4.0);
        let err = |json: &str| config(json).unwrap_err().to_string();
        assert!(err(r#"{"peft_type": "IA3", "r": 8, "lora_alpha": 16}"#).contains("IA3"));
        assert!(err(r#"{"r": 0, "lora_alpha": 16}"#).contains("r is 0"));
        assert!(err(r#"{"r": 8, "lora_alpha": 16, "use_dora": true}"#).contains("use_dora"));
        assert!(err(r#"{"r": 8, "lora_alpha": 16, "bias": "all"}"#).contains("bias"));
        assert!(err(r#"{"r": 8, "lora_alpha": 16, "modules_to_save": ["classifier"]}"#).contains("modules_to_save"));
        assert!(err(r#"{"r": 8, "lora_alpha": 16, "rank_pattern": {"query": 4}}"#).contains("rank_pattern"));
    }

    #[test]
    fn merge_is_w_plus_scaled_b_a() {
        let w = HostTensor::f32(vec![2, 3], vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0]).unwrap();
        let m = LoraModule {
            a: HostTensor::f32(vec![1, 3], vec![1.0, 2.0, 3.0]).unwrap(),
            b: HostTensor::f32(vec![2, 1], vec![1.0, -1.0]).unwrap(),
        };
        let merged = merge(&w, &m, 0.5).unwrap();
        assert_eq!(merged.to_f32(), vec![1.5, 1.0, 1.5, -0.5, 0.0, -1.5]);
    }
}
