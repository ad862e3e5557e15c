//! # peerfence-chaos
//!
//! A deterministic simulator for peerfence clusters. [`world::World`] drives real
//! [`peerfence::node::Node`]s through simulated time, network, shared storage, BMCs, watchdogs and
//! crashes, all drawn from one seed; [`invariants`] checks I1–I7 against ground truth while it
//! runs; [`scenarios`] names fault schedules with the outcome each expects; [`run`] runs many
//! seeds in parallel and summarises them ([`Summary`], printed as JSON by the CLI).
//!
//! Any failure replays from its seed: `peerfence-chaos sim --scenario NAME --first-seed S
//! --seeds 1 --trace`.

pub mod invariants;
pub mod net;
pub mod scenarios;
pub mod world;

use scenarios::{Scenario, Setup};
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use world::{RunResult, RunSpec, Violation, World};

/// Runs one seed of a scenario.
pub fn run_one(scenario: &Scenario, seed: u64, nodes: usize, trace: bool) -> RunResult {
    let mut setup = Setup::new(nodes, seed);
    (scenario.build)(&mut setup);
    let spec = RunSpec {
        seed,
        nodes,
        duration_us: setup.duration_us,
        raw: setup.raw.clone(),
        params: setup.params.clone(),
        faults: setup.faults.clone(),
        triggers: setup.triggers.clone(),
        expected_crashes: setup.expected_crashes.clone(),
        trace,
    };
    let mut result = World::new(spec).run();
    for detail in (scenario.expect)(&setup, &result) {
        result.violations.push(Violation {
            seed,
            invariant: "expect".into(),
            detail,
        });
    }
    result
}

/// What `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Seeds run.
    pub runs: u64,
    /// First seed.
    pub first_seed: u64,
    /// Hosts per run.
    pub nodes: usize,
    /// Every violation (invariant or expectation), at most [`MAX_VIOLATIONS_LISTED`].
    pub violations: Vec<Violation>,
    /// Violations in total (also those not listed).
    pub violations_total: usize,
    /// Fence attempts started, over all runs.
    pub fences_total: usize,
    /// Self-fence actions taken on quorum agreement, over all runs.
    pub self_fence_actions_total: usize,
    /// Poison pills acted on, over all runs.
    pub poison_pill_actions_total: usize,
    /// Watchdog resets, over all runs.
    pub watchdog_resets_total: u64,
    /// "Safe to recover" announcements, over all runs.
    pub safe_to_recover_total: u64,
    /// Runs in which some node reported a storm.
    pub runs_with_storm: u64,
    /// Crash → confirmed fence, median, ms (null without crashes).
    pub confirm_ms_p50: Option<u64>,
    /// Crash → confirmed fence, 99th percentile, ms (null without crashes).
    pub confirm_ms_p99: Option<u64>,
    /// Crash → confirmed fence, worst, ms.
    pub confirm_ms_max: Option<u64>,
    /// Simulated seconds per wall-clock second.
    pub sim_speedup: f64,
    /// Simulated seconds in total.
    pub sim_seconds_total: f64,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
    /// Simulation events processed.
    pub events_total: u64,
}

/// Violations listed in a summary at most (the total is always given).
pub const MAX_VIOLATIONS_LISTED: usize = 1000;

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Runs `runs` seeds from `first_seed` on `threads` threads. `progress` is called after each run
/// with (done, violations so far).
pub fn run(
    scenario: &Scenario,
    first_seed: u64,
    runs: u64,
    nodes: usize,
    threads: usize,
    progress: &(dyn Fn(u64, usize) + Sync),
) -> Summary {
    let started = std::time::Instant::now();
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let bad = AtomicUsize::new(0);
    let results: Mutex<Vec<(u64, RunResult)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= runs {
                        break;
                    }
                    let seed = first_seed.wrapping_add(i);
                    let mut r = run_one(scenario, seed, nodes, false);
                    r.trace = None;
                    bad.fetch_add(r.violations.len(), Ordering::Relaxed);
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((i, r));
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress(d, bad.load(Ordering::Relaxed));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    summarise(
        scenario,
        first_seed,
        runs,
        nodes,
        results.into_iter().map(|(_, r)| r),
        started.elapsed(),
    )
}

fn summarise(
    scenario: &Scenario,
    first_seed: u64,
    runs: u64,
    nodes: usize,
    results: impl Iterator<Item = RunResult>,
    wall: std::time::Duration,
) -> Summary {
    let mut s = Summary {
        scenario: scenario.name.into(),
        runs,
        first_seed,
        nodes,
        violations: Vec::new(),
        violations_total: 0,
        fences_total: 0,
        self_fence_actions_total: 0,
        poison_pill_actions_total: 0,
        watchdog_resets_total: 0,
        safe_to_recover_total: 0,
        runs_with_storm: 0,
        confirm_ms_p50: None,
        confirm_ms_p99: None,
        confirm_ms_max: None,
        sim_speedup: 0.0,
        sim_seconds_total: 0.0,
        wall_seconds: wall.as_secs_f64(),
        events_total: 0,
    };
    let mut confirm = Vec::new();
    let mut sim_us = 0u64;
    for r in results {
        s.violations_total += r.violations.len();
        for v in r.violations.iter().cloned() {
            if s.violations.len() < MAX_VIOLATIONS_LISTED {
                s.violations.push(v);
            }
        }
        s.fences_total += r.fences.len();
        s.self_fence_actions_total += r.quorum_self_fences();
        s.poison_pill_actions_total += r
            .self_fences
            .iter()
            .filter(|f| f.reason == peerfence::node::SelfFenceReason::PoisonPill)
            .count();
        s.watchdog_resets_total += u64::from(r.watchdog_resets);
        s.safe_to_recover_total += u64::from(r.safe_to_recover);
        s.runs_with_storm += u64::from(r.storm_reported);
        s.events_total += r.events;
        confirm.extend(r.confirm_ms());
        sim_us += r.sim_us;
    }
    confirm.sort_unstable();
    s.confirm_ms_p50 = percentile(&confirm, 50.0);
    s.confirm_ms_p99 = percentile(&confirm, 99.0);
    s.confirm_ms_max = confirm.last().copied();
    s.sim_seconds_total = sim_us as f64 / 1e6;
    s.sim_speedup = if s.wall_seconds > 0.0 {
        s.sim_seconds_total / s.wall_seconds
    } else {
        0.0
    };
    s
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[5], 99.0), Some(5));
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
    }
}
