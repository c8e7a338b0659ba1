//! The portable kernels, and the definition of what every level computes: per block, an
//! integer sum of weight quants times activation quants, scaled in f32 by the weight's and
//! the activation's scales; the weight's offset (Q4_0's 8, Q5_0's 16, Q6_K's 32) in integers,
//! its min (Q4_1, Q4_K, Q5_K) against the activation's block sums.

use super::{ActRow, Dot, Job, Kernel, drive};
use crate::tensor::DType;
use crate::weights::quant::f16_to_f32;
use std::ops::Range;

pub(super) fn kernel(dtype: DType) -> Kernel {
    match dtype {
        DType::Q8_0 => run::<Q8_0>,
        DType::Q4_0 => run::<Q4_0>,
        DType::Q4_1 => run::<Q4_1>,
        DType::Q5_0 => run::<Q5_0>,
        DType::Q4_K => run::<Q4K>,
        DType::Q5_K => run::<Q5K>,
        DType::Q6_K => run::<Q6K>,
        other => unreachable!("no integer kernel for {other} (qdot::supports)"),
    }
}

/// # Safety
/// As [`drive`].
unsafe fn run<D: Dot>(job: &Job, rows: Range<usize>) {
    // SAFETY: the caller's contract.
    unsafe { drive::<D>(job, rows) }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// The blocks of one weight row and one activation row's quants, `bytes`/`values` per block.
///
/// # Safety
/// `w` holds `blocks` blocks of `bytes`; the row holds `blocks` blocks of `values` quants.
unsafe fn row_slices<'a>(
    w: *const u8,
    blocks: usize,
    bytes: usize,
    values: usize,
    row: &ActRow,
) -> (&'a [u8], &'a [u8]) {
    // SAFETY: the caller's contract.
    unsafe { (std::slice::from_raw_parts(w, blocks * bytes), std::slice::from_raw_parts(row.qs, blocks * values)) }
}

/// The 32-value block types: the integer sum of a block given its 32 activation quants, the
/// weight's scale, and the factor of the activation's `d·Σq` (the block's min).
trait Block32 {
    const BYTES: usize;
    fn block(b: &[u8], a: &[u8]) -> (i32, f32, f32);
}

/// An activation quant (an i8 stored as u8).
fn act(a: u8) -> i32 {
    i32::from(a as i8)
}

macro_rules! block32_dot {
    ($t:ty) => {
        impl Dot for $t {
            unsafe fn dot<const R: usize>(w: *const u8, blocks: usize, rows: &[ActRow; R]) -> [f32; R] {
                let mut out = [0.0f32; R];
                for (out, row) in out.iter_mut().zip(rows) {
                    // SAFETY: the caller's contract.
                    let (w, a) = unsafe { row_slices(w, blocks, <$t>::BYTES, 32, row) };
                    // SAFETY: the row has 2 meta values per (padded) block.
                    let meta = unsafe { std::slice::from_raw_parts(row.meta, 2 * blocks) };
                    let mut acc = 0.0f32;
                    for ((b, a), meta) in w.chunks_exact(<$t>::BYTES).zip(a.chunks_exact(32)).zip(meta.chunks_exact(2))
                    {
                        let (isum, d, min) = <$t>::block(b, a);
                        acc += (d * meta[0]) * isum as f32 + min * meta[1];
                    }
                    *out = acc;
                }
                out
            }
        }
    };
}

pub(super) struct Q8_0;
impl Block32 for Q8_0 {
    const BYTES: usize = 34;
    fn block(b: &[u8], a: &[u8]) -> (i32, f32, f32) {
        let isum = b[2..34].iter().zip(a).map(|(&q, &a)| i32::from(q as i8) * act(a)).sum();
        (isum, f16_at(b, 0), 0.0)
    }
}
block32_dot!(Q8_0);

pub(super) struct Q4_0;
impl Block32 for Q4_0 {
    const BYTES: usize = 18;
    fn block(b: &[u8], a: &[u8]) -> (i32, f32, f32) {
        let mut isum = 0i32;
        for (j, &q) in b[2..18].iter().enumerate() {
            isum += (i32::from(q & 0x0f) - 8) * act(a[j]) + (i32::from(q >> 4) - 8) * act(a[j + 16]);
        }
        (isum, f16_at(b, 0), 0.0)
    }
}
block32_dot!(Q4_0);

pub(super) struct Q4_1;
impl Block32 for Q4_1 {
    const BYTES: usize = 20;
    fn block(b: &[u8], a: &[u8]) -> (i32, f32, f32) {
        let mut isum = 0i32;
        for (j, &q) in b[4..20].iter().enumerate() {
            isum += i32::from(q & 0x0f) * act(a[j]) + i32::from(q >> 4) * act(a[j + 16]);
        }
        (isum, f16_at(b, 0), f16_at(b, 2))
    }
}
block32_dot!(Q4_1);

pub(super) struct Q5_0;
impl Block32 for Q5_0 {
    const BYTES: usize = 22;
    fn block(b: &[u8], a: &[u8]) -> (i32, f32, f32) {
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let high = |j: usize| (((qh >> j) & 1) << 4) as i32;
        let mut isum = 0i32;
        for (j, &q) in b[6..22].iter().enumerate() {
            isum += (i32::from(q & 0x0f) + high(j) - 16) * act(a[j])
                + (i32::from(q >> 4) + high(j + 16) - 16) * act(a[j + 16]);
        }
        (isum, f16_at(b, 0), 0.0)
    }
}
block32_dot!(Q5_0);

/// The eight 6-bit scales and mins of a Q4_K/Q5_K block: the dequantizer's own.
pub(super) use crate::weights::quant::k_scales;

/// Q4_K and Q5_K: `Σ_s sc_s · Σ q·a` scaled by `d·d_a`, minus `Σ_s m_s · (sums of sub-block
/// s)` scaled by `dmin·d_a`.
fn k_dot<const R: usize>(
    w: *const u8,
    blocks: usize,
    rows: &[ActRow; R],
    bytes: usize,
    quant: impl Fn(&[u8], usize) -> i32,
) -> [f32; R] {
    let mut out = [0.0f32; R];
    for (out, row) in out.iter_mut().zip(rows) {
        // SAFETY: the caller's contract (of `Dot::dot`).
        let (w, a) = unsafe { row_slices(w, blocks, bytes, 256, row) };
        // SAFETY: the row has a d and 16 sums per block.
        let (d_a, bsums) = unsafe {
            (std::slice::from_raw_parts(row.meta, blocks), std::slice::from_raw_parts(row.bsums, 16 * blocks))
        };
        let mut acc = 0.0f32;
        for (((b, a), &d_a), bsums) in
            w.chunks_exact(bytes).zip(a.chunks_exact(256)).zip(d_a).zip(bsums.chunks_exact(16))
        {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, mn) = k_scales(&b[4..16]);
            let (mut isum, mut msum) = (0i32, 0i32);
            for s in 0..8 {
                let sub: i32 = (0..32).map(|l| quant(b, 32 * s + l) * i32::from(a[32 * s + l] as i8)).sum();
                isum += i32::from(sc[s]) * sub;
                msum += i32::from(mn[s]) * (i32::from(bsums[2 * s]) + i32::from(bsums[2 * s + 1]));
            }
            acc += (d * d_a) * isum as f32 - (dmin * d_a) * msum as f32;
        }
        *out = acc;
    }
    out
}

pub(super) struct Q4K;
impl Dot for Q4K {
    unsafe fn dot<const R: usize>(w: *const u8, blocks: usize, rows: &[ActRow; R]) -> [f32; R] {
        k_dot(w, blocks, rows, 144, |b, i| {
            let (s, l) = (i / 32, i % 32);
            i32::from((b[16 + 32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0f)
        })
    }
}

pub(super) struct Q5K;
impl Dot for Q5K {
    unsafe fn dot<const R: usize>(w: *const u8, blocks: usize, rows: &[ActRow; R]) -> [f32; R] {
        k_dot(w, blocks, rows, 176, |b, i| {
            let (s, l) = (i / 32, i % 32);
            let low = (b[48 + 32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0f;
            i32::from(low | (((b[16 + l] >> s) & 1) << 4))
        })
    }
}

/// Q6_K: `Σ_j sc_j · Σ (q − 32)·a` over its 16 sub-blocks of 16, scaled by `d·d_a`.
pub(super) struct Q6K;
impl Dot for Q6K {
    unsafe fn dot<const R: usize>(w: *const u8, blocks: usize, rows: &[ActRow; R]) -> [f32; R] {
        let mut out = [0.0f32; R];
        for (out, row) in out.iter_mut().zip(rows) {
            // SAFETY: the caller's contract.
            let (w, a) = unsafe { row_slices(w, blocks, 210, 256, row) };
            // SAFETY: the row has a d per block.
            let d_a = unsafe { std::slice::from_raw_parts(row.meta, blocks) };
            let mut acc = 0.0f32;
            for ((b, a), &d_a) in w.chunks_exact(210).zip(a.chunks_exact(256)).zip(d_a) {
                let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
                let mut sub = [0i32; 16];
                for h in 0..2 {
                    for t in 0..4 {
                        for l in 0..32 {
                            let i = 128 * h + 32 * t + l;
                            let low = (ql[64 * h + 32 * (t % 2) + l] >> (4 * (t / 2))) & 0x0f;
                            let high = (qh[32 * h + l] >> (2 * t)) & 0x03;
                            sub[i / 16] += (i32::from(low | (high << 4)) - 32) * i32::from(a[i] as i8);
                        }
                    }
                }
                let isum: i32 = sub.iter().zip(scales).map(|(s, &sc)| s * i32::from(sc as i8)).sum();
                acc += (f16_at(b, 208) * d_a) * isum as f32;
            }
            *out = acc;
        }
        out
    }
}
