//! Elementwise ops: unary activations, broadcasting binary arithmetic and casts.

use super::{arity, float};
use crate::graph::{Dim, TensorType};
use crate::tensor::DType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnaryKind {
    Gelu,
    Relu,
    Tanh,
    Sigmoid,
    /// `x · sigmoid(x)` (SiLU, the gate of llama's SwiGLU feed-forward).
    Silu,
}

impl UnaryKind {
    pub const ALL: &'static [UnaryKind] =
        &[UnaryKind::Gelu, UnaryKind::Relu, UnaryKind::Tanh, UnaryKind::Sigmoid, UnaryKind::Silu];
    pub fn code(self) -> u32 {
        self as u32
    }
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryKind::Gelu => gelu(x),
            UnaryKind::Relu => x.max(0.0),
            UnaryKind::Tanh => x.tanh(),
            UnaryKind::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryKind::Silu => x / (1.0 + (-x).exp()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryKind {
    pub const ALL: &'static [BinaryKind] = &[BinaryKind::Add, BinaryKind::Sub, BinaryKind::Mul, BinaryKind::Div];
    pub fn code(self) -> u32 {
        self as u32
    }
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryKind::Add => a + b,
            BinaryKind::Sub => a - b,
            BinaryKind::Mul => a * b,
            BinaryKind::Div => a / b,
        }
    }
}

/// erf, as a rational approximation on [-4, 4] (|error| < 1e-6; erf is ±1 to f32 precision
/// beyond). WGSL has no erf, so every backend uses this same formula and agrees with the CPU.
/// The polynomials are evaluated in Estrin's scheme (powers of x² beside the pairs of terms,
/// not one chain of 14 dependent multiply-adds): GELU over a 16K-element row about 7% faster
/// on a Sapphire Rapids VM (a timing test, not kept).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let y = x * x;
    let y2 = y * y;
    let y4 = y2 * y2;
    let p = (-1.609_603_3e-2 + -2.954_6e-3 * y)
        + (-7.349_906_3e-4 + -5.692_506_4e-5 * y) * y2
        + ((-2.101_024e-6 + 2.770_681_4e-8 * y) + -2.726_142_3e-10 * y2) * y4;
    let q = (-1.426_474e-2 + -7.373_329e-3 * y) + (-1.682_827e-3 + -2.133_740_6e-4 * y) * y2 + -1.456_607_2e-5 * y4;
    x * p / q
}

/// `e^x` in a form the compiler vectorises (libm's `expf` is a call per element): Cody and
/// Waite's reduction `x = n·ln 2 + r`, |r| ≤ ln 2 / 2, a degree-6 polynomial for `e^r`
/// (Estrin's scheme, as in [`erf`]), and `2^n` put into the exponent bits. Relative error
/// below 2e-7 on [-87, 88]; inputs below are clamped there (e^-87 ≈ 1.6e-38, which no softmax
/// weight notices), above to e^88.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    // ln 2 in two parts, so that n·ln2_hi is exact.
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let r2 = r * r;
    let r4 = r2 * r2;
    let p = (0.5 + 1.666_666_5e-1 * r)
        + (4.166_579_6e-2 + 8.333_452e-3 * r) * r2
        + (1.398_199_9e-3 + 1.987_569_1e-4 * r) * r4;
    (p * r2 + r + 1.0) * pow2(n)
}

/// `2^n` for a whole `n` in -126..=127, from n's bits in `n + 1.5·2^23` (exact for |n| <
/// 2^22): integer operations on the bits, which vectorise, where `n as i32` (a saturating
/// conversion) left every lane of [`exp`] to a scalar instruction.
#[inline(always)]
fn pow2(n: f32) -> f32 {
    let biased = (n + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127);
    f32::from_bits(biased << 23)
}

/// The largest of `v` that is not NaN (−∞ if none), as `f32::max` folded over it: in eight
/// lanes, which vectorizes (a maximum does not depend on the order it is taken in; only the
/// sign of a zero could, and `exp(w − max)`, what softmaxes take it for, is the same either
/// way).
#[inline(always)]
pub(crate) fn max_of(v: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = v.chunks_exact(8);
    let mut max = f32::NEG_INFINITY;
    for &x in chunks.remainder() {
        max = max.max(x);
    }
    for chunk in chunks {
        for l in 0..8 {
            lanes[l] = lanes[l].max(chunk[l]);
        }
    }
    for l in lanes {
        max = max.max(l);
    }
    max
}

/// `x ← softmax(x)` over a non-empty row, vectorised: [`exp`], and sums in 16 lanes.
pub fn softmax_in_place(x: &mut [f32]) {
    softmax_scaled_in_place(x, 1.0);
}

/// `x ← softmax(scale · x)` over a non-empty row, as [`softmax_in_place`] (the same bits at
/// scale 1), every pass compiled for the widest ISA level this CPU runs (a loop in a function
/// without target features is compiled for SSE2 whatever the CPU).
pub fn softmax_scaled_in_place(x: &mut [f32], scale: f32) {
    // Three passes (the largest of scale · x; each weight's exp beside the sum of them; the
    // division), the sums in 16 lanes over whole chunks and then the rest, in one order.
    #[inline(always)]
    fn passes(x: &mut [f32], scale: f32) {
        let mut lanes = [f32::NEG_INFINITY; 16];
        let mut chunks = x.chunks_exact(16);
        let mut max = f32::NEG_INFINITY;
        for chunk in &mut chunks {
            lanes.iter_mut().zip(chunk).for_each(|(l, &v)| *l = l.max(v * scale));
        }
        for &v in chunks.remainder() {
            max = max.max(v * scale);
        }
        let max = lanes.iter().fold(max, |m, &l| m.max(l));
        let mut lanes = [0f32; 16];
        let mut chunks = x.chunks_exact_mut(16);
        for chunk in &mut chunks {
            lanes.iter_mut().zip(chunk).for_each(|(l, v)| {
                *v = exp(*v * scale - max);
                *l += *v;
            });
        }
        let rest = chunks.into_remainder();
        rest.iter_mut().for_each(|v| *v = exp(*v * scale - max));
        let sum = lanes.iter().sum::<f32>() + rest.iter().sum::<f32>();
        let inv = 1.0 / sum;
        x.iter_mut().for_each(|v| *v *= inv);
    }
    #[cfg(target_arch = "x86_64")]
    if super::isa::CpuIsa::active() >= super::isa::CpuIsa::Avx512 {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn wide512(x: &mut [f32], scale: f32) {
            passes(x, scale)
        }
        // SAFETY: the CPU has the features `wide512` was compiled for (the active level).
        return unsafe { wide512(x, scale) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::isa::CpuIsa::active().has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        fn wide(x: &mut [f32], scale: f32) {
            passes(x, scale)
        }
        // SAFETY: the CPU has the features `wide` was compiled for (checked just above).
        return unsafe { wide(x, scale) };
    }
    passes(x, scale)
}

/// GELU in its exact (erf) form, as BERT uses: `x/2 · (1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Below this many elements, threads cost more than they save.
pub(crate) const PAR_MIN: usize = 1 << 14;
/// Elements per task of the maps over threads ([`par_map_into`], [`par_zip_into`]).
const PAR_CHUNK: usize = 4096;

/// `f` applied in place, compiled again for AVX2+FMA and for AVX-512 (picked at run
/// time) since release builds target baseline x86-64 (the level from [`super::isa::CpuIsa`]).
pub(crate) fn map_chunk(c: &mut [f32], f: impl Fn(f32) -> f32 + Copy) {
    #[cfg(target_arch = "x86_64")]
    if super::isa::CpuIsa::active() >= super::isa::CpuIsa::Avx512 {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn wide512(c: &mut [f32], f: impl Fn(f32) -> f32) {
            c.iter_mut().for_each(|v| *v = f(*v));
        }
        // SAFETY: the CPU has the features `wide512` was compiled for (the active level).
        return unsafe { wide512(c, f) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::isa::CpuIsa::active().has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        fn wide(c: &mut [f32], f: impl Fn(f32) -> f32) {
            c.iter_mut().for_each(|v| *v = f(*v));
        }
        // SAFETY: the CPU has the features `wide` was compiled for (checked just above).
        return unsafe { wide(c, f) };
    }
    c.iter_mut().for_each(|v| *v = f(*v));
}

/// Kernel params for `unary` and `cast`, mirrored in `shaders/elementwise.wgsl` and
/// `cuda/elementwise.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct UnaryParams {
    pub len: u32,
    /// [`UnaryKind::code`] for `unary`; for `cast`, the source [`DType::code`].
    pub op: u32,
    /// For `cast`, the target [`DType::code`].
    pub to: u32,
    pub _pad: u32,
}

/// Max rank the binary kernels broadcast over (the IR's limit).
pub const MAX_RANK: usize = 8;

/// Kernel params for `binary`: output shape and per-input element strides, 0 where an input
/// broadcasts along that axis.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BinaryParams {
    pub len: u32,
    pub op: u32,
    pub rank: u32,
    pub _pad: u32,
    pub out_shape: [u32; MAX_RANK],
    pub a_strides: [u32; MAX_RANK],
    pub b_strides: [u32; MAX_RANK],
}

fn broadcast_dim(a: &Dim, b: &Dim) -> Option<Dim> {
    match (a, b) {
        _ if a == b => Some(a.clone()),
        (Dim::Fixed(1), other) | (other, Dim::Fixed(1)) => Some(other.clone()),
        _ => None,
    }
}

pub(crate) fn infer_binary(inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
    arity(inputs, 2, 2)?;
    let (a, b) = (&inputs[0], &inputs[1]);
    float(a, "a")?;
    float(b, "b")?;
    let rank = a.rank().max(b.rank());
    let pad = |t: &TensorType| -> Vec<Dim> {
        let mut s = vec![Dim::Fixed(1); rank - t.rank()];
        s.extend(t.shape.iter().cloned());
        s
    };
    let (sa, sb) = (pad(a), pad(b));
    let shape = sa
        .iter()
        .zip(&sb)
        .map(|(x, y)| broadcast_dim(x, y).ok_or_else(|| format!("shapes {a} and {b} do not broadcast")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(vec![TensorType::new(DType::F32, shape)])
}

pub(crate) fn infer_cast(inputs: &[TensorType], to: DType) -> Result<Vec<TensorType>, String> {
    arity(inputs, 1, 1)?;
    let from = inputs[0].dtype;
    let allowed = matches!((from, to), (DType::F32, DType::F16) | (DType::F16, DType::F32) | (DType::U32, DType::F32))
        || from == to;
    if !allowed {
        return Err(format!("cannot cast {from} to {to}"));
    }
    Ok(vec![TensorType::new(to, inputs[0].shape.clone())])
}

/// Row-major element strides of `shape` aligned to the right of a rank-`rank` output, with 0
/// for broadcast axes.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let rank = out.len();
    let mut strides = vec![0; rank];
    let mut stride = 1;
    for i in (0..shape.len()).rev() {
        let axis = rank - shape.len() + i;
        strides[axis] = if shape[i] == 1 && out[axis] != 1 { 0 } else { stride };
        stride *= shape[i];
    }
    strides
}

pub fn binary_params(kind: BinaryKind, a: &[usize], b: &[usize], out: &[usize]) -> BinaryParams {
    let mut p = BinaryParams {
        len: out.iter().product::<usize>() as u32,
        op: kind.code(),
        rank: out.len() as u32,
        _pad: 0,
        out_shape: [1; MAX_RANK],
        a_strides: [0; MAX_RANK],
        b_strides: [0; MAX_RANK],
    };
    let (sa, sb) = (broadcast_strides(a, out), broadcast_strides(b, out));
    for i in 0..out.len() {
        p.out_shape[i] = out[i] as u32;
        p.a_strides[i] = sa[i] as u32;
        p.b_strides[i] = sb[i] as u32;
    }
    p
}

pub fn unary_cpu(kind: UnaryKind, x: &[f32], out: &mut [f32]) {
    par_map_into(out, x, |v| kind.apply(v));
}

pub fn binary_cpu(p: &BinaryParams, a: &[f32], b: &[f32], out: &mut [f32]) {
    let kind = BinaryKind::ALL[p.op as usize];
    let rank = p.rank as usize;
    let same = |s: &[u32; MAX_RANK]| {
        let mut expect = 1u32;
        (0..rank).rev().all(|i| {
            let ok = s[i] == expect;
            expect *= p.out_shape[i];
            ok
        })
    };
    if same(&p.a_strides) && same(&p.b_strides) {
        // Across threads: MobileNetV2's residual adds at batch 1 (24–96 channels of 56² to
        // 14², before they moved into its convolutions) took 87–124 µs in all on one thread,
        // 67–81 on both (tandem alone, runs alternating in the same phase of a 2-core VM).
        return par_zip_into(out, a, b, |x, y| kind.apply(x, y));
    }
    for (i, o) in out.iter_mut().enumerate() {
        let (mut rem, mut ia, mut ib) = (i, 0usize, 0usize);
        for axis in (0..rank).rev() {
            let d = p.out_shape[axis] as usize;
            let idx = rem % d;
            rem /= d;
            ia += idx * p.a_strides[axis] as usize;
            ib += idx * p.b_strides[axis] as usize;
        }
        *o = kind.apply(a[ia], b[ib]);
    }
}

/// Kernel params for `clamp`, mirrored in `shaders/elementwise.wgsl` and `cuda/params.cuh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ClampParams {
    pub len: u32,
    pub _pad: u32,
    pub min: f32,
    pub max: f32,
}

/// `min(max(x, lo), hi)` with NaN kept, as `torch.clamp` (so `lo > hi` gives `hi`).
#[inline(always)]
pub fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    if x.is_nan() { x } else { x.max(lo).min(hi) }
}

pub fn clamp_cpu(p: &ClampParams, x: &[f32], out: &mut [f32]) {
    let (lo, hi) = (p.min, p.max);
    par_map_into(out, x, |v| clamp(v, lo, hi));
}

/// `out[i] = f(x[i])`, across threads when the slice is large: one pass, each element read
/// and written once (a copy then a map in place cost MobileNetV2's ReLU6 layers a quarter of
/// its time).
pub(crate) fn par_map_into(out: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32 + Sync + Copy) {
    let chunk = |(o, x): (&mut [f32], &[f32])| map_into_chunk(o, x, f);
    if out.len() < PAR_MIN {
        let n = out.len();
        chunk((out, &x[..n]));
    } else {
        out.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK)).for_each(chunk);
    }
}

/// `out[i] = f(a[i], b[i])` over the shortest of the three, across threads as
/// [`par_map_into`].
fn par_zip_into(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Copy) {
    let chunk = |(o, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&x, &y))| *o = f(x, y))
    };
    if out.len() < PAR_MIN {
        chunk((out, (a, b)));
    } else {
        out.par_chunks_mut(PAR_CHUNK).zip(a.par_chunks(PAR_CHUNK).zip(b.par_chunks(PAR_CHUNK))).for_each(chunk);
    }
}

/// `out[i] = f(out[i], b[i])` over the shorter of the two, across threads as
/// [`par_map_into`].
pub(crate) fn par_zip_in_place(out: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Copy) {
    let chunk = |(o, b): (&mut [f32], &[f32])| o.iter_mut().zip(b).for_each(|(o, &y)| *o = f(*o, y));
    if out.len() < PAR_MIN {
        chunk((out, b));
    } else {
        out.par_chunks_mut(PAR_CHUNK).zip(b.par_chunks(PAR_CHUNK)).for_each(chunk);
    }
}

/// `out[i] = f(x[i])` over the shorter of the two, compiled again for AVX2+FMA and AVX-512
/// like [`map_chunk`].
pub(crate) fn map_into_chunk(out: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32 + Copy) {
    #[inline(always)]
    fn body(out: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32) {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = f(v));
    }
    #[cfg(target_arch = "x86_64")]
    if super::isa::CpuIsa::active() >= super::isa::CpuIsa::Avx512 {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn wide512(out: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32) {
            body(out, x, f)
        }
        // SAFETY: the CPU has the features `wide512` was compiled for (the active level).
        return unsafe { wide512(out, x, f) };
    }
    #[cfg(target_arch = "x86_64")]
    if super::isa::CpuIsa::active().has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        fn wide(out: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32) {
            body(out, x, f)
        }
        // SAFETY: the CPU has the features `wide` was compiled for (checked just above).
        return unsafe { wide(out, x, f) };
    }
    body(out, x, f)
}

#[cfg(test)]
mod tests {
    /// The vectorisable exp against f64's, across the softmax range and near the clamps.
    #[test]
    fn exp_is_within_2e_7_relative_of_f64() {
        let mut worst = 0f64;
        for i in 0..=2_000_000 {
            let x = -87.0 + 175.0 * i as f32 / 2_000_000.0;
            let want = (x as f64).exp();
            let got = super::exp(x) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        for n in -126..=127 {
            assert_eq!(super::pow2(n as f32), 2f32.powi(n), "2^{n}");
        }
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(-1e30) > 0.0 && super::exp(-1e30) < 2e-38);
        assert!(super::exp(f32::NEG_INFINITY) < 2e-38);
    }

    /// Same-shape operands on both sides of the threads' threshold (the parallel path splits in
    /// chunks of `PAR_CHUNK`, so also a length that leaves a short last chunk), each element
    /// against the op applied to it alone.
    #[test]
    fn same_shape_binary_is_elementwise_at_every_length() {
        use super::{BinaryKind, PAR_CHUNK, PAR_MIN, binary_cpu, binary_params};
        for len in [1, 7, PAR_MIN - 1, PAR_MIN, 3 * PAR_CHUNK + PAR_MIN + 129] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos() * 3.0 - 1.0).collect();
            for &kind in BinaryKind::ALL {
                let shape = [1, len];
                let mut out = vec![f32::NAN; len];
                binary_cpu(&binary_params(kind, &shape, &shape, &shape), &a, &b, &mut out);
                for (i, ((o, &x), &y)) in out.iter().zip(&a).zip(&b).enumerate() {
                    assert_eq!(o.to_bits(), kind.apply(x, y).to_bits(), "{kind:?} at {i} of {len}");
                }
            }
        }
    }
}
