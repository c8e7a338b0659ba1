//! Folds inference-mode batch norms into the convolutions before them, so that a vision
//! graph needs no batch-norm op: `bn(conv(x)) = conv'(x)` with
//! `scale = gamma / sqrt(running_var + eps)`, `w' = w * scale` per output channel and
//! `b' = (b - running_mean) * scale + beta`.

use anyhow::{Context, Result, anyhow, ensure};
use std::collections::{HashMap, HashSet};
use tandem_runtime::weights::torch::{StateDict, TensorValues, TorchTensor};

/// torch.nn.BatchNorm2d's default epsilon, which torchvision's MobileNetV2 uses.
pub const BATCH_NORM_EPS: f64 = 1e-5;

/// A batch norm's four per-channel tensors.
#[derive(Debug, Clone, Copy)]
pub struct BatchNorm<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub running_mean: &'a [f32],
    pub running_var: &'a [f32],
    pub eps: f64,
}

/// The folded (weight, bias) of a convolution whose weight has the output channel first
/// (`[out, in / groups, kh, kw]`) followed by `bn`. Computed in f64, rounded once.
pub fn fold_into_conv(conv_weight: &[f32], conv_bias: Option<&[f32]>, bn: &BatchNorm) -> Result<(Vec<f32>, Vec<f32>)> {
    let channels = bn.weight.len();
    for (what, len) in
        [("bias", bn.bias.len()), ("running_mean", bn.running_mean.len()), ("running_var", bn.running_var.len())]
    {
        ensure!(len == channels, "batch norm {what} has {len} values, its weight {channels}");
    }
    if let Some(bias) = conv_bias {
        ensure!(bias.len() == channels, "convolution bias has {} values, the batch norm {channels}", bias.len());
    }
    ensure!(
        channels > 0 && conv_weight.len().is_multiple_of(channels),
        "convolution weight of {} values does not split into {channels} output channels",
        conv_weight.len()
    );
    let per_channel = conv_weight.len() / channels;
    let mut weight = Vec::with_capacity(conv_weight.len());
    let mut bias = Vec::with_capacity(channels);
    for c in 0..channels {
        let variance = bn.running_var[c] as f64 + bn.eps;
        // A negative or NaN variance would turn every output of the channel into NaN.
        ensure!(
            variance > 0.0,
            "batch norm channel {c} has running_var {} (with eps: not positive)",
            bn.running_var[c]
        );
        let scale = bn.weight[c] as f64 / variance.sqrt();
        let rows = &conv_weight[c * per_channel..(c + 1) * per_channel];
        weight.extend(rows.iter().map(|&w| (w as f64 * scale) as f32));
        let conv_b = conv_bias.map_or(0.0, |b| b[c] as f64);
        bias.push(((conv_b - bn.running_mean[c] as f64) * scale + bn.bias[c] as f64) as f32);
    }
    Ok((weight, bias))
}

/// Folds every batch norm of a torch state dict into the convolution before it, the
/// torchvision way of naming modules: the batch norm `P.k` follows the convolution
/// `P.(k-1)` in the same `Sequential` (`features.0.0` conv, `features.0.1` batch norm).
///
/// The result has, for each folded convolution, `<conv>.weight` (same shape) and
/// `<conv>.bias`, in the place of the conv's weight; the batch norms' tensors
/// (`num_batches_tracked` included) are gone; every other tensor (the classifier) is kept.
pub fn fold_batch_norms(state: &StateDict, eps: f64) -> Result<StateDict> {
    let by_name: HashMap<&str, &TorchTensor> = state.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let f32_of = |name: &str| -> Result<&[f32]> {
        by_name.get(name).and_then(|t| t.f32()).ok_or_else(|| anyhow!("no f32 tensor '{name}'"))
    };

    // conv prefix -> its folded (weight, bias); every name the folding consumes.
    let mut folded: HashMap<String, (Vec<f32>, Vec<f32>)> = HashMap::new();
    let mut consumed: HashSet<String> = HashSet::new();
    for bn_prefix in state.tensors.iter().filter_map(|t| t.name.strip_suffix(".running_mean")) {
        let conv_prefix = preceding_module(bn_prefix)
            .ok_or_else(|| anyhow!("batch norm '{bn_prefix}' is not preceded by a module in a Sequential"))?;
        let conv_weight_name = format!("{conv_prefix}.weight");
        let conv_weight = by_name.get(conv_weight_name.as_str()).filter(|t| t.shape.len() == 4).ok_or_else(|| {
            anyhow!(
                "batch norm '{bn_prefix}' does not follow a convolution ('{conv_weight_name}' is missing or not 4-D)"
            )
        })?;
        let bn = BatchNorm {
            weight: f32_of(&format!("{bn_prefix}.weight"))?,
            bias: f32_of(&format!("{bn_prefix}.bias"))?,
            running_mean: f32_of(&format!("{bn_prefix}.running_mean"))?,
            running_var: f32_of(&format!("{bn_prefix}.running_var"))?,
            eps,
        };
        ensure!(
            conv_weight.shape[0] == bn.weight.len(),
            "'{conv_weight_name}' has {} output channels, batch norm '{bn_prefix}' {}",
            conv_weight.shape[0],
            bn.weight.len()
        );
        let conv_bias_name = format!("{conv_prefix}.bias");
        let conv_bias = by_name.get(conv_bias_name.as_str()).map(|_| f32_of(&conv_bias_name)).transpose()?;
        let values = conv_weight.f32().ok_or_else(|| anyhow!("'{conv_weight_name}' is not f32"))?;
        let result = fold_into_conv(values, conv_bias, &bn)
            .with_context(|| format!("folding '{bn_prefix}' into '{conv_prefix}'"))?;
        folded.insert(conv_prefix, result);
        for field in ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"] {
            consumed.insert(format!("{bn_prefix}.{field}"));
        }
        consumed.insert(conv_bias_name);
    }

    let mut tensors = Vec::with_capacity(state.tensors.len());
    for tensor in &state.tensors {
        if consumed.contains(&tensor.name) {
            continue;
        }
        let conv = tensor.name.strip_suffix(".weight").and_then(|prefix| folded.remove_entry(prefix));
        match conv {
            Some((prefix, (weight, bias))) => {
                let channels = tensor.shape[0];
                tensors.push(TorchTensor {
                    name: tensor.name.clone(),
                    shape: tensor.shape.clone(),
                    values: TensorValues::F32(weight),
                });
                tensors.push(TorchTensor {
                    name: format!("{prefix}.bias"),
                    shape: vec![channels],
                    values: TensorValues::F32(bias),
                });
            }
            None => tensors.push(tensor.clone()),
        }
    }
    Ok(StateDict { tensors })
}

/// `features.3.conv.1.1` -> `features.3.conv.1.0`: the module before a numbered module in
/// the same Sequential.
fn preceding_module(prefix: &str) -> Option<String> {
    let (parent, index) = prefix.rsplit_once('.')?;
    let index: usize = index.parse().ok()?;
    Some(format!("{parent}.{}", index.checked_sub(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: &[usize], values: Vec<f32>) -> TorchTensor {
        TorchTensor { name: name.into(), shape: shape.to_vec(), values: TensorValues::F32(values) }
    }

    /// A conv `block.0` ([2, 1, 1, 2]) and its batch norm `block.1`, then a linear `head`.
    fn conv_bn_state(running_var: Vec<f32>) -> StateDict {
        StateDict {
            tensors: vec![
                tensor("block.0.weight", &[2, 1, 1, 2], vec![1.0, 2.0, 3.0, 4.0]),
                tensor("block.1.weight", &[2], vec![2.0, 0.5]),
                tensor("block.1.bias", &[2], vec![1.0, -1.0]),
                tensor("block.1.running_mean", &[2], vec![0.5, 2.0]),
                tensor("block.1.running_var", &[2], running_var),
                TorchTensor {
                    name: "block.1.num_batches_tracked".into(),
                    shape: vec![],
                    values: TensorValues::I64(vec![9]),
                },
                tensor("head.weight", &[1, 2], vec![7.0, 8.0]),
            ],
        }
    }

    #[test]
    fn folds_by_module_position_and_keeps_other_tensors() {
        // eps 0 and variances 4 and 1/4 keep the arithmetic exact: scales 1 and 1.
        let folded = fold_batch_norms(&conv_bn_state(vec![4.0, 0.25]), 0.0).unwrap();
        let names: Vec<&str> = folded.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["block.0.weight", "block.0.bias", "head.weight"]);
        assert_eq!(folded.f32("block.0.weight").unwrap(), (&[2, 1, 1, 2][..], &[1.0, 2.0, 3.0, 4.0][..]));
        // (0 - mean) * scale + beta
        assert_eq!(folded.f32("block.0.bias").unwrap(), (&[2][..], &[0.5, -3.0][..]));
        assert_eq!(folded.f32("head.weight").unwrap().1, [7.0, 8.0]);
    }

    #[test]
    fn refuses_what_cannot_be_folded() {
        let error = fold_batch_norms(&conv_bn_state(vec![4.0, -1.0]), 1e-5).unwrap_err();
        assert!(format!("{error:#}").contains("batch norm channel 1 has running_var -1"), "{error:#}");

        let mut no_conv = conv_bn_state(vec![1.0, 1.0]);
        no_conv.tensors.remove(0);
        let error = fold_batch_norms(&no_conv, 1e-5).unwrap_err().to_string();
        assert!(error.contains("batch norm 'block.1' does not follow a convolution ('block.0.weight'"), "{error}");

        // A named (not numbered) batch norm has no "module before it" to fold into.
        let mut named = conv_bn_state(vec![1.0, 1.0]);
        for t in &mut named.tensors {
            t.name = t.name.replace("block.1.", "block.norm.");
        }
        let error = fold_batch_norms(&named, 1e-5).unwrap_err().to_string();
        assert!(error.contains("batch norm 'block.norm' is not preceded by a module"), "{error}");

        let bn =
            BatchNorm { weight: &[1.0; 3], bias: &[0.0; 3], running_mean: &[0.0; 2], running_var: &[1.0; 3], eps: 0.0 };
        let error = fold_into_conv(&[1.0; 6], None, &bn).unwrap_err().to_string();
        assert!(error.contains("batch norm running_mean has 2 values, its weight 3"), "{error}");
    }
}
