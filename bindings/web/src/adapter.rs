//! Is the browser's WebGPU adapter a software one? Asked of the page's `navigator.gpu` before
//! auto opens anything, since wgpu's adapter info on the web does not say (its device type is
//! "other" there).

use js_sys::{Function, Object, Promise, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

/// Words in an adapter's info that name a CPU implementation of a GPU API: Chromium's
/// SwiftShader, Mesa's llvmpipe / lavapipe / softpipe, Microsoft's WARP ("Basic Render Driver").
const SOFTWARE: &[&str] = &["swiftshader", "llvmpipe", "lavapipe", "softpipe", "warp", "basic render"];

/// The description of the adapter `navigator.gpu.requestAdapter()` gives (the one wgpu would
/// open) when the browser marks it as a fallback adapter or its info names a software
/// rasterizer; None when it is hardware, or there is no WebGPU or no adapter at all (auto
/// then finds that out itself and says so).
pub async fn software() -> Option<String> {
    let global = js_sys::global();
    let gpu = get(&get(&global, "navigator")?, "gpu")?;
    let request: Function = get(&gpu, "requestAdapter")?.dyn_into().ok()?;
    let options = Object::new();
    Reflect::set(&options, &"powerPreference".into(), &"high-performance".into()).ok()?;
    let promise: Promise = request.call1(&gpu, &options).ok()?.dyn_into().ok()?;
    let adapter = JsFuture::from(promise).await.ok()?;
    if adapter.is_null() || adapter.is_undefined() {
        return None;
    }
    // `adapter.info` (Chromium 127+); `requestAdapterInfo()` before it.
    let info = match get(&adapter, "info") {
        Some(info) => Some(info),
        None => match get(&adapter, "requestAdapterInfo").and_then(|f| f.dyn_into::<Function>().ok()) {
            Some(f) => match f.call0(&adapter).ok().and_then(|p| p.dyn_into::<Promise>().ok()) {
                Some(p) => JsFuture::from(p).await.ok(),
                None => None,
            },
            None => None,
        },
    };
    let text = |key| info.as_ref().and_then(|i| get(i, key)).and_then(|v| v.as_string()).unwrap_or_default();
    let words: Vec<String> =
        ["vendor", "architecture", "device", "description"].into_iter().map(text).filter(|w| !w.is_empty()).collect();
    let description = if words.is_empty() { "no adapter info".to_string() } else { words.join(", ") };
    // `isFallbackAdapter`: on the adapter until Chromium 136, then on its info.
    let fallback = [Some(&adapter), info.as_ref()]
        .into_iter()
        .flatten()
        .any(|o| get(o, "isFallbackAdapter").and_then(|v| v.as_bool()) == Some(true));
    let lower = description.to_lowercase();
    (fallback || SOFTWARE.iter().any(|w| lower.contains(w))).then_some(description)
}

/// `object[key]`, None when missing (undefined or null) or when reading it throws.
fn get(object: &JsValue, key: &str) -> Option<JsValue> {
    let value = Reflect::get(object, &JsValue::from_str(key)).ok()?;
    (!value.is_undefined() && !value.is_null()).then_some(value)
}
