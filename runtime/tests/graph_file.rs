//! The graph file format and validation: a round trip, and each kind of bad graph or weight
//! file giving an error that names the node, value or tensor at fault.

use tandem_runtime::graph::{Weights, load_weights, read_graph_file, write_graph_file};
use tandem_runtime::ops::{Activation, Connective, Logic, LoraMatMul, MatMul};
use tandem_runtime::{DType, Dim, Graph, HostTensor, Op, TensorData, TensorType, ValueId};

/// x [tokens, 4] · wᵀ (w [3, 4]) + b, then GELU.
fn small_graph() -> Graph {
    let mut g = Graph::new("small");
    let x = g.input("x", TensorType::new(DType::F32, vec![Dim::sym("tokens"), Dim::Fixed(4)]));
    let w = g.weight("w", TensorType::fixed(DType::F32, &[3, 4]));
    let b = g.weight("b", TensorType::fixed(DType::F32, &[3]));
    let y = g.node1("dense", Op::MatMul(MatMul { trans_b: true, activation: Activation::Gelu }), &[x, w, b]).unwrap();
    g.output(y, "y");
    g
}

fn err(graph: &Graph) -> String {
    graph.validate().unwrap_err().to_string()
}

#[test]
fn a_graph_file_round_trips() {
    let dir = tempdir();
    let path = dir.join("g.tgraph");
    let g = small_graph();
    write_graph_file(&g, &path).unwrap();
    assert_eq!(read_graph_file(&path).unwrap(), g);
}

#[test]
fn lora_and_soft_logic_nodes_round_trip() {
    let mut g = Graph::new("adapters");
    let f = |s: &[usize]| TensorType::fixed(DType::F32, s);
    let u = |s: &[usize]| TensorType::fixed(DType::U32, s);
    let x = g.input("x", TensorType::new(DType::F32, vec![Dim::sym("tokens"), Dim::Fixed(4)]));
    let [w, a, b, bias] =
        [("w", f(&[3, 4])), ("a", f(&[2, 4])), ("b", f(&[3, 2])), ("bias", f(&[3]))].map(|(n, t)| g.weight(n, t));
    let lora = Op::LoraMatMul(LoraMatMul { scale: 8.0, activation: Activation::Relu });
    let y = g.node1("dense_lora", lora, &[x, w, a, b, bias]).unwrap();
    g.output(y, "y");
    let [qe, mask, kind] = [("qe", f(&[5, 3])), ("mask", u(&[5, 3])), ("kind", u(&[5, 3]))].map(|(n, t)| g.input(n, t));
    let [weight, essential] = [("weight", f(&[4])), ("essential", u(&[4]))].map(|(n, t)| g.weight(n, t));
    let not = g.node1("not", Op::SoftLogic { connective: Connective::Not, logic: Logic::Lukasiewicz }, &[qe]).unwrap();
    let or = g.node1("or", Op::SoftLogic { connective: Connective::Or, logic: Logic::Goedel }, &[qe, not]).unwrap();
    let aggregate = Op::Aggregate { logic: Logic::Product, optional_weight: 0.25 };
    let outs = g.node("aggregate", aggregate, &[or, mask, kind, weight, essential]).unwrap();
    g.output(outs[0], "score");
    g.output(outs[1], "contribution");
    g.validate().unwrap();

    let dir = tempdir();
    let path = dir.join("adapters.tgraph");
    write_graph_file(&g, &path).unwrap();
    assert_eq!(read_graph_file(&path).unwrap(), g);
}

#[test]
fn bad_lora_and_aggregate_operands_name_the_node() {
    let mut g = Graph::new("bad");
    let x = g.input("x", TensorType::fixed(DType::F32, &[7, 4]));
    let w = g.weight("w", TensorType::fixed(DType::F32, &[3, 4]));
    let a = g.weight("a", TensorType::fixed(DType::F32, &[2, 5]));
    let b = g.weight("b", TensorType::fixed(DType::F32, &[3, 2]));
    let e = g.node("lora", Op::LoraMatMul(LoraMatMul::default()), &[x, w, a, b]).unwrap_err().to_string();
    assert!(e.contains("node 'lora' (lora_matmul)") && e.contains("lora_a [r, K]"), "{e}");
    let mask = g.input("mask", TensorType::fixed(DType::F32, &[7, 4]));
    let e = g
        .node("agg", Op::Aggregate { logic: Logic::Goedel, optional_weight: 0.5 }, &[x, mask, mask, w, w])
        .unwrap_err()
        .to_string();
    assert!(e.contains("node 'agg' (aggregate)") && e.contains("mask must be u32"), "{e}");
}

#[test]
fn a_dangling_value_is_named() {
    let mut g = small_graph();
    let ghost = ValueId(g.values.len() as u32);
    g.values.push(tandem_runtime::graph::Value { name: "ghost".into(), ty: TensorType::fixed(DType::F32, &[3]) });
    g.nodes[0].inputs[2] = ghost;
    let e = err(&g);
    assert!(e.contains("node 'dense'") && e.contains("'ghost' is dangling"), "{e}");
}

#[test]
fn a_shape_mismatch_is_named() {
    let mut g = small_graph();
    g.values[g.weights[0].index()].ty = TensorType::fixed(DType::F32, &[3, 5]);
    let e = err(&g);
    assert!(e.contains("node 'dense'") && e.contains("inner dims"), "{e}");
}

#[test]
fn a_declared_output_that_disagrees_with_the_op_is_named() {
    let mut g = small_graph();
    let out = g.outputs[0];
    g.values[out.index()].ty = TensorType::new(DType::F32, vec![Dim::sym("tokens"), Dim::Fixed(7)]);
    let e = err(&g);
    assert!(e.contains("node 'dense'") && e.contains("declared") && e.contains("produces"), "{e}");
}

#[test]
fn a_dtype_mismatch_is_named() {
    let mut g = small_graph();
    g.values[g.inputs[0].index()].ty = TensorType::new(DType::U32, vec![Dim::sym("tokens"), Dim::Fixed(4)]);
    let e = err(&g);
    assert!(e.contains("node 'dense'") && e.contains("must be f32"), "{e}");
}

#[test]
fn an_unknown_op_in_a_file_is_named() {
    let dir = tempdir();
    let path = dir.join("g.tgraph");
    write_graph_file(&small_graph(), &path).unwrap();
    // Rename the op in place: "matmul" → "matmux" (same length, so the payload stays valid).
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(6).position(|w| w == b"matmul").unwrap();
    bytes[at + 5] = b'x';
    std::fs::write(&path, &bytes).unwrap();
    let e = read_graph_file(&path).unwrap_err().to_string();
    assert!(e.contains("g.tgraph") && e.contains("node 'dense': unknown op 'matmux'"), "{e}");
}

#[test]
fn corrupt_graph_files_are_errors() {
    let dir = tempdir();
    let path = dir.join("g.tgraph");
    write_graph_file(&small_graph(), &path).unwrap();
    let good = std::fs::read(&path).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not a graph at all".to_vec(), "bad magic"),
        (good[..good.len() - 3].to_vec(), "truncated"),
        (
            {
                let mut v = good.clone();
                v[8] = 99;
                v
            },
            "version 99",
        ),
        (
            {
                let mut v = good[..20].to_vec();
                v.extend(std::iter::repeat_n(0xff, good.len() - 20));
                v
            },
            "corrupt",
        ),
    ];
    for (bytes, expect) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let e = read_graph_file(&path).unwrap_err().to_string();
        assert!(e.contains(expect), "expected '{expect}' in: {e}");
    }
}

#[test]
fn weights_missing_or_misshapen_are_named() {
    let dir = tempdir();
    let path = dir.join("w.safetensors");
    let w = HostTensor::f32(vec![3, 4], vec![0.5; 12]).unwrap();
    Weights::write(&path, &[("w".into(), w.clone())]).unwrap();
    let e = load_weights(&small_graph(), &Weights::open(&path).unwrap()).unwrap_err().to_string();
    assert!(e.contains("w.safetensors") && e.contains("weight 'b' is missing"), "{e}");

    let b = HostTensor::f32(vec![4], vec![0.0; 4]).unwrap();
    Weights::write(&path, &[("w".into(), w), ("b".into(), b)]).unwrap();
    let e = load_weights(&small_graph(), &Weights::open(&path).unwrap()).unwrap_err().to_string();
    assert!(e.contains("weight 'b' has shape [4] but the graph expects [3]"), "{e}");
}

fn tempdir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("tandem-graph-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A MobileNetV2-style block (pointwise expand, ReLU6, depthwise stride 2, pointwise project)
/// and the classifier head, with a symbolic batch.
#[test]
fn conv_clamp_and_global_avg_pool_nodes_round_trip() {
    use tandem_runtime::ops::Conv2d;
    let mut g = Graph::new("mobilenet_block");
    let f = |s: &[usize]| TensorType::fixed(DType::F32, s);
    let x =
        g.input("x", TensorType::new(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(3), Dim::Fixed(9), Dim::Fixed(9)]));
    let [w1, b1] = [("w1", f(&[12, 3, 1, 1])), ("b1", f(&[12]))].map(|(n, t)| g.weight(n, t));
    let w2 = g.weight("w2", f(&[12, 1, 3, 3]));
    let w3 = g.weight("w3", f(&[5, 12, 1, 1]));
    let pw = Conv2d { stride: [1, 1], padding: [0, 0], groups: 1, clamp: None };
    let expand = g.node1("expand", Op::Conv2d(pw), &[x, w1, b1]).unwrap();
    let relu6 = g.node1("relu6", Op::Clamp { min: 0.0, max: 6.0 }, &[expand]).unwrap();
    let dw = Conv2d { stride: [2, 2], padding: [1, 1], groups: 12, clamp: None };
    let depthwise = g.node1("depthwise", Op::Conv2d(dw), &[relu6, w2]).unwrap();
    let project = g.node1("project", Op::Conv2d(pw), &[depthwise, w3]).unwrap();
    assert_eq!(
        g.value(project).ty,
        TensorType::new(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(5), Dim::Fixed(5), Dim::Fixed(5)])
    );
    let pooled = g.node1("pool", Op::GlobalAvgPool, &[project]).unwrap();
    assert_eq!(g.value(pooled).ty, TensorType::new(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(5)]));
    g.output(pooled, "features");
    g.validate().unwrap();

    let dir = tempdir();
    let path = dir.join("mobilenet_block.tgraph");
    write_graph_file(&g, &path).unwrap();
    assert_eq!(read_graph_file(&path).unwrap(), g);
}

#[test]
fn bad_conv2d_operands_name_the_node() {
    use tandem_runtime::ops::Conv2d;
    let conv =
        |stride: [u32; 2], padding: [u32; 2], groups: u32| Op::Conv2d(Conv2d { stride, padding, groups, clamp: None });
    let f = |s: &[usize]| TensorType::fixed(DType::F32, s);
    /// x, w, bias, op, what the error must say.
    type BadConv<'a> = (&'a [usize], &'a [usize], Option<&'a [usize]>, Op, &'a str);
    let bad: &[BadConv] = &[
        (&[1, 6, 5, 5, 1], &[4, 6, 3, 3], None, conv([1, 1], [0, 0], 1), "x [N, C, H, W] must have rank 4"),
        (&[1, 6, 5, 5], &[4, 6, 3], None, conv([1, 1], [0, 0], 1), "w [O, C/groups, KH, KW] must have rank 4"),
        (&[1, 6, 5, 5], &[4, 1, 3, 3], None, conv([1, 1], [0, 0], 4), "not divisible by groups 4"),
        (&[1, 6, 5, 5], &[3, 3, 3, 3], None, conv([1, 1], [0, 0], 2), "output channels are not divisible"),
        (&[1, 6, 5, 5], &[4, 6, 3, 3], None, conv([1, 1], [0, 0], 2), "second dim must be C/groups"),
        (&[1, 6, 5, 5], &[4, 6, 3, 3], Some(&[5]), conv([1, 1], [0, 0], 1), "bias must be [4]"),
        (&[1, 6, 2, 5], &[4, 6, 3, 3], None, conv([1, 1], [0, 0], 1), "height"),
        (&[1, 6, 5, 1], &[4, 6, 1, 5], None, conv([1, 1], [1, 1], 1), "width"),
        (&[1, 6, 5, 5], &[4, 6, 3, 3], None, conv([0, 1], [0, 0], 1), "stride must be at least 1"),
        (&[1, 6, 5, 5], &[4, 6, 3, 3], None, conv([1, 1], [0, 0], 0), "groups must be at least 1"),
    ];
    for (i, (x, w, bias, op, what)) in bad.iter().enumerate() {
        let mut g = Graph::new("bad");
        let mut ins = vec![g.input("x", f(x)), g.weight("w", f(w))];
        if let Some(b) = bias {
            ins.push(g.weight("b", f(b)));
        }
        let e = g.node(&format!("conv{i}"), op.clone(), &ins).unwrap_err().to_string();
        assert!(e.contains(&format!("node 'conv{i}' (conv2d)")) && e.contains(what), "case {i}: {e}");
    }
    // A residual (the fourth input) must be shaped like the output.
    let mut g = Graph::new("residual");
    let mut ins = vec![g.input("x", f(&[1, 6, 5, 5])), g.weight("w", f(&[4, 6, 1, 1])), g.weight("b", f(&[4]))];
    ins.push(g.input("r", f(&[1, 4, 5, 4])));
    let e = g.node("conv", conv([1, 1], [0, 0], 1), &ins).unwrap_err().to_string();
    assert!(e.contains("node 'conv' (conv2d)") && e.contains("residual must be the output's f32[1, 4, 5, 5]"), "{e}");
    ins[3] = g.input("r_fits", f(&[1, 4, 5, 5]));
    g.node("fits", conv([1, 1], [0, 0], 1), &ins).unwrap();
    ins.push(ins[3]);
    let e = g.node("five", conv([1, 1], [0, 0], 1), &ins).unwrap_err().to_string();
    assert!(e.contains("takes 2 to 4 inputs, got 5"), "{e}");
    let mut g = Graph::new("bad");
    let x = g.input("x", f(&[2, 3, 4]));
    let e = g.node("gap", Op::GlobalAvgPool, &[x]).unwrap_err().to_string();
    assert!(e.contains("node 'gap' (global_avg_pool)") && e.contains("rank 4"), "{e}");
    let e = g.node("clip", Op::Clamp { min: f32::NAN, max: 6.0 }, &[x]).unwrap_err().to_string();
    assert!(e.contains("node 'clip' (clamp)") && e.contains("bounds"), "{e}");
}

/// A Q4_K weight (no op consumes quantized data yet, so the graph outputs it as is) is
/// written as U8 bytes with its dtype in the safetensors metadata and read back as the same
/// blocks; asked for as f32 it is dequantized.
#[test]
fn a_quantized_weight_round_trips() {
    let mut g = Graph::new("quantized");
    let w = g.weight("w", TensorType::fixed(DType::Q4_K, &[2, 256]));
    g.output(w, "w");
    let dir = tempdir();
    write_graph_file(&g, &dir.join("q.tgraph")).unwrap();
    let g = read_graph_file(&dir.join("q.tgraph")).unwrap();
    assert_eq!(g.value(g.weights[0]).ty, TensorType::fixed(DType::Q4_K, &[2, 256]));

    let bytes: Vec<u8> = (0..288u32).map(|i| (i * 37 % 251) as u8).collect();
    let blocks = HostTensor::new(vec![2, 256], TensorData::from_bytes(DType::Q4_K, &bytes).unwrap()).unwrap();
    let path = dir.join("q.safetensors");
    Weights::write(&path, &[("w".into(), blocks.clone())]).unwrap();
    let file = Weights::open(&path).unwrap();
    assert_eq!(file.shape("w").unwrap(), [2, 256], "the logical shape, not the byte shape [2, 144]");
    let info = &file.infos()[0];
    assert_eq!((info.dtype.as_str(), info.bytes), ("q4_k", 288));
    assert_eq!(load_weights(&g, &file).unwrap(), vec![blocks.clone()]);
    assert_eq!(file.tensor("w", DType::F32).unwrap().to_f32(), blocks.to_f32());
    let e = file.tensor("w", DType::Q8_0).unwrap_err().to_string();
    assert!(e.contains("tensor 'w': holds q4_k blocks, which do not convert to q8_0"), "{e}");
}

/// The graph file seed of the fuzz target `graph_file` (fuzz/corpus/graph_file/tiny.graph):
/// a few nodes of different ops, with metadata, in the current file version, so that the
/// fuzzer starts past the header check. When the format changes this fails; rewrite the seed
/// with `TANDEM_WRITE_FUZZ_SEED=1 cargo test -p tandem-runtime --test graph_file fuzz_seed`.
#[test]
fn the_fuzz_seed_is_a_current_graph_file() {
    let mut g = Graph::new("fuzz-seed");
    let f = |s: &[usize]| TensorType::fixed(DType::F32, s);
    let x = g.input("x", TensorType::new(DType::F32, vec![Dim::sym("tokens"), Dim::Fixed(4)]));
    let [w, a, b, bias] =
        [("w", f(&[3, 4])), ("a", f(&[2, 4])), ("b", f(&[3, 2])), ("bias", f(&[3]))].map(|(n, t)| g.weight(n, t));
    let lora = Op::LoraMatMul(LoraMatMul { scale: 2.0, activation: Activation::Gelu });
    let y = g.node1("dense", lora, &[x, w, a, b, bias]).unwrap();
    let not = g.node1("not", Op::SoftLogic { connective: Connective::Not, logic: Logic::Product }, &[y]).unwrap();
    g.output(not, "y");
    g.metadata.insert("tandem.model".into(), "fuzz-seed".into());
    g.validate().unwrap();

    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/graph_file/tiny.graph");
    if std::env::var_os("TANDEM_WRITE_FUZZ_SEED").is_some() {
        write_graph_file(&g, &seed).unwrap();
    }
    let path = tempdir().join("seed.tgraph");
    write_graph_file(&g, &path).unwrap();
    let want = std::fs::read(&path).unwrap();
    assert!(std::fs::read(&seed).unwrap() == want, "{} is stale: rewrite it (see this test)", seed.display());
    assert_eq!(read_graph_file(&seed).unwrap(), g);
}
