// Per-sequence pooling of packed rows: mean, first token, max. Twin of shaders/pool.wgsl;
// params in params.cuh.
//
// Grid (num_seqs, ceil(dim / 128)): a block owns one sequence and 128 columns, a thread one
// column, and the thread walks the sequence's rows in order. Neighbouring threads read
// neighbouring columns, so each row step is one coalesced 512-byte read, and the sum runs in
// the CPU's order (row by row), which makes the mean bit-identical to the reference.
// An empty segment gives zeros.
#include "params.cuh"

#define POOL_THREADS 128

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
    pool(const PoolParams p, const float* __restrict__ x, const u32* __restrict__ segments, float* __restrict__ out) {
    const u32 col = blockIdx.y * POOL_THREADS + threadIdx.x;
    for (u32 s = blockIdx.x; s < p.num_seqs; s += gridDim.x) {
        if (col >= p.dim) continue;
        u32 start, end;
        segment_rows(segments, s, p.tokens, start, end);
        float acc = 0.0f;
        if (end > start) {
            const float* c = x + col;
            switch (p.kind) {
                case POOL_MEAN:
                    for (u32 r = start; r < end; ++r) acc += c[(u64)r * p.dim];
                    acc /= (float)(end - start);
                    break;
                case POOL_FIRST: acc = c[(u64)start * p.dim]; break;
                default:  // POOL_MAX
                    acc = c[(u64)start * p.dim];
                    for (u32 r = start + 1; r < end; ++r) acc = fmaxf(acc, c[(u64)r * p.dim]);
                    break;
            }
        }
        out[(u64)s * p.dim + col] = acc;
    }
}

// global_avg_pool: the mean of each [H, W] plane of an NCHW tensor (rows = N·C planes of
// cols = H·W). A thread per plane, grid-stride, summing in memory order like the CPU
// reference; MobileNetV2's planes are 7x7, so a warp per plane would idle most lanes.
extern "C" __global__ void __launch_bounds__(POOL_THREADS)
    global_avg_pool(const GlobalPoolParams p, const float* __restrict__ x, float* __restrict__ out) {
    for (u32 row = blockIdx.x * blockDim.x + threadIdx.x; row < p.rows; row += gridDim.x * blockDim.x) {
        const float* plane = x + (u64)row * p.cols;
        float acc = 0.0f;
        for (u32 i = 0; i < p.cols; ++i) acc += plane[i];
        out[row] = acc / (float)p.cols;
    }
}
