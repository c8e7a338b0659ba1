//! Items per second for one realistic request: one query, 200 items whose entities overlap
//! (10 brands, 12 models, 6 colors, 3 product nouns), against encoding every query-title pair
//! with the same encoder.
//!
//! `cargo run --release -p tandem-ebrm --bin ebrm_bench -- [--encoder minilm|ngram] [--reps N]`
//!
//! Cases:
//! - baseline: encode the query and the 200 titles, cosine each (plain bi-encoder relevance);
//! - cold: everything cold, the first request ever (every item text is encoded for the
//!   similarity prior, and read for the checks);
//! - cold QE: a new query over a known catalogue (item views and item vectors kept, as an
//!   index stores them): only the query is encoded;
//! - warm: a repeated query, every QE score cached.

use anyhow::Result;
use clap::Parser;
use std::time::Instant;
use tandem_ebrm::encoder::ModelEncoder;
use tandem_ebrm::vocab::{Brand, BrandList};
use tandem_ebrm::{CategorySearch, Ebrm, Extractor, Item, NgramEncoder, TextEncoder};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "minilm")]
    encoder: String,
    #[arg(long, default_value_t = 5)]
    reps: usize,
    #[arg(long, default_value = "cpu")]
    backend: String,
}

const BRANDS: &[&str] =
    &["Nike", "Adidas", "Puma", "Asics", "Reebok", "Brooks", "Saucony", "Mizuno", "Hoka", "Salomon"];
const COLORS: &[&str] = &["black", "white", "red", "blue", "grey", "green"];
const NOUNS: &[&str] = &["Running Shoes", "Trail Shoes", "Walking Shoes"];

fn items() -> Vec<Item> {
    (0..200)
        .map(|i| {
            let brand = BRANDS[i % BRANDS.len()];
            let model = format!("Vantor {}", 30 + (i * 7) % 12);
            let title = format!(
                "{brand} {model} {} {} {}",
                NOUNS[i % 3],
                COLORS[(i / 3) % 6],
                ["9 US", "10 US", "11 US"][i % 3]
            );
            let item = Item::new(title).with_id(format!("sku-{i}"));
            if i % 2 == 0 { item.with_attribute("category", "Apparel & Accessories > Shoes") } else { item }
        })
        .collect()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cache = tandem_models::fetch::cache_root()?;
    match args.encoder.as_str() {
        "ngram" => bench(NgramEncoder::default(), &cache, args.reps),
        "minilm" => {
            let dir = tandem_models::fetch::ensure(tandem_models::registry::known_model("minilm")?)?;
            bench(ModelEncoder::load(&dir, args.backend.parse()?, "minilm")?, &cache, args.reps)
        }
        other => anyhow::bail!("unknown encoder '{other}' (minilm, ngram)"),
    }
}

fn bench<E: TextEncoder>(encoder: E, cache: &std::path::Path, reps: usize) -> Result<()> {
    let brands = BrandList {
        version: "bench".into(),
        brands: BRANDS.iter().map(|b| Brand { name: b.to_string(), aliases: vec![], nsi: vec![] }).collect(),
    };
    let engine = Ebrm::new(
        encoder,
        Extractor::new(&brands)?,
        CategorySearch::Embedding { cache_dir: Some(cache.to_path_buf()) },
    );
    let items = items();
    let query = "nike vantor 35 running shoes red";
    engine.rank(query, &items)?; // loads the taxonomy embeddings and warms the encoder
    let reps = reps.max(1);
    let time = |label: &str, mut run: Box<dyn FnMut() -> Result<usize> + '_>| -> Result<f64> {
        let (mut total, mut texts) = (0.0, 0);
        for _ in 0..reps {
            let start = Instant::now();
            texts = run()?;
            total += start.elapsed().as_secs_f64();
        }
        let per_request = total / reps as f64;
        println!(
            "{label:<10} {:>10.1} items/s  {:>9.3} ms/request  {:>8.1} µs/item  {texts:>4} texts encoded",
            items.len() as f64 / per_request,
            per_request * 1e3,
            per_request * 1e6 / items.len() as f64
        );
        Ok(per_request)
    };
    println!("encoder {}: 1 query x {} items, {reps} repetitions", engine.encoder().id(), items.len());
    let baseline = time(
        "baseline",
        Box::new(|| {
            engine.cosine_baseline(query, &items, false)?;
            Ok(items.len() + 1)
        }),
    )?;
    let cold = time(
        "cold",
        Box::new(|| {
            engine.clear_caches(true, true);
            Ok(engine.rank(query, &items)?.encoded_texts)
        }),
    )?;
    let cold_qe = time(
        "cold QE",
        Box::new(|| {
            engine.clear_caches(true, false);
            Ok(engine.rank(query, &items)?.encoded_texts)
        }),
    )?;
    let warm = time("warm", Box::new(|| Ok(engine.rank(query, &items)?.encoded_texts)))?;
    println!(
        "per item, baseline is {:.1}x the cost of warm EBRM, {:.2}x cold QE, {:.2}x cold",
        baseline / warm,
        baseline / cold_qe,
        baseline / cold
    );
    println!("QE cache: {:?}", engine.cache_stats());
    Ok(())
}
