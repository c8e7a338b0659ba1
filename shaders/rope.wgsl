// Rotary position embedding: the pairs of each head's first rot_dims dims turn by
// θ = position · inv_freq[i]; interleaved pairs (2i, 2i + 1) or half-split (i, i + rot/2).
// Dims past rot_dims are copied. One invocation per (token, head, pair), 256 per workgroup,
// plus the copy of the untouched dims by the same invocations (pair index past rot/2).
//
// Mirrors runtime/src/ops/rope.rs (RopeParams) and cuda/rope.cu.

struct RopeParams {
    tokens: u32,
    heads: u32,
    head_dim: u32,
    rot_dims: u32,
    half: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: RopeParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// sin and cos of θ within 3e-7 for |θ| up to 20,000 (a position times a frequency). WGSL's
// own sin and cos promise 2^-11 only, and only on [-π, π]: browsers' software adapters
// (SwiftShader) are off by 4e-4 at the angles of long sequences. Cody-Waite reduction by
// π/2 in three parts (the first exact for k < 2^13), then Cephes' sinf/cosf polynomials.
fn sin_cos(theta: f32) -> vec2<f32> {
    let k = round(theta * 0.63661975);
    let r = ((theta - k * 1.5703125) - k * 4.838705062866211e-4) - k * -4.371138828673793e-8;
    let z = r * r;
    let s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r;
    let c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0;
    switch u32(i32(k) & 3) {
        case 0u: { return vec2(s, c); }
        case 1u: { return vec2(c, -s); }
        case 2u: { return vec2(-s, -c); }
        default: { return vec2(-c, s); }
    }
}

// Work items per head: rot_dims / 2 pairs, then one per dim that passes through.
fn per_head() -> u32 {
    return p.rot_dims / 2u + (p.head_dim - p.rot_dims);
}

@compute @workgroup_size(256)
fn rope(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let e = (wid.y * groups.x + wid.x) * WG + lid;
    let n = per_head();
    if n == 0u || e >= p.tokens * p.heads * n {
        return;
    }
    let item = e % n;
    let head = e / n; // token * heads + head
    let row = head * p.head_dim;
    let pairs = p.rot_dims / 2u;
    if item >= pairs {
        let c = p.rot_dims + (item - pairs);
        out[row + c] = x[row + c];
        return;
    }
    var a = 2u * item;
    var b = 2u * item + 1u;
    if p.half != 0u {
        a = item;
        b = item + pairs;
    }
    let theta = f32(positions[head / p.heads]) * inv_freq[item];
    let sc = sin_cos(theta);
    let s = sc.x;
    let c = sc.y;
    let xa = x[row + a];
    let xb = x[row + b];
    out[row + a] = xa * c - xb * s;
    out[row + b] = xa * s + xb * c;
}
