//! Writes the generated ESCI-labelled evaluation set (see `tandem_ebrm::eval::generate`).
//!
//! `cargo run -p tandem-ebrm --bin make_eval -- [--out FILE] [--queries N] [--seed S]`
//! fetches the pinned name-suggestion-index brand list into tandem's cache if it is not there.

use anyhow::{Context, Result};
use clap::Parser;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use tandem_ebrm::eval::generate::{branches, generate};
use tandem_ebrm::vocab::{BrandList, fetch_brands};
use tandem_ebrm::{Extractor, eval::Pair};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/eval/esci-generated.jsonl"))]
    out: PathBuf,
    #[arg(long, default_value_t = 100)]
    queries: usize,
    #[arg(long, default_value_t = 2024)]
    seed: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cache = tandem_models::fetch::cache_root()?;
    let brands = BrandList::load(&fetch_brands(&cache)?)?;
    let extractor = Extractor::new(&brands)?;
    let pairs = generate(&brands, &extractor, args.queries, args.seed)?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?,
    );
    for p in &pairs {
        serde_json::to_writer(&mut out, p)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    let mut labels: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &pairs {
        *labels.entry(p.label.as_str()).or_default() += 1;
    }
    let queries = pairs.iter().map(|p| p.query_id).collect::<std::collections::HashSet<_>>().len();
    let brands_used = pairs.iter().filter_map(brand_of).collect::<std::collections::HashSet<_>>().len();
    eprintln!(
        "{} pairs, {queries} queries, labels {labels:?}, {} taxonomy branches, {brands_used} brands (NSI {}) -> {}",
        pairs.len(),
        branches(&pairs),
        brands.version,
        args.out.display()
    );
    Ok(())
}

fn brand_of(p: &Pair) -> Option<String> {
    p.item.attributes.get("brand").cloned()
}
