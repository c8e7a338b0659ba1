//! Row gather: the embedding lookup.

use super::{arity, dtype_is, rank_is, stored_weight};
use crate::error::Result;
use crate::graph::TensorType;
use crate::tensor::DType;

/// Kernel params for `gather`, mirrored in `shaders/gather.wgsl` and `cuda/gather.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GatherParams {
    pub num_ids: u32,
    pub dim: u32,
    pub vocab: u32,
    pub _pad: u32,
}

impl GatherParams {
    pub fn new(table: &[usize], ids: &[usize]) -> Self {
        GatherParams {
            num_ids: ids.iter().product::<usize>() as u32,
            dim: table[1] as u32,
            vocab: table[0] as u32,
            _pad: 0,
        }
    }
}

/// The table is f32, or a stored weight (f16, bf16, GGUF blocks) whose rows come out
/// dequantized to f32.
pub(crate) fn infer(inputs: &[TensorType]) -> std::result::Result<Vec<TensorType>, String> {
    arity(inputs, 2, 2)?;
    let (table, ids) = (&inputs[0], &inputs[1]);
    if table.dtype != DType::F32 {
        stored_weight(table, "table")?;
    }
    rank_is(table, 2, "table")?;
    dtype_is(ids, crate::tensor::DType::U32, "ids")?;
    let mut shape = ids.shape.clone();
    shape.push(table.shape[1].clone());
    Ok(vec![TensorType::new(DType::F32, shape)])
}

/// `cpu` for a stored table (raw bytes of `dtype`): each row dequantized as `weights::quant`
/// does.
pub fn cpu_stored(p: &GatherParams, dtype: DType, table: &[u8], ids: &[u32], out: &mut [f32]) -> Result<()> {
    let dim = p.dim as usize;
    if dim == 0 {
        return Ok(());
    }
    for (row, &id) in out.chunks_exact_mut(dim).zip(ids) {
        if id < p.vocab {
            crate::weights::quant::dequantize_row(dtype, table, id as usize, dim, row)?;
        } else {
            row.fill(0.0);
        }
    }
    Ok(())
}

/// Ids outside the table give a zero row (the GPU kernels cannot fail, so neither does this).
pub fn cpu(p: &GatherParams, table: &[f32], ids: &[u32], out: &mut [f32]) {
    let dim = p.dim as usize;
    if dim == 0 {
        return;
    }
    for (row, &id) in out.chunks_exact_mut(dim).zip(ids) {
        if id < p.vocab {
            row.copy_from_slice(&table[id as usize * dim..][..dim]);
        } else {
            row.fill(0.0);
        }
    }
}
