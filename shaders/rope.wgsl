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
    let s = sin(theta);
    let c = cos(theta);
    let xa = x[row + a];
    let xb = x[row + b];
    out[row + a] = xa * c - xb * s;
    out[row + b] = xa * s + xb * c;
}
