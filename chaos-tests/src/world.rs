//! The simulated world: hosts with drifting clocks, power, VMs, a daemon process running a real
//! [`peerfence::node::Node`], a watchdog, a BMC and a management agent; shared storage; a network.
//!
//! Everything nondeterministic (delays, losses, latencies, boot times, clock drift, node seeds)
//! is drawn from one generator seeded with the run's seed, and events are processed in
//! (time, insertion order): the same seed always replays the same run.
//!
//! The world plays the daemon shell for every node: it feeds inputs stamped with the host's own
//! clock, persists `Persist` outputs to the host's "disk" before processing later outputs, and
//! carries out sends, fence commands, pills, self-fence actions and watchdog keepalives. A crash
//! can strike between any two outputs, so whatever the node said after it is lost, as it would be
//! on a real host.

use crate::invariants::{Checks, Ctx, VoteRecord};
use crate::net::{NetParams, Network};
use bytes::Bytes;
use peerfence::config::{Config, RawConfig};
use peerfence::crypto::VoteKey;
use peerfence::durable::DurableState;
use peerfence::health::WriteOutcome;
use peerfence::node::{
    AgentAction, AgentResult, Event, FenceCommand, Input, LocalAction, Node, OperatorCommand,
    Output, PowerState, SelfFenceCommand, SelfFenceReason, WatchdogAction,
};
use peerfence::rules::HaState;
use peerfence::time::Instant;
use peerfence_proto::{
    BootId, Evidence, FenceKind, HeartbeatRecord, MemberId, Proposal, QuorumCertificate,
};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

/// Calls a checker with the ground truth (built from disjoint fields so the checkers can be
/// borrowed mutably at the same time).
macro_rules! check {
    ($w:ident . $method:ident ( $($arg:expr),* )) => {{
        let ctx = Ctx {
            now: $w.now,
            hosts: &$w.hosts,
            cfg: &$w.cfg,
            net: &$w.net,
            all_lost_since: $w.all_lost_since,
            votes: &$w.votes,
            minority_at: &$w.minority_at,
        };
        $w.checks.$method(&ctx, $($arg),*)
    }};
}

/// One millisecond in simulated microseconds.
pub const MS: u64 = 1_000;
/// One second in simulated microseconds.
pub const SEC: u64 = 1_000_000;

/// How a host's access to one storage path behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// Writes take a few milliseconds.
    Ok,
    /// Writes take about this long (they may exceed the write timeout and land late).
    Slow {
        /// Typical latency, µs.
        latency_us: u64,
    },
    /// Writes and reads fail at once.
    Fail,
    /// Writes and reads never complete (a hard-mounted NFS server that stopped answering).
    Hang,
}

/// How a host's BMC behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BmcMode {
    /// Answers in a few hundred milliseconds.
    Ok,
    /// Answers with an error at once (wrong password, say).
    Fail,
    /// Never answers (the agent is killed at its timeout).
    Hang,
    /// A broken BMC: answers `off` with success and `status` with Off, and does nothing. No
    /// fencer can detect it; the simulator uses it to prove that I5's checker catches a
    /// "safe to recover" while VMs still run.
    LiesOff,
}

/// A scheduled fault.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Kernel panic: VMs and daemon die, power stays on; the watchdog (if armed) resets it.
    CrashHost(usize),
    /// The daemon process dies; VMs keep running; the watchdog keeps counting.
    CrashDaemon(usize),
    /// Start the daemon again (if the host runs).
    RestartDaemon(usize),
    /// Storage access of `hosts` (all paths, or one) changes; `until_reboot` clears it at the
    /// host's next boot.
    Storage {
        /// Hosts affected.
        hosts: Vec<usize>,
        /// One path, or all.
        path: Option<usize>,
        /// New behaviour.
        mode: StorageMode,
        /// Cleared when the host reboots.
        until_reboot: bool,
    },
    /// Hosts in different groups cannot talk.
    Partition(Vec<Vec<usize>>),
    /// Cut every link of a host.
    Isolate(usize),
    /// Cut one direction.
    BlockLink(usize, usize),
    /// Open every link.
    Heal,
    /// Change loss, duplication and delay.
    Net(NetParams),
    /// The management agent dies (VMs run on).
    AgentDeath(usize),
    /// The agent is back.
    AgentRestore(usize),
    /// The BMC's behaviour changes.
    Bmc(usize, BmcMode),
    /// An operator command on a host's daemon.
    Operator(usize, OperatorCommand),
    /// Readers see this host's heartbeat slot frozen at its current content (an NFS client
    /// serving cached attributes) while the host keeps writing. Used to prove that I2's checker
    /// catches a fence of a live writer.
    FreezeReads(usize),
}

/// When a trigger fires: right after the daemon emits a matching output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerOn {
    /// `Event::Proposed`.
    Proposed,
    /// `Event::Voted` (before its promise is persisted).
    Voted,
    /// The first `Persist` after a `Voted` (promise durable, vote not yet sent).
    PersistAfterVote,
    /// `Event::FenceStarted`.
    FenceStarted,
    /// The first `Output::Fence` command.
    FenceCommand,
}

/// Crash the daemon that emitted a matching output, before it emits anything else, and restart it
/// later. Fires once.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// What to match.
    pub on: TriggerOn,
    /// Only this host (any if `None`).
    pub host: Option<usize>,
    /// Restart delay, µs.
    pub restart_after_us: u64,
    /// Already fired.
    pub fired: bool,
}

/// Simulation parameters outside the node's configuration.
#[derive(Debug, Clone)]
pub struct SimParams {
    /// Network behaviour at start.
    pub net: NetParams,
    /// Largest clock rate error of a host, parts per million (each way).
    pub drift_ppm_max: u32,
    /// Boot time after power on or reset, µs (uniform).
    pub boot_delay_us: (u64, u64),
    /// Daemons start spread over this much time at the beginning, µs.
    pub start_spread_us: u64,
    /// Storage write latency when healthy, µs (uniform).
    pub write_latency_us: (u64, u64),
    /// BMC latencies, µs: off, status, on, error.
    pub bmc_off_us: u64,
    /// See `bmc_off_us`.
    pub bmc_status_us: u64,
    /// See `bmc_off_us`.
    pub bmc_on_us: u64,
    /// See `bmc_off_us`.
    pub bmc_fail_us: u64,
}

impl Default for SimParams {
    fn default() -> Self {
        Self {
            net: NetParams::default(),
            drift_ppm_max: 200,
            boot_delay_us: (20 * SEC, 40 * SEC),
            start_spread_us: 2 * SEC,
            write_latency_us: (MS, 20 * MS),
            bmc_off_us: 330 * MS,
            bmc_status_us: 200 * MS,
            bmc_on_us: 260 * MS,
            bmc_fail_us: 100 * MS,
        }
    }
}

/// Operating state of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    /// Up: VMs may run, the daemon may run.
    Running,
    /// Kernel panic: nothing runs, power still on.
    Panicked,
    /// Coming up after power on or reset.
    Booting,
    /// Powered off.
    Off,
}

/// One simulated host.
pub struct Host {
    /// Index (= member id).
    pub idx: usize,
    secret: [u8; 32],
    clock_t0: u64,
    clock_base: u64,
    clock_ppm: i64,
    /// Operating state.
    pub os: Os,
    /// Current boot.
    pub boot: BootId,
    boot_seq: u32,
    /// VMs of the current boot run.
    pub vms_running: bool,
    /// The daemon.
    pub node: Option<Box<Node>>,
    /// Daemon instance counter; periodic events carry it to die with their daemon.
    epoch: u64,
    /// What the daemon last persisted.
    pub disk: Option<DurableState>,
    hb_counter: u64,
    /// Management agent running.
    pub agent_alive: bool,
    /// Watchdog armed (by the first keepalive of the boot).
    pub wd_armed: bool,
    /// Last keepalive, true time.
    pub wd_last_feed: u64,
    /// Storage behaviour per path.
    pub storage: Vec<StorageMode>,
    storage_until_reboot: bool,
    /// BMC behaviour.
    pub bmc: BmcMode,
    /// Ground truth: recent successful heartbeat writes (true time).
    pub writes: VecDeque<u64>,
    /// Ground truth: since when this host's storage is lost on every path.
    pub storage_lost_since: Option<u64>,
    next_wake: Option<u64>,
    /// Whether the daemon should be running (false after a crash until its restart).
    daemon_wanted: bool,
}

impl Host {
    /// Local monotonic clock reading at true time `t`.
    fn local(&self, t: u64) -> Instant {
        let dt = t.saturating_sub(self.clock_t0) as i128;
        let scaled = dt + dt * i128::from(self.clock_ppm) / 1_000_000;
        Instant::from_micros(self.clock_base + scaled.max(0) as u64)
    }

    /// True time at which the local clock reads `local` (rounded up).
    fn true_at(&self, local: Instant) -> u64 {
        let l = local.as_micros().saturating_sub(self.clock_base) as i128;
        let rate = 1_000_000 + i128::from(self.clock_ppm);
        let dt = (l * 1_000_000 + rate - 1) / rate;
        self.clock_t0 + dt.max(0) as u64
    }

    /// Whether the VMs of `boot` run now.
    pub fn vms_of(&self, boot: BootId) -> bool {
        self.vms_running && self.boot == boot && matches!(self.os, Os::Running)
    }

    /// Storage lost on every path (ground truth): every write fails, hangs, or is so slow that
    /// even the fastest (latencies vary ±20 %) exceeds the write timeout.
    pub fn storage_lost(&self, write_timeout_us: u64) -> bool {
        self.storage.iter().all(|m| match m {
            StorageMode::Ok => false,
            StorageMode::Slow { latency_us } => latency_us * 80 / 100 > write_timeout_us,
            StorageMode::Fail | StorageMode::Hang => true,
        })
    }
}

/// Simulated events.
#[derive(Debug, Clone)]
enum Ev {
    Boot(usize),
    Wake(usize),
    Deliver {
        to: usize,
        from: usize,
        bytes: Bytes,
    },
    HbWrite(usize, u64),
    HbReport {
        host: usize,
        epoch: u64,
        path: usize,
        outcome: WriteOutcome,
    },
    HbLand {
        host: usize,
        path: usize,
        record: HeartbeatRecord,
    },
    HbRead(usize, u64),
    AgentCheck(usize, u64),
    AgentAnswer {
        host: usize,
        epoch: u64,
        id: u64,
        result: AgentResult,
    },
    BmcEffect {
        target: usize,
        on: bool,
    },
    PillDone {
        host: usize,
        epoch: u64,
        id: u64,
        ok: bool,
    },
    PillLand {
        path: usize,
        target: usize,
        qc: Option<Arc<QuorumCertificate>>,
    },
    WatchdogCheck(usize),
    /// The scenario expects this host to be fenced from now on: note its boot.
    Expect(usize, Option<u64>),
    Fault(Fault),
    Restart(usize),
}

/// A fence start seen in a run.
#[derive(Debug, Clone)]
pub struct FenceFact {
    /// True time, µs.
    pub at: u64,
    /// Executor.
    pub executor: usize,
    /// Target.
    pub target: usize,
    /// Target boot.
    pub boot: BootId,
    /// Attempt number.
    pub attempt: u16,
}

/// A self-fence action carried out.
#[derive(Debug, Clone)]
pub struct SelfFenceFact {
    /// True time.
    pub at: u64,
    /// Host.
    pub host: usize,
    /// Action.
    pub action: LocalAction,
    /// Why.
    pub reason: SelfFenceReason,
}

/// A crash the scenario expects to be fenced, and how fast.
#[derive(Debug, Clone)]
pub struct CrashFact {
    /// True time of the crash.
    pub at: u64,
    /// Host.
    pub host: usize,
    /// Its boot at the crash.
    pub boot: BootId,
    /// Liveness bound (I6), µs after `at`, when the scenario states one.
    pub bound_us: Option<u64>,
}

/// One invariant or expectation that did not hold.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Violation {
    /// Seed of the run.
    pub seed: u64,
    /// "I1".."I7", or "expect".
    pub invariant: String,
    /// What happened.
    pub detail: String,
}

/// Everything a run produced.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// Seed.
    pub seed: u64,
    /// Violations (invariants and scenario expectations).
    pub violations: Vec<Violation>,
    /// Fence starts.
    pub fences: Vec<FenceFact>,
    /// Self-fence actions.
    pub self_fences: Vec<SelfFenceFact>,
    /// First confirmation per (target, boot): (true time, evidence).
    pub confirmations: BTreeMap<(usize, BootId), (u64, Evidence)>,
    /// Crashes with expectations.
    pub crashes: Vec<CrashFact>,
    /// Watchdog resets.
    pub watchdog_resets: u32,
    /// Some node reported a storm.
    pub storm_reported: bool,
    /// Some node reported the budget exhausted.
    pub budget_exhausted: bool,
    /// Some node reported a blocked self-fence.
    pub self_fence_blocked: bool,
    /// HA states some node reported at some point, per member.
    pub ha_seen: BTreeMap<usize, Vec<HaState>>,
    /// "Safe to recover" events (any node).
    pub safe_to_recover: u32,
    /// Simulated time, µs.
    pub sim_us: u64,
    /// Timeline, when tracing.
    pub trace: Option<Vec<String>>,
    /// Events processed.
    pub events: u64,
}

impl RunResult {
    /// Crash → first confirmation, ms, for crashes with a stated bound.
    pub fn confirm_ms(&self) -> Vec<u64> {
        self.crashes
            .iter()
            .filter(|c| c.bound_us.is_some())
            .filter_map(|c| {
                self.confirmations
                    .get(&(c.host, c.boot))
                    .map(|(at, _)| (at.saturating_sub(c.at)) / MS)
            })
            .collect()
    }

    /// VM-stopping or agent-restarting actions taken on quorum agreement.
    pub fn quorum_self_fences(&self) -> usize {
        self.self_fences
            .iter()
            .filter(|s| s.reason == SelfFenceReason::QuorumAgreed)
            .count()
    }
}

/// Shared storage: per path, a heartbeat slot and a pill slot per host.
struct Storage {
    hb: Vec<Vec<Option<HeartbeatRecord>>>,
    /// Per host: what readers see instead of the real slot, when frozen.
    frozen: Vec<Option<Vec<Option<HeartbeatRecord>>>>,
    pill: Vec<Vec<Option<Arc<QuorumCertificate>>>>,
}

/// What a run is given.
pub struct RunSpec {
    /// Seed.
    pub seed: u64,
    /// Hosts.
    pub nodes: usize,
    /// Simulated duration, µs.
    pub duration_us: u64,
    /// Node configuration (validated inside).
    pub raw: RawConfig,
    /// Simulation parameters.
    pub params: SimParams,
    /// Scheduled faults (true time, µs).
    pub faults: Vec<(u64, Fault)>,
    /// Crash triggers.
    pub triggers: Vec<Trigger>,
    /// Crashes expected to be fenced (host, time, liveness bound).
    pub expected_crashes: Vec<(usize, u64, Option<u64>)>,
    /// Record a timeline.
    pub trace: bool,
}

/// The world.
pub struct World {
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    rng: ChaCha8Rng,
    seed: u64,
    cfg: Arc<Config>,
    params: SimParams,
    hosts: Vec<Host>,
    net: Network,
    storage: Storage,
    triggers: Vec<Trigger>,
    expected_crashes: Vec<(usize, u64, Option<u64>)>,
    all_lost_since: Option<u64>,
    /// Per host, the last time it was in a network partition smaller than a quorum.
    minority_at: Vec<Option<u64>>,
    votes: HashMap<(usize, Proposal), VoteRecord>,
    checks: Checks,
    result: RunResult,
    end: u64,
}

fn boot_id(seed: u64, host: usize, seq: u32) -> BootId {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ ((host as u64) << 40) ^ (u64::from(seq) << 20) ^ 0xb007);
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = rng.random();
    }
    BootId(b)
}

/// The deterministic vote key of simulated host `i` (the same in every run, so one
/// configuration digest serves all seeds).
pub fn host_secret(i: usize) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[0] = 0x5e;
    s[1] = i as u8;
    s[2] = (i >> 8) as u8;
    s
}

impl World {
    /// Builds a world from a spec. Panics on an invalid configuration (scenarios are code).
    pub fn new(spec: RunSpec) -> Self {
        let cfg = Arc::new(
            spec.raw
                .validate()
                .unwrap_or_else(|e| panic!("scenario configuration is invalid: {e}")),
        );
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let paths = cfg.storage.paths.len();
        let hosts = (0..spec.nodes)
            .map(|i| {
                let ppm = i64::from(spec.params.drift_ppm_max);
                Host {
                    idx: i,
                    secret: host_secret(i),
                    clock_t0: 0,
                    clock_base: rng.random_range(0..1_000 * SEC),
                    clock_ppm: rng.random_range(-ppm..=ppm),
                    os: Os::Off,
                    boot: BootId([0; 16]),
                    boot_seq: 0,
                    vms_running: false,
                    node: None,
                    epoch: 0,
                    disk: None,
                    hb_counter: 0,
                    agent_alive: true,
                    wd_armed: false,
                    wd_last_feed: 0,
                    storage: vec![StorageMode::Ok; paths],
                    storage_until_reboot: false,
                    bmc: BmcMode::Ok,
                    writes: VecDeque::new(),
                    storage_lost_since: None,
                    next_wake: None,
                    daemon_wanted: true,
                }
            })
            .collect();
        let n = spec.nodes;
        let mut w = Self {
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            rng,
            seed: spec.seed,
            checks: Checks::new(&cfg),
            cfg,
            net: Network::new(n, spec.params.net.clone()),
            params: spec.params,
            hosts,
            storage: Storage {
                hb: vec![vec![None; n]; paths],
                frozen: vec![None; n],
                pill: vec![vec![None; n]; paths],
            },
            triggers: spec.triggers,
            expected_crashes: spec.expected_crashes,
            all_lost_since: None,
            minority_at: vec![None; n],
            votes: HashMap::new(),
            result: RunResult {
                seed: spec.seed,
                trace: spec.trace.then(Vec::new),
                ..RunResult::default()
            },
            end: spec.duration_us,
        };
        for i in 0..n {
            let at = w.rng.random_range(0..=w.params.start_spread_us);
            // Hosts are already up when the daemons start: boot them at time zero, start the
            // daemon a little later.
            w.hosts[i].os = Os::Booting;
            w.schedule(at, Ev::Boot(i));
        }
        // Expectations first, so that they see the boot the fault hits.
        for &(host, at, bound) in &w.expected_crashes.clone() {
            w.schedule(at, Ev::Expect(host, bound));
        }
        for (at, fault) in spec.faults {
            w.schedule(at, Ev::Fault(fault));
        }
        w
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), ev);
    }

    fn after(&mut self, delay: u64, ev: Ev) {
        self.schedule(self.now + delay, ev);
    }

    fn trace(&mut self, host: Option<usize>, text: impl FnOnce() -> String) {
        if let Some(t) = &mut self.result.trace {
            let who = host.map(|h| format!("h{h}")).unwrap_or_else(|| "--".into());
            t.push(format!(
                "[{:>4}.{:03}s] {who:>3} {}",
                self.now / SEC,
                (self.now % SEC) / MS,
                text()
            ));
        }
    }

    /// Runs to the end and returns what happened.
    pub fn run(mut self) -> RunResult {
        while let Some(entry) = self.queue.first_entry() {
            let (at, _) = *entry.key();
            if at > self.end {
                break;
            }
            let ev = entry.remove();
            self.now = at;
            self.result.events += 1;
            self.step(ev);
        }
        self.now = self.end;
        self.finish()
    }

    fn finish(mut self) -> RunResult {
        let result = std::mem::take(&mut self.result);
        let found = check!(self.finish(&result));
        self.result = result;
        self.push_violations(found);
        self.result.sim_us = self.now;
        self.result
    }

    fn push_violations(&mut self, found: Vec<(&'static str, String)>) {
        for (inv, detail) in found {
            self.trace(None, || format!("VIOLATION {inv}: {detail}"));
            self.result.violations.push(Violation {
                seed: self.seed,
                invariant: inv.to_string(),
                detail,
            });
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Boot(h) => self.boot(h),
            Ev::Wake(h) => {
                if self.hosts[h].next_wake == Some(self.now) {
                    self.hosts[h].next_wake = None;
                    self.feed(h, Input::Tick);
                }
            }
            Ev::Deliver { to, from, bytes } => {
                if self.net.open(from, to) {
                    self.feed(
                        to,
                        Input::Datagram {
                            from: MemberId(from as u16),
                            bytes,
                        },
                    );
                }
            }
            Ev::HbWrite(h, epoch) => self.hb_write(h, epoch),
            Ev::HbReport {
                host,
                epoch,
                path,
                outcome,
            } => self.feed_instance(host, epoch, Input::StorageWrite { path, outcome }),
            Ev::HbLand { host, path, record } => {
                // A write lands only if the host still runs the boot that issued it.
                let hs = &self.hosts[host];
                if hs.os == Os::Running && hs.boot == record.boot {
                    self.storage.hb[path][host] = Some(record);
                    let hs = &mut self.hosts[host];
                    hs.writes.push_back(self.now);
                    while hs.writes.len() > 32 {
                        hs.writes.pop_front();
                    }
                }
            }
            Ev::HbRead(h, epoch) => self.hb_read(h, epoch),
            Ev::AgentCheck(h, epoch) => {
                if self.hosts[h].epoch == epoch && self.hosts[h].node.is_some() {
                    let alive = self.hosts[h].agent_alive;
                    self.feed(h, Input::AgentCheck { alive });
                    self.after(SEC, Ev::AgentCheck(h, epoch));
                }
            }
            Ev::AgentAnswer {
                host,
                epoch,
                id,
                result,
            } => self.feed_instance(host, epoch, Input::FenceResult { id, result }),
            Ev::BmcEffect { target, on } => self.bmc_effect(target, on),
            Ev::PillDone {
                host,
                epoch,
                id,
                ok,
            } => self.feed_instance(host, epoch, Input::PillWritten { id, ok }),
            Ev::PillLand { path, target, qc } => {
                self.storage.pill[path][target] = qc;
            }
            Ev::WatchdogCheck(h) => self.watchdog_check(h),
            Ev::Expect(host, bound_us) => self.result.crashes.push(CrashFact {
                at: self.now,
                host,
                boot: self.hosts[host].boot,
                bound_us,
            }),
            Ev::Fault(f) => self.fault(f),
            Ev::Restart(h) => {
                self.hosts[h].daemon_wanted = true;
                if self.hosts[h].os == Os::Running && self.hosts[h].node.is_none() {
                    self.start_daemon(h);
                }
            }
        }
    }

    // ----- host lifecycle -------------------------------------------------------------------

    fn boot(&mut self, h: usize) {
        if self.hosts[h].os != Os::Booting {
            return;
        }
        let base = self.rng.random_range(10 * SEC..100 * SEC);
        let seed = self.seed;
        let now = self.now;
        let hs = &mut self.hosts[h];
        hs.boot_seq += 1;
        hs.boot = boot_id(seed, h, hs.boot_seq);
        hs.os = Os::Running;
        hs.vms_running = true;
        hs.agent_alive = true;
        hs.wd_armed = false;
        // A new boot restarts the monotonic clock.
        hs.clock_t0 = now;
        hs.clock_base = base;
        if hs.storage_until_reboot {
            hs.storage.iter_mut().for_each(|m| *m = StorageMode::Ok);
            hs.storage_until_reboot = false;
        }
        let boot = hs.boot;
        self.trace(Some(h), || format!("boots as {boot:?}"));
        self.refresh_storage_truth();
        if self.hosts[h].daemon_wanted {
            self.start_daemon(h);
        }
    }

    fn start_daemon(&mut self, h: usize) {
        let seed = self.seed ^ ((h as u64 + 1) << 32) ^ (self.hosts[h].epoch + 1);
        let local = self.hosts[h].local(self.now);
        let hs = &mut self.hosts[h];
        hs.epoch += 1;
        let node = Node::new(
            self.cfg.clone(),
            MemberId(h as u16),
            VoteKey::from_secret(hs.secret),
            hs.boot,
            hs.disk.clone(),
            seed,
            local,
        );
        let node = match node {
            Ok(n) => n,
            Err(e) => panic!("node h{h} failed to start: {e}"),
        };
        self.mark_minorities();
        let hs = &mut self.hosts[h];
        hs.node = Some(Box::new(node));
        hs.next_wake = None;
        let epoch = hs.epoch;
        self.trace(Some(h), || format!("daemon starts (epoch {epoch})"));
        let interval = self.cfg.storage.heartbeat_interval.as_micros() as u64;
        let phase = self.rng.random_range(0..interval);
        self.after(phase, Ev::HbWrite(h, epoch));
        let phase = self.rng.random_range(0..interval);
        self.after(phase, Ev::HbRead(h, epoch));
        let phase = self.rng.random_range(0..SEC);
        self.after(phase, Ev::AgentCheck(h, epoch));
        self.drain(h);
    }

    fn crash_daemon(&mut self, h: usize, restart_after: Option<u64>) {
        if self.hosts[h].node.is_none() {
            return;
        }
        self.hosts[h].node = None;
        self.mark_minorities();
        self.hosts[h].epoch += 1;
        self.hosts[h].next_wake = None;
        self.hosts[h].daemon_wanted = false;
        let ctx_host = h;
        check!(self.on_daemon_gone(ctx_host));
        self.trace(Some(h), || "daemon crashes".into());
        if let Some(d) = restart_after {
            self.after(d, Ev::Restart(h));
        }
    }

    /// VMs and daemon gone; the host reboots after its boot delay (unless `power_off`).
    fn reset(&mut self, h: usize, power_off: bool, why: &str) {
        let was = self.hosts[h].os;
        if matches!(was, Os::Off) || (matches!(was, Os::Booting) && !power_off) {
            return;
        }
        if self.hosts[h].node.is_some() {
            check!(self.on_daemon_gone(h));
        }
        let hs = &mut self.hosts[h];
        hs.node = None;
        hs.epoch += 1;
        hs.next_wake = None;
        hs.vms_running = false;
        hs.wd_armed = false;
        hs.daemon_wanted = true;
        if power_off {
            hs.os = Os::Off;
        } else {
            hs.os = Os::Booting;
        }
        self.mark_minorities();
        let why = why.to_string();
        self.trace(Some(h), || {
            format!(
                "{} ({why})",
                if power_off { "powers off" } else { "resets" }
            )
        });
        if !power_off {
            let d = self
                .rng
                .random_range(self.params.boot_delay_us.0..=self.params.boot_delay_us.1);
            self.after(d, Ev::Boot(h));
        }
    }

    fn watchdog_check(&mut self, h: usize) {
        let timeout = self.cfg.watchdog.timeout.as_micros() as u64;
        let hs = &self.hosts[h];
        if !hs.wd_armed || !matches!(hs.os, Os::Running | Os::Panicked) {
            return;
        }
        if self.now >= hs.wd_last_feed + timeout {
            let found = check!(self.on_watchdog_reset(h));
            self.push_violations(found);
            self.result.watchdog_resets += 1;
            self.reset(h, false, "watchdog");
        }
    }

    fn bmc_effect(&mut self, target: usize, on: bool) {
        if on {
            if self.hosts[target].os == Os::Off {
                self.hosts[target].os = Os::Booting;
                self.trace(Some(target), || "powered on by BMC".into());
                let d = self
                    .rng
                    .random_range(self.params.boot_delay_us.0..=self.params.boot_delay_us.1);
                self.after(d, Ev::Boot(target));
            }
        } else {
            self.reset(target, true, "BMC off");
        }
    }

    // ----- the daemon shell -----------------------------------------------------------------

    fn feed(&mut self, h: usize, input: Input) {
        let local = self.hosts[h].local(self.now);
        let Some(node) = self.hosts[h].node.as_mut() else {
            return;
        };
        node.handle(local, input);
        self.drain(h);
    }

    /// Feeds `input` only if the daemon instance `epoch` still runs: results of commands and
    /// writes started by an instance that crashed since die with it.
    fn feed_instance(&mut self, h: usize, epoch: u64, input: Input) {
        if self.hosts[h].epoch == epoch {
            self.feed(h, input);
        }
    }

    fn drain(&mut self, h: usize) {
        let mut outputs = Vec::new();
        {
            let Some(node) = self.hosts[h].node.as_mut() else {
                return;
            };
            while let Some(o) = node.poll_output() {
                outputs.push(o);
            }
        }
        let epoch = self.hosts[h].epoch;
        let mut after_vote = false;
        for o in outputs {
            if self.hosts[h].epoch != epoch {
                // The daemon crashed in the middle of its outputs: the rest never happened.
                return;
            }
            let trigger = self.trigger_for(h, &o, &mut after_vote);
            self.output(h, o);
            if let Some(restart) = trigger {
                self.crash_daemon(h, Some(restart));
                return;
            }
        }
        if let Some(node) = self.hosts[h].node.as_ref() {
            let at = self.hosts[h].true_at(node.poll_timeout()).max(self.now + 1);
            if self.hosts[h].next_wake.is_none_or(|w| at < w) {
                self.hosts[h].next_wake = Some(at);
                self.schedule(at, Ev::Wake(h));
            }
        }
    }

    fn trigger_for(&mut self, h: usize, o: &Output, after_vote: &mut bool) -> Option<u64> {
        let kind = match o {
            Output::Event(Event::Proposed { .. }) => Some(TriggerOn::Proposed),
            Output::Event(Event::Voted { .. }) => {
                *after_vote = true;
                Some(TriggerOn::Voted)
            }
            Output::Persist(_) if *after_vote => Some(TriggerOn::PersistAfterVote),
            Output::Event(Event::FenceStarted { .. }) => Some(TriggerOn::FenceStarted),
            Output::Fence(c) if c.action == AgentAction::Off => Some(TriggerOn::FenceCommand),
            _ => None,
        }?;
        let t = self
            .triggers
            .iter_mut()
            .find(|t| !t.fired && t.on == kind && t.host.is_none_or(|x| x == h))?;
        t.fired = true;
        Some(t.restart_after_us)
    }

    fn output(&mut self, h: usize, o: Output) {
        match o {
            Output::Persist(state) => self.hosts[h].disk = Some(*state),
            Output::Send {
                to,
                bytes,
                reliable,
            } => {
                let to = to.index();
                for d in self.net.delays(h, to, reliable, &mut self.rng) {
                    self.after(
                        d,
                        Ev::Deliver {
                            to,
                            from: h,
                            bytes: bytes.clone(),
                        },
                    );
                }
            }
            Output::Fence(cmd) => self.fence_command(h, cmd),
            Output::WritePill { id, target, qc } => {
                let found = check!(self.on_authorised(h, &qc, "pill"));
                self.push_violations(found);
                self.write_pill(h, id, target.index(), Some(qc));
            }
            Output::ClearPill { target } => self.write_pill(h, 0, target.index(), None),
            Output::SelfFence(cmd) => self.self_fence(h, cmd),
            Output::Watchdog(WatchdogAction::Feed) => {
                if self.cfg.watchdog.enabled {
                    self.hosts[h].wd_armed = true;
                    self.hosts[h].wd_last_feed = self.now;
                    let timeout = self.cfg.watchdog.timeout.as_micros() as u64;
                    self.after(timeout, Ev::WatchdogCheck(h));
                }
            }
            Output::Watchdog(WatchdogAction::Stop) => {
                self.trace(Some(h), || "stops feeding its watchdog".into());
            }
            Output::Event(e) => self.event(h, e),
        }
    }

    fn fence_command(&mut self, h: usize, cmd: FenceCommand) {
        let found = check!(self.on_authorised(h, &cmd.qc, "fence command"));
        self.push_violations(found);
        let target = cmd.target.index();
        let epoch = self.hosts[h].epoch;
        let timeout = cmd.timeout.as_micros() as u64;
        let jitter = |rng: &mut ChaCha8Rng, us: u64| us * rng.random_range(80..=120) / 100;
        self.trace(Some(h), || {
            format!(
                "fence agent {:?} h{target} (level {})",
                cmd.action, cmd.level
            )
        });
        match self.hosts[target].bmc {
            BmcMode::Ok => {
                let (lat, result) = match cmd.action {
                    AgentAction::Off => (
                        jitter(&mut self.rng, self.params.bmc_off_us),
                        AgentResult::Done,
                    ),
                    AgentAction::On => (
                        jitter(&mut self.rng, self.params.bmc_on_us),
                        AgentResult::Done,
                    ),
                    AgentAction::Status => (
                        jitter(&mut self.rng, self.params.bmc_status_us),
                        AgentResult::Done,
                    ),
                };
                if lat > timeout {
                    self.after(
                        timeout,
                        Ev::AgentAnswer {
                            host: h,
                            epoch,
                            id: cmd.id,
                            result: AgentResult::TimedOut,
                        },
                    );
                    return;
                }
                match cmd.action {
                    AgentAction::Off => self.after(lat, Ev::BmcEffect { target, on: false }),
                    AgentAction::On => self.after(lat, Ev::BmcEffect { target, on: true }),
                    AgentAction::Status => {}
                }
                if cmd.action == AgentAction::Status {
                    // Status reads the power at answer time: schedule a probe that reads it then.
                    let power = if self.hosts[target].os == Os::Off {
                        PowerState::Off
                    } else {
                        PowerState::On
                    };
                    // Effects scheduled before this answer (an off in flight) are already queued
                    // earlier in time, so reading at send time understates "Off" only, which is
                    // the safe direction.
                    self.after(
                        lat,
                        Ev::AgentAnswer {
                            host: h,
                            epoch,
                            id: cmd.id,
                            result: AgentResult::Power(power),
                        },
                    );
                } else {
                    self.after(
                        lat,
                        Ev::AgentAnswer {
                            host: h,
                            epoch,
                            id: cmd.id,
                            result,
                        },
                    );
                }
            }
            BmcMode::Fail => {
                let lat = jitter(&mut self.rng, self.params.bmc_fail_us).min(timeout);
                self.after(
                    lat,
                    Ev::AgentAnswer {
                        host: h,
                        epoch,
                        id: cmd.id,
                        result: AgentResult::Failed,
                    },
                );
            }
            BmcMode::LiesOff => {
                let result = match cmd.action {
                    AgentAction::Status => AgentResult::Power(PowerState::Off),
                    _ => AgentResult::Done,
                };
                let lat = jitter(&mut self.rng, self.params.bmc_status_us).min(timeout);
                self.after(
                    lat,
                    Ev::AgentAnswer {
                        host: h,
                        epoch,
                        id: cmd.id,
                        result,
                    },
                );
            }
            BmcMode::Hang => {
                self.after(
                    timeout,
                    Ev::AgentAnswer {
                        host: h,
                        epoch,
                        id: cmd.id,
                        result: AgentResult::TimedOut,
                    },
                );
            }
        }
    }

    fn write_pill(&mut self, h: usize, id: u64, target: usize, qc: Option<Arc<QuorumCertificate>>) {
        let timeout = self.cfg.pill_write_timeout().as_micros() as u64;
        let epoch = self.hosts[h].epoch;
        let mut ok = true;
        let mut slowest = 0;
        for path in 0..self.storage.hb.len() {
            match self.hosts[h].storage[path] {
                StorageMode::Ok => {
                    let lat = self.rng.random_range(
                        self.params.write_latency_us.0..=self.params.write_latency_us.1,
                    );
                    slowest = slowest.max(lat);
                    self.after(
                        lat,
                        Ev::PillLand {
                            path,
                            target,
                            qc: qc.clone(),
                        },
                    );
                }
                StorageMode::Slow { latency_us } => {
                    slowest = slowest.max(latency_us);
                    self.after(
                        latency_us,
                        Ev::PillLand {
                            path,
                            target,
                            qc: qc.clone(),
                        },
                    );
                    if latency_us > timeout {
                        ok = false;
                    }
                }
                StorageMode::Fail => ok = false,
                StorageMode::Hang => {
                    ok = false;
                    slowest = timeout;
                }
            }
        }
        if qc.is_some() {
            let done = if ok {
                slowest
            } else {
                slowest.min(timeout).max(MS)
            };
            self.after(
                done,
                Ev::PillDone {
                    host: h,
                    epoch,
                    id,
                    ok,
                },
            );
        }
    }

    fn self_fence(&mut self, h: usize, cmd: SelfFenceCommand) {
        let mut found = check!(self.on_authorised(h, &cmd.qc, "self-fence"));
        found.extend(check!(self.on_self_fence(h, &cmd)));
        self.push_violations(found);
        self.result.self_fences.push(SelfFenceFact {
            at: self.now,
            host: h,
            action: cmd.action,
            reason: cmd.reason,
        });
        self.trace(Some(h), || {
            format!("self-fence {:?} ({:?})", cmd.action, cmd.reason)
        });
        match cmd.action {
            LocalAction::RestartAgent => self.hosts[h].agent_alive = true,
            LocalAction::PowerOff => self.reset(h, true, "self-fence power off"),
            LocalAction::Reboot | LocalAction::GracefulReboot => {
                self.reset(h, false, "self-fence reboot")
            }
        }
    }

    fn event(&mut self, h: usize, e: Event) {
        match &e {
            Event::Voted { proposal, verdict } => {
                let lost = self.hosts[h].storage_lost_since;
                self.votes.insert(
                    (h, *proposal),
                    VoteRecord {
                        at: self.now,
                        storage_lost_since: lost,
                        verdict: *verdict,
                    },
                );
            }
            Event::FenceStarted { qc, attempt } => {
                let found = check!(self.on_fence_started(h, qc, *attempt));
                self.push_violations(found);
                self.result.fences.push(FenceFact {
                    at: self.now,
                    executor: h,
                    target: qc.proposal.target.index(),
                    boot: qc.proposal.target_boot,
                    attempt: *attempt,
                });
            }
            Event::FenceConfirmed { target, .. } | Event::FenceAborted { target, .. } => {
                check!(self.on_fence_ended(h, target.index()));
            }
            Event::FenceFailed { target, .. } => {
                check!(self.on_fence_ended(h, target.index()));
            }
            Event::SafeToRecover {
                target,
                boot,
                evidence,
            } => {
                let found = check!(self.on_safe_to_recover(h, target.index(), *boot));
                self.push_violations(found);
                self.result.safe_to_recover += 1;
                self.result
                    .confirmations
                    .entry((target.index(), *boot))
                    .or_insert((self.now, *evidence));
            }
            Event::StormEntered { .. } => self.result.storm_reported = true,
            Event::BudgetExhausted { .. } => self.result.budget_exhausted = true,
            Event::SelfFenceBlocked { .. } => self.result.self_fence_blocked = true,
            Event::HaChanged { member, to, .. } => {
                let seen = self.result.ha_seen.entry(member.index()).or_default();
                if !seen.contains(to) {
                    seen.push(*to);
                }
            }
            _ => {}
        }
        if self.result.trace.is_some() {
            let interesting = !matches!(
                e,
                Event::SwimChanged { .. } | Event::EligibilityChanged { .. }
            ) || matches!(
                e,
                Event::SwimChanged {
                    to: peerfence::membership::SwimState::Down,
                    ..
                }
            );
            if interesting {
                self.trace(Some(h), || format!("{e:?}"));
            }
        }
    }

    // ----- storage --------------------------------------------------------------------------

    /// The daemon shell's periodic storage tasks run every heartbeat interval of the host's own
    /// clock, for as long as the daemon instance that started them runs. Returns false when it
    /// no longer does (the task then stops).
    fn reschedule(&mut self, h: usize, epoch: u64, next_ev: Ev) -> bool {
        if self.hosts[h].epoch != epoch || self.hosts[h].node.is_none() {
            return false;
        }
        let interval = self.cfg.storage.heartbeat_interval;
        let local_next = self.hosts[h].local(self.now) + interval;
        let next = self.hosts[h].true_at(local_next);
        self.schedule(next, next_ev);
        true
    }

    fn hb_write(&mut self, h: usize, epoch: u64) {
        if !self.reschedule(h, epoch, Ev::HbWrite(h, epoch)) {
            return;
        }
        let timeout = self.cfg.storage.write_timeout.as_micros() as u64;
        let generation = self.hosts[h]
            .node
            .as_ref()
            .map(|n| n.generation())
            .unwrap_or(0);
        self.hosts[h].hb_counter += 1;
        let record = HeartbeatRecord {
            member: MemberId(h as u16),
            boot: self.hosts[h].boot,
            generation,
            counter: self.hosts[h].hb_counter,
        };
        for path in 0..self.storage.hb.len() {
            match self.hosts[h].storage[path] {
                StorageMode::Ok | StorageMode::Slow { .. } => {
                    let lat = match self.hosts[h].storage[path] {
                        StorageMode::Slow { latency_us } => {
                            latency_us * self.rng.random_range(80..=120) / 100
                        }
                        _ => self.rng.random_range(
                            self.params.write_latency_us.0..=self.params.write_latency_us.1,
                        ),
                    };
                    // The data becomes visible to readers somewhere between the start of the
                    // write and its completion (before fsync returns, on NFS).
                    let visible = lat * self.rng.random_range(30..=100) / 100;
                    self.after(
                        visible,
                        Ev::HbLand {
                            host: h,
                            path,
                            record,
                        },
                    );
                    if lat <= timeout {
                        self.after(
                            lat,
                            Ev::HbReport {
                                host: h,
                                epoch,
                                path,
                                outcome: WriteOutcome::Ok {
                                    latency: std::time::Duration::from_micros(lat),
                                },
                            },
                        );
                    } else {
                        self.after(
                            timeout,
                            Ev::HbReport {
                                host: h,
                                epoch,
                                path,
                                outcome: WriteOutcome::TimedOut,
                            },
                        );
                    }
                }
                StorageMode::Fail => {
                    self.after(
                        MS,
                        Ev::HbReport {
                            host: h,
                            epoch,
                            path,
                            outcome: WriteOutcome::Failed,
                        },
                    );
                }
                StorageMode::Hang => {
                    self.after(
                        timeout,
                        Ev::HbReport {
                            host: h,
                            epoch,
                            path,
                            outcome: WriteOutcome::TimedOut,
                        },
                    );
                }
            }
        }
    }

    fn hb_read(&mut self, h: usize, epoch: u64) {
        if !self.reschedule(h, epoch, Ev::HbRead(h, epoch)) {
            return;
        }
        for path in 0..self.storage.hb.len() {
            if matches!(
                self.hosts[h].storage[path],
                StorageMode::Fail | StorageMode::Hang
            ) {
                continue;
            }
            for m in 0..self.hosts.len() {
                if m == h {
                    continue;
                }
                let record = match &self.storage.frozen[m] {
                    Some(snapshot) => snapshot[path],
                    None => self.storage.hb[path][m],
                };
                self.feed(
                    h,
                    Input::HeartbeatRead {
                        path,
                        member: MemberId(m as u16),
                        record,
                    },
                );
                if self.hosts[h].epoch != epoch {
                    return;
                }
            }
            let pill = self.storage.pill[path][h].as_deref().cloned();
            if pill.is_some() {
                self.feed(h, Input::PoisonPillRead { path, pill });
                if self.hosts[h].epoch != epoch {
                    return;
                }
            }
        }
    }

    fn refresh_storage_truth(&mut self) {
        let timeout = self.cfg.storage.write_timeout.as_micros() as u64;
        let now = self.now;
        let mut all = true;
        for hs in &mut self.hosts {
            let lost = hs.storage_lost(timeout);
            if lost {
                hs.storage_lost_since.get_or_insert(now);
            } else {
                hs.storage_lost_since = None;
                all = false;
            }
        }
        if all {
            self.all_lost_since.get_or_insert(now);
        } else {
            self.all_lost_since = None;
        }
    }

    // ----- faults ---------------------------------------------------------------------------

    fn fault(&mut self, f: Fault) {
        self.trace(None, || format!("FAULT {f:?}"));
        match f {
            Fault::CrashHost(h) => {
                if self.hosts[h].os != Os::Running {
                    return;
                }
                if self.hosts[h].node.is_some() {
                    check!(self.on_daemon_gone(h));
                }
                let hs = &mut self.hosts[h];
                hs.os = Os::Panicked;
                hs.node = None;
                hs.epoch += 1;
                hs.next_wake = None;
                hs.vms_running = false;
                let armed = hs.wd_armed;
                self.mark_minorities();
                if armed {
                    let timeout = self.cfg.watchdog.timeout.as_micros() as u64;
                    let at = self.hosts[h].wd_last_feed + timeout;
                    self.schedule(at, Ev::WatchdogCheck(h));
                }
            }
            Fault::CrashDaemon(h) => self.crash_daemon(h, None),
            Fault::RestartDaemon(h) => self.after(0, Ev::Restart(h)),
            Fault::Storage {
                hosts,
                path,
                mode,
                until_reboot,
            } => {
                for h in hosts {
                    let hs = &mut self.hosts[h];
                    match path {
                        Some(p) => hs.storage[p] = mode,
                        None => hs.storage.iter_mut().for_each(|m| *m = mode),
                    }
                    hs.storage_until_reboot = until_reboot && mode != StorageMode::Ok;
                }
                self.refresh_storage_truth();
            }
            Fault::Partition(groups) => {
                self.mark_minorities();
                self.net.partition(&groups, self.now);
                self.mark_minorities();
            }
            Fault::Isolate(h) => {
                self.mark_minorities();
                self.net.isolate(h, self.now);
                self.mark_minorities();
            }
            Fault::BlockLink(a, b) => {
                self.mark_minorities();
                self.net.set_link(a, b, true, self.now);
                self.mark_minorities();
            }
            Fault::Heal => {
                self.mark_minorities();
                self.net.heal(self.now);
            }
            Fault::Net(p) => self.net.params = p,
            Fault::AgentDeath(h) => self.hosts[h].agent_alive = false,
            Fault::AgentRestore(h) => self.hosts[h].agent_alive = true,
            Fault::Bmc(h, mode) => self.hosts[h].bmc = mode,
            Fault::Operator(h, cmd) => self.feed(h, Input::Operator(cmd)),
            Fault::FreezeReads(h) => {
                let snapshot = self.storage.hb.iter().map(|p| p[h]).collect();
                self.storage.frozen[h] = Some(snapshot);
            }
        }
    }
}

impl World {
    /// Notes every host that cannot exchange contact probes (directly or through one relay)
    /// with a quorum of running daemons (itself included) right now: in a minority partition,
    /// cut off by asymmetric faults, or short of peers whose daemons run. Called before and
    /// after every change of links or of running daemons.
    fn mark_minorities(&mut self) {
        let up: Vec<bool> = self.hosts.iter().map(|h| h.node.is_some()).collect();
        let q = self.cfg.quorum();
        for h in 0..self.hosts.len() {
            if 1 + self.net.contact_peers(h, &up) < q {
                self.minority_at[h] = Some(self.now);
            }
        }
    }
}

/// Formats a run's timeline and outcome for `--trace`.
pub fn render_trace(r: &RunResult) -> String {
    let mut s = String::new();
    if let Some(lines) = &r.trace {
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
    }
    let _ = writeln!(
        s,
        "-- seed {}: {} fence starts, {} quorum self-fences, {} watchdog resets, {} violations",
        r.seed,
        r.fences.len(),
        r.quorum_self_fences(),
        r.watchdog_resets,
        r.violations.len()
    );
    for v in &r.violations {
        let _ = writeln!(s, "   {}: {}", v.invariant, v.detail);
    }
    s
}

/// Whether a proposal stops VMs (fence, or VM-stopping self-fence).
pub fn stops_vms(p: &Proposal) -> bool {
    match p.kind {
        FenceKind::Fence => true,
        FenceKind::SelfFence(a) => a.stops_vms(),
    }
}
