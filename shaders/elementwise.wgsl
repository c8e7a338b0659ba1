// Elementwise ops: `unary` activations, broadcasting `binary` arithmetic, and `convert` for
// the Cast op (WGSL reserves the word `cast`).
//
// One invocation per output element (per output word for casts), 256 per workgroup. Large
// tensors need more than the 65535 workgroups WebGPU allows in one dimension, so the host
// lays the workgroups out as a 2-D grid and kernels flatten it back (`flat_index`).
//
// Mirrors runtime/src/ops/elementwise.rs (UnaryParams, BinaryParams, ClampParams) and
// cuda/elementwise.cu.

struct UnaryParams {
    len: u32,
    // UnaryKind::code for `unary`; the source DType::code for `convert`.
    op: u32,
    // The target DType::code for `convert`.
    to: u32,
    _pad: u32,
}

// The [u32; 8] arrays of the Rust struct, as two vec4s: uniform arrays need a 16-byte stride.
struct BinaryParams {
    len: u32,
    op: u32,
    rank: u32,
    _pad: u32,
    out_shape: array<vec4<u32>, 2>,
    a_strides: array<vec4<u32>, 2>,
    b_strides: array<vec4<u32>, 2>,
}

struct ClampParams {
    len: u32,
    _pad: u32,
    min: f32,
    max: f32,
}

const WG: u32 = 256u;

// Each entry point uses its own set of bindings; WGSL allows bindings to repeat across
// entry points of one module.
@group(0) @binding(0) var<uniform> up: UnaryParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@group(0) @binding(0) var<uniform> cp: ClampParams;

@group(0) @binding(0) var<uniform> bp: BinaryParams;
@group(0) @binding(1) var<storage, read> lhs: array<f32>;
@group(0) @binding(2) var<storage, read> rhs: array<f32>;
@group(0) @binding(3) var<storage, read_write> res: array<f32>;

// Casts move raw 32-bit words: f16 data packs two elements per word.
@group(0) @binding(1) var<storage, read> src_words: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst_words: array<u32>;

fn flat_index(wid: vec3<u32>, groups: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * groups.x + wid.x) * WG + lid;
}

@compute @workgroup_size(256)
fn unary(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, groups, lid);
    if i >= up.len {
        return;
    }
    let v = x[i];
    var r: f32;
    switch up.op {
        // GELU, erf form.
        case 0u: {
            r = 0.5 * v * (1.0 + erf(v * 0.70710678118654752));
        }
        case 1u: {
            r = max(v, 0.0);
        }
        case 2u: {
            r = tanh(v);
        }
        // SiLU, as the CPU: x / (1 + e^-x).
        case 4u: {
            r = v / (1.0 + exp(-v));
        }
        default: {
            r = 1.0 / (1.0 + exp(-v));
        }
    }
    y[i] = r;
}

@compute @workgroup_size(256)
fn binary(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, groups, lid);
    if i >= bp.len {
        return;
    }
    // Peel output coordinates off from the last axis; broadcast axes have stride 0.
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var axis = bp.rank; axis > 0u; axis--) {
        let v = (axis - 1u) / 4u;
        let c = (axis - 1u) % 4u;
        let d = bp.out_shape[v][c];
        let idx = rem % d;
        rem = rem / d;
        ia += idx * bp.a_strides[v][c];
        ib += idx * bp.b_strides[v][c];
    }
    let a = lhs[ia];
    let b = rhs[ib];
    var r: f32;
    switch bp.op {
        case 0u: {
            r = a + b;
        }
        case 1u: {
            r = a - b;
        }
        case 2u: {
            r = a * b;
        }
        default: {
            r = a / b;
        }
    }
    res[i] = r;
}

// One invocation per output word, so two f16 outputs sharing a word never race.
@compute @workgroup_size(256)
fn convert(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let w = flat_index(wid, groups, lid);
    let src_type = up.op;
    if up.to == F16 {
        if w >= (up.len + 1u) / 2u {
            return;
        }
        if src_type == F16 {
            dst_words[w] = src_words[w];
            return;
        }
        let lo = f32_to_f16_bits(src_words[2u * w]);
        var hi = 0u;
        if 2u * w + 1u < up.len {
            hi = f32_to_f16_bits(src_words[2u * w + 1u]);
        }
        dst_words[w] = lo | (hi << 16u);
        return;
    }
    if w >= up.len {
        return;
    }
    if src_type == F16 {
        dst_words[w] = f16_to_f32_bits((src_words[w / 2u] >> (16u * (w % 2u))) & 0xffffu);
    } else if src_type == U32 && up.to == F32 {
        dst_words[w] = bitcast<u32>(f32(src_words[w]));
    } else {
        // Same 4-byte type on both sides: a copy.
        dst_words[w] = src_words[w];
    }
}

// The Clamp op (named clip: a function named clamp would shadow the builtin): x, y (the
// unary bindings). NaN stays NaN (torch.clamp); min > max gives max.
@compute @workgroup_size(256)
fn clip(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wid, groups, lid);
    if i >= cp.len {
        return;
    }
    y[i] = clamp_nan_kept(x[i], cp.min, cp.max);
}
