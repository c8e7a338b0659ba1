//! Text generation in the page: a GGUF decoder (SmolLM2, Qwen2.5) on the page's backend,
//! streaming each piece of text to a callback as it completes.
//!
//! The loop is `tandem_models::llm::Decoding`'s, one model run per step, with an await
//! between steps: on WebGPU each step waits for its read-back anyway; on the CPU the run is
//! synchronous, so the loop gives the event loop a turn (a zero timeout) after each token,
//! and the page repaints and takes clicks while it generates.

use std::rc::Rc;

use js_sys::{Array, Function, Object, Promise, Reflect};
use tandem_models::llm::sampling::SamplingParams;
use tandem_models::llm::{Decoding, Finish, GenerateRequest, Llm, Message};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::{
    MAX_TEXT_BYTES, Tandem, code, error, fetch, field, image_bytes, model_error, model_file, optional_string,
    required_bytes,
};
use tandem_models::llm::visual::{self, VisualAdapter};
use tandem_models::vision::decode::DecodeError;
use tandem_models::vision::mobilenet_v2_folded_from_bytes;
use tandem_runtime::weights::torch::StateDict;

/// New tokens when `maxTokens` is not given (fewer when the context has less room).
pub const DEFAULT_MAX_TOKENS: usize = 128;

#[wasm_bindgen(typescript_custom_section)]
const GENERATE_TYPES: &str = r#"
/** A GGUF decoder (SmolLM2, Qwen2.5): a URL, or its bytes. */
export type LanguageModelSource = { url: string } | { bytes: Uint8Array; name?: string };
/** A layer-wise visual adapter (docs/visual-adapters.md): its folder's URL (adapter_config.json and adapter.safetensors under it), or the two files' bytes. */
export type VisualAdapterSource = { baseUrl: string } | { config: Uint8Array; weights: Uint8Array; name?: string };
export interface LanguageModelOptions {
  /** Lets the decoder see a product photo (`describe`). Needs `imageModel`. */
  visualAdapter?: VisualAdapterSource;
  /** The adapter's image encoder: torchvision's MobileNetV2 checkpoint (mobilenet_v2-b0353104.pth). */
  imageModel?: ImageModelSource;
}
export interface DescribeOptions extends GenerateOptions {
  /** What to ask about the photo (default "Describe this product."). */
  prompt?: string;
}
export interface GenerateOptions {
  /** Tokenize the prompt as is (special tokens parsed) instead of one user message through the chat template. */
  raw?: boolean;
  /** A system message before the prompt (instead of the template's default one). */
  system?: string;
  /** New tokens at most (default 128, or what the context has room for). */
  maxTokens?: number;
  /** 0 (default) is greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  /** The sampling seed (default 0): the same seed gives the same text. */
  seed?: number;
  /** Stops the generation at the next token; the promise then resolves with finish "aborted". */
  signal?: AbortSignal;
}
export interface GenerateResult {
  text: string;
  /** Generated token ids, with the end-of-generation token when it stopped on one. */
  ids: number[];
  promptTokens: number;
  finish: "eog" | "length" | "aborted";
  /** The prompt's run, up to the first token. */
  prefillMs: number;
  /** The runs after the first token's. */
  decodeMs: number;
  /** Tokens after the first per second of decodeMs. */
  tokensPerSecond: number;
}
"#;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(typescript_type = "LanguageModelSource")]
    pub type LanguageModelSource;

    #[wasm_bindgen(typescript_type = "GenerateOptions")]
    pub type GenerateOptions;

    #[wasm_bindgen(typescript_type = "LanguageModelOptions")]
    pub type LanguageModelOptions;

    #[wasm_bindgen(typescript_type = "DescribeOptions")]
    pub type DescribeOptions;

    #[wasm_bindgen(typescript_type = "GenerateResult")]
    pub type GenerateResult;

    #[wasm_bindgen(typescript_type = "(text: string) => void")]
    pub type TextCallback;
}

#[wasm_bindgen]
impl Tandem {
    /// Loads a GGUF decoder: `{ url }` fetches it (kept in Cache Storage), `{ bytes }` takes
    /// its bytes. With `visualAdapter` (and the `imageModel` it reads photos with), the
    /// decoder can also see a photo: `describe`.
    #[wasm_bindgen(js_name = loadLanguageModel)]
    pub async fn load_language_model(
        &self,
        source: LanguageModelSource,
        options: Option<LanguageModelOptions>,
    ) -> Result<(), JsValue> {
        let options: JsValue = options.map(Into::into).unwrap_or(JsValue::UNDEFINED);
        // The adapter's files first: a bad one is found before the decoder's download.
        let visual = match field(&options, "visualAdapter")? {
            None => None,
            Some(adapter) => {
                let encoder = field(&options, "imageModel")?.ok_or_else(|| {
                    error(
                        code::BAD_INPUT,
                        "visualAdapter needs imageModel, the MobileNetV2 checkpoint it reads photos with",
                    )
                })?;
                Some((visual_adapter(&adapter).await?, image_encoder(&encoder).await?))
            }
        };
        let (name, bytes) = model_file(&source.into(), "language model").await?;
        let parts = visual.as_ref().map(|(adapter, encoder)| (adapter, encoder));
        let llm =
            Llm::from_bytes(&name, bytes, &self.device, parts).map_err(|e| error(code::BAD_MODEL, format!("{e:#}")))?;
        self.llm.replace(Some(Rc::new(llm)));
        Ok(())
    }

    /// Generates about a PNG or JPEG photo, which the decoder sees through its visual adapter
    /// (`loadLanguageModel` with `visualAdapter`): `prompt` (default "Describe this
    /// product.") is one user message through the chat template, as without a photo.
    pub async fn describe(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Uint8Array")] image: JsValue,
        options: Option<DescribeOptions>,
        #[wasm_bindgen(js_name = onText)] on_text: Option<TextCallback>,
    ) -> Result<GenerateResult, JsValue> {
        let photo = image_bytes(&image)?;
        // The photo first: a bad one is the caller's error whatever is loaded.
        tandem_models::vision::decode::decode_rgb8(&photo).map_err(|e| match e {
            DecodeError::TooLarge(_) => error(code::IMAGE_TOO_LARGE, e),
            _ => error(code::BAD_IMAGE, e),
        })?;
        let options: JsValue = options.map(Into::into).unwrap_or(JsValue::UNDEFINED);
        let on_text = callback(on_text)?;
        let prompt = optional_string(&options, "prompt")?.unwrap_or_else(|| "Describe this product.".into());
        if prompt.len() > MAX_TEXT_BYTES {
            return Err(error(code::BAD_INPUT, format!("the prompt is {} bytes, over {MAX_TEXT_BYTES}", prompt.len())));
        }
        if optional_bool(&options, "raw")?.unwrap_or(false) {
            return Err(error(
                code::BAD_INPUT,
                "describe's prompt goes through the chat template: 'raw' does not apply",
            ));
        }
        let llm = self.loaded_llm()?;
        if !llm.sees_pictures() {
            return Err(error(
                code::NOT_LOADED,
                "the language model has no visual adapter: load it with visualAdapter and imageModel",
            ));
        }
        self.run_generation(llm, &prompt, &options, on_text, Some(photo)).await
    }

    /// Generates after `prompt` (one user message through the model's chat template, or
    /// as is with `raw`), calling `onText` with each piece of text as it completes.
    pub async fn generate(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string")] prompt: JsValue,
        options: Option<GenerateOptions>,
        #[wasm_bindgen(js_name = onText)] on_text: Option<TextCallback>,
    ) -> Result<GenerateResult, JsValue> {
        let prompt = prompt.as_string().ok_or_else(|| error(code::BAD_INPUT, "the prompt must be a string"))?;
        if prompt.len() > MAX_TEXT_BYTES {
            return Err(error(code::BAD_INPUT, format!("the prompt is {} bytes, over {MAX_TEXT_BYTES}", prompt.len())));
        }
        let options: JsValue = options.map(Into::into).unwrap_or(JsValue::UNDEFINED);
        let on_text = callback(on_text)?;
        let llm = self.loaded_llm()?;
        self.run_generation(llm, &prompt, &options, on_text, None).await
    }

    fn loaded_llm(&self) -> Result<Rc<Llm>, JsValue> {
        self.llm
            .borrow()
            .clone()
            .ok_or_else(|| error(code::NOT_LOADED, "no language model is loaded: call loadLanguageModel first"))
    }

    /// The generation loop of `generate` and `describe` (which gives a photo).
    async fn run_generation(
        &self,
        llm: Rc<Llm>,
        prompt: &str,
        options: &JsValue,
        on_text: Option<Function>,
        photo: Option<Vec<u8>>,
    ) -> Result<GenerateResult, JsValue> {
        let request = request(&llm, prompt, options)?;
        let signal = object_field(options, "signal")?;
        let prompt_tokens = request.prompt_ids.len();
        let mut seq = llm
            .new_sequence(prompt_tokens + request.max_tokens)
            .map_err(|e| error(code::BAD_INPUT, format!("{e:#}")))?;
        if let Some(photo) = &photo {
            llm.show_picture_async(&mut seq, 0, photo).await.map_err(|e| model_error(&self.device, e))?;
        }
        let mut decoding =
            Decoding::start(&llm, &mut seq, &request).map_err(|e| error(code::BAD_INPUT, format!("{e:#}")))?;
        let on_cpu = self.device.backend_name() == "cpu";
        let mut aborted = false;
        while !decoding.is_finished() {
            if signal.as_ref().is_some_and(is_aborted) {
                aborted = true;
                break;
            }
            let piece = decoding.step_async(&mut seq).await.map_err(|e| model_error(&self.device, e))?;
            if let Some(f) = &on_text
                && !piece.is_empty()
            {
                // What the callback throws rejects the promise, as it is.
                f.call1(&JsValue::UNDEFINED, &JsValue::from_str(&piece))?;
            }
            if on_cpu {
                next_turn().await?;
            }
        }
        let generation = decoding.into_generation();
        let finish = match generation.finish {
            _ if aborted => "aborted",
            Finish::EndOfGeneration => "eog",
            Finish::Length => "length",
        };
        let decode_ms = generation.decode.as_secs_f64() * 1e3;
        let tokens_per_second = if decode_ms > 0.0 { generation.decode_steps as f64 / (decode_ms / 1e3) } else { 0.0 };
        let ids = Array::new();
        for id in &generation.ids {
            ids.push(&JsValue::from(*id));
        }
        let out = Object::new();
        for (key, value) in [
            ("text", JsValue::from_str(&generation.text)),
            ("ids", ids.into()),
            ("promptTokens", JsValue::from(prompt_tokens as u32)),
            ("finish", JsValue::from_str(finish)),
            ("prefillMs", JsValue::from(generation.prefill.as_secs_f64() * 1e3)),
            ("decodeMs", JsValue::from(decode_ms)),
            ("tokensPerSecond", JsValue::from(tokens_per_second)),
        ] {
            Reflect::set(&out, &JsValue::from_str(key), &value)?;
        }
        Ok(out.unchecked_into())
    }
}

/// `onText` as a function, or None.
fn callback(on_text: Option<TextCallback>) -> Result<Option<Function>, JsValue> {
    match on_text.map(JsValue::from) {
        None => Ok(None),
        Some(f) if f.is_undefined() || f.is_null() => Ok(None),
        Some(f) => Ok(Some(f.dyn_into().map_err(|_| error(code::BAD_INPUT, "onText must be a function"))?)),
    }
}

/// A visual adapter's two files: `{ baseUrl }` fetched, or `{ config, weights }` as given.
async fn visual_adapter(source: &JsValue) -> Result<VisualAdapter, JsValue> {
    let (name, config, weights) = match optional_string(source, "baseUrl")? {
        Some(base) => {
            let base = if base.ends_with('/') { base } else { format!("{base}/") };
            let config = fetch::bytes(&format!("{base}{}", visual::CONFIG_FILE)).await?;
            let weights = fetch::bytes(&format!("{base}{}", visual::WEIGHTS_FILE)).await?;
            (base.trim_end_matches('/').to_string(), config, weights)
        }
        None => (
            optional_string(source, "name")?.unwrap_or_else(|| "visual adapter".into()),
            required_bytes(source, "config")?,
            required_bytes(source, "weights")?,
        ),
    };
    VisualAdapter::from_bytes(&name, &config, weights).map_err(|e| error(code::BAD_MODEL, format!("{e:#}")))
}

/// The adapter's image encoder: MobileNetV2's checkpoint with its batch norms folded.
async fn image_encoder(source: &JsValue) -> Result<StateDict, JsValue> {
    let (name, bytes) = model_file(source, "image model").await?;
    mobilenet_v2_folded_from_bytes(&bytes, &name).map_err(|e| error(code::BAD_MODEL, format!("{e:#}")))
}

/// The prompt's ids and the options, checked.
fn request(llm: &Llm, prompt: &str, options: &JsValue) -> Result<GenerateRequest, JsValue> {
    let bad = |message: String| error(code::BAD_INPUT, message);
    let raw = optional_bool(options, "raw")?.unwrap_or(false);
    let system = optional_string(options, "system")?;
    if raw && system.is_some() {
        return Err(bad("'system' goes through the chat template, which 'raw' skips: pass one or the other".into()));
    }
    let text = if raw {
        prompt.to_string()
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &system {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", prompt));
        llm.chat_prompt(&messages).map_err(|e| bad(format!("{e:#}")))?
    };
    let prompt_ids = llm.tokenizer.encode(&text).map_err(|e| bad(format!("{e:#}")))?;
    let context = llm.config.context;
    let max_tokens = match optional_number(options, "maxTokens")? {
        None => DEFAULT_MAX_TOKENS.min(context.saturating_sub(prompt_ids.len())).max(1),
        Some(n) if n.fract() == 0.0 && n >= 1.0 && n < context as f64 => n as usize,
        Some(n) => return Err(bad(format!("maxTokens is {n}, expected a whole number from 1 to {}", context - 1))),
    };
    if prompt_ids.len() + max_tokens > context {
        return Err(bad(format!(
            "the prompt is {} tokens; with maxTokens {max_tokens} it needs {} positions, over the model's context of {context}",
            prompt_ids.len(),
            prompt_ids.len() + max_tokens
        )));
    }
    let defaults = SamplingParams::default();
    let float = |key: &str, default: f32| -> Result<f32, JsValue> {
        Ok(optional_number(options, key)?.map_or(default, |v| v as f32))
    };
    let whole = |key: &str| -> Result<Option<u64>, JsValue> {
        match optional_number(options, key)? {
            None => Ok(None),
            Some(v) if v.fract() == 0.0 && v >= 0.0 && v <= 2f64.powi(53) => Ok(Some(v as u64)),
            Some(v) => Err(bad(format!("{key} is {v}, expected a whole number ≥ 0"))),
        }
    };
    let sampling = SamplingParams {
        temperature: float("temperature", defaults.temperature)?,
        top_k: whole("topK")?.map_or(defaults.top_k, |k| k as usize),
        top_p: float("topP", defaults.top_p)?,
        min_p: float("minP", defaults.min_p)?,
        repetition_penalty: float("repetitionPenalty", defaults.repetition_penalty)?,
        seed: whole("seed")?.unwrap_or(defaults.seed),
    };
    sampling.check().map_err(|e| bad(format!("{e:#}")))?;
    Ok(GenerateRequest { prompt_ids, max_tokens, sampling, ignore_eos: false, top_logits: 0 })
}

fn optional_number(object: &JsValue, key: &str) -> Result<Option<f64>, JsValue> {
    match field(object, key)? {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(error(code::BAD_INPUT, format!("'{key}' must be a finite number"))),
        },
    }
}

fn optional_bool(object: &JsValue, key: &str) -> Result<Option<bool>, JsValue> {
    match field(object, key)? {
        None => Ok(None),
        Some(v) => {
            v.as_bool().map(Some).ok_or_else(|| error(code::BAD_INPUT, format!("'{key}' must be true or false")))
        }
    }
}

fn object_field(object: &JsValue, key: &str) -> Result<Option<JsValue>, JsValue> {
    match field(object, key)? {
        Some(v) if !v.is_object() => Err(error(code::BAD_INPUT, format!("'{key}' must be an AbortSignal"))),
        other => Ok(other),
    }
}

fn is_aborted(signal: &JsValue) -> bool {
    Reflect::get(signal, &JsValue::from_str("aborted")).is_ok_and(|v| v.is_truthy())
}

/// Resolves on a later turn of the event loop (a zero `setTimeout`, in a window or a worker).
async fn next_turn() -> Result<(), JsValue> {
    let set_timeout: Function = Reflect::get(&js_sys::global(), &JsValue::from_str("setTimeout"))?
        .dyn_into()
        .map_err(|_| error(code::INTERNAL, "this page has no setTimeout"))?;
    let promise = Promise::new(&mut |resolve, _| {
        let _ = set_timeout.call2(&JsValue::UNDEFINED, &resolve, &JsValue::from(0));
    });
    JsFuture::from(promise).await.map(|_| ())
}
