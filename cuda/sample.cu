// Token sampling. Twin of shaders/sample.wgsl (same work split: a block of 256 threads per
// sequence row, strided loops over the vocabulary, shared-memory tree reductions in the same
// order, top-k and top-p thresholds by bisection over the u32 encoding of f32); params in
// params.cuh; semantics, hash, ln and encoding in runtime/src/ops/sample.rs. The ln
// polynomial rounds every step on its own (no FMA) so that the noise matches the CPU's.
#include "params.cuh"

#define SAMPLE_THREADS 256
#define NEG_INF_KEY 0x007fffffu

__device__ __forceinline__ u32 bits_of(float x) { return __float_as_uint(x); }
__device__ __forceinline__ float float_of(u32 b) { return __uint_as_float(b); }
__device__ __forceinline__ bool is_nan_bits(float x) { return (bits_of(x) & 0x7fffffffu) > 0x7f800000u; }
__device__ __forceinline__ bool is_finite_bits(float x) { return (bits_of(x) & 0x7f800000u) != 0x7f800000u; }

__device__ __forceinline__ u32 fkey(float x) {
    u32 b = is_nan_bits(x) ? 0xff800000u : bits_of(x);
    return (b & 0x80000000u) == 0 ? (b | 0x80000000u) : ~b;
}
__device__ __forceinline__ float unkey(u32 k) { return float_of((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }

// ops::sample::ln: a positive normal finite x only.
__device__ __forceinline__ float ln_portable(float x) {
    const u32 bits = bits_of(x);
    int e = (int)((bits >> 23) & 0xffu) - 127;
    float m = float_of((bits & 0x007fffffu) | 0x3f800000u);
    if (m > float_of(0x3fb504f3u)) {
        m = __fmul_rn(m, 0.5f);
        e += 1;
    }
    const float s = __fdiv_rn(__fsub_rn(m, 1.0f), __fadd_rn(m, 1.0f));
    const float s2 = __fmul_rn(s, s);
    float q = 1.0f / 11.0f;
    q = __fadd_rn(__fmul_rn(q, s2), 1.0f / 9.0f);
    q = __fadd_rn(__fmul_rn(q, s2), 1.0f / 7.0f);
    q = __fadd_rn(__fmul_rn(q, s2), 1.0f / 5.0f);
    q = __fadd_rn(__fmul_rn(q, s2), 1.0f / 3.0f);
    q = __fadd_rn(__fmul_rn(q, s2), 1.0f);
    return __fadd_rn(__fmul_rn(__fmul_rn(2.0f, s), q), __fmul_rn((float)e, float_of(0x3f317218u)));
}

__device__ __forceinline__ u32 pcg(u32 v) {
    const u32 s = v * 747796405u + 2891336453u;
    const u32 w = ((s >> ((s >> 28) + 4)) ^ s) * 277803737u;
    return (w >> 22) ^ w;
}

__device__ __forceinline__ float gumbel(u32 k0, u32 k1, u32 i) {
    const u32 h = pcg(pcg(pcg(k0) + k1) + i);
    const float u = __fmul_rn(__fadd_rn((float)(h >> 9), 0.5f), 1.0f / 8388608.0f);
    return -ln_portable(-ln_portable(u));
}

struct SampleRow {
    const float* logits;
    const u32* seen;
    u32 n;
    u32 vocab;
    float rp;
    float t;

    // ops::sample::is_seen: a lower bound by steps of halving powers of two.
    __device__ bool is_seen(u32 id) const {
        u32 pos = 0;
        for (u32 step = 1u << (31 - __clz((int)n)); step > 0; step >>= 1)
            if (pos + step <= n && seen[pos + step - 1] < id) pos += step;
        return pos < n && seen[pos] == id;
    }
    __device__ float penalized(u32 i) const {
        const float l = logits[i];
        if (rp != 1.0f && is_seen(i)) return l > 0.0f ? __fdiv_rn(l, rp) : __fmul_rn(l, rp);
        return l;
    }
    // x_i = l_i / T with NaN as −∞.
    __device__ float scaled(u32 i) const {
        const float x = __fdiv_rn(penalized(i), t);
        return is_nan_bits(x) ? float_of(0xff800000u) : x;
    }
};

__shared__ u32 red_u[SAMPLE_THREADS];
__shared__ u32 red_id[SAMPLE_THREADS];
__shared__ float red_f[SAMPLE_THREADS];

__device__ u32 reduce_argmax(u32 lid, u32 k, u32 id) {
    red_u[lid] = k;
    red_id[lid] = id;
    __syncthreads();
    for (u32 st = SAMPLE_THREADS / 2; st > 0; st /= 2) {
        if (lid < st) {
            const u32 ok = red_u[lid + st], oi = red_id[lid + st];
            if (ok > red_u[lid] || (ok == red_u[lid] && oi < red_id[lid])) {
                red_u[lid] = ok;
                red_id[lid] = oi;
            }
        }
        __syncthreads();
    }
    const u32 r = red_id[0];
    __syncthreads();
    return r;
}

__device__ u32 reduce_max(u32 lid, u32 k) {
    red_u[lid] = k;
    __syncthreads();
    for (u32 st = SAMPLE_THREADS / 2; st > 0; st /= 2) {
        if (lid < st) red_u[lid] = red_u[lid] > red_u[lid + st] ? red_u[lid] : red_u[lid + st];
        __syncthreads();
    }
    const u32 r = red_u[0];
    __syncthreads();
    return r;
}

__device__ u32 reduce_count(u32 lid, u32 c) {
    red_u[lid] = c;
    __syncthreads();
    for (u32 st = SAMPLE_THREADS / 2; st > 0; st /= 2) {
        if (lid < st) red_u[lid] += red_u[lid + st];
        __syncthreads();
    }
    const u32 r = red_u[0];
    __syncthreads();
    return r;
}

__device__ float reduce_sum(u32 lid, float v) {
    red_f[lid] = v;
    __syncthreads();
    for (u32 st = SAMPLE_THREADS / 2; st > 0; st /= 2) {
        if (lid < st) red_f[lid] = __fadd_rn(red_f[lid], red_f[lid + st]);
        __syncthreads();
    }
    const float r = red_f[0];
    __syncthreads();
    return r;
}

// Σ exp(x_i − m) over x_i whose key is at least `lo`.
__device__ float mass(const SampleRow& r, u32 lid, float m, u32 lo) {
    float s = 0.0f;
    for (u32 i = lid; i < r.vocab; i += SAMPLE_THREADS) {
        const float x = r.scaled(i);
        if (fkey(x) >= lo) s = __fadd_rn(s, expf(__fsub_rn(x, m)));
    }
    return reduce_sum(lid, s);
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample(const SampleParams p, const float* __restrict__ logits, const float* __restrict__ settings,
           const u32* __restrict__ seen, const u32* __restrict__ keys, u32* __restrict__ out) {
    const u32 lid = threadIdx.x;
    for (u32 row = blockIdx.x; row < p.seqs; row += gridDim.x) {
        const u32 vocab = p.vocab;
        const float* s = settings + (u64)row * 5;
        const float t_in = s[0], k_in = s[1], p_in = s[2], mp_in = s[3], rp_in = s[4];
        const float tiny = float_of(0x00800000u);
        const bool greedy = !(is_finite_bits(t_in) && t_in > 0.0f);
        const u32 top_k = (k_in >= 1.0f && k_in < (float)vocab) ? ((u32)k_in < vocab - 1 ? (u32)k_in : vocab - 1) : 0u;
        const float top_p = (p_in >= tiny && p_in < 1.0f) ? p_in : 1.0f;
        const float min_p = mp_in >= tiny ? (mp_in < 1.0f ? mp_in : 1.0f) : 0.0f;
        const float rp = (is_finite_bits(rp_in) && rp_in > 0.0f) ? rp_in : 1.0f;
        SampleRow r{logits + (u64)row * vocab, seen + (u64)row * p.seen, p.seen, vocab, rp, greedy ? 1.0f : t_in};

        u32 bk = 0, bi = 0xffffffffu;
        if (greedy) {
            for (u32 i = lid; i < vocab; i += SAMPLE_THREADS) {
                const u32 k = fkey(r.penalized(i));
                if (k > bk) {
                    bk = k;
                    bi = i;
                }
            }
        } else {
            u32 local_max = 0;
            for (u32 i = lid; i < vocab; i += SAMPLE_THREADS) {
                const u32 k = fkey(r.scaled(i));
                local_max = k > local_max ? k : local_max;
            }
            const float m = unkey(reduce_max(lid, local_max));
            u32 lo = NEG_INF_KEY;
            if (min_p > 0.0f) {
                const u32 k = fkey(__fadd_rn(m, ln_portable(min_p)));
                lo = k > lo ? k : lo;
            }
            if (top_k > 0) {
                // The largest key with at least top_k values at or above it: the k-th largest.
                u32 kth = 0;
                for (int bit = 31; bit >= 0; --bit) {
                    const u32 cand = kth | (1u << bit);
                    u32 c = 0;
                    for (u32 i = lid; i < vocab; i += SAMPLE_THREADS) c += fkey(r.scaled(i)) >= cand;
                    if (reduce_count(lid, c) >= top_k) kth = cand;
                }
                lo = kth > lo ? kth : lo;
            }
            if (top_p < 1.0f && is_finite_bits(m)) {
                const float target = __fmul_rn(top_p, mass(r, lid, m, lo));
                // The largest threshold whose mass still reaches the target.
                u32 th = 0;
                for (int bit = 31; bit >= 0; --bit) {
                    const u32 cand = th | (1u << bit);
                    if (mass(r, lid, m, cand > lo ? cand : lo) >= target) th = cand;
                }
                lo = th > lo ? th : lo;
            }
            const u32 k0 = keys[2 * (u64)row], k1 = keys[2 * (u64)row + 1];
            for (u32 i = lid; i < vocab; i += SAMPLE_THREADS) {
                const float x = r.scaled(i);
                if (fkey(x) >= lo) {
                    const u32 k = fkey(__fadd_rn(x, gumbel(k0, k1, i)));
                    if (k > bk) {
                        bk = k;
                        bi = i;
                    }
                }
            }
        }
        const u32 id = reduce_argmax(lid, bk, bi);
        if (lid == 0) out[row] = id == 0xffffffffu ? 0u : id;
    }
}
