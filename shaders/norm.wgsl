// Reductions over the last axis: `layer_norm`, `rms_norm`, `softmax`, `l2_normalize`.
//
// One workgroup of 64 invocations per row: each invocation strides over the row (so any
// row length works, 1 or 100 000), then a tree reduction in workgroup memory combines the
// partial results. Rows beyond 65535 use the second grid dimension. 64 rather than 256:
// model rows are short (384 to a few thousand), and every level of the tree costs a
// barrier (measured on lavapipe: 64 invocations run layer_norm on 1024×384 ~3× faster).
//
// Mirrors runtime/src/ops/norm.rs (NormParams) and cuda/norm.cu.

struct NormParams {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: NormParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
// layer_norm: x, gamma, beta -> y.
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> ln_out: array<f32>;
// rms_norm: x, gamma -> y.
@group(0) @binding(3) var<storage, read_write> rms_out: array<f32>;
// softmax and l2_normalize: x -> y (WGSL allows bindings to repeat across entry points).
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, 64>;

// The sum (or max) of `v` over the workgroup. Every invocation must call it.
fn reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            if is_max {
                partial[lid] = max(partial[lid], partial[lid + s]);
            } else {
                partial[lid] += partial[lid + s];
            }
        }
        workgroupBarrier();
    }
    let r = partial[0];
    // Keep the next call from overwriting partial[0] before everyone has read it.
    workgroupBarrier();
    return r;
}

fn row_index(wid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return wid.y * groups.x + wid.x;
}

@compute @workgroup_size(64)
fn layer_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = row_index(wid, groups);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    let n = f32(p.cols);
    // Two passes (mean, then squared deviations) like the CPU reference: one-pass
    // E[x²] − E[x]² loses digits when the mean is large.
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        s += x[base + c];
    }
    let mean = reduce(lid, s, false) / n;
    var v = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let d = x[base + c] - mean;
        v += d * d;
    }
    let inv = 1.0 / sqrt(reduce(lid, v, false) / n + p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        ln_out[base + c] = (x[base + c] - mean) * inv * gamma[c] + beta[c];
    }
}

// x / sqrt(mean(x²) + eps) · gamma, as ops::norm::rms_norm_cpu.
@compute @workgroup_size(64)
fn rms_norm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = row_index(wid, groups);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let v = x[base + c];
        s += v * v;
    }
    let inv = 1.0 / sqrt(reduce(lid, s, false) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        rms_out[base + c] = x[base + c] * inv * gamma[c];
    }
}

@compute @workgroup_size(64)
fn softmax(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = row_index(wid, groups);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var m = -0x1.fffffep+127f; // -FLT_MAX, exactly (Tint rejects a decimal that rounds past it)
    for (var c = lid; c < p.cols; c += WG) {
        m = max(m, x[base + c]);
    }
    let row_max = reduce(lid, m, true);
    // Each invocation writes and later rescales only its own elements: no barrier needed.
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let e = exp(x[base + c] - row_max);
        y[base + c] = e;
        s += e;
    }
    let sum = reduce(lid, s, false);
    for (var c = lid; c < p.cols; c += WG) {
        y[base + c] = y[base + c] / sum;
    }
}

@compute @workgroup_size(64)
fn l2_normalize(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = row_index(wid, groups);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let v = x[base + c];
        s += v * v;
    }
    let norm = max(sqrt(reduce(lid, s, false)), p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        y[base + c] = x[base + c] / norm;
    }
}
