// Per-sequence pooling of packed rows: out[s, c] = mean / first / max of x[r, c] over the
// rows r of segment s (segments: u32 [seqs, 2] of start, length). An empty segment gives
// zeros; segments reaching past the last row are clamped to it, as on the CPU.
//
// One invocation per output element, summing its column in row order exactly like the CPU
// reference (so results match to the last bit but for the division).
//
// global_avg_pool: the mean of each [H, W] plane of an NCHW tensor, one invocation per
// plane, summing in memory order like the CPU reference.
//
// Mirrors runtime/src/ops/pool.rs (PoolParams), runtime/src/ops/conv.rs (GlobalPoolParams)
// and cuda/pool.cu.

struct PoolParams {
    num_seqs: u32,
    dim: u32,
    tokens: u32,
    // PoolKind::code: 0 mean, 1 first, 2 max.
    kind: u32,
}

struct GlobalPoolParams {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: PoolParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> segments: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// global_avg_pool: x (above), then its output.
@group(0) @binding(0) var<uniform> gp: GlobalPoolParams;
@group(0) @binding(2) var<storage, read_write> means: array<f32>;

@compute @workgroup_size(256)
fn pool(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * groups.x + wid.x) * WG + lid;
    if i >= p.num_seqs * p.dim {
        return;
    }
    let s = i / p.dim;
    let c = i % p.dim;
    let start = min(segments[2u * s], p.tokens);
    let end = start + min(segments[2u * s + 1u], p.tokens - start);
    if start >= end {
        out[i] = 0.0;
        return;
    }
    var acc = x[start * p.dim + c];
    switch p.kind {
        case 0u: {
            for (var r = start + 1u; r < end; r++) {
                acc += x[r * p.dim + c];
            }
            acc = acc / f32(end - start);
        }
        case 2u: {
            for (var r = start + 1u; r < end; r++) {
                acc = max(acc, x[r * p.dim + c]);
            }
        }
        default: {}
    }
    out[i] = acc;
}

@compute @workgroup_size(256)
fn global_avg_pool(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = (wid.y * groups.x + wid.x) * WG + lid;
    if row >= gp.rows {
        return;
    }
    let base = row * gp.cols;
    var acc = 0.0;
    for (var i = 0u; i < gp.cols; i++) {
        acc += x[base + i];
    }
    means[row] = acc / f32(gp.cols);
}
