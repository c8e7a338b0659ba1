// Row gather (the embedding lookup): out[i, :] = table[ids[i], :], or zeros when ids[i] is
// outside the table.
//
// One invocation per output element, 256 per workgroup, on a 2-D grid (WebGPU allows 65535
// workgroups per dimension). Values move as raw 32-bit words so the copy is bit-exact.
//
// Mirrors runtime/src/ops/gather.rs (GatherParams) and cuda/gather.cu.

struct GatherParams {
    num_ids: u32,
    dim: u32,
    vocab: u32,
    _pad: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: GatherParams;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn gather(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.y * groups.x + wid.x) * WG + lid;
    if i >= p.num_ids * p.dim {
        return;
    }
    let id = ids[i / p.dim];
    var v = 0u;
    if id < p.vocab {
        v = table[id * p.dim + i % p.dim];
    }
    out[i] = v;
}
