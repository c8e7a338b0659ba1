//! The CPU backend: the reference implementation of every op, and the fallback everywhere.
//! Kernels live beside their ops in `ops/`; this file only unpacks buffers and calls them.

use super::{Arg, Backend, OutArg};
use crate::error::{Error, Result};
use crate::ops::{self, Op, OpKind};
use crate::tensor::{DType, HostTensor, TensorData};
use half::f16;
use words::{Placement, Words};

pub mod words;

/// A CPU buffer: 4-byte words (`words.rs`: a large working buffer on huge pages), so f32 and
/// u32 views are always aligned; and, when it holds a
/// weight (`upload`), that weight packed for its products, on first use, and dropped
/// whenever the words are written (every write goes through `words_mut`): AMX's tiles of a
/// bf16 weight, the panels of an f32 one (`ops::matmul::panels`).
#[derive(Debug, Default)]
pub struct CpuBuffer {
    words: Words,
    /// Uploaded as a graph weight: its f32 products may keep panels (not worth it for a
    /// buffer rewritten every run).
    weight: bool,
    tiles: ops::matmul::WeightTiles,
    panels: ops::matmul::WeightPanels,
}

impl CpuBuffer {
    fn words_mut(&mut self) -> &mut [u32] {
        self.tiles.clear();
        self.panels.clear();
        &mut self.words
    }
    fn f32(&self, n: usize) -> &[f32] {
        &bytemuck::cast_slice(&self.words)[..n]
    }
    fn f32_mut(&mut self, n: usize) -> &mut [f32] {
        &mut bytemuck::cast_slice_mut(self.words_mut())[..n]
    }
    fn u32(&self, n: usize) -> &[u32] {
        &self.words[..n]
    }
    fn u32_mut(&mut self, n: usize) -> &mut [u32] {
        &mut self.words_mut()[..n]
    }
    fn f16(&self, n: usize) -> &[f16] {
        &bytemuck::cast_slice(&self.words)[..n]
    }
    fn f16_mut(&mut self, n: usize) -> &mut [f16] {
        &mut bytemuck::cast_slice_mut(self.words_mut())[..n]
    }
    fn bytes(&self, n: usize) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..n]
    }
}

/// Settings of the CPU backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuOptions {
    /// Matmuls with a GGUF block-quantized weight (Q8_0 … Q6_K) quantize their activations
    /// to 8 bits and run integer dot products (`ops::qdot`, llama.cpp's CPU path): several
    /// times faster, at a relative error of about 1e-3–1e-2 of `|w|·|x|` per output; with a
    /// bf16 weight, on a CPU with AVX-512 BF16, they round their activations to bf16 and run
    /// bf16 dot products (`ops::matmul::bf16_dot`: MiniLM 1.5–1.9× its f32 speed on Zen 4, a relative error
    /// of about 2^-9 of `|w|·|x|`). Off, the weights are dequantized to f32 and the product is
    /// exact to f32 rounding: the reference the other backends are tested against. On by
    /// default.
    pub quantized_activations: bool,
    /// Working buffers (a run's values and states) of 1 MiB and more are mapped on 2 MiB
    /// transparent huge pages where Linux gives them (`words.rs`): fewer TLB misses for
    /// kernels that read many rows of a large map at once; and so are weights of 2 MiB and
    /// more, and their kept panels, in their whole 2 MiB ranges (no memory added). On by
    /// default; off for a side-by-side measurement.
    pub huge_pages: bool,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions { quantized_activations: true, huge_pages: true }
    }
}

/// The CPU backend. Its SIMD level is [`CpuIsa::active`](crate::ops::isa::CpuIsa::active)
/// (the best the processor has, capped by `TANDEM_CPU_ISA`).
#[derive(Debug, Default, Clone)]
pub struct CpuBackend {
    options: CpuOptions,
}

impl CpuBackend {
    /// The fast backend ([`CpuOptions::default`]).
    pub fn new() -> Self {
        Self::with_options(CpuOptions::default())
    }

    pub fn with_options(options: CpuOptions) -> Self {
        CpuBackend { options }
    }

    /// The reference: every product in f32 (quantized weights dequantized exactly).
    pub fn exact() -> Self {
        Self::with_options(CpuOptions { quantized_activations: false, ..CpuOptions::default() })
    }

    pub fn options(&self) -> CpuOptions {
        self.options
    }

    /// A zeroed buffer of `bytes`, placed as `placement` says unless huge pages are off.
    fn alloc_words(&self, bytes: usize, placement: Placement) -> Result<CpuBuffer> {
        let placement = if self.options.huge_pages { placement } else { Placement::Heap };
        let words = Words::zeroed(bytes.div_ceil(4), placement)
            .ok_or_else(|| Error::backend("cpu", format!("cannot allocate {bytes} bytes")))?;
        let panels = ops::matmul::WeightPanels::new(placement);
        Ok(CpuBuffer { words, panels, ..Default::default() })
    }

    fn stored_path(&self) -> ops::matmul::StoredPath {
        if self.options.quantized_activations {
            ops::matmul::StoredPath::LowPrecision(ops::isa::CpuIsa::active())
        } else {
            ops::matmul::StoredPath::Dequantized
        }
    }
}

fn count(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Backend for CpuBackend {
    type Buffer = CpuBuffer;
    type Recording = ();

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn device_description(&self) -> String {
        let isa = ops::isa::CpuIsa::active();
        let exact = if self.options.quantized_activations { "" } else { ", exact f32 products" };
        // bf16 weights (`--precision bf16`) are multiplied in bf16 only where the CPU can.
        let bf16 = match self.options.quantized_activations && ops::matmul::bf16_dot::available(isa) {
            true if ops::isa::amx_bf16() => "+bf16+amx",
            true => "+bf16",
            false => "",
        };
        format!("CPU, {} threads, {isa}{bf16}{exact}", rayon::current_num_threads())
    }

    fn supports(&self, _op: OpKind) -> bool {
        true
    }

    fn supports_dtypes(&self, _op: &Op, _inputs: &[DType]) -> bool {
        true
    }

    fn alloc(&self, bytes: usize) -> Result<CpuBuffer> {
        self.alloc_words(bytes, Placement::Working)
    }

    fn upload(&self, tensor: &HostTensor) -> Result<CpuBuffer> {
        let mut buf = self.alloc_words(tensor.data.as_bytes().len(), Placement::Weight)?;
        self.write(&mut (), &mut buf, 0, tensor)?;
        buf.weight = true;
        Ok(buf)
    }

    fn begin(&self) -> Result<()> {
        Ok(())
    }

    fn write(&self, _rec: &mut (), buf: &mut CpuBuffer, at: usize, tensor: &HostTensor) -> Result<()> {
        let bytes = tensor.data.as_bytes();
        let all = bytemuck::cast_slice_mut::<u32, u8>(buf.words_mut());
        let Some(dst) = at.checked_add(bytes.len()).and_then(|end| all.get_mut(at..end)) else {
            return Err(Error::backend(
                "cpu",
                format!("writing {} bytes at {at} into a buffer of {}", bytes.len(), all.len()),
            ));
        };
        copy_bytes(dst, bytes);
        Ok(())
    }

    fn copy_within(&self, buf: &mut CpuBuffer, src: usize, dst: usize, bytes: usize) -> Result<()> {
        let all = bytemuck::cast_slice_mut::<u32, u8>(buf.words_mut());
        if src.max(dst).checked_add(bytes).is_none_or(|end| end > all.len()) {
            return Err(Error::backend(
                "cpu",
                format!("copying {bytes} bytes from {src} to {dst} in a buffer of {}", all.len()),
            ));
        }
        all.copy_within(src..src + bytes, dst);
        Ok(())
    }

    fn dispatch(
        &self,
        _rec: &mut (),
        op: &Op,
        inputs: &[Arg<'_, CpuBuffer>],
        outputs: &mut [OutArg<'_, CpuBuffer>],
    ) -> Result<()> {
        let n_out = count(outputs[0].shape);
        let f = |i: usize| inputs[i].buf.f32(count(inputs[i].shape));
        let h = |i: usize| inputs[i].buf.f16(count(inputs[i].shape));
        let u = |i: usize| inputs[i].buf.u32(count(inputs[i].shape));
        let out_shape = outputs[0].shape;
        // An f16 KV cache: rows rounded as they are stored, widened as attention reads them
        // (never the whole cache copied per step, as the widening below would).
        let f16_cache = match op {
            Op::KvWrite(_) => outputs[0].dtype == DType::F16,
            Op::Attention(_) => inputs[0].dtype == DType::F32 && inputs[1].dtype == DType::F16,
            _ => false,
        };
        if f16_cache {
            let out = &mut outputs[0];
            match op {
                Op::KvWrite(_) => {
                    let p = ops::attention::KvWrite::params(inputs[0].shape, out_shape, inputs[1].shape);
                    ops::attention::kv_write_cpu(&p, f(0), u(1), out.buf.f16_mut(n_out));
                }
                Op::Attention(a) => {
                    use ops::attention::KvRows;
                    let p = a.params(inputs[0].shape, inputs[1].shape, inputs[3].shape);
                    let (k, v) = (KvRows::F16(h(1)), KvRows::F16(h(2)));
                    ops::attention::cpu(&p, f(0), k, v, u(3), out.buf.f32_mut(n_out), false);
                }
                _ => unreachable!("only kv_write and attention read an f16 cache"),
            }
            return Ok(());
        }
        // Other f16 operands (matmul and attention: the f16 kernels' reference) compute in f32
        // and round the result once, as the f16 kernels do.
        let has_f16 = inputs.iter().any(|a| a.dtype == DType::F16) || outputs.iter().any(|o| o.dtype == DType::F16);
        if has_f16 && op.kind() != OpKind::Cast {
            return self.dispatch_widened(op, inputs, outputs);
        }
        let out = &mut outputs[0];
        match op {
            Op::MatMul(m) => {
                let p = m.params(inputs[0].shape, inputs[1].shape, inputs.len() > 2);
                let bias = (inputs.len() > 2).then(|| f(2));
                match inputs[1].dtype {
                    DType::F32 => {
                        let panels = inputs[1].buf.weight.then_some(&inputs[1].buf.panels);
                        ops::matmul::cpu(&p, f(0), f(1), bias, out.buf.f32_mut(n_out), panels)
                    }
                    stored => {
                        let b = stored_bytes(&inputs[1])?;
                        let path = self.stored_path();
                        let tiles = Some(&inputs[1].buf.tiles);
                        ops::matmul::cpu_stored(&p, f(0), stored, b, bias, out.buf.f32_mut(n_out), path, tiles)?
                    }
                }
            }
            Op::LoraMatMul(l) => {
                let (_, p) = l.params(inputs[0].shape, inputs[1].shape, inputs[2].shape, inputs.len() > 4);
                let bias = (inputs.len() > 4).then(|| f(4));
                ops::matmul::lora_cpu(&p, f(0), f(1), f(2), f(3), bias, out.buf.f32_mut(n_out));
            }
            Op::Unary(kind) => ops::elementwise::unary_cpu(*kind, f(0), out.buf.f32_mut(n_out)),
            Op::Binary(kind) => {
                let p = ops::elementwise::binary_params(*kind, inputs[0].shape, inputs[1].shape, out_shape);
                ops::elementwise::binary_cpu(&p, f(0), f(1), out.buf.f32_mut(n_out));
            }
            Op::Cast(to) => cast(&inputs[0], *to, out.buf, n_out),
            Op::LayerNorm { eps } => {
                let p = ops::norm::NormParams::new(inputs[0].shape, *eps);
                ops::norm::layer_norm_cpu(&p, f(0), f(1), f(2), out.buf.f32_mut(n_out));
            }
            Op::RmsNorm { eps } => {
                let p = ops::norm::NormParams::new(inputs[0].shape, *eps);
                ops::norm::rms_norm_cpu(&p, f(0), f(1), out.buf.f32_mut(n_out));
            }
            Op::Softmax => {
                let p = ops::norm::NormParams::new(inputs[0].shape, 0.0);
                ops::norm::softmax_cpu(&p, f(0), out.buf.f32_mut(n_out));
            }
            Op::L2Normalize { eps } => {
                let p = ops::norm::NormParams::new(inputs[0].shape, *eps);
                ops::norm::l2_normalize_cpu(&p, f(0), out.buf.f32_mut(n_out));
            }
            Op::Attention(a) => {
                let p = a.params(inputs[0].shape, inputs[1].shape, inputs[3].shape);
                use ops::attention::KvRows;
                // bf16 products where the graph allows them, as for a bf16 weight's matmul.
                let bf16 = a.bf16_products && self.options.quantized_activations;
                ops::attention::cpu(&p, f(0), KvRows::F32(f(1)), KvRows::F32(f(2)), u(3), out.buf.f32_mut(n_out), bf16);
            }
            Op::KvWrite(_) => {
                // The cache is the output (written in place); inputs are new rows and table.
                let p = ops::attention::KvWrite::params(inputs[0].shape, out_shape, inputs[1].shape);
                ops::attention::kv_write_cpu(&p, f(0), u(1), out.buf.f32_mut(n_out));
            }
            Op::Gather => {
                let p = ops::gather::GatherParams::new(inputs[0].shape, inputs[1].shape);
                match inputs[0].dtype {
                    DType::F32 => ops::gather::cpu(&p, f(0), u(1), out.buf.f32_mut(n_out)),
                    stored => {
                        let table = stored_bytes(&inputs[0])?;
                        ops::gather::cpu_stored(&p, stored, table, u(1), out.buf.f32_mut(n_out))?
                    }
                }
            }
            Op::Rope(r) => {
                let p = r.params(inputs[0].shape);
                ops::rope::cpu(&p, f(0), u(1), f(2), out.buf.f32_mut(n_out));
            }
            Op::Pool(kind) => {
                let p = ops::pool::PoolParams::new(*kind, inputs[0].shape, inputs[1].shape);
                ops::pool::cpu(&p, f(0), u(1), out.buf.f32_mut(n_out));
            }
            Op::SoftLogic { connective, logic } => {
                let p = ops::softlogic::SoftLogicParams::new(n_out, *logic, *connective);
                let b = if inputs.len() > 1 { f(1) } else { &[] };
                ops::softlogic::soft_logic_cpu(&p, f(0), b, out.buf.f32_mut(n_out));
            }
            Op::Aggregate { logic, optional_weight } => {
                let (items, entities) = (inputs[0].shape[0], inputs[0].shape[1]);
                let p =
                    ops::softlogic::AggregateParams::new(items, entities, inputs[3].shape[0], *logic, *optional_weight);
                let x =
                    ops::softlogic::AggregateInputs { qe: f(0), mask: u(1), kind: u(2), weight: f(3), essential: u(4) };
                let [score, contribution] = outputs else {
                    return Err(Error::backend("cpu", "aggregate writes two outputs, score and contribution"));
                };
                ops::softlogic::aggregate_cpu(
                    &p,
                    x,
                    score.buf.f32_mut(items),
                    contribution.buf.f32_mut(items * entities),
                );
            }
            Op::Conv2d(c) => {
                let p = c.params(inputs[0].shape, inputs[1].shape, inputs.len());
                let (bias, residual) = ((inputs.len() > 2).then(|| f(2)), (inputs.len() > 3).then(|| f(3)));
                ops::conv::cpu(&p, f(0), f(1), bias, residual, out.buf.f32_mut(n_out));
            }
            Op::Clamp { min, max } => {
                let p = ops::elementwise::ClampParams { len: n_out as u32, _pad: 0, min: *min, max: *max };
                ops::elementwise::clamp_cpu(&p, f(0), out.buf.f32_mut(n_out));
            }
            Op::GlobalAvgPool => {
                let p = ops::conv::GlobalPoolParams::new(inputs[0].shape);
                ops::conv::global_avg_pool_cpu(&p, f(0), out.buf.f32_mut(n_out));
            }
            Op::Sample => {
                let p = ops::sample::SampleParams::new(inputs[0].shape, inputs[2].shape);
                ops::sample::cpu(&p, f(0), f(1), u(2), u(3), out.buf.u32_mut(n_out));
            }
            Op::Reshape(_) => return Err(Error::backend("cpu", "reshape is a view and is never dispatched")),
        }
        Ok(())
    }

    async fn finish(&self, _rec: (), reads: &[Arg<'_, CpuBuffer>]) -> Result<Vec<HostTensor>> {
        reads
            .iter()
            .map(|r| {
                let n = r.dtype.bytes_for_shape(r.shape)?;
                HostTensor::new(r.shape.to_vec(), TensorData::from_bytes(r.dtype, r.buf.bytes(n))?)
            })
            .collect()
    }
}

/// The raw bytes of a stored (non-f32) operand.
fn stored_bytes<'a>(arg: &Arg<'a, CpuBuffer>) -> Result<&'a [u8]> {
    let bytes = arg.dtype.bytes_for_shape(arg.shape)?;
    Ok(arg.buf.bytes(bytes))
}

impl CpuBackend {
    /// Runs an op with f16 operands on f32 copies and rounds its outputs to f16.
    fn dispatch_widened(
        &self,
        op: &Op,
        inputs: &[Arg<'_, CpuBuffer>],
        outputs: &mut [OutArg<'_, CpuBuffer>],
    ) -> Result<()> {
        let widen = |a: &Arg<'_, CpuBuffer>| -> Result<CpuBuffer> {
            let n = count(a.shape);
            let mut wide = self.alloc(4 * n)?;
            for (w, h) in wide.f32_mut(n).iter_mut().zip(a.buf.f16(n)) {
                *w = h.to_f32();
            }
            Ok(wide)
        };
        let wide: Vec<Option<CpuBuffer>> =
            inputs.iter().map(|a| (a.dtype == DType::F16).then(|| widen(a)).transpose()).collect::<Result<_>>()?;
        let args: Vec<Arg<'_, CpuBuffer>> = inputs
            .iter()
            .zip(&wide)
            .map(|(a, w)| match w {
                Some(buf) => Arg { buf, dtype: DType::F32, shape: a.shape },
                None => Arg { buf: a.buf, dtype: a.dtype, shape: a.shape },
            })
            .collect();
        let mut wide_outs: Vec<CpuBuffer> =
            outputs.iter().map(|o| self.alloc(4 * count(o.shape))).collect::<Result<_>>()?;
        {
            let mut outs: Vec<OutArg<'_, CpuBuffer>> = wide_outs
                .iter_mut()
                .zip(outputs.iter())
                .map(|(buf, o)| OutArg { buf, dtype: DType::F32, shape: o.shape })
                .collect();
            self.dispatch(&mut (), op, &args, &mut outs)?;
        }
        for (wide, out) in wide_outs.iter().zip(outputs.iter_mut()) {
            let n = count(out.shape);
            if out.dtype == DType::F16 {
                let halves = &mut bytemuck::cast_slice_mut::<u32, f16>(out.buf.words_mut())[..n];
                halves.iter_mut().zip(wide.f32(n)).for_each(|(h, &x)| *h = f16::from_f32(x));
            } else {
                out.buf.f32_mut(n).copy_from_slice(wide.f32(n));
            }
        }
        Ok(())
    }
}

fn cast(input: &Arg<'_, CpuBuffer>, to: DType, out: &mut CpuBuffer, n: usize) {
    match (input.dtype, to) {
        (DType::F32, DType::F16) => {
            let src: Vec<f16> = input.buf.f32(n).iter().map(|&x| f16::from_f32(x)).collect();
            bytemuck::cast_slice_mut::<u32, f16>(out.words_mut())[..n].copy_from_slice(&src);
        }
        (DType::F16, DType::F32) => {
            let src: Vec<f32> = input.buf.f16(n).iter().map(|x| x.to_f32()).collect();
            out.f32_mut(n).copy_from_slice(&src);
        }
        (DType::U32, DType::F32) => {
            let src: Vec<f32> = input.buf.u32(n).iter().map(|&x| x as f32).collect();
            out.f32_mut(n).copy_from_slice(&src);
        }
        _ => {
            let bytes = to.bytes_for(n).expect("a same-dtype cast of a planned shape");
            let src = input.buf.bytes(bytes).to_vec();
            bytemuck::cast_slice_mut::<u32, u8>(out.words_mut())[..bytes].copy_from_slice(&src);
        }
    }
}

/// Copies `src` into `dst` (the same length), in parallel from [`PARALLEL_COPY_BYTES`]: a
/// weight's first write is also the first touch of its pages, so the page faults (and the
/// kernel's zeroing of each page) are shared among the threads too.
fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    use rayon::prelude::*;
    if src.len() < PARALLEL_COPY_BYTES {
        return dst.copy_from_slice(src);
    }
    dst.par_chunks_mut(COPY_CHUNK).zip(src.par_chunks(COPY_CHUNK)).for_each(|(d, s)| d.copy_from_slice(s));
}

/// Writes from this size on are copied by the pool's threads ([`copy_bytes`]).
const PARALLEL_COPY_BYTES: usize = 1 << 20;

/// Bytes per parallel copy task.
const COPY_CHUNK: usize = 256 << 10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::{Activation, MatMul};

    /// `a · wᵀ` through the backend's dispatch, w an uploaded weight (so its panels are kept
    /// where the CPU has AVX2).
    fn product(backend: &CpuBackend, a: &CpuBuffer, w: &CpuBuffer, (m, n, k): (usize, usize, usize)) -> Vec<f32> {
        let mut out = backend.alloc(4 * m * n).unwrap();
        let op = Op::MatMul(MatMul { trans_b: true, activation: Activation::None });
        let inputs =
            [Arg { buf: a, dtype: DType::F32, shape: &[m, k] }, Arg { buf: w, dtype: DType::F32, shape: &[n, k] }];
        let mut outputs = [OutArg { buf: &mut out, dtype: DType::F32, shape: &[m, n] }];
        backend.dispatch(&mut (), &op, &inputs, &mut outputs).unwrap();
        out.f32(m * n).to_vec()
    }

    /// A weight's kept panels give its product, and a write to the weight drops them: the
    /// next product is by the new values, not by panels of the old ones.
    #[test]
    fn a_weights_kept_panels_follow_its_writes() {
        let backend = CpuBackend::new();
        let (m, n, k) = (16, 40, 24);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let w1: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 2.0).collect();
        let w2: Vec<f32> = w1.iter().map(|x| 2.0 * x + 1.0).collect();
        let reference = |w: &[f32]| -> Vec<f32> {
            (0..m * n).map(|o| (0..k).map(|p| a[o / n * k + p] * w[o % n * k + p]).sum()).collect()
        };
        let a_buf = backend.upload(&HostTensor::f32(vec![m, k], a.clone()).unwrap()).unwrap();
        let mut w_buf = backend.upload(&HostTensor::f32(vec![n, k], w1.clone()).unwrap()).unwrap();
        // Small integers: every order of summation gives the exact sums.
        assert_eq!(product(&backend, &a_buf, &w_buf, (m, n, k)), reference(&w1));
        assert_eq!(product(&backend, &a_buf, &w_buf, (m, n, k)), reference(&w1), "with the kept panels");
        backend.write(&mut (), &mut w_buf, 0, &HostTensor::f32(vec![n, k], w2.clone()).unwrap()).unwrap();
        assert_eq!(product(&backend, &a_buf, &w_buf, (m, n, k)), reference(&w2), "after the weight was rewritten");
    }

    /// Writes large enough to be copied in parallel ([`copy_bytes`]) land byte for byte, at
    /// an offset that is no multiple of a copy task's chunk, on huge pages and on the heap.
    #[test]
    fn large_writes_land_byte_for_byte() {
        let words = (3 << 20) / 4 + 3; // past PARALLEL_COPY_BYTES, chunks and a partial one
        let first: Vec<f32> = (0..words).map(|i| i as f32).collect();
        let second: Vec<f32> = (0..words / 2 + 1).map(|i| -(i as f32) - 0.5).collect();
        for huge_pages in [true, false] {
            let backend = CpuBackend::with_options(CpuOptions { huge_pages, ..CpuOptions::default() });
            let mut buf = backend.upload(&HostTensor::f32(vec![words], first.clone()).unwrap()).unwrap();
            let at = 3; // in values
            backend
                .write(&mut (), &mut buf, 4 * at, &HostTensor::f32(vec![second.len()], second.clone()).unwrap())
                .unwrap();
            let mut expected = first.clone();
            expected[at..at + second.len()].copy_from_slice(&second);
            let held: &[f32] = bytemuck::cast_slice(&buf.words[..words]);
            assert!(held == expected.as_slice(), "huge_pages {huge_pages}: the buffer differs from what was written");
        }
    }

    /// Where buffers go: a weight of a huge page or more and its panels on huge pages (Linux),
    /// smaller weights on the heap, a large working buffer on huge pages; none of them with
    /// `huge_pages` off. The product is the same either way.
    #[test]
    fn large_weights_their_panels_and_working_buffers_go_on_huge_pages_unless_turned_off() {
        let (m, n, k) = (16, 1536, 384); // MiniLM's 2.36 MB feed-forward weight
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut products = Vec::new();
        for huge_pages in [true, false] {
            let backend = CpuBackend::with_options(CpuOptions { huge_pages, ..CpuOptions::default() });
            let expect = cfg!(target_os = "linux") && huge_pages;
            let a_buf = backend.upload(&HostTensor::f32(vec![m, k], a.clone()).unwrap()).unwrap();
            let w_buf = backend.upload(&HostTensor::f32(vec![n, k], w.clone()).unwrap()).unwrap();
            assert!(!a_buf.words.on_huge_pages(), "a weight of {} bytes", 4 * m * k);
            assert_eq!(w_buf.words.on_huge_pages(), expect, "a weight of {} bytes, huge_pages {huge_pages}", 4 * n * k);
            assert_eq!(backend.alloc(2 << 20).unwrap().words.on_huge_pages(), expect, "a working buffer of 2 MiB");
            products.push(product(&backend, &a_buf, &w_buf, (m, n, k)));
            // 16 rows take the panels wherever they run: x86-64 with AVX2.
            if cfg!(target_arch = "x86_64") && ops::isa::CpuIsa::active().has_avx2() {
                assert_eq!(w_buf.panels.packed_on_huge_pages(), Some(expect), "the weight's panels");
            } else {
                println!("panels not checked: the active ISA level has no AVX2 (the CPU, or TANDEM_CPU_ISA)");
            }
        }
        assert_eq!(products[0], products[1]);
    }
}
