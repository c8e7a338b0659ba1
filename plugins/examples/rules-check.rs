//! Stand-in for `tandem rules check PLUGIN.wasm --cases cases.jsonl` until the
//! `tandem` binary wires it up:
//!
//!     cargo run -p tandem-plugins --example rules-check -- PLUGIN.wasm --cases cases.jsonl
//!
//! Exits 1 when a case's verdict differs from its `expect`, 2 on usage or
//! input errors.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (plugin, cases) = match args.as_slice() {
        [plugin, flag, cases] if flag == "--cases" => (PathBuf::from(plugin), PathBuf::from(cases)),
        _ => {
            eprintln!("usage: rules-check PLUGIN.wasm --cases cases.jsonl");
            return ExitCode::from(2);
        }
    };
    match tandem_plugins::cli::rules_check(&plugin, &cases, &mut std::io::stdout().lock()) {
        Ok(summary) if summary.ok() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
