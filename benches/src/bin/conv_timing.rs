//! Times tandem's CPU 1 × 1 convolution (the op's CPU kernel, as the executor calls it) at
//! given shapes: bias and ReLU6 always, a residual with `,r`; with `,dw1` or `,dw2` the 3 × 3
//! depthwise convolution (padding 1, stride 1 or 2; O must equal C) instead. Threads: rayon's
//! default (`RAYON_NUM_THREADS`).
//!
//! Usage: conv_timing RUNS N,C,H,W,O[,r][,dw1|,dw2][,cold|,pair] ...
//! (`cold`: the caches flushed before each run). Prints one JSON object per shape:
//! {"shape", "median_ms", "gflops"}; with `pair`, {"shape", "plain_vs_huge_pages"}: the
//! layer on heap buffers (a) and on huge pages (b, `CpuOptions::huge_pages`) in turn
//! (`tandem_benches::paired`).

use anyhow::{Context, Result, ensure};
use rayon::prelude::*;
use tandem_runtime::backend::cpu::words::{Placement, Words};
use tandem_runtime::ops::conv::{Conv2dParams, cpu};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    ensure!(args.len() >= 3, "usage: conv_timing RUNS N,C,H,W,O[,r][,dw1|,dw2][,cold|,pair] ...");
    let runs: usize = args[1].parse().context("RUNS")?;
    let pool = rayon::ThreadPoolBuilder::new().build()?;
    for shape in &args[2..] {
        let parts: Vec<&str> = shape.split(',').collect();
        ensure!(parts.len() >= 5, "shape {shape}: want N,C,H,W,O[,r][,dw1|,dw2][,cold|,pair]");
        if let Some(flag) = parts[5..].iter().find(|f| !["r", "cold", "dw1", "dw2", "pair"].contains(f)) {
            anyhow::bail!("shape {shape}: unknown flag {flag:?} (want r, dw1, dw2, cold or pair)");
        }
        let dims: Vec<usize> = parts[..5].iter().map(|s| s.parse::<usize>()).collect::<Result<_, _>>()?;
        let (n, c, h, w, o) = (dims[0], dims[1], dims[2], dims[3], dims[4]);
        let residual = parts[5..].contains(&"r");
        let cold = parts[5..].contains(&"cold");
        let pair = parts[5..].contains(&"pair");
        ensure!(!(cold && pair), "shape {shape}: cold and pair do not go together");
        // Depthwise: its stride (0 for the 1 × 1 convolution).
        let depthwise_stride = [("dw1", 1), ("dw2", 2)].iter().find(|(f, _)| parts[5..].contains(f)).map_or(0, |f| f.1);
        ensure!(depthwise_stride == 0 || (o == c && !residual), "shape {shape}: depthwise wants O = C and no residual");
        let (k, oh, ow) = match depthwise_stride {
            0 => (1, h, w),
            s => (3, (h - 1) / s + 1, (w - 1) / s + 1),
        };
        let value = |i: usize, salt: usize| ((i * 7919 + salt) % 1000) as f32 / 1000.0 - 0.5;
        let x: Vec<f32> = (0..n * c * h * w).map(|i| value(i, 1)).collect();
        let weights_per_output = if depthwise_stride > 0 { 9 } else { c };
        let wt: Vec<f32> = (0..o * weights_per_output).map(|i| value(i, 2)).collect();
        let bias: Vec<f32> = (0..o).map(|i| value(i, 3)).collect();
        let res: Vec<f32> = (0..n * o * oh * ow).map(|i| value(i, 4)).collect();
        let mut out = vec![0f32; n * o * oh * ow];
        let p = Conv2dParams {
            n: n as u32,
            c: c as u32,
            h: h as u32,
            w: w as u32,
            o: o as u32,
            kh: k,
            kw: k,
            oh: oh as u32,
            ow: ow as u32,
            stride_h: depthwise_stride.max(1) as u32,
            stride_w: depthwise_stride.max(1) as u32,
            pad_h: k / 2,
            pad_w: k / 2,
            groups: if depthwise_stride > 0 { c as u32 } else { 1 },
            has_bias: 1,
            has_clamp: 1,
            clamp_min: 0.0,
            clamp_max: 6.0,
            has_residual: residual as u32,
            _pad: 0,
        };
        if pair {
            // The same inputs and output again, on huge pages (`CpuOptions::huge_pages`).
            let on_huge = |v: &[f32]| -> Result<Words> {
                let mut words = Words::zeroed(v.len(), Placement::Working).context("cannot allocate")?;
                words.copy_from_slice(bytemuck::cast_slice(v));
                Ok(words)
            };
            let (hx, hres, mut hout) = (on_huge(&x)?, on_huge(&res)?, on_huge(&out)?);
            let figures = pool.install(|| {
                let plain = || -> Result<()> {
                    cpu(&p, &x, &wt, Some(&bias), residual.then_some(&res[..]), &mut out);
                    Ok(())
                };
                let huge = || -> Result<()> {
                    let (x, res) = (bytemuck::cast_slice(&hx), bytemuck::cast_slice(&hres));
                    cpu(&p, x, &wt, Some(&bias), residual.then_some(res), bytemuck::cast_slice_mut(&mut hout));
                    Ok(())
                };
                tandem_benches::paired(runs, plain, huge)
            })?;
            println!("{{\"shape\": \"{shape}\", \"plain_vs_huge_pages\": {figures}}}");
            continue;
        }
        let mut run = || -> Result<()> {
            cpu(&p, &x, &wt, Some(&bias), residual.then_some(&res[..]), &mut out);
            Ok(())
        };
        // On a thread of the pool, as a session runs its graph (`AnySession::blocking`): each
        // call's tasks then start without waking the pool from outside.
        let median = pool.install(|| -> Result<f64> {
            run()?;
            if !cold {
                return tandem_benches::median_ms(runs, &mut run);
            }
            // Caches flushed before each run (as in a model, where the weight and often the
            // input come from the last-level cache or memory): only the run is timed.
            let mut flush = vec![0u8; 64 << 20];
            let mut round = 0u8;
            let flush_caches = || {
                round = round.wrapping_add(1);
                flush.par_chunks_mut(1 << 16).for_each(|c| c.fill(round));
            };
            tandem_benches::median_ms_after(runs, flush_caches, &mut run)
        })?;
        let gflops = 2.0 * (n * weights_per_output * oh * ow * o) as f64 / (median * 1e6);
        println!("{{\"shape\": \"{shape}\", \"median_ms\": {median:.4}, \"gflops\": {gflops:.1}}}");
    }
    Ok(())
}
