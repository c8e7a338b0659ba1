//! The real brand vocabulary: brand entries of the npm package `name-suggestion-index` (NSI).
//!
//! `fetch_brands` downloads one pinned release tarball from the npm registry, checks its
//! sha256, reads `package/dist/json/nsi.json` out of it and keeps only what EBRM needs: every
//! distinct `tags.brand` of the `brands/*` categories, with its `matchNames` aliases and the
//! NSI categories it appears under (`shop/shoes`, ...). The result is written to
//! `<cache>/vocab/brands-<version>.json` (about 1 MB) and the tarball is not kept.
//!
//! Where it comes from: `GET <registry>/name-suggestion-index/<version>` gives the version's
//! metadata, whose `dist.tarball` is the download URL
//! (`<registry>/name-suggestion-index/-/name-suggestion-index-<version>.tgz`); the registry is
//! `https://registry.npmjs.org` unless `TANDEM_NPM_REGISTRY` names a mirror. The sha256 pinned
//! below decides whether the download is good, wherever it came from.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const NSI_PACKAGE: &str = "name-suggestion-index";
pub const NSI_VERSION: &str = "8.0.20260918";
/// sha256 of `name-suggestion-index-8.0.20260918.tgz` as served by the npm registry.
pub const NSI_TARBALL_SHA256: &str = "3ee22f0f0a99528ac9c65a57211575defd968e21fd6374e746bfd02e94422121";
/// The file inside the tarball that holds the brands.
pub const NSI_JSON_PATH: &str = "package/dist/json/nsi.json";
/// The pinned tarball is 22 MB; refuse anything far larger.
pub const MAX_TARBALL_BYTES: u64 = 64 << 20;
/// nsi.json is 13.5 MB in the pinned release.
pub const MAX_NSI_JSON_BYTES: u64 = 128 << 20;

/// One brand: its display name, other spellings NSI matches, and NSI categories it is under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Brand {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// NSI category paths without the `brands/` prefix, e.g. `shop/shoes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nsi: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrandList {
    /// The NSI release the list was made from.
    pub version: String,
    pub brands: Vec<Brand>,
}

impl BrandList {
    /// An empty list: extraction then finds brands only in explicit attributes.
    pub fn empty() -> BrandList {
        BrandList { version: String::new(), brands: Vec::new() }
    }

    pub fn load(path: &Path) -> Result<BrandList> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read the brand list {}", path.display()))?;
        Self::from_json(&bytes).with_context(|| path.display().to_string())
    }

    /// A list from the JSON that [`fetch_brands`] writes (what the server hands to browsers).
    pub fn from_json(bytes: &[u8]) -> Result<BrandList> {
        serde_json::from_slice(bytes).context("not a brand list")
    }

    /// Brands under an NSI category (`shop/shoes`).
    pub fn in_category<'a>(&'a self, nsi: &'a str) -> impl Iterator<Item = &'a Brand> + 'a {
        self.brands.iter().filter(move |b| b.nsi.iter().any(|c| c == nsi))
    }
}

/// Extracts the brand list from the text of nsi.json.
pub fn parse_nsi(json: &[u8]) -> Result<BrandList> {
    #[derive(Deserialize)]
    struct File {
        #[serde(rename = "_meta", default)]
        meta: Meta,
        nsi: BTreeMap<String, Category>,
    }
    #[derive(Deserialize, Default)]
    struct Meta {
        #[serde(default)]
        version: String,
    }
    #[derive(Deserialize)]
    struct Category {
        #[serde(default)]
        items: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        tags: BTreeMap<String, String>,
        #[serde(default, rename = "matchNames")]
        match_names: Vec<String>,
    }

    let file: File = serde_json::from_slice(json).context("nsi.json is not the expected JSON")?;
    let mut brands: Vec<Brand> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (path, category) in &file.nsi {
        let Some(nsi) = path.strip_prefix("brands/") else { continue };
        for entry in &category.items {
            let Some(name) = entry.tags.get("brand").map(|n| n.trim()).filter(|n| !n.is_empty()) else { continue };
            let at = *index.entry(name.to_string()).or_insert_with(|| {
                brands.push(Brand { name: name.to_string(), aliases: vec![], nsi: vec![] });
                brands.len() - 1
            });
            let brand = &mut brands[at];
            if !brand.nsi.iter().any(|c| c == nsi) {
                brand.nsi.push(nsi.to_string());
            }
            for alias in &entry.match_names {
                let alias = alias.trim();
                if !alias.is_empty() && alias != name && !brand.aliases.iter().any(|a| a == alias) {
                    brand.aliases.push(alias.to_string());
                }
            }
        }
    }
    if brands.is_empty() {
        bail!("nsi.json has no brand entries");
    }
    Ok(BrandList { version: file.meta.version, brands })
}

/// Where `fetch_brands` puts the list of the pinned release under `cache_dir`.
pub fn brands_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("vocab").join(format!("brands-{NSI_VERSION}.json"))
}

#[cfg(not(target_arch = "wasm32"))]
pub use fetch::{brands_from_tarball, fetch_brands};

#[cfg(not(target_arch = "wasm32"))]
mod fetch {
    use super::*;
    use anyhow::anyhow;

    const MAX_METADATA_BYTES: u64 = 1 << 20;
    const DEFAULT_REGISTRY: &str = "https://registry.npmjs.org";
    use sha2::{Digest, Sha256};
    use std::io::Read;

    /// Makes sure the pinned brand list is in `cache_dir` (downloading it from the npm registry
    /// if not) and returns its path. Progress goes to stderr.
    pub fn fetch_brands(cache_dir: &Path) -> Result<PathBuf> {
        let dest = brands_path(cache_dir);
        if BrandList::load(&dest).is_ok_and(|l| l.version == NSI_VERSION) {
            return Ok(dest);
        }
        let registry = std::env::var("TANDEM_NPM_REGISTRY")
            .ok()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| DEFAULT_REGISTRY.to_string());
        let registry = registry.trim_end_matches('/');
        let meta_url = format!("{registry}/{NSI_PACKAGE}/{NSI_VERSION}");
        let meta: serde_json::Value = serde_json::from_slice(&get(&meta_url, MAX_METADATA_BYTES)?)
            .with_context(|| format!("{meta_url}: not JSON"))?;
        let tarball_url = meta["dist"]["tarball"]
            .as_str()
            .ok_or_else(|| anyhow!("{meta_url}: no dist.tarball in the version metadata"))?;
        eprintln!("fetching {NSI_PACKAGE}@{NSI_VERSION} from {tarball_url}");
        let tarball = get(tarball_url, MAX_TARBALL_BYTES)?;
        let list = brands_from_tarball(&tarball)?;
        write_atomically(&dest, &serde_json::to_vec(&list)?)?;
        eprintln!("{} brands written to {}", list.brands.len(), dest.display());
        Ok(dest)
    }

    /// Verifies a downloaded tarball against the pinned sha256 and extracts the brand list.
    pub fn brands_from_tarball(tarball: &[u8]) -> Result<BrandList> {
        let sha = hex(&Sha256::digest(tarball));
        if sha != NSI_TARBALL_SHA256 {
            bail!("{NSI_PACKAGE}-{NSI_VERSION}.tgz has sha256 {sha}, expected {NSI_TARBALL_SHA256}: refusing it");
        }
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
        for entry in archive.entries().context("the tarball is not a gzipped tar")? {
            let entry = entry.context("a corrupt entry in the tarball")?;
            if entry.path().ok().as_deref() != Some(Path::new(NSI_JSON_PATH)) {
                continue;
            }
            if entry.size() > MAX_NSI_JSON_BYTES {
                bail!("{NSI_JSON_PATH} is {} bytes, more than the {MAX_NSI_JSON_BYTES} allowed", entry.size());
            }
            let mut json = Vec::with_capacity(entry.size() as usize);
            entry.take(MAX_NSI_JSON_BYTES).read_to_end(&mut json).context("cannot read nsi.json")?;
            return parse_nsi(&json).with_context(|| format!("{NSI_JSON_PATH} in {NSI_PACKAGE}-{NSI_VERSION}"));
        }
        bail!("the tarball has no {NSI_JSON_PATH}")
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_connect(Some(std::time::Duration::from_secs(30)))
            // No overall limit (slow links are fine), but a stalled connection is an error.
            .timeout_per_read(Some(std::time::Duration::from_secs(60)))
            .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
            // The system's roots, as `tandem fetch` uses: networks that inspect TLS install
            // their CA there. The pinned sha256, not TLS, vouches for the tarball.
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build())
            .build()
            .into()
    }

    /// A bounded GET: refuses bodies over `max` bytes.
    fn get(url: &str, max: u64) -> Result<Vec<u8>> {
        let response = agent().get(url).call().with_context(|| format!("GET {url}"))?;
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(max + 1)
            .read_to_end(&mut body)
            .with_context(|| format!("reading {url}"))?;
        if body.len() as u64 > max {
            bail!("{url} is larger than the {max} bytes allowed");
        }
        Ok(body)
    }

    fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
        let dir = dest.parent().ok_or_else(|| anyhow!("{} has no parent folder", dest.display()))?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let tmp =
            dir.join(format!(".{}.{}.tmp", dest.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
        std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, dest).with_context(|| format!("cannot move {} into place", dest.display())).inspect_err(
            |_| {
                let _ = std::fs::remove_file(&tmp);
            },
        )
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NSI: &str = r#"{
      "_meta": {"version": "9.9.9"},
      "nsi": {
        "brands/shop/shoes": {"items": [
          {"tags": {"brand": "Nike", "shop": "shoes"}},
          {"tags": {"brand": "ABC Schuh-Center"}, "matchNames": ["abc schuhe"]},
          {"tags": {"name": "no brand tag"}}
        ]},
        "brands/shop/clothes": {"items": [{"tags": {"brand": "Nike"}}]},
        "operators/amenity/bank": {"items": [{"tags": {"brand": "Not A Brand Category"}}]}
      }
    }"#;

    #[test]
    fn parses_brand_entries_only() {
        let list = parse_nsi(NSI.as_bytes()).unwrap();
        assert_eq!(list.version, "9.9.9");
        let names: Vec<&str> = list.brands.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["Nike", "ABC Schuh-Center"]);
        assert_eq!(list.brands[0].nsi, ["shop/clothes", "shop/shoes"]);
        assert_eq!(list.brands[1].aliases, ["abc schuhe"]);
        assert_eq!(list.in_category("shop/shoes").count(), 2);
    }

    #[test]
    fn rejects_bad_files() {
        assert!(parse_nsi(b"not json").is_err());
        assert!(parse_nsi(br#"{"nsi": {}}"#).is_err());
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn refuses_a_tarball_with_the_wrong_hash() {
        let err = brands_from_tarball(b"definitely not the release").unwrap_err().to_string();
        assert!(err.contains("refusing"), "{err}");
    }

    #[test]
    fn round_trips_through_the_cache_file() {
        let dir = tempfile::tempdir().unwrap();
        let list = parse_nsi(NSI.as_bytes()).unwrap();
        let path = dir.path().join("b.json");
        std::fs::write(&path, serde_json::to_vec(&list).unwrap()).unwrap();
        assert_eq!(BrandList::load(&path).unwrap(), list);
        assert!(BrandList::load(&dir.path().join("missing.json")).is_err());
    }
}
