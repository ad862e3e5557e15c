//! The `peerfence` command. Today it validates configuration; the daemon (`peerfence run`) is
//! built on the same core in a later step and will live here too.
//!
//! This binary is the only part of the root package that touches files; the library (the core)
//! never does, which `clippy.toml` enforces.

use clap::{Parser, Subcommand};
use peerfence::config::RawConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "peerfence",
    version,
    about = "Quorum-gated fencing for hypervisor clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file: prints every problem (field, value, rule) and exits 2 on
    /// error, 0 when valid.
    CheckConfig {
        /// The TOML file.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckConfig { path } => check_config(&path),
    }
}

#[allow(clippy::disallowed_methods)] // reading the file the operator named is this command's job
fn read(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let text = match read(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let config = RawConfig::from_toml(&text).and_then(|raw| raw.validate());
    match config {
        Ok(c) => {
            println!(
                "{}: valid — cluster {} with {} members (quorum {}), mode {:?}, digest {:016x}",
                path.display(),
                c.cluster,
                c.n(),
                c.quorum(),
                c.mode,
                c.digest().0
            );
            println!(
                "  derived: storage failure detected within {}, promise lifetime {}, poison-pill confirmation wait {}",
                peerfence::config::fmt_duration(c.storage_failed_detect()),
                peerfence::config::fmt_duration(c.promise_ttl()),
                if c.has_poison_pill() {
                    peerfence::config::fmt_duration(c.pill_confirm_wait())
                } else {
                    "n/a (no poison-pill level)".into()
                }
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: {errors}", path.display());
            ExitCode::from(2)
        }
    }
}
