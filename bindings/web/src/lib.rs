//! tandem in the browser: the `Tandem` class of `tandem_web.js` (wasm-bindgen, `--target web`).
//!
//! One `Tandem` opens one backend (WebGPU when the browser offers a hardware adapter, else the CPU
//! compiled to wasm with SIMD) and runs the text model (a sentence-transformers BERT such as
//! all-MiniLM-L6-v2), the image model (torchvision's MobileNetV2) and a GGUF decoder
//! (SmolLM2, Qwen2.5: [`generate`]) on it. Everything that can
//! wait is a promise; every failure rejects with a `TandemError` (see [`error`] and the codes in
//! [`code`]). Downloads are kept in Cache Storage ([`fetch`]). On the CPU, `threads` embeds
//! batches on a pool of Web Workers ([`pool`]).

mod adapter;
mod fetch;
mod generate;
mod pool;
mod relevance;
mod types;

use std::cell::RefCell;
use std::fmt::Display;
use std::rc::Rc;

use js_sys::{Array, Float32Array, Object, Reflect, Uint8Array};
use tandem_models::Embedder;
use tandem_models::bert::SentenceHead;
use tandem_models::session::{BackendChoice, Device};
use tandem_models::vision::decode::DecodeError;
use tandem_models::vision::mobilenet::ImageClassifier;
use tandem_models::vision::preprocess::imagenet_input;
use tandem_models::vision::product_category;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

pub use types::{ClassScoreList, ImageModelSource, TandemOptions, TextList, TextModelSource, VectorList};

/// The `code` of every `TandemError`.
pub mod code {
    /// Not a PNG or JPEG, or a corrupt one.
    pub const BAD_IMAGE: &str = "bad_image";
    /// Over [`super::MAX_IMAGE_BYTES`], or more pixels than the decoder allows.
    pub const IMAGE_TOO_LARGE: &str = "image_too_large";
    /// An HTTP error status or a network error; the message names the URL.
    pub const DOWNLOAD_FAILED: &str = "download_failed";
    /// A model file that does not parse, or does not fit the model.
    pub const BAD_MODEL: &str = "bad_model";
    /// A model method called before its model was loaded.
    pub const NOT_LOADED: &str = "not_loaded";
    /// The GPU device was lost (driver reset, tab in the background too long, ...): create a
    /// new `Tandem`.
    pub const DEVICE_LOST: &str = "device_lost";
    /// An argument of the wrong type or out of range.
    pub const BAD_INPUT: &str = "bad_input";
    /// `backend: "webgpu"` asked for, and the browser gives no WebGPU adapter or device.
    pub const WEBGPU_UNAVAILABLE: &str = "webgpu_unavailable";
    /// Anything else (a backend error).
    pub const INTERNAL: &str = "internal";
}

/// Largest encoded image `classify` takes.
pub const MAX_IMAGE_BYTES: usize = 40 << 20;
/// Most texts per `embed` call.
pub const MAX_TEXTS: usize = 1024;
/// Longest text, in UTF-8 bytes. Tokens are truncated at the model's limit anyway; this bounds
/// the work of tokenizing before the truncation.
pub const MAX_TEXT_BYTES: usize = 1 << 20;

/// A JS `Error` with `name` "TandemError" and a string `code` (one of [`code`]).
pub(crate) fn error(code: &str, message: impl Display) -> JsValue {
    let e = js_sys::Error::new(&message.to_string());
    e.set_name("TandemError");
    // Setting a property on a fresh Error object cannot fail.
    let _ = Reflect::set(&e, &JsValue::from_str("code"), &JsValue::from_str(code));
    e.into()
}

/// Runs a model failure through the device: a lost GPU device says so, whatever the failing
/// call reported.
fn model_error(device: &Device, e: anyhow::Error) -> JsValue {
    match device.lost() {
        Some(lost) => error(code::DEVICE_LOST, format!("the GPU device was lost: {lost}")),
        None => error(code::INTERNAL, format!("{e:#}")),
    }
}

/// A model runtime in the page: one backend and the models loaded on it.
#[wasm_bindgen]
pub struct Tandem {
    pub(crate) device: Device,
    /// Why auto did not take the browser's adapter, when it skipped a software one (the
    /// device's own reason is empty then: the CPU was opened by name).
    reason: String,
    pub(crate) text: RefCell<Option<Rc<Embedder>>>,
    pub(crate) image: RefCell<Option<Rc<ImageClassifier>>>,
    /// EBRM over the text model, once `loadRelevanceData` has run (see relevance.rs).
    pub(crate) relevance: RefCell<Option<Rc<relevance::Engine>>>,
    /// The decoder `generate` runs, once `loadLanguageModel` has run (see generate.rs).
    pub(crate) llm: RefCell<Option<Rc<tandem_models::llm::Llm>>>,
    /// The workers that embed with this instance, when `threads` asked for more than one on
    /// the CPU backend (see pool.rs).
    pool: Option<pool::Pool>,
}

#[wasm_bindgen]
impl Tandem {
    /// Opens a backend: `{ backend: "auto" | "webgpu" | "cpu" }`, auto by default (WebGPU
    /// when the browser gives a hardware adapter, else the CPU; a software adapter such as
    /// SwiftShader only when "webgpu" is asked for). `threads` (1 by default, a number up to
    /// 16, or "max": the browser's `navigator.hardwareConcurrency`) embeds batches on that
    /// many threads when the backend is the CPU: this one and Web Workers.
    pub async fn create(options: Option<TandemOptions>) -> Result<Tandem, JsValue> {
        console_error_panic_hook::set_once();
        let options: JsValue = options.map(Into::into).unwrap_or(JsValue::UNDEFINED);
        let threads = threads_option(&options)?;
        let choice = match optional_string(&options, "backend")?.as_deref() {
            None | Some("auto") => BackendChoice::Auto,
            Some("webgpu") => BackendChoice::Wgpu,
            Some("cpu") => BackendChoice::Cpu,
            Some(other) => {
                return Err(error(
                    code::BAD_INPUT,
                    format!("backend '{other}' is not one of \"auto\", \"webgpu\", \"cpu\""),
                ));
            }
        };
        // A software adapter (SwiftShader, WARP, llvmpipe) runs WebGPU on the CPU through an
        // emulated GPU, tens of times slower than the wasm CPU backend in the same page: auto
        // takes the CPU then, and only an explicit "webgpu" gets such an adapter.
        let (choice, reason) = match choice {
            BackendChoice::Auto => match adapter::software().await {
                Some(adapter) => (
                    BackendChoice::Cpu,
                    format!(
                        "auto: the browser's WebGPU adapter ({adapter}) is a software one, slower than the CPU; \
                         ask for backend \"webgpu\" to use it anyway"
                    ),
                ),
                None => (BackendChoice::Auto, String::new()),
            },
            other => (other, String::new()),
        };
        // Only an explicit "webgpu" can fail to open: auto and "cpu" end on the CPU.
        let device = Device::open(choice)
            .await
            .map_err(|e| error(code::WEBGPU_UNAVAILABLE, format!("WebGPU is not available: {e:#}")))?;
        // The workers run the CPU backend: on WebGPU a batch already runs on the GPU, and each
        // worker would open a device of its own.
        let pool = match threads {
            n if n > 1 && device.backend_name() == "cpu" => Some(pool::Pool::start(n - 1).await?),
            _ => None,
        };
        Ok(Tandem {
            device,
            reason,
            text: RefCell::new(None),
            image: RefCell::new(None),
            relevance: RefCell::new(None),
            llm: RefCell::new(None),
            pool,
        })
    }

    /// Threads `embed` runs on: 1, or this instance and its workers still running (a worker
    /// that failed for good leaves the pool).
    #[wasm_bindgen(getter)]
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, pool::Pool::threads)
    }

    /// "webgpu" or "cpu".
    #[wasm_bindgen(getter, unchecked_return_type = "\"webgpu\" | \"cpu\"")]
    pub fn backend(&self) -> String {
        match self.device.backend_name() {
            "wgpu" => "webgpu".into(),
            other => other.into(),
        }
    }

    /// The WebGPU adapter's description, or why auto fell back to the CPU.
    #[wasm_bindgen(getter, js_name = backendInfo)]
    pub fn backend_info(&self) -> String {
        let reason = if self.reason.is_empty() { self.device.reason() } else { &self.reason };
        match (self.device.backend_name(), reason) {
            ("cpu", "") => "CPU (WebAssembly, SIMD128), as asked".into(),
            ("cpu", reason) => format!("CPU (WebAssembly, SIMD128): {reason}"),
            _ => format!("WebGPU: {}", self.device.description()),
        }
    }

    /// The crate's version.
    #[wasm_bindgen(getter)]
    pub fn version() -> String {
        env!("CARGO_PKG_VERSION").into()
    }

    /// Loads a sentence-transformers BERT (mean pooling, normalized, 256 tokens at most:
    /// all-MiniLM-L6-v2's settings): `{ baseUrl }` fetches `config.json`, `tokenizer.json`
    /// and `model.safetensors` under it; `{ config, tokenizer, weights }` takes their bytes.
    #[wasm_bindgen(js_name = loadTextModel)]
    pub async fn load_text_model(&self, source: TextModelSource) -> Result<(), JsValue> {
        let source: JsValue = source.into();
        let (name, config, tokenizer, weights) = match optional_string(&source, "baseUrl")? {
            Some(base) => {
                let base = if base.ends_with('/') { base } else { format!("{base}/") };
                let config = fetch::bytes(&format!("{base}config.json")).await?;
                let tokenizer = fetch::bytes(&format!("{base}tokenizer.json")).await?;
                let weights = fetch::bytes(&format!("{base}model.safetensors")).await?;
                (base.trim_end_matches('/').to_string(), config, tokenizer, weights)
            }
            None => (
                "text model".to_string(),
                required_bytes(&source, "config")?,
                required_bytes(&source, "tokenizer")?,
                required_bytes(&source, "weights")?,
            ),
        };
        // The workers' copy is taken before the weights move into this instance's model; they
        // load it once this instance has, so a bad file fails here once and changes nothing.
        let copy = self.pool.as_ref().map(|_| pool::model_source(&config, &tokenizer, &weights));
        let embedder = Embedder::from_bytes(&name, &config, &tokenizer, weights, SentenceHead::MINILM, &self.device)
            .map_err(|e| error(code::BAD_MODEL, format!("{e:#}")))?;
        self.text.replace(Some(Rc::new(embedder)));
        match (&self.pool, copy) {
            (Some(pool), Some(copy)) => pool.load_text_model(&copy).await,
            _ => Ok(()),
        }
    }

    /// Loads torchvision's MobileNetV2 checkpoint (`mobilenet_v2-b0353104.pth`): `{ url }`
    /// fetches it, `{ bytes }` takes its bytes.
    #[wasm_bindgen(js_name = loadImageModel)]
    pub async fn load_image_model(&self, source: ImageModelSource) -> Result<(), JsValue> {
        let (name, bytes) = model_file(&source.into(), "image model").await?;
        let classifier = ImageClassifier::from_bytes(&bytes, &name, &self.device)
            .map_err(|e| error(code::BAD_MODEL, format!("{e:#}")))?;
        self.image.replace(Some(Rc::new(classifier)));
        Ok(())
    }

    /// One L2-normalized vector per text, in order.
    pub async fn embed(&self, texts: TextList) -> Result<VectorList, JsValue> {
        let texts = string_list(&texts.into())?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = self.embed_texts(&refs).await?;
        let out = Array::new();
        for v in vectors {
            out.push(&Float32Array::from(v.as_slice()));
        }
        Ok(out.unchecked_into())
    }

    /// The cosine similarity of two texts' embeddings.
    pub async fn similarity(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string")] a: JsValue,
        #[wasm_bindgen(unchecked_param_type = "string")] b: JsValue,
    ) -> Result<f64, JsValue> {
        let (a, b) = (text_arg(&a, "the first text")?, text_arg(&b, "the second text")?);
        let v = self.embed_texts(&[&a, &b]).await?;
        Ok(f64::from(tandem_models::cosine(&v[0], &v[1])))
    }

    /// The `k` (default 5) most likely ImageNet classes of a PNG or JPEG photo, best first,
    /// each with its Google product taxonomy path (null when the class is not a product).
    pub async fn classify(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Uint8Array")] image: JsValue,
        k: Option<f64>,
    ) -> Result<ClassScoreList, JsValue> {
        let bytes = image_bytes(&image)?;
        let k = match k {
            None => 5,
            Some(k) if k.fract() == 0.0 && (1.0..=1000.0).contains(&k) => k as usize,
            Some(k) => return Err(error(code::BAD_INPUT, format!("k is {k}, expected a whole number from 1 to 1000"))),
        };
        // The photo first: a bad one is the caller's error whatever is loaded.
        let pixels = imagenet_input(&bytes).map_err(|e| match e {
            DecodeError::TooLarge(_) => error(code::IMAGE_TOO_LARGE, e),
            _ => error(code::BAD_IMAGE, e),
        })?;
        let classifier = self
            .image
            .borrow()
            .clone()
            .ok_or_else(|| error(code::NOT_LOADED, "no image model is loaded: call loadImageModel first"))?;
        let top = classifier.top_of_pixels_async(pixels, k).await.map_err(|e| model_error(&self.device, e))?;
        let out = Array::new();
        for c in top {
            let o = Object::new();
            let category = product_category(c.class).map_or(JsValue::NULL, JsValue::from_str);
            for (key, value) in [
                ("class", JsValue::from(c.class as u32)),
                ("name", JsValue::from_str(c.name)),
                ("probability", JsValue::from(c.probability)),
                ("logit", JsValue::from(c.logit)),
                ("category", category),
            ] {
                Reflect::set(&o, &JsValue::from_str(key), &value)?;
            }
            out.push(&o);
        }
        Ok(out.unchecked_into())
    }
}

impl Tandem {
    /// The embeddings of `texts` with the text model (bounded: at most [`MAX_TEXTS`] texts of
    /// at most [`MAX_TEXT_BYTES`] each).
    pub(crate) async fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, JsValue> {
        if texts.len() > MAX_TEXTS {
            return Err(error(code::BAD_INPUT, format!("{} texts, at most {MAX_TEXTS} per call", texts.len())));
        }
        if let Some((i, t)) = texts.iter().enumerate().find(|(_, t)| t.len() > MAX_TEXT_BYTES) {
            return Err(error(code::BAD_INPUT, format!("text {i} is {} bytes, over {MAX_TEXT_BYTES}", t.len())));
        }
        let embedder = self
            .text
            .borrow()
            .clone()
            .ok_or_else(|| error(code::NOT_LOADED, "no text model is loaded: call loadTextModel first"))?;
        match &self.pool {
            // One text stays here: a worker's round trip would only add to it.
            Some(pool) if texts.len() > 1 && pool.threads() > 1 => pool.embed(&embedder, texts).await,
            _ => embedder.embed_async(texts).await.map_err(|e| model_error(&self.device, e)),
        }
    }

    /// For the tests of the pool's error paths: sends worker `i` (from 0) a request that
    /// fails as `kind` says ("throw", "trap" or "uncaught"; see worker.js), posted at once.
    #[doc(hidden)]
    pub fn fault_worker(&self, i: usize, kind: &str) -> impl Future<Output = Result<JsValue, JsValue>> + use<> {
        let call = self.pool.as_ref().and_then(|pool| pool.fault(i, kind));
        async move {
            match call {
                Some(call) => call.await,
                None => Err(error(code::BAD_INPUT, "no such worker")),
            }
        }
    }
}

/// A one-file model's name and bytes: `{ url }` fetched (through Cache Storage), or
/// `{ bytes, name? }` as given (named `default_name` in errors unless `name` says otherwise).
async fn model_file(source: &JsValue, default_name: &str) -> Result<(String, Vec<u8>), JsValue> {
    match optional_string(source, "url")? {
        Some(url) => {
            let bytes = fetch::bytes(&url).await?;
            Ok((url, bytes))
        }
        None => {
            let name = optional_string(source, "name")?.unwrap_or_else(|| default_name.into());
            Ok((name, required_bytes(source, "bytes")?))
        }
    }
}

/// `object[key]`; None when the object or the key is absent (undefined or null).
fn field(object: &JsValue, key: &str) -> Result<Option<JsValue>, JsValue> {
    if object.is_undefined() || object.is_null() {
        return Ok(None);
    }
    if !object.is_object() {
        return Err(error(code::BAD_INPUT, "the options must be an object"));
    }
    let value = Reflect::get(object, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED);
    Ok((!value.is_undefined() && !value.is_null()).then_some(value))
}

/// The `threads` option: 1 when absent, a whole number from 1 to [`pool::MAX_THREADS`], or
/// "max": the browser's `navigator.hardwareConcurrency` (clamped to that range).
fn threads_option(options: &JsValue) -> Result<usize, JsValue> {
    let Some(value) = field(options, "threads")? else { return Ok(1) };
    if value.as_string().as_deref() == Some("max") {
        let navigator = Reflect::get(&js_sys::global(), &"navigator".into()).unwrap_or(JsValue::UNDEFINED);
        let cores = Reflect::get(&navigator, &"hardwareConcurrency".into()).ok().and_then(|n| n.as_f64());
        return Ok((cores.unwrap_or(1.0) as usize).clamp(1, pool::MAX_THREADS));
    }
    match value.as_f64() {
        Some(n) if n.fract() == 0.0 && (1.0..=pool::MAX_THREADS as f64).contains(&n) => Ok(n as usize),
        _ => {
            let shown = value.as_f64().map(|n| n.to_string()).or_else(|| value.as_string().map(|s| format!("\"{s}\"")));
            let shown = shown.unwrap_or_else(|| "not a number".into());
            Err(error(
                code::BAD_INPUT,
                format!("threads is {shown}, expected a whole number from 1 to {} or \"max\"", pool::MAX_THREADS),
            ))
        }
    }
}

/// `object[key]` as a string; None when the object or the key is absent (undefined or null).
fn optional_string(object: &JsValue, key: &str) -> Result<Option<String>, JsValue> {
    match field(object, key)? {
        None => Ok(None),
        Some(v) => v.as_string().map(Some).ok_or_else(|| error(code::BAD_INPUT, format!("'{key}' must be a string"))),
    }
}

/// `object[key]` as bytes (a Uint8Array or an ArrayBuffer).
fn required_bytes(object: &JsValue, key: &str) -> Result<Vec<u8>, JsValue> {
    if !object.is_object() {
        return Err(error(code::BAD_INPUT, "the options must be an object"));
    }
    let value = Reflect::get(object, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED);
    bytes_of(&value).ok_or_else(|| error(code::BAD_INPUT, format!("'{key}' must be a Uint8Array")))
}

fn bytes_of(value: &JsValue) -> Option<Vec<u8>> {
    if let Some(array) = value.dyn_ref::<Uint8Array>() {
        return Some(array.to_vec());
    }
    value.dyn_ref::<js_sys::ArrayBuffer>().map(|buffer| Uint8Array::new(buffer).to_vec())
}

/// The image argument of `classify`: bounded before it is copied into wasm memory.
fn image_bytes(image: &JsValue) -> Result<Vec<u8>, JsValue> {
    let length = if let Some(array) = image.dyn_ref::<Uint8Array>() {
        array.length() as usize
    } else if let Some(buffer) = image.dyn_ref::<js_sys::ArrayBuffer>() {
        buffer.byte_length() as usize
    } else {
        return Err(error(code::BAD_INPUT, "the image must be a Uint8Array of PNG or JPEG bytes"));
    };
    if length > MAX_IMAGE_BYTES {
        return Err(error(code::IMAGE_TOO_LARGE, format!("the image is {length} bytes, over {MAX_IMAGE_BYTES}")));
    }
    Ok(bytes_of(image).expect("checked above"))
}

fn text_arg(value: &JsValue, what: &str) -> Result<String, JsValue> {
    value.as_string().ok_or_else(|| error(code::BAD_INPUT, format!("{what} must be a string")))
}

/// An array of strings.
fn string_list(value: &JsValue) -> Result<Vec<String>, JsValue> {
    if !Array::is_array(value) {
        return Err(error(code::BAD_INPUT, "texts must be an array of strings"));
    }
    let array: &Array = value.unchecked_ref();
    if array.length() as usize > MAX_TEXTS {
        return Err(error(code::BAD_INPUT, format!("{} texts, at most {MAX_TEXTS} per call", array.length())));
    }
    array
        .iter()
        .enumerate()
        .map(|(i, t)| t.as_string().ok_or_else(|| error(code::BAD_INPUT, format!("texts[{i}] is not a string"))))
        .collect()
}
