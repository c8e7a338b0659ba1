// Fused multi-head attention over packed sequences, flash style: softmax(q·kᵀ·scale)·v
// without ever materialising the score matrix in global memory.
//
// q [tokens, heads·d], k and v [kv_tokens, kv_heads·d], and a u32 table sorted by its first
// column: [seqs, 2] (start, length) for packed self-attention (k and v have q's rows), or
// [seqs, 4] (q_start, q_len, kv_start, kv_len) for queries that are the last q_len positions
// of kv rows kv_start .. kv_start + kv_len (a decoder's KV cache). A query attends to its own
// sequence's kv rows (with causal, those up to its own position); a query row in no sequence
// gets zeros. Grouped-query attention: query head h reads kv head h / (heads / kv_heads).
// Ranges are clamped to the tensors exactly as runtime/src/ops/attention.rs (SeqRows) does.
//
// One workgroup per (block of 64 consecutive tokens, head); one invocation per query token,
// holding its query row and its output accumulator in registers (head_dim ≤ 128). Keys and
// values stream through workgroup memory in tiles of 16 tokens that cover the union of the
// block's key ranges; each query skips tiles outside its own range and masks the keys of
// other segments. Per tile a query computes its 16 scores, folds them into a running max
// and sum (online softmax: the accumulator is rescaled by exp(old max − new max) once per
// tile) and adds the weighted value rows. Every invocation reads the same key or value row
// at the same time, which GPUs serve as a broadcast and lavapipe as one vector load
// (measured on lavapipe: ~3.5× faster than 8 queries × 16 keys per workgroup with one score
// per invocation). Rows are stored as zero-padded vec4s, so dot products read four dims per
// load. Workgroup memory: the 8 KiB key/value tile and the block's key ranges.
//
// The KV cache is f32 or f16 (the override constant KV_CACHE, a DType code): k and v are bound
// as words, f32 bits or two f16 halves each (WebGPU's shader-f16 is optional), widened
// exactly as they are read, so the result is the CPU's over the same f16 values.
//
// Mirrors runtime/src/ops/attention.rs (AttentionParams) and cuda/attention.cu.

struct AttentionParams {
    num_seqs: u32,
    tokens: u32,
    num_heads: u32,
    num_kv_heads: u32,
    head_dim: u32,
    causal: u32,
    scale: f32,
    table_cols: u32,
    kv_tokens: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const BQ: u32 = 64u; // queries per workgroup, one per invocation
const BK: u32 = 16u; // keys per tile
const WG: u32 = 64u;
// Head dims in vec4s (head_dim ≤ 128; MAX_HEAD_DIM in runtime/src/backend/wgpu/kernels.rs).
const MAX_D4: u32 = 32u;
// The dtype of k and v, and of kv_write's cache: F32 or F16 (common.wgsl).
override KV_CACHE: u32 = 0u;
// A finite stand-in for −∞: exp(NEG - m) is 0 without any inf − inf = NaN.
const NEG: f32 = -1e30;

@group(0) @binding(0) var<uniform> p: AttentionParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<u32>;
@group(0) @binding(3) var<storage, read> v: array<u32>;
@group(0) @binding(4) var<storage, read> table: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> kv_tile: array<vec4<f32>, 512>; // [BK][d4]
var<workgroup> key_lo: array<u32, 64>;
var<workgroup> key_hi: array<u32, 64>;
var<workgroup> block_lo: u32;
var<workgroup> block_hi: u32;

// The kv rows query row t may attend to, as [lo, hi); empty when t is in no sequence.
// Sequences are sorted by their first query row, so t's is the last one starting at or
// before t. No sum here can wrap: every bound is checked before it is added.
fn visible_keys(t: u32) -> vec2<u32> {
    if t >= p.tokens {
        return vec2<u32>(0u, 0u);
    }
    let cols = p.table_cols;
    var lo = 0u;
    var hi = p.num_seqs;
    while lo < hi {
        let mid = (lo + hi) / 2u;
        if table[cols * mid] <= t {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    if lo == 0u {
        return vec2<u32>(0u, 0u);
    }
    let row = cols * (lo - 1u);
    let q_start = table[row];
    let q_len = table[row + 1u];
    let i = t - q_start;
    if i >= q_len {
        return vec2<u32>(0u, 0u);
    }
    var kv_lo = q_start;
    var kv_hi = q_start + min(q_len, p.tokens - q_start);
    var past = 0u;
    if cols == 4u {
        let kv_len = table[row + 3u];
        kv_lo = min(table[row + 2u], p.kv_tokens);
        kv_hi = kv_lo + min(kv_len, p.kv_tokens - kv_lo);
        if kv_len > q_len {
            past = kv_len - q_len;
        }
    }
    if p.causal != 0u {
        let avail = kv_hi - kv_lo;
        if past < avail {
            kv_hi = kv_lo + past + min(i + 1u, avail - past);
        }
    }
    return vec2<u32>(kv_lo, kv_hi);
}

// Loads BK rows of one head (columns col0 .. col0 + d) of k or v, starting at token `row0`,
// into kv_tile as zero-padded vec4 rows; rows at or past `end` are zeros.
fn load_kv(li: u32, src_is_v: bool, row0: u32, end: u32, width: u32, col0: u32) {
    let d = p.head_dim;
    let d4 = (d + 3u) / 4u;
    let row_len = d4 * 4u;
    for (var e = li; e < BK * row_len; e += WG) {
        let r = e / row_len;
        let c = e % row_len;
        var val = 0.0;
        if row0 + r < end && c < d {
            let at = (row0 + r) * width + col0 + c;
            var word = 0u;
            if KV_CACHE == F16 {
                if src_is_v {
                    word = v[at >> 1u];
                } else {
                    word = k[at >> 1u];
                }
                val = bitcast<f32>(f16_to_f32_bits((word >> ((at & 1u) * 16u)) & 0xffffu));
            } else {
                if src_is_v {
                    word = v[at];
                } else {
                    word = k[at];
                }
                val = bitcast<f32>(word);
            }
        }
        kv_tile[r * d4 + c / 4u][c % 4u] = val;
    }
}

@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let d = p.head_dim;
    let d4 = (d + 3u) / 4u;
    let h = wid.y;
    let kvh = h / (p.num_heads / p.num_kv_heads);
    let q_width = p.num_heads * d;
    let kv_width = p.num_kv_heads * d;
    let t = wid.x * BQ + li;

    let range = visible_keys(t);
    key_lo[li] = range.x;
    key_hi[li] = range.y;
    var qv: array<vec4<f32>, MAX_D4>;
    if t < p.tokens {
        for (var c = 0u; c < d; c++) {
            qv[c / 4u][c % 4u] = q[t * q_width + h * d + c];
        }
    }
    workgroupBarrier();
    if li == 0u {
        var lo = 0xffffffffu;
        var hi = 0u;
        for (var i = 0u; i < BQ; i++) {
            if key_lo[i] < key_hi[i] {
                lo = min(lo, key_lo[i]);
                hi = max(hi, key_hi[i]);
            }
        }
        block_lo = min(lo, hi);
        block_hi = hi;
    }
    // Uniform loads: the key loop below contains barriers, so its bounds must be uniform.
    let first_key = workgroupUniformLoad(&block_lo);
    let end_key = workgroupUniformLoad(&block_hi);

    var m = NEG; // running max of this query's scores
    var l = 0.0; // running sum of exp(score - m)
    var acc: array<vec4<f32>, MAX_D4>;
    var s: array<f32, BK>; // this tile's scores, NEG where masked
    for (var k0 = first_key; k0 < end_key; k0 += BK) {
        load_kv(li, false, k0, end_key, kv_width, kvh * d);
        workgroupBarrier();
        // Loop bounds use d4, not MAX_D4: with a constant bound and a guard, lavapipe runs
        // the guarded-off iterations too (measured 2.4× slower).
        let mine = k0 < range.y && k0 + BK > range.x;
        var tile_max = m;
        if mine {
            for (var j = 0u; j < BK; j++) {
                var sj = NEG;
                if k0 + j >= range.x && k0 + j < range.y {
                    var dot4 = vec4<f32>();
                    for (var c = 0u; c < d4; c++) {
                        dot4 += qv[c] * kv_tile[j * d4 + c];
                    }
                    sj = (dot4.x + dot4.y + dot4.z + dot4.w) * p.scale;
                }
                s[j] = sj;
                tile_max = max(tile_max, sj);
            }
        }
        // Every score is computed, so the key tile can be replaced by values.
        workgroupBarrier();
        load_kv(li, true, k0, end_key, kv_width, kvh * d);
        workgroupBarrier();
        if mine {
            let alpha = exp(m - tile_max);
            m = tile_max;
            l = l * alpha;
            for (var c = 0u; c < d4; c++) {
                acc[c] = acc[c] * alpha;
            }
            for (var j = 0u; j < BK; j++) {
                if s[j] > NEG {
                    let pj = exp(s[j] - tile_max);
                    l += pj;
                    for (var c = 0u; c < d4; c++) {
                        acc[c] += pj * kv_tile[j * d4 + c];
                    }
                }
            }
        }
        // The next tile overwrites kv_tile.
        workgroupBarrier();
    }

    if t < p.tokens {
        var inv = 0.0;
        if l > 0.0 {
            inv = 1.0 / l;
        }
        for (var c = 0u; c < d; c++) {
            out[t * q_width + h * d + c] = acc[c / 4u][c % 4u] * inv;
        }
    }
}

// kv_write: appends new key or value rows to a cache in place. Row q_start + i of the new
// rows goes to cache row kv_start + past + i (past = kv_len − q_len) when that row is inside
// both the sequence's kv rows and the cache. Table [seqs, 4] as above, sorted by q_start; one
// invocation per element of the new rows. An f16 cache (KV_CACHE) gets each value rounded to
// nearest even; two values share a word, and with an odd row width a word can hold one value
// written here and one of another row that must stay, so each half is set by atomics that
// touch only its own bits. Mirrors ops::attention::kv_write_cpu.

struct KvWriteParams {
    num_seqs: u32,
    tokens: u32,
    width: u32,
    kv_tokens: u32,
}

const WG_WRITE: u32 = 256u;

@group(0) @binding(0) var<uniform> wp: KvWriteParams;
@group(0) @binding(1) var<storage, read> new_rows: array<f32>;
@group(0) @binding(2) var<storage, read> write_table: array<u32>;
@group(0) @binding(3) var<storage, read_write> cache: array<atomic<u32>>;

@compute @workgroup_size(256)
fn kv_write(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let e = (wid.y * groups.x + wid.x) * WG_WRITE + li;
    if wp.width == 0u || e >= wp.tokens * wp.width {
        return;
    }
    let r = e / wp.width;
    let c = e % wp.width;
    var lo = 0u;
    var hi = wp.num_seqs;
    while lo < hi {
        let mid = (lo + hi) / 2u;
        if write_table[4u * mid] <= r {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    if lo == 0u {
        return;
    }
    let row = 4u * (lo - 1u);
    let i = r - write_table[row];
    let q_len = write_table[row + 1u];
    let kv_len = write_table[row + 3u];
    if i >= q_len {
        return;
    }
    let kv_lo = min(write_table[row + 2u], wp.kv_tokens);
    let kv_hi = kv_lo + min(kv_len, wp.kv_tokens - kv_lo);
    var past = 0u;
    if kv_len > q_len {
        past = kv_len - q_len;
    }
    // dst = kv_lo + past + i, written only below kv_hi (checked without wrapping).
    if past >= kv_hi - kv_lo || i >= kv_hi - kv_lo - past {
        return;
    }
    let dst = (kv_lo + past + i) * wp.width + c;
    let bits = bitcast<u32>(new_rows[e]);
    if KV_CACHE == F16 {
        let shift = (dst & 1u) * 16u;
        atomicAnd(&cache[dst >> 1u], ~(0xffffu << shift));
        atomicOr(&cache[dst >> 1u], f32_to_f16_bits(bits) << shift);
    } else {
        atomicStore(&cache[dst], bits);
    }
}
