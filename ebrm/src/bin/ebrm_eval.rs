//! Evaluates EBRM (each logic family) against plain query-title cosine on the generated set,
//! or on the hand-labelled set (`--hand`).
//!
//! `cargo run --release -p tandem-ebrm --bin ebrm_eval -- [--set FILE | --hand FILE --split
//! dev|held|all] [--model minilm|multilingual-e5-small|PATH|ngram] [--json FILE]`. The model
//! and the brand list are fetched into tandem's cache when missing. On the generated set,
//! calibration is fitted on the even query ids and the figures that count are those of the
//! odd (held-out) ones.

use anyhow::Result;
use clap::Parser;
use std::path::{Path, PathBuf};
use tandem_ebrm::encoder::ModelEncoder;
use tandem_ebrm::eval::hand::{HandReport, SCORERS, fit_similarity, hand_report, read_hand};
use tandem_ebrm::eval::{Report, eval_cache, evaluate, group, read_pairs};
use tandem_ebrm::vocab::{BrandList, fetch_brands};
use tandem_ebrm::{CategorySearch, Ebrm, EntityKind, Extractor, NgramEncoder, TextEncoder};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/eval/esci-generated.jsonl"))]
    set: PathBuf,
    /// The encoder: a known text encoder (minilm, multilingual-e5-small), a model folder or
    /// E5S1 file, or ngram (model-free, for a quick check).
    #[arg(long, default_value = "minilm")]
    model: PathBuf,
    /// cpu, wgpu or auto.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// The encoder's linear layers in f32 or bf16.
    #[arg(long, default_value = "f32")]
    precision: tandem_models::Precision,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Evaluate on the hand-labelled set instead (eval/esci-hand.jsonl), per language and
    /// hard-case kind, against the encoder's cosine.
    #[arg(long)]
    hand: Option<PathBuf>,
    /// With --hand: dev (tuned on), held (the held-out split) or all.
    #[arg(long, default_value = "dev")]
    split: String,
    /// With --hand --split dev: fit the similarity prior's calibration (σ(a·cos + b), the
    /// probability that an item is exact) for this encoder and print it.
    #[arg(long)]
    fit: bool,
    /// With --hand: print the ranking and explanations of the queries containing this text.
    #[arg(long)]
    show: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cache = tandem_models::fetch::cache_root()?;
    let brands = BrandList::load(&fetch_brands(&cache)?)?;
    if let Some(hand) = &args.hand {
        let queries = read_hand(hand)?;
        let engine =
            Ebrm::new(encoder(&args)?, Extractor::new(&brands)?, CategorySearch::Keywords).with_cache(eval_cache());
        let report = hand_report(&engine, &queries, &args.split)?;
        print_hand(&report);
        if args.fit {
            let fitted = fit_similarity(&engine, &queries, &args.split)?;
            let l = fitted.constrained[EntityKind::Similarity.index()];
            println!(
                "similarity prior fitted on {}: a {:.2}, b {:.2} (cosine {:.3} is even odds)",
                args.split,
                l.a,
                l.b,
                -l.b / l.a
            );
        }
        if let Some(needle) = &args.show {
            for q in queries.iter().filter(|q| q.query.contains(needle.as_str())) {
                let r = engine.rank(&q.query, &q.items)?;
                println!("\n{} [{}]", q.query, q.hard.join(", "));
                for i in r.order() {
                    let it = &r.items[i];
                    println!("  {} {:.3} {:?} {}", q.labels[i].letter(), it.score, it.grade, it.title);
                    for e in &it.entities {
                        println!("      {} '{}' qe {:.2} {}", e.entity.kind.name(), e.entity.value, e.qe, e.evidence);
                    }
                }
            }
        }
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        }
        return Ok(());
    }
    let queries = group(read_pairs(&args.set)?);
    let report = run(encoder(&args)?, &brands, &cache, &queries)?;
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

/// The encoder `--model` names; a model's id is its registry name (or its folder's or file's).
fn encoder(args: &Args) -> Result<Box<dyn TextEncoder>> {
    if args.model == Path::new("ngram") {
        return Ok(Box::new(NgramEncoder::default()));
    }
    let path = tandem_models::fetch::encoder_path(Some(&args.model))?;
    let (embedder, variant) =
        tandem_models::Embedder::load_adapted(&path, None, args.backend.parse()?, args.precision)?;
    let id = format!("{}{variant}", tandem_models::embed::model_id(&path));
    Ok(Box::new(ModelEncoder::new(embedder, id)))
}

fn print_hand(r: &HandReport) {
    println!("encoder {}, split {}: nDCG / E-vs-rest pairwise (queries)", r.encoder, r.split);
    print!("{:<22}", "group");
    for s in SCORERS {
        print!(" {s:>20}");
    }
    println!();
    for (group, m) in &r.groups {
        print!("{group:<22}");
        for s in SCORERS {
            let x = &m[*s];
            print!(" {:>20}", format!("{:.3} / {:.3} ({})", x.ndcg, x.pairwise, x.queries));
        }
        println!();
    }
    println!("lowest nDCG (ebrm product vs cosine title+attrs):");
    for (q, e, c) in &r.worst {
        println!("  {e:.3} {c:.3}  {q}");
    }
}

fn run(
    encoder: Box<dyn TextEncoder>,
    brands: &BrandList,
    cache: &std::path::Path,
    queries: &[tandem_ebrm::eval::Query],
) -> Result<Report> {
    let engine =
        Ebrm::new(encoder, Extractor::new(brands)?, CategorySearch::Embedding { cache_dir: Some(cache.to_path_buf()) })
            .with_cache(eval_cache());
    evaluate(&engine, queries)
}

fn print_report(r: &Report) {
    println!(
        "encoder {}: {} train / {} test queries ({} test pairs)",
        r.encoder, r.train_queries, r.test_queries, r.test_pairs
    );
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "scorer", "test nDCG", "test pair", "train nDCG", "train pair", "grades"
    );
    for (name, m) in &r.test {
        let t = &r.train[name];
        let g = r.grade_accuracy.get(name).map_or("-".to_string(), |g| format!("{g:.3}"));
        println!("{name:<14} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {g:>8}", m.ndcg, m.pairwise, t.ndcg, t.pairwise);
    }
    println!(
        "calibration (a, b) per kind, constrained: {:?}",
        r.calibration.constrained.iter().map(|l| (l.a, l.b)).collect::<Vec<_>>()
    );
    println!(
        "calibration (a, b) per kind, free:        {:?}",
        r.calibration.free.iter().map(|l| (l.a, l.b)).collect::<Vec<_>>()
    );
    for (logic, c) in &r.grade_confusion {
        println!("grades {logic} {:?}: {c:?}", r.grade_thresholds[logic]);
    }
    println!("QE cache: {:?}", r.cache);
}
