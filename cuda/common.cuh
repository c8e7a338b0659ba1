// Shared by every kernel file: element types, f16 conversion, the exact GELU of the CPU
// reference, warp reductions and the packed-sequence helpers.
//
// The kernels include no CUDA toolkit header on purpose: NVRTC compiles them with nothing but
// libnvrtc (no cuda_fp16.h, no stdint.h), so a machine needs only the driver and NVRTC. f16
// values are stored as raw 16-bit words and converted with single PTX instructions.
//
// With TANDEM_EMU defined (cuda/emu/cuda_emu.h, host C++ used by the emulated conformance
// test) the few inline-PTX helpers below come from the emulator instead.
#pragma once

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;
typedef float f32;

#define FULL_MASK 0xffffffffu
#define WARP_SIZE 32

// Codes shared with the Rust side (ops::*::code()).
#define DTYPE_F32 0u
#define DTYPE_F16 1u
#define DTYPE_U32 2u

#define ACT_NONE 0u
#define ACT_GELU 1u
#define ACT_RELU 2u
#define ACT_SILU 3u

#define UNARY_GELU 0u
#define UNARY_RELU 1u
#define UNARY_TANH 2u
#define UNARY_SIGMOID 3u
#define UNARY_SILU 4u

#define BINARY_ADD 0u
#define BINARY_SUB 1u
#define BINARY_MUL 2u
#define BINARY_DIV 3u

#define POOL_MEAN 0u
#define POOL_FIRST 1u
#define POOL_MAX 2u

// The Clamp op's function: min(max(x, min), max) with NaN kept (torch.clamp); min > max
// gives max. Also a convolution's fused clamp.
__device__ __forceinline__ float clamp_apply(float v, float lo, float hi) {
    return v != v ? v : fminf(fmaxf(v, lo), hi);
}

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

#ifndef TANDEM_EMU
// IEEE binary16 <-> binary32, round to nearest even (as `half::f16::from_f32`); out of range
// becomes ±inf, NaN stays NaN.
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// One warp-wide tensor-core product D += A·B with A 16x16 (row), B 16x8 (col), f16 inputs
// and f32 accumulators (sm_80+). Fragment layout, with g = lane/4 and t = lane%4:
//   a[0] = A[g][2t..2t+1]    a[1] = A[g+8][2t..2t+1]  a[2] = A[g][2t+8..]  a[3] = A[g+8][2t+8..]
//   b[0] = B[2t..2t+1][g]    b[1] = B[2t+8..2t+9][g]
//   d[0..1] = D[g][2t..2t+1] d[2..3] = D[g+8][2t..2t+1]
// (two f16 per u32, the lower column/row in the low half).
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

__device__ __forceinline__ u32 pack_f16x2(float lo, float hi) {
    return (u32)f32_to_f16(lo) | ((u32)f32_to_f16(hi) << 16);
}
__device__ __forceinline__ float2 unpack_f16x2(u32 v) {
    return make_float2(f16_to_f32((u16)(v & 0xffffu)), f16_to_f32((u16)(v >> 16)));
}

// erf and GELU exactly as ops::elementwise::erf / gelu compute them: the same rational
// approximation, the same operation order, and every step rounded on its own (the _rn
// intrinsics stop the compiler from fusing a multiply and an add into one FMA, which the
// CPU never does). GPU and CPU then agree to the last bit on the polynomial.
__device__ __forceinline__ float erf_approx(float x) {
    x = x < -4.0f ? -4.0f : (x > 4.0f ? 4.0f : x);  // clamp that keeps NaN, as f32::clamp
    const float x2 = __fmul_rn(x, x);
    float p = -2.7261423e-10f;
    p = __fadd_rn(__fmul_rn(p, x2), 2.7706814e-8f);
    p = __fsub_rn(__fmul_rn(p, x2), 2.101024e-6f);
    p = __fsub_rn(__fmul_rn(p, x2), 5.6925064e-5f);
    p = __fsub_rn(__fmul_rn(p, x2), 7.3499063e-4f);
    p = __fsub_rn(__fmul_rn(p, x2), 2.9546e-3f);
    p = __fsub_rn(__fmul_rn(p, x2), 1.6096033e-2f);
    float q = -1.4566072e-5f;
    q = __fsub_rn(__fmul_rn(q, x2), 2.1337406e-4f);
    q = __fsub_rn(__fmul_rn(q, x2), 1.682827e-3f);
    q = __fsub_rn(__fmul_rn(q, x2), 7.373329e-3f);
    q = __fsub_rn(__fmul_rn(q, x2), 1.426474e-2f);
    return __fdiv_rn(__fmul_rn(x, p), q);
}

__device__ __forceinline__ float gelu(float x) {
    const float frac_1_sqrt_2 = 0.70710678118654752440f;
    return __fmul_rn(__fmul_rn(0.5f, x), __fadd_rn(1.0f, erf_approx(__fmul_rn(x, frac_1_sqrt_2))));
}

// The matmul epilogue's activation (ops::matmul::Activation::code).
__device__ __forceinline__ float activate(float x, u32 activation) {
    if (activation == ACT_GELU) return gelu(x);
    if (activation == ACT_RELU) return fmaxf(x, 0.0f);
    if (activation == ACT_SILU) return x / (1.0f + expf(-x));  // as the CPU and unary silu
    return x;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = WARP_SIZE / 2; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// Rows [start, end) of segment s, clamped to `tokens` so that a bad segment reads nothing out
// of bounds (ops::pool::segment_rows).
__device__ __forceinline__ void segment_rows(const u32* __restrict__ segments, u32 s, u32 tokens, u32& start,
                                             u32& end) {
    const u32 first = segments[2 * s];
    const u64 last = (u64)first + (u64)segments[2 * s + 1];
    start = first < tokens ? first : tokens;
    end = last < (u64)tokens ? (u32)last : tokens;
    if (end < start) end = start;
}

// One sequence of an attention or kv_write table, clamped exactly as ops::attention::SeqRows:
// query rows [q_start, q_end), kv rows [kv_lo, kv_hi), and `past` (kv_len − q_len, or 0), the
// kv positions before the first query. `cols` is 2 (segments: kv rows = query rows) or 4
// (q_start, q_len, kv_start, kv_len).
struct SeqRows {
    u32 q_start, q_end, kv_lo, kv_hi, past;
};

__device__ __forceinline__ SeqRows seq_rows(const u32* __restrict__ table, u32 cols, u32 s, u32 tokens, u32 kv_tokens) {
    SeqRows r;
    if (cols == 2) {
        segment_rows(table, s, tokens, r.q_start, r.q_end);
        r.kv_lo = r.q_start;
        r.kv_hi = r.q_end;
        r.past = 0;
        return r;
    }
    const u32* row = table + 4 * (u64)s;
    const u64 q_last = (u64)row[0] + (u64)row[1];
    r.q_start = row[0] < tokens ? row[0] : tokens;
    r.q_end = q_last < (u64)tokens ? (u32)q_last : tokens;
    if (r.q_end < r.q_start) r.q_end = r.q_start;
    r.kv_lo = row[2] < kv_tokens ? row[2] : kv_tokens;
    const u64 kv_last = (u64)row[2] + (u64)row[3];
    r.kv_hi = kv_last < (u64)kv_tokens ? (u32)kv_last : kv_tokens;
    if (r.kv_hi < r.kv_lo) r.kv_hi = r.kv_lo;
    r.past = row[3] > row[1] ? row[3] - row[1] : 0;
    return r;
}

// 16-byte alignment of a pointer, for the vectorised paths.
__device__ __forceinline__ bool aligned16(const void* p) { return (((u64)p) & 15u) == 0; }
