// Soft logic: a t-norm family's AND, OR and NOT elementwise (soft_logic), and EBRM's
// aggregate of query-entity scores into an item score with per-entity contributions
// (aggregate). The formulas, and why they have this shape, are documented in
// runtime/src/ops/softlogic.rs, the CPU reference; this file follows it operation for
// operation (same clamping, same fold order) so results agree to rounding.
//
// Logic codes (Logic::code): 0 product, 1 Goedel, 2 Lukasiewicz; unknown codes act as product.
// Connective codes: 0 AND, 1 OR, 2 NOT.
//
// Mirrors runtime/src/ops/softlogic.rs (SoftLogicParams, AggregateParams) and cuda/softlogic.cu.

struct SoftLogicParams {
    len: u32,
    logic: u32,
    connective: u32,
    _pad: u32,
}

struct AggregateParams {
    items: u32,
    entities: u32,
    kinds: u32,
    logic: u32,
    // λ: how much of the score the optional entities decide.
    optional_weight: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;

// soft_logic: a, b (bound to a for NOT), out.
@group(0) @binding(0) var<uniform> sp: SoftLogicParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// aggregate: qe, mask, kind, weight, essential, then the two outputs. Bindings may repeat
// across entry points of one module; each entry point uses its own set.
@group(0) @binding(0) var<uniform> ap: AggregateParams;
@group(0) @binding(1) var<storage, read> qe: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read> kind: array<u32>;
@group(0) @binding(4) var<storage, read> weight: array<f32>;
@group(0) @binding(5) var<storage, read> essential: array<u32>;
@group(0) @binding(6) var<storage, read_write> score: array<f32>;
@group(0) @binding(7) var<storage, read_write> contribution: array<f32>;

// [0, 1] with NaN mapped to 0: a score that cannot be computed supports nothing.
fn clamp01(x: f32) -> f32 {
    return select(clamp(x, 0.0, 1.0), 0.0, x != x);
}

fn t_and(logic: u32, x: f32, y: f32) -> f32 {
    let u = clamp01(x);
    let v = clamp01(y);
    switch logic {
        case 1u: {
            return min(u, v);
        }
        case 2u: {
            return max(u + v - 1.0, 0.0);
        }
        default: {
            return u * v;
        }
    }
}

fn t_or(logic: u32, x: f32, y: f32) -> f32 {
    let u = clamp01(x);
    let v = clamp01(y);
    switch logic {
        case 1u: {
            return max(u, v);
        }
        case 2u: {
            return min(u + v, 1.0);
        }
        default: {
            return u + v - u * v;
        }
    }
}

@compute @workgroup_size(256)
fn soft_logic(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * groups.x + wid.x) * WG + lid;
    if i >= sp.len {
        return;
    }
    switch sp.connective {
        case 1u: {
            out[i] = t_or(sp.logic, a[i], b[i]);
        }
        case 2u: {
            out[i] = 1.0 - clamp01(a[i]);
        }
        default: {
            out[i] = t_and(sp.logic, a[i], b[i]);
        }
    }
}

// No entity: `skip` and `only` take this when they select nothing.
const NONE: u32 = 0xffffffffu;

// The score of the present entities of row `item`, leaving out `skip`, and keeping only
// `only` unless it is NONE: S(set) of the reference.
fn subset_score(item: u32, skip: u32, only: u32) -> f32 {
    let lambda = clamp01(ap.optional_weight);
    var ess = 1.0;
    var opt = 0.0;
    for (var e = 0u; e < ap.entities; e++) {
        let i = item * ap.entities + e;
        let k = kind[i];
        if e == skip || (only != NONE && e != only) || mask[i] == 0u || k >= ap.kinds {
            continue;
        }
        let q = clamp01(qe[i]);
        let w = clamp01(weight[k]);
        if essential[k] != 0u {
            ess = t_and(ap.logic, ess, 1.0 - w * (1.0 - q));
        } else {
            opt = t_or(ap.logic, opt, w * q);
        }
    }
    return ess * ((1.0 - lambda) + lambda * opt);
}

// One invocation per item; it walks the item's entities (few: quadratic in them).
@compute @workgroup_size(256)
fn aggregate(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let item = (wid.y * groups.x + wid.x) * WG + lid;
    if item >= ap.items {
        return;
    }
    let lambda = clamp01(ap.optional_weight);
    let whole = subset_score(item, NONE, NONE);
    let empty = (1.0 - lambda) + lambda * 0.0;
    score[item] = whole;
    for (var e = 0u; e < ap.entities; e++) {
        let i = item * ap.entities + e;
        var c = 0.0;
        if mask[i] != 0u && kind[i] < ap.kinds {
            let last = whole - subset_score(item, e, NONE);
            let first = subset_score(item, NONE, e) - empty;
            c = 0.5 * (last + first);
        }
        contribution[i] = c;
    }
}
