//! Evaluates EBRM (each logic family) against plain query-title cosine on the generated set.
//!
//! `cargo run --release -p tandem-ebrm --bin ebrm_eval -- [--set FILE] [--encoder minilm|ngram]
//! [--model-dir DIR] [--json FILE]`. The MiniLM model and the brand list are fetched into
//! tandem's cache when missing. Calibration is fitted on the even query ids and the figures
//! that count are those of the odd (held-out) ones.

use anyhow::Result;
use clap::Parser;
use std::path::PathBuf;
use tandem_ebrm::encoder::ModelEncoder;
use tandem_ebrm::eval::hand::{HandQuery, HandReport, SCORERS, hand_report, read_hand};
use tandem_ebrm::eval::{Report, eval_cache, evaluate, group, read_pairs};
use tandem_ebrm::vocab::{BrandList, fetch_brands};
use tandem_ebrm::{CategorySearch, Ebrm, Extractor, NgramEncoder, TextEncoder};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/eval/esci-generated.jsonl"))]
    set: PathBuf,
    /// minilm or ngram (model-free, for a quick check).
    #[arg(long, default_value = "minilm")]
    encoder: String,
    /// A sentence-transformers folder; default: the fetched MiniLM.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// cpu, wgpu or auto.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Evaluate on the hand-labelled set instead (eval/esci-hand.jsonl), per language and
    /// hard-case kind, against MiniLM cosine.
    #[arg(long)]
    hand: Option<PathBuf>,
    /// With --hand: dev (tuned on), held (the held-out split) or all.
    #[arg(long, default_value = "dev")]
    split: String,
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
        let report = match args.encoder.as_str() {
            "ngram" => run_hand(NgramEncoder::default(), &brands, &queries, &args.split)?,
            "minilm" => run_hand(minilm(&args)?, &brands, &queries, &args.split)?,
            other => anyhow::bail!("unknown encoder '{other}' (minilm, ngram)"),
        };
        print_hand(&report);
        if let Some(needle) = &args.show {
            let engine = Ebrm::new(minilm(&args)?, Extractor::new(&brands)?, CategorySearch::Keywords);
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
    let report = match args.encoder.as_str() {
        "ngram" => run(NgramEncoder::default(), &brands, &cache, &queries)?,
        "minilm" => run(minilm(&args)?, &brands, &cache, &queries)?,
        other => anyhow::bail!("unknown encoder '{other}' (minilm, ngram)"),
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

fn minilm(args: &Args) -> Result<ModelEncoder> {
    let dir = match &args.model_dir {
        Some(d) => d.clone(),
        None => tandem_models::fetch::ensure(tandem_models::registry::known_model("minilm")?)?,
    };
    ModelEncoder::load(&dir, args.backend.parse()?, "minilm")
}

fn run_hand<E: TextEncoder>(encoder: E, brands: &BrandList, queries: &[HandQuery], split: &str) -> Result<HandReport> {
    let engine = Ebrm::new(encoder, Extractor::new(brands)?, CategorySearch::Keywords).with_cache(eval_cache());
    hand_report(&engine, queries, split)
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

fn run<E: TextEncoder>(
    encoder: E,
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
