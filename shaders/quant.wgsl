// Stored-weight kernels: matmul and gather whose weight operand is stored as f16, bf16 or
// GGUF blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K) and dequantized here, with f32
// arithmetic, exactly as runtime/src/weights/quant.rs does on the CPU (up to FMA contraction).
//
// - matvec_stored: a few rows of activations (decoding). Each workgroup computes MV_COLS
//   outputs (weight rows) for up to MV_ROWS rows of a; 32 invocations share each weight row,
//   striding over K eight values at a time, so K is spread over the invocations and every
//   dequantized value serves all the rows; the 32 partial sums meet in workgroup memory.
// - matmul_stored: more rows (prefill). A 32 (rows of a) x 64 (weight rows) output tile per
//   workgroup; K advances 32 at a time, each invocation dequantizing 8 values of one weight
//   row into workgroup memory and loading 4 values of a, then owning 2 x 4 outputs.
// - gather_stored: one invocation per 8 values of an output row; ids outside the table give
//   zeros.
//
// The weight dtype is the pipeline-overridable constant WEIGHT (DType::code): the host makes
// one pipeline per dtype, and the driver folds every `switch WEIGHT` away. cuda/quant.cu, the
// twin, is compiled once per dtype with -DTANDEM_WEIGHT=<code>.
//
// The weight arrives as its raw little-endian bytes, read as u32 words (WebGPU has no 8- or
// 16-bit storage without extensions). Blocks of 18, 20, 22, 34 and 210 bytes are not word
// aligned, so a 4-byte field is put together from the two words it straddles; f16 fields
// always sit at even offsets, inside one word, and unpack2x16float converts them.
//
// Matmul's a and b [N, K] (trans_b) bind at 1 and 2, gather's table and ids at 1 and 2: both
// are declared as raw words (`in1`, `in2`) shared by the entry points, and the helpers take
// which one holds the weight (`src`, a constant at every call, folded by the driver). A
// module-scope variable reached from an entry point is bound by it, so two variables of
// different types at one binding cannot both be read by shared helpers.
//
// Mirrors runtime/src/ops/matmul.rs (MatMulParams), runtime/src/ops/gather.rs
// (GatherParams) and cuda/quant.cu.

struct MatMulParams {
    batch: u32,
    m: u32,
    n: u32,
    k: u32,
    stride_a: u32,
    stride_b: u32,
    trans_b: u32,
    activation: u32,
    has_bias: u32,
    lora_rank: u32,
    lora_scale: f32,
    _pad: u32,
}

struct GatherParams {
    num_ids: u32,
    dim: u32,
    vocab: u32,
    _pad: u32,
}

// DType::code of the weight (1 f16, 3 bf16, 4 Q8_0, 5 Q4_0, 6 Q4_1, 7 Q5_0, 8 Q4_K, 9 Q5_K,
// 10 Q6_K).
override WEIGHT: u32 = 4u;

@group(0) @binding(1) var<storage, read> in1: array<u32>;
@group(0) @binding(2) var<storage, read> in2: array<u32>;

// matvec_stored and matmul_stored: a (f32 bits) in in1, the weight in in2. The host has folded
// a's leading dims into p.m (batch 1).
@group(0) @binding(0) var<uniform> p: MatMulParams;
// Bound to a when there is no bias (has_bias 0), and then never read.
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// gather_stored: the table in in1, the ids in in2.
@group(0) @binding(0) var<uniform> gp: GatherParams;
@group(0) @binding(3) var<storage, read_write> rows_out: array<f32>;

const WG: u32 = 256u;
// matvec_stored: outputs per workgroup (32 invocations each) and rows of a per workgroup.
const MV_COLS: u32 = 8u;
const MV_ROWS: u32 = 8u;
// matmul_stored: the output tile (rows of a x weight rows) and the K step.
const TM: u32 = 32u;
const TN: u32 = 64u;
const TK: u32 = 32u;
// Row stride of the tiles in workgroup memory: 33 keeps a column read free of bank conflicts.
const TILE_STRIDE: u32 = 33u;

var<workgroup> partial: array<f32, 2048>; // matvec: [MV_ROWS][WG]
var<workgroup> w_tile: array<f32, 2112>; // matmul: [TN][TILE_STRIDE]
var<workgroup> a_tile: array<f32, 1056>; // matmul: [TM][TILE_STRIDE]

// Eight consecutive values.
struct Eight {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn word(src: u32, i: u32) -> u32 {
    if src == 1u {
        return in1[i];
    }
    return in2[i];
}

// Four bytes from any byte offset, little-endian.
fn bytes4(src: u32, at: u32) -> u32 {
    let i = at >> 2u;
    let s = (at & 3u) * 8u;
    let lo = word(src, i);
    if s == 0u {
        return lo; // a shift by 32 would be a shift by 0
    }
    return (lo >> s) | (word(src, i + 1u) << (32u - s));
}

fn byte_at(src: u32, at: u32) -> u32 {
    return (word(src, at >> 2u) >> ((at & 3u) * 8u)) & 0xffu;
}

// The f16 at an even byte offset.
fn half_at(src: u32, at: u32) -> f32 {
    let v = unpack2x16float(word(src, at >> 2u));
    return select(v.x, v.y, (at & 2u) != 0u);
}

// The bf16 at an even byte offset: the top half of an f32.
fn bf16_at(src: u32, at: u32) -> f32 {
    let w = word(src, at >> 2u);
    return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (at & 2u) != 0u));
}

// The nibbles of four bytes, low (shift 0) or high (shift 4).
fn nibbles(q: u32, shift: u32) -> vec4<u32> {
    return (vec4<u32>(q, q >> 8u, q >> 16u, q >> 24u) >> vec4<u32>(shift)) & vec4<u32>(15u);
}

// Four signed bytes.
fn i8x4(q: u32) -> vec4<f32> {
    let v = bitcast<i32>(q);
    return vec4<f32>(
        f32(extractBits(v, 0u, 8u)),
        f32(extractBits(v, 8u, 8u)),
        f32(extractBits(v, 16u, 8u)),
        f32(extractBits(v, 24u, 8u)),
    );
}

// Bit `bit` of each of four bytes, moved to bit 4 (the fifth bit of a 5-bit quant).
fn fifth_bits(h: u32, bit: u32) -> vec4<u32> {
    return ((vec4<u32>(h, h >> 8u, h >> 16u, h >> 24u) >> vec4<u32>(bit)) & vec4<u32>(1u)) << vec4<u32>(4u);
}

// Bits `bit` and `bit + 1` of each of four bytes, moved to bits 4 and 5 (the top of a 6-bit
// quant).
fn top_bits(h: u32, bit: u32) -> vec4<u32> {
    return ((vec4<u32>(h, h >> 8u, h >> 16u, h >> 24u) >> vec4<u32>(bit)) & vec4<u32>(3u)) << vec4<u32>(4u);
}

// Bits 0 to 3 of h, each moved to bit 4 of its own lane.
fn low_bits(h: u32) -> vec4<u32> {
    return ((vec4<u32>(h) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) << vec4<u32>(4u);
}

// Bytes of one weight row of k values.
fn row_bytes(k: u32) -> u32 {
    switch WEIGHT {
        case 1u, 3u: {
            return 2u * k;
        }
        case 4u: {
            return k / 32u * 34u;
        }
        case 5u: {
            return k / 32u * 18u;
        }
        case 6u: {
            return k / 32u * 20u;
        }
        case 7u: {
            return k / 32u * 22u;
        }
        case 8u: {
            return k / 256u * 144u;
        }
        case 9u: {
            return k / 256u * 176u;
        }
        default: {
            return k / 256u * 210u;
        }
    }
}

// The 6-bit scale and min of sub-block s of a Q4_K/Q5_K block whose 12 scale bytes start at
// `at` (quant.rs k_scales): (scale, min).
fn k_scale_min(src: u32, at: u32, s: u32) -> vec2<f32> {
    if s < 4u {
        return vec2<f32>(f32(byte_at(src, at + s) & 63u), f32(byte_at(src, at + 4u + s) & 63u));
    }
    let packed = byte_at(src, at + 4u + s);
    let sc = (packed & 15u) | ((byte_at(src, at + s - 4u) >> 6u) << 4u);
    let mn = (packed >> 4u) | ((byte_at(src, at + s) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(mn));
}

// Values j..j+8 of the weight row of k values starting at byte rb; j is a multiple of 8.
// Values at k and beyond (f16 and bf16 rows of any length) are 0.
fn dequant8(src: u32, rb: u32, j: u32, k: u32) -> Eight {
    switch WEIGHT {
        // f16, bf16: one value per 2 bytes.
        case 1u, 3u: {
            var v: array<f32, 8>;
            for (var i = 0u; i < 8u; i++) {
                if j + i < k {
                    let at = rb + 2u * (j + i);
                    v[i] = select(bf16_at(src, at), half_at(src, at), WEIGHT == 1u);
                }
            }
            return Eight(vec4<f32>(v[0], v[1], v[2], v[3]), vec4<f32>(v[4], v[5], v[6], v[7]));
        }
        // Q8_0: d f16 | 32 x i8; y = q * d.
        case 4u: {
            let base = rb + j / 32u * 34u;
            let d = half_at(src, base);
            let at = base + 2u + j % 32u;
            return Eight(i8x4(bytes4(src, at)) * d, i8x4(bytes4(src, at + 4u)) * d);
        }
        // Q4_0: d f16 | 16 bytes; value o < 16 is the low nibble of byte o, 16 + o the high one;
        // y = d * (q - 8).
        case 5u: {
            let base = rb + j / 32u * 18u;
            let d = half_at(src, base);
            let o = j % 32u;
            let at = base + 2u + o % 16u;
            let shift = select(0u, 4u, o >= 16u);
            let lo = vec4<f32>(nibbles(bytes4(src, at), shift)) - 8.0;
            let hi = vec4<f32>(nibbles(bytes4(src, at + 4u), shift)) - 8.0;
            return Eight(d * lo, d * hi);
        }
        // Q4_1: d f16 | m f16 | 16 bytes (nibbles as Q4_0); y = d * q + m.
        case 6u: {
            let base = rb + j / 32u * 20u;
            let d = half_at(src, base);
            let m = half_at(src, base + 2u);
            let o = j % 32u;
            let at = base + 4u + o % 16u;
            let shift = select(0u, 4u, o >= 16u);
            let lo = vec4<f32>(nibbles(bytes4(src, at), shift));
            let hi = vec4<f32>(nibbles(bytes4(src, at + 4u), shift));
            return Eight(d * lo + m, d * hi + m);
        }
        // Q5_0: d f16 | qh u32 (bit o: fifth bit of value o) | 16 bytes (nibbles as Q4_0);
        // y = d * (q - 16).
        case 7u: {
            let base = rb + j / 32u * 22u;
            let d = half_at(src, base);
            let o = j % 32u;
            let qh = bytes4(src, base + 2u) >> o;
            let at = base + 6u + o % 16u;
            let shift = select(0u, 4u, o >= 16u);
            let lo = nibbles(bytes4(src, at), shift) | low_bits(qh);
            let hi = nibbles(bytes4(src, at + 4u), shift) | low_bits(qh >> 4u);
            return Eight(d * (vec4<f32>(lo) - 16.0), d * (vec4<f32>(hi) - 16.0));
        }
        // Q4_K: d f16 | dmin f16 | 12 scale bytes | 128 bytes: sub-block s (32 values) takes
        // the low (s even) or high nibbles of bytes 32 * (s / 2)..; y = (d * sc) * q - dmin * m.
        case 8u: {
            let base = rb + j / 256u * 144u;
            let i = j % 256u;
            let s = i / 32u;
            let sm = k_scale_min(src, base + 4u, s);
            let ds = half_at(src, base) * sm.x;
            let dm = half_at(src, base + 2u) * sm.y;
            let at = base + 16u + 32u * (s / 2u) + i % 32u;
            let shift = 4u * (s % 2u);
            let lo = vec4<f32>(nibbles(bytes4(src, at), shift));
            let hi = vec4<f32>(nibbles(bytes4(src, at + 4u), shift));
            return Eight(ds * lo - dm, ds * hi - dm);
        }
        // Q5_K: as Q4_K with 32 qh bytes after the scales: bit s of qh[l] is the fifth bit of
        // value l of sub-block s.
        case 9u: {
            let base = rb + j / 256u * 176u;
            let i = j % 256u;
            let s = i / 32u;
            let l = i % 32u;
            let sm = k_scale_min(src, base + 4u, s);
            let ds = half_at(src, base) * sm.x;
            let dm = half_at(src, base + 2u) * sm.y;
            let at = base + 48u + 32u * (s / 2u) + l;
            let shift = 4u * (s % 2u);
            let lo = nibbles(bytes4(src, at), shift) | fifth_bits(bytes4(src, base + 16u + l), s);
            let hi = nibbles(bytes4(src, at + 4u), shift) | fifth_bits(bytes4(src, base + 20u + l), s);
            return Eight(ds * vec4<f32>(lo) - dm, ds * vec4<f32>(hi) - dm);
        }
        // Q6_K: 128 ql bytes | 64 qh bytes | 16 i8 scales | d f16. In half h (128 values),
        // value 32t + l has low 4 bits from ql[64h + 32(t % 2) + l] (high nibble for t >= 2)
        // and high 2 bits from qh[32h + l] >> 2t; y = (d * scale[i / 16]) * (q - 32).
        default: {
            let base = rb + j / 256u * 210u;
            let i = j % 256u;
            let h = i / 128u;
            let t = (i % 128u) / 32u;
            let l = i % 32u;
            let ql = base + 64u * h + 32u * (t % 2u) + l;
            let qh = base + 128u + 32u * h + l;
            let shift = 4u * (t / 2u);
            let lo = nibbles(bytes4(src, ql), shift) | top_bits(bytes4(src, qh), 2u * t);
            let hi = nibbles(bytes4(src, ql + 4u), shift) | top_bits(bytes4(src, qh + 4u), 2u * t);
            let sc = f32(extractBits(bitcast<i32>(byte_at(src, base + 192u + i / 16u)), 0u, 8u));
            let ds = half_at(src, base + 208u) * sc;
            return Eight(ds * (vec4<f32>(lo) - 32.0), ds * (vec4<f32>(hi) - 32.0));
        }
    }
}

// Eight values of a (f32 bits in in1) from element `at`; those at or past `left` are 0.
fn a8(at: u32, left: u32) -> Eight {
    var v: array<f32, 8>;
    for (var i = 0u; i < 8u; i++) {
        if i < left {
            v[i] = bitcast<f32>(in1[at + i]);
        }
    }
    return Eight(vec4<f32>(v[0], v[1], v[2], v[3]), vec4<f32>(v[4], v[5], v[6], v[7]));
}

fn epilogue(n: u32, x: f32) -> f32 {
    var v = x;
    if p.has_bias != 0u {
        v += bias[n];
    }
    return activate(v, p.activation);
}

// Grid: (ceil(N / MV_COLS) workgroups folded into x and y, ceil(M / MV_ROWS)).
@compute @workgroup_size(256)
fn matvec_stored(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let lane = lid % 32u;
    let n = (wid.y * groups.x + wid.x) * MV_COLS + lid / 32u;
    let row0 = wid.z * MV_ROWS;
    let rows = min(MV_ROWS, p.m - row0);
    var acc: array<f32, 8>;
    if n < p.n {
        let rb = n * row_bytes(p.k);
        let units = (p.k + 7u) / 8u;
        for (var u = lane; u < units; u += 32u) {
            let j = u * 8u;
            let w = dequant8(2u, rb, j, p.k);
            for (var r = 0u; r < MV_ROWS; r++) {
                if r < rows {
                    let x = a8((row0 + r) * p.k + j, p.k - j);
                    acc[r] += dot(w.lo, x.lo) + dot(w.hi, x.hi);
                }
            }
        }
    }
    for (var r = 0u; r < MV_ROWS; r++) {
        partial[r * WG + lid] = acc[r];
    }
    workgroupBarrier();
    // Invocation `lane` of each weight row's 32 sums row `lane`'s partials.
    if lane < rows && n < p.n {
        let at = lane * WG + lid - lane;
        var s = 0.0;
        for (var i = 0u; i < 32u; i++) {
            s += partial[at + i];
        }
        out[(row0 + lane) * p.n + n] = epilogue(n, s);
    }
}

// Grid: (ceil(N / TN), ceil(M / TM), 1).
@compute @workgroup_size(256)
fn matmul_stored(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col0 = wid.x * TN;
    let row0 = wid.y * TM;
    // Dequantizing: weight row lid / 4 of the tile, values 8 * (lid % 4).. of the K step.
    let wr = lid / 4u;
    let wj = 8u * (lid % 4u);
    let n_w = col0 + wr;
    let rb = n_w * row_bytes(p.k);
    // Computing: rows 2 * (lid / 16) + 0..2, columns lid % 16 + 16 * 0..4 of the tile.
    let tm = 2u * (lid / 16u);
    let tn = lid % 16u;
    var acc: array<f32, 8>;
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        var w = Eight(vec4<f32>(0.0), vec4<f32>(0.0));
        if n_w < p.n && k0 + wj < p.k {
            w = dequant8(2u, rb, k0 + wj, p.k);
        }
        let wt = wr * TILE_STRIDE + wj;
        for (var i = 0u; i < 4u; i++) {
            w_tile[wt + i] = w.lo[i];
            w_tile[wt + 4u + i] = w.hi[i];
        }
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * WG;
            let r = e / TK;
            let c = e % TK;
            var v = 0.0;
            if row0 + r < p.m && k0 + c < p.k {
                v = bitcast<f32>(in1[(row0 + r) * p.k + k0 + c]);
            }
            a_tile[r * TILE_STRIDE + c] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let x0 = a_tile[tm * TILE_STRIDE + kk];
            let x1 = a_tile[(tm + 1u) * TILE_STRIDE + kk];
            for (var c = 0u; c < 4u; c++) {
                let wv = w_tile[(tn + 16u * c) * TILE_STRIDE + kk];
                acc[c] += x0 * wv;
                acc[4u + c] += x1 * wv;
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 2u; r++) {
        let row = row0 + tm + r;
        for (var c = 0u; c < 4u; c++) {
            let n = col0 + tn + 16u * c;
            if row < p.m && n < p.n {
                out[row * p.n + n] = epilogue(n, acc[4u * r + c]);
            }
        }
    }
}

// Grid: one invocation per 8 values of an output row, 256 per workgroup, folded into x and y.
@compute @workgroup_size(256)
fn gather_stored(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let units = (gp.dim + 7u) / 8u;
    let u = (wid.y * groups.x + wid.x) * WG + lid;
    if u >= gp.num_ids * units {
        return;
    }
    let i = u / units;
    let j = (u % units) * 8u;
    let id = in2[i];
    var v = Eight(vec4<f32>(0.0), vec4<f32>(0.0));
    if id < gp.vocab {
        v = dequant8(1u, id * row_bytes(gp.dim), j, gp.dim);
    }
    let at = i * gp.dim + j;
    for (var e = 0u; e < 4u; e++) {
        if j + e < gp.dim {
            rows_out[at + e] = v.lo[e];
        }
        if j + 4u + e < gp.dim {
            rows_out[at + 4u + e] = v.hi[e];
        }
    }
}
