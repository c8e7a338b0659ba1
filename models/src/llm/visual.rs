//! Layer-wise gated visual adapters (PUMGPT's "LA"): a few visual tokens of a product photo
//! enter every adapted decoder layer through a small adapter, instead of a long visual prefix
//! in the prompt. The arithmetic, exactly (`docs/visual-adapters.md` says the same for people
//! who train such adapters elsewhere):
//!
//! - The image encoder is MobileNetV2 with `tandem classify`'s preprocessing; its feature map
//!   is the output of torchvision's `features` (`[1280, 7, 7]` at 224²). The visual tokens are
//!   that map pooled as `adaptive_avg_pool2d(F, grid)` (bins `floor(i·7/grid) ..
//!   ceil((i+1)·7/grid)`, overlapping when 7 is not a multiple of `grid`), cells in row-major
//!   order: k = grid² tokens of 1280 channels.
//! - A shared projector `v = W_p · f + b_p` to the decoder's width (`visual.proj.weight`
//!   `[d, 1280]`, `visual.proj.bias` `[d]`).
//! - Per adapted layer l: `a_l = v + U_l · act(D_l · v + d_l) + u_l`
//!   (`layers.{l}.adapter.down.weight` `[r, d]`, `.down.bias` `[r]`, `.up.weight` `[d, r]`,
//!   `.up.bias` `[d]`; act `gelu` (erf) or `silu`), then the layer's own attention RMSNorm
//!   and its own k and v projections (biases included): the visual keys and values, without
//!   RoPE and without positions, computed once per picture and kept in the sequence's state.
//! - In layer l every text query (after RoPE) also attends to its sequence's visual keys in a
//!   softmax of its own, and that result is added per query head, scaled by
//!   `tanh(layers.{l}.adapter.gate[h])`, before the output projection (see
//!   [`crate::decoder::decoder_graph_with`]). Gates of 0 give the base decoder exactly.
//!
//! A folder holds `adapter_config.json` (`encoder`, `grid`, `rank`, `act`, `layers` (default:
//! all), `base_model`, `base_sha256`) and `adapter.safetensors` (f32, f16 or bf16 tensors).

use crate::decoder::{Builder, DecoderConfig, VisualGates};
use crate::session::{AnySession, Device};
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use tandem_runtime::graph::Weights;
use tandem_runtime::ops::{Activation, BinaryKind, MatMul, UnaryKind};
use tandem_runtime::weights::Gguf;
use tandem_runtime::weights::torch::StateDict;
use tandem_runtime::{DType, HostTensor, Op};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter.safetensors";

/// Largest pooling grid: the encoder's map is 7 × 7, and a finer grid only repeats cells.
const MAX_GRID: usize = 7;
/// Largest adapter rank taken (a bound on what an outside file can make us allocate).
const MAX_RANK: usize = 4096;

/// `adapter_config.json`. Unknown keys are ignored (a trainer may record its own).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AdapterConfig {
    pub encoder: String,
    pub grid: usize,
    pub rank: usize,
    pub act: String,
    /// Adapted layers (0-based); all when absent.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
    pub base_model: String,
    pub base_sha256: String,
}

/// A visual adapter read from its folder (or its two files' bytes), not yet checked against
/// a decoder: [`VisualAdapter::check`] does that.
pub struct VisualAdapter {
    pub config: AdapterConfig,
    act: UnaryKind,
    weights: Weights,
}

impl VisualAdapter {
    /// Reads `adapter_config.json` and `adapter.safetensors` from `dir`.
    pub fn load(dir: &Path) -> Result<VisualAdapter> {
        let config = std::fs::read(dir.join(CONFIG_FILE))
            .with_context(|| format!("adapter {}: reading {CONFIG_FILE}", dir.display()))?;
        let weights = Weights::open(&dir.join(WEIGHTS_FILE))
            .with_context(|| format!("adapter {}: reading {WEIGHTS_FILE}", dir.display()))?;
        Self::new(&config, weights).with_context(|| format!("adapter {}", dir.display()))
    }

    /// The adapter from its two files' bytes (the browser's downloads); `name` names it in
    /// errors.
    pub fn from_bytes(name: &str, config: &[u8], safetensors: Vec<u8>) -> Result<VisualAdapter> {
        let weights = Weights::from_bytes(&Path::new(name).join(WEIGHTS_FILE), safetensors)?;
        Self::new(config, weights).with_context(|| format!("adapter {name}"))
    }

    fn new(config: &[u8], weights: Weights) -> Result<VisualAdapter> {
        let config: AdapterConfig =
            serde_json::from_slice(config).map_err(|e| anyhow!("{CONFIG_FILE} is not a valid adapter config: {e}"))?;
        if !matches!(config.encoder.as_str(), "mobilenetv2" | "mobilenet_v2") {
            bail!("encoder '{}' is not supported (mobilenetv2)", config.encoder);
        }
        if !(1..=MAX_GRID).contains(&config.grid) {
            bail!("grid {} is not between 1 and {MAX_GRID} (the encoder's map is 7 × 7)", config.grid);
        }
        if !(1..=MAX_RANK).contains(&config.rank) {
            bail!("rank {} is not between 1 and {MAX_RANK}", config.rank);
        }
        let act = match config.act.as_str() {
            "gelu" => UnaryKind::Gelu,
            "silu" => UnaryKind::Silu,
            other => bail!("act '{other}' is not supported (gelu, silu)"),
        };
        if config.layers.as_ref().is_some_and(|l| l.is_empty()) {
            bail!("layers is empty: an adapter enters at least one layer");
        }
        Ok(VisualAdapter { config, act, weights })
    }

    /// Visual tokens per picture (grid²).
    pub fn tokens(&self) -> usize {
        self.config.grid * self.config.grid
    }

    /// Checks the adapter against the decoder `file` (its sha256, the layers, every tensor's
    /// presence and shape; no tensor left over) and returns the adapted layers in order.
    pub fn check(&self, file: &Gguf, c: &DecoderConfig) -> Result<Vec<usize>> {
        let sha = format!("{:x}", Sha256::digest(file.bytes()));
        if !sha.eq_ignore_ascii_case(self.config.base_sha256.trim()) {
            bail!(
                "made for {} with sha256 {}, but {} has sha256 {sha}",
                self.config.base_model,
                self.config.base_sha256,
                file.path().display()
            );
        }
        let layers = match &self.config.layers {
            None => (0..c.layers).collect(),
            Some(list) => {
                let unique: BTreeSet<usize> = list.iter().copied().collect();
                if unique.len() != list.len() {
                    bail!("layers {list:?} repeat a layer");
                }
                if let Some(&bad) = unique.iter().find(|&&l| l >= c.layers) {
                    bail!("layer {bad} is past the decoder's {} layers", c.layers);
                }
                unique.into_iter().collect::<Vec<_>>()
            }
        };
        let (d, r) = (c.d_model, self.config.rank);
        let mut expected = vec![("visual.proj.weight".to_string(), vec![d, ENCODER_CHANNELS])];
        expected.push(("visual.proj.bias".into(), vec![d]));
        for &l in &layers {
            let at = |s: &str| format!("layers.{l}.adapter.{s}");
            expected.push((at("down.weight"), vec![r, d]));
            expected.push((at("down.bias"), vec![r]));
            expected.push((at("up.weight"), vec![d, r]));
            expected.push((at("up.bias"), vec![d]));
            expected.push((at("gate"), vec![c.heads]));
        }
        for (name, shape) in &expected {
            let Some(found) = self.weights.shape(name) else {
                bail!("tensor '{name}' is missing (expected {shape:?} for this decoder)");
            };
            if found != *shape {
                bail!(
                    "tensor '{name}' is {found:?}, but this decoder ({} layers, width {d}, {} heads) needs {shape:?}",
                    c.layers,
                    c.heads
                );
            }
            if !self.weights.is_float(name) {
                bail!("tensor '{name}' is not f32, f16 or bf16");
            }
        }
        let known: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        if let Some(extra) = self.weights.names().iter().find(|n| !known.contains(n.as_str())) {
            bail!("tensor '{extra}' is not part of an adapter for these layers ({layers:?})");
        }
        Ok(layers)
    }

    fn tensor(&self, name: &str) -> Result<HostTensor> {
        Ok(self.weights.tensor(name, DType::F32)?)
    }

    /// The decoder side: each adapted layer's gate.
    pub fn gates(&self, layers: &[usize]) -> Result<VisualGates> {
        let layers = layers
            .iter()
            .map(|&l| Ok((l, self.tensor(&format!("layers.{l}.adapter.gate"))?)))
            .collect::<Result<_>>()?;
        Ok(VisualGates { layers })
    }
}

/// Channels of MobileNetV2's last feature map.
const ENCODER_CHANNELS: usize = 1280;

/// `adaptive_avg_pool2d` from an `h × w` map to `grid × grid` as a matrix `[grid², h·w]`
/// (cells row-major): the visual tokens are this matrix times the map.
pub fn pooling_matrix(h: usize, w: usize, grid: usize) -> Vec<f32> {
    let bins = |n: usize, i: usize| (i * n / grid)..((i + 1) * n).div_ceil(grid);
    let mut m = vec![0.0f32; grid * grid * h * w];
    for (cell, row) in m.chunks_exact_mut(h * w).enumerate() {
        let (ys, xs) = (bins(h, cell / grid), bins(w, cell % grid));
        let share = 1.0 / (ys.len() * xs.len()) as f32;
        for y in ys {
            for x in xs.clone() {
                row[y * w + x] = share;
            }
        }
    }
    m
}

/// The picture side of an adapter on a device: photo pixels in, each adapted layer's visual
/// keys and values out (`[k, kv_width]`), in one graph: the encoder's features, the pooling,
/// the projector, each layer's adapter, RMSNorm and k/v projections.
pub struct VisualEncoder {
    session: AnySession,
    pub layers: Vec<usize>,
    pub tokens: usize,
}

impl VisualEncoder {
    /// Builds the picture graph for `adapter` (checked: `layers` from
    /// [`VisualAdapter::check`]) with the encoder's folded checkpoint and the decoder file's
    /// norm and k/v weights.
    pub fn new(
        adapter: &VisualAdapter,
        layers: &[usize],
        encoder: &StateDict,
        file: &Gguf,
        c: &DecoderConfig,
        device: &Device,
    ) -> Result<VisualEncoder> {
        let mut b = Builder::new(file, "visual-adapter");
        let (map, channels) = crate::vision::mobilenet::features(&mut b.graph, encoder)?;
        if channels != ENCODER_CHANNELS {
            bail!("the encoder's map has {channels} channels, not {ENCODER_CHANNELS}");
        }
        // The encoder's weights come first in the graph's list, in its order.
        let mut encoder_tensors: HashMap<String, HostTensor> =
            crate::vision::host_tensors(encoder)?.into_iter().collect();
        let mut weights = Vec::new();
        for &id in &b.graph.weights {
            let name = &b.graph.value(id).name;
            weights.push(encoder_tensors.remove(name).ok_or_else(|| anyhow!("encoder weight '{name}' is missing"))?);
        }
        let map_shape = &b.graph.value(map).ty.shape;
        let (Some(h), Some(w)) = (map_shape[2].fixed(), map_shape[3].fixed()) else {
            bail!("the encoder's map is {map_shape:?}, not [images, C, h, w]");
        };
        let (h, w) = (h as usize, w as usize);
        let grid = adapter.config.grid;
        let k = grid * grid;
        let matmul = Op::MatMul(MatMul { trans_b: true, activation: Activation::None });
        let flat = b.node("visual.map", Op::Reshape(vec![channels.into(), (h * w).into()]), &[map])?;
        let pool = b.constant("visual.pool", HostTensor::f32(vec![k, h * w], pooling_matrix(h, w, grid))?);
        let cells = b.node("visual.cells", matmul.clone(), &[pool, flat])?;
        let proj_w = b.constant("visual.proj.weight", adapter.tensor("visual.proj.weight")?);
        let proj_b = b.constant("visual.proj.bias", adapter.tensor("visual.proj.bias")?);
        let v = b.node("visual.proj", matmul.clone(), &[cells, proj_w, proj_b])?;
        for &l in layers {
            let at = |s: &str| format!("layers.{l}.adapter.{s}");
            let down_w = b.constant(&at("down.weight"), adapter.tensor(&at("down.weight"))?);
            let down_b = b.constant(&at("down.bias"), adapter.tensor(&at("down.bias"))?);
            let up_w = b.constant(&at("up.weight"), adapter.tensor(&at("up.weight"))?);
            let up_b = b.constant(&at("up.bias"), adapter.tensor(&at("up.bias"))?);
            let h = b.node(&at("down"), matmul.clone(), &[v, down_w, down_b])?;
            let h = b.node(&at("act"), Op::Unary(adapter.act), &[h])?;
            let h = b.node(&at("up"), matmul.clone(), &[h, up_w, up_b])?;
            let a = b.node(&at("out"), Op::Binary(BinaryKind::Add), &[v, h])?;
            let norm = b.weight(&format!("blk.{l}.attn_norm.weight"))?;
            let a = b.node(&format!("blk.{l}.visual_norm"), Op::RmsNorm { eps: c.rms_eps }, &[a, norm])?;
            let vk = b.linear(&format!("blk.{l}.attn_k"), a)?;
            let vv = b.linear(&format!("blk.{l}.attn_v"), a)?;
            b.graph.output(vk, &format!("l{l}.vk"));
            b.graph.output(vv, &format!("l{l}.vv"));
        }
        b.graph.validate()?;
        weights.extend(b.weights);
        let session = AnySession::on_tensors(device, b.graph, weights)?;
        Ok(VisualEncoder { session, layers: layers.to_vec(), tokens: k })
    }

    /// Each adapted layer's visual keys and values of one photo (the ImageNet input of
    /// [`crate::vision::preprocess::imagenet_input`]), in `layers` order.
    pub async fn keys_and_values(&self, pixels: Vec<f32>) -> Result<Vec<(HostTensor, HostTensor)>> {
        let size = crate::vision::mobilenet::INPUT_SIZE;
        let input = HostTensor::f32(vec![1, 3, size, size], pixels)?;
        let mut out = self.session.run(&[input]).await?.into_iter();
        self.layers.iter().map(|_| Ok((out.next().context("no keys")?, out.next().context("no values")?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_matches_adaptive_avg_pool_bins() {
        // 7 → 3: bins 0..3, 2..5, 4..7 (overlapping), as torch's adaptive_avg_pool2d.
        let m = pooling_matrix(7, 7, 3);
        let row = |cell: usize| &m[cell * 49..(cell + 1) * 49];
        let nonzero = |cell: usize| -> Vec<usize> { (0..49).filter(|&i| row(cell)[i] != 0.0).collect() };
        assert_eq!(nonzero(0), [0, 1, 2, 7, 8, 9, 14, 15, 16]);
        assert_eq!(nonzero(4), [16, 17, 18, 23, 24, 25, 30, 31, 32]);
        assert_eq!(nonzero(8), [32, 33, 34, 39, 40, 41, 46, 47, 48]);
        for cell in 0..9 {
            assert!((row(cell).iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        // grid 1 is the global average; grid 7 picks each cell.
        assert!(pooling_matrix(7, 7, 1).iter().all(|&v| (v - 1.0 / 49.0).abs() < 1e-9));
        let m7 = pooling_matrix(7, 7, 7);
        assert!((0..49).all(|c| m7[c * 49 + c] == 1.0 && m7[c * 49..(c + 1) * 49].iter().sum::<f32>() == 1.0));
    }

    fn config(json: &str) -> Result<VisualAdapter> {
        let weights = Weights::from_tensors(Path::new("x.safetensors"), &[]).unwrap();
        VisualAdapter::new(json.as_bytes(), weights)
    }

    #[test]
    fn bad_configs_are_refused_by_name() {
        let ok = r#"{"encoder":"mobilenetv2","grid":2,"rank":4,"act":"gelu","base_model":"smollm2","base_sha256":"ab","seed":7}"#;
        assert!(config(ok).is_ok());
        for (edit, says) in [
            (("\"rank\":4", "\"rank\":0"), "rank 0"),
            (("\"act\":\"gelu\"", "\"act\":\"relu\""), "act 'relu'"),
            (("\"grid\":2", "\"grid\":9"), "grid 9"),
            (("\"grid\":2", "\"grid\":0"), "grid 0"),
            (("mobilenetv2", "resnet50"), "encoder 'resnet50'"),
            (("\"seed\":7", "\"layers\":[]"), "layers is empty"),
            (("\"base_sha256\":\"ab\",", ""), "base_sha256"),
        ] {
            let err = config(&ok.replace(edit.0, edit.1)).err().map(|e| format!("{e:#}")).unwrap_or_default();
            assert!(err.contains(says), "{edit:?}: {err}");
        }
    }
}
