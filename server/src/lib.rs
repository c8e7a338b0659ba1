//! `tandem`'s command line and HTTP server as a library: the subcommands (`commands/`) and
//! `tandem serve` (`serve/`). The binary (`main.rs`) is only the CLI dispatch; the library
//! exists so that the fuzz targets (fuzz/) can reach the parsers of the CLI's inputs and the
//! server's request bodies.

pub mod commands;
pub mod serve;
