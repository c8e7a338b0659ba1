//! The bindings in headless Chromium with WebGPU on SwiftShader (see test.sh and
//! webdriver.json). Small seeded models only: the tiny BERT of tests/reference and a conv graph
//! built here; nothing is downloaded.

#![cfg(target_arch = "wasm32")]

use js_sys::{Array, Float32Array, Object, Reflect, Uint8Array};
use std::path::Path;
use tandem_models::cosine;
use tandem_models::session::{AnySession, BackendChoice, Device};
use tandem_runtime::graph::Weights;
use tandem_runtime::ops::{Activation, Conv2d, MatMul};
use tandem_runtime::{DType, Dim, Graph, HostTensor, Op, TensorType};
use tandem_web::{ImageModelSource, Tandem, TandemOptions, TextList, TextModelSource};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const TINY_CONFIG: &[u8] = include_bytes!("../../../tests/reference/tiny_cross_encoder/config.json");
const TINY_TOKENIZER: &[u8] = include_bytes!("../../../tests/reference/tiny_cross_encoder/tokenizer.json");
const TINY_WEIGHTS: &[u8] = include_bytes!("../../../tests/reference/tiny_cross_encoder/model.safetensors");
const SMALL_PNG: &[u8] = include_bytes!("../../../tests/reference/png_formats/grey8.png");

const TEXTS: &[&str] = &["red running shoes", "blue phone case", "a", "shoes for running in the rain, red"];

fn object(fields: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (key, value) in fields {
        Reflect::set(&o, &JsValue::from_str(key), value).unwrap();
    }
    o.into()
}

fn bytes(b: &[u8]) -> JsValue {
    Uint8Array::from(b).into()
}

async fn tandem(backend: &str) -> Tandem {
    let options: TandemOptions = object(&[("backend", backend.into())]).unchecked_into();
    Tandem::create(Some(options)).await.unwrap_or_else(|e| panic!("create({backend}): {e:?}"))
}

async fn with_tiny_text_model(backend: &str) -> Tandem {
    with_tiny_text_model_on(tandem(backend).await).await
}

async fn with_tiny_text_model_on(t: Tandem) -> Tandem {
    let source = object(&[
        ("config", bytes(TINY_CONFIG)),
        ("tokenizer", bytes(TINY_TOKENIZER)),
        ("weights", bytes(TINY_WEIGHTS)),
    ]);
    t.load_text_model(source.unchecked_into()).await.unwrap();
    t
}

fn texts(list: &[&str]) -> TextList {
    list.iter().map(|t| JsValue::from_str(t)).collect::<Array>().unchecked_into()
}

/// The `code` of a rejected call's TandemError.
fn code_of(result: Result<impl Sized, JsValue>) -> String {
    let Err(e) = result else { panic!("expected a TandemError, got a result") };
    assert_eq!(Reflect::get(&e, &"name".into()).unwrap().as_string().as_deref(), Some("TandemError"));
    assert!(e.is_instance_of::<js_sys::Error>());
    Reflect::get(&e, &"code".into()).unwrap().as_string().expect("a string code")
}

async fn embed(t: &Tandem, list: &[&str]) -> Vec<Vec<f32>> {
    let out: JsValue = t.embed(texts(list)).await.unwrap().into();
    Array::from(&out).iter().map(|v| v.unchecked_into::<Float32Array>().to_vec()).collect()
}

fn assert_close(a: &[f32], b: &[f32], tolerance: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(worst <= tolerance, "{what}: differs by {worst} (tolerance {tolerance})");
}

/// This Chromium's only WebGPU adapter is SwiftShader (webdriver.json): auto skips it for the
/// CPU and says why, while an explicit "webgpu" still opens it.
#[wasm_bindgen_test]
async fn auto_skips_the_software_adapter_that_webgpu_still_gets() {
    let t = tandem("auto").await;
    let info = t.backend_info();
    assert_eq!(t.backend(), "cpu", "backendInfo: {info}");
    assert!(info.contains("software") && info.to_lowercase().contains("swiftshader"), "backendInfo: {info}");
    let gpu = tandem("webgpu").await;
    assert_eq!(gpu.backend(), "webgpu", "backendInfo: {}", gpu.backend_info());
    assert!(gpu.backend_info().starts_with("WebGPU: "), "backendInfo: {}", gpu.backend_info());
    let cpu = tandem("cpu").await;
    assert_eq!(cpu.backend(), "cpu");
    assert!(!Tandem::version().is_empty());
}

#[wasm_bindgen_test]
async fn embeddings_agree_on_webgpu_and_cpu() {
    let gpu = with_tiny_text_model("webgpu").await;
    let cpu = with_tiny_text_model("cpu").await;
    let (a, b) = (embed(&gpu, TEXTS).await, embed(&cpu, TEXTS).await);
    assert_eq!(a.len(), TEXTS.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.len(), 32);
        let norm: f32 = y.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "text {i} is not normalized: {norm}");
        assert_close(x, y, 1e-4, &format!("text {i}"));
    }
    // One text alone embeds as it does in a batch; and similarity is the cosine.
    let alone = embed(&cpu, &TEXTS[1..2]).await;
    assert_close(&alone[0], &b[1], 1e-5, "batched vs alone");
    let s = cpu.similarity(TEXTS[0].into(), TEXTS[1].into()).await.unwrap();
    let dot: f32 = b[0].iter().zip(&b[1]).map(|(x, y)| x * y).sum();
    assert!((s as f32 - dot).abs() < 1e-4, "similarity {s} vs dot {dot}");
    assert!(embed(&gpu, &[]).await.is_empty());
}

/// A MobileNet-shaped conv graph (convolution, depthwise convolution, ReLU6, pooling, a
/// classifier) gives the same numbers on WebGPU and on the CPU.
#[wasm_bindgen_test]
async fn a_conv_graph_agrees_on_webgpu_and_cpu() {
    let mut g = Graph::new("convs");
    let x =
        g.input("x", TensorType::new(DType::F32, vec![Dim::sym("n"), Dim::Fixed(3), Dim::Fixed(17), Dim::Fixed(17)]));
    let mut seed = 7u32;
    let mut numbers = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    let mut tensors = Vec::new();
    let mut weight = |g: &mut Graph, name: &str, shape: &[usize], values: Vec<f32>| {
        tensors.push((name.to_string(), HostTensor::f32(shape.to_vec(), values).unwrap()));
        g.weight(name, TensorType::fixed(DType::F32, shape))
    };
    let (w0, b0) = (weight(&mut g, "c0.w", &[8, 3, 3, 3], numbers(216)), weight(&mut g, "c0.b", &[8], numbers(8)));
    let (w1, b1) = (weight(&mut g, "c1.w", &[8, 1, 3, 3], numbers(72)), weight(&mut g, "c1.b", &[8], numbers(8)));
    let (w2, b2) = (weight(&mut g, "fc.w", &[5, 8], numbers(40)), weight(&mut g, "fc.b", &[5], numbers(5)));
    let conv = |stride, groups| Op::Conv2d(Conv2d { stride: [stride; 2], padding: [1, 1], groups, clamp: None });
    let y = g.node1("c0", conv(2, 1), &[x, w0, b0]).unwrap();
    let y = g.node1("c0.relu6", Op::Clamp { min: 0.0, max: 6.0 }, &[y]).unwrap();
    let y = g.node1("c1", conv(1, 8), &[y, w1, b1]).unwrap();
    let y = g.node1("pool", Op::GlobalAvgPool, &[y]).unwrap();
    let y = g.node1("fc", Op::MatMul(MatMul { trans_b: true, activation: Activation::None }), &[y, w2, b2]).unwrap();
    g.output(y, "logits");
    let weights = Weights::from_tensors(Path::new("convs"), &tensors).unwrap();
    let input = HostTensor::f32(vec![2, 3, 17, 17], numbers(2 * 3 * 17 * 17)).unwrap();

    let mut outputs = Vec::new();
    for choice in [BackendChoice::Wgpu, BackendChoice::Cpu] {
        let device = Device::open(choice).await.unwrap();
        let session = AnySession::on(&device, g.clone(), &weights).unwrap();
        let out = session.run(std::slice::from_ref(&input)).await.unwrap();
        assert_eq!(out[0].shape, [2, 5]);
        outputs.push(out[0].as_f32().unwrap().to_vec());
    }
    assert_close(&outputs[0], &outputs[1], 1e-4, "logits");
}

#[wasm_bindgen_test]
async fn bad_images_and_missing_models_are_told_apart() {
    let t = tandem("cpu").await;
    assert_eq!(code_of(t.classify(bytes(b"GIF89a not a photo"), None).await), "bad_image");
    assert_eq!(code_of(t.classify(bytes(b"\x89PNG\r\n\x1a\n truncated"), None).await), "bad_image");
    assert_eq!(code_of(t.classify(JsValue::from_str("photo.png"), None).await), "bad_input");
    assert_eq!(code_of(t.classify(bytes(SMALL_PNG), Some(0.0)).await), "bad_input");
    // A real photo, but no model yet.
    assert_eq!(code_of(t.classify(bytes(SMALL_PNG), None).await), "not_loaded");
    assert_eq!(code_of(t.embed(texts(&["x"])).await), "not_loaded");
    assert_eq!(code_of(t.embed(JsValue::from(3).unchecked_into()).await), "bad_input");
    let bad =
        object(&[("config", bytes(b"{}")), ("tokenizer", bytes(TINY_TOKENIZER)), ("weights", bytes(TINY_WEIGHTS))]);
    assert_eq!(code_of(t.load_text_model(bad.unchecked_into()).await), "bad_model");
    let bad = object(&[("bytes", bytes(b"not a checkpoint"))]);
    assert_eq!(code_of(t.load_image_model(bad.unchecked_into::<ImageModelSource>()).await), "bad_model");
    let options: TandemOptions = object(&[("backend", "tpu".into())]).unchecked_into();
    assert_eq!(code_of(Tandem::create(Some(options)).await), "bad_input");
}

#[wasm_bindgen_test]
async fn a_missing_file_fails_the_download() {
    let t = tandem("cpu").await;
    let source: TextModelSource = object(&[("baseUrl", "/no/such/model/".into())]).unchecked_into();
    let e = t.load_text_model(source).await.unwrap_err();
    let message = Reflect::get(&e, &"message".into()).unwrap().as_string().unwrap();
    assert!(message.contains("/no/such/model/config.json"), "{message}");
    assert_eq!(code_of(Err::<(), _>(e)), "download_failed");
    let source = object(&[("url", "/no/such/mobilenet_v2.pth".into())]);
    assert_eq!(code_of(t.load_image_model(source.unchecked_into()).await), "download_failed");
}

/// `Tandem.create({ backend: "cpu", threads })`.
async fn on_threads(threads: JsValue) -> Result<Tandem, JsValue> {
    Tandem::create(Some(object(&[("backend", "cpu".into()), ("threads", threads)]).unchecked_into())).await
}

/// Texts of uneven lengths (the tiny model's limit cuts the longest), so that the shares
/// differ in size.
const UNEVEN: &[&str] = &[
    "red running shoes",
    "a",
    "shoes for running in the rain, red, with a sole that grips on wet stone and mud, size 44, \
     waterproof, breathable, light, and made to last through a thousand kilometres of trails",
    "",
    "blue phone case",
    "espresso coffee beans, dark roast, 1 kg bag, whole bean, from a single farm",
    "x y z",
];

fn assert_same_vectors(pool: &[Vec<f32>], one: &[Vec<f32>], what: &str) {
    assert_eq!(pool.len(), one.len(), "{what}: count");
    for (i, (p, o)) in pool.iter().zip(one).enumerate() {
        let c = cosine(p, o);
        assert!(c >= 0.99999, "{what}: text {i} has cosine {c} with the single instance's");
    }
}

/// A pool of two (this instance and one worker) gives the single instance's embeddings, in
/// order, for batches of 1, 3 and 7 texts of uneven lengths; bad `threads` are refused.
#[wasm_bindgen_test]
async fn a_pool_of_two_embeds_like_one_instance() {
    let one = with_tiny_text_model("cpu").await;
    let two = with_tiny_text_model_on(on_threads(2.into()).await.unwrap()).await;
    assert_eq!((one.threads(), two.threads()), (1, 2));
    for n in [1, 3, 7] {
        let (a, b) = (embed(&two, &UNEVEN[..n]).await, embed(&one, &UNEVEN[..n]).await);
        assert_same_vectors(&a, &b, &format!("{n} texts"));
    }
    // Reversed, the long text lands in another share; a second call reuses the workers.
    let reversed: Vec<&str> = UNEVEN.iter().rev().copied().collect();
    assert_same_vectors(&embed(&two, &reversed).await, &embed(&one, &reversed).await, "reversed");
    let s = two.similarity(UNEVEN[0].into(), UNEVEN[4].into()).await.unwrap();
    let e = embed(&one, &[UNEVEN[0], UNEVEN[4]]).await;
    assert!((s as f32 - cosine(&e[0], &e[1])).abs() < 1e-5, "similarity {s}");
    assert!(embed(&two, &[]).await.is_empty());

    let max = on_threads("max".into()).await.unwrap();
    let cores = Reflect::get(&js_sys::global(), &"navigator".into())
        .and_then(|n| Reflect::get(&n, &"hardwareConcurrency".into()))
        .unwrap()
        .as_f64()
        .unwrap() as usize;
    assert_eq!(max.threads(), cores.clamp(1, 16));
    for bad in [JsValue::from(0), JsValue::from(1.5), JsValue::from(17), "many".into()] {
        assert_eq!(code_of(on_threads(bad).await), "bad_input");
    }
    // WebGPU takes no workers.
    let gpu = Tandem::create(Some(object(&[("backend", "webgpu".into()), ("threads", 2.into())]).unchecked_into()));
    assert_eq!(gpu.await.unwrap().threads(), 1);
}

/// A worker's error rejects the call with the worker's message; a worker that fails for good
/// (a trap, an uncaught error) rejects what it owed, leaves the pool, and the rest go on.
#[wasm_bindgen_test]
async fn a_worker_error_rejects_and_a_dead_worker_leaves_the_pool() {
    let one = with_tiny_text_model("cpu").await;
    let t = with_tiny_text_model_on(on_threads(3.into()).await.unwrap()).await;
    let message = |e: &JsValue| Reflect::get(e, &"message".into()).unwrap().as_string().unwrap();

    let e = t.fault_worker(0, "throw").await.unwrap_err();
    assert!(message(&e).contains("worker 1: an error asked for by a test"), "{}", message(&e));
    assert_eq!(code_of(Err::<(), _>(e)), "internal");
    assert_eq!(t.threads(), 3, "an error answered is not a death");

    // A trap ends worker 1; the embed queued behind it there is rejected, not left waiting.
    let trap = t.fault_worker(0, "trap");
    let during = t.embed(texts(UNEVEN)).await;
    assert!(message(&trap.await.unwrap_err()).contains("unreachable (a trap asked for by a test)"));
    let e = during.err().expect("the embed worker 1 owed is rejected");
    assert!(message(&e).contains("worker 1 died"), "{}", message(&e));
    assert_eq!(t.threads(), 2);
    assert_same_vectors(&embed(&t, UNEVEN).await, &embed(&one, UNEVEN).await, "on 2 threads");

    // An uncaught error gets no answer: the worker's error event rejects the call.
    let e = t.fault_worker(1, "uncaught").await.unwrap_err();
    assert!(message(&e).contains("worker 2 died") && message(&e).contains("uncaught error"), "{}", message(&e));
    assert_eq!(t.threads(), 1);
    let e = t.fault_worker(1, "throw").await.unwrap_err();
    assert!(message(&e).contains("worker 2 died"), "{}", message(&e));
    assert_same_vectors(&embed(&t, UNEVEN).await, &embed(&one, UNEVEN).await, "on 1 thread");
}

/// A taxonomy embedding file as the server publishes it (`TDMTAX01`, paths, dim, floats),
/// with seeded unit vectors of the model's width: EBRM's category search only needs vectors.
fn taxonomy_file(dim: usize) -> Vec<u8> {
    let count = tandem_ebrm::entities::taxonomy::candidates().len();
    let mut out = b"TDMTAX01".to_vec();
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&(dim as u32).to_le_bytes());
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..count {
        let v: Vec<f32> = (0..dim)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().for_each(|x| out.extend_from_slice(&(x / norm).to_le_bytes()));
    }
    out
}

const BRANDS: &[u8] = br#"{"version":"test","brands":[{"name":"Nike"},{"name":"Adidas"}]}"#;

fn items(list: &[(&str, Option<&str>)]) -> JsValue {
    list.iter()
        .map(|(title, brand)| {
            let mut fields = vec![("title", JsValue::from_str(title))];
            if let Some(b) = brand {
                fields.push(("brand", JsValue::from_str(b)));
            }
            object(&fields)
        })
        .collect::<Array>()
        .into()
}

fn get(v: &JsValue, path: &[&str]) -> JsValue {
    path.iter().fold(v.clone(), |v, key| Reflect::get(&v, &JsValue::from_str(key)).unwrap())
}

fn scores(answer: &JsValue) -> Vec<f64> {
    Array::from(&get(answer, &["results"])).iter().map(|r| get(&r, &["score"]).as_f64().unwrap()).collect()
}

/// EBRM in the page: the engine encodes through the async model (WebGPU here) in rounds, then
/// answers from its caches, the soft-logic aggregate run on the page's backend (every family);
/// answers agree with the CPU's; bad calls get typed errors.
#[wasm_bindgen_test]
async fn relevance_runs_in_the_page_on_webgpu_like_on_the_cpu() {
    let mut answers = Vec::new();
    for (backend, aggregated_on) in [("webgpu", "wgpu"), ("cpu", "cpu")] {
        let t = with_tiny_text_model(backend).await;
        let query = JsValue::from_str("nike running shoes");
        let two =
            items(&[("Nike Pegasus 40 running shoes", None), ("Adidas Ultraboost running shoes", Some("Adidas"))]);
        assert_eq!(code_of(t.relevance(query.clone(), two.clone(), JsValue::UNDEFINED).await), "not_loaded");
        let dim = embed(&t, &["x"]).await[0].len();
        let wrong = object(&[("brands", bytes(BRANDS)), ("taxonomy", bytes(&taxonomy_file(dim + 1)))]);
        assert_eq!(code_of(t.load_relevance_data(wrong).await), "bad_model");
        let bad_brands = object(&[("brands", bytes(b"[1, 2]")), ("taxonomy", bytes(&taxonomy_file(dim)))]);
        assert_eq!(code_of(t.load_relevance_data(bad_brands).await), "bad_model");
        t.load_relevance_data(object(&[("brands", bytes(BRANDS)), ("taxonomy", bytes(&taxonomy_file(dim)))]))
            .await
            .unwrap();

        let options = object(&[("allEntities", true.into())]);
        let cold = t.relevance(query.clone(), two.clone(), options.clone()).await.unwrap();
        let rounds = get(&cold, &["rounds"]).as_f64().unwrap();
        assert!((1.0..=8.0).contains(&rounds), "{rounds} rounds cold");
        assert!(get(&cold, &["encoded_texts"]).as_f64().unwrap() > 0.0);
        let results = Array::from(&get(&cold, &["results"]));
        assert_eq!(results.length(), 2);
        for r in results.iter() {
            assert!(get(&r, &["grade"]).is_string(), "a grade");
            assert!(Array::is_array(&get(&r, &["explanation"])), "an explanation");
            assert_eq!(get(&r, &["final_score"]).as_f64(), get(&r, &["score"]).as_f64(), "no rules in the page");
        }
        // The brand list's Nike is found in the first title (EBRM reports the query's
        // constraint, in its normalized lower case).
        let first = results.iter().find(|r| get(r, &["index"]).as_f64() == Some(0.0)).unwrap();
        let brands: Vec<String> = Array::from(&get(&first, &["entities"]))
            .iter()
            .filter(|e| get(e, &["kind"]).as_string().as_deref() == Some("brand"))
            .filter_map(|e| get(&e, &["value"]).as_string())
            .collect();
        assert!(brands.iter().any(|b| b.eq_ignore_ascii_case("nike")), "brand entities of item 0: {brands:?}");

        let warm = t.relevance(query.clone(), two.clone(), options).await.unwrap();
        assert_eq!(get(&warm, &["rounds"]).as_f64(), Some(0.0), "a repeated request encodes nothing");
        assert_eq!(get(&warm, &["encoded_texts"]).as_f64(), Some(0.0));
        assert_eq!(scores(&warm), scores(&cold));
        let mut these = scores(&cold);
        for logic in ["goedel", "lukasiewicz", "product"] {
            let answer = t.relevance(query.clone(), two.clone(), object(&[("logic", logic.into())])).await.unwrap();
            assert_eq!(get(&answer, &["logic"]).as_string().as_deref(), Some(logic));
            assert_eq!(get(&answer, &["aggregated_on"]).as_string().as_deref(), Some(aggregated_on), "{logic}");
            these.extend(scores(&answer));
        }
        assert_eq!(get(&cold, &["aggregated_on"]).as_string().as_deref(), Some(aggregated_on), "on {backend}");
        answers.push(these);

        assert_eq!(code_of(t.relevance(query.clone(), JsValue::from_str("x"), JsValue::UNDEFINED).await), "bad_input");
        assert_eq!(code_of(t.relevance(query.clone(), Array::new().into(), JsValue::UNDEFINED).await), "bad_input");
        let no_title: JsValue = Array::of1(&object(&[("brand", "Nike".into())])).into();
        assert_eq!(code_of(t.relevance(query.clone(), no_title, JsValue::UNDEFINED).await), "bad_input");
        let fuzzy = object(&[("logic", "fuzzy".into())]);
        assert_eq!(code_of(t.relevance(query.clone(), two.clone(), fuzzy).await), "bad_input");
        assert_eq!(code_of(t.relevance(JsValue::from_str("  "), two, JsValue::UNDEFINED).await), "bad_input");
    }
    for (a, b) in answers[0].iter().zip(&answers[1]) {
        assert!((a - b).abs() < 1e-4, "webgpu {:?} vs cpu {:?}", answers[0], answers[1]);
    }
}

/// The tiny llama-architecture GGUF decoder of `tandem_models::testing` (f32 weights,
/// byte-level vocabulary, a ChatML template), as file bytes.
fn tiny_decoder() -> JsValue {
    let (metadata, tensors) = tandem_models::testing::tiny_llama_gguf();
    let file = tandem_runtime::weights::gguf::to_bytes(&metadata, &tensors, 32).unwrap();
    object(&[("bytes", bytes(&file)), ("name", "tiny.gguf".into())])
}

/// `generate` with `options`, collecting what the callback streams.
async fn generate(t: &Tandem, prompt: &str, options: JsValue) -> Result<(JsValue, String), JsValue> {
    let pieces = std::rc::Rc::new(std::cell::RefCell::new(String::new()));
    let sink = pieces.clone();
    let callback = wasm_bindgen::closure::Closure::<dyn FnMut(String)>::new(move |piece: String| {
        assert!(!piece.is_empty(), "the callback gets no empty pieces");
        sink.borrow_mut().push_str(&piece);
    });
    let callback: JsValue = callback.into_js_value();
    let result = t.generate(prompt.into(), Some(options.unchecked_into()), Some(callback.unchecked_into())).await?;
    let streamed = pieces.borrow().clone();
    Ok((result.into(), streamed))
}

fn ids_of(result: &JsValue) -> Vec<u32> {
    Array::from(&get(result, &["ids"])).iter().map(|v| v.as_f64().unwrap() as u32).collect()
}

/// Greedy generation streams the same ids and text on WebGPU as on the CPU; the streamed
/// pieces make up the result's text; a seed repeats its sample.
#[wasm_bindgen_test]
async fn a_decoder_generates_the_same_on_webgpu_and_cpu() {
    let mut greedy = Vec::new();
    for backend in ["webgpu", "cpu"] {
        let t = tandem(backend).await;
        t.load_language_model(tiny_decoder().unchecked_into(), None).await.unwrap();
        let options = object(&[("raw", true.into()), ("maxTokens", 12.into())]);
        let (result, streamed) = generate(&t, "red shoes", options).await.unwrap();
        let ids = ids_of(&result);
        assert!(!ids.is_empty() && ids.len() <= 12, "{backend}: {ids:?}");
        assert_eq!(get(&result, &["promptTokens"]).as_f64(), Some(9.0), "{backend}: one token per byte");
        let finish = get(&result, &["finish"]).as_string().unwrap();
        assert_eq!(finish, if ids.len() < 12 { "eog" } else { "length" }, "{backend}: {ids:?}");
        assert_eq!(get(&result, &["text"]).as_string().unwrap(), streamed, "{backend}: the streamed text");
        greedy.push((ids, streamed));

        // Through the chat template, sampled: the same seed gives the same text.
        let sampled = || object(&[("maxTokens", 8.into()), ("temperature", 0.9.into()), ("seed", 7.into())]);
        let (first, _) = generate(&t, "hi", sampled()).await.unwrap();
        let (again, _) = generate(&t, "hi", sampled()).await.unwrap();
        assert_eq!(ids_of(&first), ids_of(&again), "{backend}: seed 7 twice");
        // "<|im_start|>system\nYou are tiny.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        assert_eq!(get(&first, &["promptTokens"]).as_f64(), Some(44.0), "{backend}: the chat template's prompt");
    }
    assert_eq!(greedy[0], greedy[1], "WebGPU then CPU");
}

/// An AbortSignal stops a generation at the next token; bad calls get typed errors.
#[wasm_bindgen_test]
async fn a_generation_stops_when_aborted_and_bad_calls_are_refused() {
    let t = tandem("cpu").await;
    let options = || object(&[("raw", true.into()), ("maxTokens", 4.into())]);
    assert_eq!(code_of(generate(&t, "x", options()).await), "not_loaded");
    let garbage = object(&[("bytes", bytes(b"GGUF but not really"))]);
    assert_eq!(code_of(t.load_language_model(garbage.unchecked_into(), None).await), "bad_model");
    let missing = object(&[("url", "/no/such/model.gguf".into())]);
    assert_eq!(code_of(t.load_language_model(missing.unchecked_into(), None).await), "download_failed");
    t.load_language_model(tiny_decoder().unchecked_into(), None).await.unwrap();

    let controller = web_sys::AbortController::new().unwrap();
    let signal: JsValue = controller.signal().into();
    let stop = wasm_bindgen::closure::Closure::<dyn FnMut(String)>::new(move |_: String| controller.abort());
    let options = object(&[("raw", true.into()), ("maxTokens", 40.into()), ("signal", signal)]);
    let result: JsValue = t
        .generate("red shoes".into(), Some(options.unchecked_into()), Some(stop.into_js_value().unchecked_into()))
        .await
        .unwrap()
        .into();
    assert_eq!(get(&result, &["finish"]).as_string().as_deref(), Some("aborted"));
    // A piece needs at most 4 byte tokens; the abort takes effect before the next token.
    assert!(ids_of(&result).len() <= 5, "stopped early: {:?}", ids_of(&result));
    // Aborted before it starts: nothing runs.
    let controller = web_sys::AbortController::new().unwrap();
    controller.abort();
    let options = object(&[("raw", true.into()), ("signal", controller.signal().into())]);
    let (result, streamed) = generate(&t, "red shoes", options).await.unwrap();
    assert_eq!(get(&result, &["finish"]).as_string().as_deref(), Some("aborted"));
    assert!(ids_of(&result).is_empty() && streamed.is_empty());

    for (bad, what) in [
        (object(&[("maxTokens", 0.into())]), "maxTokens 0"),
        (object(&[("maxTokens", 1.5.into())]), "maxTokens 1.5"),
        (object(&[("maxTokens", 500.into())]), "maxTokens past the context of 128"),
        (object(&[("temperature", (-1).into())]), "a negative temperature"),
        (object(&[("topP", 0.into())]), "topP 0"),
        (object(&[("seed", (-3).into())]), "a negative seed"),
        (object(&[("raw", true.into()), ("system", "be brief".into())]), "raw with a system message"),
        (object(&[("raw", "yes".into())]), "raw not a boolean"),
        (object(&[("signal", 5.into())]), "a signal that is not an object"),
        (JsValue::from(7), "options not an object"),
    ] {
        let result = t.generate("red shoes".into(), Some(bad.unchecked_into()), None).await;
        assert_eq!(code_of(result), "bad_input", "{what}");
    }
    let long = "x".repeat(120);
    let options = object(&[("raw", true.into()), ("maxTokens", 20.into())]);
    assert_eq!(code_of(generate(&t, &long, options).await), "bad_input", "prompt + maxTokens past the context");
    assert_eq!(code_of(t.generate(JsValue::from(3), None, None).await), "bad_input", "a prompt that is not a string");
    let not_a_function = JsValue::from_str("print");
    let result = t.generate("red shoes".into(), None, Some(not_a_function.unchecked_into())).await;
    assert_eq!(code_of(result), "bad_input", "onText not a function");
}

/// `describe` needs a decoder loaded with a visual adapter, a photo, and the adapter's image
/// encoder; each missing or bad piece gets its own error code. (Its numbers are the native
/// code's, checked against an independent implementation in models/tests/visual_adapter.rs;
/// a browser run of a real one needs the 14 MB MobileNetV2 checkpoint, which the demo's
/// Playwright test serves.)
#[wasm_bindgen_test]
async fn describe_refuses_what_it_cannot_see() {
    let t = tandem("cpu").await;
    let photo: JsValue = bytes(SMALL_PNG);
    assert_eq!(code_of(t.describe(photo.clone(), None, None).await), "not_loaded");
    t.load_language_model(tiny_decoder().unchecked_into(), None).await.unwrap();
    let Err(err) = t.describe(photo.clone(), None, None).await else { panic!("described without an adapter") };
    assert_eq!(code_of(Err::<(), _>(err.clone())), "not_loaded");
    let message = get(&err, &["message"]).as_string().unwrap();
    assert!(message.contains("no visual adapter"), "{message}");
    assert_eq!(code_of(t.describe(bytes(b"not a photo"), None, None).await), "bad_image");
    assert_eq!(code_of(t.describe(JsValue::from(3), None, None).await), "bad_input");
    let raw = object(&[("raw", true.into())]);
    assert_eq!(code_of(t.describe(photo, Some(raw.unchecked_into()), None).await), "bad_input");

    let config = br#"{"encoder": "mobilenetv2", "grid": 2, "rank": 0, "act": "gelu", "base_model": "tiny", "base_sha256": "00"}"#;
    let adapter = object(&[("config", bytes(config)), ("weights", bytes(b"not safetensors"))]);
    let without_encoder = object(&[("visualAdapter", adapter.clone())]);
    let result = t.load_language_model(tiny_decoder().unchecked_into(), Some(without_encoder.unchecked_into())).await;
    assert_eq!(code_of(result), "bad_input", "an adapter without its image model");
    let encoder = object(&[("bytes", bytes(b"not a checkpoint"))]);
    let bad = object(&[("visualAdapter", adapter), ("imageModel", encoder)]);
    let result = t.load_language_model(tiny_decoder().unchecked_into(), Some(bad.unchecked_into())).await;
    assert_eq!(code_of(result), "bad_model", "unreadable adapter files");
}

/// Every conformance case of the op table (tandem-tests) on the browser's WebGPU against the
/// CPU reference: Chromium compiles WGSL with Tint, whose uniformity and constant rules are
/// stricter than naga's (the native wgpu tests), and a kernel it refuses or that hangs under
/// it fails here first.
#[wasm_bindgen_test]
async fn every_op_conformance_case_agrees_on_webgpu_with_the_cpu() {
    use tandem_runtime::backend::Backend;
    use tandem_runtime::backend::cpu::CpuBackend;
    // One device for every case, so that each kernel compiles once.
    let wgpu = tandem_runtime::backend::wgpu::WgpuBackend::new().await.unwrap();
    let (mut failures, mut ran, mut skipped) = (Vec::new(), 0, 0);
    for case in tandem_tests::cases(20_261_203) {
        let dtypes: Vec<DType> = case.inputs.iter().map(|t| t.dtype()).collect();
        if !wgpu.supports_dtypes(&case.op, &dtypes) {
            skipped += 1;
            continue;
        }
        // Named before it runs: a kernel that hangs loses the device, and the log says which.
        web_sys::console::log_1(&format!("case {}", case.name).into());
        let want = tandem_tests::run_case_async(CpuBackend::exact(), &case).await.unwrap();
        match tandem_tests::run_case_async(wgpu.clone(), &case).await {
            Err(e) => failures.push(format!("{}: {e}", case.name)),
            Ok(got) => {
                for (g, w) in got.iter().zip(&want) {
                    if let Err(e) = tandem_tests::compare(g, w, tandem_tests::tolerance(case.op.kind())) {
                        failures.push(format!("{}: {e}", case.name));
                    }
                }
            }
        }
        ran += 1;
    }
    assert!(ran > 100, "{ran} cases ran, {skipped} skipped");
    assert!(failures.is_empty(), "{} of {ran} cases failed:\n{}", failures.len(), failures.join("\n"));
}
