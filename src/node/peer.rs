//! What a node keeps about each peer, and the facts the rules read from it.

use super::Node;
use super::io::PowerState;
use crate::heartbeat::{Liveness, PeerHeartbeat};
use crate::membership::SwimState;
use crate::rules::{HaState, TargetClass, TargetFacts};
use crate::time::Instant;
use peerfence_proto::{AgentHealth, BootId, HealthUpdate, MemberId, Proposal, Verdict};
use std::time::Duration;

/// Health updates older than this no longer count (three refresh periods).
pub(super) const HEALTH_FRESH: Duration = Duration::from_secs(15);

/// A fence or VM-stopping self-fence run by another member, learnt from its certificate.
#[derive(Debug, Clone)]
pub(super) struct Inflight {
    /// What runs.
    pub proposal: Proposal,
    /// When this node saw the certificate.
    pub seen_at: Instant,
    /// When to stop considering it in flight if no outcome arrives.
    pub until: Instant,
}

/// This node's knowledge of one member.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    pub swim: SwimState,
    pub swim_since: Instant,
    /// Highest daemon generation the member itself vouched for: its signed health or its own
    /// heartbeat slot. What `has_left` compares with, so a forged SWIM identity cannot end a
    /// clean stop.
    pub generation: u32,
    /// Highest generation of its SWIM identity (signed by nobody): only for noticing a restart
    /// to send it the news.
    pub swim_generation: u32,
    pub hb: PeerHeartbeat,
    pub health: Option<HealthUpdate>,
    pub health_at: Option<Instant>,
    /// Current boot: the one reported under the highest daemon generation.
    pub boot: Option<BootId>,
    /// Generation under which `boot` was last reported.
    pub boot_generation: u32,
    pub ha: HaState,
    pub fenceable_since: Option<Instant>,
    /// Failed attempts on `boot`.
    pub attempts: u16,
    pub next_retry_at: Option<Instant>,
    pub failed: bool,
    pub inflight: Option<Inflight>,
    /// An operator asked for a fence now.
    pub manual: bool,
    pub power: PowerState,
    /// Last `monitor` result of each fence level's device for this host (`None`: not known).
    pub devices: Vec<Option<bool>>,
    /// Boot already reported as "would fence" (observe mode), to report once.
    pub reported_would: Option<BootId>,
    /// Budget exhaustion reported for this boot.
    pub reported_budget: Option<BootId>,
    /// Boot already announced safe to recover.
    pub safe_reported: Option<BootId>,
    /// This node judged the member dead (Checking, Fencing, FenceFailed, Failed) in this boot
    /// and has not seen that boot alive since: a new boot then proves its VMs gone.
    pub considered_dead: Option<BootId>,
    /// Earliest time this node may propose on this target again (after an abandoned round).
    pub next_round_at: Instant,
}

impl Peer {
    pub fn new(hb: PeerHeartbeat, now: Instant) -> Self {
        Self {
            swim: SwimState::Unknown,
            swim_since: now,
            generation: 0,
            swim_generation: 0,
            hb,
            health: None,
            health_at: None,
            boot: None,
            boot_generation: 0,
            ha: HaState::Initializing,
            fenceable_since: None,
            attempts: 0,
            next_retry_at: None,
            failed: false,
            inflight: None,
            manual: false,
            power: PowerState::Unknown,
            devices: Vec::new(),
            reported_would: None,
            reported_budget: None,
            safe_reported: None,
            considered_dead: None,
            next_round_at: Instant::ZERO,
        }
    }

    /// The latest health update if still fresh.
    pub fn fresh_health(&self, now: Instant) -> Option<&HealthUpdate> {
        match (&self.health, self.health_at) {
            (Some(h), Some(at)) if now.saturating_since(at) <= HEALTH_FRESH => Some(h),
            _ => None,
        }
    }

    /// Forgets per-boot fencing state when the member shows a new boot.
    pub fn new_boot(&mut self, boot: BootId) {
        self.boot = Some(boot);
        self.attempts = 0;
        self.failed = false;
        self.next_retry_at = None;
        self.manual = false;
    }
}

impl Node {
    /// SWIM state for the rules: a member never heard of once the quiet period is over counts as
    /// Down (a host that was dead before this node started must still be fenceable).
    pub(super) fn effective_swim(&self, m: MemberId) -> SwimState {
        let p = &self.peers[m.index()];
        if p.swim == SwimState::Unknown && !self.initializing() {
            SwimState::Down
        } else {
            p.swim
        }
    }

    /// How long `m` has been Down in this node's view.
    pub(super) fn down_for(&self, m: MemberId) -> Duration {
        let p = &self.peers[m.index()];
        match self.effective_swim(m) {
            SwimState::Down if p.swim == SwimState::Unknown => self
                .now
                .saturating_since(self.started_at + self.cfg.fencing.startup_quiet_period),
            SwimState::Down => self.now.saturating_since(p.swim_since),
            _ => Duration::ZERO,
        }
    }

    /// The facts about `m` the rules read.
    pub(super) fn target_facts(&self, m: MemberId) -> TargetFacts {
        let p = &self.peers[m.index()];
        let agent_dead = p
            .fresh_health(self.now)
            .is_some_and(|h| h.agent == AgentHealth::Dead);
        let heartbeat_after_down =
            p.hb.last_change()
                .is_some_and(|c| c > p.swim_since && p.swim == SwimState::Down);
        TargetFacts {
            heartbeat_after_down,
            swim: self.effective_swim(m),
            storage: p.hb.liveness(&self.cfg, self.now),
            agent_dead,
            maintenance: self.durable.in_maintenance(m),
            left: self.has_left(m),
            boot: p.boot,
            fenced_boot: self.durable.fenced_boot(m),
        }
    }

    /// The class of `m` for a proposal of `kind`: an operator's explicit fence overrides a clean
    /// stop (and nothing else).
    pub(super) fn fence_class(&self, m: MemberId, kind: peerfence_proto::FenceKind) -> TargetClass {
        let mut facts = self.target_facts(m);
        if kind == peerfence_proto::FenceKind::Operator {
            facts.left = false;
        }
        crate::rules::classify(&facts)
    }

    /// Whether `m` counts toward the storm threshold (rule E4): Down or Suspect in SWIM, its
    /// storage heartbeat late, or reporting itself Unhealthy.
    ///
    /// Simultaneous failures are detected a second or two apart, and a common-mode failure must
    /// look like one when its first victim becomes fenceable. "Late" is the earliest signal: no
    /// heartbeat change for longer than one interval plus one write timeout (longer than any
    /// healthy or merely slow writer takes), with fresh reads. A target is fenceable only after a
    /// full `activity_timeout` of silence, so every host that died within a couple of seconds of
    /// it is already late by then. Fenced hosts count too: they are down, and a second failure
    /// while the first is unresolved is exactly when blast-radius limits matter.
    pub(super) fn counts_as_unhealthy(&self, m: MemberId) -> bool {
        if m == self.me {
            return self.verdict != Verdict::Healthy;
        }
        let p = &self.peers[m.index()];
        if self.durable.in_maintenance(m) || self.has_left(m) {
            return false;
        }
        let late_after = self.cfg.storage.heartbeat_interval + self.cfg.storage.write_timeout;
        matches!(self.effective_swim(m), SwimState::Down | SwimState::Suspect)
            || p.hb.late(&self.cfg, self.now, late_after)
            || p.fresh_health(self.now)
                .is_some_and(|h| h.verdict == Verdict::Unhealthy && h.generation >= p.generation)
    }

    /// Whether `m`'s daemon stopped cleanly and has not returned with a higher generation.
    pub(super) fn has_left(&self, m: MemberId) -> bool {
        self.durable
            .left_generation(m)
            .is_some_and(|g| g >= self.peers[m.index()].generation)
    }

    /// Storage liveness of `m` now.
    pub(super) fn liveness(&self, m: MemberId) -> Liveness {
        self.peers[m.index()].hb.liveness(&self.cfg, self.now)
    }
}
