// conv2d: grouped 2-D convolution over NCHW with symmetric zero padding. x [N, C, H, W],
// w [O, C/groups, KH, KW], optional bias [O] and residual [N, O, OH, OW] (each bound to x and
// unread when absent) -> y [N, O, OH, OW].
//
// One invocation per output element, 256 per workgroup, on a 2-D grid of workgroups that the
// kernel flattens back (WebGPU allows 65535 per dimension). Each output sums its window in the
// CPU reference's order (input channel, then kernel row, then kernel column) from zero, adds
// the bias and then the residual (MobileNetV2's skip connection), then clamps if the op says
// so (MobileNetV2's ReLU6). Not tiled: depthwise
// convolutions (MobileNetV2's 3x3s) read 9 inputs per output, where tiling buys little; 1x1
// pointwise convolutions would gain from a shared-memory tile (a matmul) and do not have one
// yet.
//
// Mirrors runtime/src/ops/conv.rs (Conv2dParams) and cuda/conv.cu.

struct Conv2dParams {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    o: u32,
    kh: u32,
    kw: u32,
    oh: u32,
    ow: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    groups: u32,
    has_bias: u32,
    has_clamp: u32,
    clamp_min: f32,
    clamp_max: f32,
    has_residual: u32,
    _pad: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Conv2dParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> residual: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn conv2d(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * groups.x + wid.x) * WG + lid;
    if i >= p.n * p.o * p.oh * p.ow {
        return;
    }
    let ox = i % p.ow;
    let oy = (i / p.ow) % p.oh;
    let o = (i / (p.ow * p.oh)) % p.o;
    let n = i / (p.ow * p.oh * p.o);
    let cg = p.c / p.groups;
    let group = o / (p.o / p.groups);
    // Signed window origin: padding makes it negative at the borders.
    let y0 = i32(oy * p.stride_h) - i32(p.pad_h);
    let x0 = i32(ox * p.stride_w) - i32(p.pad_w);
    var acc = 0.0;
    for (var ci = 0u; ci < cg; ci++) {
        let chan = (n * p.c + group * cg + ci) * p.h * p.w;
        let wbase = (o * cg + ci) * p.kh * p.kw;
        for (var ky = 0u; ky < p.kh; ky++) {
            let iy = y0 + i32(ky);
            if iy < 0 || iy >= i32(p.h) {
                continue;
            }
            let row = chan + u32(iy) * p.w;
            for (var kx = 0u; kx < p.kw; kx++) {
                let ix = x0 + i32(kx);
                if ix < 0 || ix >= i32(p.w) {
                    continue;
                }
                acc += wt[wbase + ky * p.kw + kx] * x[row + u32(ix)];
            }
        }
    }
    if p.has_bias != 0u {
        acc += bias[o];
    }
    if p.has_residual != 0u {
        acc += residual[i];
    }
    if p.has_clamp != 0u {
        acc = clamp_nan_kept(acc, p.clamp_min, p.clamp_max);
    }
    y[i] = acc;
}
