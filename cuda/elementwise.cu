// Elementwise ops: unary activations, broadcasting binary arithmetic, casts.
// Twin of shaders/elementwise.wgsl; params in params.cuh.
//
// All three are memory-bound, so the work is in the memory access: each thread moves 16 bytes
// per access (float4) where the buffers allow it, in a grid-stride loop so that any length
// runs on a grid sized for the device rather than for the tensor.
#include "params.cuh"

#define ELEMENTWISE_THREADS 256

__device__ __forceinline__ float unary_apply(u32 op, float x) {
    switch (op) {
        case UNARY_GELU: return gelu(x);
        case UNARY_RELU: return fmaxf(x, 0.0f);
        case UNARY_TANH: return tanhf(x);
        case UNARY_SILU: return x / (1.0f + expf(-x));  // as the CPU: x/(1+e^-x)
        default: return 1.0f / (1.0f + expf(-x));  // UNARY_SIGMOID, as the CPU: 1/(1+e^-x)
    }
}

__device__ __forceinline__ float binary_apply(u32 op, float a, float b) {
    switch (op) {
        case BINARY_ADD: return a + b;
        case BINARY_SUB: return a - b;
        case BINARY_MUL: return a * b;
        default: return a / b;  // BINARY_DIV, IEEE division (no fast-math)
    }
}

// Grid: enough 256-thread blocks to cover the length in float4s (capped by the host).
extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
    unary(const UnaryParams p, const float* __restrict__ x, float* __restrict__ out) {
    const u32 stride = gridDim.x * blockDim.x;
    const u32 tid = blockIdx.x * blockDim.x + threadIdx.x;
    const u32 op = p.op;
    // Device allocations are 256-byte aligned and the executor binds whole buffers, so the
    // vector path is the normal one; the check keeps an offset view correct too.
    u32 head = 0;
    if (aligned16(x) && aligned16(out)) {
        const u32 n4 = p.len / 4;
        const float4* x4 = reinterpret_cast<const float4*>(x);
        float4* o4 = reinterpret_cast<float4*>(out);
        for (u32 i = tid; i < n4; i += stride) {
            float4 v = x4[i];
            v.x = unary_apply(op, v.x);
            v.y = unary_apply(op, v.y);
            v.z = unary_apply(op, v.z);
            v.w = unary_apply(op, v.w);
            o4[i] = v;
        }
        head = n4 * 4;
    }
    for (u32 i = head + tid; i < p.len; i += stride) out[i] = unary_apply(op, x[i]);
}

// Broadcasting: out_shape and the per-input element strides (0 along broadcast axes) come from
// the host. Same-shape inputs (every stride the contiguous one) take a float4 path; a
// broadcast walks the output index back to each input's offset.
extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
    binary(const BinaryParams p, const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ out) {
    const u32 stride = gridDim.x * blockDim.x;
    const u32 tid = blockIdx.x * blockDim.x + threadIdx.x;
    const u32 rank = p.rank < TANDEM_MAX_RANK ? p.rank : TANDEM_MAX_RANK;
    const u32 op = p.op;

    // The axis loops are unrolled over the fixed maximum rank so that the param arrays are
    // indexed by constants and stay in the constant bank (a variable index would copy them to
    // the stack).
    bool contiguous = true;
    u32 expect = 1;
#pragma unroll
    for (int axis = TANDEM_MAX_RANK - 1; axis >= 0; --axis) {
        if ((u32)axis < rank) {
            contiguous = contiguous && p.a_strides[axis] == expect && p.b_strides[axis] == expect;
            expect *= p.out_shape[axis];
        }
    }

    if (contiguous) {
        u32 head = 0;
        if (aligned16(a) && aligned16(b) && aligned16(out)) {
            const u32 n4 = p.len / 4;
            const float4* a4 = reinterpret_cast<const float4*>(a);
            const float4* b4 = reinterpret_cast<const float4*>(b);
            float4* o4 = reinterpret_cast<float4*>(out);
            for (u32 i = tid; i < n4; i += stride) {
                const float4 va = a4[i], vb = b4[i];
                o4[i] = make_float4(binary_apply(op, va.x, vb.x), binary_apply(op, va.y, vb.y),
                                    binary_apply(op, va.z, vb.z), binary_apply(op, va.w, vb.w));
            }
            head = n4 * 4;
        }
        for (u32 i = head + tid; i < p.len; i += stride) out[i] = binary_apply(op, a[i], b[i]);
        return;
    }

    for (u32 i = tid; i < p.len; i += stride) {
        u32 rem = i, ia = 0, ib = 0;
#pragma unroll
        for (int axis = TANDEM_MAX_RANK - 1; axis >= 0; --axis) {
            if ((u32)axis < rank) {
                const u32 d = p.out_shape[axis];
                const u32 idx = rem % d;
                rem /= d;
                ia += idx * p.a_strides[axis];
                ib += idx * p.b_strides[axis];
            }
        }
        out[i] = binary_apply(op, a[ia], b[ib]);
    }
}

// The cast op (entry point "convert": WGSL reserves the word "cast", and the twins share
// names): f32 -> f16 (round to nearest even), f16 -> f32, u32 -> f32, and same-type copies.
// p.op is the source dtype code, p.to the target's. Buffers are raw words; each thread
// converts four elements per step (16 bytes of f32 on one side).
extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
    convert(const UnaryParams p, const void* __restrict__ x, void* __restrict__ out) {
    const u32 stride = gridDim.x * blockDim.x;
    const u32 tid = blockIdx.x * blockDim.x + threadIdx.x;
    const u32 n4 = p.len / 4;
    const u32 from = p.op, to = p.to;
    const bool vec = aligned16(x) && aligned16(out);

    if (from == DTYPE_F32 && to == DTYPE_F16) {
        const float* src = static_cast<const float*>(x);
        u16* dst = static_cast<u16*>(out);
        u32 head = 0;
        if (vec) {
            for (u32 i = tid; i < n4; i += stride) {
                const float4 v = reinterpret_cast<const float4*>(src)[i];
                reinterpret_cast<uint2*>(dst)[i] = make_uint2(pack_f16x2(v.x, v.y), pack_f16x2(v.z, v.w));
            }
            head = n4 * 4;
        }
        for (u32 i = head + tid; i < p.len; i += stride) dst[i] = f32_to_f16(src[i]);
    } else if (from == DTYPE_F16 && to == DTYPE_F32) {
        const u16* src = static_cast<const u16*>(x);
        float* dst = static_cast<float*>(out);
        u32 head = 0;
        if (vec) {
            for (u32 i = tid; i < n4; i += stride) {
                const uint2 v = reinterpret_cast<const uint2*>(src)[i];
                const float2 lo = unpack_f16x2(v.x), hi = unpack_f16x2(v.y);
                reinterpret_cast<float4*>(dst)[i] = make_float4(lo.x, lo.y, hi.x, hi.y);
            }
            head = n4 * 4;
        }
        for (u32 i = head + tid; i < p.len; i += stride) dst[i] = f16_to_f32(src[i]);
    } else if (from == DTYPE_U32 && to == DTYPE_F32) {
        const u32* src = static_cast<const u32*>(x);
        float* dst = static_cast<float*>(out);
        u32 head = 0;
        if (vec) {
            for (u32 i = tid; i < n4; i += stride) {
                const uint4 v = reinterpret_cast<const uint4*>(src)[i];
                reinterpret_cast<float4*>(dst)[i] = make_float4((float)v.x, (float)v.y, (float)v.z, (float)v.w);
            }
            head = n4 * 4;
        }
        for (u32 i = head + tid; i < p.len; i += stride) dst[i] = (float)src[i];
    } else if (from == DTYPE_F16) {
        // f16 -> f16: a copy of 2-byte words.
        const u16* src = static_cast<const u16*>(x);
        u16* dst = static_cast<u16*>(out);
        for (u32 i = tid; i < p.len; i += stride) dst[i] = src[i];
    } else {
        // f32 -> f32, u32 -> u32: a copy of 4-byte words.
        const u32* src = static_cast<const u32*>(x);
        u32* dst = static_cast<u32*>(out);
        u32 head = 0;
        if (vec) {
            for (u32 i = tid; i < n4; i += stride) reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
            head = n4 * 4;
        }
        for (u32 i = head + tid; i < p.len; i += stride) dst[i] = src[i];
    }
}


// The Clamp op, named clip as in shaders/elementwise.wgsl. Grid: as unary (float4s, capped
// by the host).
extern "C" __global__ void __launch_bounds__(ELEMENTWISE_THREADS)
    clip(const ClampParams p, const float* __restrict__ x, float* __restrict__ out) {
    const u32 stride = gridDim.x * blockDim.x;
    const u32 tid = blockIdx.x * blockDim.x + threadIdx.x;
    const float lo = p.min, hi = p.max;
    u32 head = 0;
    if (aligned16(x) && aligned16(out)) {
        const u32 n4 = p.len / 4;
        const float4* x4 = reinterpret_cast<const float4*>(x);
        float4* o4 = reinterpret_cast<float4*>(out);
        for (u32 i = tid; i < n4; i += stride) {
            float4 v = x4[i];
            v.x = clamp_apply(v.x, lo, hi);
            v.y = clamp_apply(v.y, lo, hi);
            v.z = clamp_apply(v.z, lo, hi);
            v.w = clamp_apply(v.w, lo, hi);
            o4[i] = v;
        }
        head = n4 * 4;
    }
    for (u32 i = head + tid; i < p.len; i += stride) out[i] = clamp_apply(x[i], lo, hi);
}
