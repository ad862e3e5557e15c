//! The node state machine: one member's view of the cluster and every decision it takes.
//!
//! Shape (as quinn-proto): [`Node::handle`] takes an input stamped with `now`; [`Node::poll_output`]
//! yields what to do, in order; [`Node::poll_timeout`] says when to call again with
//! [`Input::Tick`]. Nothing here performs IO, reads a clock, or draws randomness other than from
//! the seed given to [`Node::new`].
//!
//! Where decisions are made (see also docs/ARCHITECTURE.md):
//! * [`crate::rules`]: eligibility E1–E4, target classification, HA state (pure);
//! * `agreement.rs`: proposing (rank, back-off, budget slot, lane) and voting (promises);
//! * `execution.rs`: running fence levels under a certificate, confirmation, retries;
//! * `local.rs`: self-fencing, poison pills, the watchdog rule and contact probes.

mod agreement;
mod execution;
pub mod io;
mod local;
mod news;
mod peer;
#[cfg(test)]
mod tests;

pub use io::*;

use crate::config::{Config, Mode};
use crate::crypto::{KeyRing, VoteKey};
use crate::durable::DurableState;
use crate::health::LocalHealth;
use crate::heartbeat::{Liveness, PeerHeartbeat};
use crate::membership::{Membership, SwimState};
use crate::rules::{self, EligibilityFacts, HaFacts, HaState, Ineligible, TargetClass};
use crate::time::Instant;
use agreement::ProposerRound;
use bytes::Bytes;
use execution::{Execution, Interrupted};
use local::{ContactState, SelfFenceState, WatchdogState};
use peer::Peer;
use peerfence_proto::{
    AgentHealth, BootId, Broadcast, Envelope, HealthUpdate, IsolationHealth, MemberId, Message,
    StorageHealth, Verdict,
};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Evaluation period: rules are re-evaluated at least this often.
pub const TICK: Duration = Duration::from_millis(100);
/// This node re-broadcasts its health at least this often, so that late joiners learn it.
pub const HEALTH_REFRESH: Duration = Duration::from_secs(5);
/// Changes of health detail (not of the verdict) are broadcast at most this often.
pub const HEALTH_DETAIL_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Outputs queued at most between two drains: far above anything one input produces, so hitting
/// it means the driver stopped draining, which is a bug worth stopping for.
const OUTPUTS_MAX: usize = 1_000_000;

/// Why a node cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// `me` is not in the roster.
    #[error("member {0} is not in the configured roster")]
    NotAMember(MemberId),
    /// The vote key does not match the roster's key for `me`.
    #[error("this node's vote key does not match the key configured for {0}; check the key file")]
    KeyMismatch(String),
    /// The stored generation cannot grow further.
    #[error("the stored SWIM generation is exhausted; remove the durable state file to reset it")]
    GenerationsExhausted,
}

/// Counters of what happened to messages, for metrics and tests.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Dropped inputs by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Received messages by kind.
    pub received: BTreeMap<&'static str, u64>,
    /// Sent messages by kind.
    pub sent: BTreeMap<&'static str, u64>,
    /// Votes granted.
    pub votes_granted: u64,
    /// Votes refused.
    pub votes_refused: u64,
    /// Inputs whose `now` was earlier than a previous one (clamped), and starts in the same boot
    /// whose clock read less than the last persisted instant (stored instants re-armed).
    pub clock_went_backwards: u64,
    /// Gaps between two inputs long enough to mean this node itself stalled (its storage is
    /// then measured again before it acts on it).
    pub stalls: u64,
}

impl Stats {
    fn drop(&mut self, reason: &'static str) {
        *self.dropped.entry(reason).or_default() += 1;
    }
}

/// One member's view, for status endpoints and tests.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    /// Member.
    pub member: MemberId,
    /// Its name.
    pub name: String,
    /// SWIM state.
    pub swim: SwimState,
    /// HA state.
    pub ha: HaState,
    /// Storage heartbeat: `Some(true)` alive, `Some(false)` stalled, `None` not known.
    pub storage_alive: Option<bool>,
    /// Milliseconds since its heartbeat last changed (or since observation began).
    pub heartbeat_age_ms: u64,
    /// Its boot, if known.
    pub boot: Option<BootId>,
    /// Its last fresh verdict.
    pub verdict: Option<Verdict>,
    /// Its last fresh agent state.
    pub agent: Option<AgentHealth>,
    /// Its last fresh per-path storage write health (as it reported it).
    pub storage: Option<Vec<StorageHealth>>,
    /// Its last fresh isolation check (as it reported it).
    pub isolation: Option<IsolationHealth>,
    /// Power state.
    pub power: PowerState,
    /// Last `monitor` result of each fence level's device (`null`: not known or not an agent
    /// level).
    pub fence_devices: Vec<Option<bool>>,
    /// In maintenance.
    pub maintenance: bool,
    /// Failed fence attempts on its current boot.
    pub attempts: u16,
    /// Fenced and confirmed in its current boot: the only state a cloud may be told DEAD for
    /// ([`Node::cloud_dead`]).
    pub dead: bool,
    /// Its daemon stopped cleanly: the generation that stopped and how long ago this node
    /// learnt it (ms). `None` while it runs (or ran since).
    pub left: Option<(u32, u64)>,
}

/// This node's view, for status endpoints and tests.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// This member.
    pub me: MemberId,
    /// Its boot.
    pub boot: BootId,
    /// SWIM generation.
    pub generation: u32,
    /// Own verdict.
    pub verdict: Verdict,
    /// Own storage paths.
    pub storage: Vec<StorageHealth>,
    /// Own agent.
    pub agent: AgentHealth,
    /// Own isolation check.
    pub isolation: IsolationHealth,
    /// `None` when this node may propose and vote; otherwise why not.
    pub ineligible: Option<Ineligible>,
    /// Quorum size.
    pub quorum: usize,
    /// Members visible (Alive or Suspect), self included.
    pub visible: usize,
    /// Cluster armed.
    pub armed: bool,
    /// Mode.
    pub mode: Mode,
    /// Storm mode.
    pub storm: bool,
    /// Watchdog being fed.
    pub watchdog_feeding: bool,
    /// Last `monitor` result of this host's own fence devices, per level (`null`: not known).
    pub fence_devices: Vec<Option<bool>>,
    /// Budget slots reserved in the current window.
    pub budget_used: usize,
    /// Budget per window.
    pub budget: u8,
    /// Targets with a fence in flight (run here or learnt).
    pub fences_in_flight: Vec<MemberId>,
    /// Every other member.
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone)]
struct Storm {
    on: bool,
    calm_since: Option<Instant>,
    count: usize,
}

/// One peerfence member's state machine.
pub struct Node {
    cfg: Arc<Config>,
    keys: KeyRing,
    vote_key: VoteKey,
    me: MemberId,
    boot: BootId,
    rng: ChaCha8Rng,
    now: Instant,
    started_at: Instant,
    swim: Membership,
    local: LocalHealth,
    verdict: Verdict,
    peers: Vec<Peer>,
    /// Rendezvous ranking per target: members other than the target, best first.
    ranking: Vec<Vec<MemberId>>,
    durable: DurableState,
    dirty: bool,
    out: VecDeque<Output>,
    next_tick: Instant,
    health_seq: u64,
    last_health: Option<HealthUpdate>,
    next_health: Instant,
    next_announce: Instant,
    storm: Storm,
    ineligible: Option<Ineligible>,
    rounds: BTreeMap<MemberId, ProposerRound>,
    executions: BTreeMap<MemberId, Execution>,
    /// Attempts started before a restart that may still be running.
    interrupted: Vec<Interrupted>,
    next_command: u64,
    self_fence: SelfFenceState,
    watchdog: WatchdogState,
    contact: ContactState,
    /// Slots and lanes other voters said are taken, with when to forget the hint.
    slot_hints: Vec<Instant>,
    lane_hints: Vec<Instant>,
    stats: Stats,
    stopped: bool,
    /// A clean stop in progress: the peers that recorded it (see [`Node::leave_progress`]).
    leave_acks: Option<Vec<MemberId>>,
    /// Fence-news batches sent (numbers them).
    news_batch: u64,
    /// What each peer's latest news batch delivered.
    news_heard: Vec<news::Heard>,
    /// Pill clears in flight or waiting to be tried again.
    clears: Vec<execution::PendingClear>,
    /// Per member and path: the last heartbeat read there written under another configuration.
    foreign: Vec<Option<(BootId, u64)>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({}, {:?})", self.me, self.boot)
    }
}

impl Node {
    /// Starts a node for member `me` in host boot `boot`, from its durable state (`None` on first
    /// start). The first output is a [`Output::Persist`] with the new generation: persist it
    /// before sending anything.
    pub fn new(
        config: Arc<Config>,
        me: MemberId,
        vote_key: VoteKey,
        boot: BootId,
        durable: Option<DurableState>,
        seed: u64,
        now: Instant,
    ) -> Result<Self, StartError> {
        let info = config.roster.get(me).ok_or(StartError::NotAMember(me))?;
        if info.vote_key != vote_key.public() {
            return Err(StartError::KeyMismatch(info.name.clone()));
        }
        let mut durable = durable.unwrap_or_default();
        let names: Vec<String> = config
            .roster
            .ids()
            .map(|m| config.roster.name(m).to_owned())
            .collect();
        durable.remap_roster(&names);
        // Same boot but an earlier clock: the driver's clock did not keep running across the
        // restart. Re-armed (conservatively) and counted.
        let clock_restarted = durable.boot == Some(boot) && now < durable.clock_at;
        durable.rebase(boot, now);
        durable.generation = durable
            .generation
            .checked_add(1)
            .ok_or(StartError::GenerationsExhausted)?;
        durable.round_counter = 0;
        let generation = durable.generation;
        let n = config.n();
        let peers = (0..n)
            .map(|_| Peer::new(PeerHeartbeat::new(&config), now))
            .collect();
        let ranking = (0..n)
            .map(|t| rank_members(&config, MemberId(t as u16)))
            .collect();
        let mut node = Self {
            keys: KeyRing::new(&config),
            vote_key,
            me,
            boot,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now,
            started_at: now,
            swim: Membership::new(
                &config,
                me,
                generation,
                seed ^ 0x5157_494d,
                durable.max_flag_counter(),
            ),
            local: LocalHealth::new(&config, now),
            verdict: Verdict::Unhealthy,
            peers,
            ranking,
            durable,
            dirty: true,
            out: VecDeque::new(),
            next_tick: now,
            health_seq: 0,
            last_health: None,
            next_health: now,
            next_announce: now,
            storm: Storm {
                on: false,
                calm_since: None,
                count: 0,
            },
            ineligible: Some(Ineligible::Initializing),
            rounds: BTreeMap::new(),
            executions: BTreeMap::new(),
            interrupted: Vec::new(),
            next_command: 0,
            self_fence: SelfFenceState::default(),
            watchdog: WatchdogState::default(),
            contact: ContactState::new(n),
            slot_hints: vec![Instant::ZERO; usize::from(config.fencing.budget.get())],
            lane_hints: vec![Instant::ZERO; usize::from(config.fencing.max_concurrent.get())],
            stats: Stats::default(),
            stopped: false,
            leave_acks: None,
            news_batch: 0,
            news_heard: vec![news::Heard::default(); n],
            clears: Vec::new(),
            foreign: vec![None; n * config.storage.paths.len()],
            cfg: config,
        };
        if clock_restarted {
            node.stats.clock_went_backwards += 1;
        }
        if node.durable.recovering {
            // Lost state: whatever it promised must lapse, and what it reserved be learnt from
            // its peers' news (or lapse too), before it votes again.
            node.durable.recovering = false;
            node.durable.votes_from = Some(now + node.cfg.promise_ttl());
            node.durable.votes_need_news = true;
            node.durable.votes_from_anyway = Some(now + node.cfg.fencing.budget_window);
            node.dirty = true;
        }
        node.persist();
        node.resume_interrupted_attempts();
        node.resume_clears();
        node.swim.announce_to_inactive(now);
        node.next_announce = now + node.cfg.swim.announce_period;
        node.drain_swim();
        Ok(node)
    }

    /// Feeds one input.
    pub fn handle(&mut self, now: Instant, input: Input) {
        if now < self.now {
            self.stats.clock_went_backwards += 1;
        } else {
            if now.saturating_since(self.now) > self.stall_gap() && !self.stopped {
                // This node did not run for a while (SIGSTOP, a paused VM, a hung fsync): the
                // failures its storage threads report across that gap measured the stall, not
                // the storage. Measure again before acting on them.
                self.local.restart_measurement(now);
                self.stats.stalls += 1;
            }
            self.now = now;
        }
        if self.stopped {
            // A stopping daemon only learns who heard its stop (and who stops too).
            if let Input::Datagram { from, bytes } = input {
                self.on_datagram(from, &bytes);
            }
            self.persist();
            return;
        }
        match input {
            Input::Tick => {}
            Input::Datagram { from, bytes } => {
                self.on_datagram(from, &bytes);
                self.note_generation();
            }
            Input::StorageWrite {
                path,
                outcome,
                counter,
            } => {
                if !self.local.record_write(self.now, path, outcome, counter) {
                    self.stats.drop("unknown_path");
                }
            }
            Input::HeartbeatRead {
                path,
                member,
                record,
                stopped,
            } => self.on_heartbeat_read(path, member, record, stopped),
            Input::PoisonPillRead { path: _, pill } => self.on_pill_read(pill),
            Input::ForeignHeartbeat {
                path,
                member,
                record,
            } => self.on_foreign_heartbeat(path, member, record),
            Input::AgentCheck { alive } => self.local.record_agent(alive),
            Input::IsolationCheck { ok } => self.local.record_isolation(&self.cfg, ok),
            Input::FenceResult { id, result } => self.on_fence_result(id, result),
            Input::PillWritten { id, ok } => self.on_pill_written(id, ok),
            Input::PillCleared { id, ok } => self.on_pill_cleared(id, ok),
            Input::PowerStatus { member, state } => self.on_power_status(member, state),
            Input::FenceDevice { member, level, ok } => {
                let levels = self.cfg.fencing.levels.len();
                if !self.cfg.roster.contains(member) || usize::from(level) >= levels {
                    self.stats.drop("bad_fence_device");
                } else {
                    let d = &mut self.peers[member.index()].devices;
                    d.resize(levels, None);
                    d[usize::from(level)] = Some(ok);
                }
            }
            Input::Operator(cmd) => self.on_operator(cmd),
            Input::Shutdown => self.shutdown(),
        }
        if !self.stopped {
            self.swim.fire_timers(self.now);
            self.note_generation();
            if self.now >= self.next_tick {
                self.evaluate();
                self.next_tick = self.now + TICK;
            }
            self.drain_swim();
        }
        self.persist();
        assert!(
            self.out.len() < OUTPUTS_MAX,
            "driver stopped draining outputs"
        );
    }

    /// Next output, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When to call [`Node::handle`] with [`Input::Tick`] next.
    pub fn poll_timeout(&self) -> Instant {
        match self.swim.next_timer() {
            Some(t) if t < self.next_tick => t,
            _ => self.next_tick,
        }
    }

    /// This member.
    pub fn me(&self) -> MemberId {
        self.me
    }

    /// The host boot this node runs in.
    pub fn boot(&self) -> BootId {
        self.boot
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    /// The durable state as last handed out for persisting (plus any pending change).
    pub fn durable(&self) -> &DurableState {
        &self.durable
    }

    /// Message counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Current SWIM generation (written into heartbeat records so readers can order boots).
    pub fn generation(&self) -> u32 {
        self.swim.identity().generation
    }

    /// Own verdict.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// The full status view.
    pub fn status(&self) -> NodeStatus {
        let peers = self
            .cfg
            .roster
            .ids()
            .filter(|&m| m != self.me)
            .map(|m| {
                let p = &self.peers[m.index()];
                let fresh = p.fresh_health(self.now);
                PeerStatus {
                    member: m,
                    name: self.cfg.roster.name(m).to_owned(),
                    swim: p.swim,
                    ha: p.ha,
                    storage_alive: match self.liveness(m) {
                        Liveness::Alive => Some(true),
                        Liveness::Stalled { .. } => Some(false),
                        Liveness::Unknown => None,
                    },
                    heartbeat_age_ms: p.hb.stalled_for(self.now).as_millis() as u64,
                    boot: p.boot,
                    verdict: fresh.map(|h| h.verdict),
                    agent: fresh.map(|h| h.agent),
                    storage: fresh.map(|h| h.storage.clone()),
                    isolation: fresh.map(|h| h.isolation),
                    power: p.power,
                    fence_devices: p.devices.clone(),
                    maintenance: self.durable.in_maintenance(m),
                    attempts: p.attempts,
                    dead: self.cloud_dead(m).is_some(),
                    left: self
                        .durable
                        .left_record(m)
                        .filter(|_| self.has_left(m))
                        .map(|l| {
                            (
                                l.generation,
                                self.now.saturating_since(l.since).as_millis() as u64,
                            )
                        }),
                }
            })
            .collect();
        NodeStatus {
            me: self.me,
            boot: self.boot,
            generation: self.swim.identity().generation,
            verdict: self.verdict,
            storage: self.local.storage(&self.cfg, self.now),
            agent: self.local.agent(),
            isolation: self.local.isolation(),
            ineligible: self.ineligible,
            quorum: self.cfg.quorum(),
            visible: self.visible(),
            armed: self.durable.armed.armed,
            mode: self.cfg.mode,
            storm: self.storm.on,
            watchdog_feeding: self.watchdog.feeding,
            fence_devices: self.peers[self.me.index()].devices.clone(),
            budget_used: self.durable.slots.len(),
            budget: self.cfg.fencing.budget.get(),
            fences_in_flight: self.fences_in_flight(),
            peers,
        }
    }

    /// What a cloud's HA investigator (CloudStack's `kvmheartbeat.sh -r`) is told about `m`:
    /// `Some(boot)` is DEAD for the VMs of that boot, and the cloud then restarts them elsewhere.
    ///
    /// DEAD means "fenced and confirmed in its current boot" and nothing else. A stopped
    /// heartbeat, a dead daemon, a dead BMC or a host that lost only its storage are not: for a
    /// cloud, DEAD *is* the fence (it restarts the VMs at once), so anything short of a
    /// confirmed fence would run every VM of a live host twice.
    pub fn cloud_dead(&self, m: MemberId) -> Option<BootId> {
        if m == self.me || !self.cfg.roster.contains(m) {
            return None;
        }
        let boot = self.peers[m.index()].boot?;
        (self.durable.fenced_boot(m) == Some(boot)).then_some(boot)
    }

    /// Targets with a fence in flight, run here or learnt from certificates.
    pub fn fences_in_flight(&self) -> Vec<MemberId> {
        let mut v: Vec<MemberId> = self.executions.keys().copied().collect();
        v.extend(self.interrupted.iter().map(|i| i.proposal.target));
        for m in self.cfg.roster.ids() {
            if self.peers[m.index()].inflight.is_some() && !v.contains(&m) {
                v.push(m);
            }
        }
        v
    }

    // ----- plumbing -------------------------------------------------------------------------

    fn emit(&mut self, event: Event) {
        self.out.push_back(Output::Event(event));
    }

    /// Queues a [`Output::Persist`] if the durable state changed since the last one. Call before
    /// pushing any output that depends on the change.
    fn persist(&mut self) {
        if self.dirty {
            self.dirty = false;
            self.durable.clock_at = self.durable.clock_at.max(self.now);
            self.out
                .push_back(Output::Persist(Box::new(self.durable.clone())));
        }
    }

    fn envelope(&self, message: Message) -> Option<Bytes> {
        let env = Envelope {
            cluster: self.cfg.cluster.clone(),
            digest: self.cfg.digest(),
            sender: self.me,
            message,
        };
        peerfence_proto::encode(&env).ok().map(Bytes::from)
    }

    fn send(&mut self, to: MemberId, message: Message, reliable: bool) {
        let kind = message.kind();
        let membership = matches!(message, Message::Swim(_));
        match self.envelope(message) {
            Some(bytes) => {
                *self.stats.sent.entry(kind).or_default() += 1;
                self.out.push_back(Output::Send {
                    to,
                    bytes,
                    reliable,
                    membership,
                });
            }
            None => self.stats.drop("encode_failed"),
        }
    }

    fn send_all(&mut self, message: Message, reliable: bool) {
        let kind = message.kind();
        let Some(bytes) = self.envelope(message) else {
            self.stats.drop("encode_failed");
            return;
        };
        for m in self.cfg.roster.ids() {
            if m != self.me {
                *self.stats.sent.entry(kind).or_default() += 1;
                self.out.push_back(Output::Send {
                    to: m,
                    bytes: bytes.clone(),
                    reliable,
                    membership: false,
                });
            }
        }
    }

    fn drain_swim(&mut self) {
        for (to, packet) in self.swim.take_sends() {
            self.send(to, Message::Swim(packet.to_vec()), false);
        }
        self.swim.clear_notifications();
        for item in self.swim.take_inbox() {
            self.on_broadcast(item);
        }
        self.note_generation();
    }

    /// foca renews this member's generation when the cluster declared it down. The new
    /// generation is persisted before anything carrying it (SWIM packets, health, rounds,
    /// heartbeat records) leaves: a restart must never reuse a generation already seen, or its
    /// health would look stale and a reboot would not be recognised as one.
    fn note_generation(&mut self) {
        let id = self.swim.identity();
        if id.generation > self.durable.generation {
            self.durable.generation = id.generation;
            self.dirty = true;
            self.persist();
        }
    }

    fn next_command_id(&mut self) -> CommandId {
        self.next_command += 1;
        self.next_command
    }

    /// A gap between two inputs longer than this means the node itself stalled: it is fed a
    /// tick every [`TICK`] and a storage report every heartbeat interval.
    fn stall_gap(&self) -> Duration {
        self.cfg.storage.write_timeout.max(Duration::from_secs(1))
    }

    /// Whether this node lost its state and still waits out what it may have promised or
    /// reserved: a promise lifetime in any case, and until it heard enough peers' fence news
    /// (or a whole budget window passed).
    fn recovering(&self) -> bool {
        let d = &self.durable;
        d.votes_from.is_some_and(|t| self.now < t)
            || (d.votes_need_news && d.votes_from_anyway.is_some_and(|t| self.now < t))
    }

    fn initializing(&self) -> bool {
        self.now.saturating_since(self.started_at) < self.cfg.fencing.startup_quiet_period
    }

    fn visible(&self) -> usize {
        1 + self
            .cfg
            .roster
            .ids()
            .filter(|&m| {
                m != self.me
                    && matches!(
                        self.peers[m.index()].swim,
                        SwimState::Alive | SwimState::Suspect
                    )
            })
            .count()
    }

    // ----- inputs ---------------------------------------------------------------------------

    fn on_datagram(&mut self, from: MemberId, bytes: &[u8]) {
        if !self.cfg.roster.contains(from) || from == self.me {
            self.stats.drop("unknown_sender");
            return;
        }
        let env = match peerfence_proto::decode(bytes) {
            Ok(env) => env,
            Err(e) => {
                self.stats.drop(e.kind());
                return;
            }
        };
        if env.cluster != self.cfg.cluster {
            self.stats.drop("other_cluster");
            return;
        }
        if env.digest != self.cfg.digest() {
            self.stats.drop("config_digest_mismatch");
            return;
        }
        if env.sender != from {
            self.stats.drop("forged_sender");
            return;
        }
        *self.stats.received.entry(env.message.kind()).or_default() += 1;
        if self.stopped {
            match env.message {
                Message::LeaveAck(a) => self.on_leave_ack(from, a),
                // Peers stopped at the same time (an operator stopping them all) answer each
                // other, and each counts the others as gone.
                Message::Leave(l) => self.on_leave(from, l),
                _ => {}
            }
            return;
        }
        match env.message {
            Message::Swim(packet) => {
                if let Err(e) = self.swim.handle_packet(self.now, from, &packet) {
                    self.stats.drop(match e {
                        crate::membership::SwimDrop::SenderMismatch => "forged_sender",
                        crate::membership::SwimDrop::Rejected(why) => why,
                    });
                }
            }
            Message::Propose(p) => self.on_propose(from, p),
            Message::Vote(v) => self.on_vote(from, v),
            Message::Refuse(r) => self.on_refuse(from, r),
            Message::Release(r) => self.on_release(from, r.proposal),
            Message::Certificate(qc) => self.on_certificate(from, qc),
            // Unsigned: from a build before outcomes were signed, or forged. Never acted on.
            Message::Outcome(_) => self.stats.drop("unsigned_outcome"),
            Message::CertifiedOutcome(c) => self.on_certified_outcome(from, c),
            Message::Contact(c) => self.on_contact(from, c),
            Message::ContactAck(a) => self.on_contact_ack(from, a),
            Message::Leave(l) => self.on_leave(from, l),
            Message::FenceNews(n) => self.on_legacy_fence_news(from, n),
            Message::SignedFenceNews(n) => self.on_fence_news(from, n),
            Message::LeaveAck(_) => self.stats.drop("leave_ack_not_leaving"),
        }
    }

    fn on_broadcast(&mut self, item: Broadcast) {
        match item {
            // Unsigned: from a build before signed health, or forged. Never acted on.
            Broadcast::Health(_) => self.stats.drop("unsigned_health"),
            Broadcast::SignedHealth(sh) => {
                // The membership layer verified the signature before passing it on.
                let h = sh.health;
                if h.member == self.me {
                    return;
                }
                let i = h.member.index();
                let newer = match &self.peers[i].health {
                    Some(old) => (h.generation, h.seq) > (old.generation, old.seq),
                    None => true,
                };
                if !newer {
                    return;
                }
                let (boot, generation) = (h.boot, h.generation);
                self.member_generation(MemberId(i as u16), generation);
                self.peers[i].health = Some(h);
                self.peers[i].health_at = Some(self.now);
                // A new boot is evidence that the old instance and its VMs are gone, so it counts
                // only when the host's own slot on shared storage shows it (the member signing
                // this could be wrong about itself only if compromised, but its slot is written
                // by the instance that runs). Gossip names a boot only where none is known yet.
                if self.peers[i].boot.is_none() {
                    self.boot_seen(MemberId(i as u16), boot, generation);
                } else if self.peers[i].boot != Some(boot) {
                    self.stats.drop("health_boot_unconfirmed");
                }
            }
            Broadcast::Arm(a) if !self.durable.flag_step_ok(a.version) => {
                self.stats.drop("flag_step_too_large")
            }
            Broadcast::Maintenance(m) if !self.durable.flag_step_ok(m.version) => {
                self.stats.drop("flag_step_too_large")
            }
            Broadcast::Arm(a) => {
                if self.durable.apply_arm(a) {
                    self.dirty = true;
                    self.emit(Event::ArmChanged {
                        armed: a.armed,
                        by: a.version.by,
                    });
                }
            }
            Broadcast::Maintenance(m) => {
                if self.cfg.roster.contains(m.member) && self.durable.apply_maintenance(m) {
                    self.dirty = true;
                    self.emit(Event::MaintenanceChanged {
                        member: m.member,
                        on: m.on,
                        by: m.version.by,
                    });
                }
            }
            Broadcast::Outcome(_) => self.stats.drop("unsigned_outcome"),
            Broadcast::SignedOutcome(o) => self.on_signed_outcome(None, o, None),
            Broadcast::Leave(l) => self.apply_leave(l),
        }
    }

    fn on_leave(&mut self, from: MemberId, l: peerfence_proto::LeaveNotice) {
        if l.member != from {
            self.stats.drop("forged_sender");
            return;
        }
        self.apply_leave(l);
        // An acknowledgement covers this member's future votes only: while it holds a promise
        // on the leaver, or knows a fence of it in flight, a vote it already cast may still make
        // a certificate, so it does not acknowledge (the leaver keeps its watchdog armed).
        let t = l.member;
        let bound = self.durable.promise_for(t).is_some()
            || self.executions.contains_key(&t)
            || self.interrupted.iter().any(|i| i.proposal.target == t)
            || self.peers[t.index()].inflight.is_some();
        if bound {
            self.stats.drop("leave_not_acked_vote_cast");
        } else if self
            .durable
            .left_generation(l.member)
            .is_some_and(|g| g >= l.generation)
        {
            // Recorded durably before the leaver hears it: the ack is its licence to close its
            // watchdog.
            self.persist();
            self.send(from, Message::LeaveAck(l), true);
        }
    }

    /// A peer recorded this node's clean stop.
    fn on_leave_ack(&mut self, from: MemberId, a: peerfence_proto::LeaveNotice) {
        let generation = self.swim.identity().generation;
        let Some(acks) = self.leave_acks.as_mut() else {
            return;
        };
        if a.member != self.me || a.generation != generation {
            self.stats.drop("stale_leave_ack");
            return;
        }
        if !acks.contains(&from) {
            acks.push(from);
        }
    }

    /// A clean stop in progress: who recorded it, and how many peers might still vote without
    /// knowing. The driver magic-closes the watchdog only once [`LeaveProgress::known`]
    /// (waiting at most [`Node::leave_wait`]): a stop nobody heard is, to the peers, a silent
    /// host, which they fence and may confirm by a deadline, so the watchdog must then still
    /// reset it. The stop record in the host's slot does not count: a private directory (a
    /// mount that failed) takes it as readily as the shared one, and nobody reads it there.
    pub fn leave_progress(&self) -> Option<LeaveProgress> {
        let acks = self.leave_acks.as_ref()?;
        // Only acknowledgements count. A peer known to have stopped is not "gone": it may start
        // again without having heard of this stop, and vote.
        let unaware = self
            .cfg
            .roster
            .ids()
            .filter(|&m| m != self.me && !acks.contains(&m))
            .count();
        Some(LeaveProgress {
            acked_by: acks.clone(),
            unaware,
            quorum: self.cfg.quorum(),
        })
    }

    /// How long a stopping daemon waits for its stop to be known: [`LEAVE_WAIT`], but at most
    /// half of what the watchdog leaves after its last feed (up to a feed interval before the
    /// stop) and the stop record's write (up to a write timeout), so that a heard stop is not
    /// reset by its own watchdog while the acknowledgements arrive.
    pub fn leave_wait(&self) -> std::time::Duration {
        let spent = self.cfg.watchdog.feed_interval + self.cfg.storage.write_timeout;
        LEAVE_WAIT.min(self.cfg.watchdog.timeout.saturating_sub(spent) / 2)
    }

    /// `l.member`'s daemon stopped cleanly at `l.generation` (its notice, gossip, or the record it
    /// left in its heartbeat slot): remembered durably until it runs a higher generation.
    fn apply_leave(&mut self, l: peerfence_proto::LeaveNotice) {
        if l.member == self.me || !self.cfg.roster.contains(l.member) {
            return;
        }
        if l.generation < self.peers[l.member.index()].generation {
            // A later run of it was seen already: this notice is old.
            return;
        }
        if self.durable.record_left(l.member, l.generation, self.now) {
            self.dirty = true;
            self.emit(Event::MemberLeft {
                member: l.member,
                generation: l.generation,
            });
        }
    }

    /// `m` itself shows it runs `generation` (its signed health, a heartbeat record of its
    /// slot): a clean stop of an earlier generation is over.
    fn member_generation(&mut self, m: MemberId, generation: u32) {
        if m != self.me {
            let p = &mut self.peers[m.index()];
            p.generation = p.generation.max(generation);
        }
        if m != self.me && self.durable.returned(m, generation) {
            self.dirty = true;
            self.emit(Event::MemberReturned {
                member: m,
                generation,
            });
        }
    }

    fn on_foreign_heartbeat(
        &mut self,
        path: usize,
        member: MemberId,
        record: peerfence_proto::HeartbeatRecord,
    ) {
        let paths = self.cfg.storage.paths.len();
        if !self.cfg.roster.contains(member) || member == self.me || path >= paths {
            self.stats.drop("bad_heartbeat_read");
            return;
        }
        let slot = &mut self.foreign[member.index() * paths + path];
        let value = (record.boot, record.counter);
        if slot.is_some_and(|old| old != value) {
            self.local.record_peer_seen(self.now, path);
        }
        *slot = Some(value);
    }

    fn on_heartbeat_read(
        &mut self,
        path: usize,
        member: MemberId,
        record: Option<peerfence_proto::HeartbeatRecord>,
        stopped: bool,
    ) {
        if !self.cfg.roster.contains(member) || path >= self.cfg.storage.paths.len() {
            self.stats.drop("bad_heartbeat_read");
            return;
        }
        if record.is_some_and(|r| r.member != member) {
            // A record in the wrong slot (copied file, misconfigured path) proves nothing.
            self.stats.drop("heartbeat_in_wrong_slot");
            return;
        }
        if member == self.me {
            // Our own record, read back through the read path: only this run's records count.
            let mine = record
                .filter(|r| r.boot == self.boot && r.generation == self.generation())
                .map(|r| r.counter);
            self.local.record_readback(&self.cfg, self.now, path, mine);
            return;
        }
        let seen = self.peers[member.index()]
            .hb
            .observe(&self.cfg, self.now, path, record, stopped);
        if seen == crate::heartbeat::Observed::Advanced {
            self.local.record_peer_seen(self.now, path);
        }
        if let Some(r) = record {
            self.boot_seen(member, r.boot, r.generation);
            if stopped {
                self.apply_leave(peerfence_proto::LeaveNotice {
                    member,
                    generation: r.generation,
                });
            } else {
                self.member_generation(member, r.generation);
            }
        }
    }

    /// A source (storage record or health gossip) reports `boot` as `m`'s boot under daemon
    /// generation `generation`. Generations grow with every daemon start, so only a report from a
    /// newer generation can announce a new boot: a stale record or a late gossip item never looks
    /// like a reboot (which would falsely confirm a fence).
    fn boot_seen(&mut self, m: MemberId, boot: BootId, generation: u32) {
        let p = &mut self.peers[m.index()];
        let old = p.boot;
        match old {
            None => {
                p.boot = Some(boot);
                p.boot_generation = generation;
                return;
            }
            Some(b) if b == boot => {
                if generation > p.boot_generation && p.considered_dead == Some(boot) {
                    // A new daemon generation in the same boot: the host lives (only its daemon
                    // restarted), its VMs may well run.
                    p.considered_dead = None;
                }
                p.boot_generation = p.boot_generation.max(generation);
                return;
            }
            Some(_) if generation <= p.boot_generation => return,
            Some(_) => {}
        }
        p.boot_generation = generation;
        p.new_boot(boot);
        if let Some(old) = old {
            self.emit(Event::Rebooted {
                member: m,
                old,
                new: boot,
            });
            // A new boot proves the old instance and its VMs are gone.
            self.new_boot_evidence(m, old, boot);
        }
    }

    fn on_power_status(&mut self, member: MemberId, state: PowerState) {
        if !self.cfg.roster.contains(member) {
            self.stats.drop("bad_power_status");
            return;
        }
        let p = &mut self.peers[member.index()];
        if p.power == state {
            return;
        }
        p.power = state;
        self.emit(Event::PowerChanged { member, state });
        let fenced = self.peers[member.index()].boot.is_some()
            && self.durable.fenced_boot(member) == self.peers[member.index()].boot;
        if state == PowerState::Off
            && !self.executions.contains_key(&member)
            && self.peers[member.index()].inflight.is_none()
            && !fenced
        {
            // Off without a fence of ours in flight is reported, not treated as a fence: nobody
            // checked it stays off, and nobody agreed to recover its VMs.
            self.emit(Event::HostFoundOff { member });
        }
    }

    fn on_operator(&mut self, cmd: OperatorCommand) {
        let flag = matches!(
            cmd,
            OperatorCommand::Arm | OperatorCommand::Disarm | OperatorCommand::Maintenance { .. }
        );
        // Received flags move the counter by bounded steps (`FLAG_STEP_MAX`), so it cannot
        // reach the top; should it anyway, the command is refused rather than wrapped.
        let Some(counter) = self.durable.max_flag_counter().checked_add(1) else {
            if flag {
                self.emit(Event::FlagRefused {
                    reason: "the flag counter is exhausted",
                });
            }
            return;
        };
        let version = peerfence_proto::FlagVersion {
            counter,
            by: self.me,
        };
        match cmd {
            OperatorCommand::Maintenance { member, on } => {
                if !self.cfg.roster.contains(member) {
                    self.stats.drop("bad_operator_command");
                    return;
                }
                let m = peerfence_proto::MaintenanceState {
                    member,
                    on,
                    version,
                };
                // Applied, then announced: an operator is told (and sees events of) only what
                // took effect.
                if !self.durable.apply_maintenance(m) {
                    self.emit(Event::FlagRefused {
                        reason: "a newer maintenance flag is in force",
                    });
                    return;
                }
                self.dirty = true;
                self.persist();
                self.swim.broadcast(&Broadcast::Maintenance(m));
                self.emit(Event::MaintenanceChanged {
                    member,
                    on,
                    by: self.me,
                });
            }
            OperatorCommand::Arm | OperatorCommand::Disarm => {
                let armed = cmd == OperatorCommand::Arm;
                let a = peerfence_proto::ArmState { armed, version };
                if !self.durable.apply_arm(a) {
                    self.emit(Event::FlagRefused {
                        reason: "a newer arm switch is in force",
                    });
                    return;
                }
                self.dirty = true;
                self.persist();
                self.swim.broadcast(&Broadcast::Arm(a));
                self.emit(Event::ArmChanged { armed, by: self.me });
            }
            OperatorCommand::SelfFenceRequest => {
                let answer = self.self_fence_request();
                self.emit(Event::SelfFenceRequestAnswered { answer });
            }
            OperatorCommand::ManualFence { target } => {
                let ok = self.cfg.roster.contains(target) && target != self.me;
                if ok {
                    let p = &mut self.peers[target.index()];
                    p.manual = true;
                    p.failed = false;
                    p.next_retry_at = None;
                    p.next_round_at = Instant::ZERO;
                }
                self.emit(Event::ManualFence {
                    target,
                    accepted: ok,
                });
            }
        }
    }

    fn shutdown(&mut self) {
        let notice = peerfence_proto::LeaveNotice {
            member: self.me,
            generation: self.swim.identity().generation,
        };
        self.swim.broadcast(&Broadcast::Leave(notice));
        self.send_all(Message::Leave(notice), true);
        self.swim.leave(self.now);
        self.drain_swim();
        self.out.push_back(Output::StopHeartbeat {
            generation: notice.generation,
        });
        self.leave_acks = Some(Vec::new());
        self.stopped = true;
    }

    // ----- evaluation -----------------------------------------------------------------------

    fn evaluate(&mut self) {
        let cfg = self.cfg.clone();
        if self.durable.expire(self.now, cfg.fencing.budget_window) {
            self.dirty = true;
        }
        self.refresh_swim();
        self.refresh_health();
        self.refresh_storm();
        self.refresh_eligibility();
        self.refresh_targets();
        self.progress_rounds();
        self.progress_executions();
        self.consider_proposals();
        self.self_fence_step();
        self.pill_and_inflight_step();
        self.retry_clears();
        self.watchdog_step();
        if self.now >= self.next_announce {
            self.swim.announce_to_inactive(self.now);
            self.next_announce = self.now + cfg.swim.announce_period;
        }
    }

    fn refresh_swim(&mut self) {
        let states = self.swim.states();
        for (i, (state, generation)) in states.into_iter().enumerate() {
            if i == self.me.index() {
                continue;
            }
            // SWIM identities are gossiped by anyone and signed by nobody: one seen here only
            // triggers news. The generation that ends a clean stop (`p.generation`, read by
            // `has_left`) comes from the member's signed health or its own slot
            // (`member_generation`).
            let p = &mut self.peers[i];
            // A member that comes alive, or runs a new generation (a restarted daemon), learns
            // the fences it may have missed.
            let back = (state == SwimState::Alive
                && !matches!(p.swim, SwimState::Alive | SwimState::Suspect))
                || (generation > p.swim_generation
                    && p.swim_generation > 0
                    && state == SwimState::Alive);
            p.swim_generation = p.swim_generation.max(generation);
            if back {
                self.send_news(MemberId(i as u16));
            }
            let p = &mut self.peers[i];
            if p.swim != state {
                let from = p.swim;
                p.swim = state;
                p.swim_since = self.now;
                self.emit(Event::SwimChanged {
                    member: MemberId(i as u16),
                    from,
                    to: state,
                });
            }
        }
    }

    fn refresh_health(&mut self) {
        let cfg = self.cfg.clone();
        for path in 0..cfg.storage.paths.len() {
            let stopped = cfg
                .roster
                .ids()
                .filter(|&m| m != self.me)
                .all(|m| self.peers[m.index()].hb.stopped_on(path));
            self.local.set_others_stopped(path, stopped);
        }
        self.local.refresh_verification(&cfg, self.now);
        let verdict = self.local.verdict(&cfg, self.now);
        if verdict != self.verdict {
            self.verdict = verdict;
            self.emit(Event::VerdictChanged { verdict });
        }
        let storage = self.local.storage(&cfg, self.now);
        // A verdict change goes out at once; a change of detail only (a path flapping between
        // Ok and Slow, say) waits for a second since the last update, so a noisy path cannot
        // flood the gossip.
        let (verdict_changed, detail_changed) = match &self.last_health {
            Some(h) => (
                h.verdict != verdict,
                h.storage != storage
                    || h.agent != self.local.agent()
                    || h.isolation != self.local.isolation(),
            ),
            None => (true, true),
        };
        let detail_due = self.now
            >= self
                .next_health
                .saturating_sub(HEALTH_REFRESH - HEALTH_DETAIL_MIN_INTERVAL);
        if verdict_changed || (detail_changed && detail_due) || self.now >= self.next_health {
            self.health_seq += 1;
            let h = HealthUpdate {
                member: self.me,
                generation: self.swim.identity().generation,
                seq: self.health_seq,
                boot: self.boot,
                verdict,
                storage,
                agent: self.local.agent(),
                isolation: self.local.isolation(),
            };
            let periodic = self.now >= self.next_health;
            let signed = self
                .vote_key
                .sign_health(&self.cfg.cluster, self.cfg.digest(), h.clone());
            self.swim.broadcast(&Broadcast::SignedHealth(signed));
            self.last_health = Some(h);
            self.next_health = self.now + HEALTH_REFRESH;
            if periodic {
                self.rebroadcast_flags();
            }
        }
    }

    /// Anti-entropy for operator flags: a member that was cut off when an operator disarmed the
    /// cluster or put a host in maintenance would otherwise never learn it (gossip sends each
    /// item only `max_transmissions` times). Only set flags are repeated: at most one per member
    /// plus the arm switch.
    fn rebroadcast_flags(&mut self) {
        for l in self.durable.left.clone() {
            let notice = peerfence_proto::LeaveNotice {
                member: l.member,
                generation: l.generation,
            };
            self.swim.broadcast(&Broadcast::Leave(notice));
        }
        if self.durable.armed.version.counter > 0 {
            let a = self.durable.armed;
            self.swim.broadcast(&Broadcast::Arm(a));
        }
        for m in self.durable.maintenance.clone() {
            self.swim.broadcast(&Broadcast::Maintenance(m));
        }
    }

    fn refresh_storm(&mut self) {
        let threshold = self.cfg.fencing.max_unhealthy;
        let count = self
            .cfg
            .roster
            .ids()
            .filter(|&m| self.counts_as_unhealthy(m))
            .count();
        self.storm.count = count;
        if count > threshold {
            self.storm.calm_since = None;
            if !self.storm.on && !self.initializing() {
                self.storm.on = true;
                self.emit(Event::StormEntered { count, threshold });
            }
        } else if self.storm.on {
            let since = *self.storm.calm_since.get_or_insert(self.now);
            if self.now.saturating_since(since) >= self.cfg.fencing.storm_cooldown {
                self.storm.on = false;
                self.storm.calm_since = None;
                self.emit(Event::StormLeft);
            }
        }
    }

    fn eligibility_facts(&self) -> EligibilityFacts {
        EligibilityFacts {
            initializing: self.initializing(),
            recovering: self.recovering(),
            verdict: self.verdict,
            visible: self.visible(),
            quorum: self.cfg.quorum(),
            armed: self.durable.armed.armed,
            mode: self.cfg.mode,
            storm: self.storm.on,
        }
    }

    fn refresh_eligibility(&mut self) {
        let now = rules::eligibility(&self.eligibility_facts()).err();
        if now != self.ineligible {
            self.ineligible = now;
            self.emit(Event::EligibilityChanged { ineligible: now });
        }
    }

    fn refresh_targets(&mut self) {
        let armed = self.durable.armed.armed;
        let initializing = self.initializing();
        for m in self.cfg.roster.ids().collect::<Vec<_>>() {
            if m == self.me {
                continue;
            }
            let facts = self.target_facts(m);
            let storage_alive = facts.storage == Liveness::Alive;
            let class = rules::classify(&facts);
            let fencing = self.executions.contains_key(&m)
                || self.interrupted.iter().any(|i| i.proposal.target == m)
                || self.peers[m.index()]
                    .inflight
                    .as_ref()
                    .is_some_and(|f| Some(f.proposal.target_boot) == self.peers[m.index()].boot);
            let p = &mut self.peers[m.index()];
            match class {
                TargetClass::Checking | TargetClass::Fenceable | TargetClass::NoBoot => {
                    if let Some(b) = p.boot {
                        p.considered_dead = Some(b);
                    }
                }
                TargetClass::Partitioned | TargetClass::Unmanageable => p.considered_dead = None,
                // Back in SWIM *and* its heartbeat moving: that boot lives.
                TargetClass::Available | TargetClass::Suspect if storage_alive => {
                    p.considered_dead = None
                }
                _ => {}
            }
            if class == TargetClass::Fenceable {
                p.fenceable_since.get_or_insert(self.now);
            } else {
                p.fenceable_since = None;
                if !matches!(
                    class,
                    TargetClass::Checking | TargetClass::NoBoot | TargetClass::Left
                ) {
                    p.manual = false;
                }
            }
            let ha = rules::ha_state(&HaFacts {
                class,
                armed,
                initializing,
                fencing,
                failed: p.failed,
                retry_pending: p.next_retry_at.is_some_and(|t| t > self.now),
                device_down: p.devices.contains(&Some(false)),
            });
            if ha != p.ha {
                let from = p.ha;
                p.ha = ha;
                self.emit(Event::HaChanged {
                    member: m,
                    from,
                    to: ha,
                });
            }
        }
    }
}

/// Rendezvous ranking of the members that may propose a fence of `target`: highest hash first.
/// Every member computes the same order from the same configuration, so they agree on who goes
/// first without talking.
fn rank_members(config: &Config, target: MemberId) -> Vec<MemberId> {
    let mut ranked: Vec<(u64, MemberId)> = config
        .roster
        .ids()
        .filter(|&m| m != target)
        .map(|m| {
            let mut h = Sha256::new();
            h.update(config.digest().0.to_le_bytes());
            h.update(target.0.to_le_bytes());
            h.update(m.0.to_le_bytes());
            let out = h.finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&out[..8]);
            (u64::from_le_bytes(first), m)
        })
        .collect();
    ranked.sort_by(|a, b| b.cmp(a));
    ranked.into_iter().map(|(_, m)| m).collect()
}
