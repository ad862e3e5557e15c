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
            host_cfg: &$w.host_cfg,
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
use peerfence::durable::RECOVER_GENERATION_MARGIN as RECOVER_MARGIN;
/// One day in simulated microseconds.
pub const DAY: u64 = 86_400 * SEC;

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
    /// Writes already under way complete, and land, when the mode changes back.
    Hang,
    /// The host's writes and reads go to a directory of its own that nobody else sees (the
    /// shared mount failed at boot, or was replaced underneath): its writes succeed and it reads
    /// back what it wrote, but its peers see nothing. `marker`: the private directory holds a
    /// copy of the cluster marker (a stale copy of the shared tree, say).
    Private {
        /// A cluster marker is present in the private directory.
        marker: bool,
    },
}

/// How a host's reads of one storage path behave, apart from its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// As the path's storage mode says.
    Normal,
    /// Each read cycle takes about this long (it may exceed the timeout and be abandoned).
    Slow {
        /// Typical latency, µs.
        latency_us: u64,
    },
    /// Read cycles never complete (abandoned at the timeout).
    Hang,
    /// Read cycles fail at once.
    Fail,
}

/// Which clock the simulated daemon reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonClock {
    /// A clock that keeps running across daemon restarts within a boot (CLOCK_BOOTTIME).
    Boot,
    /// A clock that starts again with every daemon process (std::time::Instant since start).
    Process,
}

/// How the simulated daemon makes a `Persist` durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistMode {
    /// The node task waits for the write: no input is handled and no output leaves meanwhile.
    Blocking,
    /// The write runs in the background: the node keeps handling inputs; outputs after the
    /// `Persist` wait for it, except membership datagrams that carry nothing it holds.
    Pipelined,
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
    /// The host gets a new configuration (a rolling change: a roster change, a new setting):
    /// its daemon is restarted with it (a clean stop, then a start a second later). A host not
    /// in the new roster stays stopped.
    Reconfigure(usize, Box<RawConfig>),
    /// Readers see this host's heartbeat slot frozen at its current content (an NFS client
    /// serving cached attributes) while the host keeps writing. Used to prove that I2's checker
    /// catches a fence of a live writer.
    FreezeReads(usize),
    /// This host's own reads are served from a frozen cache of the whole path (its NFS client
    /// serves stale data for every slot, its own included) until [`Fault::ThawReader`].
    FreezeReader(usize),
    /// This host's reads are fresh again.
    ThawReader(usize),
    /// Reads of `hosts` (all paths, or one) change behaviour, independently of their writes.
    Reads {
        /// Hosts affected.
        hosts: Vec<usize>,
        /// One path, or all.
        path: Option<usize>,
        /// New behaviour.
        mode: ReadMode,
    },
    /// The daemon is stopped on purpose (`systemctl stop`, an upgrade): it leaves the cluster,
    /// magic-closes its watchdog, and the host's VMs keep running.
    StopDaemon(usize),
    /// The daemon's node task stops for this many µs (a slow fsync, a busy disk): inputs queue
    /// up, nothing is handled or sent; heartbeat threads and the transport go on.
    StallNode(usize, u64),
    /// The whole daemon process stops for this many µs (SIGSTOP, a VM pause): no heartbeat
    /// writes or reads, no keepalives, nothing handled.
    StallProcess(usize, u64),
    /// The host loses power and stays off; its BMC (on standby power) answers Off.
    PowerLoss(usize),
    /// The daemon's durable state is lost (disk replaced): the daemon dies, and starts again
    /// without its state file after this many µs.
    WipeDisk(usize, u64),
    /// Persists of this host take between these many µs (a slow or busy disk).
    DiskLatency(usize, u64, u64),
    /// The BMC of `bmc` cannot be reached from the members `from` (the out-of-band network is
    /// partitioned from them): their agent calls hang until killed.
    BmcUnreachable {
        /// Whose BMC.
        bmc: usize,
        /// Who cannot reach it.
        from: Vec<usize>,
    },
    /// Every BMC is reachable from everyone again.
    BmcHeal,
    /// A compromised (or buggy) member `by` tells every other member that `target`'s current
    /// boot was fenced: a forged outcome, sent over `by`'s own authenticated links (it holds its
    /// TLS certificate and vote key, nobody else's). Nothing may change: no member may call the
    /// target fenced or its VMs safe to recover on one member's word.
    Forge {
        /// The lying member.
        by: usize,
        /// The live host it claims fenced.
        target: usize,
        /// How it lies.
        forgery: Forgery,
    },
}

/// How a forging member lies (see [`Fault::Forge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// An unsigned `Outcome` of `Confirmed` (what every build before signed outcomes took).
    Unsigned,
    /// A signed outcome with a "certificate" of its own vote only.
    SelfCertified,
    /// As `SelfCertified`, but naming another member as the executor.
    SpoofedExecutor,
    /// Fence news carrying a self-certified fence with a signed `Confirmed`.
    News,
    /// Gossip (a SWIM packet of its own) announcing that the target rebooted: a new boot and a
    /// far higher generation, once unsigned and once signed with the forger's own key.
    HealthNewBoot,
    /// A SWIM membership update announcing the target alive under a far higher generation (a
    /// "restart" of a daemon that was stopped cleanly), which nobody signs.
    SwimReturn,
    /// Gossip disarming the cluster at the highest flag version (`u64::MAX`), which no later
    /// operator command could outbid.
    DisarmForever,
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
    /// The first `Persist` after a `Voted` for another member's proposal: a voter's promise is
    /// durable and its vote never leaves.
    VoterPersisted,
    /// `Event::FenceStarted`.
    FenceStarted,
    /// The first `Output::Fence` command.
    FenceCommand,
    /// `Event::CertificateSeen` (a member learns of a fence another one runs).
    CertificateSeen,
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
    /// The crash also loses the daemon's durable state (a replaced disk).
    pub wipe: bool,
    /// Instead of crashing, the node task stalls this long (µs): its inputs queue up.
    pub stall_us: Option<u64>,
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
    /// The clock the daemons read.
    pub daemon_clock: DaemonClock,
    /// Uptime of every host when the run begins, µs (uniform): a long uptime tests clocks that
    /// are far from their origin.
    pub initial_uptime_us: (u64, u64),
    /// How long a persist takes, µs (uniform), unless a fault changes it.
    pub persist_latency_us: (u64, u64),
    /// How the daemons make a persist durable.
    pub persist_mode: PersistMode,
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
            daemon_clock: DaemonClock::Boot,
            initial_uptime_us: (10 * SEC, 100 * SEC),
            persist_latency_us: (0, 0),
            persist_mode: PersistMode::Pipelined,
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
    /// Ground truth: the daemon was stopped cleanly and has not started since.
    pub clean_stopped: bool,
    /// A daemon stopping cleanly, waiting (at most `Node::leave_wait`) for its stop to be known
    /// before it closes the watchdog: the node, its epoch, and whether it was feeding.
    leaving: Option<(Box<Node>, u64, bool)>,
    /// Reads per path, apart from the storage mode.
    pub reads: Vec<ReadMode>,
    /// Per path: writes under way that hang (they land when the path answers again).
    hung: Vec<Vec<HeartbeatRecord>>,
    /// This host's reads come from this frozen copy of every path (a stale client cache).
    frozen_view: Option<StorageView>,
    /// Per path: what this host's private directory holds (see [`StorageMode::Private`]).
    private: Vec<StorageView1>,
    /// The node task (or the whole process) does not run before this true time.
    blocked_until: Option<u64>,
    /// The whole process is stopped (no heartbeat threads either).
    process_stalled: bool,
    /// Inputs that arrived while the node task was blocked, in order.
    held: VecDeque<Input>,
    /// Outputs waiting for the persist in flight, in order.
    pending: VecDeque<Output>,
    /// A persist is being written (its state, and when it completes).
    persist_inflight: Option<(Box<DurableState>, u64)>,
    /// Generation held by the last completed persist.
    durable_generation: u32,
    /// Persist latency range, µs.
    persist_latency_us: (u64, u64),
    /// Ground truth: the last true time this host's node task was blocked (stalled, or waiting
    /// for a blocking persist).
    pub blocked_at: Option<u64>,
    /// With a per-process daemon clock: the host-clock reading the daemon's clock starts from.
    proc_origin: Option<Instant>,
    /// Ground truth: the highest daemon generation this host has run (reuse is a bug).
    pub max_generation: u32,
    /// Members whose agent calls cannot reach this host's BMC.
    pub bmc_unreachable_from: Vec<usize>,
}

/// One path's slots as some reader sees them.
#[derive(Debug, Clone, Default)]
pub struct StorageView1 {
    /// Heartbeat slots by member.
    pub hb: Vec<Slot>,
    /// Pill slots by member.
    pub pill: Vec<Option<Arc<QuorumCertificate>>>,
}

/// A heartbeat slot: the record, whether it is the last one of a clean stop, and the digest of
/// the configuration its writer ran (a reader with another one ignores it, as the daemon does).
pub type Slot = Option<(HeartbeatRecord, bool, u64)>;

/// Every path's slots as some reader sees them.
pub type StorageView = Vec<StorageView1>;

impl Host {
    /// The daemon's clock at true time `t`: the host's clock, or with a per-process clock the
    /// time since the daemon started (plus one second, so that it is never zero).
    fn dlocal(&self, t: u64) -> Instant {
        let l = self.local(t);
        match self.proc_origin {
            Some(o) => Instant::from_micros(SEC + l.as_micros().saturating_sub(o.as_micros())),
            None => l,
        }
    }

    /// True time at which the daemon's clock reads `local`.
    fn dtrue_at(&self, local: Instant) -> u64 {
        match self.proc_origin {
            Some(o) => self.true_at(Instant::from_micros(
                (local.as_micros() + o.as_micros()).saturating_sub(SEC),
            )),
            None => self.true_at(local),
        }
    }

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
            StorageMode::Fail | StorageMode::Hang | StorageMode::Private { .. } => true,
        })
    }

    /// Whether the daemon's node task is blocked (stalled, or waiting for a blocking persist).
    fn blocked(&self) -> bool {
        self.blocked_until.is_some()
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
        counter: u64,
    },
    HbLand {
        host: usize,
        path: usize,
        record: HeartbeatRecord,
        stopped: bool,
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
    PillCleared {
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
    /// A stall of the node task (or process) may be over.
    Unblock(usize, u64),
    /// A persist of this daemon instance completed.
    PersistDone(usize, u64),
    /// A hung write on (host, path) completes now that the path answers again.
    HungLand {
        host: usize,
        path: usize,
        record: HeartbeatRecord,
    },
    /// A slow read cycle of (host, epoch, path) completes with what it saw when it started.
    ReadDone {
        host: usize,
        epoch: u64,
        path: usize,
        view: StorageView1,
    },
    /// Ask every daemon what it would tell a cloud about every member.
    CloudPoll,
    /// A stopping daemon of (host, epoch) gives up waiting for its stop to be known.
    LeaveDeadline(usize, u64),
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
    /// At the end of the run, per running daemon: its HA state of every member (by index; its
    /// own entry is `None`) and the budget slots it counts as used.
    pub final_views: BTreeMap<usize, (Vec<Option<HaState>>, usize)>,
    /// At the end of the run: (path, host) of every pill left in a shared slot.
    pub pills_left: Vec<(usize, usize)>,
    /// At the end of the run: input the daemons running then dropped, by reason, summed.
    pub drops: BTreeMap<&'static str, u64>,
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
    hb: Vec<Vec<Slot>>,
    /// Per host: what readers see instead of the real slot, when frozen.
    frozen: Vec<Option<Vec<Slot>>>,
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
    /// The configuration each host's daemon runs (they differ during a rolling change).
    host_cfg: Vec<Arc<Config>>,
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
    /// (reporter, target, boot) already reported as a wrong DEAD.
    cloud_reported: std::collections::HashSet<(usize, usize, BootId)>,
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
                    clean_stopped: false,
                    leaving: None,
                    reads: vec![ReadMode::Normal; paths],
                    hung: vec![Vec::new(); paths],
                    frozen_view: None,
                    private: vec![
                        StorageView1 {
                            hb: vec![None; spec.nodes],
                            pill: vec![None; spec.nodes],
                        };
                        paths
                    ],
                    blocked_until: None,
                    process_stalled: false,
                    held: VecDeque::new(),
                    pending: VecDeque::new(),
                    persist_inflight: None,
                    durable_generation: 0,
                    persist_latency_us: spec.params.persist_latency_us,
                    proc_origin: None,
                    blocked_at: None,
                    max_generation: 0,
                    bmc_unreachable_from: Vec::new(),
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
            host_cfg: vec![cfg.clone(); spec.nodes],
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
            cloud_reported: Default::default(),
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
        if n <= 16 {
            w.schedule(SEC, Ev::CloudPoll);
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
        for h in 0..self.hosts.len() {
            let Some(node) = self.hosts[h].node.as_ref() else {
                continue;
            };
            let st = node.status();
            let mut ha = vec![None; self.hosts.len()];
            for p in &st.peers {
                ha[p.member.index()] = Some(p.ha);
            }
            self.result.final_views.insert(h, (ha, st.budget_used));
            for (&why, &n) in &node.stats().dropped {
                *self.result.drops.entry(why).or_default() += n;
            }
        }
        for (p, slots) in self.storage.pill.iter().enumerate() {
            for (h, pill) in slots.iter().enumerate() {
                if pill.is_some() {
                    self.result.pills_left.push((p, h));
                }
            }
        }
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
                if self.net.open(from, to) && self.hosts[to].leaving.is_some() {
                    self.feed_leaving(
                        to,
                        Input::Datagram {
                            from: MemberId(from as u16),
                            bytes,
                        },
                    );
                } else if self.net.open(from, to) {
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
                counter,
            } => self.feed_instance(
                host,
                epoch,
                Input::StorageWrite {
                    path,
                    outcome,
                    counter,
                },
            ),
            Ev::HbLand {
                host,
                path,
                record,
                stopped,
            } => {
                // A write lands only if the host still runs the boot that issued it.
                let hs = &self.hosts[host];
                if hs.os == Os::Running && hs.boot == record.boot {
                    self.land(host, path, record, stopped, true);
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
            Ev::PillCleared {
                host,
                epoch,
                id,
                ok,
            } => self.feed_instance(host, epoch, Input::PillCleared { id, ok }),
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
                // A restart waits for the stopping daemon to finish (systemd stops, then
                // starts); here its wait ends now.
                self.finish_leave(h);
                self.hosts[h].daemon_wanted = true;
                if self.hosts[h].os == Os::Running && self.hosts[h].node.is_none() {
                    self.start_daemon(h);
                }
            }
            Ev::Unblock(h, epoch) => {
                if self.hosts[h].epoch == epoch {
                    self.unblock(h, false);
                }
            }
            Ev::PersistDone(h, epoch) => self.persist_done(h, epoch),
            Ev::HungLand { host, path, record } => {
                let hs = &self.hosts[host];
                if hs.os == Os::Running && hs.boot == record.boot {
                    self.land(host, path, record, false, false);
                }
            }
            Ev::ReadDone {
                host,
                epoch,
                path,
                view,
            } => self.deliver_read(host, epoch, path, &view),
            Ev::CloudPoll => self.cloud_poll(),
            Ev::LeaveDeadline(h, epoch) => {
                if self.hosts[h].leaving.as_ref().is_some_and(|l| l.1 == epoch) {
                    self.finish_leave(h);
                }
            }
        }
    }

    // ----- host lifecycle -------------------------------------------------------------------

    fn boot(&mut self, h: usize) {
        if self.hosts[h].os != Os::Booting {
            return;
        }
        let (lo, hi) = if self.hosts[h].boot_seq == 0 {
            self.params.initial_uptime_us
        } else {
            (10 * SEC, 100 * SEC)
        };
        let base = self.rng.random_range(lo..=hi.max(lo));
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
        // A fault "until the next reboot" set before the first boot holds for that boot.
        let clear = hs.storage_until_reboot && hs.boot_seq > 1;
        let boot = hs.boot;
        if clear {
            self.hosts[h].storage_until_reboot = false;
            for p in 0..self.storage.hb.len() {
                self.set_storage_mode(h, p, StorageMode::Ok);
            }
        }
        self.trace(Some(h), || format!("boots as {boot:?}"));
        self.refresh_storage_truth();
        if self.hosts[h].daemon_wanted {
            self.start_daemon(h);
        }
    }

    fn start_daemon(&mut self, h: usize) {
        let seed = self.seed ^ ((h as u64 + 1) << 32) ^ (self.hosts[h].epoch + 1);
        let process_clock = self.params.daemon_clock == DaemonClock::Process;
        let now = self.now;
        let hs = &mut self.hosts[h];
        // The first daemon of a run has been running since its host booted (for weeks, with a
        // long uptime); every later one starts its own clock.
        let origin = if hs.epoch == 0 {
            Instant::ZERO
        } else {
            hs.local(now)
        };
        hs.proc_origin = process_clock.then_some(origin);
        let local = hs.dlocal(now);
        hs.epoch += 1;
        hs.clean_stopped = false;
        hs.blocked_until = None;
        hs.process_stalled = false;
        hs.held.clear();
        hs.pending.clear();
        hs.persist_inflight = None;
        if hs.disk.is_none() && hs.max_generation > 0 {
            // The state file is gone but this host ran before: the operator's `peerfence init`
            // recovers, taking a generation above the one in the host's own heartbeat slot. It
            // reads the slots as this host reaches them now (a hung or failed path does not
            // answer within its timeout; a private directory shows what was written there), as
            // `peerfence init` does; reading the shared truth instead let a generation that ran
            // while its writes hung be taken again (seed 4817 of `random`).
            let mut readable = 0;
            let mut slot: Option<u32> = None;
            for path in 0..self.storage.hb.len() {
                let record = match self.hosts[h].storage[path] {
                    StorageMode::Ok | StorageMode::Slow { .. } => self.storage.hb[path][h],
                    StorageMode::Private { marker: true } => self.hosts[h].private[path].hb[h],
                    StorageMode::Private { marker: false }
                    | StorageMode::Fail
                    | StorageMode::Hang => continue,
                };
                readable += 1;
                if let Some((r, _, _)) = record {
                    slot = slot.max(Some(r.generation));
                }
            }
            let hs = &mut self.hosts[h];
            match slot {
                Some(g) => {
                    hs.disk = Some(DurableState::recovered(g.saturating_add(RECOVER_MARGIN)))
                }
                // Readable, and this host's slot is empty everywhere: init takes it for a first
                // start (the data directory's marker is gone with it).
                None if readable > 0 => hs.disk = Some(DurableState::new()),
                None => {
                    // No path answers: init refuses; systemd retries.
                    self.trace(Some(h), || {
                        "init refuses: no storage path can be read to recover the generation from"
                            .into()
                    });
                    self.after(10 * SEC, Ev::Restart(h));
                    return;
                }
            }
        }
        if !self.host_cfg[h].roster.contains(MemberId(h as u16)) {
            // Not (or no longer) a configured member: its daemon refuses to start.
            self.trace(Some(h), || {
                "not in the roster: the daemon does not start".into()
            });
            return;
        }
        let hs = &mut self.hosts[h];
        hs.durable_generation = hs.disk.as_ref().map_or(0, |d| d.generation);
        let node = Node::new(
            self.host_cfg[h].clone(),
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
        if node.generation() <= self.hosts[h].max_generation {
            let (g, max) = (node.generation(), self.hosts[h].max_generation);
            self.push_violations(vec![(
                "I9",
                format!(
                    "h{h}'s daemon started with generation {g}, but generation {max} already ran"
                ),
            )]);
        }
        self.mark_minorities();
        let hs = &mut self.hosts[h];
        // The generation counts as run once it is on disk (persist completions record it):
        // nothing carrying it leaves before, so a crash before its first persist may start it
        // again harmlessly (seed 5278 of `random`: a watchdog reset 0.2 s after the start,
        // while a slow disk held the persist).
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

    /// Stops the daemon on purpose: it is told to shut down, its last outputs go out, the
    /// watchdog is magic-closed (it no longer resets the host), and the VMs keep running.
    fn stop_daemon(&mut self, h: usize) {
        if self.hosts[h].node.is_none() {
            return;
        }
        // A blocked node task finishes what it was doing first (the daemon's shutdown waits
        // for the node task); anything still held is then handled before the shutdown.
        self.unblock(h, true);
        self.feed(h, Input::Shutdown);
        if self.hosts[h].node.is_none() {
            return;
        }
        check!(self.on_daemon_gone(h));
        // The magic close happens only while the core feeds the watchdog: a daemon that stopped
        // feeding (a fence ordered, no storage and no quorum) leaves the reset to come.
        let feeding = self.hosts[h]
            .node
            .as_ref()
            .is_some_and(|n| n.status().watchdog_feeding);
        let hs = &mut self.hosts[h];
        let node = hs.node.take();
        let epoch = hs.epoch;
        hs.epoch += 1;
        hs.next_wake = None;
        hs.daemon_wanted = false;
        hs.held.clear();
        hs.pending.clear();
        hs.persist_inflight = None;
        hs.blocked_until = None;
        if let Some(node) = node {
            let wait = node.leave_wait().as_micros() as u64;
            hs.leaving = Some((node, epoch, feeding));
            self.after(wait, Ev::LeaveDeadline(h, epoch));
        }
        self.mark_minorities();
        self.trace(Some(h), || "daemon stops cleanly (VMs run on)".into());
        if self.hosts[h]
            .leaving
            .as_ref()
            .is_some_and(|l| stop_known(&l.0))
        {
            self.finish_leave(h);
        }
    }

    /// Feeds a stopping daemon (its stop's acknowledgements and record reports), which closes
    /// its watchdog as soon as the stop is known.
    fn feed_leaving(&mut self, h: usize, input: Input) {
        let local = self.hosts[h].dlocal(self.now);
        let outs: Vec<Output> = {
            let Some((node, _, _)) = self.hosts[h].leaving.as_mut() else {
                return;
            };
            node.handle(local, input);
            // A stopping node persists the stops of peers it learns, then acknowledges them.
            std::iter::from_fn(|| node.poll_output()).collect()
        };
        for o in outs {
            match o {
                Output::Persist(state) => {
                    let hs = &mut self.hosts[h];
                    hs.max_generation = hs.max_generation.max(state.generation);
                    hs.disk = Some(*state);
                }
                o @ Output::Send { .. } => self.output_one(h, o, &mut 0),
                _ => {}
            }
        }
        if self.hosts[h]
            .leaving
            .as_ref()
            .is_some_and(|l| stop_known(&l.0))
        {
            self.finish_leave(h);
        }
    }

    /// The stopping daemon exits: it magic-closes the watchdog if the stop is known and the core
    /// was feeding; otherwise the watchdog (if armed) resets the host, as its peers expect of
    /// a silent host.
    fn finish_leave(&mut self, h: usize) {
        let Some((node, _, feeding)) = self.hosts[h].leaving.take() else {
            return;
        };
        let known = stop_known(&node);
        let hs = &mut self.hosts[h];
        hs.clean_stopped = known && (feeding || !hs.wd_armed);
        if known && feeding {
            hs.wd_armed = false;
        }
        self.trace(Some(h), || {
            if known {
                "daemon stopped cleanly (VMs run on)".into()
            } else {
                "daemon stopped, but nobody knows: the watchdog stays armed".into()
            }
        });
    }

    fn crash_daemon(&mut self, h: usize, restart_after: Option<u64>) {
        // A stopping daemon killed in its wait closes the watchdog without the magic close.
        self.hosts[h].leaving = None;
        if self.hosts[h].node.is_none() {
            return;
        }
        self.hosts[h].node = None;
        self.mark_minorities();
        self.hosts[h].epoch += 1;
        self.hosts[h].next_wake = None;
        self.hosts[h].daemon_wanted = false;
        self.clear_daemon_state(h);
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
        self.clear_daemon_state(h);
        let hs = &mut self.hosts[h];
        hs.node = None;
        hs.leaving = None;
        hs.epoch += 1;
        hs.next_wake = None;
        hs.vms_running = false;
        hs.wd_armed = false;
        hs.daemon_wanted = true;
        hs.clean_stopped = false;
        hs.hung.iter_mut().for_each(Vec::clear);
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

    /// Forgets what a daemon instance had in progress (it is gone).
    fn clear_daemon_state(&mut self, h: usize) {
        let hs = &mut self.hosts[h];
        hs.held.clear();
        hs.pending.clear();
        hs.persist_inflight = None;
        hs.blocked_until = None;
        hs.process_stalled = false;
    }

    fn feed(&mut self, h: usize, input: Input) {
        let local = self.hosts[h].dlocal(self.now);
        let hs = &mut self.hosts[h];
        if hs.node.is_none() {
            return;
        }
        if hs.blocked() {
            if matches!(input, Input::Tick) {
                // Timers are looked at again when the node task runs.
                return;
            }
            // The daemon's inbox (8192 messages): network input that finds it full is dropped,
            // local threads wait (here: are kept).
            if hs.held.len() >= 8192 && matches!(input, Input::Datagram { .. }) {
                return;
            }
            hs.held.push_back(input);
            return;
        }
        let Some(node) = hs.node.as_mut() else {
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

    /// Blocks `h`'s node task until true time `until` (a stall, or a blocking persist).
    fn block(&mut self, h: usize, until: u64) {
        let hs = &mut self.hosts[h];
        hs.blocked_at = Some(until);
        let until = hs.blocked_until.map_or(until, |u| u.max(until));
        hs.blocked_until = Some(until);
        let epoch = hs.epoch;
        self.schedule(until, Ev::Unblock(h, epoch));
    }

    /// The node task runs again: release the outputs it was holding, then handle what queued up
    /// meanwhile, in order. `force`: now, whatever the block's end (a clean stop waits for it).
    fn unblock(&mut self, h: usize, force: bool) {
        let hs = &mut self.hosts[h];
        match hs.blocked_until {
            None => return,
            Some(u) if u > self.now && !force => return,
            Some(_) => {}
        }
        hs.blocked_until = None;
        hs.process_stalled = false;
        if force && let Some((state, _)) = hs.persist_inflight.take() {
            hs.durable_generation = state.generation;
            hs.max_generation = hs.max_generation.max(state.generation);
            hs.disk = Some(*state);
        }
        self.release_pending(h);
        while !self.hosts[h].blocked() {
            let Some(input) = self.hosts[h].held.pop_front() else {
                break;
            };
            self.feed(h, input);
        }
        if !self.hosts[h].blocked() {
            self.drain(h);
        }
    }

    /// A persist completed: it is on disk; outputs held behind it may go.
    fn persist_done(&mut self, h: usize, epoch: u64) {
        let hs = &mut self.hosts[h];
        if hs.epoch != epoch {
            return;
        }
        let Some((state, _)) = hs.persist_inflight.take() else {
            return;
        };
        hs.durable_generation = state.generation;
        hs.max_generation = hs.max_generation.max(state.generation);
        hs.disk = Some(*state);
        match self.params.persist_mode {
            PersistMode::Blocking => self.unblock(h, true),
            PersistMode::Pipelined => {
                self.release_pending(h);
                self.drain(h);
            }
        }
    }

    /// Carries out held outputs in order until the next persist that must be waited for.
    fn release_pending(&mut self, h: usize) {
        let epoch = self.hosts[h].epoch;
        let mut after_vote = 0u8;
        while self.hosts[h].persist_inflight.is_none()
            && self.hosts[h].blocked_until.is_none_or(|u| u <= self.now)
        {
            let Some(o) = self.hosts[h].pending.pop_front() else {
                break;
            };
            if self.hosts[h].epoch != epoch {
                return;
            }
            self.output_one(h, o, &mut after_vote);
            if self.hosts[h].epoch != epoch {
                return;
            }
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
        let mut after_vote = 0u8;
        for o in outputs {
            if self.hosts[h].epoch != epoch {
                // The daemon crashed in the middle of its outputs: the rest never happened.
                return;
            }
            let hs = &mut self.hosts[h];
            if hs.persist_inflight.is_some() || !hs.pending.is_empty() {
                // A SWIM packet may overtake the persist in flight when the generation it
                // carries is durable already (the driver contract, node/io.rs).
                let generation = hs.node.as_ref().map_or(0, |n| n.generation());
                let bypass = matches!(
                    o,
                    Output::Send {
                        membership: true,
                        ..
                    }
                ) && self.params.persist_mode == PersistMode::Pipelined
                    && hs.durable_generation >= generation;
                if !bypass {
                    hs.pending.push_back(o);
                    continue;
                }
            }
            self.output_one(h, o, &mut after_vote);
        }
        if self.hosts[h].epoch != epoch || self.hosts[h].blocked() {
            return;
        }
        if let Some(node) = self.hosts[h].node.as_ref() {
            let at = self.hosts[h]
                .dtrue_at(node.poll_timeout())
                .max(self.now + 1);
            if self.hosts[h].next_wake.is_none_or(|w| at < w) {
                self.hosts[h].next_wake = Some(at);
                self.schedule(at, Ev::Wake(h));
            }
        }
    }

    /// Carries out one output now (a persist with latency starts its write instead), firing a
    /// crash trigger if it matches.
    fn output_one(&mut self, h: usize, o: Output, after_vote: &mut u8) {
        let trigger = self.trigger_for(h, &o, after_vote);
        match o {
            Output::Persist(state) if self.hosts[h].persist_latency_us.1 > 0 => {
                let (lo, hi) = self.hosts[h].persist_latency_us;
                let lat = self.rng.random_range(lo..=hi.max(lo));
                let epoch = self.hosts[h].epoch;
                let done = self.now + lat.max(1);
                self.hosts[h].persist_inflight = Some((state, done));
                self.schedule(done, Ev::PersistDone(h, epoch));
                if self.params.persist_mode == PersistMode::Blocking {
                    self.block(h, done);
                }
            }
            o => self.output(h, o),
        }
        match trigger {
            Some((_, _, Some(stall))) => self.stall(h, stall, false),
            Some((restart, wipe, None)) => {
                self.crash_daemon(h, Some(restart));
                if wipe {
                    self.hosts[h].disk = None;
                    self.trace(Some(h), || "durable state lost".into());
                }
            }
            None => {}
        }
    }

    fn trigger_for(
        &mut self,
        h: usize,
        o: &Output,
        after_vote: &mut u8,
    ) -> Option<(u64, bool, Option<u64>)> {
        let kind = match o {
            Output::Event(Event::Proposed { .. }) => Some(TriggerOn::Proposed),
            Output::Event(Event::Voted { proposal, .. }) => {
                *after_vote = if proposal.proposer.index() == h { 1 } else { 2 };
                Some(TriggerOn::Voted)
            }
            Output::Persist(_) if *after_vote == 2 => {
                // Either trigger may match this persist.
                let voter = self.triggers.iter().any(|t| {
                    !t.fired && t.on == TriggerOn::VoterPersisted && t.host.is_none_or(|x| x == h)
                });
                Some(if voter {
                    TriggerOn::VoterPersisted
                } else {
                    TriggerOn::PersistAfterVote
                })
            }
            Output::Persist(_) if *after_vote == 1 => Some(TriggerOn::PersistAfterVote),
            Output::Event(Event::FenceStarted { .. }) => Some(TriggerOn::FenceStarted),
            Output::Fence(c) if c.action == AgentAction::Off => Some(TriggerOn::FenceCommand),
            Output::Event(Event::CertificateSeen { .. }) => Some(TriggerOn::CertificateSeen),
            _ => None,
        }?;
        let t = self
            .triggers
            .iter_mut()
            .find(|t| !t.fired && t.on == kind && t.host.is_none_or(|x| x == h))?;
        t.fired = true;
        Some((t.restart_after_us, t.wipe, t.stall_us))
    }

    fn output(&mut self, h: usize, o: Output) {
        match o {
            Output::Persist(state) => {
                self.hosts[h].durable_generation = state.generation;
                self.hosts[h].max_generation = self.hosts[h].max_generation.max(state.generation);
                self.hosts[h].disk = Some(*state);
            }
            Output::Send {
                to,
                bytes,
                reliable,
                ..
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
                let mut found = check!(self.on_authorised(h, &qc, "pill"));
                found.extend(check!(self.on_level(&qc, "poison pill")));
                self.push_violations(found);
                self.write_pill(h, id, target.index(), Some(qc));
            }
            Output::ClearPill {
                id,
                target,
                proposal,
            } => self.clear_pill(h, id, target.index(), proposal),
            Output::SelfFence(cmd) => self.self_fence(h, cmd),
            Output::Watchdog(WatchdogAction::Feed) => {
                if self.cfg.watchdog.enabled {
                    self.hosts[h].wd_armed = true;
                    self.hosts[h].wd_last_feed = self.now;
                    let timeout = self.cfg.watchdog.timeout.as_micros() as u64;
                    self.after(timeout, Ev::WatchdogCheck(h));
                }
            }
            Output::StopHeartbeat { generation } => self.write_stopped(h, generation),
            Output::Watchdog(WatchdogAction::Stop) => {
                self.trace(Some(h), || "stops feeding its watchdog".into());
            }
            Output::Event(e) => self.event(h, e),
        }
    }

    fn fence_command(&mut self, h: usize, cmd: FenceCommand) {
        let mut found = check!(self.on_authorised(h, &cmd.qc, "fence command"));
        if cmd.action == AgentAction::Off {
            found.extend(check!(self.on_level(&cmd.qc, "agent off")));
        }
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
        let bmc = if self.hosts[target].bmc_unreachable_from.contains(&h) {
            // The out-of-band network does not reach it from here: the call hangs.
            BmcMode::Hang
        } else {
            self.hosts[target].bmc
        };
        match bmc {
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
                StorageMode::Private { .. } => {
                    // Written where only this host looks.
                    self.hosts[h].private[path].pill[target] = qc.clone();
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

    /// Removes `target`'s pill where it is still the one of `proposal`, on every path `h` can
    /// write; answers whether every path is clear of it.
    fn clear_pill(&mut self, h: usize, id: u64, target: usize, proposal: Proposal) {
        let epoch = self.hosts[h].epoch;
        let mut ok = true;
        for path in 0..self.storage.hb.len() {
            let slot = match self.hosts[h].storage[path] {
                StorageMode::Ok | StorageMode::Slow { .. } => &mut self.storage.pill[path][target],
                StorageMode::Private { .. } => &mut self.hosts[h].private[path].pill[target],
                StorageMode::Fail | StorageMode::Hang => {
                    ok = false;
                    continue;
                }
            };
            if slot.as_ref().is_some_and(|qc| qc.proposal == proposal) {
                *slot = None;
            }
        }
        let lat = self.rng.random_range(MS..=30 * MS);
        self.after(
            lat,
            Ev::PillCleared {
                host: h,
                epoch,
                id,
                ok,
            },
        );
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
        if self.hosts[h].process_stalled {
            // The writer thread is stopped with the rest of the process.
            return;
        }
        let timeout = self.cfg.storage.write_timeout.as_micros() as u64;
        // The generation on disk: one that is not yet durable must not leave (a crash before its
        // persist would start with it again).
        let generation = self.hosts[h]
            .node
            .as_ref()
            .map(|n| n.generation().min(self.hosts[h].durable_generation))
            .unwrap_or(0);
        self.hosts[h].hb_counter += 1;
        let record = HeartbeatRecord {
            member: MemberId(h as u16),
            boot: self.hosts[h].boot,
            generation,
            counter: self.hosts[h].hb_counter,
        };
        for path in 0..self.storage.hb.len() {
            let report = |outcome| Ev::HbReport {
                host: h,
                epoch,
                path,
                outcome,
                counter: record.counter,
            };
            match self.hosts[h].storage[path] {
                // The shell checks the cluster marker before every write: a directory without
                // it is not the shared storage.
                StorageMode::Private { marker: false } => {
                    self.after(MS, report(WriteOutcome::Failed));
                }
                mode @ (StorageMode::Ok
                | StorageMode::Slow { .. }
                | StorageMode::Private { .. }) => {
                    let lat = match mode {
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
                    if matches!(mode, StorageMode::Private { .. }) {
                        self.hosts[h].private[path].hb[h] =
                            Some((record, false, self.host_cfg[h].digest().0));
                    } else {
                        self.after(
                            visible,
                            Ev::HbLand {
                                host: h,
                                path,
                                record,
                                stopped: false,
                            },
                        );
                    }
                    if lat <= timeout {
                        let outcome = WriteOutcome::Ok {
                            latency: std::time::Duration::from_micros(lat),
                        };
                        self.after(lat, report(outcome));
                    } else {
                        self.after(timeout, report(WriteOutcome::TimedOut));
                    }
                }
                StorageMode::Fail => self.after(MS, report(WriteOutcome::Failed)),
                StorageMode::Hang => {
                    // The write hangs until the path answers again, and then lands. The daemon
                    // abandons at most four hung writers per path, then reports at once.
                    let hung = &mut self.hosts[h].hung[path];
                    if hung.len() < 4 {
                        hung.push(record);
                        self.after(timeout, report(WriteOutcome::TimedOut));
                    } else {
                        self.after(MS, report(WriteOutcome::TimedOut));
                    }
                }
            }
        }
    }

    /// The daemon's last record before a clean stop, on every path it can still write.
    fn write_stopped(&mut self, h: usize, generation: u32) {
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
                    let lat = self.rng.random_range(
                        self.params.write_latency_us.0..=self.params.write_latency_us.1,
                    );
                    self.after(
                        lat,
                        Ev::HbLand {
                            host: h,
                            path,
                            record,
                            stopped: true,
                        },
                    );
                }
                StorageMode::Private { .. } => {
                    self.hosts[h].private[path].hb[h] =
                        Some((record, true, self.host_cfg[h].digest().0));
                }
                StorageMode::Fail | StorageMode::Hang => {}
            }
        }
    }

    /// A write becomes visible on shared storage. `steady` says whether it counts as the host
    /// writing its heartbeat for I2: a write that hung through an outage and lands when the path
    /// answers again (up to four of them at once) is news that the storage came back, not a
    /// host writing steadily; the writes issued after the return count.
    fn land(
        &mut self,
        host: usize,
        path: usize,
        record: HeartbeatRecord,
        stopped: bool,
        steady: bool,
    ) {
        let digest = self.host_cfg[host].digest().0;
        self.storage.hb[path][host] = Some((record, stopped, digest));
        if !steady {
            return;
        }
        let hs = &mut self.hosts[host];
        hs.writes.push_back(self.now);
        while hs.writes.len() > 32 {
            hs.writes.pop_front();
        }
    }

    /// What host `h` sees of `path` when it reads now.
    fn view_for(&self, h: usize, path: usize) -> StorageView1 {
        let hs = &self.hosts[h];
        if let Some(v) = &hs.frozen_view {
            return v[path].clone();
        }
        if matches!(hs.storage[path], StorageMode::Private { .. }) {
            return hs.private[path].clone();
        }
        let n = self.hosts.len();
        StorageView1 {
            hb: (0..n)
                .map(|m| match &self.storage.frozen[m] {
                    // A writer's own client sees its own writes; other readers see the freeze.
                    Some(snapshot) if m != h => snapshot[path],
                    _ => self.storage.hb[path][m],
                })
                .collect(),
            pill: self.storage.pill[path].clone(),
        }
    }

    fn hb_read(&mut self, h: usize, epoch: u64) {
        if !self.reschedule(h, epoch, Ev::HbRead(h, epoch)) {
            return;
        }
        if self.hosts[h].process_stalled {
            return;
        }
        let timeout = self.cfg.storage.write_timeout.as_micros() as u64;
        for path in 0..self.storage.hb.len() {
            let latency = match (self.hosts[h].reads[path], self.hosts[h].storage[path]) {
                (ReadMode::Hang | ReadMode::Fail, _) => continue,
                (_, StorageMode::Fail | StorageMode::Hang) => continue,
                (ReadMode::Slow { latency_us }, _) => {
                    latency_us * self.rng.random_range(80..=120) / 100
                }
                (ReadMode::Normal, _) => 0,
            };
            if latency > timeout {
                // Abandoned by the reader's supervisor: no evidence either way.
                continue;
            }
            let view = self.view_for(h, path);
            if latency == 0 {
                self.deliver_read(h, epoch, path, &view);
                if self.hosts[h].epoch != epoch {
                    return;
                }
            } else {
                self.after(
                    latency,
                    Ev::ReadDone {
                        host: h,
                        epoch,
                        path,
                        view,
                    },
                );
            }
        }
    }

    /// Feeds one read cycle's findings: every member's slot (this host's own included, which a
    /// reader checks its own writes with), and this host's pill slot if it holds a pill.
    fn deliver_read(&mut self, h: usize, epoch: u64, path: usize, view: &StorageView1) {
        let digest = self.host_cfg[h].digest().0;
        for m in 0..self.hosts.len() {
            if self.hosts[h].epoch != epoch {
                return;
            }
            if m >= self.host_cfg[h].n() {
                continue;
            }
            // A record written under another configuration is not evidence about its writer for
            // this reader, only that the path is shared.
            if let Some((record, _, d)) = view.hb[m]
                && d != digest
            {
                self.feed(
                    h,
                    Input::ForeignHeartbeat {
                        path,
                        member: MemberId(m as u16),
                        record,
                    },
                );
                continue;
            }
            self.feed(
                h,
                Input::HeartbeatRead {
                    path,
                    member: MemberId(m as u16),
                    record: view.hb[m].map(|(r, _, _)| r),
                    stopped: view.hb[m].is_some_and(|(_, s, _)| s),
                },
            );
        }
        if self.hosts[h].epoch != epoch {
            return;
        }
        if let Some(pill) = view.pill[h].as_deref().cloned() {
            self.feed(
                h,
                Input::PoisonPillRead {
                    path,
                    pill: Some(pill),
                },
            );
        }
    }

    /// What every running daemon would tell a cloud's HA investigator about every member, checked
    /// against ground truth (I5: DEAD makes the cloud restart the VMs elsewhere). Polled once a
    /// second in clusters of up to 16 hosts.
    fn cloud_poll(&mut self) {
        let n = self.hosts.len();
        let mut found = Vec::new();
        for r in 0..n {
            let Some(node) = self.hosts[r].node.as_ref() else {
                continue;
            };
            for t in 0..n {
                if t == r {
                    continue;
                }
                let Some(boot) = node.cloud_dead(MemberId(t as u16)) else {
                    continue;
                };
                let ht = &self.hosts[t];
                // A boot the node never learnt stands for "whatever runs there".
                let boot = if boot == BootId([0; 16]) {
                    ht.boot
                } else {
                    boot
                };
                if ht.vms_of(boot) && self.cloud_reported.insert((r, t, boot)) {
                    found.push((
                        "I5",
                        format!(
                            "h{r} would answer DEAD to the cloud for h{t} ({boot:?}) while its VMs run"
                        ),
                    ));
                }
            }
        }
        self.push_violations(found);
        self.after(SEC, Ev::CloudPoll);
    }

    /// Stops `h`'s node task (or its whole daemon process) for `us`.
    fn stall(&mut self, h: usize, us: u64, process: bool) {
        if self.hosts[h].node.is_none() {
            return;
        }
        self.trace(Some(h), || {
            format!(
                "{} stalls for {} ms",
                if process {
                    "daemon process"
                } else {
                    "node task"
                },
                us / MS
            )
        });
        self.block(h, self.now + us);
        self.hosts[h].process_stalled |= process;
    }

    /// Changes how `h` reaches `path`. Writes that hung land when the path answers again (a
    /// hard-mounted NFS server that comes back completes them); a private directory is empty
    /// when it appears and forgotten when it goes.
    fn set_storage_mode(&mut self, h: usize, path: usize, mode: StorageMode) {
        let old = self.hosts[h].storage[path];
        self.hosts[h].storage[path] = mode;
        if old == StorageMode::Hang && mode != StorageMode::Hang {
            let hung = std::mem::take(&mut self.hosts[h].hung[path]);
            if matches!(mode, StorageMode::Ok | StorageMode::Slow { .. }) {
                for record in hung {
                    let d = self.rng.random_range(MS..=50 * MS);
                    self.after(
                        d,
                        Ev::HungLand {
                            host: h,
                            path,
                            record,
                        },
                    );
                }
            }
        }
        let n = self.hosts.len();
        let was_private = matches!(old, StorageMode::Private { .. });
        let is_private = matches!(mode, StorageMode::Private { .. });
        if was_private != is_private {
            self.hosts[h].private[path] = StorageView1 {
                hb: vec![None; n],
                pill: vec![None; n],
            };
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
                self.clear_daemon_state(h);
                let hs = &mut self.hosts[h];
                hs.os = Os::Panicked;
                hs.node = None;
                hs.epoch += 1;
                hs.next_wake = None;
                hs.vms_running = false;
                hs.clean_stopped = false;
                hs.hung.iter_mut().for_each(Vec::clear);
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
                    let paths: Vec<usize> = match path {
                        Some(p) => vec![p],
                        None => (0..self.storage.hb.len()).collect(),
                    };
                    for p in paths {
                        self.set_storage_mode(h, p, mode);
                    }
                    self.hosts[h].storage_until_reboot = until_reboot && mode != StorageMode::Ok;
                }
                self.refresh_storage_truth();
            }
            Fault::FreezeReader(h) => {
                let view = (0..self.storage.hb.len())
                    .map(|p| self.view_for(h, p))
                    .collect();
                self.hosts[h].frozen_view = Some(view);
            }
            Fault::ThawReader(h) => self.hosts[h].frozen_view = None,
            Fault::Reads { hosts, path, mode } => {
                for h in hosts {
                    match path {
                        Some(p) => self.hosts[h].reads[p] = mode,
                        None => self.hosts[h].reads.iter_mut().for_each(|m| *m = mode),
                    }
                }
            }
            Fault::StopDaemon(h) => self.stop_daemon(h),
            Fault::StallNode(h, us) => self.stall(h, us, false),
            Fault::StallProcess(h, us) => self.stall(h, us, true),
            Fault::PowerLoss(h) => {
                if matches!(self.hosts[h].os, Os::Running | Os::Panicked | Os::Booting) {
                    self.reset(h, true, "power loss");
                }
            }
            Fault::WipeDisk(h, after) => {
                self.crash_daemon(h, Some(after));
                self.hosts[h].disk = None;
                self.trace(Some(h), || "durable state lost".into());
            }
            Fault::DiskLatency(h, lo, hi) => self.hosts[h].persist_latency_us = (lo, hi),
            Fault::BmcUnreachable { bmc, from } => self.hosts[bmc].bmc_unreachable_from = from,
            Fault::BmcHeal => self
                .hosts
                .iter_mut()
                .for_each(|h| h.bmc_unreachable_from.clear()),
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
            Fault::Reconfigure(h, raw) => {
                let cfg = Arc::new(
                    raw.validate()
                        .unwrap_or_else(|e| panic!("scenario configuration is invalid: {e}")),
                );
                self.host_cfg[h] = cfg;
                let running = self.hosts[h].node.is_some();
                if running {
                    self.stop_daemon(h);
                }
                self.hosts[h].daemon_wanted = true;
                self.after(SEC, Ev::Restart(h));
            }
            Fault::FreezeReads(h) => {
                let snapshot = self.storage.hb.iter().map(|p| p[h]).collect();
                self.storage.frozen[h] = Some(snapshot);
            }
            Fault::Forge {
                by,
                target,
                forgery,
            } => self.forge(by, target, forgery),
        }
    }

    /// Sends every running member a SWIM packet from `by` (its real identity, authenticated as
    /// it) carrying a forged health of `target` with a new boot.
    fn forge_health(&mut self, by: usize, target: usize, cfg: &Config, key: &VoteKey) {
        use peerfence_proto::{
            AgentHealth, Broadcast, HealthUpdate, IsolationHealth, StorageHealth, Verdict,
        };
        let mut boot = self.hosts[target].boot;
        boot.0[0] ^= 0xff;
        let health = HealthUpdate {
            member: MemberId(target as u16),
            generation: 1_000_000,
            seq: 1,
            boot,
            verdict: Verdict::Healthy,
            storage: vec![StorageHealth::Ok; cfg.storage.paths.len()],
            agent: AgentHealth::Alive,
            isolation: IsolationHealth::NotConfigured,
        };
        let items = [
            Broadcast::Health(health.clone()),
            Broadcast::SignedHealth(key.sign_health(&cfg.cluster, cfg.digest(), health)),
        ];
        self.trace(Some(by), || {
            format!("forges gossip: h{target} rebooted into {boot:?}")
        });
        self.forge_gossip(by, cfg, &items);
    }

    /// Sends every running member a SWIM packet from `by` whose member update says `target`
    /// runs again, Alive under generation 1 000 000.
    fn forge_swim_return(&mut self, by: usize, target: usize, cfg: &Config) {
        use foca::{Codec, Header, Member, Message as SwimMessage, State};
        use peerfence_proto::{Envelope, Ident, Message};
        let Some(by_generation) = self.hosts[by].node.as_ref().map(|n| n.generation()) else {
            return;
        };
        self.trace(Some(by), || format!("forges SWIM: h{target} runs again"));
        for to in (0..self.hosts.len()).filter(|&m| m != by && m != target) {
            let Some(to_generation) = self.hosts[to].node.as_ref().map(|n| n.generation()) else {
                continue;
            };
            let mut packet = Vec::new();
            let header = Header {
                src: Ident {
                    member: MemberId(by as u16),
                    generation: by_generation,
                },
                src_incarnation: 0,
                dst: Ident {
                    member: MemberId(to as u16),
                    generation: to_generation,
                },
                message: SwimMessage::Gossip,
            };
            let mut codec = peerfence_proto::swim::SwimCodec;
            codec
                .encode_header(&header, &mut packet)
                .expect("a SWIM header encodes");
            packet.extend_from_slice(&1u16.to_be_bytes());
            let member = Member::new(
                Ident {
                    member: MemberId(target as u16),
                    generation: 1_000_000,
                },
                0,
                State::Alive,
            );
            codec
                .encode_member(&member, &mut packet)
                .expect("a member encodes");
            let env = Envelope {
                cluster: cfg.cluster.clone(),
                digest: cfg.digest(),
                sender: MemberId(by as u16),
                message: Message::Swim(packet),
            };
            let bytes = Bytes::from(peerfence_proto::encode(&env).expect("encodes"));
            for d in self.net.delays(by, to, false, &mut self.rng) {
                self.after(
                    d,
                    Ev::Deliver {
                        to,
                        from: by,
                        bytes: bytes.clone(),
                    },
                );
            }
        }
    }

    /// Sends every running member, from `by` (its real SWIM identity, authenticated as it), one
    /// SWIM packet per item carrying that custom broadcast.
    fn forge_gossip(&mut self, by: usize, cfg: &Config, items: &[peerfence_proto::Broadcast]) {
        use foca::{Codec, Header, Message as SwimMessage};
        use peerfence_proto::{Envelope, Ident, Message};
        let Some(by_generation) = self.hosts[by].node.as_ref().map(|n| n.generation()) else {
            return;
        };
        for to in (0..self.hosts.len()).filter(|&m| m != by) {
            let Some(to_generation) = self.hosts[to].node.as_ref().map(|n| n.generation()) else {
                continue;
            };
            // One packet per item: a receiver drops a whole packet whose signed item does not
            // verify, and the unsigned one must be seen on its own.
            for item in items {
                let mut packet = Vec::new();
                let header = Header {
                    src: Ident {
                        member: MemberId(by as u16),
                        generation: by_generation,
                    },
                    src_incarnation: 0,
                    dst: Ident {
                        member: MemberId(to as u16),
                        generation: to_generation,
                    },
                    message: SwimMessage::Broadcast,
                };
                peerfence_proto::swim::SwimCodec
                    .encode_header(&header, &mut packet)
                    .expect("a SWIM header encodes");
                let bytes = peerfence_proto::encode_broadcast(item).expect("an item encodes");
                packet.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
                packet.extend_from_slice(&bytes);
                let env = Envelope {
                    cluster: cfg.cluster.clone(),
                    digest: cfg.digest(),
                    sender: MemberId(by as u16),
                    message: Message::Swim(packet),
                };
                let bytes = Bytes::from(peerfence_proto::encode(&env).expect("encodes"));
                for d in self.net.delays(by, to, false, &mut self.rng) {
                    self.after(
                        d,
                        Ev::Deliver {
                            to,
                            from: by,
                            bytes: bytes.clone(),
                        },
                    );
                }
            }
        }
    }

    /// Sends `by`'s forged outcome about `target` to every other member over the network as it
    /// is (a cut link drops it like any message).
    fn forge(&mut self, by: usize, target: usize, forgery: Forgery) {
        use peerfence_proto::{
            CertifiedOutcome, Envelope, FenceOutcome, Message, OutcomeResult, Round,
            SignedFenceNews, SignedNewsItem, SignedVote, VoteEvidence,
        };
        let cfg = self.host_cfg[by].clone();
        let key = VoteKey::from_secret(self.hosts[by].secret);
        if forgery == Forgery::HealthNewBoot {
            self.forge_health(by, target, &cfg, &key);
            return;
        }
        if forgery == Forgery::SwimReturn {
            self.forge_swim_return(by, target, &cfg);
            return;
        }
        if forgery == Forgery::DisarmForever {
            let item = peerfence_proto::Broadcast::Arm(peerfence_proto::ArmState {
                armed: false,
                version: peerfence_proto::FlagVersion {
                    counter: u64::MAX,
                    by: MemberId(by as u16),
                },
            });
            self.trace(Some(by), || {
                "forges gossip: the cluster is disarmed for good".into()
            });
            self.forge_gossip(by, &cfg, &[item]);
            return;
        }
        let executor = match forgery {
            Forgery::SpoofedExecutor => (0..self.hosts.len())
                .find(|&m| m != by && m != target)
                .unwrap_or(by),
            _ => by,
        };
        let proposal = Proposal {
            target: MemberId(target as u16),
            target_boot: self.hosts[target].boot,
            proposer: MemberId(executor as u16),
            round: Round::new(u32::MAX, 1),
            kind: FenceKind::Fence,
            budget_slot: Some(0),
            lane: 0,
        };
        let evidence = VoteEvidence {
            voter_healthy: true,
            target_down_ms: 9_000,
            heartbeat_stalled_ms: 9_000,
        };
        let qc = QuorumCertificate {
            proposal,
            votes: vec![SignedVote {
                voter: MemberId(by as u16),
                evidence,
                signature: key.sign(
                    &cfg.cluster,
                    cfg.digest(),
                    &proposal,
                    MemberId(by as u16),
                    &evidence,
                ),
            }],
        };
        let outcome = FenceOutcome {
            proposal,
            attempt: 1,
            result: OutcomeResult::Confirmed(Evidence::PowerOff { level: 0 }),
        };
        let signed = key.sign_outcome(&cfg.cluster, cfg.digest(), outcome);
        let message = match forgery {
            Forgery::Unsigned => Message::Outcome(outcome),
            Forgery::SelfCertified | Forgery::SpoofedExecutor => {
                Message::CertifiedOutcome(CertifiedOutcome { qc, signed })
            }
            Forgery::HealthNewBoot | Forgery::DisarmForever | Forgery::SwimReturn => {
                unreachable!("sent as gossip above")
            }
            Forgery::News => Message::SignedFenceNews(SignedFenceNews {
                batch: u64::MAX,
                part: 0,
                parts: 1,
                items: vec![SignedNewsItem {
                    qc,
                    outcome: Some(signed),
                }],
                slots: Vec::new(),
            }),
        };
        let env = Envelope {
            cluster: cfg.cluster.clone(),
            digest: cfg.digest(),
            sender: MemberId(by as u16),
            message,
        };
        let bytes = Bytes::from(peerfence_proto::encode(&env).expect("a forged outcome encodes"));
        self.trace(Some(by), || {
            format!("forges a {forgery:?} outcome: h{target} fenced")
        });
        for to in (0..self.hosts.len()).filter(|&m| m != by) {
            for d in self.net.delays(by, to, true, &mut self.rng) {
                self.after(
                    d,
                    Ev::Deliver {
                        to,
                        from: by,
                        bytes: bytes.clone(),
                    },
                );
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

/// Whether a stopping node's stop is known (a node not stopping has nothing to wait for).
fn stop_known(node: &Node) -> bool {
    node.leave_progress().is_none_or(|p| p.known())
}

/// Whether a proposal stops VMs (fence, or VM-stopping self-fence).
pub fn stops_vms(p: &Proposal) -> bool {
    match p.kind {
        FenceKind::Fence | FenceKind::Operator => true,
        FenceKind::SelfFence(a) => a.stops_vms(),
    }
}
