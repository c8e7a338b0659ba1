//! Embeddings on several threads, on stable Rust: a pool of Web Workers, each running its own
//! instance of this package (worker.js) with its own copy of the text model.
//!
//! Shared-memory wasm threads need std rebuilt with atomics, which needs a nightly toolchain;
//! workers need neither, nor cross-origin isolation (COOP/COEP), since no memory is shared:
//! texts go to a worker by `postMessage` and its vectors come back transferred. The price is
//! memory: each worker holds the model's weights.
//!
//! A batch is split by sequences, balanced by token count; the calling instance embeds one
//! share itself while the workers embed theirs, so `threads: n` is the caller and n − 1
//! workers. Each call to a worker gets exactly one answer, and a worker that fails for good
//! (a wasm trap, an uncaught error, a script that does not load) is ended and rejects
//! whatever it still owed: no call waits forever.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use tandem_models::Embedder;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, BlobPropertyBag, ErrorEvent, MessageEvent, Url, Worker, WorkerOptions, WorkerType};

use crate::{code, error};

/// Most threads a `Tandem` takes (`threads: "max"` is clamped to it): each one is a copy of
/// the model in memory.
pub const MAX_THREADS: usize = 16;

const WORKER_JS: &str = include_str!("worker.js");

#[wasm_bindgen]
extern "C" {
    /// The URL of the package's JS glue: the import shim of this static is emitted into that
    /// module, so `import.meta` is the glue's. Workers import it from there.
    #[wasm_bindgen(thread_local_v2, js_namespace = ["import", "meta"], js_name = url)]
    static GLUE_URL: String;
}

pub(crate) struct Pool {
    workers: Vec<Worker>,
    calls: Rc<RefCell<Calls>>,
    /// The workers' event handlers, alive as long as the workers.
    _handlers: Vec<Closure<dyn FnMut(JsValue)>>,
}

#[derive(Default)]
struct Calls {
    next_id: u32,
    /// The calls not answered yet: id → (worker, resolve, reject).
    pending: HashMap<u32, (usize, Function, Function)>,
    /// Why each worker was ended, once it was.
    ended: Vec<Option<String>>,
}

impl Calls {
    /// Ends worker `i`: it answers nothing more, so every call it owes is rejected now.
    fn end(&mut self, worker: &Worker, i: usize, why: &str) {
        worker.terminate();
        if self.ended[i].is_none() {
            self.ended[i] = Some(why.to_string());
        }
        let owed: Vec<u32> = self.pending.iter().filter(|(_, (w, ..))| *w == i).map(|(id, _)| *id).collect();
        for id in owed {
            let (_, _, reject) = self.pending.remove(&id).expect("listed above");
            let _ = reject.call1(&JsValue::UNDEFINED, &error(code::INTERNAL, format!("worker {} died: {why}", i + 1)));
        }
    }
}

impl Pool {
    /// Starts `n` workers and waits until each has instantiated the package.
    pub async fn start(n: usize) -> Result<Pool, JsValue> {
        let failed = |e: JsValue| error(code::INTERNAL, format!("threads: cannot start a worker: {}", describe(&e)));
        let options = BlobPropertyBag::new();
        options.set_type("text/javascript");
        let blob = Blob::new_with_str_sequence_and_options(&Array::of1(&WORKER_JS.into()), &options).map_err(failed)?;
        let url = Url::create_object_url_with_blob(&blob).map_err(failed)?;
        let pool = Pool::spawn(n, &url).await;
        let _ = Url::revoke_object_url(&url);
        pool
    }

    async fn spawn(n: usize, url: &str) -> Result<Pool, JsValue> {
        let options = WorkerOptions::new();
        options.set_type(WorkerType::Module);
        let calls = Rc::new(RefCell::new(Calls { ended: vec![None; n], ..Calls::default() }));
        let mut pool = Pool { workers: Vec::with_capacity(n), calls, _handlers: Vec::new() };
        for i in 0..n {
            let worker = Worker::new_with_options(url, &options)
                .map_err(|e| error(code::INTERNAL, format!("threads: cannot start a worker: {}", describe(&e))))?;
            pool.listen(i, &worker);
            pool.workers.push(worker);
        }
        let init = Object::new();
        Reflect::set(&init, &"op".into(), &"init".into())?;
        Reflect::set(&init, &"glue".into(), &GLUE_URL.with(|url| JsValue::from_str(url)))?;
        Reflect::set(&init, &"module".into(), &wasm_bindgen::module())?;
        let started: Vec<_> = (0..n).map(|i| pool.call(i, &init)).collect();
        for (i, call) in started.into_iter().enumerate() {
            call.await.map_err(|e| {
                error(code::INTERNAL, format!("threads: worker {} of {n} did not start: {}", i + 1, describe(&e)))
            })?;
        }
        Ok(pool)
    }

    /// Threads that embed: the caller and the workers still running.
    pub fn threads(&self) -> usize {
        1 + self.calls.borrow().ended.iter().filter(|e| e.is_none()).count()
    }

    /// Loads the text model (a [`model_source`]) in every running worker. A worker that cannot
    /// is ended (its model would differ from the caller's) and the call rejects with its error.
    pub async fn load_text_model(&self, source: &Object) -> Result<(), JsValue> {
        let message = Object::new();
        Reflect::set(&message, &"op".into(), &"loadTextModel".into())?;
        Reflect::set(&message, &"source".into(), source)?;
        let loads: Vec<_> = self.running().into_iter().map(|i| (i, self.call(i, &message))).collect();
        let mut result = Ok(());
        for (i, load) in loads {
            if let Err(e) = load.await {
                self.calls.borrow_mut().end(&self.workers[i], i, "it could not load the text model");
                result = result.and(Err(e));
            }
        }
        result
    }

    /// `texts`' embeddings, in order: one share per thread, the caller's embedded here while
    /// the workers embed theirs.
    pub async fn embed(&self, embedder: &Embedder, texts: &[&str]) -> Result<Vec<Vec<f32>>, JsValue> {
        let internal = |e: anyhow::Error| error(code::INTERNAL, format!("{e:#}"));
        // Tokenized here for the counts; the caller's share is embedded from these tokens, the
        // workers tokenize their texts again (in parallel).
        let tokenized = texts.iter().map(|t| embedder.tokenize_counted(t)).collect::<anyhow::Result<Vec<_>>>();
        let tokenized: Vec<_> = tokenized.map_err(internal)?.into_iter().map(|c| c.tokens).collect();
        let running = self.running();
        let shares = shares(&tokenized.iter().map(|t| t.len()).collect::<Vec<_>>(), 1 + running.len());
        let mut sent = Vec::new();
        for (share, &i) in shares[1..].iter().zip(&running) {
            if share.is_empty() {
                continue;
            }
            let message = Object::new();
            Reflect::set(&message, &"op".into(), &"embed".into())?;
            Reflect::set(
                &message,
                &"texts".into(),
                &share.iter().map(|&k| JsValue::from_str(texts[k])).collect::<Array>(),
            )?;
            sent.push((share, self.call(i, &message)));
        }
        // The workers are busy by now; the caller's share runs meanwhile (the CPU backend runs
        // synchronously, so the blocking call is fine here).
        let mine: Vec<_> = shares[0].iter().map(|&k| &tokenized[k]).collect();
        let vectors = embedder.embed_tokenized(&mine).map_err(internal)?;
        let mut out = vec![Vec::new(); texts.len()];
        for (&k, v) in shares[0].iter().zip(vectors) {
            out[k] = v;
        }
        for (share, answer) in sent {
            let answer = answer.await?;
            let vectors = Array::from(&answer);
            if vectors.length() as usize != share.len() {
                return Err(error(code::INTERNAL, "a worker answered with the wrong number of vectors"));
            }
            for (&k, v) in share.iter().zip(vectors.iter()) {
                out[k] = v.unchecked_into::<js_sys::Float32Array>().to_vec();
            }
        }
        Ok(out)
    }

    /// Sends worker `i` a request made for tests of the error paths (see worker.js "fault"):
    /// "throw" (answers an error), "trap" (a fatal one) or "uncaught" (no answer, an error
    /// event). Posted now, before the future is first polled, so a test can queue calls after it.
    pub fn fault(&self, i: usize, kind: &str) -> Option<JsFuture> {
        if i >= self.workers.len() {
            return None;
        }
        let message = Object::new();
        let _ = Reflect::set(&message, &"op".into(), &"fault".into());
        let _ = Reflect::set(&message, &"kind".into(), &kind.into());
        Some(self.call(i, &message))
    }

    fn running(&self) -> Vec<usize> {
        let calls = self.calls.borrow();
        (0..self.workers.len()).filter(|&i| calls.ended[i].is_none()).collect()
    }

    /// Posts `message` to worker `i` with a fresh id; the future is its answer.
    fn call(&self, i: usize, message: &Object) -> JsFuture {
        let calls = self.calls.clone();
        let worker = self.workers[i].clone();
        let message = message.clone();
        JsFuture::from(Promise::new(&mut |resolve, reject| {
            let mut calls = calls.borrow_mut();
            if let Some(why) = &calls.ended[i] {
                let _ =
                    reject.call1(&JsValue::UNDEFINED, &error(code::INTERNAL, format!("worker {} died: {why}", i + 1)));
                return;
            }
            let id = calls.next_id;
            calls.next_id = id.wrapping_add(1);
            let _ = Reflect::set(&message, &"id".into(), &id.into());
            if let Err(e) = worker.post_message(&message) {
                let _ = reject
                    .call1(&JsValue::UNDEFINED, &error(code::INTERNAL, format!("worker {}: {}", i + 1, describe(&e))));
                return;
            }
            calls.pending.insert(id, (i, resolve, reject));
        }))
    }

    /// Routes worker `i`'s answers to their calls, and ends it on an error event (an uncaught
    /// error, a script that failed to load) or a message that could not be read.
    fn listen(&mut self, i: usize, worker: &Worker) {
        let (calls, w) = (self.calls.clone(), worker.clone());
        let on_message = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            let data = event.unchecked_into::<MessageEvent>().data();
            // Anything without one of our ids is not an answer (a test runner's console relay).
            let Some(id) = Reflect::get(&data, &"id".into()).ok().and_then(|id| id.as_f64()) else { return };
            let mut calls = calls.borrow_mut();
            let Some((_, resolve, reject)) = calls.pending.remove(&(id as u32)) else { return };
            let failure = Reflect::get(&data, &"error".into()).unwrap_or(JsValue::UNDEFINED);
            if failure.is_undefined() {
                let result = Reflect::get(&data, &"result".into()).unwrap_or(JsValue::UNDEFINED);
                let _ = resolve.call1(&JsValue::UNDEFINED, &result);
                return;
            }
            let field = |key: &str| Reflect::get(&failure, &key.into()).ok().and_then(|v| v.as_string());
            let why = field("message").unwrap_or_default();
            let code = field("code").unwrap_or(code::INTERNAL.into());
            let _ = reject.call1(&JsValue::UNDEFINED, &error(&code, format!("worker {}: {why}", i + 1)));
            if Reflect::get(&data, &"fatal".into()).ok().and_then(|f| f.as_bool()) == Some(true) {
                calls.end(&w, i, &why);
            }
        });
        let (calls, w) = (self.calls.clone(), worker.clone());
        let on_error = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            // Handled here: not reported again as the page's own uncaught error.
            event.unchecked_ref::<web_sys::Event>().prevent_default();
            let why = match event.dyn_ref::<ErrorEvent>() {
                Some(e) if !e.message().is_empty() => e.message(),
                _ => "its script failed (an error event without a message: it did not load, or a message could not be read)".into(),
            };
            calls.borrow_mut().end(&w, i, &why);
        });
        worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        worker.set_onmessageerror(Some(on_error.as_ref().unchecked_ref()));
        self._handlers.extend([on_message, on_error]);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.set_onmessage(None);
            worker.set_onerror(None);
            worker.set_onmessageerror(None);
            worker.terminate();
        }
    }
}

/// `loadTextModel`'s `{ config, tokenizer, weights }`, copied out of wasm memory for the workers
/// (each worker gets its own copy of the message).
pub fn model_source(config: &[u8], tokenizer: &[u8], weights: &[u8]) -> Object {
    let source = Object::new();
    for (key, bytes) in [("config", config), ("tokenizer", tokenizer), ("weights", weights)] {
        let _ = Reflect::set(&source, &key.into(), &Uint8Array::from(bytes));
    }
    source
}

/// Splits sequences of the given token counts into `n` shares of about equal tokens
/// (longest first, each to the lightest share), each listing its sequences' indices in order.
/// Share 0 is the caller's.
fn shares(tokens: &[usize], n: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(tokens[k]));
    let mut shares = vec![Vec::new(); n];
    let mut load = vec![0usize; n];
    for k in order {
        // The lightest share; among equals the first, so that with fewer sequences than
        // threads the caller embeds one itself rather than wait for a worker.
        let s = (0..n).min_by_key(|&s| load[s]).expect("n > 0");
        shares[s].push(k);
        load[s] += tokens[k];
    }
    for share in &mut shares {
        share.sort_unstable();
    }
    shares
}

/// A thrown JS value as text (an Error's message, else its string form).
fn describe(e: &JsValue) -> String {
    match e.dyn_ref::<js_sys::Error>() {
        Some(e) => String::from(e.message()),
        None => e.as_string().unwrap_or_else(|| format!("{e:?}")),
    }
}
