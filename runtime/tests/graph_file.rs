//! The graph file format and validation: a round trip, and each kind of bad graph or weight
//! file giving an error that names the node, value or tensor at fault.

use tandem_runtime::graph::{Weights, load_weights, read_graph_file, write_graph_file};
use tandem_runtime::ops::{Activation, MatMul};
use tandem_runtime::{DType, Dim, Graph, HostTensor, Op, TensorType, ValueId};

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
