//! A network's first convolution: 3 × 3, padding 1, stride 1 or 2, no groups, few input
//! channels (an image's 3) and many outputs (MobileNetV2's 32 at 112 × 112).
//!
//! The general body computes it one output plane at a time, reading each of the 27 taps again
//! for every one of the 32 planes. Here, for each output row and each few strips of one vector
//! of output columns, the taps of every input channel are gathered once (`row_taps`: masked
//! loads, and at stride 2 the even lanes) into at most [`MAX_TAPS`] vectors a strip, then a few
//! output channels × those strips are summed together (3 × 7 on AVX-512, 3 × 3 on AVX2: each
//! weight broadcast once for all the strips) from their biases in the documented order (ci,
//! ky, kx), one FMA per tap, each row stored once, clamped.

use super::Conv2dParams;
use crate::ops::isa::CpuIsa;
use rayon::prelude::*;

/// Input channels × 9 taps, at most: the gathered taps stay in L1.
pub(super) const MAX_TAPS: usize = 36;

/// One convolution's operands, as raw pointers so that tasks (rows of an image) may write
/// their parts of every output plane.
// Read only by the x86-64 kernels.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(in crate::ops::conv) struct Job {
    x: *const f32,
    w: *const f32,
    /// Null: no bias.
    bias: *const f32,
    out: *mut f32,
    c: usize,
    o: usize,
    h: usize,
    wd: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    clamp: Option<(f32, f32)>,
}

// SAFETY: the pointers come from slices that outlive the job; tasks read the inputs and write
// disjoint rows of the output planes.
unsafe impl Sync for Job {}

/// Output rows `oy` of image `n` (unsafe: the CPU must have the kernel's instructions, and no
/// other task writes those rows).
type RowFn = unsafe fn(&Job, usize, usize);

/// Whether [`run`] computes `p` on this CPU.
pub(super) fn handles(p: &Conv2dParams) -> bool {
    (p.kh, p.kw, p.pad_h, p.pad_w, p.groups) == (3, 3, 1, 1, 1)
        && p.stride_h == p.stride_w
        && matches!(p.stride_h, 1 | 2)
        && (p.c as usize) * 9 <= MAX_TAPS
        && kernel(CpuIsa::active()).is_some()
}

/// Computes `p` ([`handles`] must hold), output rows shared among threads.
pub(super) fn run(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    run_with(kernel(CpuIsa::active()).expect("stem::handles said so"), p, x, w, bias, out)
}

fn run_with(row: RowFn, p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let (n, c, o) = (p.n as usize, p.c as usize, p.o as usize);
    let (h, wd, oh, ow) = (p.h as usize, p.w as usize, p.oh as usize, p.ow as usize);
    assert!(x.len() >= n * c * h * wd && w.len() >= o * c * 9 && out.len() >= n * o * oh * ow);
    assert!(bias.is_none_or(|b| b.len() >= o) && c * 9 <= MAX_TAPS);
    let job = Job {
        x: x.as_ptr(),
        w: w.as_ptr(),
        bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
        out: out.as_mut_ptr(),
        c,
        o,
        h,
        wd,
        oh,
        ow,
        stride: p.stride_h as usize,
        clamp: p.clamp(),
    };
    // SAFETY: `kernel` returned `row` for this CPU; each task writes its own row.
    (0..n * oh).into_par_iter().for_each(|t| unsafe { row(&job, t / oh, t % oh) });
}

fn kernel(isa: CpuIsa) -> Option<RowFn> {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= CpuIsa::Avx512 && isa.supported() {
            return Some(x86::avx512::output_row);
        }
        if isa.has_avx2() && isa.supported() {
            return Some(x86::avx2::output_row);
        }
    }
    let _ = isa;
    None
}

/// The kernel's body, expanded per instruction set next to `conv::simd`'s helpers.
#[cfg(target_arch = "x86_64")]
macro_rules! stem_kernel {
    ($features:literal) => {
        use super::super::{Job, MAX_TAPS};

        // `output_row` has arms for the remainders 1 and 2 only.
        const _: () = assert!(OUTS <= 3, "stem: a remainder of OUTS needs its own arm");

        /// Unsafe: as `RowFn`.
        #[target_feature(enable = $features)]
        pub(in crate::ops::conv) unsafe fn output_row(job: &Job, n: usize, oy: usize) {
            let plane_in = job.h * job.wd;
            // STRIPS strips of output columns at a time: every tap of each gathered once,
            // then OUTS output channels × STRIPS strips summed together, each weight
            // broadcast once for all the strips (one strip at a time loaded a tap and a
            // weight per FMA, twice the loads the FMAs could hide).
            let mut gathered = [zero(); MAX_TAPS * STRIPS];
            for first in (0..job.ow).step_by(LANES * STRIPS) {
                // Strips past the row's end gather zeros (masked loads) and are not stored.
                for s in 0..STRIPS {
                    let c = (first + s * LANES) as isize;
                    let inside = strip_inside(job.wd, job.stride, c as usize);
                    for ci in 0..job.c {
                        let x = job.x.wrapping_add((n * job.c + ci) * plane_in);
                        for ky in 0..3 {
                            let iy = (job.stride * oy + ky) as isize - 1;
                            // SAFETY: masked to the plane, or inside it.
                            let plane = (job.h, job.wd);
                            let row = unsafe {
                                match inside {
                                    true => row_taps::<true, true>(x, plane, job.stride, iy, c),
                                    false => row_taps::<false, true>(x, plane, job.stride, iy, c),
                                }
                            };
                            gathered[s * MAX_TAPS + (ci * 3 + ky) * 3..][..3].copy_from_slice(&row);
                        }
                    }
                }
                let mut o0 = 0;
                while o0 < job.o {
                    // SAFETY (both): the caller's; outputs o0.. lie in the job's.
                    unsafe {
                        match (job.o - o0).min(OUTS) {
                            1 => outputs::<1>(job, n, oy, first, o0, &gathered),
                            2 => outputs::<2>(job, n, oy, first, o0, &gathered),
                            _ => outputs::<OUTS>(job, n, oy, first, o0, &gathered),
                        }
                    }
                    o0 += OUTS.min(job.o - o0);
                }
            }
        }

        /// Output channels `o0..o0 + R` of row `oy` over the STRIPS strips from column
        /// `first`, from their biases through every tap in order.
        ///
        /// Unsafe: as `RowFn`; `o0 + R ≤ o`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn outputs<const R: usize>(
            job: &Job,
            n: usize,
            oy: usize,
            first: usize,
            o0: usize,
            gathered: &[V; MAX_TAPS * STRIPS],
        ) {
            let taps = job.c * 9;
            let plane_out = job.oh * job.ow;
            let mut acc = [[zero(); STRIPS]; R];
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: o0 + r < o, and the bias holds o values.
                *acc = [if job.bias.is_null() { zero() } else { splat(unsafe { *job.bias.add(o0 + r) }) }; STRIPS];
            }
            for t in 0..taps {
                // SAFETY: w holds o · taps values.
                let wv: [V; R] = std::array::from_fn(|r| splat(unsafe { *job.w.add((o0 + r) * taps + t) }));
                for s in 0..STRIPS {
                    let tap = gathered[s * MAX_TAPS + t];
                    for r in 0..R {
                        acc[r][s] = fma(wv[r], tap, acc[r][s]);
                    }
                }
            }
            for s in 0..STRIPS {
                let col = first + s * LANES;
                if col >= job.ow {
                    break;
                }
                let written = job.ow - col;
                for (r, acc) in acc.iter().enumerate() {
                    let done = match job.clamp {
                        Some((lo, hi)) => clamp(acc[s], lo, hi),
                        None => acc[s],
                    };
                    let dst = job.out.wrapping_add((n * job.o + o0 + r) * plane_out + oy * job.ow + col);
                    // SAFETY: a row of this task's, columns masked past ow.
                    unsafe { if written >= LANES { store(dst, done) } else { store_first(dst, done, written) } }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    pub(super) mod avx512 {
        use crate::ops::conv::simd::avx512::*;
        // 3 × 7 sums, 3 weights and a tap of the 32 registers: a 112-wide row (MobileNetV2's)
        // is 7 strips of 16.
        const OUTS: usize = 3;
        const STRIPS: usize = 7;
        stem_kernel!("avx512f,avx2,fma");
    }

    pub(super) mod avx2 {
        use crate::ops::conv::simd::avx2::*;
        // 3 × 3 sums, 3 weights and a tap of the 16 registers.
        const OUTS: usize = 3;
        const STRIPS: usize = 3;
        stem_kernel!("avx2,fma");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::Conv2d;

    /// Both ISAs' kernels against the general body (the reference for every other
    /// convolution, itself checked against f64 in the op tests) at awkward shapes: 1 to 4
    /// input channels, 1 to 19 outputs (every remainder of 8), widths 1 to 129, both strides,
    /// batches of 1 and 2, with and without bias and clamp.
    #[test]
    fn stem_matches_the_general_body() {
        if kernel(CpuIsa::Avx2).is_none() {
            eprintln!("skipped: this CPU has neither AVX2 nor AVX-512, so no stem kernel runs");
            return;
        }
        let shapes = [(1, 1, 1, 1, 1), (1, 3, 7, 5, 9), (2, 3, 19, 12, 17), (1, 4, 8, 6, 129), (1, 2, 16, 33, 16)];
        for (i, &(n, c, o, h, w)) in shapes.iter().enumerate() {
            for (stride, clamp, with_bias) in
                [(1, None, true), (2, Some([0.0, 6.0]), true), (2, None, false), (1, Some([-0.5, 0.5]), false)]
            {
                let conv = Conv2d { stride: [stride, stride], padding: [1, 1], groups: 1, clamp };
                let p = conv.params(&[n, c, h, w], &[o, c, 3, 3], 2 + with_bias as usize);
                let x: Vec<f32> = (0..n * c * h * w).map(|j| ((j * 37 + i) % 101) as f32 / 50.0 - 1.0).collect();
                let wt: Vec<f32> = (0..o * c * 9).map(|j| ((j * 13 + 5) % 29) as f32 / 14.0 - 1.0).collect();
                let bias: Vec<f32> = (0..o).map(|j| j as f32 / 7.0 - 1.0).collect();
                let bias = with_bias.then_some(&bias[..]);
                let mut want = vec![0.0; p.len()];
                super::super::general(&p, &x, &wt, bias, &mut want);
                for isa in [CpuIsa::Avx2, CpuIsa::Avx512] {
                    let Some(row) = kernel(isa) else { continue };
                    let mut got = vec![f32::INFINITY; p.len()];
                    run_with(row, &p, &x, &wt, bias, &mut got);
                    for (at, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() <= 1e-5,
                            "{isa:?} stride {stride} n{n} c{c} o{o} {h}x{w}: at {at} {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
