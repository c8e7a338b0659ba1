// Stored-weight kernels: matmul and gather whose weight operand is stored as f16, bf16 or
// GGUF blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K), dequantized here with f32
// arithmetic exactly as runtime/src/weights/quant.rs does on the CPU (every step rounded on
// its own: the _rn intrinsics keep NVCC from fusing a multiply-add the CPU rounds twice).
// Twin of shaders/quant.wgsl; params in params.cuh.
//
// Built once per weight dtype: -DTANDEM_WEIGHT=<DType::code> (launch::Variant::Weight), so
// each build keeps the WGSL entry-point names and the dtype costs no branch.
//
// - matvec_stored: a few rows of activations (decoding). A warp per output (weight row),
//   QMV_COLS per block, for up to QMV_ROWS rows of a: the lanes stride over K eight values at
//   a time, every dequantized value serves all the rows, and a warp reduction sums the lanes.
// - matmul_stored: more rows (prefill). A QMM_TM x QMM_TN output tile per block; K advances
//   QMM_TK at a time, each thread dequantizing 8 values of one weight row into shared memory
//   and loading 4 values of a, then owning 2 x 4 outputs.
// - gather_stored: a thread per 8 values of an output row, grid-stride; ids outside the
//   table give zeros.
//
// Weights are read a byte at a time: the blocks (18, 20, 22, 34, 210 bytes) are not aligned.
#include "params.cuh"

#ifndef TANDEM_WEIGHT
#error "cuda/quant.cu is built once per weight dtype, with -DTANDEM_WEIGHT=<DType::code>"
#endif

// DType::code of each weight type.
#define W_F16 1
#define W_BF16 3
#define W_Q8_0 4
#define W_Q4_0 5
#define W_Q4_1 6
#define W_Q5_0 7
#define W_Q4_K 8
#define W_Q5_K 9
#define W_Q6_K 10

#define QUANT_THREADS 256
#define QMV_COLS 8
#define QMV_ROWS 8
#define QMM_TM 32
#define QMM_TN 64
#define QMM_TK 32
// Row stride of the shared tiles: 33 keeps a column read free of bank conflicts.
#define QMM_STRIDE 33

typedef unsigned char u8;

__device__ __forceinline__ u32 ld_u32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}
__device__ __forceinline__ float ld_f16(const u8* p) { return f16_to_f32((u16)((u32)p[0] | ((u32)p[1] << 8))); }
// bf16 is the top half of an f32.
__device__ __forceinline__ float ld_bf16(const u8* p) {
    return __int_as_float((int)(((u32)p[0] << 16) | ((u32)p[1] << 24)));
}

// Bytes of one weight row of k values.
__device__ __forceinline__ u64 row_bytes(u32 k) {
#if TANDEM_WEIGHT == W_F16 || TANDEM_WEIGHT == W_BF16
    return 2ull * k;
#elif TANDEM_WEIGHT == W_Q8_0
    return (u64)(k / 32) * 34;
#elif TANDEM_WEIGHT == W_Q4_0
    return (u64)(k / 32) * 18;
#elif TANDEM_WEIGHT == W_Q4_1
    return (u64)(k / 32) * 20;
#elif TANDEM_WEIGHT == W_Q5_0
    return (u64)(k / 32) * 22;
#elif TANDEM_WEIGHT == W_Q4_K
    return (u64)(k / 256) * 144;
#elif TANDEM_WEIGHT == W_Q5_K
    return (u64)(k / 256) * 176;
#elif TANDEM_WEIGHT == W_Q6_K
    return (u64)(k / 256) * 210;
#else
#error "TANDEM_WEIGHT is not a stored weight dtype"
#endif
}

#if TANDEM_WEIGHT == W_Q4_K || TANDEM_WEIGHT == W_Q5_K
// The 6-bit scale and min of sub-block s from a Q4_K/Q5_K block's 12 scale bytes (quant.rs
// k_scales).
__device__ __forceinline__ void k_scale_min(const u8* scales, u32 s, u32& sc, u32& mn) {
    if (s < 4) {
        sc = scales[s] & 63u;
        mn = scales[4 + s] & 63u;
    } else {
        sc = (scales[4 + s] & 15u) | ((u32)(scales[s - 4] >> 6) << 4);
        mn = ((u32)scales[4 + s] >> 4) | ((u32)(scales[s] >> 6) << 4);
    }
}
#endif

// Values j..j+8 of the weight row of k values at `row`; j is a multiple of 8. Values at k and
// beyond (f16 and bf16 rows of any length) are 0.
__device__ __forceinline__ void dequant8(const u8* __restrict__ row, u32 j, u32 k, float (&y)[8]) {
#if TANDEM_WEIGHT == W_F16 || TANDEM_WEIGHT == W_BF16
#pragma unroll
    for (u32 i = 0; i < 8; ++i) {
        const u8* at = row + 2ull * (j + i);
#if TANDEM_WEIGHT == W_F16
        y[i] = j + i < k ? ld_f16(at) : 0.0f;
#else
        y[i] = j + i < k ? ld_bf16(at) : 0.0f;
#endif
    }
#elif TANDEM_WEIGHT == W_Q8_0
    // d f16 | 32 x i8; y = q * d.
    const u8* b = row + (u64)(j / 32) * 34;
    const float d = ld_f16(b);
    const u8* q = b + 2 + j % 32;
#pragma unroll
    for (u32 i = 0; i < 8; ++i) y[i] = __fmul_rn((float)(signed char)q[i], d);
#elif TANDEM_WEIGHT == W_Q4_0
    // d f16 | 16 bytes: value o < 16 is the low nibble of byte o, 16 + o the high one;
    // y = d * (q - 8).
    const u8* b = row + (u64)(j / 32) * 18;
    const float d = ld_f16(b);
    const u32 o = j % 32, shift = o >= 16 ? 4 : 0;
    const u8* q = b + 2 + o % 16;
#pragma unroll
    for (u32 i = 0; i < 8; ++i) y[i] = __fmul_rn(d, (float)((int)((q[i] >> shift) & 15u) - 8));
#elif TANDEM_WEIGHT == W_Q4_1
    // d f16 | m f16 | 16 bytes (nibbles as Q4_0); y = d * q + m.
    const u8* b = row + (u64)(j / 32) * 20;
    const float d = ld_f16(b), m = ld_f16(b + 2);
    const u32 o = j % 32, shift = o >= 16 ? 4 : 0;
    const u8* q = b + 4 + o % 16;
#pragma unroll
    for (u32 i = 0; i < 8; ++i) y[i] = __fadd_rn(__fmul_rn(d, (float)((q[i] >> shift) & 15u)), m);
#elif TANDEM_WEIGHT == W_Q5_0
    // d f16 | qh u32 (bit o: fifth bit of value o) | 16 bytes (nibbles as Q4_0);
    // y = d * (q - 16).
    const u8* b = row + (u64)(j / 32) * 22;
    const float d = ld_f16(b);
    const u32 o = j % 32, shift = o >= 16 ? 4 : 0;
    const u32 qh = ld_u32(b + 2) >> o;
    const u8* q = b + 6 + o % 16;
#pragma unroll
    for (u32 i = 0; i < 8; ++i) {
        const u32 v = ((q[i] >> shift) & 15u) | (((qh >> i) & 1u) << 4);
        y[i] = __fmul_rn(d, (float)((int)v - 16));
    }
#elif TANDEM_WEIGHT == W_Q4_K || TANDEM_WEIGHT == W_Q5_K
    // d f16 | dmin f16 | 12 scale bytes | (Q5_K: 32 qh bytes) | 128 bytes: sub-block s (32
    // values) takes the low (s even) or high nibbles of bytes 32 * (s / 2)..; Q5_K's bit s of
    // qh[l] is the fifth bit of value l of sub-block s; y = (d * sc) * q - dmin * m.
#if TANDEM_WEIGHT == W_Q4_K
    const u8* b = row + (u64)(j / 256) * 144;
    const u8* qs = b + 16;
#else
    const u8* b = row + (u64)(j / 256) * 176;
    const u8* qs = b + 48;
#endif
    const u32 i0 = j % 256, s = i0 / 32, l = i0 % 32, shift = 4 * (s % 2);
    u32 sc, mn;
    k_scale_min(b + 4, s, sc, mn);
    const float ds = __fmul_rn(ld_f16(b), (float)sc), dm = __fmul_rn(ld_f16(b + 2), (float)mn);
    const u8* q = qs + 32 * (s / 2) + l;
#pragma unroll
    for (u32 i = 0; i < 8; ++i) {
        u32 v = (q[i] >> shift) & 15u;
#if TANDEM_WEIGHT == W_Q5_K
        v |= (((u32)b[16 + l + i] >> s) & 1u) << 4;
#endif
        y[i] = __fsub_rn(__fmul_rn(ds, (float)v), dm);
    }
#elif TANDEM_WEIGHT == W_Q6_K
    // 128 ql bytes | 64 qh bytes | 16 i8 scales | d f16. In half h (128 values), value
    // 32t + l has low 4 bits from ql[64h + 32(t % 2) + l] (high nibble for t >= 2) and high 2
    // bits from qh[32h + l] >> 2t; y = (d * scale[i / 16]) * (q - 32).
    const u8* b = row + (u64)(j / 256) * 210;
    const u32 i0 = j % 256, h = i0 / 128, t = (i0 % 128) / 32, l = i0 % 32;
    const u8* ql = b + 64 * h + 32 * (t % 2) + l;
    const u8* qh = b + 128 + 32 * h + l;
    const u32 shift = 4 * (t / 2);
    const float ds = __fmul_rn(ld_f16(b + 208), (float)(signed char)b[192 + i0 / 16]);
#pragma unroll
    for (u32 i = 0; i < 8; ++i) {
        const u32 v = ((ql[i] >> shift) & 15u) | ((((u32)qh[i] >> (2 * t)) & 3u) << 4);
        y[i] = __fmul_rn(ds, (float)((int)v - 32));
    }
#endif
}

__device__ __forceinline__ float epilogue(const MatMulParams& p, const float* __restrict__ bias, u32 n, float x) {
    return activate(p.has_bias ? x + bias[n] : x, p.activation);
}

// Grid: (ceil(N / QMV_COLS), ceil(M / QMV_ROWS)); M counts every row of a (the host folds
// a's leading dims into p.m).
extern "C" __global__ void __launch_bounds__(QUANT_THREADS)
    matvec_stored(const MatMulParams p, const float* __restrict__ a, const u8* __restrict__ w,
                  const float* __restrict__ bias, float* __restrict__ out) {
    const u32 lane = threadIdx.x % WARP_SIZE;
    const u32 n = blockIdx.x * QMV_COLS + threadIdx.x / WARP_SIZE;
    const u32 row0 = blockIdx.y * QMV_ROWS;
    const u32 rows = p.m - row0 < QMV_ROWS ? p.m - row0 : QMV_ROWS;
    float acc[QMV_ROWS];
#pragma unroll
    for (u32 r = 0; r < QMV_ROWS; ++r) acc[r] = 0.0f;
    if (n < p.n) {
        const u8* row = w + (u64)n * row_bytes(p.k);
        const u32 units = (p.k + 7) / 8;
        for (u32 u = lane; u < units; u += WARP_SIZE) {
            const u32 j = 8 * u, left = p.k - j;
            float y[8];
            dequant8(row, j, p.k, y);
#pragma unroll
            for (u32 r = 0; r < QMV_ROWS; ++r) {
                if (r < rows) {
                    const float* x = a + (u64)(row0 + r) * p.k + j;
                    float s = 0.0f;
                    if (left >= 8) {
#pragma unroll
                        for (u32 i = 0; i < 8; ++i) s += y[i] * x[i];
                    } else {
                        for (u32 i = 0; i < left; ++i) s += y[i] * x[i];
                    }
                    acc[r] += s;
                }
            }
        }
    }
#pragma unroll
    for (u32 r = 0; r < QMV_ROWS; ++r) {
        const float s = warp_sum(acc[r]);
        if (lane == r && r < rows && n < p.n) out[(u64)(row0 + r) * p.n + n] = epilogue(p, bias, n, s);
    }
}

// Grid: (ceil(N / QMM_TN), ceil(M / QMM_TM)).
extern "C" __global__ void __launch_bounds__(QUANT_THREADS)
    matmul_stored(const MatMulParams p, const float* __restrict__ a, const u8* __restrict__ w,
                  const float* __restrict__ bias, float* __restrict__ out) {
    __shared__ float w_tile[QMM_TN * QMM_STRIDE];
    __shared__ float a_tile[QMM_TM * QMM_STRIDE];
    const u32 t = threadIdx.x;
    const u32 col0 = blockIdx.x * QMM_TN, row0 = blockIdx.y * QMM_TM;
    // Dequantizing: weight row t / 4 of the tile, values 8 * (t % 4).. of the K step.
    const u32 wr = t / 4, wj = 8 * (t % 4), n_w = col0 + wr;
    const u64 w_offset = n_w < p.n ? (u64)n_w * row_bytes(p.k) : 0;
    // Computing: rows tm, tm + 1 and columns tn + 16c of the tile.
    const u32 tm = 2 * (t / 16), tn = t % 16;
    float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    for (u32 k0 = 0; k0 < p.k; k0 += QMM_TK) {
        float y[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        if (n_w < p.n && k0 + wj < p.k) dequant8(w + w_offset, k0 + wj, p.k, y);
#pragma unroll
        for (u32 i = 0; i < 8; ++i) w_tile[wr * QMM_STRIDE + wj + i] = y[i];
#pragma unroll
        for (u32 i = 0; i < 4; ++i) {
            const u32 e = t + i * QUANT_THREADS, r = e / QMM_TK, c = e % QMM_TK;
            const bool inside = row0 + r < p.m && k0 + c < p.k;
            a_tile[r * QMM_STRIDE + c] = inside ? a[(u64)(row0 + r) * p.k + k0 + c] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (u32 kk = 0; kk < QMM_TK; ++kk) {
            const float x0 = a_tile[tm * QMM_STRIDE + kk], x1 = a_tile[(tm + 1) * QMM_STRIDE + kk];
#pragma unroll
            for (u32 c = 0; c < 4; ++c) {
                const float wv = w_tile[(tn + 16 * c) * QMM_STRIDE + kk];
                acc[0][c] += x0 * wv;
                acc[1][c] += x1 * wv;
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (u32 r = 0; r < 2; ++r) {
        const u32 row = row0 + tm + r;
#pragma unroll
        for (u32 c = 0; c < 4; ++c) {
            const u32 n = col0 + tn + 16 * c;
            if (row < p.m && n < p.n) out[(u64)row * p.n + n] = epilogue(p, bias, n, acc[r][c]);
        }
    }
}

// Grid: ceil(units / QUANT_THREADS) blocks (capped by the host; blocks stride on), a unit
// being 8 values of an output row.
extern "C" __global__ void __launch_bounds__(QUANT_THREADS)
    gather_stored(const GatherParams p, const u8* __restrict__ table, const u32* __restrict__ ids,
                  float* __restrict__ out) {
    const u32 units = (p.dim + 7) / 8;
    const u64 total = (u64)p.num_ids * units;
    for (u64 u = (u64)blockIdx.x * blockDim.x + threadIdx.x; u < total; u += (u64)gridDim.x * blockDim.x) {
        const u32 i = (u32)(u / units), j = (u32)(u % units) * 8;
        const u32 id = ids[i];
        float y[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        if (id < p.vocab) dequant8(table + (u64)id * row_bytes(p.dim), j, p.dim, y);
        float* dst = out + (u64)i * p.dim + j;
#pragma unroll
        for (u32 e = 0; e < 8; ++e) {
            if (j + e < p.dim) dst[e] = y[e];
        }
    }
}
