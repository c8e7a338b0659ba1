//! Image ops (MobileNetV2): grouped 2-D convolution over NCHW and global average pooling.
//!
//! `conv2d`: x `[N, C, H, W]`, w `[O, C/groups, KH, KW]`, optional bias `[O]` ->
//! y `[N, O, OH, OW]` with `OH = (H + 2·pad_h − KH) / stride_h + 1` (likewise OW), symmetric
//! zero padding, and input channel `g·C/groups + ci` feeding output channels of group `g`.
//! Each output is `bias[o] + Σ_{ci, ky, kx} w[o, ci, ky, kx] · x[n, c, iy, ix]`, summed in
//! that order (ci, then ky, then kx) from zero, bias last, on every backend.
//!
//! `global_avg_pool`: x `[N, C, H, W]` -> `[N, C]`, the mean over H·W summed in memory order.

use super::{arity, float, rank_is};
use crate::graph::{Dim, TensorType};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Conv2d's params: `[h, w]` pairs. Symmetric zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    pub stride: [u32; 2],
    pub padding: [u32; 2],
    pub groups: u32,
}

/// Kernel params for `conv2d`, mirrored in `shaders/conv.wgsl` and `cuda/params.cuh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Conv2dParams {
    pub n: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub o: u32,
    pub kh: u32,
    pub kw: u32,
    pub oh: u32,
    pub ow: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    pub groups: u32,
    pub has_bias: u32,
    pub _pad: u32,
}

impl Conv2dParams {
    /// Input channels per group.
    pub fn group_in(&self) -> usize {
        (self.c / self.groups.max(1)) as usize
    }
    /// Output channels per group.
    pub fn group_out(&self) -> usize {
        (self.o / self.groups.max(1)) as usize
    }
    /// Elements of the output.
    pub fn len(&self) -> usize {
        [self.n, self.o, self.oh, self.ow].iter().map(|&d| d as usize).product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Output size along one axis, or None when the window never fits or stride is 0.
pub fn out_size(input: u64, kernel: u64, stride: u64, pad: u64) -> Option<u64> {
    let span = (input + 2 * pad).checked_sub(kernel)?;
    Some(span.checked_div(stride)? + 1)
}

impl Conv2d {
    /// Params for concrete shapes x `[N, C, H, W]` and w `[O, C/groups, KH, KW]` (already
    /// validated by [`Conv2d::infer`]).
    pub fn params(&self, x: &[usize], w: &[usize], has_bias: bool) -> Conv2dParams {
        let [n, c, h, wd] = [x[0], x[1], x[2], x[3]].map(|d| d as u32);
        let [o, _, kh, kw] = [w[0], w[1], w[2], w[3]].map(|d| d as u32);
        let axis =
            |i: u32, k: u32, s: u32, p: u32| out_size(i as u64, k as u64, s as u64, p as u64).unwrap_or(0) as u32;
        Conv2dParams {
            n,
            c,
            h,
            w: wd,
            o,
            kh,
            kw,
            oh: axis(h, kh, self.stride[0], self.padding[0]),
            ow: axis(wd, kw, self.stride[1], self.padding[1]),
            stride_h: self.stride[0],
            stride_w: self.stride[1],
            pad_h: self.padding[0],
            pad_w: self.padding[1],
            groups: self.groups,
            has_bias: has_bias as u32,
            _pad: 0,
        }
    }

    pub(crate) fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity(inputs, 2, 3)?;
        let (x, w) = (&inputs[0], &inputs[1]);
        float(x, "x")?;
        float(w, "w")?;
        rank_is(x, 4, "x [N, C, H, W]")?;
        rank_is(w, 4, "w [O, C/groups, KH, KW]")?;
        if self.groups == 0 {
            return Err("groups must be at least 1".into());
        }
        if self.stride.contains(&0) {
            return Err(format!("stride must be at least 1, is {:?}", self.stride));
        }
        let fixed = |d: &Dim, what: &str| d.fixed().ok_or_else(|| format!("{what} must be a fixed size, is {d}"));
        let (c, h, wd) = (fixed(&x.shape[1], "x's C")?, fixed(&x.shape[2], "x's H")?, fixed(&x.shape[3], "x's W")?);
        let o = fixed(&w.shape[0], "w's O")?;
        let ci = fixed(&w.shape[1], "w's C/groups")?;
        let (kh, kw) = (fixed(&w.shape[2], "w's KH")?, fixed(&w.shape[3], "w's KW")?);
        let g = self.groups as u64;
        if c % g != 0 {
            return Err(format!("x's {c} channels are not divisible by groups {g}"));
        }
        if o % g != 0 {
            return Err(format!("w's {o} output channels are not divisible by groups {g}"));
        }
        if ci != c / g {
            return Err(format!("w's second dim must be C/groups = {c}/{g} = {}, is {ci}", c / g));
        }
        if let Some(bias) = inputs.get(2) {
            float(bias, "bias")?;
            rank_is(bias, 1, "bias")?;
            if bias.shape[0] != Dim::Fixed(o) {
                return Err(format!("bias must be [{o}] (one per output channel), is {bias}"));
            }
        }
        let axis = |what: &str, i: u64, k: u64, s: u32, p: u32| match out_size(i, k, s as u64, p as u64) {
            Some(n) if i > 0 && k > 0 => Ok(n),
            _ => Err(format!("{what}: input {i} with padding {p} and kernel {k} leaves no output position")),
        };
        let oh = axis("height", h, kh, self.stride[0], self.padding[0])?;
        let ow = axis("width", wd, kw, self.stride[1], self.padding[1])?;
        Ok(vec![TensorType::new(x.dtype, vec![x.shape[0].clone(), Dim::Fixed(o), Dim::Fixed(oh), Dim::Fixed(ow)])])
    }
}

/// The CPU reference. Threads over (image, output channel) planes; each plane accumulates
/// one weight times a (strided) input row at a time, so the inner loop runs over contiguous
/// output and, at stride 1, contiguous input. 1×1 stride-1 unpadded ungrouped convolutions
/// are a matrix product per image, `y[n] = W · x[n]`, and go through gemm.
pub fn cpu(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let plane = p.oh as usize * p.ow as usize;
    if p.is_empty() || plane == 0 {
        return;
    }
    let (c, o, hw) = (p.c as usize, p.o as usize, p.h as usize * p.w as usize);
    let pointwise =
        p.kh == 1 && p.kw == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0 && p.groups == 1;
    if pointwise {
        for (img, y) in out.chunks_exact_mut(o * plane).enumerate() {
            if let Some(bias) = bias {
                for (row, &b) in y.chunks_exact_mut(plane).zip(bias) {
                    row.fill(b);
                }
            }
            let g =
                super::matmul::Gemm { m: o, n: plane, k: c, trans_b: false, accumulate: bias.is_some(), scale: 1.0 };
            super::matmul::gemm_into(g, w, &x[img * c * hw..][..c * hw], y);
        }
        return;
    }
    out.par_chunks_mut(plane).enumerate().for_each(|(no, y)| conv_plane(p, x, w, bias, no, y));
}

/// One output plane `y[n, o]` (`no = n·O + o`), compiled again for AVX-512 and for AVX2
/// (picked at run time: release builds target baseline x86-64, whose SSE2 is 4 lanes wide).
fn conv_plane(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, no: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::isa::CpuIsa;
        if CpuIsa::active() >= CpuIsa::Avx512 {
            #[target_feature(enable = "avx512f,avx2,fma")]
            fn wide512(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, no: usize, y: &mut [f32]) {
                conv_plane_rows(p, x, w, bias, no, y)
            }
            // SAFETY: the CPU has the features `wide512` was compiled for (the active level).
            return unsafe { wide512(p, x, w, bias, no, y) };
        }
        if CpuIsa::active().has_avx2() {
            #[target_feature(enable = "avx2,fma")]
            fn wide(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, no: usize, y: &mut [f32]) {
                conv_plane_rows(p, x, w, bias, no, y)
            }
            // SAFETY: as above, AVX2 and FMA.
            return unsafe { wide(p, x, w, bias, no, y) };
        }
    }
    conv_plane_rows(p, x, w, bias, no, y)
}

/// The body of [`conv_plane`], arranged so that every kernel tap is one long contiguous
/// multiply-add over the whole plane, whatever the stride and however small the plane (7 × 7
/// in MobileNetV2's last blocks, where per-row loops would be all overhead):
///
/// 1. each input channel is padded with zeros and split into its stride phases: phase
///    (ry, rx) holds the padded rows ry, ry + sh, … and, of each, the columns rx, rx + sw, …
///    (`hq` rows of `wq`);
/// 2. output row oy, column ox, tap (ky, kx) reads padded (oy·sh + ky, ox·sw + kx), which is
///    phase (ky mod sh, kx mod sw) at (oy + ky div sh, ox + kx div sw): with the output laid
///    out `wq` wide (its last columns are thrown away), the tap is `out[t] += w · phase[t +
///    offset]` for t over the whole plane.
#[inline(always)]
fn conv_plane_rows(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, no: usize, y: &mut [f32]) {
    let (o_count, cg) = (p.o as usize, p.group_in());
    let (n, o) = (no / o_count, no % o_count);
    let group = o / p.group_out().max(1);
    let (h, wd, kh, kw) = (p.h as usize, p.w as usize, p.kh as usize, p.kw as usize);
    let (oh, ow, sh, sw) = (p.oh as usize, p.ow as usize, p.stride_h as usize, p.stride_w as usize);
    let (ph, pw) = (p.pad_h as usize, p.pad_w as usize);
    // Phase planes are long enough for the farthest tap of the last output row.
    let wq = (wd + 2 * pw).div_ceil(sw).max(ow + (kw - 1) / sw);
    let hq = (h + 2 * ph).div_ceil(sh).max(oh + (kh - 1) / sh) + 1;
    let plane = hq * wq;
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut scratch = SCRATCH.take();
    scratch.clear();
    scratch.resize(sh * sw * plane + oh * wq, 0.0);
    let (phases, acc) = scratch.split_at_mut(sh * sw * plane);
    acc.fill(bias.map_or(0.0, |b| b[o]));
    // Every input channel writes the same (unpadded) positions of the phases, so the padding
    // stays zero from the fill above.
    for ci in 0..cg {
        let chan = &x[(n * p.c as usize + group * cg + ci) * h * wd..][..h * wd];
        for (iy, row) in chan.chunks_exact(wd).enumerate() {
            let (ry, qy) = ((iy + ph) % sh, (iy + ph) / sh);
            for rx in 0..sw {
                // The first input column in phase rx, and its index there.
                let ix0 = (rx + sw - pw % sw) % sw;
                if ix0 >= wd {
                    continue;
                }
                let dst = &mut phases[(ry * sw + rx) * plane + qy * wq + (ix0 + pw) / sw..];
                if sw == 1 {
                    dst[..wd].copy_from_slice(row);
                } else {
                    for (d, &v) in dst.iter_mut().zip(row[ix0..].iter().step_by(sw)) {
                        *d = v;
                    }
                }
            }
        }
        let wk = &w[(o * cg + ci) * kh * kw..][..kh * kw];
        for ky in 0..kh {
            for kx in 0..kw {
                let wv = wk[ky * kw + kx];
                let phase = &phases[((ky % sh) * sw + kx % sw) * plane..][..plane];
                let tap = &phase[(ky / sh) * wq + kx / sw..][..oh * wq];
                acc.iter_mut().zip(tap).for_each(|(a, &v)| *a += wv * v);
            }
        }
    }
    for (yrow, arow) in y.chunks_exact_mut(ow).zip(acc.chunks_exact(wq)) {
        yrow.copy_from_slice(&arow[..ow]);
    }
    SCRATCH.set(scratch);
}

/// Kernel params for `global_avg_pool`, mirrored in `shaders/pool.wgsl` and
/// `cuda/params.cuh`: `rows` = N·C planes of `cols` = H·W elements.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GlobalPoolParams {
    pub rows: u32,
    pub cols: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

impl GlobalPoolParams {
    pub fn new(x: &[usize]) -> Self {
        GlobalPoolParams { rows: (x[0] * x[1]) as u32, cols: (x[2] * x[3]) as u32, _pad0: 0, _pad1: 0 }
    }
}

pub(crate) fn infer_global_avg_pool(inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    arity(inputs, 1, 1)?;
    let x = &inputs[0];
    float(x, "x")?;
    rank_is(x, 4, "x [N, C, H, W]")?;
    if x.shape[2..].contains(&Dim::Fixed(0)) {
        return Err(format!("x has no pixels to average: {x}"));
    }
    Ok(vec![TensorType::new(x.dtype, vec![x.shape[0].clone(), x.shape[1].clone()])])
}

/// The mean of each plane, summed in memory order.
pub fn global_avg_pool_cpu(p: &GlobalPoolParams, x: &[f32], out: &mut [f32]) {
    let cols = p.cols as usize;
    if cols == 0 {
        out.fill(f32::NAN);
        return;
    }
    for (o, plane) in out.iter_mut().zip(x.chunks_exact(cols)) {
        let mut acc = 0.0f32;
        for &v in plane {
            acc += v;
        }
        *o = acc / cols as f32;
    }
}
