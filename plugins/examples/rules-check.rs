//! Stand-in for `tandem rules check PLUGIN.wasm --cases cases.jsonl` until the
//! `tandem` binary wires it up:
//!
//!     cargo run -p tandem-plugins --example rules-check -- PLUGIN.wasm --cases cases.jsonl [--batch]
//!
//! `--batch` checks consecutive cases with the same query in one batch.
//! Exits 1 when a case's verdict differs from its `expect`, 2 on usage or
//! input errors.

use std::path::PathBuf;
use std::process::ExitCode;

use tandem_plugins::cli::{CheckOptions, rules_check_with};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (plugin, cases, batch) = match args.as_slice() {
        [plugin, flag, cases] if flag == "--cases" => (PathBuf::from(plugin), PathBuf::from(cases), false),
        [plugin, flag, cases, batch] if flag == "--cases" && batch == "--batch" => {
            (PathBuf::from(plugin), PathBuf::from(cases), true)
        }
        _ => {
            eprintln!("usage: rules-check PLUGIN.wasm --cases cases.jsonl [--batch]");
            return ExitCode::from(2);
        }
    };
    let options = CheckOptions { batch, ..Default::default() };
    match rules_check_with(&plugin, &cases, &options, &mut std::io::stdout().lock()) {
        Ok(summary) if summary.ok() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
