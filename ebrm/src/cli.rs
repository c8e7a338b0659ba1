//! `tandem relevance --query "..." --items items.jsonl [--logic product|goedel|lukasiewicz]`:
//! one JSON line per item, in input order, with its score, rank, grade and the entities that
//! decided.

use crate::encoder::{PairScorer, TextEncoder};
use crate::entities::{Extractor, Item};
use crate::logic::Logic;
use crate::pipeline::{CategorySearch, Ebrm, Ranking};
use crate::vocab::{BrandList, brands_path};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Longest line of an items file.
pub const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct RelevanceArgs {
    pub query: String,
    /// A JSON-lines file of items; "-" reads standard input.
    pub items: PathBuf,
    pub logic: Logic,
    /// tandem's cache folder (`models::fetch::cache_root()`): the brand list is read from
    /// `vocab/` there and the taxonomy embeddings are cached under `taxonomy/`.
    pub cache_dir: PathBuf,
    /// Print every entity of every item, not only the deciding ones.
    pub all_entities: bool,
}

/// Reads items, one JSON object per line; blank lines are skipped. Errors name the line.
pub fn read_items(reader: impl Read, name: &str) -> Result<Vec<Item>> {
    let mut reader = BufReader::new(reader);
    let mut items = Vec::new();
    let mut line = Vec::new();
    for n in 1.. {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("{name}: cannot read line {n}"))?;
        if read == 0 {
            break;
        }
        if line.len() > MAX_LINE_BYTES && !line.ends_with(b"\n") {
            bail!("{name} line {n}: longer than {MAX_LINE_BYTES} bytes");
        }
        let text = std::str::from_utf8(&line).map_err(|e| anyhow::anyhow!("{name} line {n}: not UTF-8 ({e})"))?;
        if text.trim().is_empty() {
            continue;
        }
        items.push(Item::from_json(text.as_bytes()).with_context(|| format!("{name} line {n}"))?);
        if items.len() > crate::pipeline::MAX_ITEMS {
            bail!("{name}: more than {} items", crate::pipeline::MAX_ITEMS);
        }
    }
    Ok(items)
}

/// The extractor over the fetched brand list, or over none (with a warning) when the list
/// has not been fetched: brands then come from explicit attributes only.
pub fn load_extractor(cache_dir: &Path) -> Result<Extractor> {
    let path = brands_path(cache_dir);
    let list = if path.is_file() {
        BrandList::load(&path)?
    } else {
        eprintln!(
            "warning: no brand list at {} (run `tandem fetch brands`); brands come from item attributes only",
            path.display()
        );
        BrandList::empty()
    };
    Extractor::new(&list)
}

/// The whole command: builds the engine around `encoder`, ranks and prints.
pub fn relevance_cli<E: TextEncoder>(encoder: E, args: &RelevanceArgs, out: &mut dyn Write) -> Result<()> {
    let (_, ranking) = rank_cli(encoder, args)?;
    write_ranking(&ranking, args.all_entities, out)
}

/// The command without the printing: the items read and their ranking.
pub fn rank_cli<E: TextEncoder>(encoder: E, args: &RelevanceArgs) -> Result<(Vec<Item>, Ranking)> {
    rank_cli_with(encoder, None, args)
}

/// [`rank_cli`] with QE scores from a cross-encoder, when given.
pub fn rank_cli_with<E: TextEncoder>(
    encoder: E,
    qe_model: Option<Box<dyn PairScorer>>,
    args: &RelevanceArgs,
) -> Result<(Vec<Item>, Ranking)> {
    let items = if args.items.as_os_str() == "-" {
        read_items(std::io::stdin().lock(), "stdin")?
    } else {
        let file = std::fs::File::open(&args.items).with_context(|| format!("cannot open {}", args.items.display()))?;
        read_items(file, &args.items.display().to_string())?
    };
    let extractor = load_extractor(&args.cache_dir)?;
    let mut engine =
        Ebrm::new(encoder, extractor, CategorySearch::Embedding { cache_dir: Some(args.cache_dir.clone()) });
    if let Some(scorer) = qe_model {
        engine = engine.with_pair_scorer(scorer);
    }
    let ranking = engine.rank(&args.query, &items)?.with_logic(args.logic);
    Ok((items, ranking))
}

/// One JSON line per item, input order.
pub fn write_ranking(ranking: &Ranking, all_entities: bool, out: &mut dyn Write) -> Result<()> {
    for line in ranking_lines(ranking, all_entities)? {
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The JSON object [`write_ranking`] prints for each item, input order.
pub fn ranking_lines(ranking: &Ranking, all_entities: bool) -> Result<Vec<serde_json::Value>> {
    let order = ranking.order();
    let mut rank = vec![0; order.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r + 1;
    }
    let mut lines = Vec::with_capacity(ranking.items.len());
    for item in &ranking.items {
        let deciding: Vec<_> = item.deciding.iter().map(|&i| &item.entities[i]).collect();
        let mut line = json!({
            "index": item.index,
            "id": item.id,
            "title": item.title,
            "score": item.score,
            "rank": rank[item.index],
            "grade": item.grade,
            "logic": ranking.config.logic,
            "deciding": deciding,
            "explanation": item.explanation(),
        });
        if all_entities {
            line["entities"] = serde_json::to_value(&item.entities)?;
        }
        lines.push(line);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::NgramEncoder;

    #[test]
    fn reads_items_and_names_bad_lines() {
        let ok = read_items("{\"title\": \"a\"}\n\n{\"title\": \"b\", \"brand\": \"x\"}".as_bytes(), "t").unwrap();
        assert_eq!(ok.len(), 2);
        let err = |input: &[u8]| format!("{:#}", read_items(input, "items.jsonl").unwrap_err());
        assert!(
            err(b"{\"title\": \"a\"}\n{\"brand\": \"x\"}\n").contains("items.jsonl line 2: the item has no 'title'")
        );
        assert!(err(b"{\"title\": \"\xff\"}\n").contains("line 1: not UTF-8"));
        assert!(err(b"nonsense\n").contains("line 1"));
        let long = format!("{{\"title\": \"{}\"}}", "a".repeat(MAX_LINE_BYTES + 10));
        assert!(err(long.as_bytes()).contains("longer than"));
    }

    #[test]
    fn prints_one_line_per_item() {
        let dir = tempfile::tempdir().unwrap();
        let items = dir.path().join("items.jsonl");
        std::fs::write(
            &items,
            concat!(
                r#"{"title": "Nike running shoes", "category": "Apparel & Accessories > Shoes"}"#,
                "\n",
                r#"{"title": "Puma running shoes", "category": "Apparel & Accessories > Shoes"}"#
            ),
        )
        .unwrap();
        let list = crate::vocab::BrandList {
            version: crate::vocab::NSI_VERSION.into(),
            brands: ["Nike", "Puma"]
                .iter()
                .map(|n| crate::vocab::Brand { name: n.to_string(), aliases: vec![], nsi: vec![] })
                .collect(),
        };
        let brands = crate::vocab::brands_path(dir.path());
        std::fs::create_dir_all(brands.parent().unwrap()).unwrap();
        std::fs::write(&brands, serde_json::to_vec(&list).unwrap()).unwrap();
        let args = RelevanceArgs {
            query: "nike shoes".into(),
            items,
            logic: Logic::Goedel,
            cache_dir: dir.path().to_path_buf(),
            all_entities: true,
        };
        let mut out = Vec::new();
        relevance_cli(NgramEncoder::default(), &args, &mut out).unwrap();
        let lines: Vec<serde_json::Value> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["logic"], "goedel");
        assert!(lines[0]["score"].as_f64().unwrap() >= lines[1]["score"].as_f64().unwrap(), "{lines:#?}");
        assert_eq!(lines[0]["rank"], 1);
        assert!(lines[0]["entities"].is_array());
    }
}
