// Token sampling: one workgroup of 256 invocations per sequence row picks the next id from
// the row's logits (greedy, or the Gumbel-max draw over the set kept by min-p, top-k and
// top-p). Strided loops over the vocabulary with workgroup tree reductions; the top-k and
// top-p thresholds by bisection over the order-preserving u32 encoding of f32 (32 passes
// each, only when the filter is on; its reductions' barriers run either way). Every pass recomputes the penalized logits instead of
// keeping a scratch copy. Semantics, and the hash, ln and encoding every backend shares, in
// runtime/src/ops/sample.rs.
//
// Mirrors runtime/src/ops/sample.rs (SampleParams) and cuda/sample.cu.

struct SampleParams {
    seqs: u32,
    vocab: u32,
    seen: u32,
    _pad: u32,
}

const WG: u32 = 256u;
const NEG_INF_KEY: u32 = 0x007fffffu;

@group(0) @binding(0) var<uniform> p: SampleParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> settings: array<f32>;
@group(0) @binding(3) var<storage, read> seen: array<u32>;
@group(0) @binding(4) var<storage, read> keys: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<u32>;

var<workgroup> red_u: array<u32, 256>;
var<workgroup> red_id: array<u32, 256>;
var<workgroup> red_f: array<f32, 256>;

fn fkey(x: f32) -> u32 {
    var b = bitcast<u32>(x);
    b = select(b, 0xff800000u, is_nan(x));
    return select(~b, b | 0x80000000u, (b & 0x80000000u) == 0u);
}

fn unkey(k: u32) -> f32 {
    if (k & 0x80000000u) != 0u {
        return bitcast<f32>(k & 0x7fffffffu);
    }
    return bitcast<f32>(~k);
}

// ops::sample::ln: a positive normal finite x only.
fn ln_portable(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    var e = i32((bits >> 23u) & 0xffu) - 127;
    var m = bitcast<f32>((bits & 0x007fffffu) | 0x3f800000u);
    if m > bitcast<f32>(0x3fb504f3u) {
        m = m * 0.5;
        e = e + 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    var q = 1.0 / 11.0;
    q = q * s2 + 1.0 / 9.0;
    q = q * s2 + 1.0 / 7.0;
    q = q * s2 + 1.0 / 5.0;
    q = q * s2 + 1.0 / 3.0;
    q = q * s2 + 1.0;
    return 2.0 * s * q + f32(e) * bitcast<f32>(0x3f317218u);
}

fn pcg(v: u32) -> u32 {
    let s = v * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

fn gumbel(k0: u32, k1: u32, i: u32) -> f32 {
    let h = pcg(pcg(pcg(k0) + k1) + i);
    let u = (f32(h >> 9u) + 0.5) * (1.0 / 8388608.0);
    return -ln_portable(-ln_portable(u));
}

// ops::sample::is_seen: a lower bound by steps of halving powers of two, so that the trip
// count depends on the row length only.
fn seen_step(base: u32, n: u32, id: u32, pos: u32, step: u32) -> u32 {
    let next = pos + step;
    let inside = step > 0u && next <= n;
    let v = seen[base + select(0u, next - 1u, inside)];
    return select(pos, next, inside && v < id);
}

// ops::sample::is_seen: 32 steps (those past the row's largest power of two are no-ops) by a
// loop of fixed trip count. Looping while the step is non-zero answered wrongly on llvmpipe
// (Mesa 22.3) once the kernel had run it many times (top-k and top-p bisection with the
// penalty on); written out 32 times, Chromium's SwiftShader spent minutes compiling the
// kernel and lost the device. The browser tests check the second, the native ones the first.
fn is_seen(row: u32, id: u32) -> bool {
    let n = p.seen;
    let base = row * n;
    let step = 1u << (31u - countLeadingZeros(n));
    var pos = 0u;
    for (var j = 0u; j < 32u; j = j + 1u) {
        pos = seen_step(base, n, id, pos, step >> j);
    }
    let at = seen[base + min(pos, n - 1u)];
    return pos < n && at == id;
}

fn penalized(row: u32, i: u32, rp: f32) -> f32 {
    let l = logits[row * p.vocab + i];
    let hit = rp != 1.0 && is_seen(row, i);
    return select(l, select(l * rp, l / rp, l > 0.0), hit);
}

// x_i = l_i / T with NaN as −∞.
fn scaled(row: u32, i: u32, rp: f32, t: f32) -> f32 {
    let x = penalized(row, i, rp) / t;
    // A `var`, not a literal: browsers' WGSL compilers (Tint) evaluate `bitcast` of a
    // constant at compile time and refuse an infinite result.
    var negative_infinity = 0xff800000u;
    return select(x, bitcast<f32>(negative_infinity), is_nan(x));
}

// The lowest id with the largest key over the workgroup (a thread without items passes key 0,
// below every encoded value).
fn reduce_argmax(lid: u32, k: u32, id: u32) -> u32 {
    red_u[lid] = k;
    red_id[lid] = id;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st = st / 2u) {
        if lid < st {
            let ok = red_u[lid + st];
            let oi = red_id[lid + st];
            if ok > red_u[lid] || (ok == red_u[lid] && oi < red_id[lid]) {
                red_u[lid] = ok;
                red_id[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let r = red_id[0];
    workgroupBarrier();
    return r;
}

fn reduce_max(lid: u32, k: u32) -> u32 {
    red_u[lid] = k;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st = st / 2u) {
        if lid < st {
            red_u[lid] = max(red_u[lid], red_u[lid + st]);
        }
        workgroupBarrier();
    }
    let r = red_u[0];
    workgroupBarrier();
    return r;
}

fn reduce_count(lid: u32, c: u32) -> u32 {
    red_u[lid] = c;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st = st / 2u) {
        if lid < st {
            red_u[lid] = red_u[lid] + red_u[lid + st];
        }
        workgroupBarrier();
    }
    let r = red_u[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st = st / 2u) {
        if lid < st {
            red_f[lid] = red_f[lid] + red_f[lid + st];
        }
        workgroupBarrier();
    }
    let r = red_f[0];
    workgroupBarrier();
    return r;
}

// Σ exp(x_i − m) over x_i whose key is at least `lo` (0 when not `on`).
fn mass(row: u32, lid: u32, rp: f32, t: f32, m: f32, lo: u32, on: bool) -> f32 {
    var s = 0.0;
    if on {
        for (var i = lid; i < p.vocab; i = i + WG) {
            let x = scaled(row, i, rp, t);
            if fkey(x) >= lo {
                s = s + exp(x - m);
            }
        }
    }
    return reduce_sum(lid, s);
}

@compute @workgroup_size(256)
fn sample(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.y * groups.x + wid.x;
    if row >= p.seqs {
        return;
    }
    let vocab = p.vocab;
    // Settings, with invalid values off (ops::sample::Settings).
    let t_in = settings[row * 5u];
    let k_in = settings[row * 5u + 1u];
    let p_in = settings[row * 5u + 2u];
    let mp_in = settings[row * 5u + 3u];
    let rp_in = settings[row * 5u + 4u];
    let tiny = bitcast<f32>(0x00800000u);
    let finite_t = (bitcast<u32>(t_in) & 0x7f800000u) != 0x7f800000u;
    let greedy = !(finite_t && t_in > 0.0);
    var top_k = 0u;
    if k_in >= 1.0 && k_in < f32(vocab) {
        top_k = min(u32(k_in), vocab - 1u);
    }
    var top_p = 1.0;
    if p_in >= tiny && p_in < 1.0 {
        top_p = p_in;
    }
    var min_p = 0.0;
    if mp_in >= tiny {
        min_p = min(mp_in, 1.0);
    }
    var rp = 1.0;
    if (bitcast<u32>(rp_in) & 0x7f800000u) != 0x7f800000u && rp_in > 0.0 {
        rp = rp_in;
    }

    // Barriers must sit in uniform control flow, and the settings, read from storage, are not
    // uniform to browsers' WGSL compilers (Tint's uniformity analysis). So every reduction
    // runs whatever the settings; they only decide which elements a pass reads and which
    // result counts. A filter that is off costs its reductions' barriers, not vocabulary passes.
    let t = select(t_in, 1.0, greedy);
    var local_max = 0u;
    if !greedy {
        for (var i = lid; i < vocab; i = i + WG) {
            local_max = max(local_max, fkey(scaled(row, i, rp, t)));
        }
    }
    let max_key = reduce_max(lid, local_max);
    let m = unkey(max_key);
    var lo = NEG_INF_KEY;
    if min_p > 0.0 {
        lo = max(lo, fkey(m + ln_portable(min_p)));
    }
    // Top-k: the largest key with at least top_k values at or above it, the k-th largest.
    let use_top_k = !greedy && top_k > 0u;
    var kth = 0u;
    for (var bit = 31; bit >= 0; bit = bit - 1) {
        let cand = kth | (1u << u32(bit));
        var c = 0u;
        if use_top_k {
            for (var i = lid; i < vocab; i = i + WG) {
                if fkey(scaled(row, i, rp, t)) >= cand {
                    c = c + 1u;
                }
            }
        }
        // The reduction first: `&&` would skip it for some threads.
        if reduce_count(lid, c) >= top_k && use_top_k {
            kth = cand;
        }
    }
    if use_top_k {
        lo = max(lo, kth);
    }
    // Top-p: the largest threshold whose mass still reaches top_p of the kept mass.
    let m_finite = (bitcast<u32>(m) & 0x7f800000u) != 0x7f800000u;
    let use_top_p = !greedy && top_p < 1.0 && m_finite;
    let goal = top_p * mass(row, lid, rp, t, m, lo, use_top_p);
    var th = 0u;
    for (var bit = 31; bit >= 0; bit = bit - 1) {
        let cand = th | (1u << u32(bit));
        if mass(row, lid, rp, t, m, max(cand, lo), use_top_p) >= goal && use_top_p {
            th = cand;
        }
    }
    if use_top_p {
        lo = max(lo, th);
    }
    // Greedy: the largest penalized logit. Else the Gumbel-max draw over the kept set.
    var bk = 0u;
    var bi = 0xffffffffu;
    let k0 = keys[row * 2u];
    let k1 = keys[row * 2u + 1u];
    for (var i = lid; i < vocab; i = i + WG) {
        var k = 0u;
        if greedy {
            k = fkey(penalized(row, i, rp));
        } else {
            let x = scaled(row, i, rp, t);
            if fkey(x) >= lo {
                k = fkey(x + gumbel(k0, k1, i));
            }
        }
        if k > bk {
            bk = k;
            bi = i;
        }
    }
    let id = reduce_argmax(lid, bk, bi);
    if lid == 0u {
        out[row] = select(id, 0u, id == 0xffffffffu);
    }
}
