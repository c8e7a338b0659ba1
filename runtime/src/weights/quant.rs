//! Dequantization of GGUF's block-quantized types (and f16/bf16) on the CPU.
//!
//! The reference is gguf-py's `quants.dequantize` (PyPI `gguf`), matched bit for bit: each
//! value is computed with the same f32 operations in the same order (for the K types the
//! sub-block scale `d * sc` is rounded to f32 before it multiplies the quant, as numpy does),
//! and Rust never fuses a multiply-add on its own. The block layouts are ggml's; the
//! comments at each function say where each field sits.

use crate::error::{Error, Result};
use crate::tensor::DType;

/// Dequantizes `bytes` (whole blocks of `dtype`, little-endian) into `out`, which must hold
/// exactly the values the blocks hold. Plain f32, f16 and bf16 are converted too; u32 is not
/// a float type and is refused.
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let expected = dtype.bytes_for(out.len());
    if expected != Some(bytes.len()) {
        return Err(Error::input(format!(
            "cannot dequantize {} bytes of {dtype} into {} values (that takes {})",
            bytes.len(),
            out.len(),
            expected.map_or("a whole number of blocks".to_string(), |b| format!("{b} bytes"))
        )));
    }
    let layout = dtype.block();
    let blocks = bytes.chunks_exact(layout.bytes).zip(out.chunks_exact_mut(layout.values));
    match dtype {
        DType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DType::F16 => blocks.for_each(|(b, y)| y[0] = f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
        // bf16 is the top half of an f32.
        DType::BF16 => blocks.for_each(|(b, y)| y[0] = f32::from_bits(u32::from_le_bytes([0, 0, b[0], b[1]]))),
        DType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        DType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        DType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        DType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        DType::Q4_K => blocks.for_each(|(b, y)| q4_k(b, y)),
        DType::Q5_K => blocks.for_each(|(b, y)| q5_k(b, y)),
        DType::Q6_K => blocks.for_each(|(b, y)| q6_k(b, y)),
        DType::U32 => return Err(Error::input("u32 is not a float type; there is nothing to dequantize")),
    }
    Ok(())
}

/// Dequantizes row `row` of a row-major `[rows, k]` matrix stored as `matrix` (the entry
/// point of a kernel that works one weight row at a time). `k` must be a whole number of
/// blocks, as it is for every GGUF tensor; `out` holds `k` values.
pub fn dequantize_row(dtype: DType, matrix: &[u8], row: usize, k: usize, out: &mut [f32]) -> Result<()> {
    let row_bytes = dtype
        .bytes_for(k)
        .ok_or_else(|| Error::input(format!("a row of {k} values is not a whole number of {dtype} blocks")))?;
    let start = row.checked_mul(row_bytes).filter(|s| s.checked_add(row_bytes).is_some_and(|e| e <= matrix.len()));
    let start = start.ok_or_else(|| {
        Error::input(format!("row {row} of {k} {dtype} values lies outside a matrix of {} bytes", matrix.len()))
    })?;
    dequantize(dtype, &matrix[start..start + row_bytes], out)
}

/// IEEE half to single by bits, as numpy's `astype(np.float32)` does (exact for every value,
/// NaN payloads kept as they are, which hardware conversions may quiet).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    match exp {
        // Zero and subnormals: man × 2^-24, exact in f32.
        0 => f32::from_bits(sign | (man as f32 * f32::from_bits(0x3380_0000)).to_bits()),
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// `d: f16 | qs: 32 × i8`; y = q · d.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = f32::from(q as i8) * d;
    }
}

/// `d: f16 | qs: 16 bytes`; value j is the low nibble of qs[j], value 16 + j the high one;
/// y = d · (q − 8).
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = d * f32::from((q & 0x0f) as i8 - 8);
        y[j + 16] = d * f32::from((q >> 4) as i8 - 8);
    }
}

/// `d: f16 | m: f16 | qs: 16 bytes` (nibbles as Q4_0); y = d · q + m.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = d * f32::from(q & 0x0f) + m;
        y[j + 16] = d * f32::from(q >> 4) + m;
    }
}

/// `d: f16 | qh: u32 LE (bit j: fifth bit of value j) | qs: 16 bytes` (nibbles as Q4_0);
/// y = d · (q − 16).
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let high = |j: usize| (((qh >> j) & 1) << 4) as u8;
    for (j, &q) in b[6..22].iter().enumerate() {
        y[j] = d * f32::from(((q & 0x0f) | high(j)) as i8 - 16);
        y[j + 16] = d * f32::from(((q >> 4) | high(j + 16)) as i8 - 16);
    }
}

/// The eight 6-bit scales and mins of a Q4_K/Q5_K block, packed in 12 bytes: bytes 0–3 hold
/// scales 0–3 (low 6 bits) and the top 2 bits of scales 4–7; bytes 4–7 the same for the
/// mins; bytes 8–11 the low 4 bits of scales 4–7 (low nibble) and mins 4–7 (high nibble).
pub(crate) fn k_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3f;
        mn[j] = s[4 + j] & 0x3f;
        sc[4 + j] = (s[8 + j] & 0x0f) | ((s[j] >> 2) & 0x30);
        mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
    (sc, mn)
}

/// `d: f16 | dmin: f16 | scales: 12 bytes | qs: 128 bytes`: eight sub-blocks of 32; sub-block
/// 2i takes the low nibbles of qs[32i..32i+32], 2i+1 the high ones;
/// y = (d · sc) · q − (dmin · m).
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k_scales(&b[4..16]);
    let qs = &b[16..144];
    for s in 0..8 {
        let (ds, dm) = (d * f32::from(sc[s]), dmin * f32::from(mn[s]));
        let shift = 4 * (s % 2);
        for l in 0..32 {
            let q = (qs[32 * (s / 2) + l] >> shift) & 0x0f;
            y[32 * s + l] = ds * f32::from(q) - dm;
        }
    }
}

/// `d: f16 | dmin: f16 | scales: 12 bytes | qh: 32 bytes | qs: 128 bytes`: as Q4_K, and bit s
/// of qh[l] is the fifth bit of value l of sub-block s.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k_scales(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for s in 0..8 {
        let (ds, dm) = (d * f32::from(sc[s]), dmin * f32::from(mn[s]));
        let shift = 4 * (s % 2);
        for l in 0..32 {
            let q = ((qs[32 * (s / 2) + l] >> shift) & 0x0f) | (((qh[l] >> s) & 1) << 4);
            y[32 * s + l] = ds * f32::from(q) - dm;
        }
    }
}

/// `ql: 128 bytes | qh: 64 bytes | scales: 16 × i8 | d: f16`. Two halves of 128 values; in
/// half h, value 32·t + l (t in 0..4, l in 0..32) has low 4 bits from ql[64h + 32·(t%2) + l]
/// (low nibble for t < 2, high for t ≥ 2) and high 2 bits from qh[32h + l] >> 2t;
/// y = (d · scale[i / 16]) · (q − 32).
fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for h in 0..2 {
        for t in 0..4 {
            for l in 0..32 {
                let i = 128 * h + 32 * t + l;
                let low = (ql[64 * h + 32 * (t % 2) + l] >> (4 * (t / 2))) & 0x0f;
                let high = (qh[32 * h + l] >> (2 * t)) & 0x03;
                let q = (low | (high << 4)) as i8 - 32;
                y[i] = (d * f32::from(scales[i / 16] as i8)) * f32::from(q);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact_for_every_value() {
        for h in 0..=u16::MAX {
            let ours = f16_to_f32(h);
            let theirs = half::f16::from_bits(h).to_f32();
            if theirs.is_nan() {
                assert!(ours.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn hand_made_blocks() {
        // Q8_0: d = 0.5, q = -4, 2, 0, ...
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        b[2] = (-4i8) as u8;
        b[3] = 2;
        let mut y = vec![0.0; 32];
        dequantize(DType::Q8_0, &b, &mut y).unwrap();
        assert_eq!(&y[..3], &[-2.0, 1.0, 0.0]);
        // Q4_1: d = 1, m = -8: low nibble 3 → -5 at 0, high nibble 15 → 7 at 16.
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
        b[2..4].copy_from_slice(&half::f16::from_f32(-8.0).to_le_bytes());
        b[4] = 0xf3;
        dequantize(DType::Q4_1, &b, &mut y).unwrap();
        assert_eq!((y[0], y[16], y[1]), (-5.0, 7.0, -8.0));
        // Q5_0: the fifth bit of value 16 set, nibble 0 → 16 − 16 = 0; value 0: 0 − 16.
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
        b[2..6].copy_from_slice(&(1u32 << 16).to_le_bytes());
        dequantize(DType::Q5_0, &b, &mut y).unwrap();
        assert_eq!((y[0], y[16]), (-16.0, 0.0));
    }

    #[test]
    fn sizes_are_checked() {
        let mut y = vec![0.0; 32];
        assert!(dequantize(DType::Q8_0, &[0; 33], &mut y).is_err());
        assert!(dequantize(DType::Q4_K, &[0; 144], &mut y).is_err(), "32 values are not a Q4_K block");
        assert!(dequantize(DType::U32, &[0; 128], &mut y).is_err());
        let matrix = vec![0u8; 3 * 34];
        assert!(dequantize_row(DType::Q8_0, &matrix, 2, 32, &mut y).is_ok());
        assert!(dequantize_row(DType::Q8_0, &matrix, 3, 32, &mut y).is_err());
        assert!(dequantize_row(DType::Q8_0, &matrix, usize::MAX, 32, &mut y).is_err());
        assert!(dequantize_row(DType::Q8_0, &matrix, 0, 16, &mut y[..16]).is_err());
    }
}
