//! 3 × 3 depthwise convolutions with padding 1 and stride 1 or 2 (every depthwise layer of
//! MobileNetV2), straight from the NCHW input: no padded copy of a row, no scratch.
//!
//! A plane is computed in strips of one vector of output columns. At stride 1, tap kx of
//! output column c reads input column c + kx − 1, so the three taps of an input row are three
//! loads of the row at offsets −1, 0 and +1, masked where they would read the padding (a
//! masked lane reads nothing and is zero). At stride 2 it reads 2c + kx − 1: the even lanes
//! of two vectors loaded from 2c + kx − 1 (one permute). Walking down the strip, each input
//! row is loaded once and feeds the output rows it touches, whose sums stay in registers; a
//! row is stored, clamped, as soon as its last tap is in. Each output is summed from its bias
//! in the documented order (ky, then kx), one FMA per tap, padding included (as zeros), so
//! nothing depends on the strip or thread it ran in.
//!
//! At the 7 × 7 and 14 × 14 planes of the last blocks, the row-by-row body this replaces on
//! x86 (`depthwise_3x3_rows`, still the path elsewhere) spent most of its time on per-row
//! set-up (a padded copy, nine slice bounds, a copy out); this one has none.
//!
//! Output rows at most half a vector wide (7 × 7 maps on AVX-512, ORT's fastest depthwise
//! layers against tandem's slowest) would leave half of every vector idle: planes go in pairs
//! instead ([`Pair`]), the first in the low half of each vector and the second in the high
//! half, each half loaded, weighted and stored as its plane says, in the same order.

use super::Conv2dParams;
use crate::ops::isa::CpuIsa;
use rayon::prelude::*;

/// One plane's shapes and constants.
// Read only by the x86-64 kernels.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(in crate::ops::conv) struct Plane {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    taps: [f32; 9],
    bias: f32,
    clamp: Option<(f32, f32)>,
}

/// A plane's kernel: x `h × w` to y `oh × ow`.
type PlaneFn = unsafe fn(&Plane, &[f32], &mut [f32]);

/// Two planes of the same shapes, one per half of a vector: x and y hold both planes, one
/// after the other (`ow` at most half a vector).
type PairFn = unsafe fn(&Pair, &[f32], &mut [f32]);

/// Two planes' [`Plane`]s (same sizes and clamp; their own taps and bias).
pub(in crate::ops::conv) struct Pair {
    // Read by the x86-64 kernels only.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    planes: [Plane; 2],
}

/// One instruction set's kernels at one stride.
#[derive(Clone, Copy)]
struct Kernels {
    plane: PlaneFn,
    pair: PairFn,
    /// Output width up to which planes go in pairs: half a vector.
    pair_width: usize,
}

/// Whether [`run`] computes `p` on this CPU: `super::is_depthwise_3x3` (padding 1, stride 1
/// or 2) on AVX2 or AVX-512.
pub(super) fn handles(p: &Conv2dParams) -> bool {
    super::is_depthwise_3x3(p) && kernel(CpuIsa::active(), p.stride_h).is_some()
}

/// Computes `p` ([`handles`] must hold): one plane (or pair of planes) per task.
pub(super) fn run(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    run_with(kernel(CpuIsa::active(), p.stride_h).expect("depthwise::handles said so"), p, x, w, bias, out)
}

fn run_with(kernels: Kernels, p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let (h, wd, oh, ow, c) = (p.h as usize, p.w as usize, p.oh as usize, p.ow as usize, p.c as usize);
    assert!(x.len() >= p.n as usize * c * h * wd && w.len() >= 9 * c && bias.is_none_or(|b| b.len() >= c));
    let plane = |no: usize| {
        let ch = no % c;
        let taps = w[ch * 9..][..9].try_into().expect("nine taps");
        Plane { h, w: wd, oh, ow, taps, bias: bias.map_or(0.0, |b| b[ch]), clamp: p.clamp() }
    };
    // Planes (of every image, in order) in pairs where rows are narrow, the last alone if odd.
    let group = if ow <= kernels.pair_width { 2 } else { 1 };
    let out = &mut out[..p.n as usize * c * oh * ow];
    out.par_chunks_mut(group * oh * ow).zip(x.par_chunks(group * h * wd)).enumerate().for_each(|(g, (y, x))| {
        let first = g * group;
        // SAFETY: `kernel` returned them for this CPU and stride; x and y are whole planes,
        // two of them for the pair kernel, whose rows are at most half a vector wide.
        unsafe {
            if y.len() == 2 * oh * ow {
                (kernels.pair)(&Pair { planes: [plane(first), plane(first + 1)] }, x, y)
            } else {
                (kernels.plane)(&plane(first), x, y)
            }
        }
    });
}

fn kernel(isa: CpuIsa, stride: u32) -> Option<Kernels> {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! kernels {
            ($isa:ident) => {{
                use x86::$isa::*;
                let pair_width = crate::ops::conv::simd::$isa::LANES / 2;
                return match stride {
                    1 => Some(Kernels { plane: stride1, pair: pair1, pair_width }),
                    2 => Some(Kernels { plane: stride2, pair: pair2, pair_width }),
                    _ => None,
                };
            }};
        }
        if isa >= CpuIsa::Avx512 && isa.supported() {
            kernels!(avx512);
        }
        if isa.has_avx2() && isa.supported() {
            kernels!(avx2);
        }
    }
    let _ = (isa, stride);
    None
}

/// The kernels' bodies, expanded per instruction set next to `conv::simd`'s helpers.
#[cfg(target_arch = "x86_64")]
macro_rules! depthwise_kernels {
    ($features:literal) => {
        use super::super::{Pair, Plane};

        /// Output `sum`, clamped if the plane says so, stored at `dst` (its first `written`
        /// lanes only).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn put(p: &Plane, sum: V, dst: *mut f32, written: usize) {
            let done = match p.clamp {
                Some((lo, hi)) => clamp(sum, lo, hi),
                None => sum,
            };
            // SAFETY: the caller's: dst's lanes in `written` lie in the output.
            unsafe { if written >= LANES { store(dst, done) } else { store_first(dst, done, written) } }
        }

        /// Stride 1's step: the taps `v` of one input row added to the sums of the output rows
        /// it is the bottom of (`above`), the middle of (`at`) and the top of (started from
        /// `b`), each in the documented order; the three sums back.
        #[inline]
        #[target_feature(enable = $features)]
        fn feed(k: &[V; 9], v: &[V; 3], b: V, mut above: V, mut at: V) -> [V; 3] {
            let mut below = b;
            for kx in 0..3 {
                below = fma(k[kx], v[kx], below);
                at = fma(k[3 + kx], v[kx], at);
                above = fma(k[6 + kx], v[kx], above);
            }
            [above, at, below]
        }

        /// Stride 2's output: `b` plus the taps of its top, middle and bottom input rows, in
        /// the documented order.
        #[inline]
        #[target_feature(enable = $features)]
        fn sum_rows(k: &[V; 9], b: V, rows: [&[V; 3]; 3]) -> V {
            let mut sum = b;
            for (ky, row) in rows.iter().enumerate() {
                for kx in 0..3 {
                    sum = fma(k[3 * ky + kx], row[kx], sum);
                }
            }
            sum
        }

        /// Stride 1 (oh = h, ow = w). Unsafe: the CPU must have `$features`; x and y hold
        /// the plane's sizes.
        #[target_feature(enable = $features)]
        pub(in crate::ops::conv) unsafe fn stride1(p: &Plane, x: &[f32], y: &mut [f32]) {
            let (h, w) = (p.h, p.w);
            assert!(x.len() >= h * w && y.len() >= h * w && (p.oh, p.ow) == (h, w));
            let mut k = [zero(); 9];
            for (kv, &t) in k.iter_mut().zip(&p.taps) {
                *kv = splat(t);
            }
            let b = splat(p.bias);
            let (x, y) = (x.as_ptr(), y.as_mut_ptr());
            for col in (0..w).step_by(LANES) {
                // SAFETY: the caller's; strip_inside says whether the masks are needed.
                unsafe {
                    match strip_inside(w, 1, col) {
                        true => strip1::<true>(p, &k, b, x, y, col),
                        false => strip1::<false>(p, &k, b, x, y, col),
                    }
                }
            }
        }

        /// Stride 1's strip of output columns from `col`, down the plane. `INSIDE`: every
        /// column its taps read lies in the row (plain loads, no masks).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn strip1<const INSIDE: bool>(p: &Plane, k: &[V; 9], b: V, x: *const f32, y: *mut f32, col: usize) {
            let (h, w) = (p.h, p.w);
            let (c, wi) = (col as isize, w as isize);
            // Tap kx of lane l reads input column c + l + kx − 1, inside the row for
            // l in [1 − kx − c, w + 1 − kx − c).
            let reads = [mask(1 - c, wi + 1 - c), mask(-c, wi - c), mask(-1 - c, wi - 1 - c)];
            let written = w - col;
            // Sums of the output rows above and at the input row being read.
            let (mut above, mut at) = (zero(), zero());
            for iy in -1..=h as isize {
                let mut v = [zero(); 3];
                if (0..h as isize).contains(&iy) {
                    // Column c − 1 of the row: lane 0 of tap 0, masked off (never read)
                    // when c is 0.
                    let from = iy * wi + c - 1;
                    let start = x.wrapping_offset(from);
                    // Whether the LANES + 2 values from `start` all lie in the plane: then whole
                    // vectors are loaded and the lanes outside the row zeroed (`load_and`).
                    let in_plane = from >= 0 && from + LANES as isize + 2 <= (h * w) as isize;
                    for (kx, v) in v.iter_mut().enumerate() {
                        // SAFETY: only lanes inside the row are read (the masks, or INSIDE),
                        // or inside the plane with the rest zeroed.
                        *v = unsafe {
                            match (INSIDE, in_plane) {
                                (true, _) => load(start.wrapping_add(kx)),
                                (false, true) => load_and(start.wrapping_add(kx), reads[kx]),
                                (false, false) => load_part(start.wrapping_add(kx), reads[kx]),
                            }
                        };
                    }
                }
                let below;
                [above, at, below] = feed(k, &v, b, above, at);
                if iy >= 1 {
                    // Row iy − 1 has all its taps. SAFETY: it is a row of y.
                    unsafe { put(p, above, y.wrapping_offset((iy - 1) * wi + c), written) };
                }
                (above, at) = (at, below);
            }
        }

        /// Stride 2. Unsafe: as [`stride1`].
        #[target_feature(enable = $features)]
        pub(in crate::ops::conv) unsafe fn stride2(p: &Plane, x: &[f32], y: &mut [f32]) {
            let (oh, ow) = (p.oh, p.ow);
            assert!(x.len() >= p.h * p.w && y.len() >= oh * ow);
            assert!(2 * (oh - 1) <= p.h && 2 * (ow - 1) <= p.w, "stride 2 output larger than its input");
            let mut k = [zero(); 9];
            for (kv, &t) in k.iter_mut().zip(&p.taps) {
                *kv = splat(t);
            }
            let b = splat(p.bias);
            let (x, y) = (x.as_ptr(), y.as_mut_ptr());
            for col in (0..ow).step_by(LANES) {
                // SAFETY: the caller's; strip_inside says whether the masks are needed.
                unsafe {
                    match strip_inside(p.w, 2, col) {
                        true => strip2::<true>(p, &k, b, x, y, col),
                        false => strip2::<false>(p, &k, b, x, y, col),
                    }
                }
            }
        }

        /// Stride 2's strip of output columns from `col`; `INSIDE` as [`strip1`]'s.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn strip2<const INSIDE: bool>(p: &Plane, k: &[V; 9], b: V, x: *const f32, y: *mut f32, col: usize) {
            let (oh, ow) = (p.oh, p.ow);
            let c = col as isize;
            let written = ow - col;
            // Output row oy reads input rows 2oy − 1, 2oy and 2oy + 1; the last is the
            // next row's first.
            // SAFETY (row_taps, put): rows and columns outside the plane are masked, or
            // the strip lies inside the rows (INSIDE).
            let plane = (p.h, p.w);
            let mut top = unsafe { row_taps::<INSIDE, false>(x, plane, 2, -1, c) };
            for oy in 0..oh {
                let iy = 2 * oy as isize;
                let (mid, bottom) = unsafe {
                    (row_taps::<INSIDE, false>(x, plane, 2, iy, c), row_taps::<INSIDE, false>(x, plane, 2, iy + 1, c))
                };
                // The taps' lanes are in `evens_unordered`'s order, and so is the sum.
                let sum = in_order(sum_rows(k, b, [&top, &mid, &bottom]));
                unsafe { put(p, sum, y.add(oy * ow + col), written) };
                top = bottom;
            }
        }

        /// The pair's taps (or bias) in each plane's half.
        #[inline]
        #[target_feature(enable = $features)]
        fn halves(lo: f32, hi: f32) -> V {
            merge(splat(lo), splat(hi), mask(LANES as isize / 2, LANES as isize))
        }

        /// Row `iy` of both planes (x holds them one after the other), each in its half:
        /// lane l of the low half holds column `l + first` of the first plane, and lane
        /// `half + l` the same column of the second; zero where that column is outside the
        /// row.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn both_rows(x: *const f32, plane: usize, w: usize, iy: isize, first: isize) -> V {
            let (wi, half) = (w as isize, LANES as isize / 2);
            // Columns inside the row for lanes l with 0 <= l + first < w.
            let (lo, hi) = (-first, wi - first);
            let at = x.wrapping_offset(iy * wi + first);
            // SAFETY: only values inside the two planes' rows are read (the masks).
            unsafe {
                let a = load_part(at, mask(lo.max(0), hi.min(half)));
                let b = load_part(
                    at.wrapping_add(plane).wrapping_offset(-half),
                    mask(half + lo.max(0), half + hi.min(half)),
                );
                merge(a, b, mask(half, 2 * half))
            }
        }

        /// Output `sum` of both planes stored at row `oy` of each (clamped as the pair says).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn put_both(p: &Pair, sum: V, y: *mut f32, oy: usize) {
            let [a, _] = &p.planes;
            let (ow, half) = (a.ow, LANES / 2);
            let done = match a.clamp {
                Some((lo, hi)) => clamp(sum, lo, hi),
                None => sum,
            };
            let at = y.wrapping_add(oy * ow);
            // SAFETY: the caller's: row oy of both output planes lies in y.
            unsafe {
                store_part(at, done, mask(0, ow as isize));
                store_part(
                    at.wrapping_add(a.oh * ow).wrapping_sub(half),
                    done,
                    mask(half as isize, (half + ow) as isize),
                );
            }
        }

        /// Stride 1 over a pair. Unsafe: the CPU must have `$features`; x and y hold two
        /// planes each; `ow` is at most half a vector.
        #[target_feature(enable = $features)]
        pub(in crate::ops::conv) unsafe fn pair1(p: &Pair, x: &[f32], y: &mut [f32]) {
            let [a, b] = &p.planes;
            let (h, w) = (a.h, a.w);
            assert!(x.len() >= 2 * h * w && y.len() >= 2 * h * w && (a.oh, a.ow) == (h, w) && 2 * w <= LANES);
            let mut k = [zero(); 9];
            for (t, kv) in k.iter_mut().enumerate() {
                *kv = halves(a.taps[t], b.taps[t]);
            }
            let bias = halves(a.bias, b.bias);
            let (x, y) = (x.as_ptr(), y.as_mut_ptr());
            // As `stride1`, over one strip that holds both planes' rows.
            let (mut above, mut at) = (zero(), zero());
            for iy in -1..=h as isize {
                let mut v = [zero(); 3];
                if (0..h as isize).contains(&iy) {
                    for (kx, v) in v.iter_mut().enumerate() {
                        // SAFETY: rows inside the planes; columns masked.
                        *v = unsafe { both_rows(x, h * w, w, iy, kx as isize - 1) };
                    }
                }
                let below;
                [above, at, below] = feed(&k, &v, bias, above, at);
                if iy >= 1 {
                    // SAFETY: row iy − 1 of both planes.
                    unsafe { put_both(p, above, y, iy as usize - 1) };
                }
                (above, at) = (at, below);
            }
        }

        /// The three taps of input row `iy` of both planes (one after the other at x) for
        /// stride 2: the even lanes of each plane's row from column kx − 1 (as `row_taps`),
        /// the first plane's in the low half, the second's in the high; zero outside.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn pair_taps(x: *const f32, (h, w): (usize, usize), iy: isize) -> [V; 3] {
            let mut v = [zero(); 3];
            if !(0..h as isize).contains(&iy) {
                return v;
            }
            for (kx, v) in v.iter_mut().enumerate() {
                let first = kx as isize - 1;
                let m = mask(-first, w as isize - first);
                let at = x.wrapping_offset(iy * w as isize + first);
                // SAFETY: only values inside the planes' rows are read (the mask).
                *v = unsafe { evens(load_part(at, m), load_part(at.wrapping_add(h * w), m)) };
            }
            v
        }

        /// Stride 2 over a pair: the even lanes of each plane's row read as `row_taps` does,
        /// the first plane's in the low half, the second's in the high. Unsafe: as [`pair1`].
        #[target_feature(enable = $features)]
        pub(in crate::ops::conv) unsafe fn pair2(p: &Pair, x: &[f32], y: &mut [f32]) {
            let [a, b] = &p.planes;
            let (h, w, oh, ow) = (a.h, a.w, a.oh, a.ow);
            assert!(x.len() >= 2 * h * w && y.len() >= 2 * oh * ow && 2 * ow <= LANES);
            assert!(2 * (oh - 1) <= h && 2 * (ow - 1) <= w, "stride 2 output larger than its input");
            let mut k = [zero(); 9];
            for (t, kv) in k.iter_mut().enumerate() {
                *kv = halves(a.taps[t], b.taps[t]);
            }
            let bias = halves(a.bias, b.bias);
            let (x, y) = (x.as_ptr(), y.as_mut_ptr());
            // SAFETY (pair_taps): rows outside the planes are not read.
            let mut top = unsafe { pair_taps(x, (h, w), -1) };
            for oy in 0..oh {
                let iy = 2 * oy as isize;
                let (mid, bottom) = unsafe { (pair_taps(x, (h, w), iy), pair_taps(x, (h, w), iy + 1)) };
                let sum = sum_rows(&k, bias, [&top, &mid, &bottom]);
                // SAFETY: row oy of both planes.
                unsafe { put_both(p, sum, y, oy) };
                top = bottom;
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    pub(super) mod avx512 {
        use crate::ops::conv::simd::avx512::*;
        depthwise_kernels!("avx512f,avx2,fma");
    }

    pub(super) mod avx2 {
        use crate::ops::conv::simd::avx2::*;
        depthwise_kernels!("avx2,fma");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{Conv2d, test_values as values};

    /// The f64 sum of every output (bias, then taps in order, padding as zeros), clamped.
    fn reference(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let (c, h, wd, s) = (p.c as usize, p.h as isize, p.w as isize, p.stride_h as isize);
        let mut y = Vec::new();
        for no in 0..p.n as usize * c {
            let ch = no % c;
            for oy in 0..p.oh as isize {
                for ox in 0..p.ow as isize {
                    let mut s_ = bias.map_or(0.0, |b| b[ch] as f64);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = (oy * s + ky - 1, ox * s + kx - 1);
                            if (0..h).contains(&iy) && (0..wd).contains(&ix) {
                                let v = x[no * (h * wd) as usize + (iy * wd + ix) as usize] as f64;
                                s_ += w[ch * 9 + (ky * 3 + kx) as usize] as f64 * v;
                            }
                        }
                    }
                    let v = s_ as f32;
                    y.push(p.clamp().map_or(v, |(lo, hi)| crate::ops::elementwise::clamp(v, lo, hi)));
                }
            }
        }
        y
    }

    /// Both ISAs' kernels at both strides against an f64 sum: widths 1 to 129 (every strip
    /// remainder, a width of one vector exactly, odd and even at stride 2), heights 1 to 14,
    /// batches of 1 to 3, planes alone and in pairs, with and without bias and clamp, a NaN
    /// kept.
    #[test]
    fn depthwise_matches_an_f64_sum_at_awkward_shapes() {
        let shapes = [
            (1, 1, 1, 1),
            (1, 3, 1, 7),
            (2, 5, 7, 7),
            (1, 2, 9, 16),
            (1, 4, 3, 17),
            (2, 3, 14, 14),
            (1, 2, 2, 129),
            (1, 2, 6, 33),
            (1, 1, 5, 34),
            (1, 2, 4, 64),
            // Planes in pairs (rows at most half a vector: 8 lanes on AVX-512, 4 on AVX2),
            // an odd count leaving the last alone, a batch whose pairs span two images.
            (1, 3, 4, 4),
            (1, 5, 6, 3),
            (3, 3, 8, 8),
            (2, 7, 7, 7),
        ];
        let isas = [CpuIsa::Avx2, CpuIsa::Avx512];
        if kernel(CpuIsa::Avx2, 1).is_none() {
            eprintln!("skipped: this CPU has neither AVX2 nor AVX-512, so no depthwise kernel runs");
            return;
        }
        for (i, &(n, c, h, w)) in shapes.iter().enumerate() {
            for (clamp, with_bias, stride) in
                [(None, false, 1), (Some([0.0, 0.5]), true, 2), (Some([-0.25, 6.0]), false, 1), (None, true, 2)]
            {
                let conv = Conv2d { stride: [stride, stride], padding: [1, 1], groups: c as u32, clamp };
                let p = conv.params(&[n, c, h, w], &[c, 1, 3, 3], 2 + with_bias as usize);
                let mut x = values(n * c * h * w, i as u64 + 1);
                let middle = x.len() / 2;
                x[middle] = f32::NAN;
                let (wt, bias) = (values(9 * c, i as u64 + 50), values(c, i as u64 + 90));
                let bias = with_bias.then_some(&bias[..]);
                let want = reference(&p, &x, &wt, bias);
                for (isa, kernels) in isas.iter().filter_map(|&i| Some((i, kernel(i, stride)?))) {
                    let mut got = vec![f32::INFINITY; want.len()];
                    run_with(kernels, &p, &x, &wt, bias, &mut got);
                    for (at, (g, e)) in got.iter().zip(&want).enumerate() {
                        let ok = (g.is_nan() && e.is_nan()) || (g - e).abs() <= 1e-5;
                        assert!(
                            ok,
                            "{isa:?} stride {stride} n{n} c{c} {h}x{w} clamp {clamp:?} bias {with_bias}: at {at} {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
