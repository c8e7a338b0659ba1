// Soft logic: a t-norm family's AND, OR and NOT elementwise (soft_logic), and EBRM's
// aggregate of query-entity scores into an item score with per-entity contributions
// (aggregate). Twin of shaders/softlogic.wgsl; params in params.cuh. The formulas, and why
// they have this shape, are documented in runtime/src/ops/softlogic.rs, the CPU reference;
// this file follows it operation for operation (same clamping, same fold order).
#include "params.cuh"

#define SOFTLOGIC_THREADS 256

// Logic::code and Connective::code.
#define LOGIC_GOEDEL 1u
#define LOGIC_LUKASIEWICZ 2u
#define CONNECTIVE_OR 1u
#define CONNECTIVE_NOT 2u

// No entity: `skip` and `only` take this when they select nothing.
#define NO_ENTITY 0xffffffffu

// [0, 1] with NaN mapped to 0: a score that cannot be computed supports nothing.
__device__ __forceinline__ float clamp01(float x) { return x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }

// Unknown logic codes act as product, as on the CPU.
__device__ __forceinline__ float t_and(u32 logic, float x, float y) {
    const float u = clamp01(x), v = clamp01(y);
    if (logic == LOGIC_GOEDEL) return fminf(u, v);
    if (logic == LOGIC_LUKASIEWICZ) return fmaxf(u + v - 1.0f, 0.0f);
    return u * v;
}

__device__ __forceinline__ float t_or(u32 logic, float x, float y) {
    const float u = clamp01(x), v = clamp01(y);
    if (logic == LOGIC_GOEDEL) return fmaxf(u, v);
    if (logic == LOGIC_LUKASIEWICZ) return fminf(u + v, 1.0f);
    return u + v - u * v;
}

// a, b (unread for NOT: may be null), out; grid-stride.
extern "C" __global__ void __launch_bounds__(SOFTLOGIC_THREADS)
    soft_logic(const SoftLogicParams p, const float* __restrict__ a, const float* __restrict__ b,
               float* __restrict__ out) {
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < p.len; i += gridDim.x * blockDim.x) {
        if (p.connective == CONNECTIVE_NOT) {
            out[i] = 1.0f - clamp01(a[i]);
        } else if (p.connective == CONNECTIVE_OR) {
            out[i] = t_or(p.logic, a[i], b[i]);
        } else {
            out[i] = t_and(p.logic, a[i], b[i]);
        }
    }
}

struct AggregateRow {
    const float* qe;
    const u32* mask;
    const u32* kind;
    const float* weight;
    const u32* essential;
};

__device__ __forceinline__ bool present(const AggregateParams& p, const AggregateRow& r, u32 e) {
    return r.mask[e] != 0u && r.kind[e] < p.kinds;
}

// The score of the row's present entities, leaving out `skip`, and keeping only `only`
// unless it is NO_ENTITY: S(set) of the reference.
__device__ float subset_score(const AggregateParams& p, const AggregateRow& r, u32 skip, u32 only) {
    const float lambda = clamp01(p.optional_weight);
    float ess = 1.0f, opt = 0.0f;
    for (u32 e = 0; e < p.entities; ++e) {
        if (e == skip || (only != NO_ENTITY && e != only) || !present(p, r, e)) continue;
        const u32 k = r.kind[e];
        const float q = clamp01(r.qe[e]), w = clamp01(r.weight[k]);
        if (r.essential[k] != 0u) {
            ess = t_and(p.logic, ess, 1.0f - w * (1.0f - q));
        } else {
            opt = t_or(p.logic, opt, w * q);
        }
    }
    return ess * ((1.0f - lambda) + lambda * opt);
}

// qe, mask, kind, weight, essential; score, contribution. One thread per item: entities per
// item are few, and each contribution rescans the item (quadratic in its entities).
extern "C" __global__ void __launch_bounds__(SOFTLOGIC_THREADS)
    aggregate(const AggregateParams p, const float* __restrict__ qe, const u32* __restrict__ mask,
              const u32* __restrict__ kind, const float* __restrict__ weight, const u32* __restrict__ essential,
              float* __restrict__ score, float* __restrict__ contribution) {
    const float lambda = clamp01(p.optional_weight);
    const float empty = (1.0f - lambda) + lambda * 0.0f;
    for (u32 item = blockIdx.x * blockDim.x + threadIdx.x; item < p.items; item += gridDim.x * blockDim.x) {
        const u64 row = (u64)item * p.entities;
        const AggregateRow r = {qe + row, mask + row, kind + row, weight, essential};
        const float whole = subset_score(p, r, NO_ENTITY, NO_ENTITY);
        score[item] = whole;
        for (u32 e = 0; e < p.entities; ++e) {
            float c = 0.0f;
            if (present(p, r, e)) {
                const float last = whole - subset_score(p, r, e, NO_ENTITY);
                const float first = subset_score(p, r, NO_ENTITY, e) - empty;
                c = 0.5f * (last + first);
            }
            contribution[row + e] = c;
        }
    }
}
