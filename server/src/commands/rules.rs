//! `tandem rules check PLUGIN.wasm --cases cases.jsonl`: runs a rule plugin on test cases
//! through the same sandboxed host the server uses, printing each verdict with its cost.

use anyhow::{Result, bail};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Run a plugin on every case of a JSON-lines file: one JSON line per case (verdict,
    /// reason, fuel, time, whether it matched `expect`), then a summary line.
    Check {
        /// The rule plugin, a WebAssembly component targeting tandem:rules@0.1.x.
        plugin: PathBuf,
        /// JSON lines, one case each (see bindings/rules/README.md).
        #[arg(long)]
        cases: PathBuf,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        RulesCommand::Check { plugin, cases } => {
            let summary = tandem_plugins::cli::rules_check(&plugin, &cases, &mut std::io::stdout().lock())?;
            if !summary.ok() {
                bail!(
                    "{}: {} of {} calls failed, {} of {} expectations not met",
                    plugin.display(),
                    summary.errors,
                    summary.cases,
                    summary.failed,
                    summary.expected
                );
            }
            Ok(())
        }
    }
}
