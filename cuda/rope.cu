// Rotary position embedding. Twin of shaders/rope.wgsl (same work split: a thread per
// (token, head, pair), and per dim past rot_dims, which is copied); params in params.cuh;
// semantics in runtime/src/ops/rope.rs. sincosf keeps full accuracy (no fast-math).
#include "params.cuh"

#define ROPE_THREADS 256

extern "C" __global__ void __launch_bounds__(ROPE_THREADS)
    rope(const RopeParams p, const float* __restrict__ x, const u32* __restrict__ positions,
         const float* __restrict__ inv_freq, float* __restrict__ out) {
    const u32 pairs = p.rot_dims / 2;
    const u32 n = pairs + (p.head_dim - p.rot_dims);
    if (n == 0) return;
    const u64 total = (u64)p.tokens * p.heads * n;
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (u64)gridDim.x * blockDim.x) {
        const u32 item = (u32)(e % n);
        const u64 head = e / n;  // token * heads + head
        const u64 row = head * p.head_dim;
        if (item >= pairs) {
            const u32 c = p.rot_dims + (item - pairs);
            out[row + c] = x[row + c];
            continue;
        }
        const u32 a = p.half ? item : 2 * item;
        const u32 b = p.half ? item + pairs : 2 * item + 1;
        const float theta = (float)positions[head / p.heads] * inv_freq[item];
        float s, c;
        sincosf(theta, &s, &c);
        const float xa = x[row + a], xb = x[row + b];
        out[row + a] = xa * c - xb * s;
        out[row + b] = xa * s + xb * c;
    }
}
