// A host emulation of the small part of CUDA the kernels in cuda/ use, so that they can be
// compiled by a C++ compiler and run on the CPU with CUDA's execution model: every thread of a
// block is an OS thread, __syncthreads is a block-wide barrier, warp shuffles and mma.sync
// exchange values through per-warp slots between warp-wide barriers, __shared__ variables are
// statics (blocks run one after another, so one copy per kernel is the block's).
//
// It exists to test the kernels' indexing, tiling, masking and synchronisation on machines
// without a GPU (tests/tests/cuda_emulated.rs runs the op conformance suite through it). It
// cannot show performance, memory-model subtleties beyond barriers, or whether the PTX of
// the real build is right: the mma fragment layout emulated here is the one documented in
// common.cuh, so only a GPU run confirms it against the hardware.
//
// Used as: c++ -std=c++20 -include cuda/emu/cuda_emu.h -x c++ cuda/<stem>.cu -shared ...
#pragma once

#define TANDEM_EMU 1

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

namespace tandem_emu {

struct Warp {
    std::barrier<> bar{32};
    uint64_t slots[32][8];
};

struct Block {
    explicit Block(unsigned threads) : bar(threads) {}
    std::barrier<> bar;
    std::vector<std::unique_ptr<Warp>> warps;
};

inline thread_local Block* block = nullptr;
inline thread_local Warp* warp = nullptr;
inline thread_local unsigned lane = 0;

template <typename T>
inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

// Every lane publishes `v`, then reads lane `src(lane)`'s value.
template <typename T, typename F>
inline T exchange(T v, F src) {
    Warp& w = *warp;
    w.slots[lane][0] = to_bits(v);
    w.bar.arrive_and_wait();
    const unsigned from = src(lane);
    const T r = from < 32 ? from_bits<T>(w.slots[from][0]) : v;
    w.bar.arrive_and_wait();  // nobody overwrites a slot before everyone has read
    return r;
}

}  // namespace tandem_emu

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

inline void __syncthreads() { tandem_emu::block->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { tandem_emu::warp->bar.arrive_and_wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
    return tandem_emu::exchange(v, [&](unsigned l) { return l ^ (unsigned)mask; });
}
template <typename T>
inline T __shfl_sync(unsigned, T v, int src) {
    return tandem_emu::exchange(v, [&](unsigned) { return (unsigned)src & 31u; });
}
template <typename T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta) {
    return tandem_emu::exchange(v, [&](unsigned l) { return l >= delta ? l - delta : l; });
}

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline float __int_as_float(unsigned i) { return __int_as_float((int)i); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline float __uint_as_float(unsigned i) { return __int_as_float((int)i); }
inline unsigned __float_as_uint(float f) {
    unsigned i;
    std::memcpy(&i, &f, 4);
    return i;
}
// Compiled with -ffp-contract=off, so these round after every operation as on the GPU.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }

// binary16 <-> binary32, round to nearest even, as cvt.rn.f16.f32 / cvt.f32.f16.
inline float f16_to_f32(unsigned short h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  // subnormal: normalise
        int e = -1;
        do {
            man <<= 1;
            ++e;
        } while ((man & 0x400u) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline unsigned short f32_to_f16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) return (unsigned short)(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
    if (abs >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to >= 65520: inf
    if (abs < 0x38800000u) {                                            // below the smallest normal
        if (abs < 0x33000000u) return (unsigned short)sign;             // below half the smallest subnormal
        const uint32_t e = abs >> 23;
        const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e;  // 14..24
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) ++r;
        return (unsigned short)(sign | r);
    }
    uint32_t r = ((abs >> 13) - (112u << 10));
    const uint32_t rem = abs & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
    return (unsigned short)(sign | r);
}

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, from the fragment layout in common.cuh.
inline void mma_m16n8k16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    using namespace tandem_emu;
    Warp& w = *warp;
    for (int i = 0; i < 4; ++i) w.slots[lane][i] = a[i];
    w.slots[lane][4] = b[0];
    w.slots[lane][5] = b[1];
    w.bar.arrive_and_wait();
    auto half_of = [](uint64_t word, unsigned k) {
        return f16_to_f32((unsigned short)(k % 2 ? (word >> 16) & 0xffffu : word & 0xffffu));
    };
    auto A = [&](unsigned row, unsigned k) {
        const unsigned owner = (row % 8) * 4 + (k % 8) / 2;
        const unsigned reg = (row >= 8 ? 1u : 0u) + (k >= 8 ? 2u : 0u);
        return half_of(w.slots[owner][reg], k);
    };
    auto B = [&](unsigned k, unsigned col) {
        const unsigned owner = col * 4 + (k % 8) / 2;
        return half_of(w.slots[owner][4 + (k >= 8 ? 1u : 0u)], k);
    };
    const unsigned g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const unsigned row = g + (i >= 2 ? 8u : 0u), col = 2 * t + (i % 2);
        float acc = d[i];
        for (unsigned k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
        d[i] = acc;
    }
    w.bar.arrive_and_wait();
}

// Runs `body(ctx)` as every thread of every block of the grid, blocks one after another.
// Returns 0, or -1 when the block is not a whole number of warps.
extern "C" int tandem_emu_launch(const unsigned grid[3], const unsigned block[3], void (*body)(void*), void* ctx) {
    using namespace tandem_emu;
    const unsigned threads = block[0] * block[1] * block[2];
    if (threads == 0 || threads % 32 != 0) return -1;
    Block blk(threads);
    for (unsigned i = 0; i < threads / 32; ++i) blk.warps.push_back(std::make_unique<Warp>());
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned tid = 0; tid < threads; ++tid) {
        pool.emplace_back([&, tid] {
            tandem_emu::block = &blk;
            tandem_emu::warp = blk.warps[tid / 32].get();
            tandem_emu::lane = tid % 32;
            threadIdx = {tid % block[0], (tid / block[0]) % block[1], tid / (block[0] * block[1])};
            blockDim = {block[0], block[1], block[2]};
            gridDim = {grid[0], grid[1], grid[2]};
            for (unsigned z = 0; z < grid[2]; ++z)
                for (unsigned y = 0; y < grid[1]; ++y)
                    for (unsigned x = 0; x < grid[0]; ++x) {
                        blockIdx = {x, y, z};
                        body(ctx);
                        blk.bar.arrive_and_wait();  // the next block reuses the __shared__ statics
                    }
        });
    }
    for (auto& t : pool) t.join();
    return 0;
}
