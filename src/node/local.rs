//! This host's duties towards itself: self-fencing through the quorum, poison pills, the
//! watchdog feed rule, and the contact probes that rule depends on.
//!
//! Watchdog rule: feed while a heartbeat write succeeded within
//! [`crate::config::Config::storage_failed_detect`], or while a quorum vouches for this host
//! (contact probes answered with `vouch = true`, counted from the *send* time of the answered
//! probe, within `contact_timeout`). A peer that promised, runs or recorded a fence against this
//! boot never vouches. Stop at once, for the rest of the boot, on a poison pill naming this boot
//! or a VM-stopping self-fence. docs/SAFETY.md derives the confirmation deadline from this rule.

use super::{
    Event, LocalAction, Node, Output, SelfFenceBlock, SelfFenceCommand, SelfFenceReason,
    WatchdogAction, WatchdogStopReason,
};
use crate::config::{AfterOff, Config, Mode, SelfFenceSetting};
use crate::durable::FenceRecord;
use crate::heartbeat::Liveness;
use crate::membership::SwimState;
use crate::time::{Instant, stretch};
use peerfence_proto::{
    BootId, Contact, ContactAck, Evidence, FenceKind, MemberId, Message, QuorumCertificate,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Contact probe rounds remembered (older answers no longer matter).
const CONTACT_ROUNDS_MAX: usize = 32;

#[derive(Debug, Clone, Default)]
pub(super) struct SelfFenceState {
    /// Reported this incident already.
    requested: bool,
    blocked: bool,
    log_only: bool,
    next_try: Instant,
    /// A VM-stopping self-fence was executed in this boot.
    done: bool,
    /// A poison pill was acted on in this boot.
    pill_acted: bool,
    stale_pill_reported: bool,
    forged_pill_reported: bool,
    /// A local request waived the grace period for this incident.
    grace_waived: bool,
    /// When the current self-fence round was proposed.
    proposed_at: Instant,
}

#[derive(Debug, Clone, Default)]
pub(super) struct WatchdogState {
    pub feeding: bool,
    next_feed: Instant,
}

#[derive(Debug, Clone)]
pub(super) struct ContactState {
    nonce: u64,
    rounds: VecDeque<(u64, Instant)>,
    /// Per member: send time of the latest probe it answered with a vouch.
    vouched: Vec<Option<Instant>>,
    /// Per member: when it last answered a probe sent to it directly (a candidate relay).
    direct: Vec<Option<Instant>>,
    next_probe: Instant,
}

impl ContactState {
    pub fn new(n: usize) -> Self {
        Self {
            nonce: 0,
            rounds: VecDeque::new(),
            vouched: vec![None; n],
            direct: vec![None; n],
            next_probe: Instant::ZERO,
        }
    }
}

impl Node {
    /// How long after seeing a VM-stopping self-fence certificate its host is certainly reset:
    /// it stopped feeding before sending the certificate, so one watchdog timeout (plus a feed
    /// interval, drift and margin).
    pub(super) fn self_fence_confirm_wait(&self) -> Duration {
        stretch(
            self.cfg.watchdog.feed_interval + self.cfg.watchdog.timeout,
            2 * self.cfg.fencing.clock_drift_ppm,
        ) + self.cfg.fencing.confirm_margin
    }

    /// Requests a self-fence when every storage path has been Failed for the grace period.
    pub(super) fn self_fence_step(&mut self) {
        let cfg = self.cfg.clone();
        let Some(since) = self.local.all_failed_since(&cfg, self.now) else {
            let s = &mut self.self_fence;
            s.requested = false;
            s.blocked = false;
            s.log_only = false;
            s.grace_waived = false;
            return;
        };
        let waited = self.now.saturating_since(since) >= cfg.self_fence.grace;
        if !(waited || self.self_fence.grace_waived) || self.self_fence.done {
            return;
        }
        if self.durable.in_maintenance(self.me) {
            self.block_self_fence(SelfFenceBlock::Maintenance);
            return;
        }
        match cfg.self_fence.action {
            SelfFenceSetting::None => {}
            SelfFenceSetting::LogOnly => {
                if !self.self_fence.log_only {
                    self.self_fence.log_only = true;
                    self.emit(Event::SelfFenceLogOnly);
                }
            }
            SelfFenceSetting::Act(action) => {
                if !self.durable.armed.armed || cfg.mode == Mode::Observe {
                    self.block_self_fence(SelfFenceBlock::NotArmed);
                    return;
                }
                if self.rounds.contains_key(&self.me) || self.now < self.self_fence.next_try {
                    return;
                }
                if !self.self_fence.requested {
                    self.self_fence.requested = true;
                    self.emit(Event::SelfFenceRequested { action });
                }
                if self.propose(self.me, self.boot, FenceKind::SelfFence(action)) {
                    self.self_fence.proposed_at = self.now;
                } else {
                    self.self_fence.next_try = self.now + cfg.self_fence.retry_interval;
                }
            }
        }
    }

    /// A local request to self-fence (see [`super::OperatorCommand::SelfFenceRequest`]). It can
    /// only shorten the wait: the storage must be Failed in this node's own view and a quorum
    /// of healthy peers must still agree.
    pub(super) fn self_fence_request(&mut self) -> super::SelfFenceAnswer {
        use super::SelfFenceAnswer as A;
        let cfg = self.cfg.clone();
        if !matches!(cfg.self_fence.action, SelfFenceSetting::Act(_)) {
            return A::NoAction;
        }
        if self.durable.in_maintenance(self.me) {
            return A::Blocked(SelfFenceBlock::Maintenance);
        }
        if !self.durable.armed.armed || cfg.mode == Mode::Observe {
            return A::Blocked(SelfFenceBlock::NotArmed);
        }
        if self.local.all_failed_since(&cfg, self.now).is_none() {
            return A::StorageHealthy;
        }
        self.self_fence.grace_waived = true;
        self.self_fence.next_try = self.now;
        self.self_fence_step();
        A::AskingQuorum
    }

    fn block_self_fence(&mut self, reason: SelfFenceBlock) {
        if !self.self_fence.blocked {
            self.self_fence.blocked = true;
            self.emit(Event::SelfFenceBlocked { reason });
        }
    }

    /// No quorum agreed this time: alarm (once per incident) and ask again later.
    pub(super) fn self_fence_round_failed(&mut self) {
        self.block_self_fence(SelfFenceBlock::NoQuorum);
        self.self_fence.next_try = self.now + self.cfg.self_fence.retry_interval;
    }

    /// A quorum of healthy peers agreed that this host's fault is local: act.
    pub(super) fn self_fence_agreed(&mut self, qc: Arc<QuorumCertificate>) {
        assert!(
            self.keys.verify_certificate(&qc).is_ok(),
            "a self-fence must never act without a valid quorum certificate"
        );
        let FenceKind::SelfFence(action) = qc.proposal.kind else {
            return;
        };
        // The round took up to a proposal timeout: look again before acting. Storage back, a
        // disarm, or maintenance since the request all cancel it.
        // Failed without a break since the round was proposed: one successful write since then
        // (even one not yet read back) is storage coming back.
        let proposed_at = self.self_fence.proposed_at;
        let still_failed = self
            .local
            .all_failed_since(&self.cfg, self.now)
            .is_some_and(|since| since < proposed_at);
        let allowed = self.durable.armed.armed
            && self.cfg.mode == Mode::Enforce
            && !self.durable.in_maintenance(self.me);
        if !still_failed || !allowed {
            let proposal = qc.proposal;
            self.send_all(
                Message::Release(peerfence_proto::Release { proposal }),
                true,
            );
            self.release_local(&proposal);
            self.emit(Event::RoundAbandoned {
                proposal,
                refusal: None,
            });
            return;
        }
        let stops = action.stops_vms();
        self.durable.log_fence(FenceRecord {
            qc: (*qc).clone(),
            attempt: 1,
            started_at: self.now,
            deadline: self.now,
            outcome: None,
            pill_written: false,
        });
        self.durable.close_round(&qc.proposal);
        if stops {
            self.durable.watchdog_stopped_for = Some(self.boot);
            self.durable.record_news(&qc, self.now);
            // Its own budget view counts it, as its peers' do (they reserve the slot when they
            // see the certificate).
            if let Some(s) = qc.proposal.budget_slot {
                self.durable
                    .reserve_slot(s, self.me, self.boot, self.now, true);
            }
        }
        self.dirty = true;
        self.persist();
        self.send_all(Message::Certificate((*qc).clone()), true);
        if stops {
            self.stop_watchdog(WatchdogStopReason::FenceOrdered);
            self.self_fence.done = true;
        }
        let local: LocalAction = action.into();
        self.out.push_back(Output::SelfFence(SelfFenceCommand {
            action: local,
            reason: SelfFenceReason::QuorumAgreed,
            qc,
        }));
        self.emit(Event::SelfFenceExecuted {
            action: local,
            reason: SelfFenceReason::QuorumAgreed,
        });
        self.self_fence.next_try = self.now
            + self
                .cfg
                .self_fence
                .grace
                .max(self.cfg.self_fence.retry_interval);
    }

    /// This host's own pill slot was read.
    pub(super) fn on_pill_read(&mut self, pill: Option<QuorumCertificate>) {
        let Some(qc) = pill else {
            return;
        };
        if qc.proposal.target != self.me || qc.proposal.kind != FenceKind::Fence {
            self.stats.drop("pill_not_for_me");
            return;
        }
        if self.keys.verify_certificate(&qc).is_err() {
            self.stats.drop("bad_pill");
            if !self.self_fence.forged_pill_reported {
                self.self_fence.forged_pill_reported = true;
                self.emit(Event::ForgedCertificate { from: None });
            }
            return;
        }
        if qc.proposal.target_boot != self.boot {
            // From an earlier boot: that instance is gone already.
            if !self.self_fence.stale_pill_reported {
                self.self_fence.stale_pill_reported = true;
                self.emit(Event::StalePoisonPill);
            }
            self.clear_pill(self.me, qc.proposal);
            return;
        }
        if self.self_fence.pill_acted {
            return;
        }
        self.self_fence.pill_acted = true;
        self.durable.watchdog_stopped_for = Some(self.boot);
        self.dirty = true;
        self.persist();
        self.stop_watchdog(WatchdogStopReason::FenceOrdered);
        let action = match self.cfg.fencing.after_off {
            AfterOff::Off => LocalAction::PowerOff,
            AfterOff::Reboot => LocalAction::Reboot,
        };
        self.out.push_back(Output::SelfFence(SelfFenceCommand {
            action,
            reason: SelfFenceReason::PoisonPill,
            qc: Arc::new(qc),
        }));
        self.emit(Event::SelfFenceExecuted {
            action,
            reason: SelfFenceReason::PoisonPill,
        });
    }

    fn stop_watchdog(&mut self, reason: WatchdogStopReason) {
        if !self.cfg.watchdog.enabled {
            return;
        }
        if self.watchdog.feeding || reason == WatchdogStopReason::FenceOrdered {
            self.watchdog.feeding = false;
            self.out.push_back(Output::Watchdog(WatchdogAction::Stop));
            self.emit(Event::WatchdogStopped { reason });
        }
    }

    /// The watchdog rule, and the contact probes it needs.
    pub(super) fn watchdog_step(&mut self) {
        let cfg = self.cfg.clone();
        if !self.local.storage_all_ok(&cfg, self.now) && self.now >= self.contact.next_probe {
            self.contact_round(&cfg);
        }
        if !cfg.watchdog.enabled || self.durable.watchdog_stopped_for == Some(self.boot) {
            return;
        }
        let storage_ok = self
            .local
            .wrote_within(&cfg, self.now, cfg.storage_failed_detect());
        let vouching = self
            .contact
            .vouched
            .iter()
            .enumerate()
            .filter(|(i, v)| {
                *i != self.me.index()
                    && v.is_some_and(|t| {
                        self.now.saturating_since(t) <= cfg.watchdog.contact_timeout
                    })
            })
            .count();
        let quorate = 1 + vouching >= cfg.quorum();
        if storage_ok || quorate {
            if !self.watchdog.feeding {
                let was_stopped = self.watchdog.next_feed != Instant::ZERO;
                self.watchdog.feeding = true;
                if was_stopped {
                    self.emit(Event::WatchdogResumed);
                }
            }
            if self.now >= self.watchdog.next_feed {
                self.watchdog.next_feed = self.now + cfg.watchdog.feed_interval;
                self.out.push_back(Output::Watchdog(WatchdogAction::Feed));
            }
        } else if self.watchdog.feeding {
            // The device is armed by the first keepalive, so before that there is nothing to
            // stop; after it, this is the only place feeding stops for lack of evidence.
            self.stop_watchdog(WatchdogStopReason::NoStorageNoQuorum);
        }
    }

    /// Whether this node has agreed to, runs, or recorded a fence against `m` in `boot`.
    fn against(&self, m: MemberId, boot: BootId) -> bool {
        self.durable
            .promise_for(m)
            .is_some_and(|p| p.proposal.target_boot == boot && p.proposal.kind.stops_vms())
            || self
                .executions
                .get(&m)
                .is_some_and(|e| e.qc.proposal.target_boot == boot)
            || self.peers[m.index()]
                .inflight
                .as_ref()
                .is_some_and(|f| f.proposal.target_boot == boot)
            || self.durable.fenced_boot(m) == Some(boot)
    }

    /// Probes every peer directly and, for peers that have not vouched lately, through relays
    /// that answered us directly (one hop, as SWIM's indirect probes). Relaying changes only
    /// the path, never who vouches: the watchdog argument of docs/SAFETY.md is unchanged.
    fn contact_round(&mut self, cfg: &Config) {
        self.contact.nonce += 1;
        let nonce = self.contact.nonce;
        self.contact.rounds.push_back((nonce, self.now));
        while self.contact.rounds.len() > CONTACT_ROUNDS_MAX {
            self.contact.rounds.pop_front();
        }
        self.contact.next_probe = self.now + cfg.watchdog.contact_interval;
        let fresh = |t: &Option<Instant>, within: Duration, now: Instant| {
            t.is_some_and(|t| now.saturating_since(t) <= within)
        };
        let relays: Vec<MemberId> = cfg
            .roster
            .ids()
            .filter(|&r| {
                r != self.me
                    && fresh(
                        &self.contact.direct[r.index()],
                        cfg.watchdog.contact_timeout,
                        self.now,
                    )
            })
            .collect();
        for p in cfg
            .roster
            .ids()
            .filter(|&p| p != self.me)
            .collect::<Vec<_>>()
        {
            let probe = Contact {
                origin: self.me,
                target: p,
                boot: self.boot,
                nonce,
            };
            // Reliable: a lost probe or answer must not cost a vouch (QUIC retransmits). A late
            // answer is still sound, because a vouch counts from the probe's send time.
            self.send(p, Message::Contact(probe), true);
            if fresh(
                &self.contact.vouched[p.index()],
                cfg.watchdog.contact_interval * 2,
                self.now,
            ) {
                continue;
            }
            // Through every peer that answered us directly: the argument of docs/SAFETY.md (I3)
            // is that any one working relay suffices, and in a topology where only one peer
            // bridges two groups, a random pick of a few misses it round after round. At most
            // n - 2 relays per silent peer, and only while storage is not healthy.
            for &r in relays.iter().filter(|&&r| r != p) {
                self.send(r, Message::Contact(probe), true);
            }
        }
    }

    pub(super) fn on_contact(&mut self, from: MemberId, c: Contact) {
        if !self.cfg.roster.contains(c.origin) || !self.cfg.roster.contains(c.target) {
            self.stats.drop("bad_contact");
            return;
        }
        if c.target == self.me && c.origin != self.me {
            // Asked directly (origin is the sender) or through the relay `from`: answer the way
            // the probe came.
            // A member that lost its state cannot know whether it had turned against this boot,
            // until every attempt under a promise it may have granted is over (a promise
            // lifetime covers the round and the whole attempt, pill deadline included).
            let forgot = self.durable.votes_from.is_some_and(|t| self.now < t);
            let vouch = !self.against(c.origin, c.boot) && !forgot;
            let ack = ContactAck {
                origin: c.origin,
                voucher: self.me,
                nonce: c.nonce,
                vouch,
            };
            self.send(from, Message::ContactAck(ack), true);
        } else if c.origin == from && c.target != from && c.target != self.me {
            // Relay, once: only probes their sender originated are forwarded.
            self.send(c.target, Message::Contact(c), true);
        } else {
            self.stats.drop("bad_contact");
        }
    }

    pub(super) fn on_contact_ack(&mut self, from: MemberId, a: ContactAck) {
        if !self.cfg.roster.contains(a.origin) || !self.cfg.roster.contains(a.voucher) {
            self.stats.drop("bad_contact");
            return;
        }
        if a.origin != self.me {
            if from == a.voucher && a.voucher != self.me {
                // The answer to a probe this node relayed: pass it back to its origin.
                self.send(a.origin, Message::ContactAck(a), true);
            } else {
                self.stats.drop("bad_contact");
            }
            return;
        }
        if a.voucher == self.me {
            self.stats.drop("bad_contact");
            return;
        }
        let Some(&(_, sent)) = self.contact.rounds.iter().find(|(n, _)| *n == a.nonce) else {
            self.stats.drop("stale_contact_ack");
            return;
        };
        if from == a.voucher {
            self.contact.direct[from.index()] = Some(self.now);
        }
        let slot = &mut self.contact.vouched[a.voucher.index()];
        if a.vouch {
            *slot = Some(slot.map_or(sent, |t| t.max(sent)));
        } else {
            // A peer that turned against this boot withdraws every earlier vouch at once.
            *slot = None;
        }
    }

    /// Confirms self-fences of others by deadline, expires stale in-flight records, and ends
    /// attempts interrupted by a restart.
    pub(super) fn pill_and_inflight_step(&mut self) {
        self.progress_interrupted();
        let wait = self.self_fence_confirm_wait();
        for m in self.cfg.roster.ids().collect::<Vec<_>>() {
            let Some(f) = self.peers[m.index()].inflight.clone() else {
                continue;
            };
            let boot = f.proposal.target_boot;
            if matches!(f.proposal.kind, FenceKind::SelfFence(_))
                && self.cfg.watchdog.enabled
                && self.now >= f.seen_at + wait
                && self.effective_swim(m) == SwimState::Down
                && matches!(self.liveness(m), Liveness::Stalled { .. })
            {
                self.peers[m.index()].inflight = None;
                self.confirmed(m, boot, Evidence::SelfFenceDeadline);
                continue;
            }
            if self.now >= f.until {
                self.peers[m.index()].inflight = None;
            }
        }
    }
}
