// Reductions over the last axis: layer norm, RMS norm, softmax, L2 normalize.
// Twin of shaders/norm.wgsl; params in params.cuh.
//
// A row is reduced by a team of threads: one warp for rows up to NORM_WARP_COLS wide (the
// common case: hidden sizes of 384..1024), where the reduction is a handful of shuffles and
// no shared memory or block barrier is involved; the whole 256-thread block for wider rows
// (vocabulary-sized softmax), adding one shared-memory step across the 8 warps. The host uses
// the same rule (norm_team) for the grid: rows / (256 / team) blocks.
//
// Rows are read with float4 loads when the row length keeps them aligned. Each row is read
// from global memory more than once (statistics, then output); the second read hits L1/L2,
// which is cheaper than holding an arbitrary-length row in registers.
#include "params.cuh"

#define NORM_THREADS 256
#define NORM_WARP_COLS 1024

struct NormTeam {
    u32 size;   // threads per row: 32 or NORM_THREADS
    u32 rank;   // this thread's index within its team
    u32 row;    // the row this thread works on (may be >= rows: idle)
};

__device__ __forceinline__ NormTeam norm_team(u32 cols) {
    NormTeam t;
    t.size = cols <= NORM_WARP_COLS ? WARP_SIZE : NORM_THREADS;
    const u32 teams_per_block = NORM_THREADS / t.size;
    t.rank = threadIdx.x % t.size;
    t.row = blockIdx.x * teams_per_block + threadIdx.x / t.size;
    return t;
}

// Reduces across the team. Every thread of the block must call it (it may use a barrier).
template <bool IS_MAX>
__device__ __forceinline__ float team_reduce(float v, const NormTeam& t) {
    __shared__ float scratch[NORM_THREADS / WARP_SIZE];
    v = IS_MAX ? warp_max(v) : warp_sum(v);
    if (t.size == WARP_SIZE) return v;
    const u32 warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    __syncthreads();  // scratch may still be read from the previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < NORM_THREADS / WARP_SIZE ? scratch[lane] : (IS_MAX ? neg_inf() : 0.0f);
    return IS_MAX ? warp_max(v) : warp_sum(v);
}

// Calls f(i, value) for this thread's share of the row, 4 elements per step when aligned.
template <typename F>
__device__ __forceinline__ void for_row(const float* __restrict__ row, u32 cols, const NormTeam& t, F f) {
    u32 head = 0;
    if (cols % 4 == 0 && aligned16(row)) {
        const float4* r4 = reinterpret_cast<const float4*>(row);
        for (u32 i = t.rank; i < cols / 4; i += t.size) {
            const float4 v = r4[i];
            f(4 * i, v.x);
            f(4 * i + 1, v.y);
            f(4 * i + 2, v.z);
            f(4 * i + 3, v.w);
        }
        head = cols;
    }
    for (u32 i = head + t.rank; i < cols; i += t.size) f(i, row[i]);
}

// out = (x - mean) / sqrt(var + eps) * gamma + beta, var the biased (population) variance,
// computed in two passes as the CPU does (no E[x²] - E[x]² cancellation).
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    layer_norm(const NormParams p, const float* __restrict__ x, const float* __restrict__ gamma,
               const float* __restrict__ beta, float* __restrict__ out) {
    const NormTeam t = norm_team(p.cols);
    const bool live = t.row < p.rows;
    const u32 cols = live ? p.cols : 0;  // idle teams still join the block-wide reductions
    const float* row = x + (u64)t.row * p.cols;
    float* orow = out + (u64)t.row * p.cols;
    const float n = (float)p.cols;

    float sum = 0.0f;
    for_row(row, cols, t, [&](u32, float v) { sum += v; });
    const float mean = team_reduce<false>(sum, t) / n;

    float sq = 0.0f;
    for_row(row, cols, t, [&](u32, float v) { sq += (v - mean) * (v - mean); });
    const float var = team_reduce<false>(sq, t) / n;
    const float inv = 1.0f / sqrtf(var + p.eps);

    for_row(row, cols, t, [&](u32 i, float v) { orow[i] = (v - mean) * inv * gamma[i] + beta[i]; });
}

// out = x / sqrt(mean(x²) + eps) * gamma (llama's RMSNorm).
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    rms_norm(const NormParams p, const float* __restrict__ x, const float* __restrict__ gamma, float* __restrict__ out) {
    const NormTeam t = norm_team(p.cols);
    const bool live = t.row < p.rows;
    const u32 cols = live ? p.cols : 0;
    const float* row = x + (u64)t.row * p.cols;
    float* orow = out + (u64)t.row * p.cols;

    float sq = 0.0f;
    for_row(row, cols, t, [&](u32, float v) { sq += v * v; });
    const float inv = 1.0f / sqrtf(team_reduce<false>(sq, t) / (float)p.cols + p.eps);

    for_row(row, cols, t, [&](u32 i, float v) { orow[i] = v * inv * gamma[i]; });
}

// out = exp(x - max) / sum(exp(x - max)): max and sum in one pass with the online rescaling
// (a running max; the sum is rescaled whenever the max grows), then one pass to write.
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    softmax(const NormParams p, const float* __restrict__ x, float* __restrict__ out) {
    const NormTeam t = norm_team(p.cols);
    const bool live = t.row < p.rows;
    const u32 cols = live ? p.cols : 0;
    const float* row = x + (u64)t.row * p.cols;
    float* orow = out + (u64)t.row * p.cols;

    float m = neg_inf(), s = 0.0f;
    for_row(row, cols, t, [&](u32, float v) {
        if (v > m) {
            s = s * expf(m - v);  // expf(-inf) = 0 while s is still 0
            m = v;
        }
        if (m != neg_inf()) s += expf(v - m);  // a -inf logit adds 0 (and no inf - inf)
    });
    const float row_max = team_reduce<true>(m, t);
    // Each thread's partial sum was taken against its own max; bring it to the row's.
    const float scaled = m == neg_inf() ? 0.0f : s * expf(m - row_max);
    const float total = team_reduce<false>(scaled, t);

    for_row(row, cols, t, [&](u32 i, float v) { orow[i] = expf(v - row_max) / total; });
}

// out = x / max(||x||_2, eps) (torch.nn.functional.normalize).
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    l2_normalize(const NormParams p, const float* __restrict__ x, float* __restrict__ out) {
    const NormTeam t = norm_team(p.cols);
    const bool live = t.row < p.rows;
    const u32 cols = live ? p.cols : 0;
    const float* row = x + (u64)t.row * p.cols;
    float* orow = out + (u64)t.row * p.cols;

    float sq = 0.0f;
    for_row(row, cols, t, [&](u32, float v) { sq += v * v; });
    const float norm = fmaxf(sqrtf(team_reduce<false>(sq, t)), p.eps);

    for_row(row, cols, t, [&](u32 i, float v) { orow[i] = v / norm; });
}
