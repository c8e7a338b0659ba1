// Fused multi-head scaled dot-product attention over packed sequences, flash style: scores
// are computed a key block at a time and folded into a running (max, sum, output) per query
// row with the online softmax, so no tokens x tokens matrix exists anywhere. Twin of
// shaders/attention.wgsl; params in params.cuh; semantics in runtime/src/ops/attention.rs.
//
// q [tokens, heads*d], k and v [kv_tokens, kv_heads*d], a u32 table [seqs, 2] (start, len:
// self-attention, kv rows = query rows) or [seqs, 4] (q_start, q_len, kv_start, kv_len: the
// queries are the last q_len positions of those kv rows, a decoder's KV cache).
// Head h reads columns h*d..(h+1)*d in place; grouped-query heads share kv head
// h / (heads / kv_heads). A query attends to its sequence's kv rows (and with `causal` only
// to those at or before its own position, past + i). Rows in no sequence are zeroed by the
// host (a memset before the launch), since no block is responsible for them.
//
// One source, three element layouts, chosen when NVRTC compiles it: f32 by default, f16
// storage with TANDEM_F16 (q, k, v and out f16), and f32 q and out over an f16 KV cache with
// TANDEM_F16_KV (k, v and kv_write's cache f16). Everything inside is f32.
//
// Work split: a block takes a tile of 16 query rows of one sequence and one head; grid
// (tiles, heads), where the tiles of all sequences are numbered one after the other (the
// host cannot size the grid per sequence: segments live on the device). Blocks find their
// tile with a warp-wide scan of the segment lengths, and stride on by gridDim.x, so any
// segment layout is covered. Each of the 4 warps owns 4 query rows; per block of 32 keys,
// lane j computes the scores of key j against the warp's rows (dot products read from shared
// memory 16 bytes at a time), the warp reduces max and sum with shuffles, and then each lane
// accumulates output dims lane, lane+32, ... from the probabilities and V in shared memory.
#include "params.cuh"

#define ATT_THREADS 128
#define ATT_WARPS (ATT_THREADS / WARP_SIZE)
#define ATT_ROWS 4                       // query rows per warp
#define ATT_BQ 16                        // query rows per tile (the host sizes the grid by it)
#define ATT_BK 32                        // keys per step: one per lane
#define ATT_MAX_D 128                    // largest head dim (the host refuses larger)
#define ATT_DW (ATT_MAX_D / WARP_SIZE)   // output dims per lane
#define ATT_KSTRIDE (ATT_MAX_D + 4)      // 16-byte aligned rows; lanes reading different keys
                                         // at one column fall in different banks
#define ATT_LOG2E 1.4426950408889634f
#define ATT_NO_TILE 0xffffffffu
#define KV_WRITE_THREADS 256             // threads per kv_write block (the host launches this many)
static_assert(ATT_BQ == ATT_WARPS * ATT_ROWS, "a tile is every warp's rows");

#if defined(TANDEM_F16)
typedef u16 q_t;   // q and out
typedef u16 kv_t;  // k, v and a KV cache
#elif defined(TANDEM_F16_KV)
typedef float q_t;
typedef u16 kv_t;
#else
typedef float q_t;
typedef float kv_t;
#endif
__device__ __forceinline__ float load_elem(const u16* p) { return f16_to_f32(*p); }
__device__ __forceinline__ float load_elem(const float* p) { return *p; }
__device__ __forceinline__ void store_elem(u16* p, float v) { *p = f32_to_f16(v); }
__device__ __forceinline__ void store_elem(float* p, float v) { *p = v; }
// 16 bytes of elements, widened and scaled into v (8 halves or 4 floats).
__device__ __forceinline__ void load_vec16(const u16* s, float scale, float* v) {
    const uint4 w = *reinterpret_cast<const uint4*>(s);
    const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const float2 f = unpack_f16x2(ws[j]);
        v[2 * j] = f.x * scale;
        v[2 * j + 1] = f.y * scale;
    }
}
__device__ __forceinline__ void load_vec16(const float* s, float scale, float* v) {
    const float4 w = *reinterpret_cast<const float4*>(s);
    v[0] = w.x * scale;
    v[1] = w.y * scale;
    v[2] = w.z * scale;
    v[3] = w.w * scale;
}

struct AttentionSmem {
    float q[ATT_BQ][ATT_MAX_D];       // the tile's query rows, pre-scaled by scale*log2(e)
    float k[ATT_BK][ATT_KSTRIDE];     // the current key block
    float v[ATT_BK][ATT_MAX_D];       // the current value block
    float p[ATT_BQ][ATT_BK];          // probabilities of the current key block, per query row
    u32 tile_seq;                     // the sequence of the block's current tile (or ATT_NO_TILE)
    u32 tile_first;                   // its first query row, relative to the sequence start
    u32 total_tiles;
};

__device__ __forceinline__ u32 seq_tiles(const u32* __restrict__ table, u32 cols, u32 s, u32 tokens) {
    const SeqRows r = seq_rows(table, cols, s, tokens, 0xffffffffu);
    return (r.q_end - r.q_start + ATT_BQ - 1) / ATT_BQ;
}

// Warp 0 numbers the tiles of all sequences in order and finds tile `tile`: each lane counts
// the tiles of a contiguous chunk of sequences, an inclusive scan across lanes gives every
// chunk's first tile, and the lane whose chunk holds `tile` walks its chunk to find it.
__device__ void locate_tile(const u32* __restrict__ segments, u32 cols, u32 num_seqs, u32 tokens, u32 tile,
                            AttentionSmem& sm) {
    const u32 lane = threadIdx.x % WARP_SIZE;
    const u32 per = (num_seqs + WARP_SIZE - 1) / WARP_SIZE;
    const u32 begin = lane * per < num_seqs ? lane * per : num_seqs;
    const u32 end = begin + per < num_seqs ? begin + per : num_seqs;
    u32 count = 0;
    for (u32 s = begin; s < end; ++s) count += seq_tiles(segments, cols, s, tokens);
    u32 incl = count;
#pragma unroll
    for (int off = 1; off < WARP_SIZE; off <<= 1) {
        const u32 n = __shfl_up_sync(FULL_MASK, incl, off);
        if (lane >= (u32)off) incl += n;
    }
    const u32 total = __shfl_sync(FULL_MASK, incl, WARP_SIZE - 1);
    if (lane == 0) {
        sm.total_tiles = total;
        sm.tile_seq = ATT_NO_TILE;
    }
    __syncwarp();
    const u32 excl = incl - count;
    if (tile >= excl && tile < incl) {
        u32 first = excl;
        for (u32 s = begin; s < end; ++s) {
            const u32 n = seq_tiles(segments, cols, s, tokens);
            if (tile < first + n) {
                sm.tile_seq = s;
                sm.tile_first = (tile - first) * ATT_BQ;
                break;
            }
            first += n;
        }
    }
}

// dst[r][c] = src[(row0 + r) * ld + col0 + c] * scale for r < nvalid and c < d, and 0 for
// nvalid <= r < nrows or d <= c < d4 (d rounded up to 4, so the score loop can step by 4).
// 16-byte loads when d keeps every row's slice aligned.
template <int STRIDE, typename T>
__device__ __forceinline__ void load_rows(float* dst, const T* __restrict__ src, u64 row0, u32 nvalid, u32 nrows,
                                          u32 ld, u32 col0, u32 d, u32 d4, float scale) {
    constexpr u32 ATT_VEC = 16 / sizeof(T);  // elements per 16-byte load
    if (d % ATT_VEC == 0 && aligned16(src)) {
        const u32 units = d / ATT_VEC;
        for (u32 i = threadIdx.x; i < nrows * units; i += ATT_THREADS) {
            const u32 r = i / units, c = (i % units) * ATT_VEC;
            float v[ATT_VEC];
            if (r < nvalid) {
                load_vec16(src + (row0 + r) * ld + col0 + c, scale, v);
            } else {
#pragma unroll
                for (int j = 0; j < ATT_VEC; ++j) v[j] = 0.0f;
            }
#pragma unroll
            for (int j = 0; j < ATT_VEC; j += 4)
                *reinterpret_cast<float4*>(dst + r * STRIDE + c + j) = make_float4(v[j], v[j + 1], v[j + 2], v[j + 3]);
        }
    } else {
        for (u32 i = threadIdx.x; i < nrows * d4; i += ATT_THREADS) {
            const u32 r = i / d4, c = i % d4;
            dst[r * STRIDE + c] = (r < nvalid && c < d) ? load_elem(src + (row0 + r) * ld + col0 + c) * scale : 0.0f;
        }
    }
}

// Grid (tiles, heads), 128 threads. See the top of the file.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attention(const AttentionParams p, const q_t* __restrict__ q, const kv_t* __restrict__ k,
              const kv_t* __restrict__ v, const u32* __restrict__ segments, q_t* __restrict__ out) {
    __shared__ __align__(16) AttentionSmem sm;
    const u32 lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const u32 h = blockIdx.y;
    const u32 d = p.head_dim;
    if (h >= p.num_heads || d == 0 || d > ATT_MAX_D || p.num_kv_heads == 0) return;  // uniform per block
    const u32 kvh = h / (p.num_heads / p.num_kv_heads);
    const u32 qw = p.num_heads * d, kw = p.num_kv_heads * d;
    const u32 d4 = (d + 3) & ~3u;
    const float qscale = p.scale * ATT_LOG2E;  // scores in log2 units: exp2f below

    for (u32 tile = blockIdx.x;; tile += gridDim.x) {
        __syncthreads();  // the previous tile is done with shared memory
        if (warp == 0) locate_tile(segments, p.table_cols, p.num_seqs, p.tokens, tile, sm);
        __syncthreads();
        if (tile >= sm.total_tiles) break;
        if (sm.tile_seq == ATT_NO_TILE) continue;  // unreachable when the scan is consistent
        const SeqRows sr = seq_rows(segments, p.table_cols, sm.tile_seq, p.tokens, p.kv_tokens);
        const u32 start = sr.q_start;
        const u32 len = sr.q_end - sr.q_start;
        const u32 first = sm.tile_first;
        const u32 rows = len - first < ATT_BQ ? len - first : ATT_BQ;  // valid query rows in the tile
        // Keys are counted from kv_lo. With causal, no row of the tile sees a key past the
        // tile's last row's position (past + first + rows − 1).
        const u32 kv_n = sr.kv_hi - sr.kv_lo;
        const u64 causal_end = (u64)sr.past + first + rows;
        const u32 kv_end = p.causal && causal_end < (u64)kv_n ? (u32)causal_end : kv_n;

        load_rows<ATT_MAX_D>(&sm.q[0][0], q, (u64)start + first, rows, ATT_BQ, qw, h * d, d, d4, qscale);

        float m[ATT_ROWS], l[ATT_ROWS], o[ATT_ROWS][ATT_DW];
#pragma unroll
        for (int r = 0; r < ATT_ROWS; ++r) {
            m[r] = neg_inf();
            l[r] = 0.0f;
#pragma unroll
            for (int i = 0; i < ATT_DW; ++i) o[r][i] = 0.0f;
        }
        const u32 row0 = warp * ATT_ROWS;  // this warp's first row within the tile

        for (u32 kb = 0; kb < kv_end; kb += ATT_BK) {
            const u32 nk = kv_end - kb < ATT_BK ? kv_end - kb : ATT_BK;
            __syncthreads();  // everyone is done with the previous key block (and sm.q is loaded)
            load_rows<ATT_KSTRIDE>(&sm.k[0][0], k, (u64)sr.kv_lo + kb, nk, ATT_BK, kw, kvh * d, d, d4, 1.0f);
            load_rows<ATT_MAX_D>(&sm.v[0][0], v, (u64)sr.kv_lo + kb, nk, ATT_BK, kw, kvh * d, d, d4, 1.0f);
            __syncthreads();

            // Scores of key kb + lane against the warp's rows.
            float s[ATT_ROWS];
#pragma unroll
            for (int r = 0; r < ATT_ROWS; ++r) s[r] = 0.0f;
            for (u32 c = 0; c < d4; c += 4) {
                const float4 kv = *reinterpret_cast<const float4*>(&sm.k[lane][c]);
#pragma unroll
                for (int r = 0; r < ATT_ROWS; ++r) {
                    const float4 qv = *reinterpret_cast<const float4*>(&sm.q[row0 + r][c]);
                    s[r] = fmaf(qv.x, kv.x, fmaf(qv.y, kv.y, fmaf(qv.z, kv.z, fmaf(qv.w, kv.w, s[r]))));
                }
            }

            // Online softmax: fold this block into each row's running max, sum and output.
            const u32 key = kb + lane;
#pragma unroll
            for (int r = 0; r < ATT_ROWS; ++r) {
                const u32 qi = first + row0 + r;  // query index within the sequence
                const bool visible = lane < nk && row0 + r < rows && (!p.causal || (u64)key <= (u64)sr.past + qi);
                const float x = visible ? s[r] : neg_inf();
                const float m_new = fmaxf(m[r], warp_max(x));
                const float pr = visible ? exp2f(x - m_new) : 0.0f;
                // Nothing visible yet (m_new = -inf): keep the (zero) state as it is.
                const float alpha = m_new == neg_inf() ? 1.0f : exp2f(m[r] - m_new);
                l[r] = l[r] * alpha + warp_sum(pr);
                m[r] = m_new;
#pragma unroll
                for (int i = 0; i < ATT_DW; ++i) o[r][i] *= alpha;
                sm.p[row0 + r][lane] = pr;
            }
            __syncwarp();

            // o += p · V over this block's keys; lane owns dims lane + 32*i.
            for (u32 j = 0; j < nk; j += 4) {
                float4 pr[ATT_ROWS];
#pragma unroll
                for (int r = 0; r < ATT_ROWS; ++r) pr[r] = *reinterpret_cast<const float4*>(&sm.p[row0 + r][j]);
#pragma unroll
                for (int i = 0; i < ATT_DW; ++i) {
                    if ((u32)i * WARP_SIZE >= d) break;
                    const u32 c = lane + i * WARP_SIZE;
                    // Rows of sm.v past nk are zero and their p is 0, so a partial step of 4 adds 0.
                    const float v0 = sm.v[j][c], v1 = sm.v[j + 1][c], v2 = sm.v[j + 2][c], v3 = sm.v[j + 3][c];
#pragma unroll
                    for (int r = 0; r < ATT_ROWS; ++r)
                        o[r][i] = fmaf(pr[r].w, v3, fmaf(pr[r].z, v2, fmaf(pr[r].y, v1, fmaf(pr[r].x, v0, o[r][i]))));
                }
            }
        }

#pragma unroll
        for (int r = 0; r < ATT_ROWS; ++r) {
            if (row0 + r >= rows) break;
            const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
            q_t* dst = out + ((u64)start + first + row0 + r) * qw + h * d;
#pragma unroll
            for (int i = 0; i < ATT_DW; ++i) {
                const u32 c = lane + i * WARP_SIZE;
                if (c < d) store_elem(dst + c, o[r][i] * inv);
            }
        }
    }
}

// kv_write: appends new key or value rows to a cache in place (semantics in
// ops::attention::kv_write_cpu; twin of the WGSL kv_write). Row q_start + i of `rows` goes to
// cache row kv_lo + past + i when that is below kv_hi. A block per sequence (grid-stride over
// sequences), threads over the sequence's elements. The rows are f32; an f16 cache
// (TANDEM_F16_KV) gets each value rounded to nearest even.
extern "C" __global__ void kv_write(const KvWriteParams p, const float* __restrict__ rows,
                                    const u32* __restrict__ table, kv_t* __restrict__ cache) {
    const u32 w = p.width;
    for (u32 s = blockIdx.x; s < p.num_seqs; s += gridDim.x) {
        const SeqRows sr = seq_rows(table, 4, s, p.tokens, p.kv_tokens);
        const u32 avail = sr.kv_hi - sr.kv_lo;
        if (sr.past >= avail) continue;
        const u32 q_n = sr.q_end - sr.q_start;
        const u32 n = q_n < avail - sr.past ? q_n : avail - sr.past;  // rows that land inside
        for (u64 e = threadIdx.x; e < (u64)n * w; e += blockDim.x) {
            const u64 i = e / w, c = e % w;
            store_elem(&cache[((u64)sr.kv_lo + sr.past + i) * w + c], rows[((u64)sr.q_start + i) * w + c]);
        }
    }
}
