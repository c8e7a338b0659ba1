// Kernel params, mirrored field for field from the #[repr(C)] structs in runtime/src/ops/.
// The Rust declaration is the single source: tests/tests/cuda_kernels.rs parses this file and
// fails when a struct, a field name, its order, its type or the struct size drifts.
//
// Kernels receive these by value (kernel parameter space), so no uniform buffer is needed.
#pragma once

#include "common.cuh"

// ops::elementwise::MAX_RANK
#define TANDEM_MAX_RANK 8

// ops::matmul::MatMulParams
struct MatMulParams {
    u32 batch;
    u32 m;
    u32 n;
    u32 k;
    u32 stride_a;
    u32 stride_b;
    u32 trans_b;
    u32 activation;
    u32 has_bias;
    u32 lora_rank;   // lora_matmul only: r
    f32 lora_scale;  // lora_matmul only: lora_alpha / r
    u32 _pad;
};
static_assert(sizeof(MatMulParams) == 48, "MatMulParams size");

// ops::elementwise::UnaryParams (unary and cast)
struct UnaryParams {
    u32 len;
    u32 op;
    u32 to;
    u32 _pad;
};
static_assert(sizeof(UnaryParams) == 16, "UnaryParams size");

// ops::elementwise::BinaryParams
struct BinaryParams {
    u32 len;
    u32 op;
    u32 rank;
    u32 _pad;
    u32 out_shape[TANDEM_MAX_RANK];
    u32 a_strides[TANDEM_MAX_RANK];
    u32 b_strides[TANDEM_MAX_RANK];
};
static_assert(sizeof(BinaryParams) == 112, "BinaryParams size");

// ops::norm::NormParams (layer_norm, softmax, l2_normalize)
struct NormParams {
    u32 rows;
    u32 cols;
    f32 eps;
    u32 _pad;
};
static_assert(sizeof(NormParams) == 16, "NormParams size");

// ops::attention::AttentionParams
struct AttentionParams {
    u32 num_seqs;
    u32 tokens;
    u32 num_heads;
    u32 num_kv_heads;
    u32 head_dim;
    u32 causal;
    f32 scale;
    u32 table_cols;
    u32 kv_tokens;
    u32 _pad0;
    u32 _pad1;
    u32 _pad2;
};
static_assert(sizeof(AttentionParams) == 48, "AttentionParams size");

// ops::attention::KvWriteParams
struct KvWriteParams {
    u32 num_seqs;
    u32 tokens;
    u32 width;
    u32 kv_tokens;
};
static_assert(sizeof(KvWriteParams) == 16, "KvWriteParams size");

// ops::rope::RopeParams
struct RopeParams {
    u32 tokens;
    u32 heads;
    u32 head_dim;
    u32 rot_dims;
    u32 half;
    u32 _pad0;
    u32 _pad1;
    u32 _pad2;
};
static_assert(sizeof(RopeParams) == 32, "RopeParams size");

// ops::gather::GatherParams
struct GatherParams {
    u32 num_ids;
    u32 dim;
    u32 vocab;
    u32 _pad;
};
static_assert(sizeof(GatherParams) == 16, "GatherParams size");

// ops::pool::PoolParams
struct PoolParams {
    u32 num_seqs;
    u32 dim;
    u32 tokens;
    u32 kind;
};
static_assert(sizeof(PoolParams) == 16, "PoolParams size");

// ops::softlogic::SoftLogicParams
struct SoftLogicParams {
    u32 len;
    u32 logic;
    u32 connective;
    u32 _pad;
};
static_assert(sizeof(SoftLogicParams) == 16, "SoftLogicParams size");

// ops::softlogic::AggregateParams
struct AggregateParams {
    u32 items;
    u32 entities;
    u32 kinds;
    u32 logic;
    f32 optional_weight;
    u32 _pad[3];
};
static_assert(sizeof(AggregateParams) == 32, "AggregateParams size");

// ops::elementwise::ClampParams
struct ClampParams {
    u32 len;
    u32 _pad;
    f32 min;
    f32 max;
};
static_assert(sizeof(ClampParams) == 16, "ClampParams size");

// ops::conv::Conv2dParams
struct Conv2dParams {
    u32 n;
    u32 c;
    u32 h;
    u32 w;
    u32 o;
    u32 kh;
    u32 kw;
    u32 oh;
    u32 ow;
    u32 stride_h;
    u32 stride_w;
    u32 pad_h;
    u32 pad_w;
    u32 groups;
    u32 has_bias;
    u32 has_clamp;
    float clamp_min;
    float clamp_max;
    u32 has_residual;
    u32 _pad;
};
static_assert(sizeof(Conv2dParams) == 80, "Conv2dParams size");

// ops::conv::GlobalPoolParams (global_avg_pool)
struct GlobalPoolParams {
    u32 rows;
    u32 cols;
    u32 _pad0;
    u32 _pad1;
};
static_assert(sizeof(GlobalPoolParams) == 16, "GlobalPoolParams size");

// ops::sample::SampleParams
struct SampleParams {
    u32 seqs;
    u32 vocab;
    u32 seen;
    u32 _pad;
};
static_assert(sizeof(SampleParams) == 16, "SampleParams size");
