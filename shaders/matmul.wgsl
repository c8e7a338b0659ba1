// Matrix multiply with a fused epilogue: out = act(a · b + bias), batched over workgroup z
// (matmul), and its LoRA form (lora_matmul, below).
//
// Each workgroup computes a 64×64 tile of the output; each of its 16×16 invocations owns a
// 4×4 block (rows 4ty.., columns 4tx..). K advances 16 at a time through workgroup memory:
// both tiles are stored k-major as vec4s ([16][16] vec4 each, 8 KiB together), so per step
// of k an invocation reads one vec4 of a and one of b and does 16 multiply-adds. (Measured on
// lavapipe, vec4 reads run ~1.6× faster than a 4×4 block of scalar reads spaced 16 apart.)
// Loads from global memory are spread so that neighbouring invocations read neighbouring
// addresses. Every global read is bounds-checked and padded with zeros, so any M, N, K
// works; a ragged edge only wastes lanes.
//
// lora_matmul computes act(x · Wᵀ + bias + scale · t · Bᵀ), with t = x · Aᵀ ([rows, r])
// computed beforehand by `matmul` into a scratch: after the K steps over x and W, the same
// loop goes on over the r columns of scale·t and B (B is [N, r], so it loads like a
// transposed b), accumulating into the same registers; the epilogue is shared.
//
// Mirrors runtime/src/ops/matmul.rs (MatMulParams) and cuda/matmul.cu.

struct MatMulParams {
    batch: u32,
    m: u32,
    n: u32,
    k: u32,
    // Elements between consecutive products in a and b (stride_b 0: b is shared).
    stride_a: u32,
    stride_b: u32,
    // b is stored [N, K] (a PyTorch Linear weight) instead of [K, N].
    trans_b: u32,
    // Activation::code: 0 none, 1 GELU (erf form), 2 ReLU.
    activation: u32,
    has_bias: u32,
    // lora_matmul only: r, and the scale (lora_alpha / r) of the low-rank term.
    lora_rank: u32,
    lora_scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: MatMulParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
// Bound to `a` when there is no bias (has_bias 0), and then never read.
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// lora_matmul binds x, W and bias as a, b and bias, then these. Bindings may repeat across
// entry points of one module; each entry point uses its own set.
@group(0) @binding(4) var<storage, read> lora_t: array<f32>;
@group(0) @binding(5) var<storage, read> lora_b: array<f32>;
@group(0) @binding(6) var<storage, read_write> lora_out: array<f32>;

const TILE: u32 = 64u;
const TK: u32 = 16u;
const WG: u32 = 256u;

// k-major: element (kk, i) of a tile is tile[kk * 16 + i / 4][i % 4], i the row (a) or column (b).
var<workgroup> a_tile: array<vec4<f32>, 256>;
var<workgroup> b_tile: array<vec4<f32>, 256>;

// Stages K columns k0.. of a (rows row0..) and b (columns col0..) into the tiles. Each
// invocation loads 4 of the 1024 elements of each tile. Consecutive invocations read
// consecutive addresses of the source layout (along K for a and for [N, K] b, along N for
// [K, N] b).
fn stage_product(li: u32, row0: u32, col0: u32, k0: u32, a_base: u32, b_base: u32) {
    for (var i = 0u; i < 4u; i++) {
        let e = li + i * WG;
        let r = e / TK;
        let kk = e % TK;
        var av = 0.0;
        if row0 + r < p.m && k0 + kk < p.k {
            av = a[a_base + (row0 + r) * p.k + k0 + kk];
        }
        a_tile[kk * 16u + r / 4u][r % 4u] = av;

        var bv = 0.0;
        if p.trans_b != 0u {
            if col0 + r < p.n && k0 + kk < p.k {
                bv = b[b_base + (col0 + r) * p.k + k0 + kk];
            }
            b_tile[kk * 16u + r / 4u][r % 4u] = bv;
        } else {
            let bk = e / TILE;
            let c = e % TILE;
            if k0 + bk < p.k && col0 + c < p.n {
                bv = b[b_base + (k0 + bk) * p.n + col0 + c];
            }
            b_tile[bk * 16u + c / 4u][c % 4u] = bv;
        }
    }
}

// Stages the LoRA term's columns k0.. (of r) into the tiles: scale·t for a, B ([N, r]) for b.
fn stage_lora(li: u32, row0: u32, col0: u32, k0: u32, t_base: u32) {
    let r_len = p.lora_rank;
    for (var i = 0u; i < 4u; i++) {
        let e = li + i * WG;
        let r = e / TK;
        let kk = e % TK;
        var tv = 0.0;
        if row0 + r < p.m && k0 + kk < r_len {
            tv = p.lora_scale * lora_t[t_base + (row0 + r) * r_len + k0 + kk];
        }
        a_tile[kk * 16u + r / 4u][r % 4u] = tv;
        var bv = 0.0;
        if col0 + r < p.n && k0 + kk < r_len {
            bv = lora_b[(col0 + r) * r_len + k0 + kk];
        }
        b_tile[kk * 16u + r / 4u][r % 4u] = bv;
    }
}

// One K step over the staged tiles into this invocation's 4×4 block.
fn multiply_tiles(lid: vec3<u32>, acc: ptr<function, array<vec4<f32>, 4>>) {
    for (var kk = 0u; kk < TK; kk++) {
        let av = a_tile[kk * 16u + lid.y];
        let bv = b_tile[kk * 16u + lid.x];
        (*acc)[0] += av.x * bv;
        (*acc)[1] += av.y * bv;
        (*acc)[2] += av.z * bv;
        (*acc)[3] += av.w * bv;
    }
}

fn epilogue(c: u32, x: f32) -> f32 {
    var v = x;
    if p.has_bias != 0u {
        v += bias[c];
    }
    return activate(v, p.activation);
}

@compute @workgroup_size(16, 16, 1)
fn matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    var acc = array<vec4<f32>, 4>();
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        stage_product(li, row0, col0, k0, wid.z * p.stride_a, wid.z * p.stride_b);
        workgroupBarrier();
        multiply_tiles(lid, &acc);
        // The next iteration overwrites the tiles.
        workgroupBarrier();
    }

    let out_base = wid.z * p.m * p.n;
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        if r >= p.m {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + lid.x * 4u + j;
            if c < p.n {
                out[out_base + r * p.n + c] = epilogue(c, acc[i][j]);
            }
        }
    }
}

@compute @workgroup_size(16, 16, 1)
fn lora_matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    var acc = array<vec4<f32>, 4>();
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        stage_product(li, row0, col0, k0, wid.z * p.stride_a, wid.z * p.stride_b);
        workgroupBarrier();
        multiply_tiles(lid, &acc);
        workgroupBarrier();
    }
    for (var k0 = 0u; k0 < p.lora_rank; k0 += TK) {
        stage_lora(li, row0, col0, k0, wid.z * p.m * p.lora_rank);
        workgroupBarrier();
        multiply_tiles(lid, &acc);
        workgroupBarrier();
    }

    let out_base = wid.z * p.m * p.n;
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        if r >= p.m {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + lid.x * 4u + j;
            if c < p.n {
                lora_out[out_base + r * p.n + c] = epilogue(c, acc[i][j]);
            }
        }
    }
}
