//! The in-browser demo at `/`: the page (`web/`), the WebAssembly package it runs
//! (`web/pkg/`, built by `bash bindings/web/build.sh`) and the model and data files it
//! downloads (from the tandem cache).
//!
//! Only an allow-list is served: the page's own files by name pattern and extension, the
//! package's files, and a fixed set of model and data files. Every path segment must be
//! `[A-Za-z0-9._-]+` and not start with a dot, so `..`, encoded dots (`%2e%2e`), hidden files
//! and anything else fall through to the API's 404. No directory listings, no Range requests;
//! every file has an ETag and a Last-Modified and answers `If-None-Match` with 304.
//!
//! Page and package files are sent precompressed when a sibling `<file>.br` or `<file>.gz` is
//! there, no older than the file, and the request's `Accept-Encoding` takes it (brotli first):
//! build.sh writes both for the 4.7 MB wasm and its JS glue. Such responses say
//! `Vary: Accept-Encoding` and carry the file's own Content-Type.
//!
//! Routes:
//! - `/`, `/index.html`, `/<name>.{js,css,html,png,jpg,svg,...}`, `/samples/<image>`: `web/`
//! - `/pkg/<file>` (up to three levels): `web/pkg/`
//! - `/models/minilm/{config.json,tokenizer.json,model.safetensors}`: the served text model's folder
//! - `/models/mobilenetv2/mobilenet_v2-b0353104.pth` and
//!   `/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (the decoder of the page's "Ask about this
//!   product"): fetched into the cache on first request (503 with the reason when it cannot be)
//! - `/models/visual-adapter/{adapter_config.json,adapter.safetensors}`: the decoder's visual
//!   adapter, when the server has one (`--llm-visual-adapter`)
//! - `/data/brands.json`: the brand list `/relevance` extracts with
//! - `/data/taxonomy-<encoder id>.emb`: the taxonomy embeddings of the served model

use super::errors::{ApiError, ErrorKind};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use tandem_models::fetch;
use tandem_models::llm::visual;
use tandem_models::registry::known_model;

/// The web/ folder of the source tree: the default when `--web-dir` is not given.
pub const DEFAULT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../web");

/// Files of the text model the page loads (the rest of the folder is not served).
const TEXT_MODEL_FILES: &[&str] = &["config.json", "tokenizer.json", "model.safetensors"];
/// Models the page downloads that the server fetches into its cache on first request.
const IMAGE_MODEL: FetchedModel = FetchedModel { name: "mobilenetv2", file: "mobilenet_v2-b0353104.pth" };
const LANGUAGE_MODEL: FetchedModel = FetchedModel { name: "smollm2", file: "SmolLM2-135M-Instruct.Q4_1.gguf" };
const FETCHED_MODELS: [FetchedModel; 2] = [IMAGE_MODEL, LANGUAGE_MODEL];
/// Where the decoder's visual adapter (`--llm-visual-adapter`) is served, when there is one.
const VISUAL_ADAPTER_URL: &str = "/models/visual-adapter/";

/// A known model (`tandem fetch NAME`) the page loads one file of.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FetchedModel {
    name: &'static str,
    file: &'static str,
}

impl FetchedModel {
    fn url(self) -> String {
        format!("/models/{}/{}", self.name, self.file)
    }
}

/// Page assets: revalidated on every load (cheap with the ETag), so a rebuilt page or
/// package shows at once.
const CACHE_ASSETS: &str = "no-cache";
/// Model and data files: large and pinned; a day before revalidating.
const CACHE_MODELS: &str = "public, max-age=86400";

/// Content codings sent from precompressed siblings (`<file>.<extension>`), in the order
/// preferred: brotli is about 20% smaller than gzip on the wasm.
const PRECOMPRESSED: &[(&str, &str)] = &[("br", "br"), ("gzip", "gz")];

/// Read size of the file stream.
const CHUNK: usize = 256 << 10;

pub struct Web {
    dir: PathBuf,
    /// The served text model's folder.
    text_model: PathBuf,
    /// The encoder id the taxonomy embedding file is named after.
    model_id: String,
    cache_root: Option<PathBuf>,
    /// Each fetched model's file once in the cache (by [`FETCHED_MODELS`] index); the lock
    /// makes concurrent first requests share one fetch.
    fetched: [tokio::sync::Mutex<Option<PathBuf>>; 2],
    /// The decoder's visual adapter folder, when the server has one: the page's "Ask about
    /// this product" then shows the photo to the decoder.
    visual_adapter: Option<PathBuf>,
}

enum Target {
    /// A file on disk and its Cache-Control.
    File(PathBuf, &'static str),
    /// A model's file, fetched on first use.
    Fetched(FetchedModel),
    /// An allowed name whose file does not exist (yet): 404 with this message.
    Missing(String),
}

impl Web {
    pub fn new(dir: PathBuf, text_model: PathBuf, model_id: String) -> Web {
        let dir = dir.canonicalize().unwrap_or(dir);
        let cache_root = fetch::cache_root().ok();
        Web { dir, text_model, model_id, cache_root, fetched: Default::default(), visual_adapter: None }
    }

    /// Serves the adapter's two files at `/models/visual-adapter/`.
    pub fn with_visual_adapter(mut self, dir: Option<PathBuf>) -> Web {
        self.visual_adapter = dir;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn has_page(&self) -> bool {
        self.dir.join("index.html").is_file()
    }

    pub fn pkg_built(&self) -> bool {
        self.dir.join("pkg").join("tandem_web.js").is_file()
    }

    fn taxonomy_name(&self) -> String {
        let safe: String =
            self.model_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        format!("taxonomy-{safe}.emb")
    }

    /// `/info`'s `web` field.
    pub fn info(&self) -> Value {
        json!({
            "enabled": true,
            "dir": self.dir.display().to_string(),
            "page": self.has_page(),
            "pkg_built": self.pkg_built(),
            "build_pkg": "bash bindings/web/build.sh",
            "text_model": "/models/minilm/",
            "image_model": IMAGE_MODEL.url(),
            "language_model": LANGUAGE_MODEL.url(),
            "visual_adapter": self.visual_adapter.as_ref().map(|_| VISUAL_ADAPTER_URL),
            "brands": "/data/brands.json",
            "taxonomy": format!("/data/{}", self.taxonomy_name()),
        })
    }

    /// The answer for a GET or HEAD of `path`, or None when the path is not one the page
    /// serves (the caller answers its usual 404).
    pub async fn respond(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<Response> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        let target = self.resolve(path)?;
        let (file, cache) = match target {
            Target::File(file, cache) => (file, cache),
            Target::Missing(message) => {
                return Some(ApiError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message).into_response());
            }
            Target::Fetched(model) => match self.fetched_file(model).await {
                Ok(file) => (file, CACHE_MODELS),
                Err(message) => {
                    return Some(
                        ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            ErrorKind::Backend,
                            format!("the model {} is not available: {message}", model.name),
                        )
                        .into_response(),
                    );
                }
            },
        };
        Some(serve_file(&file, cache, method == Method::HEAD, headers).await)
    }

    fn resolve(&self, path: &str) -> Option<Target> {
        let rest = path.strip_prefix('/')?;
        if rest.is_empty() {
            return Some(self.page_file("index.html"));
        }
        let segments: Vec<&str> = rest.split('/').collect();
        if !segments.iter().all(|s| safe_segment(s)) {
            return None;
        }
        let file = |p: PathBuf, cache| {
            if p.is_file() { Target::File(p, cache) } else { Target::Missing(format!("{path} is not there")) }
        };
        match segments.as_slice() {
            ["models", "minilm", name] if TEXT_MODEL_FILES.contains(name) => {
                Some(file(self.text_model.join(name), CACHE_MODELS))
            }
            ["models", "visual-adapter", name]
                if [visual::CONFIG_FILE, visual::WEIGHTS_FILE].contains(name) && self.visual_adapter.is_some() =>
            {
                Some(file(self.visual_adapter.as_ref()?.join(name), CACHE_ASSETS))
            }
            ["models", name, file] if FETCHED_MODELS.iter().any(|m| m.name == *name && m.file == *file) => {
                FETCHED_MODELS.iter().find(|m| m.name == *name).map(|m| Target::Fetched(*m))
            }
            ["data", "brands.json"] => {
                let root = self.cache_root.as_ref()?;
                let p = tandem_ebrm::vocab::brands_path(root);
                Some(if p.is_file() {
                    Target::File(p, CACHE_MODELS)
                } else {
                    Target::Missing("the brand list is not in the cache: run `tandem fetch brands`".into())
                })
            }
            ["data", name] if *name == self.taxonomy_name() => {
                let root = self.cache_root.as_ref()?;
                let p = tandem_ebrm::entities::taxonomy::cache_file(root, &self.model_id);
                Some(if p.is_file() {
                    Target::File(p, CACHE_MODELS)
                } else {
                    Target::Missing(format!(
                        "the taxonomy embeddings of {} are not in the cache yet: a server with /relevance builds them at start",
                        self.model_id
                    ))
                })
            }
            ["pkg", inner @ ..] if (1..=3).contains(&inner.len()) && mime(inner[inner.len() - 1]).is_some() => {
                let p = inner.iter().fold(self.dir.join("pkg"), |p, s| p.join(s));
                Some(if p.is_file() {
                    Target::File(p, CACHE_ASSETS)
                } else {
                    Target::Missing(format!(
                        "{path} is not there: the WebAssembly package is not built (run `bash bindings/web/build.sh`)"
                    ))
                })
            }
            ["samples", name] if is_image(name) => Some(file(self.dir.join("samples").join(name), CACHE_ASSETS)),
            [name] if mime(name).is_some() && !name.ends_with(".json") && !name.ends_with(".ts") => {
                Some(self.page_file(name))
            }
            _ => None,
        }
    }

    fn page_file(&self, name: &str) -> Target {
        let p = self.dir.join(name);
        if p.is_file() {
            Target::File(p, CACHE_ASSETS)
        } else if name == "index.html" {
            Target::Missing(format!(
                "the demo page is not in {} (--web-dir DIR picks the folder, --no-web turns it off)",
                self.dir.display()
            ))
        } else {
            Target::Missing(format!("/{name} is not there"))
        }
    }

    /// The file of `model` in the cache, fetched on first use.
    async fn fetched_file(&self, model: FetchedModel) -> Result<PathBuf, String> {
        let index = FETCHED_MODELS.iter().position(|m| *m == model).expect("one of FETCHED_MODELS");
        let mut known = self.fetched[index].lock().await;
        if let Some(file) = &*known {
            return Ok(file.clone());
        }
        let fetched = tokio::task::spawn_blocking(move || fetch::ensure(known_model(model.name)?)).await;
        match fetched {
            Ok(Ok(path)) => {
                // A folder model's file is inside its folder; a single-file model is the file.
                let file = if path.is_dir() { path.join(model.file) } else { path };
                *known = Some(file.clone());
                Ok(file)
            }
            Ok(Err(e)) => {
                eprintln!("tandem serve: cannot fetch {} for the web demo: {e:#}", model.name);
                Err(format!("cannot fetch it into the cache ({e:#}); `tandem fetch {}` fetches it by hand", model.name))
            }
            Err(e) => Err(format!("the fetch task failed: {e}")),
        }
    }
}

/// A path segment the allow-list can match: no traversal, no hidden files, no escapes.
fn safe_segment(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn extension(name: &str) -> &str {
    name.rsplit_once('.').map_or("", |(_, ext)| ext)
}

fn is_image(name: &str) -> bool {
    matches!(extension(name), "png" | "jpg" | "jpeg" | "webp" | "svg")
}

/// The content type of a file the page may load, by extension; None: not served.
fn mime(name: &str) -> Option<&'static str> {
    Some(match extension(name) {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "wasm" => "application/wasm",
        "ts" => "text/plain; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "safetensors" | "pth" | "emb" | "gguf" => "application/octet-stream",
        _ => return None,
    })
}

async fn serve_file(path: &Path, cache: &'static str, head: bool, headers: &HeaderMap) -> Response {
    // Only the page's and the package's files have precompressed siblings (build.sh).
    let compressible = cache == CACHE_ASSETS;
    let codings: Vec<(&'static str, &'static str)> = if compressible {
        PRECOMPRESSED.iter().copied().filter(|(c, _)| accepts(headers, c)).collect()
    } else {
        vec![]
    };
    let opened = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)?;
            let meta = file.metadata()?;
            if meta.is_file() {
                for (coding, ext) in codings {
                    let mut name = path.clone().into_os_string();
                    name.push(format!(".{ext}"));
                    if let Ok(packed) = std::fs::File::open(&name)
                        && let Ok(packed_meta) = packed.metadata()
                        && packed_meta.is_file()
                        && fresh(&packed_meta, &meta)
                    {
                        return Ok((packed, packed_meta, Some(coding)));
                    }
                }
            }
            Ok::<_, std::io::Error>((file, meta, None))
        })
        .await
    };
    let (file, meta, coding) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return ApiError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, "the file is not there").into_response();
        }
        Ok(Err(e)) => {
            eprintln!("tandem serve: cannot read {}: {e}", path.display());
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Internal, "cannot read the file")
                .into_response();
        }
        Err(e) => {
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Internal, e.to_string())
                .into_response();
        }
    };
    if !meta.is_file() {
        return ApiError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, "not a file").into_response();
    }
    let len = meta.len();
    let modified = meta.modified().ok();
    let nanos = modified.and_then(|m| m.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    // Each coding is its own representation, with its own tag.
    let etag = format!("\"{len:x}-{nanos:x}{}\"", coding.map_or(String::new(), |c| format!("-{c}")));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut response = if if_none_match(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = if head { Body::empty() } else { file_body(file) };
        let mut r = Response::new(body);
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime(name).unwrap_or("application/octet-stream")));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        r
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if compressible {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if let Some(coding) = coding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Some(m) = modified
        && let Ok(v) = HeaderValue::from_str(&http_date(m))
    {
        h.insert(header::LAST_MODIFIED, v);
    }
    response
}

/// Whether `Accept-Encoding` takes `coding` (named with a q-value above 0, or no q-value).
/// `*` is not honoured: the identity is always a fine answer.
fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q = parts.find_map(|p| p.trim().strip_prefix("q=")).map_or(1.0, |q| q.trim().parse().unwrap_or(0.0));
            name.eq_ignore_ascii_case(coding) && q > 0.0
        },
    )
}

/// A precompressed sibling counts only when written after the file it compresses: a
/// package rebuilt without recompressing is then sent as it is, never an old copy.
fn fresh(packed: &std::fs::Metadata, original: &std::fs::Metadata) -> bool {
    matches!((packed.modified(), original.modified()), (Ok(p), Ok(o)) if p >= o)
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag))
}

/// Streams the file in chunks read on the blocking pool: a 90 MB model is never held whole.
fn file_body(file: std::fs::File) -> Body {
    let stream = futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; CHUNK];
            let n = file.read(&mut buf)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>((file, buf))
        })
        .await;
        match read {
            Ok(Ok((_, buf))) if buf.is_empty() => None,
            Ok(Ok((file, buf))) => Some((Ok(Bytes::from(buf)), Some(file))),
            Ok(Err(e)) => Some((Err(e), None)),
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    Body::from_stream(stream)
}

/// RFC 9110's IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!("{weekday}, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT", months[(month - 1) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn http_dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn only_the_allow_list_resolves() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<!doctype html>").unwrap();
        std::fs::write(dir.path().join("app.js"), "").unwrap();
        let web = Web::new(dir.path().to_path_buf(), dir.path().join("model"), "minilm".into());
        let found = |p: &str| matches!(web.resolve(p), Some(Target::File(..)));
        let refused = |p: &str| web.resolve(p).is_none();
        assert!(found("/") && found("/index.html") && found("/app.js"));
        for p in [
            "/pkg/../Cargo.toml",
            "/pkg/%2e%2e/Cargo.toml",
            "/..",
            "/.git/config",
            "/tests/node_modules/x.js",
            "/Cargo.toml",
            "/models/minilm/vocab.txt",
            "/models/minilm/../../x",
            "/data/taxonomy-other.emb",
            "//etc/passwd",
            "/app.js/",
            "/samples/x.html",
        ] {
            assert!(refused(p), "{p}");
        }
        assert!(matches!(web.resolve("/pkg/tandem_web.js"), Some(Target::Missing(m)) if m.contains("build.sh")));
        assert!(matches!(
            web.resolve("/models/mobilenetv2/mobilenet_v2-b0353104.pth"),
            Some(Target::Fetched(IMAGE_MODEL))
        ));
        assert!(matches!(
            web.resolve("/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            Some(Target::Fetched(LANGUAGE_MODEL))
        ));
        assert!(web.resolve("/models/smollm2/mobilenet_v2-b0353104.pth").is_none());
        assert_eq!(mime("tandem_web_bg.wasm"), Some("application/wasm"));
        // The visual adapter's two files, only when the server has one.
        assert!(refused("/models/visual-adapter/adapter_config.json"));
        let adapter = dir.path().join("adapter");
        std::fs::create_dir(&adapter).unwrap();
        std::fs::write(adapter.join("adapter_config.json"), "{}").unwrap();
        let web = web.with_visual_adapter(Some(adapter));
        assert!(matches!(web.resolve("/models/visual-adapter/adapter_config.json"), Some(Target::File(..))));
        assert!(matches!(web.resolve("/models/visual-adapter/adapter.safetensors"), Some(Target::Missing(_))));
        assert!(web.resolve("/models/visual-adapter/other.json").is_none());
    }
}
