//! The checkers are only worth something if they fail when the world misbehaves. These runs put
//! faults into the world that no fencer can see through, and assert that the right invariant
//! reports the damage. They also pin determinism: a seed replays exactly.

use peerfence_chaos::net::NetParams;
use peerfence_chaos::scenarios::{Setup, find};
use peerfence_chaos::world::{BmcMode, Fault, RunSpec, SEC, World};

fn spec(seed: u64, faults: Vec<(u64, Fault)>) -> RunSpec {
    let s = Setup::new(5, seed);
    RunSpec {
        seed,
        nodes: 5,
        duration_us: 60 * SEC,
        raw: s.raw,
        params: s.params,
        faults,
        triggers: Vec::new(),
        expected_crashes: Vec::new(),
        trace: false,
    }
}

#[test]
fn a_lying_bmc_is_caught_by_i5() {
    // The BMC says "off" but the host's VMs keep running; its daemon is gone so it looks dead.
    let r = World::new(spec(
        3,
        vec![
            (19 * SEC, Fault::Bmc(2, BmcMode::LiesOff)),
            (20 * SEC, Fault::CrashDaemon(2)),
        ],
    ))
    .run();
    assert!(
        r.violations.iter().any(|v| v.invariant == "I5"),
        "I5 must report 'safe to recover' while VMs run: {:?}",
        r.violations
    );
}

#[test]
fn a_fence_of_a_live_writer_is_caught_by_i2() {
    // Readers see host 1's heartbeat frozen (stale NFS cache) and the network cuts it off: the
    // majority fences a host that was writing all along.
    let r = World::new(spec(
        4,
        vec![
            (20 * SEC, Fault::FreezeReads(1)),
            (20 * SEC, Fault::Isolate(1)),
        ],
    ))
    .run();
    assert!(
        r.violations.iter().any(|v| v.invariant == "I2"),
        "I2 must report the fence of a live writer: {:?}",
        r.violations
    );
}

#[test]
fn a_seed_replays_exactly() {
    let scenario = find("random").unwrap();
    for seed in [1, 17, 4242] {
        let a = peerfence_chaos::run_one(scenario, seed, 5, true);
        let b = peerfence_chaos::run_one(scenario, seed, 5, true);
        assert_eq!(a.trace, b.trace, "seed {seed} diverged");
        assert_eq!(a.events, b.events);
    }
}

#[test]
fn different_seeds_differ() {
    let scenario = find("crash-one").unwrap();
    let a = peerfence_chaos::run_one(scenario, 1, 5, true);
    let b = peerfence_chaos::run_one(scenario, 2, 5, true);
    assert_ne!(a.trace, b.trace);
}

#[test]
fn a_clean_network_needs_no_faults_to_stay_quiet() {
    let mut s = spec(9, Vec::new());
    s.params.net = NetParams::default();
    let r = World::new(s).run();
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert!(r.fences.is_empty() && r.self_fences.is_empty());
}

/// Regression (found in review): four hosts, one crashed and fenced, so the three others are a
/// bare quorum; then storage is lost everywhere and the link between two of them is cut. Each
/// of those two reaches the other only through the third. Vouches must travel that way, or all
/// three reset one after another.
#[test]
fn a_cut_link_does_not_reset_a_bare_quorum() {
    for seed in 1..=20 {
        let s = Setup::new(4, seed);
        let all = vec![0, 1, 2, 3];
        let spec = RunSpec {
            seed,
            nodes: 4,
            duration_us: 100 * SEC,
            raw: s.raw,
            params: s.params,
            faults: vec![
                (20 * SEC, Fault::CrashHost(3)),
                (
                    40 * SEC,
                    Fault::Storage {
                        hosts: all,
                        path: None,
                        mode: peerfence_chaos::world::StorageMode::Hang,
                        until_reboot: false,
                    },
                ),
                (40 * SEC, Fault::BlockLink(0, 1)),
                (40 * SEC, Fault::BlockLink(1, 0)),
            ],
            triggers: Vec::new(),
            expected_crashes: Vec::new(),
            trace: false,
        };
        let r = World::new(spec).run();
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        // Host 3 may be reset by its own watchdog after its panic; nobody else may be.
        assert!(
            r.watchdog_resets <= 1,
            "seed {seed}: {} watchdog resets",
            r.watchdog_resets
        );
    }
}
