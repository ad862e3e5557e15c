//! Named scenarios: a fault schedule drawn from the seed, the configuration it runs with, and the
//! outcome it expects beyond the invariants (which every run checks anyway).

use crate::net::NetParams;
use crate::world::{
    BmcMode, DAY, DaemonClock, Fault, Forgery, MS, ReadMode, RunResult, SEC, SimParams,
    StorageMode, Trigger, TriggerOn, host_secret,
};
use peerfence::config::{RawConfig, RawLevel, raw_for_members};
use peerfence::crypto::VoteKey;
use peerfence::node::{LocalAction, OperatorCommand, SelfFenceReason};
use peerfence::rules::HaState;
use peerfence_proto::{Evidence, MemberId, PublicKey};
use rand::RngExt;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

/// What a scenario builds for one seed.
pub struct Setup {
    /// Hosts.
    pub nodes: usize,
    /// The scenario's own generator (seeded from the run seed).
    pub rng: ChaCha8Rng,
    /// Simulated duration, µs.
    pub duration_us: u64,
    /// Node configuration.
    pub raw: RawConfig,
    /// Simulation parameters.
    pub params: SimParams,
    /// Faults at true times.
    pub faults: Vec<(u64, Fault)>,
    /// Crash-mid-output triggers.
    pub triggers: Vec<Trigger>,
    /// Crashes that must be fenced: (host, time, liveness bound).
    pub expected_crashes: Vec<(usize, u64, Option<u64>)>,
    /// Hosts the scenario harms (for expectations).
    pub victims: Vec<usize>,
    /// Which variant of the scenario this seed drew (for expectations).
    pub variant: u32,
}

/// A named scenario.
pub struct Scenario {
    /// Name used on the command line.
    pub name: &'static str,
    /// One line for `--list`.
    pub about: &'static str,
    /// Hosts unless `--nodes` says otherwise.
    pub default_nodes: usize,
    /// Fewest hosts it makes sense with.
    pub min_nodes: usize,
    /// Builds the setup.
    pub build: fn(&mut Setup),
    /// Checks the outcome; each string is one failed expectation.
    pub expect: fn(&Setup, &RunResult) -> Vec<String>,
}

/// Member name of simulated host `i` (zero-padded so that the sorted roster keeps index order).
pub fn host_name(i: usize) -> String {
    format!("host{i:03}")
}

/// The configuration every scenario starts from: LAN timings, one shared path, a BMC level with
/// a 10 s timeout and a poison-pill level, watchdogs everywhere.
pub fn base_config(nodes: usize) -> RawConfig {
    let members: Vec<(String, PublicKey)> = (0..nodes)
        .map(|i| (host_name(i), VoteKey::from_secret(host_secret(i)).public()))
        .collect();
    let mut raw = raw_for_members("sim", &members);
    raw.fencing.levels = Some(vec![
        RawLevel::agent("bmc", "10s"),
        RawLevel::poison_pill("pill"),
    ]);
    raw.watchdog.enabled = Some(true);
    raw
}

impl Setup {
    /// The base setup for `nodes` hosts and `seed`.
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5ce7_a210),
            duration_us: 60 * SEC,
            raw: base_config(nodes),
            params: SimParams::default(),
            faults: Vec::new(),
            triggers: Vec::new(),
            expected_crashes: Vec::new(),
            victims: Vec::new(),
            variant: 0,
        }
    }

    fn at(&mut self, lo_s: u64, hi_s: u64) -> u64 {
        self.rng.random_range(lo_s * SEC..=hi_s * SEC)
    }

    fn host(&mut self) -> usize {
        self.rng.random_range(0..self.nodes)
    }

    fn distinct(&mut self, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..self.nodes).collect();
        all.shuffle(&mut self.rng);
        all.truncate(k);
        all
    }

    fn fault(&mut self, at: u64, f: Fault) {
        self.faults.push((at, f));
    }

    fn lost_storage(&mut self) -> StorageMode {
        if self.rng.random_bool(0.5) {
            StorageMode::Hang
        } else {
            StorageMode::Fail
        }
    }
}

// ----- expectation helpers --------------------------------------------------------------------

fn only_fenced(r: &RunResult, allowed: &[usize], out: &mut Vec<String>) {
    for f in &r.fences {
        if !allowed.contains(&f.target) {
            out.push(format!(
                "h{} was fenced (by h{}), expected only {allowed:?}",
                f.target, f.executor
            ));
        }
    }
}

fn no_fences(r: &RunResult, out: &mut Vec<String>) {
    if let Some(f) = r.fences.first() {
        out.push(format!(
            "{} fence start(s), expected none (first: h{} fenced h{})",
            r.fences.len(),
            f.executor,
            f.target
        ));
    }
}

fn no_self_fences(r: &RunResult, out: &mut Vec<String>) {
    if !r.self_fences.is_empty() {
        out.push(format!(
            "{} self-fence action(s), expected none",
            r.self_fences.len()
        ));
    }
}

fn no_watchdog_resets(r: &RunResult, out: &mut Vec<String>) {
    if r.watchdog_resets > 0 {
        out.push(format!(
            "{} watchdog reset(s), expected none",
            r.watchdog_resets
        ));
    }
}

fn confirmed(r: &RunResult, host: usize) -> Option<Evidence> {
    r.confirmations
        .iter()
        .find(|((h, _), _)| *h == host)
        .map(|(_, (_, e))| *e)
}

// ----- scenarios ------------------------------------------------------------------------------

fn crash_one(s: &mut Setup) {
    s.duration_us = 60 * SEC;
    let v = s.host();
    let at = s.at(20, 30);
    s.fault(at, Fault::CrashHost(v));
    s.expected_crashes.push((v, at, Some(10 * SEC)));
    s.victims = vec![v];
}

fn expect_crash_one(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    let v = s.victims[0];
    only_fenced(r, &[v], &mut out);
    if r.fences.is_empty() {
        out.push(format!("crashed h{v} was never fenced"));
    }
    no_self_fences(r, &mut out);
    out
}

fn crash_two_of_seven(s: &mut Setup) {
    s.duration_us = 100 * SEC;
    let v = s.distinct(2);
    let at = s.at(20, 30);
    let at2 = at + s.rng.random_range(0..=5 * SEC);
    s.fault(at, Fault::CrashHost(v[0]));
    s.fault(at2, Fault::CrashHost(v[1]));
    // Usually ~6 s. The bound is larger because the second crash may hit the proposer of the
    // first fence mid-round: its voters then keep their promises for a promise lifetime (~37 s
    // here) before anyone else can gather a quorum. That is the price of one fence in flight
    // per target (I4); see docs/SAFETY.md.
    s.expected_crashes.push((v[0], at, Some(60 * SEC)));
    s.expected_crashes.push((v[1], at2, Some(60 * SEC)));
    s.victims = v;
}

/// Every victim confirmed gone (fenced, or rebooted), nobody else fenced, no self-fence.
fn expect_victims_confirmed(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    only_fenced(r, &s.victims, &mut out);
    for &v in &s.victims {
        if confirmed(r, v).is_none() {
            out.push(format!(
                "crashed h{v} was never confirmed (fenced or rebooted)"
            ));
        }
    }
    no_self_fences(r, &mut out);
    out
}

fn storage_loss_everywhere(s: &mut Setup) {
    let at = s.at(20, 25);
    let restore = at + s.rng.random_range(40 * SEC..=70 * SEC);
    s.duration_us = restore + 40 * SEC;
    let mode = s.lost_storage();
    let all: Vec<usize> = (0..s.nodes).collect();
    s.fault(
        at,
        Fault::Storage {
            hosts: all.clone(),
            path: None,
            mode,
            until_reboot: false,
        },
    );
    s.fault(
        restore,
        Fault::Storage {
            hosts: all,
            path: None,
            mode: StorageMode::Ok,
            until_reboot: false,
        },
    );
}

fn expect_nothing_happens_storm(_s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    no_fences(r, &mut out);
    no_self_fences(r, &mut out);
    no_watchdog_resets(r, &mut out);
    if !r.storm_reported {
        out.push("no node reported a storm".into());
    }
    out
}

fn storage_loss_one(s: &mut Setup) {
    s.duration_us = 110 * SEC;
    let v = s.host();
    let at = s.at(20, 25);
    let mode = s.lost_storage();
    s.fault(
        at,
        Fault::Storage {
            hosts: vec![v],
            path: None,
            mode,
            until_reboot: true,
        },
    );
    s.victims = vec![v];
}

fn expect_storage_loss_one(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    let v = s.victims[0];
    no_fences(r, &mut out);
    let mine: Vec<_> = r
        .self_fences
        .iter()
        .filter(|f| f.reason == SelfFenceReason::QuorumAgreed)
        .collect();
    if mine.len() != 1 || mine[0].host != v || mine[0].action != LocalAction::Reboot {
        out.push(format!(
            "expected exactly one quorum-agreed reboot of h{v}, got {:?}",
            mine.iter().map(|f| (f.host, f.action)).collect::<Vec<_>>()
        ));
    }
    if confirmed(r, v).is_none() {
        out.push(format!("h{v}'s self-fence was never confirmed"));
    }
    out
}

fn storage_flapping_cascade(s: &mut Setup) {
    // Hosts come back quickly, so what stops the cascade is the budget, not a storm.
    s.params.boot_delay_us = (10 * SEC, 15 * SEC);
    let order = s.distinct(s.nodes);
    let victims = order.len().min(5);
    let mut t = 20 * SEC;
    for &v in &order[..victims] {
        // The resync load moves to this host: its heartbeat writes time out and never land.
        s.fault(
            t,
            Fault::Storage {
                hosts: vec![v],
                path: None,
                mode: StorageMode::Hang,
                until_reboot: true,
            },
        );
        t += 30 * SEC;
    }
    // Others only see slow writes that still land: Slow is not Failed, and their heartbeat
    // advances for everyone else. None of them may be touched.
    for &v in &order[victims..] {
        let at = s.at(20, 150);
        s.fault(
            at,
            Fault::Storage {
                hosts: vec![v],
                path: None,
                mode: StorageMode::Slow {
                    latency_us: 1_500 * MS,
                },
                until_reboot: false,
            },
        );
        s.fault(
            at + 20 * SEC,
            Fault::Storage {
                hosts: vec![v],
                path: None,
                mode: StorageMode::Ok,
                until_reboot: false,
            },
        );
    }
    s.duration_us = t + 30 * SEC;
    s.victims = order[..victims].to_vec();
}

fn expect_cascade(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    no_fences(r, &mut out);
    let budget = 3;
    let done: Vec<usize> = r
        .self_fences
        .iter()
        .filter(|f| f.reason == SelfFenceReason::QuorumAgreed && f.action.stops_vms())
        .map(|f| f.host)
        .collect();
    if done.len() != budget {
        out.push(format!("expected the budget ({budget}) to allow exactly {budget} self-fences, got {}: {done:?}", done.len()));
    }
    for h in &done {
        if !s.victims.contains(h) {
            out.push(format!("h{h} self-fenced but its writes were only slow"));
        }
    }
    if !r.budget_exhausted && !r.self_fence_blocked {
        out.push("nobody reported the budget exhausted or a self-fence blocked".into());
    }
    out
}

fn partition_minority(s: &mut Setup) {
    let at = s.at(20, 25);
    let heal = at + 60 * SEC;
    s.duration_us = heal + 30 * SEC;
    let order = s.distinct(s.nodes);
    let minority = s.nodes - peerfence::quorum::quorum(s.nodes);
    let groups = vec![order[minority..].to_vec(), order[..minority].to_vec()];
    s.fault(at, Fault::Partition(groups));
    s.fault(heal, Fault::Heal);
}

fn expect_quiet(_s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    no_fences(r, &mut out);
    no_self_fences(r, &mut out);
    no_watchdog_resets(r, &mut out);
    out
}

/// A compromised member forges, twice over, every kind of outcome it can make about a live host
/// (unsigned; signed over a certificate of its own vote; naming another executor; as fence
/// news). Nothing may change.
fn forged_outcome(s: &mut Setup) {
    s.duration_us = 60 * SEC;
    let [by, target] = s.distinct(2)[..] else {
        unreachable!("min_nodes is 3")
    };
    for round in 0..2u64 {
        let mut forgeries = [
            Forgery::Unsigned,
            Forgery::SelfCertified,
            Forgery::SpoofedExecutor,
            Forgery::News,
        ];
        forgeries.shuffle(&mut s.rng);
        for (i, forgery) in forgeries.into_iter().enumerate() {
            let at = s.at(20 + 15 * round, 21 + 15 * round) + i as u64 * 2 * SEC;
            s.fault(
                at,
                Fault::Forge {
                    by,
                    target,
                    forgery,
                },
            );
        }
    }
    s.victims = vec![target];
}

fn expect_forged_outcome(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = expect_quiet(s, r);
    let v = s.victims[0];
    if r.safe_to_recover > 0 || !r.confirmations.is_empty() {
        out.push(format!(
            "a forged outcome made a member announce h{v} fenced or safe to recover"
        ));
    }
    for why in [
        "unsigned_outcome",
        "bad_certificate",
        "forged_sender",
        "bad_news_certificate",
    ] {
        if r.drops.get(why).copied().unwrap_or(0) == 0 {
            out.push(format!("no member counted a `{why}` drop"));
        }
    }
    out
}

fn partition_isolated_no_storage(s: &mut Setup) {
    s.duration_us = 80 * SEC;
    let v = s.host();
    let at = s.at(20, 25);
    let mode = s.lost_storage();
    s.fault(at, Fault::Isolate(v));
    s.fault(
        at,
        Fault::Storage {
            hosts: vec![v],
            path: None,
            mode,
            until_reboot: false,
        },
    );
    s.expected_crashes.push((v, at, Some(15 * SEC)));
    s.victims = vec![v];
}

fn expect_isolated(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    let v = s.victims[0];
    only_fenced(r, &[v], &mut out);
    if r.fences.is_empty() {
        out.push(format!("isolated h{v} without storage was never fenced"));
    }
    out
}

fn agent_death(s: &mut Setup) {
    s.duration_us = 60 * SEC;
    let v = s.host();
    let at = s.at(20, 25);
    s.fault(at, Fault::AgentDeath(v));
    s.victims = vec![v];
}

/// A host loses its network and its shared storage (failed, hung, or a private directory with
/// a copy of the marker), and within 0.3-4 s, before its peers declare it Down, an operator
/// stops its daemon cleanly. Its Leave reaches nobody and its stop record no shared path: to
/// the peers it is a silent host, and they fence it. Half the runs with a dead BMC, so that
/// only the poison pill and the watchdog deadline are left: the deadline is true only if the
/// stopping daemon left its watchdog armed.
fn clean_stop_unheard(s: &mut Setup) {
    s.duration_us = 120 * SEC;
    let v = s.host();
    let at = s.at(20, 25);
    let mode = match s.rng.random_range(0..3) {
        0 => StorageMode::Private { marker: true },
        _ => s.lost_storage(),
    };
    let bmc_dead = s.rng.random_bool(0.5);
    if bmc_dead {
        s.fault(at - SEC, Fault::Bmc(v, BmcMode::Fail));
    }
    s.fault(at, Fault::Isolate(v));
    s.fault(
        at,
        Fault::Storage {
            hosts: vec![v],
            path: None,
            mode,
            until_reboot: false,
        },
    );
    let stop = at + s.rng.random_range(300 * MS..=4 * SEC);
    s.fault(stop, Fault::StopDaemon(v));
    s.expected_crashes
        .push((v, at, Some(if bmc_dead { 90 * SEC } else { 30 * SEC })));
    s.victims = vec![v];
}

fn expect_clean_stop_unheard(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    let v = s.victims[0];
    only_fenced(r, &[v], &mut out);
    if confirmed(r, v).is_none() {
        out.push(format!(
            "h{v}, stopped while nobody could hear it, was never confirmed fenced"
        ));
    }
    out
}

fn expect_agent_death(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = expect_quiet(s, r);
    let v = s.victims[0];
    if confirmed(r, v).is_some() {
        out.push(format!(
            "h{v} (agent dead, VMs running) was announced safe to recover"
        ));
    }
    if !r
        .ha_seen
        .get(&v)
        .is_some_and(|s| s.contains(&HaState::Unmanageable))
    {
        out.push(format!("no node reported h{v} Unmanageable"));
    }
    out
}

fn bmc_dead(s: &mut Setup) {
    s.duration_us = 100 * SEC;
    let v = s.host();
    let at = s.at(20, 25);
    let mode = if s.rng.random_bool(0.5) {
        BmcMode::Hang
    } else {
        BmcMode::Fail
    };
    s.fault(at - SEC, Fault::Bmc(v, mode));
    if s.rng.random_bool(0.5) {
        s.fault(at, Fault::CrashHost(v));
    } else {
        // The daemon dies but the VMs run on: only the watchdog will stop them.
        s.fault(at, Fault::CrashDaemon(v));
    }
    s.expected_crashes.push((v, at, Some(60 * SEC)));
    s.victims = vec![v];
}

fn expect_bmc_dead(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    let v = s.victims[0];
    only_fenced(r, &[v], &mut out);
    match confirmed(r, v) {
        Some(Evidence::PowerOff { .. }) => out.push(format!(
            "h{v} confirmed by power Off although its BMC is dead"
        )),
        Some(_) => {}
        None => out.push(format!("h{v} was never confirmed")),
    }
    out
}

fn restart_during_fence(s: &mut Setup) {
    s.duration_us = 150 * SEC;
    let v = s.host();
    let at = s.at(20, 30);
    s.fault(at, Fault::CrashHost(v));
    s.expected_crashes.push((v, at, Some(120 * SEC)));
    s.victims = vec![v];
    let kinds = [
        TriggerOn::Proposed,
        TriggerOn::Voted,
        TriggerOn::PersistAfterVote,
        TriggerOn::FenceStarted,
        TriggerOn::FenceCommand,
    ];
    let k = s.rng.random_range(1..=2);
    for _ in 0..k {
        let on = kinds[s.rng.random_range(0..kinds.len())];
        let restart_after_us = s.rng.random_range(SEC..=3 * SEC);
        s.triggers.push(Trigger {
            on,
            host: None,
            restart_after_us,
            wipe: false,
            stall_us: None,
            fired: false,
        });
    }
}

fn storm(s: &mut Setup) {
    s.duration_us = 60 * SEC;
    let k = (2 * s.nodes).div_ceil(5);
    let v = s.distinct(k);
    let at = s.at(20, 25);
    for &h in &v {
        s.fault(at, Fault::CrashHost(h));
    }
    s.victims = v;
}

fn expect_storm(_s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    no_fences(r, &mut out);
    no_self_fences(r, &mut out);
    if !r.storm_reported {
        out.push("no node reported a storm".into());
    }
    out
}

fn lossy_network(s: &mut Setup) {
    s.duration_us = 90 * SEC;
    s.params.net = NetParams {
        loss_pct: 20,
        dup_pct: 2,
        delay_base_us: 200,
        delay_jitter_us: 5 * MS,
        reliable_drop_pct: 2,
    };
}

fn random(s: &mut Setup) {
    s.duration_us = 120 * SEC;
    let n = s.nodes;
    // Half the runs use two shared paths: a host is alive if its heartbeat moves on any path,
    // stalled only if it stops on all, and self-fences only when every path failed.
    let paths = if s.rng.random_bool(0.5) { 2 } else { 1 };
    s.raw.storage.paths = (0..paths).map(|i| format!("/shared/{i}")).collect();
    let faults = s.rng.random_range(2..=5);
    for _ in 0..faults {
        let at = s.at(15, 90);
        let h = s.host();
        let back = at + s.rng.random_range(5 * SEC..=40 * SEC);
        match s.rng.random_range(0..21) {
            0 => s.fault(at, Fault::CrashHost(h)),
            1 => {
                s.fault(at, Fault::CrashDaemon(h));
                if s.rng.random_bool(0.7) {
                    s.fault(back, Fault::RestartDaemon(h));
                }
            }
            2 | 3 => {
                let k = s.rng.random_range(1..=n);
                let hosts = s.distinct(k);
                let mode = match s.rng.random_range(0..4) {
                    0 => StorageMode::Slow {
                        latency_us: s.rng.random_range(100 * MS..=4 * SEC),
                    },
                    1 => StorageMode::Fail,
                    _ => StorageMode::Hang,
                };
                let until_reboot = s.rng.random_bool(0.3);
                let path =
                    (paths > 1 && s.rng.random_bool(0.5)).then(|| s.rng.random_range(0..paths));
                s.fault(
                    at,
                    Fault::Storage {
                        hosts: hosts.clone(),
                        path,
                        mode,
                        until_reboot,
                    },
                );
                if s.rng.random_bool(0.7) {
                    s.fault(
                        back,
                        Fault::Storage {
                            hosts,
                            path: None,
                            mode: StorageMode::Ok,
                            until_reboot: false,
                        },
                    );
                }
            }
            4 => {
                let mut order = s.distinct(n);
                let cut = s.rng.random_range(1..n);
                let b = order.split_off(cut);
                s.fault(at, Fault::Partition(vec![order, b]));
                s.fault(back, Fault::Heal);
            }
            5 => {
                s.fault(at, Fault::Isolate(h));
                if s.rng.random_bool(0.7) {
                    s.fault(back, Fault::Heal);
                }
            }
            6 => {
                let o = (h + s.rng.random_range(1..n)) % n;
                s.fault(at, Fault::BlockLink(h, o));
                s.fault(back, Fault::Heal);
            }
            7 => {
                let loss = s.rng.random_range(5..=40);
                s.fault(
                    at,
                    Fault::Net(NetParams {
                        loss_pct: loss,
                        dup_pct: 3,
                        delay_base_us: 200,
                        delay_jitter_us: 10 * MS,
                        // Under heavy loss, connections break and take messages with them.
                        reliable_drop_pct: loss / 10,
                    }),
                );
                s.fault(back, Fault::Net(NetParams::default()));
            }
            8 => {
                s.fault(at, Fault::AgentDeath(h));
                s.fault(back, Fault::AgentRestore(h));
            }
            9 => {
                let mode = if s.rng.random_bool(0.5) {
                    BmcMode::Hang
                } else {
                    BmcMode::Fail
                };
                s.fault(at, Fault::Bmc(h, mode));
            }
            13 => {
                // A stale client cache: this host's reads (its own slot's included) freeze.
                s.fault(at, Fault::FreezeReader(h));
                if s.rng.random_bool(0.7) {
                    s.fault(back, Fault::ThawReader(h));
                }
            }
            14 => {
                // Reads fail, hang or slow down on their own, writes unaffected.
                let k = s.rng.random_range(1..=n);
                let hosts = s.distinct(k);
                let mode = match s.rng.random_range(0..3) {
                    0 => ReadMode::Fail,
                    1 => ReadMode::Hang,
                    _ => ReadMode::Slow {
                        latency_us: s.rng.random_range(100 * MS..=3 * SEC),
                    },
                };
                s.fault(
                    at,
                    Fault::Reads {
                        hosts: hosts.clone(),
                        path: None,
                        mode,
                    },
                );
                s.fault(
                    back,
                    Fault::Reads {
                        hosts,
                        path: None,
                        mode: ReadMode::Normal,
                    },
                );
            }
            15 => {
                // A shared mount that is not shared (with or without a marker copy).
                let marker = s.rng.random_bool(0.5);
                let until_reboot = s.rng.random_bool(0.5);
                s.fault(
                    at,
                    Fault::Storage {
                        hosts: vec![h],
                        path: None,
                        mode: StorageMode::Private { marker },
                        until_reboot,
                    },
                );
                if s.rng.random_bool(0.5) {
                    s.fault(
                        back,
                        Fault::Storage {
                            hosts: vec![h],
                            path: None,
                            mode: StorageMode::Ok,
                            until_reboot: false,
                        },
                    );
                }
            }
            16 => s.fault(at, Fault::PowerLoss(h)),
            17 => {
                // A stall of the node task (slow fsync) or of the whole process (SIGSTOP).
                let us = s.rng.random_range(500 * MS..=12 * SEC);
                if s.rng.random_bool(0.5) {
                    s.fault(at, Fault::StallNode(h, us));
                } else {
                    s.fault(at, Fault::StallProcess(h, us));
                }
            }
            18 => {
                // A slow disk for the state file, for a while.
                let lo = s.rng.random_range(10 * MS..=800 * MS);
                s.fault(at, Fault::DiskLatency(h, lo, lo * 2));
                s.fault(back, Fault::DiskLatency(h, 0, 0));
            }
            19 => {
                // The state file is lost (a replaced disk).
                let after = s.rng.random_range(SEC..=10 * SEC);
                s.fault(at, Fault::WipeDisk(h, after));
            }
            20 => {
                // The out-of-band network cannot reach one BMC from some members.
                let k = s.rng.random_range(1..n);
                let from: Vec<usize> = s
                    .distinct(n)
                    .into_iter()
                    .filter(|&x| x != h)
                    .take(k)
                    .collect();
                s.fault(at, Fault::BmcUnreachable { bmc: h, from });
                s.fault(back, Fault::BmcHeal);
            }
            11 => {
                // A clean stop (VMs run on); sometimes the daemon comes back.
                s.fault(at, Fault::StopDaemon(h));
                if s.rng.random_bool(0.5) {
                    s.fault(back, Fault::RestartDaemon(h));
                }
            }
            12 => {
                // A rolling restart of a few daemons (clean stop or crash, then start).
                let k = s.rng.random_range(1..=n.min(3));
                let mut t = at;
                for p in s.distinct(k) {
                    if s.rng.random_bool(0.5) {
                        s.fault(t, Fault::StopDaemon(p));
                    } else {
                        s.fault(t, Fault::CrashDaemon(p));
                    }
                    let up = t + s.rng.random_range(500 * MS..=3 * SEC);
                    s.fault(up, Fault::RestartDaemon(p));
                    t = up + s.rng.random_range(2 * SEC..=10 * SEC);
                }
            }
            _ => {
                let by = s.host();
                let cmd = match s.rng.random_range(0..3) {
                    0 => OperatorCommand::Maintenance {
                        member: MemberId(h as u16),
                        on: true,
                    },
                    1 => OperatorCommand::Disarm,
                    _ => OperatorCommand::ManualFence {
                        target: MemberId(h as u16),
                    },
                };
                s.fault(at, Fault::Operator(by, cmd));
                let undo = match cmd {
                    OperatorCommand::Maintenance { member, .. } => {
                        Some(OperatorCommand::Maintenance { member, on: false })
                    }
                    OperatorCommand::Disarm => Some(OperatorCommand::Arm),
                    _ => None,
                };
                if let Some(undo) = undo {
                    s.fault(back, Fault::Operator(by, undo));
                }
            }
        }
    }
}

/// A daemon is stopped cleanly (its VMs run on) and then three of its peers restart, one after
/// another (a rolling upgrade). Half the runs fence by poison pill only, where a wrong fence
/// would be "confirmed" by deadline and announce running VMs safe to recover.
fn clean_stop_then_restarts(s: &mut Setup) {
    if s.rng.random_bool(0.5) {
        s.raw.fencing.levels = Some(vec![RawLevel::poison_pill("pill")]);
    }
    let order = s.distinct(4.min(s.nodes));
    let x = order[0];
    let at = s.at(20, 25);
    s.fault(at, Fault::StopDaemon(x));
    let mut t = at + s.rng.random_range(2 * SEC..=10 * SEC);
    for &p in &order[1..] {
        // `systemctl restart`: a clean stop, then a start a moment later; or a crash and a
        // restart by systemd.
        if s.rng.random_bool(0.5) {
            s.fault(t, Fault::StopDaemon(p));
        } else {
            s.fault(t, Fault::CrashDaemon(p));
        }
        let back = t + s.rng.random_range(500 * MS..=3 * SEC);
        s.fault(back, Fault::RestartDaemon(p));
        t += s.rng.random_range(5 * SEC..=20 * SEC);
    }
    s.duration_us = t + 60 * SEC;
    s.victims = vec![x];
}

fn expect_clean_stop(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    let x = s.victims[0];
    no_fences(r, &mut out);
    no_self_fences(r, &mut out);
    if confirmed(r, x).is_some() {
        out.push(format!(
            "h{x} (stopped cleanly, VMs running) was announced safe to recover"
        ));
    }
    if !r
        .ha_seen
        .get(&x)
        .is_some_and(|s| s.contains(&HaState::Left))
    {
        out.push(format!("no node reported h{x} Left"));
    }
    out
}

/// A daemon is stopped cleanly, and later an operator asks for its fence explicitly (the host
/// must go). With a working BMC it is fenced as an operator fence and confirmed by power Off;
/// in a third of the runs its BMC is dead and the poison pill may not confirm it (its watchdog is
/// closed), so it stays unconfirmed.
fn clean_stop_operator_fence(s: &mut Setup) {
    s.duration_us = 90 * SEC;
    let order = s.distinct(2);
    let (x, by) = (order[0], order[1]);
    let at = s.at(20, 25);
    s.fault(at, Fault::StopDaemon(x));
    if s.rng.random_bool(1.0 / 3.0) {
        s.fault(at, Fault::Bmc(x, BmcMode::Fail));
        s.variant = 1;
    }
    let ask = at + s.rng.random_range(15 * SEC..=30 * SEC);
    s.fault(
        ask,
        Fault::Operator(
            by,
            OperatorCommand::ManualFence {
                target: MemberId(x as u16),
            },
        ),
    );
    s.victims = vec![x];
}

fn expect_operator_fence(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    let x = s.victims[0];
    only_fenced(r, &[x], &mut out);
    let bmc_dead = s.variant == 1;
    match (confirmed(r, x), bmc_dead) {
        (Some(Evidence::PowerOff { .. }), false) => {}
        (None, true) => {}
        (got, _) => out.push(format!(
            "h{x} (left, then fenced by an operator, BMC {}) confirmed by {got:?}; expected {}",
            if bmc_dead { "dead" } else { "working" },
            if bmc_dead {
                "no confirmation"
            } else {
                "power Off"
            }
        )),
    }
    if !bmc_dead && r.fences.is_empty() {
        out.push(format!("the operator's fence of h{x} never started"));
    }
    no_self_fences(r, &mut out);
    out
}

/// Hosts that have been up for about three weeks, a crash, and daemons restarted in the same
/// boot in the middle of its fence round (after voting, after persisting the vote, after
/// starting the fence). Every instant a daemon persisted was taken on the clock of the process
/// before; the restarted one must not read them as weeks in the future.
fn restart_after_long_uptime(s: &mut Setup) {
    s.duration_us = 150 * SEC;
    s.params.initial_uptime_us = (20 * DAY, 22 * DAY);
    // The daemon reads CLOCK_BOOTTIME; half the runs give it a clock that starts with each
    // process instead, which the core must notice (an earlier clock than it persisted) and
    // treat like a reboot.
    if s.rng.random_bool(0.5) {
        s.params.daemon_clock = DaemonClock::Process;
    }
    let v = s.host();
    let at = s.at(20, 30);
    // The host loses power and stays off (its BMC answers Off): no new boot will prove it gone,
    // only a fence can.
    s.fault(at, Fault::PowerLoss(v));
    s.expected_crashes.push((v, at, Some(120 * SEC)));
    s.victims = vec![v];
    let kinds = [
        TriggerOn::VoterPersisted,
        TriggerOn::VoterPersisted,
        TriggerOn::FenceStarted,
        TriggerOn::FenceCommand,
    ];
    let on = kinds[s.rng.random_range(0..kinds.len())];
    let restart_after_us = s.rng.random_range(3 * SEC..=6 * SEC);
    s.triggers.push(Trigger {
        on,
        host: None,
        restart_after_us,
        wipe: false,
        stall_us: None,
        fired: false,
    });
}

/// One host's shared mount is not shared: it failed at boot (the heartbeat goes to the local
/// mountpoint directory) or was replaced underneath later. Its writes succeed and it reads back
/// what it wrote, but nobody else sees them. Then it loses its network, with its BMC dead: the
/// majority fences it by poison pill, which it never reads. Half the runs keep a copy of the
/// cluster marker in the private directory (a stale copy of the shared tree), which a marker
/// check alone cannot tell apart.
fn private_mount(s: &mut Setup) {
    s.duration_us = 150 * SEC;
    let x = s.host();
    let marker = s.rng.random_bool(0.5);
    let at = if s.rng.random_bool(0.5) {
        0
    } else {
        s.at(15, 25)
    };
    s.fault(
        at,
        Fault::Storage {
            hosts: vec![x],
            path: None,
            mode: StorageMode::Private { marker },
            until_reboot: true,
        },
    );
    s.fault(at, Fault::Bmc(x, BmcMode::Fail));
    let cut = s.at(35, 45);
    s.fault(cut, Fault::Isolate(x));
    s.victims = vec![x];
}

/// Every other host's reads of the shared storage fail (or hang) for a while; a host crashes
/// during that outage after a last write the others have not read yet. When their reads come
/// back, that write is new to them: it must not read as fresh life.
fn crash_during_read_outage(s: &mut Setup) {
    s.duration_us = 150 * SEC;
    let v = s.host();
    let others: Vec<usize> = (0..s.nodes).filter(|&h| h != v).collect();
    let at = s.at(20, 25);
    let crash = at + s.rng.random_range(2 * SEC..=8 * SEC);
    let back = crash + s.rng.random_range(5 * SEC..=15 * SEC);
    if s.rng.random_bool(0.5) {
        // Only the others' reads fail or hang; the victim writes on until it dies.
        let mode = if s.rng.random_bool(0.5) {
            ReadMode::Fail
        } else {
            ReadMode::Hang
        };
        s.fault(
            at,
            Fault::Reads {
                hosts: others.clone(),
                path: None,
                mode,
            },
        );
        s.fault(
            back,
            Fault::Reads {
                hosts: others,
                path: None,
                mode: ReadMode::Normal,
            },
        );
    } else {
        // The shared storage hangs for everyone (writes under way land when it answers).
        let all: Vec<usize> = (0..s.nodes).collect();
        s.fault(
            at,
            Fault::Storage {
                hosts: all.clone(),
                path: None,
                mode: StorageMode::Hang,
                until_reboot: false,
            },
        );
        s.fault(
            back,
            Fault::Storage {
                hosts: all,
                path: None,
                mode: StorageMode::Ok,
                until_reboot: false,
            },
        );
    }
    // A power loss (only a fence confirms it), or a kernel panic (its watchdog resets it and it
    // comes back with a new boot id, which confirms it).
    if s.rng.random_bool(0.5) {
        s.fault(crash, Fault::PowerLoss(v));
    } else {
        s.fault(crash, Fault::CrashHost(v));
    }
    // Reads failing everywhere are a common-mode failure: every reader is unhealthy (it cannot
    // prove its path shared) and in storm mode. Fenced within the storm's cooldown plus 20 s of
    // the reads coming back.
    s.expected_crashes
        .push((v, crash, Some(back - crash + 80 * SEC)));
    s.victims = vec![v];
}

/// Every host's state-file fsync is slow (0.3 to 1.2 s a persist, a busy disk) and a host loses
/// power. Membership traffic must keep flowing while a persist is in flight, or SWIM sees live
/// hosts as Suspect, rounds are abandoned and storms raised, and the crash is never fenced.
/// (A round needs two persists in a row, the proposer's and each voter's, within
/// `fencing.proposal_timeout`: slower disks need a longer one; docs/SAFETY.md.)
fn slow_disk(s: &mut Setup) {
    s.duration_us = 120 * SEC;
    let lo = s.rng.random_range(300 * MS..=900 * MS);
    s.params.persist_latency_us = (lo, lo + 300 * MS);
    let v = s.host();
    let at = s.at(30, 40);
    s.fault(at, Fault::PowerLoss(v));
    s.expected_crashes.push((v, at, Some(30 * SEC)));
    s.victims = vec![v];
}

fn expect_slow_disk(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = expect_victims_confirmed(s, r);
    if r.storm_reported {
        out.push("a storm was raised (live hosts looked Down or late)".into());
    }
    out
}

/// A host crashes, and a member that voted (or proposed, or started the fence) loses its disk
/// at that moment and comes back without its state file. It must neither reuse a generation
/// nor vote twice: its old promises are gone.
fn wiped_disk(s: &mut Setup) {
    s.duration_us = 200 * SEC;
    let v = s.host();
    let at = s.at(20, 30);
    s.fault(at, Fault::PowerLoss(v));
    // A restarting member is Suspect, then late, for a few seconds: with the crashed host that
    // is a storm (threshold 1 of 5) and its cooldown, once or twice.
    s.expected_crashes.push((v, at, Some(160 * SEC)));
    s.victims = vec![v];
    let kinds = [
        TriggerOn::VoterPersisted,
        TriggerOn::PersistAfterVote,
        TriggerOn::FenceStarted,
        TriggerOn::FenceCommand,
    ];
    let on = kinds[s.rng.random_range(0..kinds.len())];
    let restart_after_us = s.rng.random_range(SEC..=5 * SEC);
    s.triggers.push(Trigger {
        on,
        host: None,
        restart_after_us,
        wipe: true,
        stall_us: None,
        fired: false,
    });
    // Sometimes a second member loses its disk later, at random.
    if s.rng.random_bool(0.3) {
        let h = s.host();
        let when = s.at(40, 60);
        s.fault(when, Fault::WipeDisk(h, 2 * SEC));
    }
}

/// One host is down (powered off and fenced); then a peer's daemon is restarted cleanly
/// (`systemctl restart`, an upgrade). Stopping, it is Left; starting, it has not measured its
/// storage yet: neither is trouble, and no storm may be raised (with five hosts, one down plus
/// one more in trouble is a storm).
fn restart_with_one_down(s: &mut Setup) {
    s.duration_us = 100 * SEC;
    let order = s.distinct(2);
    let (down, p) = (order[0], order[1]);
    let off = s.at(15, 18);
    s.fault(off, Fault::PowerLoss(down));
    let at = s.at(40, 50);
    s.fault(at, Fault::StopDaemon(p));
    let back = at + s.rng.random_range(200 * MS..=1_500 * MS);
    s.fault(back, Fault::RestartDaemon(p));
    s.victims = vec![down, p];
}

fn expect_no_storm_after_restart(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    only_fenced(r, &s.victims[..1], &mut out);
    if r.storm_reported {
        out.push(format!(
            "a storm was raised when h{}'s daemon restarted cleanly",
            s.victims[1]
        ));
    }
    out
}

/// A host loses power and a voter of its fence dies right after persisting its vote, to come
/// back seconds later, after the fence: it must learn the certificate and the outcome from its
/// peers, and end with the same view of the host (Fenced) and of the budget as theirs.
fn voter_restarted_during_fence(s: &mut Setup) {
    s.duration_us = 90 * SEC;
    let v = s.host();
    let at = s.at(20, 30);
    s.fault(at, Fault::PowerLoss(v));
    s.expected_crashes.push((v, at, Some(60 * SEC)));
    s.victims = vec![v];
    let restart_after_us = s.rng.random_range(5 * SEC..=10 * SEC);
    s.triggers.push(Trigger {
        on: TriggerOn::VoterPersisted,
        host: None,
        restart_after_us,
        wipe: false,
        stall_us: None,
        fired: false,
    });
}

fn expect_views_converge(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = expect_victims_confirmed(s, r);
    let v = s.victims[0];
    let budgets: std::collections::BTreeSet<usize> =
        r.final_views.values().map(|(_, b)| *b).collect();
    if budgets.len() > 1 {
        out.push(format!(
            "the members count different budgets at the end: {budgets:?}"
        ));
    }
    for (h, (ha, _)) in &r.final_views {
        if ha[v] != Some(HaState::Fenced) {
            out.push(format!("h{h} ends seeing h{v} {:?}, not Fenced", ha[v]));
        }
    }
    out
}

/// A host loses power while its BMC hangs (the first level runs into its timeout), and the member
/// that proposes, or executes, its fence stalls for 3-15 s at the worst moment (after
/// proposing, after starting the fence, after its first agent command): votes and agent
/// results queue up and are handled late. A late certificate or a level started late must not
/// outlive the voters' promises: one fence in flight per target (I4). Stalls stay below the
/// watchdog timeout (a longer one resets the stalled host, as it should); the stalled member
/// looks Suspect meanwhile, which with the dead host is a storm and its cooldown.
fn proposer_stall(s: &mut Setup) {
    s.duration_us = 220 * SEC;
    let v = s.host();
    let at = s.at(20, 30);
    s.fault(at - SEC, Fault::Bmc(v, BmcMode::Hang));
    s.fault(at, Fault::PowerLoss(v));
    s.expected_crashes.push((v, at, Some(180 * SEC)));
    s.victims = vec![v];
    let kinds = [
        TriggerOn::Proposed,
        TriggerOn::FenceStarted,
        TriggerOn::FenceCommand,
    ];
    let on = kinds[s.rng.random_range(0..kinds.len())];
    let stall = s.rng.random_range(3 * SEC..=8 * SEC);
    s.triggers.push(Trigger {
        on,
        host: None,
        restart_after_us: 0,
        wipe: false,
        stall_us: Some(stall),
        fired: false,
    });
    // Half the runs also restart a member that saw the certificate: it no longer knows that
    // a fence is in flight, and proposes one itself once its quiet period is over.
    if s.rng.random_bool(0.5) {
        let restart_after_us = s.rng.random_range(SEC..=3 * SEC);
        s.triggers.push(Trigger {
            on: TriggerOn::CertificateSeen,
            host: None,
            restart_after_us,
            wipe: false,
            stall_us: None,
            fired: false,
        });
    }
}

/// Shared storage is lost everywhere while the network is split into two groups that reach each
/// other only through one bridge host (the smaller group cannot make a quorum by itself). Every
/// host can still exchange contact probes with a quorum through one relay, the bridge, so no
/// watchdog may reset anyone (I3).
fn bridged_storage_loss(s: &mut Setup) {
    s.duration_us = 90 * SEC;
    let n = s.nodes;
    let order = s.distinct(n);
    let bridge = order[0];
    let small = (n - 1) / 3;
    let a: Vec<usize> = order[1..=small].to_vec();
    let b: Vec<usize> = order[small + 1..].to_vec();
    let at = s.at(20, 25);
    for &x in &a {
        for &y in &b {
            s.fault(at, Fault::BlockLink(x, y));
            s.fault(at, Fault::BlockLink(y, x));
        }
    }
    let all: Vec<usize> = (0..n).collect();
    s.fault(
        at + SEC,
        Fault::Storage {
            hosts: all,
            path: None,
            mode: StorageMode::Hang,
            until_reboot: false,
        },
    );
    s.victims = vec![bridge];
}

/// A host panics with its BMC dead: the poison-pill level runs. While its fence waits for the
/// watchdog deadline, every other daemon restarts (a cluster-wide upgrade). The host's watchdog
/// resets it and it comes back with a new boot id: its old boot must still be announced safe to
/// recover, by the restarted members.
fn cluster_restart_during_pill(s: &mut Setup) {
    s.duration_us = 150 * SEC;
    let v = s.host();
    let at = s.at(20, 25);
    s.fault(at - SEC, Fault::Bmc(v, BmcMode::Fail));
    s.fault(at, Fault::CrashHost(v));
    s.expected_crashes.push((v, at, Some(120 * SEC)));
    s.victims = vec![v];
    // The pill is written about 6 s after the crash and waits about 20 s; its watchdog resets
    // it about 10 s after the crash and it boots 10 s later. The daemons restart so that it
    // comes back during their start-up quiet period (before they judge anyone again), while
    // the pill's deadline still runs.
    s.params.boot_delay_us = (10 * SEC, 10 * SEC);
    let restart = at + s.rng.random_range(12 * SEC..=16 * SEC);
    for h in (0..s.nodes).filter(|&h| h != v) {
        let back = restart + s.rng.random_range(500 * MS..=3 * SEC);
        if s.rng.random_bool(0.5) {
            s.fault(restart, Fault::StopDaemon(h));
        } else {
            s.fault(restart, Fault::CrashDaemon(h));
        }
        s.fault(back, Fault::RestartDaemon(h));
    }
}

/// A host's whole daemon is frozen for a minute (SIGSTOP, a paused VM) and resumed; no
/// watchdog is configured and its BMC fails, so nobody can fence it meanwhile. Write failures
/// measured across its own stall are not evidence of a storage fault: after waking it measures
/// again, finds its storage fine, and never asks to fence itself.
fn frozen_and_resumed(s: &mut Setup) {
    s.duration_us = 130 * SEC;
    s.raw.watchdog.enabled = Some(false);
    s.raw.fencing.levels = Some(vec![RawLevel::agent("bmc", "10s")]);
    let v = s.host();
    let at = s.at(20, 25);
    s.fault(at, Fault::Bmc(v, BmcMode::Fail));
    let us = s.rng.random_range(20 * SEC..=60 * SEC);
    s.fault(at, Fault::StallProcess(v, us));
    s.victims = vec![v];
}

/// `frozen-and-resumed`, and while the host is frozen (its peers hold it dead, its fence failing
/// on a dead BMC) a compromised member gossips that it rebooted: a new boot, unsigned and signed
/// with the liar's own key. A new boot would prove its VMs gone; this one must prove nothing.
fn forged_reboot(s: &mut Setup) {
    frozen_and_resumed(s);
    let v = s.victims[0];
    let by = (v + 1 + s.rng.random_range(0..s.nodes - 1)) % s.nodes;
    let at = s
        .faults
        .iter()
        .find_map(|(t, f)| matches!(f, Fault::StallProcess(..)).then_some(*t));
    let at = at.expect("frozen_and_resumed stalls the host");
    for lo in [8, 16] {
        let t = at + s.rng.random_range(lo * SEC..=(lo + 2) * SEC);
        s.fault(
            t,
            Fault::Forge {
                by,
                target: v,
                forgery: Forgery::HealthNewBoot,
            },
        );
    }
}

/// A compromised member gossips a disarm at the highest flag version (which no operator command
/// could outbid), then another host crashes: it must still be fenced.
fn forged_disarm(s: &mut Setup) {
    s.duration_us = 70 * SEC;
    let [by, v] = s.distinct(2)[..] else {
        unreachable!("min_nodes is 3")
    };
    let forge = s.at(15, 20);
    s.fault(
        forge,
        Fault::Forge {
            by,
            target: v,
            forgery: Forgery::DisarmForever,
        },
    );
    let at = s.at(30, 35);
    s.fault(at, Fault::CrashHost(v));
    s.expected_crashes.push((v, at, Some(10 * SEC)));
    s.victims = vec![v];
}

fn expect_forged_disarm(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = expect_victims_confirmed(s, r);
    if r.drops.get("flag_step_too_large").copied().unwrap_or(0) == 0 {
        out.push("no member counted a `flag_step_too_large` drop".into());
    }
    out
}

/// A daemon is stopped cleanly (its VMs run on; with a dead BMC half the time), then a
/// compromised member gossips a SWIM update saying it runs again under a far higher generation,
/// repeatedly. Nobody signs SWIM updates: the stop must stand, and nobody may fence the host.
fn forged_return(s: &mut Setup) {
    s.duration_us = 90 * SEC;
    let [x, by] = s.distinct(2)[..] else {
        unreachable!("min_nodes is 3")
    };
    if s.rng.random_bool(0.5) {
        s.fault(SEC, Fault::Bmc(x, BmcMode::Fail));
    }
    let at = s.at(20, 25);
    s.fault(at, Fault::StopDaemon(x));
    for k in 0..5u64 {
        s.fault(
            at + 10 * SEC + k * 5 * SEC,
            Fault::Forge {
                by,
                target: x,
                forgery: Forgery::SwimReturn,
            },
        );
    }
    s.victims = vec![x];
}

fn expect_forged_reboot(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = expect_no_self_fence(s, r);
    for why in ["unsigned_health", "bad_broadcast"] {
        if r.drops.get(why).copied().unwrap_or(0) == 0 {
            out.push(format!("no member counted a `{why}` drop"));
        }
    }
    out
}

fn expect_no_self_fence(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    no_self_fences(r, &mut out);
    if r.confirmations.keys().any(|(h, _)| *h == s.victims[0]) {
        out.push(format!("h{} was announced safe to recover", s.victims[0]));
    }
    out
}

/// A host loses power for good with its BMC dead: the poison-pill level runs. Just before the
/// deadline every survivor's storage fails for 10-30 s: the attempt fails and its pill cannot
/// be cleared. When the storage is back the clear is retried and succeeds; no pill is left for
/// a later boot to find (and the host is fenced by a later attempt).
fn pill_clear_retried(s: &mut Setup) {
    s.duration_us = 200 * SEC;
    let v = s.host();
    let at = s.at(20, 25);
    s.fault(at - SEC, Fault::Bmc(v, BmcMode::Fail));
    s.fault(at, Fault::PowerLoss(v));
    let others: Vec<usize> = (0..s.nodes).filter(|&h| h != v).collect();
    let fail = at + s.rng.random_range(20 * SEC..=24 * SEC);
    let back = fail + s.rng.random_range(10 * SEC..=30 * SEC);
    s.fault(
        fail,
        Fault::Storage {
            hosts: others.clone(),
            path: None,
            mode: StorageMode::Fail,
            until_reboot: false,
        },
    );
    s.fault(
        back,
        Fault::Storage {
            hosts: others,
            path: None,
            mode: StorageMode::Ok,
            until_reboot: false,
        },
    );
    s.victims = vec![v];
}

fn expect_no_pill_left(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    only_fenced(r, &s.victims, &mut out);
    if confirmed(r, s.victims[0]).is_none() {
        out.push(format!("h{} was never confirmed", s.victims[0]));
    }
    for (p, h) in &r.pills_left {
        out.push(format!(
            "a pill is left in h{h}'s slot on path {p} at the end"
        ));
    }
    out
}

/// A host loses power; the out-of-band network reaches its BMC from one survivor only (a
/// broken switch port, a firewall rule): attempts by the others fail at once, and the fence
/// must still be carried out, by the one member that can reach the BMC, confirmed by power Off.
fn bmc_partitioned(s: &mut Setup) {
    s.duration_us = 200 * SEC;
    let order = s.distinct(2);
    let (v, reach) = (order[0], order[1]);
    let at = s.at(20, 25);
    let from: Vec<usize> = (0..s.nodes).filter(|&h| h != v && h != reach).collect();
    s.fault(at - SEC, Fault::BmcUnreachable { bmc: v, from });
    // Without a pill level, only the BMC can confirm.
    s.raw.fencing.levels = Some(vec![RawLevel::agent("bmc", "5s")]);
    s.fault(at, Fault::PowerLoss(v));
    s.expected_crashes.push((v, at, Some(150 * SEC)));
    s.victims = vec![v];
}

/// A configuration change rolled host by host (10-20 s apart): in half the runs a member is
/// added (its daemon starts once it has the new roster), in the other half a setting the digest
/// covers changes (the fence budget). While the hosts run different configurations they drop
/// each other's messages and ignore each other's heartbeat slots: each group sees the other
/// Down with an unknown heartbeat, so nobody is fenced. Once every host runs the new
/// configuration, a host loses power and is fenced within 60 s.
fn rolling_config_change(s: &mut Setup) {
    let add = s.rng.random_bool(0.5);
    let (old_n, new_n) = if add {
        (s.nodes - 1, s.nodes)
    } else {
        (s.nodes, s.nodes)
    };
    let levels = s.raw.fencing.levels.clone();
    let mut old = base_config(old_n);
    old.fencing.levels = levels.clone();
    let mut new = base_config(new_n);
    new.fencing.levels = levels;
    if !add {
        new.fencing.budget = Some(4);
    }
    s.raw = old;
    let mut order = s.distinct(old_n);
    if add {
        // The new member gets the new roster first (its daemon could not start before).
        order.insert(0, new_n - 1);
    }
    let mut t = s.at(20, 25);
    for &h in &order {
        s.fault(t, Fault::Reconfigure(h, Box::new(new.clone())));
        t += s.rng.random_range(10 * SEC..=20 * SEC);
    }
    // Everyone runs the new configuration and is past its quiet period.
    let crash = t + 20 * SEC;
    let v = order[s.rng.random_range(0..order.len())];
    s.fault(crash, Fault::PowerLoss(v));
    s.expected_crashes.push((v, crash, Some(60 * SEC)));
    s.duration_us = crash + 70 * SEC;
    s.victims = vec![v];
    s.variant = u32::from(add);
}

fn expect_rolling_change(s: &Setup, r: &RunResult) -> Vec<String> {
    let mut out = expect_victims_confirmed(s, r);
    no_watchdog_resets(r, &mut out);
    no_self_fences(r, &mut out);
    out
}

fn expect_invariants_only(_s: &Setup, _r: &RunResult) -> Vec<String> {
    Vec::new()
}

/// Every scenario.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "crash-one",
        about: "one host crashes (kernel panic, BMC works): it alone is fenced and confirmed within 10 s",
        default_nodes: 5,
        min_nodes: 3,
        build: crash_one,
        expect: expect_crash_one,
    },
    Scenario {
        name: "crash-two-of-seven",
        about: "two of seven hosts crash within 5 s: both are fenced and confirmed (usually ~6 s; within 60 s when the second crash kills the first fence's proposer)",
        default_nodes: 7,
        min_nodes: 5,
        build: crash_two_of_seven,
        expect: expect_victims_confirmed,
    },
    Scenario {
        name: "storage-loss-everywhere",
        about: "shared storage fails or hangs for every host, then returns: no fence, no self-fence, no watchdog reset, storm reported",
        default_nodes: 5,
        min_nodes: 3,
        build: storage_loss_everywhere,
        expect: expect_nothing_happens_storm,
    },
    Scenario {
        name: "storage-loss-one",
        about: "one host loses its storage until it reboots: the quorum agrees, it reboots itself once, nobody fences it",
        default_nodes: 5,
        min_nodes: 3,
        build: storage_loss_one,
        expect: expect_storage_loss_one,
    },
    Scenario {
        name: "storage-flapping-cascade",
        about: "hosts lose their heartbeat writes one after another (resync load moving on): the budget of 3 stops the cascade; slow-but-landing writes touch nobody",
        default_nodes: 7,
        min_nodes: 6,
        build: storage_flapping_cascade,
        expect: expect_cascade,
    },
    Scenario {
        name: "partition-minority",
        about: "the network splits majority/minority for 60 s, storage shared by all: nobody is fenced",
        default_nodes: 5,
        min_nodes: 3,
        build: partition_minority,
        expect: expect_quiet,
    },
    Scenario {
        name: "partition-isolated-no-storage",
        about: "one host loses network and storage: the majority fences it within 15 s",
        default_nodes: 5,
        min_nodes: 3,
        build: partition_isolated_no_storage,
        expect: expect_isolated,
    },
    Scenario {
        name: "agent-death",
        about: "a management agent dies while its VMs run: never fenced, never safe to recover, reported Unmanageable",
        default_nodes: 5,
        min_nodes: 3,
        build: agent_death,
        expect: expect_agent_death,
    },
    Scenario {
        name: "bmc-dead",
        about: "a host (or its daemon) crashes and its BMC hangs or fails: the next level (poison pill + watchdog deadline) fences it; never confirmed by power",
        default_nodes: 5,
        min_nodes: 3,
        build: bmc_dead,
        expect: expect_bmc_dead,
    },
    Scenario {
        name: "restart-during-fence",
        about: "a host crashes and proposers or voters crash mid-round (before/after persisting, after starting the fence): still fenced once, within 120 s",
        default_nodes: 7,
        min_nodes: 5,
        build: restart_during_fence,
        expect: expect_victims_confirmed,
    },
    Scenario {
        name: "storm",
        about: "40% of the hosts crash at once: storm reported, nobody fenced",
        default_nodes: 5,
        min_nodes: 3,
        build: storm,
        expect: expect_storm,
    },
    Scenario {
        name: "lossy-network-20",
        about: "20% packet loss, duplicates and reordering for the whole run, nobody crashes: zero fences",
        default_nodes: 5,
        min_nodes: 3,
        build: lossy_network,
        expect: expect_quiet,
    },
    Scenario {
        name: "clean-stop-then-restarts",
        about: "a daemon is stopped cleanly (VMs run on), then three peers restart one by one: nobody fences it, nobody announces it safe to recover, every member reports it Left",
        default_nodes: 5,
        min_nodes: 4,
        build: clean_stop_then_restarts,
        expect: expect_clean_stop,
    },
    Scenario {
        name: "clean-stop-unheard",
        about: "a host loses network and shared storage, and its daemon is stopped cleanly before its peers see it Down: nobody heard the stop, so it keeps its watchdog armed; the peers fence it (by power, or with a dead BMC by pill and watchdog deadline) and the deadline is true",
        default_nodes: 5,
        min_nodes: 3,
        build: clean_stop_unheard,
        expect: expect_clean_stop_unheard,
    },
    Scenario {
        name: "forged-outcome",
        about: "a compromised member tells everyone a live host was fenced (an unsigned outcome, a signed one over a certificate of its own vote, one naming another executor, fence news): nobody calls it fenced or its VMs safe to recover, and every forgery is counted",
        default_nodes: 5,
        min_nodes: 3,
        build: forged_outcome,
        expect: expect_forged_outcome,
    },
    Scenario {
        name: "forged-reboot",
        about: "a frozen host's peers hold it dead (its BMC fails) when a compromised member gossips that it rebooted (a new boot, unsigned and signed with the liar's key): nobody takes it as proof, the host resumes with its VMs and is never announced safe to recover",
        default_nodes: 5,
        min_nodes: 3,
        build: forged_reboot,
        expect: expect_forged_reboot,
    },
    Scenario {
        name: "forged-return",
        about: "a daemon is stopped cleanly, then a compromised member gossips SWIM updates saying it runs again under a far higher generation: the stop stands, nobody fences the host",
        default_nodes: 5,
        min_nodes: 3,
        build: forged_return,
        expect: expect_clean_stop,
    },
    Scenario {
        name: "forged-disarm",
        about: "a compromised member gossips a disarm at the highest flag version, then a host crashes: the flag is refused (its counter jumps too far) and the crash is fenced within 10 s",
        default_nodes: 5,
        min_nodes: 3,
        build: forged_disarm,
        expect: expect_forged_disarm,
    },
    Scenario {
        name: "clean-stop-operator-fence",
        about: "a daemon is stopped cleanly, then an operator fences its host explicitly: fenced as an operator fence and confirmed only by power Off (never by a deadline)",
        default_nodes: 5,
        min_nodes: 3,
        build: clean_stop_operator_fence,
        expect: expect_operator_fence,
    },
    Scenario {
        name: "restart-after-long-uptime",
        about: "hosts up for three weeks, a crash, a daemon restarted in the same boot mid-round: its persisted promises and attempts keep their real length, the crash is fenced within 120 s",
        default_nodes: 3,
        min_nodes: 3,
        build: restart_after_long_uptime,
        expect: expect_victims_confirmed,
    },
    Scenario {
        name: "private-mount",
        about: "one host's shared mount is private (failed at boot, or replaced later; with or without a copy of the marker), then it is cut off with a dead BMC: it is never announced safe to recover while it runs",
        default_nodes: 5,
        min_nodes: 3,
        build: private_mount,
        expect: expect_invariants_only,
    },
    Scenario {
        name: "crash-during-read-outage",
        about: "the other hosts' reads fail or hang for a while, one host loses power meanwhile after a last write they have not read: never taken for alive, fenced within the storm cooldown + 20 s of their reads returning",
        default_nodes: 5,
        min_nodes: 3,
        build: crash_during_read_outage,
        expect: expect_victims_confirmed,
    },
    Scenario {
        name: "slow-disk",
        about: "every host's state file syncs slowly (0.3-1.2 s a persist) and a host loses power: membership keeps flowing while persists are written, no storm, the host is fenced within 30 s",
        default_nodes: 5,
        min_nodes: 3,
        build: slow_disk,
        expect: expect_slow_disk,
    },
    Scenario {
        name: "wiped-disk",
        about: "a host loses power and a member that voted for (or runs) its fence loses its disk meanwhile: it comes back with a higher generation, votes for nothing until its old promises lapsed and its peers' news arrived; the host is fenced once, within 160 s",
        default_nodes: 5,
        min_nodes: 3,
        build: wiped_disk,
        expect: expect_victims_confirmed,
    },
    Scenario {
        name: "restart-with-one-down",
        about: "one host is down and fenced, then a peer's daemon restarts cleanly: Left while stopped, Initializing while it starts, never Unhealthy: no storm",
        default_nodes: 5,
        min_nodes: 5,
        build: restart_with_one_down,
        expect: expect_no_storm_after_restart,
    },
    Scenario {
        name: "voter-restarted-during-fence",
        about: "a host loses power and a voter of its fence dies after persisting its vote, back 5-10 s later: it learns the certificate and outcome from its peers; every member ends seeing the host Fenced and counting the same budget",
        default_nodes: 5,
        min_nodes: 3,
        build: voter_restarted_during_fence,
        expect: expect_views_converge,
    },
    Scenario {
        name: "proposer-stall",
        about: "a host loses power with its BMC hung; its fence's proposer or executor stalls 3-8 s at the worst moment: late votes and late levels never make two fences in flight; fenced within 180 s",
        default_nodes: 5,
        min_nodes: 3,
        build: proposer_stall,
        expect: expect_victims_confirmed,
    },
    Scenario {
        name: "bridged-storage-loss",
        about: "storage lost everywhere while two groups reach each other only through one bridge host: vouches travel through the bridge, no watchdog resets anyone, nobody is fenced",
        default_nodes: 15,
        min_nodes: 7,
        build: bridged_storage_loss,
        expect: expect_quiet,
    },
    Scenario {
        name: "cluster-restart-during-pill",
        about: "a host panics with its BMC dead; while its poison-pill fence waits, every other daemon restarts; its watchdog resets it and the new boot id confirms it: its old boot is announced safe to recover within 120 s",
        default_nodes: 5,
        min_nodes: 3,
        build: cluster_restart_during_pill,
        expect: expect_victims_confirmed,
    },
    Scenario {
        name: "frozen-and-resumed",
        about: "a daemon process is frozen for 20-60 s (no watchdog, BMC failing) and resumed: it measures its storage again before acting and never asks to fence itself",
        default_nodes: 5,
        min_nodes: 3,
        build: frozen_and_resumed,
        expect: expect_no_self_fence,
    },
    Scenario {
        name: "pill-clear-retried",
        about: "a host is off for good with its BMC dead; the survivors' storage fails just before the pill deadline: the attempt fails, its pill cannot be cleared; once the storage is back the clear is retried and no pill is left; the host is fenced by a later attempt",
        default_nodes: 5,
        min_nodes: 3,
        build: pill_clear_retried,
        expect: expect_no_pill_left,
    },
    Scenario {
        name: "bmc-partitioned",
        about: "a host loses power and its BMC is reachable from one survivor only: the others' attempts fail, the fence is still carried out and confirmed by power Off within 150 s",
        default_nodes: 5,
        min_nodes: 3,
        build: bmc_partitioned,
        expect: expect_victims_confirmed,
    },
    Scenario {
        name: "rolling-config-change",
        about: "a configuration change (a member added, or a digest-covered setting) is rolled host by host: while configurations differ nobody is fenced; afterwards a crash is fenced within 60 s",
        default_nodes: 6,
        min_nodes: 4,
        build: rolling_config_change,
        expect: expect_rolling_change,
    },
    Scenario {
        name: "random",
        about: "random fault schedules (crashes, storage, partitions, loss, agents, BMCs, operator commands): invariants only",
        default_nodes: 5,
        min_nodes: 3,
        build: random,
        expect: expect_invariants_only,
    },
];

/// Finds a scenario by name.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}
