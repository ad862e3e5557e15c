//! `peerfence-chaos`: the simulator's command line.
//!
//! ```text
//! peerfence-chaos sim --list
//! peerfence-chaos sim --scenario crash-one --seeds 200 [--first-seed S] [--nodes K] [--json]
//! peerfence-chaos sim --scenario crash-one --first-seed 17 --seeds 1 --trace
//! ```
//! Exit status: 0 when every run held every invariant and expectation, 1 otherwise, 2 on usage
//! errors.

use clap::{Parser, Subcommand};
use peerfence_chaos::scenarios::{SCENARIOS, find};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "peerfence-chaos",
    version,
    about = "Deterministic cluster simulator for peerfence"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario over many seeds and check every invariant.
    Sim(SimArgs),
}

#[derive(clap::Args)]
struct SimArgs {
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Scenario to run (see --list).
    #[arg(long)]
    scenario: Option<String>,
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Hosts per run (default: the scenario's).
    #[arg(long)]
    nodes: Option<usize>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Print the timeline of each run (use with --seeds 1).
    #[arg(long)]
    trace: bool,
    /// Worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => sim(args),
    }
}

fn sim(args: SimArgs) -> ExitCode {
    if args.list {
        for s in SCENARIOS {
            println!(
                "{:<30} {} (default {} hosts)",
                s.name, s.about, s.default_nodes
            );
        }
        return ExitCode::SUCCESS;
    }
    let Some(name) = args.scenario.as_deref() else {
        eprintln!("error: --scenario NAME is required (or --list to see the scenarios)");
        return ExitCode::from(2);
    };
    let Some(scenario) = find(name) else {
        eprintln!("error: no scenario named {name:?}; `peerfence-chaos sim --list` shows them");
        return ExitCode::from(2);
    };
    let nodes = args.nodes.unwrap_or(scenario.default_nodes);
    if nodes < scenario.min_nodes || nodes > peerfence_proto::MAX_MEMBERS {
        eprintln!(
            "error: --nodes {nodes}: scenario {name} needs between {} and {} hosts",
            scenario.min_nodes,
            peerfence_proto::MAX_MEMBERS
        );
        return ExitCode::from(2);
    }
    if args.seeds == 0 {
        eprintln!("error: --seeds must be at least 1");
        return ExitCode::from(2);
    }
    if args.trace {
        let mut bad = false;
        for i in 0..args.seeds {
            let r =
                peerfence_chaos::run_one(scenario, args.first_seed.wrapping_add(i), nodes, true);
            bad |= !r.violations.is_empty();
            print!("{}", peerfence_chaos::world::render_trace(&r));
        }
        return if bad {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        };
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let tty = std::io::stderr().is_terminal();
    let total = args.seeds;
    let last = std::sync::Mutex::new(std::time::Instant::now());
    let progress = |done: u64, bad: usize| {
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if done == total || last.elapsed().as_millis() >= 1000 {
            *last = std::time::Instant::now();
            let line = format!("{name}: {done}/{total} seeds, {bad} violations");
            if tty {
                eprint!("\r{line}   ");
                if done == total {
                    eprintln!();
                }
            } else {
                eprintln!("{line}");
            }
        }
    };
    let summary = peerfence_chaos::run(
        scenario,
        args.first_seed,
        args.seeds,
        nodes,
        threads,
        &progress,
    );
    if args.json {
        let out = serde_json::to_string_pretty(&summary)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        println!("{out}");
    } else {
        let mut o = std::io::stdout().lock();
        let ms = |v: Option<u64>| v.map(|x| format!("{x} ms")).unwrap_or_else(|| "n/a".into());
        let _ = writeln!(
            o,
            "scenario {} — {} seeds from {}, {} hosts",
            summary.scenario, summary.runs, summary.first_seed, summary.nodes
        );
        let _ = writeln!(o, "  fences started         {}", summary.fences_total);
        let _ = writeln!(
            o,
            "  quorum self-fences     {}",
            summary.self_fence_actions_total
        );
        let _ = writeln!(
            o,
            "  poison pills acted on  {}",
            summary.poison_pill_actions_total
        );
        let _ = writeln!(
            o,
            "  watchdog resets        {}",
            summary.watchdog_resets_total
        );
        let _ = writeln!(
            o,
            "  safe-to-recover        {}",
            summary.safe_to_recover_total
        );
        let _ = writeln!(o, "  runs with a storm      {}", summary.runs_with_storm);
        let _ = writeln!(
            o,
            "  crash → confirmed      p50 {}, p99 {}, max {}",
            ms(summary.confirm_ms_p50),
            ms(summary.confirm_ms_p99),
            ms(summary.confirm_ms_max)
        );
        let _ = writeln!(
            o,
            "  speed                  {:.0}× real time ({:.0} simulated s in {:.1} s)",
            summary.sim_speedup, summary.sim_seconds_total, summary.wall_seconds
        );
        if summary.violations_total == 0 {
            let _ = writeln!(o, "  every invariant held in every run");
        } else {
            let _ = writeln!(o, "  {} VIOLATIONS:", summary.violations_total);
            for v in summary.violations.iter().take(20) {
                let _ = writeln!(o, "    seed {} {}: {}", v.seed, v.invariant, v.detail);
            }
            let _ = writeln!(
                o,
                "  replay one with: peerfence-chaos sim --scenario {name} --first-seed SEED --seeds 1 --trace"
            );
        }
    }
    if summary.violations_total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
