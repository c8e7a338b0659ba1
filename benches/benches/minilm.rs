//! MiniLM forward pass (tokenization excluded) at 32 × 128 tokens and 1 × 16 tokens.
//! Needs the model in the cache (`tandem fetch minilm`); says so and exits otherwise.
//! wgpu runs only the small case by default: lavapipe (CI's Vulkan on the CPU) needs minutes
//! for 32 × 128; set TANDEM_BENCH_WGPU_LARGE=1 on a real GPU.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tandem_models::session::{AnySession, BackendChoice};
use tandem_models::tokenizer::{PackedBatch, TokenizedText};
use tandem_runtime::HostTensor;

fn batch(seqs: usize, len: usize) -> PackedBatch {
    // Real token ids of a product title, cycled: [CLS] ... [SEP].
    let title =
        [2047u32, 2770, 6007, 1010, 3756, 3114, 1011, 2185, 2946, 2184, 1012, 1019, 2149, 1010, 2417, 1013, 2317];
    let texts: Vec<TokenizedText> = (0..seqs)
        .map(|s| {
            let mut ids = vec![101u32];
            ids.extend((0..len - 2).map(|i| title[(i + s) % title.len()]));
            ids.push(102);
            TokenizedText { type_ids: vec![0; ids.len()], ids }
        })
        .collect();
    PackedBatch::pack(&texts)
}

fn inputs(session: &AnySession, packed: &PackedBatch) -> Vec<HostTensor> {
    session.graph().inputs.iter().map(|&id| packed.input(&session.graph().value(id).name).unwrap()).collect()
}

fn minilm(c: &mut Criterion) {
    let Ok(dir) = tandem_models::fetch::model_dir(tandem_models::registry::known_model("minilm").unwrap()) else {
        return;
    };
    if !dir.join("model.safetensors").exists() {
        eprintln!("skipping the MiniLM benches: run `tandem fetch minilm` first");
        return;
    }
    let large_on_wgpu = std::env::var_os("TANDEM_BENCH_WGPU_LARGE").is_some();
    for (backend, shapes) in [
        (BackendChoice::Cpu, vec![(32, 128), (1, 16)]),
        (BackendChoice::Wgpu, if large_on_wgpu { vec![(32, 128), (1, 16)] } else { vec![(1, 16)] }),
    ] {
        let model = tandem_models::bert::load_dir(&dir).expect("model loads");
        let session = match AnySession::new(backend, model.graph, &model.weights) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("skipping MiniLM on {backend:?}: {e}");
                continue;
            }
        };
        let mut group = c.benchmark_group(format!("minilm/{}", session.backend_name()));
        group.sample_size(10);
        for (seqs, len) in shapes {
            let packed = batch(seqs, len);
            let inputs = inputs(&session, &packed);
            group.throughput(Throughput::Elements((seqs * len) as u64)); // tokens
            group.bench_function(format!("{seqs}x{len}"), |b| b.iter(|| session.run_blocking(&inputs).unwrap()));
        }
        group.finish();
    }
}

criterion_group!(benches, minilm);
criterion_main!(benches);
