//! Categories: the Google product taxonomy (crate `google_taxonomy`, 5,582 categories of the
//! 2021-08-13 release) and two ways to find the category of a text: nearest path in
//! embedding space ([`EmbeddedTaxonomy`]) and a keyword fallback for when no model is loaded
//! ([`KeywordTaxonomy`]).
//!
//! Only paths of depth 2 and more are candidates: the 21 top-level categories
//! ("Electronics", "Hardware") are too broad to decide relevance with.

use crate::encoder::{TextEncoder, TextRole, encode_checked};
use crate::text::{singular, words};
use anyhow::{Context, Result, bail};
use google_taxonomy::ProductCategory;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tandem_models::cosine;

/// The crate exposes categories by id only; ids are below this in the shipped release.
const MAX_TAXONOMY_ID: u32 = 1_000_000;
/// Texts per encoder call when embedding the taxonomy.
const EMBED_CHUNK: usize = 256;
/// Words that say nothing about a category.
const STOP_WORDS: &[&str] = &["and", "for", "the", "of", "with", "other", "miscellaneous"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Category {
    pub id: u32,
    /// "Apparel & Accessories > Shoes".
    pub path: &'static str,
}

impl Category {
    pub fn leaf(&self) -> &'static str {
        self.path.rsplit(" > ").next().unwrap_or(self.path)
    }
    pub fn depth(&self) -> usize {
        self.path.split(" > ").count()
    }
    /// Whether `other` is this category or below it.
    pub fn contains(&self, other: &Category) -> bool {
        other.path == self.path || other.path.strip_prefix(self.path).is_some_and(|r| r.starts_with(" > "))
    }
}

/// Every category, sorted by path.
pub fn categories() -> &'static [Category] {
    static ALL: OnceLock<Vec<Category>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all: Vec<Category> = (0..MAX_TAXONOMY_ID)
            .filter_map(|id| ProductCategory::from_id(id).ok())
            .map(|c| Category { id: c.id(), path: c.name() })
            .collect();
        all.sort_by_key(|c| c.path);
        all
    })
}

/// The candidates for "nearest category" (depth ≥ 2), in `categories()` order.
pub fn candidates() -> &'static [Category] {
    static CANDIDATES: OnceLock<Vec<Category>> = OnceLock::new();
    CANDIDATES.get_or_init(|| categories().iter().copied().filter(|c| c.depth() >= 2).collect())
}

/// The category with exactly this path (case and spacing around " > " as in the taxonomy).
pub fn find_path(path: &str) -> Option<Category> {
    ProductCategory::from_name(path.trim()).ok().map(|c| Category { id: c.id(), path: c.name() })
}

/// Lowercase words of all category paths and their singulars: the product vocabulary that
/// brand matching keeps clear of.
pub fn vocabulary() -> &'static HashSet<String> {
    static VOCAB: OnceLock<HashSet<String>> = OnceLock::new();
    VOCAB.get_or_init(|| {
        let mut v = HashSet::new();
        for c in categories() {
            for w in words(c.path) {
                v.insert(singular(&w).to_string());
                v.insert(w);
            }
        }
        v
    })
}

fn content_words(text: &str) -> Vec<String> {
    words(text).filter(|w| !STOP_WORDS.contains(&w.as_str())).map(|w| singular(&w).to_string()).collect()
}

/// Category by shared words, for tests and model-free use: a candidate scores
/// `2·(share of its leaf's words in the text) + 0.5·(share of its ancestors' words)`, and
/// needs at least one leaf word. Ties go to the shallower path (the more general claim).
pub struct KeywordTaxonomy {
    paths: Vec<(Category, Vec<String>, Vec<String>)>,
}

impl KeywordTaxonomy {
    pub fn new() -> KeywordTaxonomy {
        let paths = candidates()
            .iter()
            .map(|&c| {
                let (ancestors, leaf) = c.path.rsplit_once(" > ").unwrap_or(("", c.path));
                (c, content_words(leaf), content_words(ancestors))
            })
            .collect();
        KeywordTaxonomy { paths }
    }

    pub fn nearest(&self, text: &str) -> Option<(Category, f32)> {
        let text: HashSet<String> = content_words(text).into_iter().collect();
        let share = |ws: &[String]| {
            if ws.is_empty() { 0.0 } else { ws.iter().filter(|w| text.contains(*w)).count() as f32 / ws.len() as f32 }
        };
        let mut best: Option<(Category, f32)> = None;
        for (c, leaf, ancestors) in &self.paths {
            let leaf_share = share(leaf);
            if leaf_share == 0.0 {
                continue;
            }
            let score = 2.0 * leaf_share + 0.5 * share(ancestors);
            let better = match best {
                None => true,
                Some((b, s)) => score > s || (score == s && c.depth() < b.depth()),
            };
            if better {
                best = Some((*c, score));
            }
        }
        best
    }
}

impl Default for KeywordTaxonomy {
    fn default() -> Self {
        KeywordTaxonomy::new()
    }
}

/// The candidate paths embedded by one encoder; nearest category by cosine.
pub struct EmbeddedTaxonomy {
    dim: usize,
    /// `[candidates, dim]`, row-major.
    vectors: Vec<f32>,
}

const FILE_MAGIC: &[u8; 8] = b"TDMTAX01";

impl EmbeddedTaxonomy {
    /// Embeds every candidate path with `encoder` (5,561 texts: about a minute for MiniLM on
    /// two cores), or reads them from `cache_dir` where an earlier run left them for the same
    /// encoder id. A cache file that does not fit is rebuilt, not trusted.
    pub fn load_or_build(encoder: &dyn TextEncoder, cache_dir: Option<&Path>) -> Result<EmbeddedTaxonomy> {
        let file = cache_dir.map(|d| cache_file(d, encoder.id()));
        if let Some(f) = &file
            && let Ok(t) = EmbeddedTaxonomy::read(f)
        {
            return Ok(t);
        }
        let paths: Vec<&str> = candidates().iter().map(|c| c.path).collect();
        let mut vectors = Vec::new();
        let mut dim = 0;
        for chunk in paths.chunks(EMBED_CHUNK) {
            for v in encode_checked(encoder, chunk, TextRole::Passage).context("embedding the product taxonomy")? {
                dim = v.len();
                vectors.extend(v);
            }
        }
        let t = EmbeddedTaxonomy { dim, vectors };
        if let Some(f) = &file {
            // A cache that cannot be written only costs time next run.
            if let Err(e) = t.write(f) {
                eprintln!("warning: cannot cache the taxonomy embeddings at {}: {e:#}", f.display());
            }
        }
        Ok(t)
    }

    /// The nearest candidate to an embedding and its cosine.
    pub fn nearest(&self, embedding: &[f32]) -> Option<(Category, f32)> {
        self.nearest_matching(embedding, |_| true)
    }

    /// The nearest candidate that `keep` accepts, and its cosine.
    pub fn nearest_matching(&self, embedding: &[f32], keep: impl Fn(&Category) -> bool) -> Option<(Category, f32)> {
        if embedding.len() != self.dim || self.dim == 0 {
            return None;
        }
        self.vectors
            .chunks_exact(self.dim)
            .zip(candidates())
            .filter(|(_, c)| keep(c))
            .map(|(v, c)| (*c, cosine(v, embedding)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    fn read(path: &Path) -> Result<EmbeddedTaxonomy> {
        let bytes = std::fs::read(path)?;
        Self::from_bytes(&bytes).with_context(|| path.display().to_string())
    }

    /// Reads the bytes of a taxonomy embedding file (what [`EmbeddedTaxonomy::load_or_build`]
    /// caches; a server hands it to browsers so they need not embed 5,561 paths).
    pub fn from_bytes(bytes: &[u8]) -> Result<EmbeddedTaxonomy> {
        let header = FILE_MAGIC.len() + 8;
        if bytes.len() < header || &bytes[..FILE_MAGIC.len()] != FILE_MAGIC {
            bail!("not a taxonomy embedding file");
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let (count, dim) = (u32_at(8), u32_at(12));
        if count != candidates().len() || dim == 0 || Some(bytes.len() - header) != count.checked_mul(dim * 4) {
            bail!("does not match this taxonomy ({count} paths of {dim} floats in {} bytes)", bytes.len());
        }
        let vectors: Vec<f32> =
            bytes[header..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        if vectors.iter().any(|x| !x.is_finite()) {
            bail!("non-finite values");
        }
        Ok(EmbeddedTaxonomy { dim, vectors })
    }

    /// Length of each vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    fn write(&self, path: &Path) -> Result<()> {
        let dir = path.parent().context("no parent folder")?;
        std::fs::create_dir_all(dir)?;
        let mut bytes = Vec::with_capacity(16 + self.vectors.len() * 4);
        bytes.extend_from_slice(FILE_MAGIC);
        bytes.extend_from_slice(&(candidates().len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(self.dim as u32).to_le_bytes());
        self.vectors.iter().for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// `<cache>/taxonomy/<model id, made file-safe>.emb`.
pub fn cache_file(cache_dir: &Path, model_id: &str) -> PathBuf {
    let safe: String = model_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    cache_dir.join("taxonomy").join(format!("google-0.3.2-{safe}.emb"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::NgramEncoder;

    #[test]
    fn the_crate_ships_the_whole_taxonomy() {
        assert_eq!(categories().len(), 5582);
        assert_eq!(candidates().len(), 5582 - 21);
        let shoes = find_path("Apparel & Accessories > Shoes").unwrap();
        assert_eq!((shoes.id, shoes.leaf(), shoes.depth()), (187, "Shoes", 2));
        assert!(find_path("Apparel & Accessories").unwrap().contains(&shoes));
        assert!(!shoes.contains(&find_path("Apparel & Accessories").unwrap()));
        assert!(find_path("Shoes").is_none());
        assert!(vocabulary().contains("shoe") && vocabulary().contains("shoes"));
    }

    #[test]
    fn imagenet_product_categories_are_taxonomy_paths() {
        for class in 0..1000 {
            if let Some(path) = tandem_models::vision::product_category(class) {
                assert!(find_path(path).is_some(), "class {class}: '{path}' is not in the taxonomy");
            }
        }
    }

    #[test]
    fn keyword_fallback_finds_plausible_paths() {
        let k = KeywordTaxonomy::new();
        let path = |t: &str| k.nearest(t).map(|(c, _)| c.path);
        assert_eq!(path("nike running shoes"), Some("Apparel & Accessories > Shoes"));
        assert_eq!(path("Casio G-Shock watch black"), Some("Apparel & Accessories > Jewelry > Watches"));
        assert_eq!(path("qwzx"), None);
    }

    #[test]
    fn embedded_taxonomy_caches_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let enc = NgramEncoder::new(32);
        let built = EmbeddedTaxonomy::load_or_build(&enc, Some(dir.path())).unwrap();
        let file = cache_file(dir.path(), enc.id());
        assert!(file.is_file());
        let read = EmbeddedTaxonomy::read(&file).unwrap();
        assert_eq!(read.vectors, built.vectors);
        let query = enc.encode(&["Apparel & Accessories > Shoes"]).unwrap();
        assert_eq!(read.nearest(&query[0]).unwrap().0.id, 187);
        assert!(read.nearest(&[1.0]).is_none(), "a wrong-length embedding has no nearest category");
        // A damaged file is rebuilt.
        std::fs::write(&file, b"TDMTAX01garbage").unwrap();
        assert!(EmbeddedTaxonomy::load_or_build(&enc, Some(dir.path())).is_ok());
    }
}
