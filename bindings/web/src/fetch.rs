//! Downloads, kept in the browser's Cache Storage (`tandem-models-v1`): a model downloads once
//! per browser. Where Cache Storage is missing (an insecure context) or fails (quota, private
//! browsing), the file is fetched every time.

use crate::{code, error};
use js_sys::{Function, Promise, Reflect, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, CacheStorage, Response};

pub const CACHE_NAME: &str = "tandem-models-v1";

/// The bytes at `url`, from the cache when there, else fetched (and then cached).
pub async fn bytes(url: &str) -> Result<Vec<u8>, JsValue> {
    let cache = open_cache().await;
    if let Some(cache) = &cache
        && let Ok(hit) = JsFuture::from(cache.match_with_str(url)).await
        && let Ok(response) = hit.dyn_into::<Response>()
        && let Ok(bytes) = body(&response, url).await
    {
        return Ok(bytes);
    }
    let response = fetch(url).await?;
    if !response.ok() {
        let status = response.status();
        let text = response.status_text();
        return Err(error(code::DOWNLOAD_FAILED, format!("{url}: HTTP {status} {text}").trim_end().to_string()));
    }
    if let Some(cache) = &cache
        && let Ok(copy) = response.clone()
    {
        // Best effort: a full quota only costs the next page load a download.
        let _ = JsFuture::from(cache.put_with_str(url, &copy)).await;
    }
    body(&response, url).await
}

async fn open_cache() -> Option<Cache> {
    let caches = Reflect::get(&js_sys::global(), &JsValue::from_str("caches")).ok()?;
    let caches: CacheStorage = caches.dyn_into().ok()?;
    JsFuture::from(caches.open(CACHE_NAME)).await.ok()?.dyn_into().ok()
}

/// The global `fetch` (a window's or a worker's).
async fn fetch(url: &str) -> Result<Response, JsValue> {
    let failed = |why: String| error(code::DOWNLOAD_FAILED, format!("{url}: {why}"));
    let fetch: Function = Reflect::get(&js_sys::global(), &JsValue::from_str("fetch"))
        .ok()
        .and_then(|f| f.dyn_into().ok())
        .ok_or_else(|| failed("this page has no fetch".into()))?;
    let promise: Promise = fetch
        .call1(&JsValue::UNDEFINED, &JsValue::from_str(url))
        .map_err(|e| failed(describe(&e)))?
        .dyn_into()
        .map_err(|_| failed("fetch returned no promise".into()))?;
    let response = JsFuture::from(promise).await.map_err(|e| failed(describe(&e)))?;
    response.dyn_into().map_err(|_| failed("fetch returned no response".into()))
}

async fn body(response: &Response, url: &str) -> Result<Vec<u8>, JsValue> {
    let failed = |e: JsValue| error(code::DOWNLOAD_FAILED, format!("{url}: reading the body: {}", describe(&e)));
    let buffer = JsFuture::from(response.array_buffer().map_err(failed)?).await.map_err(failed)?;
    Ok(Uint8Array::new(&buffer).to_vec())
}

/// A thrown JS value as text (an Error's message, else its string form).
fn describe(e: &JsValue) -> String {
    if let Some(e) = e.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}
