//! Image ops (MobileNetV2): grouped 2-D convolution over NCHW and global average pooling.
//!
//! `conv2d`: x `[N, C, H, W]`, w `[O, C/groups, KH, KW]`, optional bias `[O]`, optional
//! residual `[N, O, OH, OW]` (only with a bias) -> y `[N, O, OH, OW]` with
//! `OH = (H + 2·pad_h − KH) / stride_h + 1` (likewise OW), symmetric zero padding, and input
//! channel `g·C/groups + ci` feeding output channels of group `g`. Each output is
//! `bias[o] + Σ_{ci, ky, kx} w[o, ci, ky, kx] · x[n, c, iy, ix]`, summed in that order (ci,
//! then ky, then kx), then the residual at its position added, then clamped if the op says so
//! ([`Conv2d::clamp`]). The residual is MobileNetV2's skip connection, added as the output is
//! written instead of by an add op that reads both maps and writes a third. (The
//! x86 kernels fuse each multiply-add, and sum a 1 × 1 convolution's last few columns as dot
//! products in vector lanes, `pointwise::tail_columns`; there an output's sum depends only on
//! its position, never on the batch or the threads.)
//!
//! `global_avg_pool`: x `[N, C, H, W]` -> `[N, C]`, the mean over H·W summed in memory order.

mod depthwise;
mod pointwise;
mod simd;
mod stem;

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
    /// `[min, max]`: the output clamped as [`Op::Clamp`](super::Op::Clamp) does, in the same
    /// pass (MobileNetV2's ReLU6 is `[0, 6]`); a separate clamp op reads and writes the whole
    /// map again. Graph files of version 2 have none (`graph::file`).
    pub clamp: Option<[f32; 2]>,
}

/// Kernel params for `conv2d`, mirrored in `shaders/conv.wgsl` and `cuda/params.cuh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
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
    /// 1: clamp the output to `[clamp_min, clamp_max]` ([`Conv2d::clamp`]).
    pub has_clamp: u32,
    pub clamp_min: f32,
    pub clamp_max: f32,
    /// 1: add the fourth input, shaped like the output, before the clamp.
    pub has_residual: u32,
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
    /// The clamp's bounds, if any ([`Conv2d::clamp`]).
    pub fn clamp(&self) -> Option<(f32, f32)> {
        (self.has_clamp != 0).then_some((self.clamp_min, self.clamp_max))
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
    /// validated by [`Conv2d::infer`]) and the number of inputs (2 to 4: bias, residual).
    pub fn params(&self, x: &[usize], w: &[usize], inputs: usize) -> Conv2dParams {
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
            has_bias: (inputs > 2) as u32,
            has_clamp: self.clamp.is_some() as u32,
            clamp_min: self.clamp.map_or(0.0, |[lo, _]| lo),
            clamp_max: self.clamp.map_or(0.0, |[_, hi]| hi),
            has_residual: (inputs > 3) as u32,
            _pad: 0,
        }
    }

    pub(crate) fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity(inputs, 2, 4)?;
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
        let y = TensorType::new(x.dtype, vec![x.shape[0].clone(), Dim::Fixed(o), Dim::Fixed(oh), Dim::Fixed(ow)]);
        if let Some(residual) = inputs.get(3)
            && residual != &y
        {
            return Err(format!("residual must be the output's {y}, is {residual}"));
        }
        Ok(vec![y])
    }
}

/// The CPU reference, by shape: 1 × 1 convolutions (stride 1, no padding or groups) are a
/// matrix product per image, `y[n] = W · x[n]` ([`pointwise`], which adds a residual as it
/// writes); 3 × 3 depthwise ones take [`depthwise`]'s kernels on AVX2/AVX-512 and
/// [`depthwise_3x3_rows`] elsewhere; a first layer with few input channels [`stem`] on
/// AVX2/AVX-512; anything else [`general`]. Where the kernel does not take a residual, it is
/// added (and the clamp applied) in a pass after it.
pub fn cpu(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, residual: Option<&[f32]>, out: &mut [f32]) {
    let plane = p.oh as usize * p.ow as usize;
    if p.is_empty() || plane == 0 {
        return;
    }
    let is_pointwise =
        p.kh == 1 && p.kw == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0 && p.groups == 1;
    if is_pointwise {
        return pointwise::run(p, pointwise::Inputs { x, w, bias, residual }, out);
    }
    let Some(residual) = residual else { return spatial(p, x, w, bias, out) };
    spatial(&Conv2dParams { has_clamp: 0, ..*p }, x, w, bias, out);
    add_residual(p, residual, out);
}

/// `out = clamp(out + residual)`, a pass of its own after a kernel that does not add it.
fn add_residual(p: &Conv2dParams, residual: &[f32], out: &mut [f32]) {
    let clamp = p.clamp();
    super::elementwise::par_zip_in_place(out, residual, |y, r| {
        let v = y + r;
        clamp.map_or(v, |(lo, hi)| super::elementwise::clamp(v, lo, hi))
    });
}

/// [`cpu`] for convolutions other than 1 × 1, without a residual.
fn spatial(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let plane = p.oh as usize * p.ow as usize;
    if depthwise::handles(p) {
        return depthwise::run(p, x, w, bias, out);
    }
    if is_depthwise_3x3(p) {
        out.par_chunks_mut(plane).enumerate().for_each(|(no, y)| depthwise_plane(p, x, w, bias, no, y));
        return;
    }
    if stem::handles(p) {
        return stem::run(p, x, w, bias, out);
    }
    general(p, x, w, bias, out)
}

/// Any convolution, an output plane per task, from every input channel's stride phases
/// ([`Phases`]).
fn general(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let plane = p.oh as usize * p.ow as usize;
    // Every input channel's stride phases, made once and read by all the output planes of its
    // group (made per plane, the first layer of MobileNetV2 copied its three 224 × 224
    // channels 32 times).
    let phases = Phases::of(p);
    let mut all = vec![0.0f32; x.len() / (h_w(p)).max(1) * phases.len()];
    all.par_chunks_mut(phases.len().max(1))
        .zip(x.par_chunks(h_w(p).max(1)))
        .for_each(|(dst, chan)| fill_phases(p, &phases, chan, dst));
    out.par_chunks_mut(plane).enumerate().for_each(|(no, y)| general_plane(p, &phases, &all, w, bias, no, y));
}

fn h_w(p: &Conv2dParams) -> usize {
    p.h as usize * p.w as usize
}

/// Defines `$name`, which runs `$body` (an `#[inline(always)]` fn) compiled again for
/// AVX-512 and for AVX2, picked at run time: release builds target baseline x86-64, whose SSE2
/// is 4 lanes wide. (A closure would not do: it does not inherit a target feature.)
macro_rules! by_isa {
    (fn $name:ident => $body:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                use super::isa::CpuIsa;
                if CpuIsa::active() >= CpuIsa::Avx512 {
                    #[target_feature(enable = "avx512f,avx2,fma")]
                    fn wide512($($arg: $ty),*) {
                        $body($($arg),*)
                    }
                    // SAFETY: the CPU has the features `wide512` was compiled for.
                    return unsafe { wide512($($arg),*) };
                }
                if CpuIsa::active().has_avx2() {
                    #[target_feature(enable = "avx2,fma")]
                    fn wide($($arg: $ty),*) {
                        $body($($arg),*)
                    }
                    // SAFETY: as above, AVX2 and FMA.
                    return unsafe { wide($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

by_isa!(fn depthwise_plane => depthwise_3x3_rows(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, no: usize, y: &mut [f32]));
by_isa!(fn fill_phases => fill_phases_body(p: &Conv2dParams, phases: &Phases, chan: &[f32], dst: &mut [f32]));
by_isa!(fn general_plane => conv_plane_rows(p: &Conv2dParams, phases: &Phases, all: &[f32], w: &[f32], bias: Option<&[f32]>, no: usize, y: &mut [f32]));

/// Whether `p` is a 3 × 3 depthwise convolution with padding 1 and stride 1 or 2 (every
/// depthwise layer of MobileNetV2), which [`depthwise`]'s kernels compute on AVX2/AVX-512 and
/// [`depthwise_3x3_rows`] elsewhere.
fn is_depthwise_3x3(p: &Conv2dParams) -> bool {
    p.groups == p.c
        && p.o == p.c
        && (p.kh, p.kw, p.pad_h, p.pad_w) == (3, 3, 1, 1)
        && p.stride_h == p.stride_w
        && matches!(p.stride_h, 1 | 2)
}

/// One output plane of a 3 × 3 depthwise convolution ([`is_depthwise_3x3`]), row by row: each
/// output row is one pass that sums its nine taps from three input rows held in L1, written
/// once. (The general body makes nine passes over the whole plane, which at MobileNetV2's
/// 112 × 112 planes run from L2 and cost twice as much.)
///
/// Every input row is first padded with a zero column on each side and split into its
/// stride phases (phase r holds padded columns r, r + s, …), so that tap kx of output column
/// ox, padded column ox·s + kx, is element ox + kx / s of phase kx mod s: contiguous loads.
/// Rows above and below the input read a row of zeros.
#[inline(always)]
fn depthwise_3x3_rows(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, no: usize, y: &mut [f32]) {
    let (h, wd, ow, s) = (p.h as usize, p.w as usize, p.ow as usize, p.stride_h as usize);
    let o = no % p.o as usize;
    let chan = &x[no * h * wd..][..h * wd];
    let k: &[f32; 9] = w[o * 9..][..9].try_into().expect("nine taps");
    let bias_o = bias.map_or(0.0, |b| b[o]);
    let (bounds, clamp) = (p.clamp(), super::elementwise::clamp);
    // Output rows are computed in whole blocks of 16 columns (one AVX-512 vector, two AVX2
    // ones) into `wide`, of which the first ow are kept; a phase is long enough for the
    // farthest tap of the last block.
    let wide = ow.next_multiple_of(16);
    let len = wide + 2;
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut scratch = SCRATCH.take();
    scratch.clear();
    // h rows of s phases, then one row of zeros (s phases) for the padding above and below,
    // then the output row.
    scratch.resize((h + 1) * s * len + wide, 0.0);
    let (rows, acc_row) = scratch.split_at_mut((h + 1) * s * len);
    for (row, padded) in chan.chunks_exact(wd).zip(rows.chunks_exact_mut(s * len)) {
        if s == 1 {
            padded[1..=wd].copy_from_slice(row);
        } else {
            // Phase 0 holds padded columns 0, 2, … (input −1, 1, 3, …); phase 1 holds 1, 3, …
            // (input 0, 2, …). The zeros of the fill are the padding.
            // One pass over pairs of input columns (2i, 2i + 1), which vectorises.
            let (even, odd) = padded.split_at_mut(len);
            for ((o, e), pair) in odd.iter_mut().zip(&mut even[1..]).zip(row.chunks_exact(2)) {
                *o = pair[0];
                *e = pair[1];
            }
            if wd % 2 == 1 {
                odd[wd / 2] = row[wd - 1];
            }
        }
    }
    let zeros = h;
    for (oy, out) in y.chunks_exact_mut(ow).enumerate() {
        let row = |ky: usize| {
            let iy = (oy * s + ky).wrapping_sub(1);
            &rows[if iy < h { iy } else { zeros } * s * len..][..s * len]
        };
        let (r0, r1, r2) = (row(0), row(1), row(2));
        let t = |row: usize, kx: usize| &[r0, r1, r2][row][(kx % s) * len + kx / s..][..wide];
        let taps = [t(0, 0), t(0, 1), t(0, 2), t(1, 0), t(1, 1), t(1, 2), t(2, 0), t(2, 1), t(2, 2)];
        // The taps summed from the bias in row-major order, as the general body sums them.
        for (at, acc_out) in acc_row.chunks_exact_mut(16).enumerate() {
            let mut acc = [bias_o; 16];
            for (kv, tap) in k.iter().zip(&taps) {
                let tap: &[f32; 16] = tap[at * 16..][..16].try_into().expect("16 columns");
                for l in 0..16 {
                    acc[l] += kv * tap[l];
                }
            }
            acc_out.copy_from_slice(&acc);
        }
        // Kept columns out, clamped on the way (in its own loop, which vectorises; the clamp
        // applied to `acc` above made the whole loop scalar).
        match bounds {
            Some((lo, hi)) => out.iter_mut().zip(&*acc_row).for_each(|(y, &v)| *y = clamp(v, lo, hi)),
            None => out.copy_from_slice(&acc_row[..ow]),
        }
    }
    SCRATCH.set(scratch);
}

/// How the general body lays out an input channel: padded with zeros and split into its
/// stride phases. Phase (ry, rx) holds the padded rows ry, ry + sh, … and, of each, the
/// columns rx, rx + sw, … (`hq` rows of `wq`). Output row oy, column ox, tap (ky, kx) reads
/// padded (oy·sh + ky, ox·sw + kx), which is phase (ky mod sh, kx mod sw) at (oy + ky div sh,
/// ox + kx div sw): with the output laid out `wq` wide (its last columns thrown away), each
/// tap is `out[t] += w · phase[t + offset]` for t over the whole plane, contiguous whatever
/// the stride and however small the plane (7 × 7 in MobileNetV2's last blocks, where per-row
/// loops would be all overhead), so blocks of 16 consecutive t sum all taps in registers.
struct Phases {
    hq: usize,
    wq: usize,
    /// sh · sw.
    count: usize,
}

impl Phases {
    fn of(p: &Conv2dParams) -> Phases {
        let (h, wd, kh, kw) = (p.h as usize, p.w as usize, p.kh as usize, p.kw as usize);
        let (oh, ow, sh, sw) = (p.oh as usize, p.ow as usize, p.stride_h as usize, p.stride_w as usize);
        let (ph, pw) = (p.pad_h as usize, p.pad_w as usize);
        // Long enough for the farthest tap of the last output row.
        let wq = (wd + 2 * pw).div_ceil(sw).max(ow + (kw - 1) / sw);
        let hq = (h + 2 * ph).div_ceil(sh).max(oh + (kh - 1) / sh) + 1;
        Phases { hq, wq, count: sh * sw }
    }

    fn plane(&self) -> usize {
        self.hq * self.wq
    }

    /// Floats per input channel.
    fn len(&self) -> usize {
        self.plane() * self.count
    }
}

/// Writes channel `chan` (`h × w`) as its phases into `dst` (zeros, [`Phases::len`]).
#[inline(always)]
fn fill_phases_body(p: &Conv2dParams, phases: &Phases, chan: &[f32], dst: &mut [f32]) {
    let (wd, sh, sw) = (p.w as usize, p.stride_h as usize, p.stride_w as usize);
    let (ph, pw) = (p.pad_h as usize, p.pad_w as usize);
    for (iy, row) in chan.chunks_exact(wd).enumerate() {
        let (ry, qy) = ((iy + ph) % sh, (iy + ph) / sh);
        for rx in 0..sw {
            // The first input column in phase rx, and its index there.
            let ix0 = (rx + sw - pw % sw) % sw;
            if ix0 >= wd {
                continue;
            }
            let at = (ry * sw + rx) * phases.plane() + qy * phases.wq + (ix0 + pw) / sw;
            if sw == 1 {
                dst[at..][..wd].copy_from_slice(row);
            } else {
                for (d, &v) in dst[at..].iter_mut().zip(row[ix0..].iter().step_by(sw)) {
                    *d = v;
                }
            }
        }
    }
}

/// One output plane `y[n, o]` (`no = n·O + o`) of any convolution, from the phases of every
/// input channel (`all`, [`Phases`]).
#[inline(always)]
fn conv_plane_rows(
    p: &Conv2dParams,
    phases: &Phases,
    all: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    no: usize,
    y: &mut [f32],
) {
    let (o_count, cg) = (p.o as usize, p.group_in());
    let (n, o) = (no / o_count, no % o_count);
    let group = o / p.group_out().max(1);
    let (kh, kw) = (p.kh as usize, p.kw as usize);
    let (oh, ow, sh, sw) = (p.oh as usize, p.ow as usize, p.stride_h as usize, p.stride_w as usize);
    let (wq, plane, len) = (phases.wq, phases.plane(), phases.len());
    thread_local! {
        static ACC: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    }
    // Every tap (ci, ky, kx) in summation order: its weight and where in `all` its run of
    // oh·wq values starts.
    let taps: Vec<(f32, usize)> = (0..cg)
        .flat_map(|ci| (0..kh).flat_map(move |ky| (0..kw).map(move |kx| (ci, ky, kx))))
        .map(|(ci, ky, kx)| {
            let chan = (n * p.c as usize + group * cg + ci) * len;
            let phase = ((ky % sh) * sw + kx % sw) * plane;
            (w[((o * cg + ci) * kh + ky) * kw + kx], chan + phase + (ky / sh) * wq + kx / sw)
        })
        .collect();
    let mut acc = ACC.take();
    acc.clear();
    acc.resize(oh * wq, 0.0);
    let bias_o = bias.map_or(0.0, |b| b[o]);
    // Blocks of 16 outputs summing every tap in registers (one pass over the output, where a
    // pass per tap read and wrote it cg·kh·kw times); the last few outputs one by one.
    let mut blocks = acc.chunks_exact_mut(16);
    for (at, out) in (&mut blocks).enumerate() {
        let mut block = [bias_o; 16];
        for &(wv, start) in &taps {
            let tap: &[f32; 16] = all[start + at * 16..][..16].try_into().expect("16 values");
            for l in 0..16 {
                block[l] += wv * tap[l];
            }
        }
        out.copy_from_slice(&block);
    }
    let done = (oh * wq) / 16 * 16;
    for (t, out) in blocks.into_remainder().iter_mut().enumerate() {
        *out = taps.iter().fold(bias_o, |sum, &(wv, start)| sum + wv * all[start + done + t]);
    }
    for (yrow, arow) in y.chunks_exact_mut(ow).zip(acc.chunks_exact(wq)) {
        match p.clamp() {
            Some((lo, hi)) => yrow.iter_mut().zip(arow).for_each(|(y, &v)| *y = super::elementwise::clamp(v, lo, hi)),
            None => yrow.copy_from_slice(&arow[..ow]),
        }
    }
    ACC.set(acc);
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

/// The mean of each plane, summed in memory order; planes shared among threads in runs of
/// at least 16K values (MobileNetV2's 1280 planes of 7 × 7 per image).
pub fn global_avg_pool_cpu(p: &GlobalPoolParams, x: &[f32], out: &mut [f32]) {
    let cols = p.cols as usize;
    if cols == 0 {
        out.fill(f32::NAN);
        return;
    }
    let mean = |(o, plane): (&mut f32, &[f32])| *o = plane.iter().fold(0.0f32, |acc, &v| acc + v) / cols as f32;
    let planes_per_task = (super::elementwise::PAR_MIN / cols).max(1);
    out.par_chunks_mut(planes_per_task)
        .zip(x.par_chunks(planes_per_task * cols))
        .for_each(|(o, x)| o.iter_mut().zip(x.chunks_exact(cols)).for_each(mean));
}

/// `len` values uniform in [-1, 1), the same for the same seed: the conv kernels' test inputs.
#[cfg(test)]
fn test_values(len: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}
