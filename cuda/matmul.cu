// Matrix multiply with a fused epilogue: out = act(a · b + bias), b stored [K, N] or, with
// trans_b, [N, K] (a PyTorch Linear weight). Batched over blockIdx.z; b is shared by the whole
// batch when stride_b is 0. Twin of shaders/matmul.wgsl; params in params.cuh.
//
// lora_matmul (f32 build only): out = act(x · Wᵀ + bias + scale · t · Bᵀ), with t = x · Aᵀ
// ([rows, r]) computed beforehand by `matmul` into a scratch. Its K loop runs over the K
// columns of x and W, then on over the r columns of scale·t and B ([N, r], loaded like a
// transposed b) into the same accumulators, through the same double-buffered pipeline, and
// shares the epilogue.
//
// One source, two element types, chosen when NVRTC compiles it:
// - default: f32 in and out, SIMT FMA. Block tile 128x64, K step 16, 256 threads each
//   computing an 8x4 register tile.
// - TANDEM_F16 defined: f16 storage (a, b, bias and out are f16), f32 accumulation on the
//   tensor cores (mma.sync m16n8k16, sm_80+). Block tile 128x64, K step 32, 4 warps each
//   computing a 64x32 tile.
// Both stage tiles through shared memory with 16-byte global loads and double buffering: the
// next K tile is loaded into registers while the current one is multiplied, then stored to
// the other shared buffer, so one barrier per K step suffices. Tiles hanging over the matrix
// edge are zero-filled, so M, N and K need not be multiples of anything; the 16-byte path is
// taken when the row length keeps rows aligned, else the tile is loaded element by element.
#include "params.cuh"

#define MM_BM 128
#define MM_BN 64

#ifndef TANDEM_F16

#define MM_BK 16
#define MM_THREADS 256
#define MM_TM 8  // rows per thread
#define MM_TN 4  // columns per thread
#define MM_PAD 4 // keeps float4 alignment and halves bank conflicts of the transposing stores

struct MatMulSmem {
    float a[2][MM_BK][MM_BM + MM_PAD];  // a tile, transposed: a[k][m]
    float b[2][MM_BK][MM_BN + MM_PAD];  // b tile as b[k][n] whatever the storage order
};

// The next K tile of a and b, held in registers between the global load and the shared store.
struct MatMulStage {
    float4 a[2];
    float4 b;
};

__device__ __forceinline__ float4 load4(const float* __restrict__ base, u32 row, u32 col, u32 rows, u32 cols,
                                        u32 ld, bool vec) {
    if (vec) {
        // cols % 4 == 0 and col % 4 == 0: the 4 elements are all in or all out
        if (row < rows && col < cols) return *reinterpret_cast<const float4*>(base + (u64)row * ld + col);
        return make_float4(0.f, 0.f, 0.f, 0.f);
    }
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = (row < rows && col + i < cols) ? base[(u64)row * ld + col + i] : 0.0f;
    return make_float4(v[0], v[1], v[2], v[3]);
}

// What one K tile multiplies: columns of a against columns of b over an inner length k.
// The main product (a, b over K) and the LoRA term (scale·t, B over r) are both this.
struct MatMulOperands {
    const float* a;  // [m, k]
    const float* b;  // [k, n], or [n, k] with trans_b
    u32 k;
    bool trans_b;
    bool vec_k;  // 16-byte loads along k
    bool vec_n;  // 16-byte loads along n (b as [k, n])
    float scale; // applied to a
};

__device__ __forceinline__ void load_stage(MatMulStage& st, const MatMulParams& p, const MatMulOperands& o, u32 m0,
                                           u32 n0, u32 k0) {
    const u32 tid = threadIdx.x;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const u32 f = tid + j * MM_THREADS;  // 512 float4 = 128 rows x 16 k
        float4 v = load4(o.a, m0 + f / 4, k0 + (f % 4) * 4, p.m, o.k, o.k, o.vec_k);
        st.a[j] = make_float4(o.scale * v.x, o.scale * v.y, o.scale * v.z, o.scale * v.w);
    }
    if (o.trans_b) {
        // b is [N, K]: 64 rows of n x 16 k
        st.b = load4(o.b, n0 + tid / 4, k0 + (tid % 4) * 4, p.n, o.k, o.k, o.vec_k);
    } else {
        // b is [K, N]: 16 rows of k x 64 n
        st.b = load4(o.b, k0 + tid / 16, n0 + (tid % 16) * 4, o.k, p.n, p.n, o.vec_n);
    }
}

__device__ __forceinline__ void store_stage(MatMulSmem& sm, int buf, const MatMulStage& st, bool trans_b) {
    const u32 tid = threadIdx.x;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const u32 f = tid + j * MM_THREADS;
        const u32 r = f / 4, kc = (f % 4) * 4;
        sm.a[buf][kc + 0][r] = st.a[j].x;
        sm.a[buf][kc + 1][r] = st.a[j].y;
        sm.a[buf][kc + 2][r] = st.a[j].z;
        sm.a[buf][kc + 3][r] = st.a[j].w;
    }
    if (trans_b) {
        const u32 nr = tid / 4, kc = (tid % 4) * 4;
        sm.b[buf][kc + 0][nr] = st.b.x;
        sm.b[buf][kc + 1][nr] = st.b.y;
        sm.b[buf][kc + 2][nr] = st.b.z;
        sm.b[buf][kc + 3][nr] = st.b.w;
    } else {
        *reinterpret_cast<float4*>(&sm.b[buf][tid / 16][(tid % 16) * 4]) = st.b;
    }
}

// Tile t of the K loop: the main product's tiles first, then the LoRA term's; k0 is the
// tile's first column within its own operands.
__device__ __forceinline__ const MatMulOperands& tile_operands(u32 t, u32 main_tiles, const MatMulOperands& product,
                                                              const MatMulOperands& lora, u32& k0) {
    if (t < main_tiles) {
        k0 = t * MM_BK;
        return product;
    }
    k0 = (t - main_tiles) * MM_BK;
    return lora;
}

// The body of both entry points; lora_rank is 0 for a plain matmul (no LoRA tiles).
__device__ __forceinline__ void matmul_f32(const MatMulParams& p, const float* __restrict__ a,
                                           const float* __restrict__ b, const float* __restrict__ bias,
                                           const float* __restrict__ lora_t, const float* __restrict__ lora_b,
                                           u32 lora_rank, float* __restrict__ out) {
    __shared__ __align__(16) MatMulSmem sm;
    const u32 tid = threadIdx.x;
    const u32 tx = tid % 16, ty = tid / 16;  // 16 x 16 threads, each an 8x4 tile
    const u32 m0 = blockIdx.y * MM_BM, n0 = blockIdx.x * MM_BN;
    const u32 main_tiles = (p.k + MM_BK - 1) / MM_BK;
    const u32 k_tiles = main_tiles + (lora_rank + MM_BK - 1) / MM_BK;

    for (u32 batch = blockIdx.z; batch < p.batch; batch += gridDim.z) {
        const float* A = a + (u64)batch * p.stride_a;
        const float* B = b + (u64)batch * p.stride_b;
        const float* T = lora_t + (u64)batch * p.m * lora_rank;
        float* C = out + (u64)batch * p.m * p.n;
        const bool product_vec_k = p.k % 4 == 0 && aligned16(A) && aligned16(B);
        const bool product_vec_n = p.n % 4 == 0 && aligned16(B);
        const MatMulOperands product = {A, B, p.k, p.trans_b != 0, product_vec_k, product_vec_n, 1.0f};
        const bool lora_vec_k = lora_rank % 4 == 0 && aligned16(T) && aligned16(lora_b);
        const MatMulOperands lora = {T, lora_b, lora_rank, true, lora_vec_k, false, p.lora_scale};

        float acc[MM_TM][MM_TN];
#pragma unroll
        for (int i = 0; i < MM_TM; ++i)
#pragma unroll
            for (int j = 0; j < MM_TN; ++j) acc[i][j] = 0.0f;

        MatMulStage st;
        u32 k0;
        if (k_tiles > 0) {
            const MatMulOperands& o = tile_operands(0, main_tiles, product, lora, k0);
            load_stage(st, p, o, m0, n0, k0);
            store_stage(sm, 0, st, o.trans_b);
        }
        __syncthreads();

        for (u32 t = 0; t < k_tiles; ++t) {
            const int cur = t & 1;
            const bool more = t + 1 < k_tiles;
            const MatMulOperands& next = tile_operands(t + 1, main_tiles, product, lora, k0);
            if (more) load_stage(st, p, next, m0, n0, k0);
#pragma unroll
            for (int kk = 0; kk < MM_BK; ++kk) {
                const float4 a0 = *reinterpret_cast<const float4*>(&sm.a[cur][kk][ty * MM_TM]);
                const float4 a1 = *reinterpret_cast<const float4*>(&sm.a[cur][kk][ty * MM_TM + 4]);
                const float4 bv = *reinterpret_cast<const float4*>(&sm.b[cur][kk][tx * MM_TN]);
                const float av[MM_TM] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
                const float bw[MM_TN] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
                for (int i = 0; i < MM_TM; ++i)
#pragma unroll
                    for (int j = 0; j < MM_TN; ++j) acc[i][j] = fmaf(av[i], bw[j], acc[i][j]);
            }
            if (more) store_stage(sm, cur ^ 1, st, next.trans_b);
            __syncthreads();
        }

        // Epilogue: bias, activation, store (16 bytes at a time when the row allows it).
        const u32 col = n0 + tx * MM_TN;
        float bv[MM_TN];
#pragma unroll
        for (int j = 0; j < MM_TN; ++j) bv[j] = (p.has_bias && col + j < p.n) ? bias[col + j] : 0.0f;
        const bool vec_out = p.n % 4 == 0 && aligned16(C);
#pragma unroll
        for (int i = 0; i < MM_TM; ++i) {
            const u32 row = m0 + ty * MM_TM + i;
            if (row >= p.m) break;
            float v[MM_TN];
#pragma unroll
            for (int j = 0; j < MM_TN; ++j) v[j] = activate(acc[i][j] + bv[j], p.activation);
            float* dst = C + (u64)row * p.n + col;
            if (vec_out && col < p.n) {
                *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
            } else {
#pragma unroll
                for (int j = 0; j < MM_TN; ++j)
                    if (col + j < p.n) dst[j] = v[j];
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(MM_THREADS)
    matmul(const MatMulParams p, const float* __restrict__ a, const float* __restrict__ b,
           const float* __restrict__ bias, float* __restrict__ out) {
    // A plain product has no LoRA term, whatever the params say.
    matmul_f32(p, a, b, bias, nullptr, nullptr, 0, out);
}

// x, W, bias as matmul's a, b, bias; t = x · Aᵀ [rows, r]; B [N, r].
extern "C" __global__ void __launch_bounds__(MM_THREADS)
    lora_matmul(const MatMulParams p, const float* __restrict__ x, const float* __restrict__ w,
                const float* __restrict__ bias, const float* __restrict__ lora_t, const float* __restrict__ lora_b,
                float* __restrict__ out) {
    matmul_f32(p, x, w, bias, lora_t, lora_b, p.lora_rank, out);
}

#else  // TANDEM_F16: f16 storage, tensor cores, f32 accumulation

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "the f16 matmul needs sm_80 or newer (mma.sync m16n8k16 with f32 accumulators)"
#endif

#define MMH_BK 32
#define MMH_THREADS 128
#define MMH_WM 64      // warp tile rows (4 m16 tiles)
#define MMH_WN 32      // warp tile columns (4 n8 tiles)
#define MMH_KPAD 8     // 16 bytes: rows stay 16-byte aligned and fragment reads hit 32 banks

struct MatMulSmem {
    u16 a[2][MM_BM][MMH_BK + MMH_KPAD];  // a tile, row-major: a[m][k]
    u16 b[2][MM_BN][MMH_BK + MMH_KPAD];  // b tile, k contiguous per column: b[n][k] (mma "col")
};

struct MatMulStage {
    uint4 a[4];  // 8 f16 each
    uint4 b[2];
};

// 8 consecutive f16 of a row (cols col..col+7), zero beyond the matrix.
__device__ __forceinline__ uint4 load8(const u16* __restrict__ base, u32 row, u32 col, u32 rows, u32 cols, u32 ld,
                                       bool vec) {
    if (vec) {
        if (row < rows && col < cols) return *reinterpret_cast<const uint4*>(base + (u64)row * ld + col);
        return make_uint4(0, 0, 0, 0);
    }
    u32 w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const u32 c = col + 2 * i;
        const u32 lo = (row < rows && c < cols) ? base[(u64)row * ld + c] : 0u;
        const u32 hi = (row < rows && c + 1 < cols) ? base[(u64)row * ld + c + 1] : 0u;
        w[i] = lo | (hi << 16);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

__device__ __forceinline__ void load_stage(MatMulStage& st, const MatMulParams& p, const u16* __restrict__ a,
                                           const u16* __restrict__ b, u32 m0, u32 n0, u32 k0, bool vec_k,
                                           bool vec_n) {
    const u32 tid = threadIdx.x;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const u32 f = tid + j * MMH_THREADS;  // 512 chunks = 128 rows x 4 chunks of 8 k
        st.a[j] = load8(a, m0 + f / 4, k0 + (f % 4) * 8, p.m, p.k, p.k, vec_k);
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const u32 f = tid + j * MMH_THREADS;  // 256 chunks
        if (p.trans_b) {
            st.b[j] = load8(b, n0 + f / 4, k0 + (f % 4) * 8, p.n, p.k, p.k, vec_k);  // 64 n x 4 chunks of k
        } else {
            st.b[j] = load8(b, k0 + f / 8, n0 + (f % 8) * 8, p.k, p.n, p.n, vec_n);  // 32 k x 8 chunks of n
        }
    }
}

__device__ __forceinline__ void store_stage(MatMulSmem& sm, int buf, const MatMulStage& st, bool trans_b) {
    const u32 tid = threadIdx.x;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const u32 f = tid + j * MMH_THREADS;
        *reinterpret_cast<uint4*>(&sm.a[buf][f / 4][(f % 4) * 8]) = st.a[j];
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const u32 f = tid + j * MMH_THREADS;
        if (trans_b) {
            *reinterpret_cast<uint4*>(&sm.b[buf][f / 4][(f % 4) * 8]) = st.b[j];
        } else {
            // 8 values along n at one k: transpose into b[n][k].
            const u32 kr = f / 8, nc = (f % 8) * 8;
            const u32 w[4] = {st.b[j].x, st.b[j].y, st.b[j].z, st.b[j].w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                sm.b[buf][nc + 2 * i][kr] = (u16)(w[i] & 0xffffu);
                sm.b[buf][nc + 2 * i + 1][kr] = (u16)(w[i] >> 16);
            }
        }
    }
}

__device__ __forceinline__ u32 lds32(const u16* p) { return *reinterpret_cast<const u32*>(p); }

extern "C" __global__ void __launch_bounds__(MMH_THREADS)
    matmul(const MatMulParams p, const u16* __restrict__ a, const u16* __restrict__ b, const u16* __restrict__ bias,
           u16* __restrict__ out) {
    __shared__ __align__(16) MatMulSmem sm;
    const u32 tid = threadIdx.x;
    const u32 lane = tid % WARP_SIZE, warp = tid / WARP_SIZE;
    const u32 g = lane / 4, t = lane % 4;  // mma fragment coordinates
    const u32 wm = (warp / 2) * MMH_WM, wn = (warp % 2) * MMH_WN;
    const u32 m0 = blockIdx.y * MM_BM, n0 = blockIdx.x * MM_BN;
    const u32 k_tiles = (p.k + MMH_BK - 1) / MMH_BK;

    for (u32 batch = blockIdx.z; batch < p.batch; batch += gridDim.z) {
        const u16* A = a + (u64)batch * p.stride_a;
        const u16* B = b + (u64)batch * p.stride_b;
        u16* C = out + (u64)batch * p.m * p.n;
        const bool vec_k = p.k % 8 == 0 && aligned16(A) && aligned16(B);
        const bool vec_n = p.n % 8 == 0 && aligned16(B);

        float acc[4][4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

        MatMulStage st;
        if (k_tiles > 0) {
            load_stage(st, p, A, B, m0, n0, 0, vec_k, vec_n);
            store_stage(sm, 0, st, p.trans_b);
        }
        __syncthreads();

        for (u32 kt = 0; kt < k_tiles; ++kt) {
            const int cur = kt & 1;
            const bool more = kt + 1 < k_tiles;
            if (more) load_stage(st, p, A, B, m0, n0, (kt + 1) * MMH_BK, vec_k, vec_n);
#pragma unroll
            for (int kk = 0; kk < MMH_BK; kk += 16) {
                u32 af[4][4], bf[4][2];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const u16* r0 = &sm.a[cur][wm + i * 16 + g][kk + 2 * t];
                    const u16* r8 = &sm.a[cur][wm + i * 16 + g + 8][kk + 2 * t];
                    af[i][0] = lds32(r0);
                    af[i][1] = lds32(r8);
                    af[i][2] = lds32(r0 + 8);
                    af[i][3] = lds32(r8 + 8);
                }
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const u16* c = &sm.b[cur][wn + j * 8 + g][kk + 2 * t];
                    bf[j][0] = lds32(c);
                    bf[j][1] = lds32(c + 8);
                }
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) mma_m16n8k16(acc[i][j], af[i], bf[j]);
            }
            if (more) store_stage(sm, cur ^ 1, st, p.trans_b);
            __syncthreads();
        }

        // Epilogue: each thread holds column pairs (2t, 2t+1) of rows g and g+8 per tile.
        const bool vec_out = p.n % 2 == 0 && (((u64)C) & 3u) == 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const u32 col = n0 + wn + j * 8 + 2 * t;
            const float b0 = (p.has_bias && col < p.n) ? f16_to_f32(bias[col]) : 0.0f;
            const float b1 = (p.has_bias && col + 1 < p.n) ? f16_to_f32(bias[col + 1]) : 0.0f;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const u32 row = m0 + wm + i * 16 + g + h * 8;
                    if (row >= p.m || col >= p.n) continue;
                    const float v0 = activate(acc[i][j][2 * h] + b0, p.activation);
                    const float v1 = activate(acc[i][j][2 * h + 1] + b1, p.activation);
                    u16* dst = C + (u64)row * p.n + col;
                    if (vec_out && col + 1 < p.n) {
                        *reinterpret_cast<u32*>(dst) = pack_f16x2(v0, v1);
                    } else {
                        dst[0] = f32_to_f16(v0);
                        if (col + 1 < p.n) dst[1] = f32_to_f16(v1);
                    }
                }
            }
        }
    }
}

#endif  // TANDEM_F16
