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
