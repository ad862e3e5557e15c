//! Agreement: who proposes a fence, how a voter decides, how votes become a certificate.
//!
//! * One proposer per target: members rank by rendezvous hash; the n-th ranked member that sees
//!   the target fenceable waits n × `proposer_backoff` (counting only members above it that it
//!   does not see Down) before proposing in the first one's place.
//! * A voter grants at most one live promise per target, and per lane; it stores the promise (and
//!   the budget slot it reserves) durably before the vote leaves: the Persist output precedes the
//!   Send.
//! * q signed votes on the same proposal make a [`QuorumCertificate`]; only a certificate starts a
//!   fence or a self-fence.

use super::peer::Inflight;
use super::{Event, Node};
use crate::durable::Promise;
use crate::rules::{self, Ineligible};
use crate::time::{Instant, millis_u32};
use peerfence_proto::{
    BootId, CertifiedOutcome, FenceKind, FenceOutcome, MemberId, Message, OutcomeResult, Proposal,
    QuorumCertificate, Refusal, RefuseReason, Round, SignedOutcome, SignedVote, Vote, VoteEvidence,
};
use rand::RngExt;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A round this node runs as proposer.
#[derive(Debug, Clone)]
pub(super) struct ProposerRound {
    pub proposal: Proposal,
    pub started_at: Instant,
    pub last_sent: Instant,
    pub votes: BTreeMap<MemberId, SignedVote>,
    pub refusals: BTreeMap<MemberId, RefuseReason>,
}

/// Refusals that will not change by asking again within this round.
fn is_final(reason: RefuseReason) -> bool {
    matches!(
        reason,
        RefuseReason::PromisedElsewhere { .. }
            | RefuseReason::BudgetSpent
            | RefuseReason::SlotTaken { .. }
            | RefuseReason::LaneBusy { .. }
            | RefuseReason::Invalid
            | RefuseReason::Disarmed
            | RefuseReason::TargetAlreadyFenced
            | RefuseReason::TargetInMaintenance
            | RefuseReason::TargetBootMismatch
            | RefuseReason::TargetLeft
            | RefuseReason::FenceInFlight
            | RefuseReason::Recovering
    )
}

impl Node {
    /// This node's rank for proposing on `target`: members ranked above it that it does not see
    /// Down. Zero means "go first".
    ///
    /// The order turns by one after every failed attempt on the target's boot (every member
    /// counts them from the outcomes): a proposer that cannot reach the target's BMC (a broken
    /// out-of-band link) does not fail every retry; the next one tries.
    pub(super) fn my_rank(&self, target: MemberId) -> u32 {
        let ranking = &self.ranking[target.index()];
        let turn = usize::from(self.peers[target.index()].attempts) % ranking.len().max(1);
        let mut rank = 0;
        for &m in ranking[turn..].iter().chain(&ranking[..turn]) {
            if m == self.me {
                break;
            }
            if self.effective_swim(m) != crate::membership::SwimState::Down {
                rank += 1;
            }
        }
        rank
    }

    /// Whether a fence of `t` in `boot` runs here, ran here before a restart and may still, or
    /// was learnt from its certificate and has not ended.
    pub(super) fn fence_in_flight(&self, t: MemberId, boot: peerfence_proto::BootId) -> bool {
        self.executions
            .get(&t)
            .is_some_and(|e| e.qc.proposal.target_boot == boot)
            || self
                .interrupted
                .iter()
                .any(|i| i.proposal.target == t && i.proposal.target_boot == boot)
            || self.peers[t.index()]
                .inflight
                .as_ref()
                .is_some_and(|f| f.proposal.target_boot == boot)
    }

    /// Starts rounds for fenceable targets whose turn has come.
    pub(super) fn consider_proposals(&mut self) {
        let ineligible = rules::eligibility(&self.eligibility_facts()).err();
        for t in self.cfg.roster.ids().collect::<Vec<_>>() {
            if t == self.me {
                continue;
            }
            let p = &self.peers[t.index()];
            // A host that left cleanly is fenced only on an operator's explicit request, as an
            // operator fence (voters accept it although it left; only power Off confirms it).
            let operator = p.manual
                && self.has_left(t)
                && self.fence_class(t, FenceKind::Operator) == rules::TargetClass::Fenceable;
            let p = &self.peers[t.index()];
            let since = if operator {
                Some(self.now)
            } else {
                p.fenceable_since
            };
            let (Some(since), Some(boot)) = (since, p.boot) else {
                continue;
            };
            let kind = if operator {
                FenceKind::Operator
            } else {
                FenceKind::Fence
            };
            if self.rounds.contains_key(&t)
                || self.executions.contains_key(&t)
                || self.fence_in_flight(t, boot)
                || self.durable.promise_for(t).is_some()
                || p.next_round_at > self.now
            {
                continue;
            }
            if !p.manual && (p.failed || p.next_retry_at.is_some_and(|r| r > self.now)) {
                continue;
            }
            let wait = if p.manual {
                std::time::Duration::ZERO
            } else {
                self.cfg.fencing.proposer_backoff * self.my_rank(t)
            };
            // After a failed attempt, the back-off by rank counts from the retry time: the
            // order turned, and the new first member goes first.
            let since = since.max(p.next_retry_at.unwrap_or(Instant::ZERO));
            if self.now.saturating_since(since) < wait {
                continue;
            }
            match ineligible {
                Some(Ineligible::Observe) => {
                    if p.reported_would != Some(boot) {
                        self.peers[t.index()].reported_would = Some(boot);
                        self.emit(Event::WouldFence { target: t, boot });
                    }
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
            self.propose(t, boot, kind);
        }
    }

    fn pick_slot(&self, target: MemberId, boot: BootId) -> Option<u8> {
        let budget = self.cfg.fencing.budget.get();
        // A retry reuses the slot already reserved for this target boot: it is not a new fence.
        (0..budget)
            .find(|&s| {
                self.durable
                    .slot(s)
                    .is_some_and(|r| r.target == target && r.target_boot == boot)
            })
            .or_else(|| {
                (0..budget).find(|&s| {
                    self.durable.slot_usable(s, target, boot)
                        && self.slot_hints[usize::from(s)] <= self.now
                })
            })
    }

    fn pick_lane(&self, target: MemberId) -> Option<u8> {
        (0..self.cfg.fencing.max_concurrent.get()).find(|&l| {
            self.durable.lane_holder(l, target).is_none()
                && self.lane_hints[usize::from(l)] <= self.now
        })
    }

    /// Opens a round on `target`. Returns whether one started.
    pub(super) fn propose(&mut self, target: MemberId, boot: BootId, kind: FenceKind) -> bool {
        let slot = if kind.stops_vms() {
            match self.pick_slot(target, boot) {
                Some(s) => Some(s),
                None => {
                    if self.peers[target.index()].reported_budget != Some(boot) {
                        self.peers[target.index()].reported_budget = Some(boot);
                        self.emit(Event::BudgetExhausted { target });
                    }
                    return false;
                }
            }
        } else {
            None
        };
        let Some(lane) = self.pick_lane(target) else {
            return false;
        };
        self.durable.round_counter = self.durable.round_counter.wrapping_add(1);
        self.dirty = true;
        let proposal = Proposal {
            target,
            target_boot: boot,
            proposer: self.me,
            round: Round::new(self.swim.identity().generation, self.durable.round_counter),
            kind,
            budget_slot: slot,
            lane,
        };
        let mut votes = BTreeMap::new();
        if kind.is_fence() {
            // The proposer is a voter like any other: same checks, same durable promise.
            match self.decide_vote(&proposal) {
                Ok(evidence) => {
                    let vote = self.grant(&proposal, evidence);
                    votes.insert(self.me, vote);
                }
                Err(_) => {
                    self.peers[target.index()].next_round_at =
                        self.now + self.cfg.fencing.proposer_backoff;
                    return false;
                }
            }
        }
        self.durable.open_round(proposal);
        self.persist();
        self.send_all(Message::Propose(proposal), true);
        self.rounds.insert(
            target,
            ProposerRound {
                proposal,
                started_at: self.now,
                last_sent: self.now,
                votes,
                refusals: BTreeMap::new(),
            },
        );
        self.peers[target.index()].manual = false;
        self.emit(Event::Proposed { proposal });
        true
    }

    /// The voting rules, in this node's own view. `Ok` carries the evidence to sign.
    pub(super) fn decide_vote(&self, proposal: &Proposal) -> Result<VoteEvidence, RefuseReason> {
        if let Err(why) = rules::eligibility(&self.eligibility_facts()) {
            return Err(why.refuse_reason());
        }
        let t = proposal.target;
        if t == self.me {
            // Nobody votes on its own fence (and a live member is plainly not dead).
            return Err(RefuseReason::Invalid);
        }
        let facts = self.target_facts(t);
        match proposal.kind {
            FenceKind::Fence | FenceKind::Operator => {
                if let Some(r) = rules::refusal_for(self.fence_class(t, proposal.kind)) {
                    return Err(r);
                }
            }
            FenceKind::SelfFence(_) => {
                // The requester talks to us, so SWIM says nothing; what matters is that its
                // storage fault is local: our storage works (E1 held above) and its heartbeat
                // has stopped in our view.
                if facts.maintenance || facts.left {
                    return Err(RefuseReason::TargetInMaintenance);
                }
                if facts.boot.is_some() && facts.boot == facts.fenced_boot {
                    return Err(RefuseReason::TargetAlreadyFenced);
                }
                match facts.storage {
                    crate::heartbeat::Liveness::Alive => {
                        return Err(RefuseReason::TargetStorageAlive);
                    }
                    crate::heartbeat::Liveness::Unknown => {
                        return Err(RefuseReason::TargetStorageUnknown);
                    }
                    crate::heartbeat::Liveness::Stalled { .. } => {}
                }
            }
        }
        if facts.boot != Some(proposal.target_boot) {
            return Err(RefuseReason::TargetBootMismatch);
        }
        if proposal.kind.is_fence() && self.fence_in_flight(t, proposal.target_boot) {
            // One fence in flight per target: its voters' promises may have lapsed (a late
            // start, a stalled executor), this record has not.
            return Err(RefuseReason::FenceInFlight);
        }
        if let Some(s) = proposal.budget_slot {
            let budget = self.cfg.fencing.budget.get();
            if (0..budget).all(|x| !self.durable.slot_usable(x, t, proposal.target_boot)) {
                return Err(RefuseReason::BudgetSpent);
            }
            if !self.durable.slot_usable(s, t, proposal.target_boot) {
                return Err(RefuseReason::SlotTaken { slot: s });
            }
        }
        if self.durable.lane_holder(proposal.lane, t).is_some() {
            return Err(RefuseReason::LaneBusy {
                lane: proposal.lane,
            });
        }
        Ok(VoteEvidence {
            voter_healthy: true,
            target_down_ms: millis_u32(self.down_for(t)),
            heartbeat_stalled_ms: millis_u32(self.peers[t.index()].hb.stalled_for(self.now)),
        })
    }

    /// Grants a promise and signs the vote. The caller persists before sending it.
    fn grant(&mut self, proposal: &Proposal, evidence: VoteEvidence) -> SignedVote {
        let signature = self.vote_key.sign(
            &self.cfg.cluster,
            self.cfg.digest(),
            proposal,
            self.me,
            &evidence,
        );
        let vote = SignedVote {
            voter: self.me,
            evidence,
            signature,
        };
        self.durable.grant(Promise {
            proposal: *proposal,
            granted_at: self.now,
            expires_at: self.now + self.cfg.promise_ttl(),
            vote: vote.clone(),
        });
        if let Some(s) = proposal.budget_slot {
            self.durable
                .reserve_slot(s, proposal.target, proposal.target_boot, self.now, false);
        }
        self.dirty = true;
        self.stats.votes_granted += 1;
        self.emit(Event::Voted {
            proposal: *proposal,
            verdict: self.verdict,
        });
        vote
    }

    fn refuse(&mut self, proposal: Proposal, reason: RefuseReason) {
        self.stats.votes_refused += 1;
        self.send(
            proposal.proposer,
            Message::Refuse(Refusal {
                proposal,
                voter: self.me,
                reason,
            }),
            true,
        );
    }

    pub(super) fn on_propose(&mut self, from: MemberId, proposal: Proposal) {
        if proposal.proposer != from {
            self.stats.drop("forged_sender");
            return;
        }
        if self.keys.check_proposal(&proposal).is_err() {
            self.refuse(proposal, RefuseReason::Invalid);
            return;
        }
        if let Some(promise) = self.durable.promise_for(proposal.target) {
            if promise.proposal == proposal {
                // The proposer asks again (our vote was lost): the same signed vote, verbatim.
                let vote = promise.vote.clone();
                self.send(from, Message::Vote(Vote { proposal, vote }), true);
            } else {
                let reason = RefuseReason::PromisedElsewhere {
                    proposer: promise.proposal.proposer,
                    round: promise.proposal.round,
                };
                self.refuse(proposal, reason);
            }
            return;
        }
        match self.decide_vote(&proposal) {
            Ok(evidence) => {
                let vote = self.grant(&proposal, evidence);
                self.persist();
                self.send(from, Message::Vote(Vote { proposal, vote }), true);
            }
            Err(reason) => self.refuse(proposal, reason),
        }
    }

    pub(super) fn on_vote(&mut self, from: MemberId, v: Vote) {
        if v.vote.voter != from {
            self.stats.drop("forged_sender");
            return;
        }
        let Some(round) = self.rounds.get(&v.proposal.target) else {
            self.stats.drop("stale_vote");
            return;
        };
        if round.proposal != v.proposal {
            self.stats.drop("stale_vote");
            return;
        }
        if self.keys.verify_vote(&v.proposal, &v.vote).is_err() {
            self.stats.drop("bad_signature");
            return;
        }
        let target = v.proposal.target;
        if let Some(round) = self.rounds.get_mut(&target) {
            round.refusals.remove(&from);
            round.votes.insert(from, v.vote);
        }
        self.progress_round(target);
    }

    pub(super) fn on_refuse(&mut self, from: MemberId, r: Refusal) {
        if r.voter != from {
            self.stats.drop("forged_sender");
            return;
        }
        let target = r.proposal.target;
        match self.rounds.get_mut(&target) {
            Some(round) if round.proposal == r.proposal && !round.votes.contains_key(&from) => {
                round.refusals.insert(from, r.reason);
            }
            _ => {
                // Not about a live round of ours: no hints from it either.
                self.stats.drop("stale_refusal");
                return;
            }
        }
        let hint_until = self.now + self.cfg.promise_ttl();
        match r.reason {
            RefuseReason::SlotTaken { slot } => {
                if let Some(h) = self.slot_hints.get_mut(usize::from(slot)) {
                    *h = hint_until;
                }
            }
            RefuseReason::LaneBusy { lane } => {
                if let Some(h) = self.lane_hints.get_mut(usize::from(lane)) {
                    *h = hint_until;
                }
            }
            _ => {}
        }
        self.progress_round(target);
    }

    pub(super) fn progress_rounds(&mut self) {
        for t in self.rounds.keys().copied().collect::<Vec<_>>() {
            self.progress_round(t);
        }
    }

    fn progress_round(&mut self, target: MemberId) {
        let Some(round) = self.rounds.get(&target) else {
            return;
        };
        let q = self.cfg.quorum();
        // The timeout first: votes that sat in this node's inbox while it stalled (a slow
        // fsync) are counted only if they are counted in time. A certificate formed late would
        // run an attempt that outlives the voters' promises (docs/SAFETY.md, I4).
        if self.now.saturating_since(round.started_at) >= self.cfg.fencing.proposal_timeout {
            self.abandon(target);
            return;
        }
        if round.votes.len() >= q {
            let Some(round) = self.rounds.remove(&target) else {
                return;
            };
            let qc = QuorumCertificate {
                proposal: round.proposal,
                votes: round.votes.into_values().collect(),
            };
            match qc.proposal.kind {
                FenceKind::Fence | FenceKind::Operator => self.start_execution(Arc::new(qc)),
                FenceKind::SelfFence(_) => self.self_fence_agreed(Arc::new(qc)),
            }
            return;
        }
        // The target never votes on its own fence.
        let voters = self.cfg.n() - 1;
        let finals = round.refusals.values().filter(|r| is_final(**r)).count();
        if voters.saturating_sub(finals) < q {
            self.abandon(target);
            return;
        }
        if self.now.saturating_since(round.last_sent) >= self.cfg.fencing.retransmit_interval {
            let proposal = round.proposal;
            let ask: Vec<MemberId> = self
                .cfg
                .roster
                .ids()
                .filter(|m| {
                    *m != self.me
                        && *m != target
                        && !round.votes.contains_key(m)
                        && !round.refusals.get(m).is_some_and(|r| is_final(*r))
                })
                .collect();
            for m in ask {
                self.send(m, Message::Propose(proposal), true);
            }
            if let Some(round) = self.rounds.get_mut(&target) {
                round.last_sent = self.now;
            }
        }
    }

    /// Gives a round up: voters free their promise and its unstarted budget slot.
    fn abandon(&mut self, target: MemberId) {
        let Some(round) = self.rounds.remove(&target) else {
            return;
        };
        let proposal = round.proposal;
        self.send_all(
            Message::Release(peerfence_proto::Release { proposal }),
            true,
        );
        self.release_local(&proposal);
        let refusal = round.refusals.values().next().copied();
        self.emit(Event::RoundAbandoned { proposal, refusal });
        if target == self.me {
            self.self_fence_round_failed();
            return;
        }
        let backoff = self.cfg.fencing.proposer_backoff;
        let jitter_ms = self
            .rng
            .random_range(0..=(backoff.as_millis() as u64 / 2).max(1));
        self.peers[target.index()].next_round_at = self.now
            + backoff * (1 + self.my_rank(target))
            + std::time::Duration::from_millis(jitter_ms);
    }

    /// Drops this node's promise for `proposal` and its unstarted slot, if held.
    pub(super) fn release_local(&mut self, proposal: &Proposal) {
        if self.durable.close_round(proposal) {
            self.dirty = true;
        }
        if self.durable.release(proposal) {
            self.dirty = true;
            if let Some(s) = proposal.budget_slot
                && self
                    .durable
                    .free_unstarted_slot(s, proposal.target, proposal.target_boot)
            {
                self.dirty = true;
            }
        }
    }

    pub(super) fn on_release(&mut self, from: MemberId, proposal: Proposal) {
        if proposal.proposer != from {
            self.stats.drop("forged_sender");
            return;
        }
        self.release_local(&proposal);
    }

    pub(super) fn on_certificate(&mut self, from: MemberId, qc: QuorumCertificate) {
        if qc.proposal.proposer != from {
            self.stats.drop("forged_sender");
            return;
        }
        if self.keys.verify_certificate(&qc).is_err() {
            self.stats.drop("bad_certificate");
            self.emit(Event::ForgedCertificate { from: Some(from) });
            return;
        }
        let p = qc.proposal;
        if p.kind.stops_vms() {
            self.durable.record_news(&qc, self.now);
        }
        self.emit(Event::CertificateSeen {
            qc: Arc::new(qc.clone()),
        });
        if let Some(s) = p.budget_slot
            && self
                .durable
                .reserve_slot(s, p.target, p.target_boot, self.now, true)
                .is_some()
        {
            self.stats.drop("slot_reservation_replaced");
        }
        self.dirty = true;
        if p.target == self.me || !p.kind.stops_vms() {
            return;
        }
        let window = match p.kind {
            FenceKind::Fence | FenceKind::Operator => self.cfg.attempt_max(),
            FenceKind::SelfFence(_) => self.self_fence_confirm_wait().max(self.cfg.attempt_max()),
        };
        self.peers[p.target.index()].inflight = Some(Inflight {
            proposal: p,
            seen_at: self.now,
            until: self.now + window + self.cfg.fencing.confirm_margin * 2,
        });
    }

    /// An attempt's end with the certificate it ran under, directly from its executor.
    pub(super) fn on_certified_outcome(&mut self, from: MemberId, c: CertifiedOutcome) {
        if c.signed.outcome.proposal.proposer != from {
            self.stats.drop("forged_sender");
            return;
        }
        if self.keys.verify_certificate(&c.qc).is_err() {
            self.stats.drop("bad_certificate");
            self.emit(Event::ForgedCertificate { from: Some(from) });
            return;
        }
        self.on_signed_outcome(Some(from), c.signed, Some(&c.qc));
    }

    /// An attempt's end as its executor signed it: directly (`from` set, with the certificate),
    /// by gossip, or in the news (`qc` already verified by the caller). Only the executor can
    /// sign it, whoever relays it; and a `Confirmed`, which leads to "safe to recover", counts
    /// only for a fence whose certificate this node verified (a quorum agreed). Anything else is
    /// dropped and counted, and changes nothing.
    pub(super) fn on_signed_outcome(
        &mut self,
        from: Option<MemberId>,
        signed: SignedOutcome,
        qc: Option<&QuorumCertificate>,
    ) {
        if from.is_some_and(|f| f != signed.outcome.proposal.proposer) {
            self.stats.drop("forged_sender");
            return;
        }
        if self.keys.verify_outcome(&signed).is_err() {
            self.stats.drop("bad_outcome_signature");
            return;
        }
        let o = signed.outcome;
        if let Some(qc) = qc {
            debug_assert_eq!(qc.proposal, o.proposal, "the decoder checks this");
            self.learn_fence(qc, None);
        }
        if matches!(o.result, OutcomeResult::Confirmed(_))
            && self.durable.news_certificate(&o.proposal).is_none()
        {
            self.stats.drop("outcome_without_certificate");
            return;
        }
        if self.durable.news_proof(&signed) {
            self.dirty = true;
        }
        self.on_outcome(o);
    }

    /// A verified outcome (see [`Node::on_signed_outcome`]).
    fn on_outcome(&mut self, o: FenceOutcome) {
        let p = o.proposal;
        if self.durable.release(&p) {
            self.dirty = true;
        }
        if self.durable.news_outcome(&p, o.result) {
            self.dirty = true;
        }
        let t = p.target;
        if t == self.me {
            return;
        }
        if self.peers[t.index()]
            .inflight
            .as_ref()
            .is_some_and(|f| f.proposal == p)
        {
            self.peers[t.index()].inflight = None;
        }
        match o.result {
            OutcomeResult::Confirmed(evidence) => self.confirmed(t, p.target_boot, evidence),
            OutcomeResult::Failed(_) => {
                let max = u16::from(self.cfg.fencing.max_attempts.get());
                let retry = self.cfg.retry_backoff(u32::from(o.attempt));
                let peer = &mut self.peers[t.index()];
                if peer.boot == Some(p.target_boot) && o.attempt >= peer.attempts {
                    peer.attempts = o.attempt;
                    if o.attempt >= max {
                        peer.failed = true;
                        peer.next_retry_at = None;
                    } else {
                        peer.next_retry_at = Some(self.now + retry);
                    }
                }
            }
            OutcomeResult::Aborted(_) => {}
        }
    }
}
