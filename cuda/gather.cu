// Row gather (embedding lookup). Twin of shaders/gather.wgsl; params in params.cuh.
//
// One warp per id: the lanes copy the row together, 16 bytes each per step when the row
// length keeps rows aligned, so every access is a full coalesced line. An id outside the
// table gives a zero row, as on every backend (a kernel cannot fail).
#include "params.cuh"

#define GATHER_THREADS 256
#define GATHER_ROWS_PER_BLOCK (GATHER_THREADS / WARP_SIZE)

// Grid: ceil(num_ids / 8) blocks of 256 threads (capped by the host; blocks stride on).
extern "C" __global__ void __launch_bounds__(GATHER_THREADS)
    gather(const GatherParams p, const float* __restrict__ table, const u32* __restrict__ ids,
           float* __restrict__ out) {
    const u32 lane = threadIdx.x % WARP_SIZE;
    const u32 dim = p.dim;
    const bool vec = dim % 4 == 0 && aligned16(table) && aligned16(out);
    for (u32 r = blockIdx.x * GATHER_ROWS_PER_BLOCK + threadIdx.x / WARP_SIZE; r < p.num_ids;
         r += gridDim.x * GATHER_ROWS_PER_BLOCK) {
        const u32 id = ids[r];
        float* dst = out + (u64)r * dim;
        const float* src = table + (u64)id * dim;
        const bool hit = id < p.vocab;
        if (vec) {
            float4* d4 = reinterpret_cast<float4*>(dst);
            const float4* s4 = reinterpret_cast<const float4*>(src);
            for (u32 i = lane; i < dim / 4; i += WARP_SIZE) d4[i] = hit ? s4[i] : make_float4(0.f, 0.f, 0.f, 0.f);
        } else {
            for (u32 i = lane; i < dim; i += WARP_SIZE) dst[i] = hit ? src[i] : 0.0f;
        }
    }
}
