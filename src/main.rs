//! The `peerfence` command: the daemon (`init` once, then `run`), certificate and key management (`certs`),
//! configuration checks (`check-config`), and the operator's commands against a running
//! daemon (`status`, `fences`, `maintenance`, `arm`, `disarm`, `fence`). `main` stays thin: parse, dispatch, map errors to exit
//! codes with messages that say what to do.

use clap::{Parser, Subcommand};
use peerfence::daemon::client::{self, Request};
use peerfence::daemon::config::RawDaemonConfig;
use peerfence::daemon::{certs, store};
use std::io::Write;
use std::path::{Path, PathBuf};
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
    /// Start five daemons on this machine (loopback only) and watch them fence a crashed host
    /// and ride out a storage outage without fencing anyone. Start here.
    Demo(peerfence::daemon::demo::Args),
    /// Create this member's durable state in node.data_dir: once before its first `run`, and
    /// again after the state was lost.
    ///
    /// `run` never starts from nothing. If this host's heartbeat slot on the shared storage shows
    /// that it ran before (its state was lost: a wiped disk, a deleted file), the state recovers
    /// above its last generation and the member votes for nothing until its old promises have
    /// lapsed. Refuses when the state file exists.
    Init {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Go ahead even when no storage path can be read. The generation this host last used
        /// is then unknown: only for a host that never ran peerfence in this cluster.
        #[arg(long)]
        no_storage: bool,
    },
    /// Run the peer daemon (after `peerfence init`).
    Run {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file: prints every problem (field, value, rule) and exits 2 on
    /// error, 0 when valid.
    CheckConfig {
        /// The TOML file.
        path: PathBuf,
    },
    /// Manage the cluster CA, member certificates and vote keys.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Drop-in for CloudStack's kvmheartbeat.sh (same flags), answered by the local daemon under
    /// quorum: it never reboots the host itself. See docs/CLOUDSTACK.md.
    CloudstackHeartbeat(peerfence::daemon::cloudstack::Args),
    /// Show the cluster as the local daemon sees it: a table of hosts, their states and why.
    Status {
        #[command(flatten)]
        common: client::Common,
    },
    /// Show the fence history the local daemon knows (voters, evidence, confirmation).
    Fences {
        #[command(flatten)]
        common: client::Common,
    },
    /// Put a host in maintenance (never fenced) or take it out; cluster-wide and persisted.
    Maintenance {
        /// Member name.
        host: String,
        /// `on` or `off`.
        state: OnOff,
        #[command(flatten)]
        common: client::Common,
        #[command(flatten)]
        auth: client::Auth,
    },
    /// Arm the cluster: fencing allowed again (cluster-wide and persisted).
    Arm {
        #[command(flatten)]
        common: client::Common,
        #[command(flatten)]
        auth: client::Auth,
    },
    /// Disarm the cluster: nobody proposes or votes for a fence (cluster-wide and persisted).
    Disarm {
        #[command(flatten)]
        common: client::Common,
        #[command(flatten)]
        auth: client::Auth,
    },
    /// Ask for a fence of a host now. The quorum still decides: peers vote only for a host
    /// they see down.
    Fence {
        /// Member name.
        host: String,
        #[command(flatten)]
        common: client::Common,
        #[command(flatten)]
        auth: client::Auth,
    },
    /// Shared storage paths.
    Storage {
        #[command(subcommand)]
        command: StorageCommand,
    },
    /// Built-in fence agents.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// The watchdog device.
    Watchdog {
        #[command(subcommand)]
        command: WatchdogCommand,
    },
    /// Crash-safety exercise for the state file: saves states with growing counters and prints
    /// "acked N" after each save returns. Used by the tests, which kill it at random instants.
    #[command(hide = true)]
    DurableStress {
        /// Data directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// A simulated fence agent (ClusterLabs API on stdin: action=, pid_file=, start=,
    /// down_file=) that "powers" a local process: off kills it, status reports whether it
    /// runs. For the demo and tests.
    Sim {
        /// Optional `--name=value` parameters (stdin is read when no action is given here).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        params: Vec<String>,
    },
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Write the cluster marker on every storage path of the configuration (once, when the
    /// shared storage is first set up). peerfence writes its heartbeat only on paths that hold
    /// it, so a mount that failed is never mistaken for the shared storage.
    Init {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum WatchdogCommand {
    /// Open the device, set its timeout, feed it, then close it with the magic character so
    /// that it does NOT reset the host. Prints each step.
    Test {
        /// The device.
        #[arg(long, default_value = "/dev/watchdog")]
        device: PathBuf,
        /// Timeout to set, e.g. "10s".
        #[arg(long, default_value = "10s")]
        timeout: String,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create the cluster CA (ca.crt, ca.key 0600) in DIR.
    Init {
        /// Directory for the CA and the certificates it issues.
        #[arg(long)]
        dir: PathBuf,
        /// Cluster name (as in the configuration's cluster.name).
        #[arg(long)]
        cluster: String,
    },
    /// Issue a member's certificate (ID.crt), TLS key (ID.key, 0600) and vote key
    /// (ID.vote.key, 0600), and print the public vote key for cluster.members.
    Issue {
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// Member name (a DNS name, as in cluster.members[].name).
        #[arg(long)]
        id: String,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo(args) => ExitCode::from(peerfence::daemon::demo::run(&args) as u8),
        Command::Init { config, no_storage } => init(&config, no_storage),
        Command::Run { config } => run(&config),
        Command::CheckConfig { path } => check_config(&path),
        Command::Certs { command } => certs_command(command),
        Command::Storage {
            command: StorageCommand::Init { config },
        } => storage_init(&config),
        Command::DurableStress { dir } => durable_stress(&dir),
        Command::Agent {
            command: AgentCommand::Sim { params },
        } => ExitCode::from(peerfence::daemon::simagent::main(&params).clamp(0, 255) as u8),
        Command::Watchdog {
            command: WatchdogCommand::Test { device, timeout },
        } => watchdog_test(&device, &timeout),
        Command::Status { common } => ExitCode::from(client::run(Request::Status, &common, None)),
        Command::Fences { common } => ExitCode::from(client::run(Request::Fences, &common, None)),
        Command::Maintenance {
            host,
            state,
            common,
            auth,
        } => ExitCode::from(client::run(
            Request::Maintenance(host, matches!(state, OnOff::On)),
            &common,
            Some(&auth),
        )),
        Command::Arm { common, auth } => {
            ExitCode::from(client::run(Request::Arm, &common, Some(&auth)))
        }
        Command::Disarm { common, auth } => {
            ExitCode::from(client::run(Request::Disarm, &common, Some(&auth)))
        }
        Command::Fence { host, common, auth } => {
            ExitCode::from(client::run(Request::Fence(host), &common, Some(&auth)))
        }
        Command::CloudstackHeartbeat(args) => {
            ExitCode::from(peerfence::daemon::cloudstack::run(&args) as u8)
        }
    }
}

#[allow(clippy::disallowed_methods)] // reading the file the operator named is this command's job
fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn load(path: &Path) -> Result<peerfence::daemon::config::DaemonConfig, ExitCode> {
    let text = read(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    RawDaemonConfig::from_toml(&text)
        .and_then(|raw| raw.validate())
        .map_err(|errors| {
            eprintln!("{}: {errors}", path.display());
            ExitCode::from(2)
        })
}

fn check_config(path: &Path) -> ExitCode {
    match load(path) {
        Ok(cfg) => {
            // Secrets files are judged as `run` judges them (a 0644 file is refused).
            let mut notes = Vec::new();
            for level in cfg.agents.iter().flatten() {
                match peerfence::daemon::fence::check_secrets(level) {
                    Ok(n) => notes.extend(n),
                    Err(e) => {
                        eprintln!("{}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                }
            }
            println!("{}: valid", path.display());
            for line in cfg.summary().into_iter().chain(notes) {
                println!("  {line}");
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn run(path: &Path) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in log files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(peerfence::daemon::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            // A state-file write stuck on a dead disk never returns: dropping the runtime would
            // wait for it forever, and a daemon that must stop would linger instead of exiting.
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            ExitCode::from(1)
        }
    }
}

fn init(path: &Path, no_storage: bool) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match store::init(&cfg, no_storage) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn storage_init(path: &Path) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut ok = true;
    for dir in &cfg.core.storage.paths {
        match peerfence::daemon::storage::init_marker(Path::new(dir), cfg.core.cluster.as_str()) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn certs_command(command: CertsCommand) -> ExitCode {
    let result = match command {
        CertsCommand::Init { dir, cluster } => certs::init_ca(&dir, &cluster).map(|files| {
            for f in files {
                println!("wrote {}", f.display());
            }
        }),
        CertsCommand::Issue { dir, id } => certs::issue(&dir, &id).map(|issued| {
            for f in issued.files {
                println!("wrote {}", f.display());
            }
            println!("vote_key = \"{}\"", issued.vote_public);
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn durable_stress(dir: &Path) -> ExitCode {
    let file = match store::StateFile::open(dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut state = match file.load() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    loop {
        state.round_counter = state.round_counter.wrapping_add(1);
        if let Err(e) = file.save(&state) {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
        if writeln!(out, "acked {}", state.round_counter)
            .and_then(|_| out.flush())
            .is_err()
        {
            return ExitCode::SUCCESS;
        }
    }
}

fn watchdog_test(device: &Path, timeout: &str) -> ExitCode {
    let timeout = match humantime::parse_duration(timeout) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "--timeout {timeout:?}: not a duration ({e}); write it with a unit, e.g. \"10s\""
            );
            return ExitCode::from(2);
        }
    };
    match peerfence::daemon::watchdog::self_test(device, timeout) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("watchdog test failed: {e}");
            ExitCode::FAILURE
        }
    }
}
