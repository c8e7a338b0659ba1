//! MobileNetV2 (torchvision's layout) as a tandem graph, and the image classifier around it.
//!
//! The graph takes `pixels` f32 `[images, 3, 224, 224]` (the ImageNet transform of
//! [`super::preprocess`]) and outputs `logits` f32 `[images, 1000]`. Batch norms are folded
//! into the convolutions at load ([`super::load_mobilenet_v2_folded`]), so every block is
//! convolutions with bias, ReLU6 as the convolution's clamp, and the residual added by the
//! projection convolution as it writes its output (its fourth input).
//!
//! What the checkpoint does not say, the builder encodes from torchvision's definition: the
//! stride of each block (the inverted-residual table below), padding `(k − 1) / 2`, ReLU6
//! after every convolution but the projections, and a residual add when a block keeps its
//! stride at 1 and its channel count. Channel counts and groups come from the weight shapes.

use crate::session::{AnySession, BackendChoice, Device, wait};
use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;
use tandem_runtime::graph::Weights;
use tandem_runtime::ops::{Activation, Conv2d, MatMul};
use tandem_runtime::weights::torch::StateDict;
use tandem_runtime::{DType, Dim, Graph, HostTensor, Op, TensorType, ValueId};

/// Side of the square input.
pub const INPUT_SIZE: usize = 224;

/// torchvision's inverted-residual settings: (expansion, output channels, repeats, first
/// stride). Block 1 is the first row; blocks 2–17 follow.
const INVERTED_RESIDUAL: [(usize, usize, usize, u32); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

/// Stride of each of `features.1` … `features.17`.
fn block_strides() -> Vec<u32> {
    INVERTED_RESIDUAL.iter().flat_map(|&(_, _, n, s)| (0..n).map(move |i| if i == 0 { s } else { 1 })).collect()
}

struct Builder<'a> {
    g: &'a mut Graph,
    state: &'a StateDict,
}

impl Builder<'_> {
    /// A convolution `{at}.weight` / `{at}.bias` with ReLU6 after it unless `linear`, plus
    /// `residual` if given (shaped like the output).
    fn conv(
        &mut self,
        x: ValueId,
        at: &str,
        in_channels: usize,
        stride: u32,
        linear: bool,
        residual: Option<ValueId>,
    ) -> Result<(ValueId, usize)> {
        let (shape, _) = self.state.f32(&format!("{at}.weight")).map_err(|e| anyhow!("{at}: {e}"))?;
        let [out, per_group, kh, kw] = shape[..] else {
            bail!("{at}.weight is {shape:?}, not a 4-d convolution weight")
        };
        if per_group == 0 || !in_channels.is_multiple_of(per_group) || kh % 2 == 0 || kw % 2 == 0 {
            bail!("{at}.weight {shape:?} does not fit an input of {in_channels} channels");
        }
        let groups = (in_channels / per_group) as u32;
        let weight = self.g.weight(&format!("{at}.weight"), TensorType::fixed(DType::F32, shape));
        let bias = self.g.weight(&format!("{at}.bias"), TensorType::fixed(DType::F32, &[out]));
        // ReLU6 runs inside the convolution, on its output as it is written.
        let clamp = (!linear).then_some([0.0, 6.0]);
        let conv = Conv2d { stride: [stride; 2], padding: [(kh as u32 - 1) / 2, (kw as u32 - 1) / 2], groups, clamp };
        let inputs: Vec<ValueId> = [x, weight, bias].into_iter().chain(residual).collect();
        let y = self.g.node1(at, Op::Conv2d(conv), &inputs)?;
        Ok((y, out))
    }
}

/// Adds torchvision's `features` to `g`: input `pixels` f32 `[images, 3, 224, 224]`, output
/// the last block's map (after its 1×1 convolution and ReLU6: `[images, 1280, 7, 7]`) and its
/// channel count. The classifier pools it; visual adapters read it whole.
pub fn features(g: &mut Graph, state: &StateDict) -> Result<(ValueId, usize)> {
    let mut b = Builder { g, state };
    let image = Dim::Fixed(INPUT_SIZE as u64);
    let pixels =
        b.g.input("pixels", TensorType::new(DType::F32, vec![Dim::sym("images"), Dim::Fixed(3), image.clone(), image]));
    let (mut x, mut channels) = b.conv(pixels, "features.0.0", 3, 2, false, None)?;
    for (i, stride) in block_strides().into_iter().enumerate() {
        let block = i + 1;
        let at = |part: &str| format!("features.{block}.conv.{part}");
        let input = (x, channels);
        // Expansion 1 (block 1) has no 1×1 expand convolution: depthwise, then project.
        let (depthwise, project) = if block == 1 { ("0.0", "1") } else { ("1.0", "2") };
        if block != 1 {
            (x, channels) = b.conv(x, &at("0.0"), channels, 1, false, None)?;
        }
        (x, channels) = b.conv(x, &at(depthwise), channels, stride, false, None)?;
        // The skip connection where the block keeps its size: the projection's own output
        // channels decide it, so they are read before the convolution is added.
        let projected = b.state.f32(&format!("{}.weight", at(project))).map(|(shape, _)| shape[0]).ok();
        let residual = (stride == 1 && projected == Some(input.1)).then_some(input.0);
        (x, channels) = b.conv(x, &at(project), channels, 1, true, residual)?;
    }
    b.conv(x, "features.18.0", channels, 1, false, None)
}

/// The graph of the folded checkpoint `state`.
pub fn build_graph(state: &StateDict) -> Result<Graph> {
    let mut g = Graph::new("mobilenet_v2");
    let (x, channels) = features(&mut g, state)?;
    let b = Builder { g: &mut g, state };
    let pooled = b.g.node1("pool", Op::GlobalAvgPool, &[x])?;
    let (shape, _) = state.f32("classifier.1.weight")?;
    if shape.len() != 2 || shape[1] != channels {
        bail!("classifier.1.weight is {shape:?}, expected [classes, {channels}]");
    }
    let weight = b.g.weight("classifier.1.weight", TensorType::fixed(DType::F32, shape));
    let bias = b.g.weight("classifier.1.bias", TensorType::fixed(DType::F32, &[shape[0]]));
    let matmul = Op::MatMul(MatMul { trans_b: true, activation: Activation::None });
    let logits = b.g.node1("classifier", matmul, &[pooled, weight, bias])?;
    b.g.output(logits, "logits");
    b.g.validate().map_err(|e| anyhow!("building MobileNetV2: {e}"))?;
    Ok(g)
}

/// One class of a prediction.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassScore {
    pub class: usize,
    pub name: &'static str,
    pub logit: f32,
    /// Softmax over all classes.
    pub probability: f32,
}

/// MobileNetV2 on a backend, with ImageNet's preprocessing and class names.
pub struct ImageClassifier {
    session: AnySession,
    classes: Vec<&'static str>,
}

impl ImageClassifier {
    /// Loads a fetched `mobilenetv2` folder.
    pub fn load(dir: &Path, backend: BackendChoice) -> Result<ImageClassifier> {
        let path = dir.join(super::MOBILENET_V2_WEIGHTS_FILE);
        let (graph, weights) = Self::graph_and_weights(&super::load_mobilenet_v2_folded(dir)?, &path)?;
        Ok(Self::with_session(AnySession::new(backend, graph, &weights)?))
    }

    /// The classifier from the bytes of torchvision's MobileNetV2 checkpoint
    /// (`mobilenet_v2-b0353104.pth`, the legacy torch format), on an opened device. `name`
    /// names the checkpoint in errors.
    pub fn from_bytes(checkpoint: &[u8], name: &str, device: &Device) -> Result<ImageClassifier> {
        let state = super::mobilenet_v2_folded_from_bytes(checkpoint, name)?;
        let (graph, weights) = Self::graph_and_weights(&state, Path::new(name))?;
        Ok(Self::with_session(AnySession::on(device, graph, &weights)?))
    }

    /// The graph of a folded checkpoint and its weights in memory (`path` names them).
    fn graph_and_weights(state: &StateDict, path: &Path) -> Result<(Graph, Weights)> {
        let graph = build_graph(state).with_context(|| path.display().to_string())?;
        let weights = Weights::from_tensors(path, &super::host_tensors(state)?)?;
        Ok((graph, weights))
    }

    fn with_session(session: AnySession) -> ImageClassifier {
        ImageClassifier { session, classes: super::imagenet_classes() }
    }

    pub fn backend_name(&self) -> &str {
        self.session.backend_name()
    }

    /// All 1000 logits of an encoded photo (PNG or JPEG). A photo that does not decode is an
    /// error whose source is the [`DecodeError`](super::decode::DecodeError) (`downcast_ref` tells it apart).
    pub fn logits(&self, image: &[u8]) -> Result<Vec<f32>> {
        self.session.blocking(|| wait(self.logits_async(image)))
    }

    /// [`ImageClassifier::logits`], awaiting the device instead of blocking.
    pub async fn logits_async(&self, image: &[u8]) -> Result<Vec<f32>> {
        let pixels = super::preprocess::imagenet_input(image).map_err(anyhow::Error::new)?;
        self.logits_of_pixels_async(pixels).await
    }

    /// The logits of a photo already through ImageNet's transform
    /// ([`super::preprocess::imagenet_input`]): `[3, 224, 224]` floats, CHW.
    pub async fn logits_of_pixels_async(&self, pixels: Vec<f32>) -> Result<Vec<f32>> {
        let input = HostTensor::f32(vec![1, 3, INPUT_SIZE, INPUT_SIZE], pixels)?;
        let outputs = self.session.run(&[input]).await?;
        let logits = outputs.first().and_then(|t| t.as_f32()).context("the graph produced no logits")?;
        if logits.len() != self.classes.len() {
            bail!("the graph produced {} logits for {} classes", logits.len(), self.classes.len());
        }
        Ok(logits.to_vec())
    }

    /// The `k` most likely classes, best first.
    pub fn top(&self, image: &[u8], k: usize) -> Result<Vec<ClassScore>> {
        self.session.blocking(|| wait(self.top_async(image, k)))
    }

    /// [`ImageClassifier::top`], awaiting the device instead of blocking.
    pub async fn top_async(&self, image: &[u8], k: usize) -> Result<Vec<ClassScore>> {
        Ok(top_k(&self.logits_async(image).await?, &self.classes, k))
    }

    /// [`ImageClassifier::top_async`] of a photo already through ImageNet's transform.
    pub async fn top_of_pixels_async(&self, pixels: Vec<f32>, k: usize) -> Result<Vec<ClassScore>> {
        Ok(top_k(&self.logits_of_pixels_async(pixels).await?, &self.classes, k))
    }
}

/// The `k` highest logits with their softmax probabilities, best first (ties: lower class).
pub fn top_k(logits: &[f32], classes: &[&'static str], k: usize) -> Vec<ClassScore> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|class| ClassScore {
            class,
            name: classes.get(class).copied().unwrap_or("?"),
            logit: logits[class],
            probability: (f64::from(logits[class] - max).exp() / total) as f32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_follow_torchvision() {
        let s = block_strides();
        assert_eq!(s.len(), 17);
        let downsampling: Vec<usize> = (0..17).filter(|&i| s[i] == 2).map(|i| i + 1).collect();
        assert_eq!(downsampling, vec![2, 4, 7, 14]);
    }

    #[test]
    fn top_k_orders_and_normalizes() {
        let top = top_k(&[0.0, 2.0, 1.0, 2.0], &["a", "b", "c", "d"], 3);
        assert_eq!(top.iter().map(|c| c.class).collect::<Vec<_>>(), vec![1, 3, 2]);
        assert!((top[0].probability - top[1].probability).abs() < 1e-7);
    }
}
