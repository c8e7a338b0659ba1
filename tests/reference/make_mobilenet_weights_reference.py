#!/usr/bin/env python3
"""What torch.load reads from torchvision's MobileNetV2 checkpoint, and what folding its batch
norms gives, for tandem's legacy-pickle reader and batch-norm folding tests.

Usage: make_mobilenet_weights_reference.py PTH_FILE [OUT_JSON]

PTH_FILE is mobilenet_v2-b0353104.pth (`tandem fetch mobilenetv2` puts it in
~/.cache/tandem/models/mobilenetv2/). Writes OUT_JSON (default: mobilenet_v2_weights.json
beside this script) with:
- every tensor's name, shape and dtype, in the file's order;
- for a few tensors: the first values, the value at a middle index and the float64 sum;
- the same for a few convolutions with their batch norm folded by torch's own
  torch.nn.utils.fusion.fuse_conv_bn_weights (eps 1e-5);
- small synthetic conv + batch norm cases (with and without a conv bias, grouped) with
  every value, and torch's folded weights and bias.
Needs torch; the tests that read the JSON do not.
"""

import json
import platform
import sys
from pathlib import Path

import torch
from torch.nn.utils.fusion import fuse_conv_bn_weights

EPS = 1e-5
SAMPLED = [
    "features.0.0.weight",
    "features.0.1.running_var",
    "features.1.conv.0.0.weight",
    "features.7.conv.1.0.weight",
    "features.18.0.weight",
    "classifier.1.weight",
    "classifier.1.bias",
]
# (conv prefix, batch norm prefix): a full conv, a depthwise conv, a 1x1 projection.
FOLDED = [
    ("features.0.0", "features.0.1"),
    ("features.1.conv.0.0", "features.1.conv.0.1"),
    ("features.2.conv.2", "features.2.conv.3"),
    ("features.18.0", "features.18.1"),
]


def rounded(values):
    return [float(f"{v:.9g}") for v in values]


def sample(t: torch.Tensor):
    flat = t.detach().reshape(-1)
    middle = flat.numel() // 2
    return {
        "first": rounded(flat[:8].tolist()),
        "middle_index": middle,
        "middle": float(f"{flat[middle].item():.9g}"),
        "sum": flat.double().sum().item(),
    }


def synthetic_case(name, out_ch, in_ch, groups, conv_bias, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_ch, in_ch // groups, 3, 3, generator=g)
    b = torch.randn(out_ch, generator=g) if conv_bias else None
    gamma = torch.randn(out_ch, generator=g)
    beta = torch.randn(out_ch, generator=g)
    mean = torch.randn(out_ch, generator=g)
    var = torch.rand(out_ch, generator=g) * 2 + 1e-3
    fw, fb = fuse_conv_bn_weights(w, b, mean, var, EPS, gamma, beta)
    return {
        "name": name,
        "weight_shape": list(w.shape),
        "conv_weight": rounded(w.reshape(-1).tolist()),
        "conv_bias": rounded(b.tolist()) if b is not None else None,
        "bn_weight": rounded(gamma.tolist()),
        "bn_bias": rounded(beta.tolist()),
        "running_mean": rounded(mean.tolist()),
        "running_var": rounded(var.tolist()),
        "folded_weight": rounded(fw.detach().reshape(-1).tolist()),
        "folded_bias": rounded(fb.detach().tolist()),
    }


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    pth = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) == 3 else Path(__file__).with_name("mobilenet_v2_weights.json")
    state = torch.load(pth, map_location="cpu", weights_only=True)
    folded = {}
    for conv, bn in FOLDED:
        fw, fb = fuse_conv_bn_weights(
            state[f"{conv}.weight"],
            state.get(f"{conv}.bias"),
            state[f"{bn}.running_mean"],
            state[f"{bn}.running_var"],
            EPS,
            state[f"{bn}.weight"],
            state[f"{bn}.bias"],
        )
        folded[conv] = {"weight": sample(fw), "bias": sample(fb)}
    reference = {
        "made_by": {
            "script": "tests/reference/make_mobilenet_weights_reference.py",
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "file": pth.name,
        "tensor_count": len(state),
        "tensors": [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in state.items()],
        "samples": {name: sample(state[name]) for name in SAMPLED},
        "folded": folded,
        "synthetic_folds": [
            synthetic_case("conv_with_bias", 4, 3, 1, True, 1),
            synthetic_case("conv_without_bias", 5, 2, 1, False, 2),
            synthetic_case("depthwise", 6, 6, 6, False, 3),
        ],
    }
    out.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
