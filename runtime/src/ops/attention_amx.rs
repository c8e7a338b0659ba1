//! A whole sequence's attention for one head in bf16 on AMX tiles: what `--precision bf16`
//! ([`super::attention::Attention::bf16_products`]) buys an encoder on Sapphire Rapids and
//! later. q, k and v are rounded to bf16 (nearest even, as PyTorch rounds them under bf16
//! autocast), the scores `q · kᵀ` summed in f32 on the tiles, the softmax taken in f32 and its
//! weights rounded to bf16 for `weights · v`, again with f32 sums. The error this adds is
//! bf16's: each operand to 8 significant bits (relative 2^-9).
//!
//! Why: with f32 products an encoder's attention is many small products (128 × 128 × 32 per
//! sequence and head for MiniLM at 128 tokens) that run far below the f32 FMA rate, and under
//! `--precision bf16` it was a quarter of MiniLM's time once the linear layers ran on AMX. On
//! the tiles the products of a 128-token head take about 130 tile instructions; the softmax's
//! exponentials are what is left.
//!
//! Each (sequence, head) is computed on its own, in the same order whatever else is in the
//! batch, so a text's result does not depend on its batch.

use super::attention::{AttentionParams, SeqRows};
use super::matmul::amx::{self, ALayout, Job, Tiles};
use super::matmul::bf16_dot::round_row;
use std::cell::RefCell;

/// Tile rows and bf16 values of K per tile step (as `amx`'s).
const ROWS: usize = 16;
const DEPTH: usize = 32;

/// One task's buffers, kept by each thread from one head to the next.
#[derive(Default)]
struct Scratch {
    /// q rows rounded: `l16` rows of `d32` values, zeros past d and past l.
    q: Vec<u16>,
    /// k rows rounded: `n16` rows of `d32`.
    k: Vec<u16>,
    /// k as the tiles of the scores' weight.
    k_tiles: Vec<u32>,
    /// Scores, then softmax weights in f32: `l16` rows of `n16`.
    scores: Vec<f32>,
    /// Softmax weights rounded: `l16` rows of `n32`, zeros past each row's visible keys.
    weights: Vec<u16>,
    /// v as the tiles of the output's weight.
    v_tiles: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `out` rows `rows.q` × columns of head `h` ← softmax(scale · q kᵀ) v over the sequence's
/// visible kv rows, q `[tokens, heads · d]`, k and v `[kv_tokens, kv_heads · d]` (f32), in
/// bf16 products (see the module doc). Rows that see no key are left as they are (zeros).
///
/// # Safety
/// [`crate::ops::isa::amx_bf16`] is true; `rows` lie inside q, k and v (as
/// [`SeqRows::of`] clamps them); `out` points at `[tokens, heads · d]` floats of which this
/// task alone writes rows `rows.q`, columns of head h.
pub(crate) unsafe fn head(
    p: &AttentionParams,
    rows: &SeqRows,
    h: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: *mut f32,
) {
    let (heads, kv_heads, d) = (p.num_heads as usize, p.num_kv_heads as usize, p.head_dim as usize);
    let (qw, kw) = (heads * d, kv_heads * d);
    let kv_col = (h / (heads / kv_heads)) * d;
    let (l, n) = (rows.q.len(), rows.kv.len());
    if l == 0 || n == 0 || d == 0 {
        return;
    }
    let (l16, n16, n32, d32) =
        (l.next_multiple_of(ROWS), n.next_multiple_of(ROWS), n.next_multiple_of(DEPTH), d.next_multiple_of(DEPTH));
    SCRATCH.with_borrow_mut(|s| {
        // SAFETY (the whole block): the CPU has AMX and so AVX-512 BF16 (`amx_bf16`); every
        // row read lies inside q, k or v (the caller's contract) and every buffer is sized
        // for the rows and tiles the products read.
        unsafe {
            round_rows(q, rows.q.start, qw, h * d, d, l, l16, d32, &mut s.q);
            round_rows(k, rows.kv.start, kw, kv_col, d, n, n16, d32, &mut s.k);
            amx::pack(bytemuck::cast_slice(&s.k), n16, d32, &mut s.k_tiles, false);
            // Every score tile is stored whole.
            at_least(&mut s.scores, l16 * n16);
            let tiles = Tiles::configure();
            let scores = Job {
                a: s.q.as_ptr(),
                a_layout: ALayout::Rows(d32),
                b: s.k_tiles.as_ptr(),
                k_steps: d32 / DEPTH,
                out: s.scores.as_mut_ptr(),
                ldo: n16,
                m: l16,
                n: n16,
            };
            scores.run(&tiles, 0..l16 / ROWS, 0..n16 / ROWS);
            // Rows l.. of the weights are left as they are: they make output rows past l,
            // which are never stored (each output row reads only its own row of weights).
            at_least(&mut s.weights, l16 * n32);
            for (i, weights) in s.weights.chunks_exact_mut(n32).take(l).enumerate() {
                let visible = rows.visible(i, p.causal != 0).len();
                let rounded = visible.next_multiple_of(DEPTH);
                if visible > 0 {
                    let row = &mut s.scores[i * n16..][..visible];
                    super::elementwise::softmax_scaled_in_place(row, p.scale);
                    round_row(row, &mut weights[..rounded]);
                }
                weights[rounded..].fill(0);
            }
            amx::pack_columns(v.as_ptr().add(rows.kv.start * kw + kv_col), kw, n, d, &mut s.v_tiles);
            let output = Job {
                a: s.weights.as_ptr(),
                a_layout: ALayout::Rows(n32),
                b: s.v_tiles.as_ptr(),
                k_steps: n32 / DEPTH,
                out: out.add(rows.q.start * qw + h * d),
                ldo: qw,
                m: l,
                n: d,
            };
            output.run(&tiles, 0..l16 / ROWS, 0..d.div_ceil(ROWS));
        }
    });
}

/// `dst` ← rows `first..first + count` of `x` (`stride` apart), columns `col..col + d`,
/// rounded to bf16, as rows of `width` values (zeros past d); `dst` holds at least
/// `padded_rows` rows.
///
/// # Safety
/// AVX-512 BF16; the rows lie inside `x`; `width` is a multiple of 32, ≥ d.
#[allow(clippy::too_many_arguments)]
unsafe fn round_rows(
    x: &[f32],
    first: usize,
    stride: usize,
    col: usize,
    d: usize,
    count: usize,
    padded_rows: usize,
    width: usize,
    dst: &mut Vec<u16>,
) {
    // Rows past `count` are left as they are: they make outputs (scores of rows past l, or of
    // keys past n) that are never read.
    at_least(dst, padded_rows * width);
    for (i, row) in dst.chunks_exact_mut(width).take(count).enumerate() {
        // SAFETY: the caller's contract; `row` holds `width` ≥ d.next_multiple_of(32) values.
        unsafe { round_row(&x[(first + i) * stride + col..][..d], row) };
    }
}

/// Grows `v` to `len` values (zeros) if it is shorter; what it holds stays.
fn at_least<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

#[cfg(test)]
mod tests {
    use super::super::attention::{Attention, KvRows, cpu};
    use half::bf16;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn round(x: f32) -> f64 {
        f64::from(bf16::from_f32(x).to_f32())
    }

    /// Attention in f64 from q, k, v rounded to bf16 and softmax weights rounded to bf16, as
    /// the AMX path rounds them: what is left between the two is f32 summation and a weight
    /// that lands on the other side of a bf16 rounding boundary.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        lengths: &[usize],
        heads: usize,
        kv_heads: usize,
        d: usize,
        scale: f32,
        causal: bool,
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Vec<f64> {
        let (qw, kw) = (heads * d, kv_heads * d);
        let tokens: usize = lengths.iter().sum();
        let mut out = vec![0.0; tokens * qw];
        let mut start = 0;
        for &len in lengths {
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                for i in 0..len {
                    let visible = if causal { i + 1 } else { len };
                    let scores: Vec<f64> = (0..visible)
                        .map(|j| {
                            let dot: f64 = (0..d)
                                .map(|c| {
                                    round(q[(start + i) * qw + h * d + c]) * round(k[(start + j) * kw + kvh * d + c])
                                })
                                .sum();
                            dot * f64::from(scale)
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..d {
                        out[(start + i) * qw + h * d + c] = (0..visible)
                            .map(|j| round((e[j] / sum) as f32) * round(v[(start + j) * kw + kvh * d + c]))
                            .sum();
                    }
                }
            }
            start += len;
        }
        out
    }

    #[test]
    fn agrees_with_bf16_rounded_f64_at_awkward_shapes() {
        if !crate::ops::isa::amx_bf16() {
            eprintln!("skipped: this CPU has no AMX-BF16, or Linux did not grant the tile state");
            return;
        }
        let mut rng = StdRng::seed_from_u64(5);
        for (lengths, heads, kv_heads, d, causal) in [
            (vec![1], 1, 1, 1, false),
            (vec![7, 16, 17], 2, 1, 7, false),
            (vec![33, 0, 129], 4, 2, 32, false),
            (vec![128, 5], 2, 2, 33, true),
            (vec![50], 3, 1, 64, false),
            (vec![16, 31, 2], 2, 1, 129, true),
        ] {
            let tokens: usize = lengths.iter().sum();
            let (qw, kw) = (heads * d, kv_heads * d);
            let mut values = |n: usize| (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect::<Vec<_>>();
            let (q, k, v) = (values(tokens * qw), values(tokens * kw), values(tokens * kw));
            let mut table = Vec::new();
            let mut start = 0;
            for &len in &lengths {
                table.extend([start as u32, len as u32]);
                start += len;
            }
            let scale = 1.0 / (d as f32).sqrt();
            let op = Attention {
                num_heads: heads as u32,
                num_kv_heads: kv_heads as u32,
                scale,
                causal,
                bf16_products: true,
            };
            let p = op.params(&[tokens, qw], &[tokens, kw], &[lengths.len(), 2]);
            let mut out = vec![f32::NAN; tokens * qw];
            cpu(&p, &q, KvRows::F32(&k), KvRows::F32(&v), &table, &mut out, true);
            let want = reference(&lengths, heads, kv_heads, d, scale, causal, &q, &k, &v);
            for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                // A weight on the other side of a bf16 boundary moves an output by at most
                // 2^-8 of that weight times |v| ≤ 2; f32 sums add far less.
                assert!(
                    (f64::from(got) - want).abs() <= 1e-2,
                    "{lengths:?} h{heads}/{kv_heads} d{d} at {i}: {got} vs {want}"
                );
            }
        }
    }
}
