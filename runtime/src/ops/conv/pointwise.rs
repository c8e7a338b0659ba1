//! 1 × 1 convolutions (stride 1, no padding or groups): per image
//! `y = clamp(bias + W · x + residual)`, W `[O, C]`, x `[C, H·W]`, y and the optional residual
//! `[O, H·W]`, each output summed from its bias over the input channels in order, one FMA per
//! channel, then the residual added.
//!
//! Why not the `gemm` crate (which these went through before, and still do where the kernel
//! below does not run): it packs both operands on every call and gives no epilogue, so the
//! bias was a pass of its own before the product and the clamp another after it, three passes
//! over maps of up to 4.8 MB (MobileNetV2's 112 × 112 × 96). Here the layout is already the
//! one a register tile wants: x's rows are contiguous along the plane, so a tile of R output
//! channels × NV vectors of pixels loads NV vectors and broadcasts R weights per input
//! channel for R·NV FMAs, and writes each output once, clamped. The pixels a tile reads (C ×
//! NV vectors) stay in L1 or L2 while every channel tile of its column block runs (or, with
//! few input channels, each channel tile runs across all of a task's blocks: `rect`). A
//! plane's last few columns past its whole vectors (MobileNetV2's 7 × 7 and 14 × 14 maps: 49 =
//! 3 · 16 + 1, 196 = 12 · 16 + 4) are dot products along C instead, by the task that owns the
//! plane's last block, right after its tiles have read the same rows of W (`tail_rows`):
//! a vector of partial sums (channel c in lane c mod LANES), added up, then the bias, the
//! residual and the clamp.
//!
//! The sum of an output depends only on its position (which of the two ways it is summed),
//! not on the tile, the thread or the batch it ran in.

use super::Conv2dParams;
use crate::ops::isa::CpuIsa;
use rayon::prelude::*;

/// One convolution's inputs: x, w, and the optional bias and residual.
#[derive(Clone, Copy)]
pub(super) struct Inputs<'a> {
    pub x: &'a [f32],
    pub w: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
}

/// `y[n] = clamp(bias + W · x[n] + residual[n])` for a pointwise `p` (see the module doc).
pub(super) fn run(p: &Conv2dParams, inputs: Inputs, out: &mut [f32]) {
    let Inputs { x, w, bias, residual } = inputs;
    let (o, k, plane, images) = (p.o as usize, p.c as usize, p.oh as usize * p.ow as usize, p.n as usize);
    assert!(x.len() >= images * k * plane && w.len() >= o * k && out.len() >= images * o * plane);
    assert!(bias.is_none_or(|b| b.len() >= o) && residual.is_none_or(|r| r.len() >= images * o * plane));
    match Kernel::best(CpuIsa::active()) {
        Some(kernel) => run_on(kernel, p, inputs, out),
        None => with_gemm(p, inputs, out),
    }
}

/// [`run`] with `kernel`, which this CPU must run; the slices are checked by the caller.
fn run_on(kernel: Kernel, p: &Conv2dParams, inputs: Inputs, out: &mut [f32]) {
    let Inputs { x, w, bias, residual } = inputs;
    let (o, k, plane, images) = (p.o as usize, p.c as usize, p.oh as usize * p.ow as usize, p.n as usize);
    // A few columns past the last whole vector (MobileNetV2's 7 × 7 maps: 49 = 3 · 16 + 1)
    // would cost a vector per (output, input channel) pair, a quarter of the work for a
    // 49th of the outputs; they are dot products along C instead (`tail_rows`), reading
    // those columns of x gathered as rows of C values.
    let tail = match plane % kernel.lanes {
        t if t <= kernel.lanes / 4 => t,
        _ => 0,
    };
    let cols = plane - tail;
    let mut tail_x = vec![0.0; images * tail * k];
    if tail > 0 {
        for (img, rows) in tail_x.chunks_exact_mut(tail * k).enumerate() {
            for (c, x_row) in x[img * k * plane..][..k * plane].chunks_exact(plane).enumerate() {
                for (j, &v) in x_row[cols..].iter().enumerate() {
                    rows[j * k + c] = v;
                }
            }
        }
    }
    let job = Job {
        x: x.as_ptr(),
        w: w.as_ptr(),
        bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
        residual: residual.map_or(std::ptr::null(), |r| r.as_ptr()),
        out: out.as_mut_ptr(),
        o,
        k,
        plane,
        clamp: p.clamp(),
        cols,
        blocks: cols.div_ceil(kernel.lanes).div_ceil(kernel.max_vectors),
        vectors: cols.div_ceil(kernel.lanes),
        tail,
        tail_x: tail_x.as_ptr(),
    };
    vector_columns(&kernel, &job, images);
}

/// Bytes of pixels (all input channels) a task's blocks may span for its channel tiles to run
/// outermost (`rect`).
const SMALL_PIXELS_BYTES: usize = 256 << 10;

/// How many input channels ahead the first tile over a block prefetches its pixels.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const AHEAD: usize = 12;

/// The job's columns of every image, by `kernel`'s tiles and `tail_rows`, shared among
/// threads.
fn vector_columns(kernel: &Kernel, job: &Job, images: usize) {
    let (o, k, plane) = (job.o, job.k, job.plane);
    let threads = rayon::current_num_threads();
    // Below this many multiply-adds a second thread costs more than it saves.
    const SERIAL_MACS: usize = 1 << 17;
    if threads == 1 || images * o * k * plane < SERIAL_MACS {
        for img in 0..images {
            // SAFETY: the CPU runs `kernel` (Kernel::best) and the slices hold the shapes
            // (asserted above); this call alone writes `out`.
            unsafe { (kernel.rect)(job, img, 0..o, 0..job.blocks) };
        }
        return;
    }
    // Tasks: (image, a run of column blocks, a range of output channels). Column blocks first
    // (a block's pixels are then read by one thread); channels are split too when a batch's
    // blocks are too few to share out (MobileNetV2's 7 × 7 maps have two).
    let target = 4 * threads;
    // A plane narrower than a vector has no block, only its tail: one unit per image.
    let blocks = job.blocks.max(1);
    let units = images * blocks;
    // At most as many blocks as keep a task's pixels within SMALL_PIXELS_BYTES, so that its
    // channel tiles run outermost, each sweeping pixels that stay in L2 (a batch of eight
    // 112 × 112 maps otherwise gave each task a whole image, streamed block by block from
    // memory through every channel's row at once).
    let fitting = SMALL_PIXELS_BYTES / (4 * k * kernel.lanes * kernel.max_vectors).max(1);
    // Where an output row does not start on a cache line (14 × 14 maps: 784 bytes a row), a
    // row's last columns share a line with the next row's first: tasks over different blocks
    // of neighbouring channels would write the same lines at once, and at batch 1 MobileNetV2's
    // 96 → 576 layers ran at one thread's speed on two. Such planes are split by channels
    // only, unless the images are enough to share out: rayon then hands each thread runs of
    // consecutive tasks, which are different images.
    let lines_shared = (plane * 4) % 64 != 0 && images < target;
    let block_run = match lines_shared {
        true => blocks,
        false => units.div_ceil(target).min(blocks).min(fitting).max(1),
    };
    let runs_per_image = blocks.div_ceil(block_run);
    // A plane split by channels alone is shared out in twice as many tasks: they are few
    // and large otherwise (960 → 160 at 7 × 7: seven of about 27 µs on AVX2), and a thread
    // that joins late leaves the other up to a task more to do (that layer took 0.76 of its
    // one-thread time on two threads with seven tasks, 0.55 with fourteen).
    let row_target = if runs_per_image == 1 && images < target { 2 * target } else { target };
    let row_groups = row_target.div_ceil(images * runs_per_image).min(o.div_ceil(kernel.rows)).max(1);
    let rows_per_group = o.div_ceil(row_groups).next_multiple_of(kernel.rows);
    let row_groups = o.div_ceil(rows_per_group);
    (0..images * runs_per_image * row_groups).into_par_iter().for_each(|task| {
        let (img, rest) = (task / (runs_per_image * row_groups), task % (runs_per_image * row_groups));
        let (run, group) = (rest / row_groups, rest % row_groups);
        let blocks = run * block_run..((run + 1) * block_run).min(job.blocks);
        let rows = group * rows_per_group..((group + 1) * rows_per_group).min(o);
        // SAFETY: as above; tasks write disjoint rectangles (rows × blocks) of one image.
        unsafe { (kernel.rect)(job, img, rows, blocks) };
    });
}

/// The same through gemm, where no kernel of this module runs (wasm32, CPUs without AVX2): per
/// image the bias in a pass of its own, the product accumulated onto it, then the residual
/// and the clamp.
fn with_gemm(p: &Conv2dParams, inputs: Inputs, out: &mut [f32]) {
    let Inputs { x, w, bias, residual } = inputs;
    use crate::ops::elementwise::{PAR_MIN, clamp, map_chunk};
    use crate::ops::matmul::{Gemm, gemm_into};
    let (c, o, plane) = (p.c as usize, p.o as usize, p.oh as usize * p.ow as usize);
    for (img, y) in out.chunks_exact_mut(o * plane).enumerate() {
        if let Some(bias) = bias {
            for (row, &b) in y.chunks_exact_mut(plane).zip(bias) {
                row.fill(b);
            }
        }
        let g = Gemm { m: o, n: plane, k: c, trans_b: false, accumulate: bias.is_some(), scale: 1.0 };
        gemm_into(g, w, &x[img * c * plane..][..c * plane], y);
        if let Some(residual) = residual {
            super::add_residual(p, &residual[img * o * plane..][..o * plane], y);
        } else if let Some((lo, hi)) = p.clamp() {
            y.par_chunks_mut(PAR_MIN).for_each(|y| map_chunk(y, |v| clamp(v, lo, hi)));
        }
    }
}

/// One product's operands as raw pointers, so that tasks may write disjoint rectangles of
/// `out` in parallel.
// Read only by the x86-64 kernels.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Job {
    x: *const f32,
    w: *const f32,
    /// Null: no bias.
    bias: *const f32,
    /// Null: no residual; else shaped like `out`.
    residual: *const f32,
    out: *mut f32,
    o: usize,
    k: usize,
    plane: usize,
    clamp: Option<(f32, f32)>,
    /// The columns computed in vectors (`..cols`; the `tail` after them by `tail_rows`).
    cols: usize,
    /// Vectors of pixels per image, and the column blocks they are dealt into (at most
    /// [`Kernel::max_vectors`] each, sizes differing by at most one).
    vectors: usize,
    blocks: usize,
    /// Columns past `cols` (at most a quarter of a vector), and those columns of every image
    /// as rows of `k` values: `[images][tail][k]`.
    tail: usize,
    tail_x: *const f32,
}

// SAFETY: the pointers come from slices that outlive the job; tasks read the inputs and write
// disjoint parts of `out`.
unsafe impl Sync for Job {}

// Read only by the x86-64 kernels.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Job {
    /// Block b's columns: whole vectors, the last block ending at `cols`.
    fn block_columns(&self, b: usize, lanes: usize) -> (usize, usize) {
        let (v0, v1) = (b * self.vectors / self.blocks, (b + 1) * self.vectors / self.blocks);
        (v0 * lanes, (v1 * lanes).min(self.cols))
    }
}

/// One instruction set's kernel.
struct Kernel {
    lanes: usize,
    /// Output channels per full tile.
    rows: usize,
    /// Vectors of pixels per tile, at most.
    max_vectors: usize,
    /// Computes rows × column blocks of image `img`, and the rows' tail columns when the
    /// blocks end at the plane's last.
    ///
    /// Unsafe: the CPU must have the kernel's instructions, the job's pointers must hold its
    /// shapes, and nothing else may touch that rectangle of `out` meanwhile.
    rect: unsafe fn(&Job, usize, std::ops::Range<usize>, std::ops::Range<usize>),
}

impl Kernel {
    fn best(isa: CpuIsa) -> Option<Kernel> {
        #[cfg(target_arch = "x86_64")]
        {
            if isa >= CpuIsa::Avx512 && isa.supported() {
                use x86::avx512::*;
                return Some(Kernel { lanes: LANES, rows: ROWS, max_vectors: MAX_VECTORS, rect });
            }
            if isa.has_avx2() && isa.supported() {
                use x86::avx2::*;
                return Some(Kernel { lanes: LANES, rows: ROWS, max_vectors: MAX_VECTORS, rect });
            }
        }
        let _ = isa;
        None
    }
}

/// The kernel's body, written once and expanded per instruction set inside a module that
/// defines the vector type `V`, `LANES`, `ROWS`, `MAX_VECTORS`, `UNROLL` and the helpers it calls (`zero`, `splat`,
/// `mask`, `load`, `load_part`, `load_and`, `prefetch`, `fma`, `add`, `sum`, `clamp`, `store`, `store_first`), all under `$features`.
#[cfg(target_arch = "x86_64")]
macro_rules! pointwise_kernel {
    ($features:literal) => {
        use super::super::{AHEAD, Job};
        use std::ops::Range;

        #[target_feature(enable = $features)]
        pub(in crate::ops::conv) unsafe fn rect(job: &Job, img: usize, rows: Range<usize>, blocks: Range<usize>) {
            // Channel tiles: full ones, then tiles of 4, 2 and 1 channels for the remainder.
            let height = |row: usize| [ROWS, 4, 2, 1].into_iter().find(|&r| r <= rows.end - row).unwrap_or(1);
            let tiles = || {
                std::iter::successors(Some(rows.start), |&row| Some(row + height(row)))
                    .take_while(|&row| row < rows.end)
                    .map(|row| (row, height(row)))
            };
            // The tail columns go with the plane's last block (the whole plane when it has no
            // block), each tile's right after its blocks, while its rows of W are in cache.
            let tail = job.tail > 0 && blocks.end == job.blocks;
            if blocks.is_empty() {
                for (row, r) in tiles() {
                    // SAFETY: as `rect`'s.
                    unsafe { tail_rows(job, img, row, r) };
                }
                return;
            }
            let (c0, _) = job.block_columns(blocks.start, LANES);
            let (_, c1) = job.block_columns(blocks.end - 1, LANES);
            // With few input channels the pixels of every block fit in L2: each channel tile
            // then runs across all blocks and writes its rows front to back (at 16 inputs and
            // 96 outputs over 112 × 112, 96 interleaved runs of 256 bytes per block were the
            // slow part); otherwise a block's pixels stay in L1 while every tile uses them.
            if job.k * (c1 - c0) * 4 <= super::super::SMALL_PIXELS_BYTES {
                for (row, r) in tiles() {
                    for b in blocks.clone() {
                        // SAFETY: as `rect`'s; the tile lies inside the rows and the block.
                        unsafe { tile_at(job, img, row, r, b, row == rows.start) };
                    }
                    if tail {
                        // SAFETY: as above.
                        unsafe { tail_rows(job, img, row, r) };
                    }
                }
            } else {
                for b in blocks {
                    let last = b + 1 == job.blocks;
                    for (row, r) in tiles() {
                        // SAFETY: as above.
                        unsafe { tile_at(job, img, row, r, b, row == rows.start) };
                        if tail && last {
                            // SAFETY: as above.
                            unsafe { tail_rows(job, img, row, r) };
                        }
                    }
                }
            }
        }

        /// The tail columns of the `r` output channels from `row`, 4 channels at a time.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tail_rows(job: &Job, img: usize, row: usize, r: usize) {
            let mut oc = row;
            while oc < row + r {
                let n = (row + r - oc).min(4);
                // SAFETY: the caller's; channels oc..oc + n lie in the job's rows.
                #[allow(unreachable_patterns)] // the tail is at most 2 wide on AVX2
                unsafe {
                    match (n, job.tail) {
                        (4, 1) => tail_dots::<4, 1>(job, img, oc),
                        (4, 2) => tail_dots::<4, 2>(job, img, oc),
                        (4, 3) => tail_dots::<4, 3>(job, img, oc),
                        (4, _) => tail_dots::<4, 4>(job, img, oc),
                        (_, 1) => tail_dots::<1, 1>(job, img, oc),
                        (_, 2) => tail_dots::<1, 2>(job, img, oc),
                        (_, 3) => tail_dots::<1, 3>(job, img, oc),
                        (_, _) => tail_dots::<1, 4>(job, img, oc),
                    }
                }
                oc += if n == 4 { 4 } else { 1 };
            }
        }

        /// Tail columns `cols..cols + T` of output channels `oc..oc + R`: dot products along
        /// C of W's rows and the gathered columns (`Job::tail_x`), then the epilogue.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tail_dots<const R: usize, const T: usize>(job: &Job, img: usize, oc: usize) {
            let k = job.k;
            unsafe {
                let (w, xt) = (job.w.add(oc * k), job.tail_x.add(img * T * k));
                let mut acc = [[zero(); T]; R];
                for c in (0..k).step_by(LANES) {
                    // The last vector of a row is masked where C is not a multiple of LANES
                    // (only that one: masked loads cost more than plain ones, see `tile_of`).
                    let m = mask(0, (k - c) as isize);
                    let part = |at: *const f32| if c + LANES <= k { load(at) } else { load_part(at, m) };
                    let mut xs = [zero(); T];
                    for (j, xv) in xs.iter_mut().enumerate() {
                        *xv = part(xt.add(j * k + c));
                    }
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let wv = part(w.add(r * k + c));
                        for (a, &xv) in acc.iter_mut().zip(&xs) {
                            *a = fma(wv, xv, *a);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    let at = (img * job.o + oc + r) * job.plane + job.cols;
                    for (j, &a) in acc.iter().enumerate() {
                        let mut v = sum(a);
                        if !job.bias.is_null() {
                            v += *job.bias.add(oc + r);
                        }
                        if !job.residual.is_null() {
                            v += *job.residual.add(at + j);
                        }
                        *job.out.add(at + j) =
                            job.clamp.map_or(v, |(lo, hi)| crate::ops::elementwise::clamp(v, lo, hi));
                    }
                }
            }
        }

        /// The tile of `r` channels from `row` over block `b`; `first`: the first tile to read
        /// the block's pixels (see [`tile`]).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tile_at(job: &Job, img: usize, row: usize, r: usize, b: usize, first: bool) {
            let (c0, c1) = job.block_columns(b, LANES);
            let vectors = (c1 - c0).div_ceil(LANES);
            let last = c1 - c0 - (vectors - 1) * LANES;
            // SAFETY: the caller's.
            #[allow(unreachable_patterns)] // ROWS may be 4
            unsafe {
                match r {
                    ROWS => tile_of::<ROWS>(job, img, row, c0, vectors, last, first),
                    4 => tile_of::<4>(job, img, row, c0, vectors, last, first),
                    2 => tile_of::<2>(job, img, row, c0, vectors, last, first),
                    _ => tile_of::<1>(job, img, row, c0, vectors, last, first),
                }
            }
        }

        /// [`tile`] for R channels over `vectors` vectors, the last holding `last` pixels.
        /// Whether that vector is whole is a constant of the tile: AVX2's masked loads and
        /// stores (`vmaskmovps`) cost more than plain ones (on Zen 1 a masked load per input
        /// channel halved the tile's speed), so only a block that ends inside a vector pays
        /// for them.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tile_of<const R: usize>(
            job: &Job,
            img: usize,
            row: usize,
            c0: usize,
            vectors: usize,
            last: usize,
            first: bool,
        ) {
            // SAFETY: the caller's.
            unsafe {
                match (vectors, last == LANES) {
                    (1, true) => tile::<R, 1, true>(job, img, row, c0, last, first),
                    (1, false) => tile::<R, 1, false>(job, img, row, c0, last, first),
                    (2, true) => tile::<R, 2, true>(job, img, row, c0, last, first),
                    (2, false) => tile::<R, 2, false>(job, img, row, c0, last, first),
                    (3, true) => tile::<R, 3, true>(job, img, row, c0, last, first),
                    (3, false) => tile::<R, 3, false>(job, img, row, c0, last, first),
                    (_, true) => tile::<R, MAX_VECTORS, true>(job, img, row, c0, last, first),
                    (_, false) => tile::<R, MAX_VECTORS, false>(job, img, row, c0, last, first),
                }
            }
        }

        /// R output channels from `row` × NV vectors of pixels from column `col`, the last
        /// vector holding `last` pixels (all of them when `WHOLE`).
        ///
        /// The `first` tile over a block brings its pixels in from L3 or memory: each input
        /// channel is a row of its own, a page or more from the last, where the hardware
        /// prefetchers do not follow, so it asks for the channel [`AHEAD`] rows on itself
        /// (MobileNetV2 batch 8 1-3% faster, batch 1 under 1%: runs alternating with and without in
        /// one process, tandem alone).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn tile<const R: usize, const NV: usize, const WHOLE: bool>(
            job: &Job,
            img: usize,
            row: usize,
            col: usize,
            last: usize,
            first: bool,
        ) {
            let (k, plane) = (job.k, job.plane);
            let tail = mask(0, last as isize);
            unsafe {
                let x = job.x.add(img * k * plane + col);
                let w = job.w.add(row * k);
                let mut acc = [[zero(); NV]; R];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let b = if job.bias.is_null() { zero() } else { splat(*job.bias.add(row + r)) };
                    *acc = [b; NV];
                }
                // One input channel: NV vectors of its pixels from `xc`, each multiplied by
                // the R weights at `wc` (k apart) into the sums, in channel order. A last
                // vector that ends inside the row is read whole where the next channel's row
                // follows (`load_and`), masked only in the last channel's.
                let step = |acc: &mut [[V; NV]; R], xc: *const f32, wc: *const f32, followed: bool| {
                    let mut xs = [zero(); NV];
                    for (v, xv) in xs.iter_mut().enumerate() {
                        let at = xc.add(v * LANES);
                        *xv = match v + 1 == NV && !WHOLE {
                            false => load(at),
                            true if followed => load_and(at, tail),
                            true => load_part(at, tail),
                        };
                    }
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let wv = splat(*wc.add(r * k));
                        for (a, &xv) in acc.iter_mut().zip(&xs) {
                            *a = fma(wv, xv, *a);
                        }
                    }
                };
                // UNROLL channels per pass: the pointers move once per pass and the loads take
                // offsets from them (on AVX-512 one pointer update per channel took FMA ports'
                // slots; AVX2's 16 registers have no room for a longer pass).
                let (mut xc, mut wc) = (x, w);
                let mut c = 0;
                while c + UNROLL <= k {
                    if first && c + AHEAD < k {
                        for q in 0..UNROLL {
                            for v in 0..NV {
                                prefetch(xc.wrapping_add((AHEAD + q) * plane + v * LANES));
                            }
                        }
                    }
                    for q in 0..UNROLL {
                        step(&mut acc, xc.add(q * plane), wc.add(q), c + q + 1 < k);
                    }
                    xc = xc.add(UNROLL * plane);
                    wc = wc.add(UNROLL);
                    c += UNROLL;
                }
                while c < k {
                    step(&mut acc, xc, wc, c + 1 < k);
                    xc = xc.add(plane);
                    wc = wc.add(1);
                    c += 1;
                }
                let at = (img * job.o + row) * plane + col;
                let y = job.out.add(at);
                for (r, acc) in acc.iter().enumerate() {
                    for (v, &a) in acc.iter().enumerate() {
                        let a = if job.residual.is_null() {
                            a
                        } else {
                            let res = job.residual.add(at + r * plane + v * LANES);
                            add(a, if v + 1 == NV && !WHOLE { load_part(res, tail) } else { load(res) })
                        };
                        let a = match job.clamp {
                            Some((lo, hi)) => clamp(a, lo, hi),
                            None => a,
                        };
                        let at = y.add(r * plane + v * LANES);
                        if v + 1 == NV && !WHOLE { store_first(at, a, last) } else { store(at, a) }
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    pub(super) mod avx512 {
        use crate::ops::conv::simd::avx512::*;
        // 24 accumulators, 4 pixel vectors and a weight of the 32 registers.
        pub(in crate::ops::conv) const ROWS: usize = 6;
        pub(in crate::ops::conv) const MAX_VECTORS: usize = 4;
        // Input channels per pass of the tile's loop.
        pub(in crate::ops::conv) const UNROLL: usize = 4;
        pub(in crate::ops::conv) use crate::ops::conv::simd::avx512::LANES;
        pointwise_kernel!("avx512f,avx2,fma");
    }

    pub(super) mod avx2 {
        use crate::ops::conv::simd::avx2::*;
        // 12 accumulators, 2 pixel vectors and a weight of the 16 registers.
        pub(in crate::ops::conv) const ROWS: usize = 6;
        pub(in crate::ops::conv) const MAX_VECTORS: usize = 2;
        // One: with two channels a pass the accumulators spilled (MobileNetV2 batch 1 capped
        // at AVX2 took 9.5 ms against 6.0 with one, and 6.7 before the pointers moved per pass).
        pub(in crate::ops::conv) const UNROLL: usize = 1;
        pub(in crate::ops::conv) use crate::ops::conv::simd::avx2::LANES;
        pointwise_kernel!("avx2,fma");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{Conv2d, test_values as values};

    /// The f64 sum of every output in the documented order, plus the residual, clamped.
    fn reference(p: &Conv2dParams, x: &[f32], w: &[f32], bias: Option<&[f32]>, residual: Option<&[f32]>) -> Vec<f32> {
        let (o, k, plane) = (p.o as usize, p.c as usize, p.oh as usize * p.ow as usize);
        let mut y = vec![0.0; p.n as usize * o * plane];
        for n in 0..p.n as usize {
            for oc in 0..o {
                for t in 0..plane {
                    let at = (n * o + oc) * plane + t;
                    let mut s = bias.map_or(0.0, |b| b[oc] as f64);
                    for c in 0..k {
                        s += w[oc * k + c] as f64 * x[(n * k + c) * plane + t] as f64;
                    }
                    let v = (s + residual.map_or(0.0, |r| r[at] as f64)) as f32;
                    y[at] = match p.clamp() {
                        Some((lo, hi)) => crate::ops::elementwise::clamp(v, lo, hi),
                        None => v,
                    };
                }
            }
        }
        y
    }

    fn params(
        n: usize,
        c: usize,
        o: usize,
        h: usize,
        w: usize,
        clamp: Option<[f32; 2]>,
        inputs: usize,
    ) -> Conv2dParams {
        let conv = Conv2d { stride: [1, 1], padding: [0, 0], groups: 1, clamp };
        conv.params(&[n, c, h, w], &[o, c, 1, 1], inputs)
    }

    /// Every ISA's kernel (and gemm's fallback) against an f64 sum, at awkward shapes: planes
    /// of 1, 7, 49 and 129 pixels (tails of every width), channel counts that leave every
    /// tile remainder, batches of 1 and 3, with and without bias, residual and clamp, NaN
    /// inputs kept.
    #[test]
    fn pointwise_matches_an_f64_sum_at_awkward_shapes() {
        let shapes = [
            (1, 1, 1, 1, 1),
            (1, 7, 9, 1, 7),
            (3, 16, 13, 7, 7),
            (1, 33, 29, 3, 43),
            (2, 5, 96, 11, 12),
            (1, 129, 17, 1, 129),
            (1, 160, 960, 7, 7),
            (1, 16, 96, 56, 56),
            // Input channels past the last run of four (the AVX-512 tile takes four a pass): 2 of 6.
            (1, 6, 11, 5, 5),
            // Tails of 2, 3 and 4 columns (a 14 × 14 map), and planes of 2 and 3 pixels with
            // no whole vector, shared among threads.
            (1, 37, 21, 2, 65),
            (1, 21, 10, 1, 131),
            (1, 64, 40, 14, 14),
            (2, 300, 230, 1, 2),
            (2, 300, 230, 3, 1),
            // Pixels past 256 KB a task: blocks outermost (with a tail column).
            (1, 1100, 13, 8, 16),
            (1, 1100, 13, 3, 43),
        ];
        for (i, &(n, c, o, h, w)) in shapes.iter().enumerate() {
            let configs =
                [(None, 2), (Some([0.0, 0.5]), 3), (Some([-0.25, 6.0]), 2), (Some([-1.0, 1.0]), 4), (None, 4)];
            for (clamp, count) in configs {
                let p = params(n, c, o, h, w, clamp, count);
                let mut x = values(n * c * h * w, i as u64 + 1);
                x[0] = f32::NAN;
                let wt = values(o * c, i as u64 + 100);
                let (bias, residual) = (values(o, i as u64 + 200), values(n * o * h * w, i as u64 + 300));
                let (bias, residual) = ((count > 2).then_some(&bias[..]), (count > 3).then_some(&residual[..]));
                let want = reference(&p, &x, &wt, bias, residual);
                for isa in CpuIsa::ALL.into_iter().filter(|isa| isa.supported()) {
                    let mut got = vec![f32::INFINITY; want.len()];
                    let inputs = Inputs { x: &x, w: &wt, bias, residual };
                    let run_at = |out: &mut [f32]| match Kernel::best(isa) {
                        Some(kernel) => run_on(kernel, &p, inputs, out),
                        None => with_gemm(&p, inputs, out),
                    };
                    run_at(&mut got);
                    for (at, (g, e)) in got.iter().zip(&want).enumerate() {
                        let ok = (g.is_nan() && e.is_nan()) || (g - e).abs() <= 1e-5 * (1.0 + c as f32).sqrt();
                        assert!(
                            ok,
                            "{isa:?} n{n} c{c} o{o} {h}x{w} clamp {clamp:?} inputs {count}: at {at} {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    /// An image's outputs are the same bits alone and in a batch, on one thread or several,
    /// with and without tail columns (9 × 13 has none, 7 × 7 one, 14 × 14 four on AVX-512, a
    /// 2-pixel plane nothing else), with channel tiles or blocks outermost (1100 inputs).
    #[test]
    fn pointwise_is_batch_and_thread_invariant() {
        for (c, h, w) in [(24, 9, 13), (24, 7, 7), (24, 14, 14), (300, 1, 2), (1100, 8, 16), (1100, 3, 43)] {
            let o = 40;
            let p3 = params(3, c, o, h, w, Some([0.0, 6.0]), 4);
            let p1 = params(1, c, o, h, w, Some([0.0, 6.0]), 4);
            let x = values(3 * c * h * w, 7);
            let (wt, bias, residual) = (values(o * c, 8), values(o, 9), values(3 * o * h * w, 10));
            let mut batch = vec![0.0; 3 * o * h * w];
            run(&p3, Inputs { x: &x, w: &wt, bias: Some(&bias), residual: Some(&residual) }, &mut batch);
            let serial = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
            for img in 0..3 {
                let mut alone = vec![0.0; o * h * w];
                let (x, residual) = (&x[img * c * h * w..][..c * h * w], &residual[img * o * h * w..][..o * h * w]);
                let inputs = Inputs { x, w: &wt, bias: Some(&bias), residual: Some(residual) };
                serial.install(|| run(&p1, inputs, &mut alone));
                assert_eq!(alone, batch[img * o * h * w..][..o * h * w], "{h}x{w} image {img}");
            }
        }
    }
}
