//! Every scenario, many seeds each, every invariant checked in every run, plus the outcome each
//! scenario promises. `PEERFENCE_SIM_SEEDS` (per scenario) and `PEERFENCE_SIM_RANDOM_SEEDS`
//! raise the seed counts for deeper runs; a failure prints the command that replays it.

use peerfence_chaos::Summary;
use peerfence_chaos::scenarios::find;

fn seeds(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(name: &str) -> Summary {
    run_n(name, seeds("PEERFENCE_SIM_SEEDS", 400))
}

/// The scenarios of issue 10 (faults at the seams between the model and real hosts) run 200
/// seeds each by default, to keep CI's time in bounds; `PEERFENCE_SIM_SEEDS` raises them too.
fn run_seam(name: &str) -> Summary {
    run_n(name, seeds("PEERFENCE_SIM_SEEDS", 200))
}

fn run_n(name: &str, n: u64) -> Summary {
    let scenario = find(name).expect("scenario exists");
    let n = if name == "random" {
        seeds("PEERFENCE_SIM_RANDOM_SEEDS", 2000)
    } else {
        n
    };
    // One thread per test: the test harness already runs tests side by side.
    let s = peerfence_chaos::run(scenario, 1, n, scenario.default_nodes, 1, &|_, _| {});
    eprintln!(
        "{name}: {} runs, {} fences, {} quorum self-fences, {} watchdog resets, confirm p50 {:?} ms p99 {:?} ms, {:.0}x real time",
        s.runs,
        s.fences_total,
        s.self_fence_actions_total,
        s.watchdog_resets_total,
        s.confirm_ms_p50,
        s.confirm_ms_p99,
        s.sim_speedup
    );
    if s.violations_total > 0 {
        let shown: Vec<String> = s
            .violations
            .iter()
            .take(10)
            .map(|v| format!("  seed {} {}: {}", v.seed, v.invariant, v.detail))
            .collect();
        panic!(
            "{} violation(s) in {name}:\n{}\nreplay: cargo run -p peerfence-chaos -- sim --scenario {name} --first-seed SEED --seeds 1 --trace",
            s.violations_total,
            shown.join("\n")
        );
    }
    s
}

#[test]
fn crash_one() {
    let s = run("crash-one");
    assert!(
        s.fences_total >= s.runs as usize,
        "every run fences the crashed host"
    );
    let p99 = s.confirm_ms_p99.expect("crashes were confirmed");
    assert!(p99 < 10_000, "crash → confirmed p99 {p99} ms, bound 10 s");
}

#[test]
fn crash_two_of_seven() {
    let s = run("crash-two-of-seven");
    assert!(s.fences_total >= s.runs as usize);
}

#[test]
fn storage_loss_everywhere() {
    let s = run("storage-loss-everywhere");
    assert_eq!(s.fences_total, 0);
    assert_eq!(s.self_fence_actions_total, 0);
    assert_eq!(s.watchdog_resets_total, 0);
    assert_eq!(s.runs_with_storm, s.runs);
}

#[test]
fn storage_loss_one() {
    let s = run("storage-loss-one");
    assert_eq!(s.fences_total, 0);
    assert_eq!(s.self_fence_actions_total, s.runs as usize);
}

#[test]
fn storage_flapping_cascade() {
    let s = run("storage-flapping-cascade");
    assert_eq!(s.fences_total, 0);
    assert_eq!(
        s.self_fence_actions_total,
        3 * s.runs as usize,
        "the budget of 3 stops the cascade"
    );
}

#[test]
fn partition_minority() {
    let s = run("partition-minority");
    assert_eq!(s.fences_total, 0);
    assert_eq!(s.self_fence_actions_total, 0);
}

#[test]
fn partition_isolated_no_storage() {
    let s = run("partition-isolated-no-storage");
    assert!(s.fences_total >= s.runs as usize);
}

#[test]
fn agent_death() {
    let s = run("agent-death");
    assert_eq!(s.fences_total, 0);
    assert_eq!(s.safe_to_recover_total, 0);
}

#[test]
fn bmc_dead() {
    let s = run("bmc-dead");
    assert!(s.fences_total >= s.runs as usize);
}

#[test]
fn restart_during_fence() {
    run("restart-during-fence");
}

#[test]
fn storm() {
    let s = run("storm");
    assert_eq!(s.fences_total, 0);
    assert_eq!(s.runs_with_storm, s.runs);
}

#[test]
fn lossy_network_20() {
    let s = run("lossy-network-20");
    assert_eq!(s.fences_total, 0);
    assert_eq!(s.self_fence_actions_total, 0);
    assert_eq!(s.watchdog_resets_total, 0);
}

/// Issue 10 §1: a clean stop is remembered by every member across their restarts.
#[test]
fn clean_stop_then_restarts() {
    let s = run_seam("clean-stop-then-restarts");
    assert_eq!(s.fences_total, 0);
    assert_eq!(s.safe_to_recover_total, 0);
}

/// Issue 10 §1: a clean stop nobody could hear (network and shared storage lost just before)
/// is not a clean stop: the daemon keeps its watchdog armed and its peers fence it, by power or
/// by a watchdog deadline that is then true. Found by seed 8234 of `random`.
#[test]
fn clean_stop_unheard() {
    let s = run_seam("clean-stop-unheard");
    assert!(s.fences_total >= s.runs as usize);
}

/// Issue 11: a compromised member's forged outcomes (unsigned, self-certified, naming another
/// executor, as fence news) make nobody call a live host fenced; each kind is counted.
#[test]
fn forged_outcome() {
    let s = run_seam("forged-outcome");
    assert_eq!(s.fences_total, 0);
    assert_eq!(s.safe_to_recover_total, 0);
}

/// Issue 11: a forged reboot of a frozen host (gossip with a new boot) proves nothing.
#[test]
fn forged_reboot() {
    let s = run_seam("forged-reboot");
    assert_eq!(s.safe_to_recover_total, 0);
}

/// Issue 11: a forged SWIM "return" of a cleanly stopped daemon does not end its stop.
#[test]
fn forged_return() {
    let s = run_seam("forged-return");
    assert_eq!(s.fences_total, 0);
}

/// Issue 11: a forged disarm at the highest flag version is refused; a later crash is fenced.
#[test]
fn forged_disarm() {
    let s = run_seam("forged-disarm");
    assert!(s.fences_total >= s.runs as usize);
}

/// Issue 10 §1: only an operator's explicit fence fences a host that left, and only power Off
/// confirms it.
#[test]
fn clean_stop_operator_fence() {
    let s = run_seam("clean-stop-operator-fence");
    assert!(s.fences_total >= s.runs as usize);
}

/// Issue 10 §3: one clock per boot. A daemon restarted after weeks of uptime keeps the real
/// length of its promises and attempts; a crash is fenced within the bound.
#[test]
fn restart_after_long_uptime() {
    let s = run_seam("restart-after-long-uptime");
    assert!(s.fences_total >= s.runs as usize);
}

/// Issue 10 §4: a shared path proves it is shared. A host whose mount is private is never
/// announced safe to recover while it runs.
#[test]
fn private_mount() {
    run_seam("private-mount");
}

/// Issue 10 §8: a change seen after a gap in the readers' reads is not fresh life.
#[test]
fn crash_during_read_outage() {
    let s = run_seam("crash-during-read-outage");
    assert!(s.safe_to_recover_total >= s.runs);
}

/// Issue 10 §8: membership keeps flowing while a slow disk syncs.
#[test]
fn slow_disk() {
    let s = run_seam("slow-disk");
    assert_eq!(s.runs_with_storm, 0);
}

/// Issue 10 §9: a member that lost its state never reuses a generation or votes twice.
#[test]
fn wiped_disk() {
    run_seam("wiped-disk");
}

/// Issue 10 §8: a restarted member is Initializing, not Unhealthy: no storm.
#[test]
fn restart_with_one_down() {
    let s = run_seam("restart-with-one-down");
    assert_eq!(s.runs_with_storm, 0);
}

/// Issue 10 §8: a member restarted during a fence learns its outcome (anti-entropy).
#[test]
fn voter_restarted_during_fence() {
    run_seam("voter-restarted-during-fence");
}

/// Issue 10 §5: a stalled proposer or executor never makes two fences in flight.
#[test]
fn proposer_stall() {
    run_seam("proposer-stall");
}

/// Issue 10 §8: a host rebooted while every daemon restarted is still announced safe to recover.
#[test]
fn cluster_restart_during_pill() {
    let s = run_seam("cluster-restart-during-pill");
    assert!(s.safe_to_recover_total >= s.runs);
}

/// Issue 10 §8: vouches travel through the one bridge between two groups.
#[test]
fn bridged_storage_loss() {
    let s = run_seam("bridged-storage-loss");
    assert_eq!(s.watchdog_resets_total, 0);
}

/// Issue 10 §7: a host frozen and resumed measures again before asking to fence itself.
#[test]
fn frozen_and_resumed() {
    let s = run_seam("frozen-and-resumed");
    assert_eq!(s.self_fence_actions_total, 0);
}

/// Issue 10 §7: a pill whose clear failed is cleared once the storage answers again.
#[test]
fn pill_clear_retried() {
    run_seam("pill-clear-retried");
}

/// Issue 10 §9: a BMC reachable from one survivor only: the proposer turns after each failed
/// attempt, and the one that can reach it fences.
#[test]
fn bmc_partitioned() {
    run_seam("bmc-partitioned");
}

/// Issue 10 §9: a configuration rolled host by host (a member added, a digest-covered
/// setting): nobody fenced or reset meanwhile, a later crash fenced.
#[test]
fn rolling_config_change() {
    run_seam("rolling-config-change");
}

#[test]
fn random() {
    run("random");
}

/// Cluster size changes quorum arithmetic (4 hosts: q = 3, one failure left), storm thresholds
/// and who can vouch for whom; the random schedules run at other sizes too.
#[test]
fn random_at_other_sizes() {
    let scenario = find("random").expect("scenario exists");
    let n = seeds("PEERFENCE_SIM_SIZES_SEEDS", 250);
    for nodes in [3, 4, 7] {
        let s = peerfence_chaos::run(scenario, 1, n, nodes, 1, &|_, _| {});
        eprintln!(
            "random/{nodes} hosts: {} runs, {} fences",
            s.runs, s.fences_total
        );
        assert!(
            s.violations_total == 0,
            "{} violation(s) in random with {nodes} hosts, first: {:?}\nreplay: cargo run -p peerfence-chaos -- sim --scenario random --nodes {nodes} --first-seed SEED --seeds 1 --trace",
            s.violations_total,
            s.violations.first()
        );
    }
}
