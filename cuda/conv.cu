// conv2d: grouped 2-D convolution over NCHW with symmetric zero padding. Twin of
// shaders/conv.wgsl; params in params.cuh. x [N, C, H, W], w [O, C/groups, KH, KW], optional
// bias [O] and residual [N, O, OH, OW] (null when absent) -> y [N, O, OH, OW].
//
// A thread per output element, grid-stride; neighbouring threads own neighbouring output
// columns, so at stride 1 their input reads coalesce. Each output sums its window in the CPU
// reference's order (input channel, kernel row, kernel column) from zero, adds the bias
// and then the residual (MobileNetV2's skip connection), then clamps if the op says so
// (MobileNetV2's ReLU6). Not tiled: depthwise 3x3 convolutions read 9 inputs per output, where tiling buys
// little; 1x1 pointwise convolutions would gain from a shared-memory (matmul) tile and do
// not have one yet.
#include "params.cuh"

#define CONV_THREADS 256

extern "C" __global__ void __launch_bounds__(CONV_THREADS)
    conv2d(const Conv2dParams p, const float* __restrict__ x, const float* __restrict__ w,
           const float* __restrict__ bias, const float* __restrict__ residual, float* __restrict__ y) {
    const u32 len = p.n * p.o * p.oh * p.ow;
    const u32 cg = p.c / p.groups;
    const u32 og = p.o / p.groups;
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) {
        const u32 ox = i % p.ow;
        const u32 oy = (i / p.ow) % p.oh;
        const u32 o = (i / (p.ow * p.oh)) % p.o;
        const u32 n = i / (p.ow * p.oh * p.o);
        const u32 group = o / og;
        // Signed window origin: padding makes it negative at the borders.
        const int y0 = (int)(oy * p.stride_h) - (int)p.pad_h;
        const int x0 = (int)(ox * p.stride_w) - (int)p.pad_w;
        float acc = 0.0f;
        for (u32 ci = 0; ci < cg; ++ci) {
            const float* chan = x + (u64)(n * p.c + group * cg + ci) * p.h * p.w;
            const float* wk = w + (u64)(o * cg + ci) * p.kh * p.kw;
            for (u32 ky = 0; ky < p.kh; ++ky) {
                const int iy = y0 + (int)ky;
                if (iy < 0 || iy >= (int)p.h) continue;
                const float* row = chan + (u64)iy * p.w;
                for (u32 kx = 0; kx < p.kw; ++kx) {
                    const int ix = x0 + (int)kx;
                    if (ix < 0 || ix >= (int)p.w) continue;
                    acc += wk[ky * p.kw + kx] * row[ix];
                }
            }
        }
        if (p.has_bias) acc += bias[o];
        if (p.has_residual) acc += residual[i];
        if (p.has_clamp) acc = clamp_apply(acc, p.clamp_min, p.clamp_max);
        y[i] = acc;
    }
}
