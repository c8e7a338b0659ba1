// Shared by every WGSL kernel: prepended to each shader file when it is compiled
// (runtime/src/backend/wgpu/kernels.rs), as cuda/common.cuh is included by the CUDA twins.
// Helpers only: no bindings and no entry points.

// erf as a rational approximation on [-4, 4]: the same formula and coefficients as
// runtime/src/ops/elementwise.rs, so that GELU agrees with the CPU reference.
fn erf(x_in: f32) -> f32 {
    let x = clamp(x_in, -4.0, 4.0);
    let x2 = x * x;
    var p = -2.7261423e-10;
    p = p * x2 + 2.7706814e-8;
    p = p * x2 - 2.101024e-6;
    p = p * x2 - 5.6925064e-5;
    p = p * x2 - 7.3499063e-4;
    p = p * x2 - 2.9546e-3;
    p = p * x2 - 1.6096033e-2;
    var q = -1.4566072e-5;
    q = q * x2 - 2.1337406e-4;
    q = q * x2 - 1.682827e-3;
    q = q * x2 - 7.373329e-3;
    q = q * x2 - 1.426474e-2;
    return x * p / q;
}

// A matmul epilogue's activation (ops::matmul::Activation::code): 0 none, 1 GELU (erf form),
// 2 ReLU, 3 SiLU (as the CPU and the unary op: x / (1 + e^-x)).
fn activate(x: f32, code: u32) -> f32 {
    switch code {
        case 1u: {
            return 0.5 * x * (1.0 + erf(x * 0.70710678118654752));
        }
        case 2u: {
            return max(x, 0.0);
        }
        case 3u: {
            return x / (1.0 + exp(-x));
        }
        default: {
            return x;
        }
    }
}

// Whether x is a NaN, tested on the bits: drivers may assume floats are never NaN and fold
// `x != x` away (lavapipe does).
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// The Clamp op's function (ops::elementwise::clamp): min(max(v, lo), hi), NaN kept as
// torch.clamp does; lo > hi gives hi.
fn clamp_nan_kept(v: f32, lo: f32, hi: f32) -> f32 {
    return select(min(max(v, lo), hi), v, is_nan(v));
}

// DType codes (DType::code in runtime/src/tensor.rs).
const F32: u32 = 0u;
const F16: u32 = 1u;
const U32: u32 = 2u;

// f32 bits to f16 bits with round-to-nearest-even, overflow to infinity and NaNs kept quiet:
// the software path of the `half` crate, step for step, so results are bit-exact with the
// CPU. (pack2x16float leaves rounding and overflow to the implementation.)
fn f32_to_f16_bits(bits: u32) -> u32 {
    let sign = (bits >> 16u) & 0x8000u;
    let exp = bits & 0x7f800000u;
    let man = bits & 0x007fffffu;
    if exp == 0x7f800000u {
        var nan_bit = 0u;
        if man != 0u {
            nan_bit = 0x0200u;
        }
        return sign | 0x7c00u | nan_bit | (man >> 13u);
    }
    let half_exp = i32(exp >> 23u) - 127 + 15;
    if half_exp >= 0x1f {
        return sign | 0x7c00u;
    }
    if half_exp <= 0 {
        // Subnormal in f16 (or zero).
        if 14 - half_exp > 24 {
            return sign;
        }
        let m = man | 0x00800000u;
        let shift = u32(14 - half_exp);
        var half_man = m >> shift;
        let round_bit = 1u << (shift - 1u);
        if (m & round_bit) != 0u && (m & (3u * round_bit - 1u)) != 0u {
            half_man += 1u;
        }
        return sign | half_man;
    }
    let h = sign | (u32(half_exp) << 10u) | (man >> 13u);
    let round_bit = 0x1000u;
    if (man & round_bit) != 0u && (man & (3u * round_bit - 1u)) != 0u {
        return h + 1u;
    }
    return h;
}

// f16 bits to f32 bits (exact; subnormals normalised rather than flushed).
fn f16_to_f32_bits(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let exp = h & 0x7c00u;
    let man = h & 0x03ffu;
    if (h & 0x7fffu) == 0u {
        return sign;
    }
    if exp == 0x7c00u {
        if man == 0u {
            return sign | 0x7f800000u;
        }
        return sign | 0x7fc00000u | (man << 13u);
    }
    if exp == 0u {
        // Leading zeros of the 10-bit mantissa within 16 bits, less the 6 sign/exponent bits.
        let e = countLeadingZeros(man) - 22u;
        return sign | ((112u - e) << 23u) | ((man << (14u + e)) & 0x7fffffu);
    }
    return sign | (((exp >> 10u) + 112u) << 23u) | (man << 13u);
}
