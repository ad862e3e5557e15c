//! Carrying out a fence under a certificate: levels in order, confirmation, outcome.
//!
//! Before each level the target is checked again; storage life aborts the attempt. An agent level
//! runs `off`, then `status` until Off, within its timeout; a timeout is a failure. The poison-pill
//! level writes the certificate into the target's slot and confirms only once
//! [`crate::config::Config::pill_confirm_wait`] has passed with the target's heartbeat still
//! stopped. A new boot id of the target confirms at any point. Confirmation is persisted before
//! "safe to recover" is emitted.

use super::{AgentAction, AgentResult, CommandId, Event, FenceCommand, Node, Output};
use crate::config::{AfterOff, LevelKind};
use crate::durable::FenceRecord;
use crate::heartbeat::Liveness;
use crate::rules::{self, TargetClass};
use crate::time::Instant;
use peerfence_proto::{
    AbortReason, BootId, CertifiedOutcome, Evidence, FailReason, FenceOutcome, MemberId, Message,
    OutcomeResult, Proposal, QuorumCertificate,
};
use std::sync::Arc;

/// Where an attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// `off` sent.
    AwaitOff(CommandId),
    /// `status` sent.
    AwaitStatus(CommandId),
    /// Waiting to ask `status` again.
    StatusWait { next_poll: Instant },
    /// Pill write sent.
    AwaitPill(CommandId),
    /// Pill written; waiting for the watchdog deadline.
    PillWait {
        written_at: Instant,
        confirm_at: Instant,
        alive_seen: bool,
    },
}

/// A fence attempt this node runs.
#[derive(Debug, Clone)]
pub(super) struct Execution {
    pub qc: Arc<QuorumCertificate>,
    pub attempt: u16,
    pub level: usize,
    pub level_deadline: Instant,
    /// When the whole attempt must be over (start + `attempt_max`): a level that begins late
    /// (the node stalled) gets only what is left, so the attempt never outlives the promises
    /// its voters granted for it.
    pub deadline: Instant,
    pub step: Step,
    pub pill_written: bool,
}

/// An attempt this node started before it restarted: it may still be running until `deadline`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Interrupted {
    pub proposal: Proposal,
    pub attempt: u16,
    pub deadline: Instant,
    pub pill_written: bool,
}

impl Node {
    /// A quorum agreed: start the attempt (after one last look at the target and at ourselves).
    pub(super) fn start_execution(&mut self, qc: Arc<QuorumCertificate>) {
        let p = qc.proposal;
        let t = p.target;
        let still_fenceable = self.fence_class(t, p.kind) == TargetClass::Fenceable
            && self.peers[t.index()].boot == Some(p.target_boot);
        let still_eligible = rules::eligibility(&self.eligibility_facts()).is_ok();
        if !still_fenceable || !still_eligible {
            self.send_all(
                Message::Release(peerfence_proto::Release { proposal: p }),
                true,
            );
            self.release_local(&p);
            self.emit(Event::RoundAbandoned {
                proposal: p,
                refusal: None,
            });
            return;
        }
        // I1 at the source: whatever happened above, a fence never starts on an invalid
        // certificate.
        assert!(
            self.keys.verify_certificate(&qc).is_ok(),
            "a fence must never start without a valid quorum certificate"
        );
        let peer = &self.peers[t.index()];
        let attempt = peer.attempts.saturating_add(1);
        if let Some(s) = p.budget_slot {
            self.durable
                .reserve_slot(s, t, p.target_boot, self.now, true);
        }
        self.durable.log_fence(FenceRecord {
            qc: (*qc).clone(),
            attempt,
            started_at: self.now,
            deadline: self.now + self.cfg.attempt_max(),
            outcome: None,
            pill_written: false,
        });
        self.durable.record_news(&qc, self.now);
        self.durable.close_round(&p);
        self.dirty = true;
        self.persist();
        self.send_all(Message::Certificate((*qc).clone()), true);
        self.emit(Event::FenceStarted {
            qc: qc.clone(),
            attempt,
        });
        self.executions.insert(
            t,
            Execution {
                qc,
                attempt,
                level: 0,
                level_deadline: self.now,
                deadline: self.now + self.cfg.attempt_max(),
                step: Step::StatusWait {
                    next_poll: Instant::ZERO,
                },
                pill_written: false,
            },
        );
        self.begin_level(t, 0);
    }

    fn begin_level(&mut self, t: MemberId, level: usize) {
        let facts = self.target_facts(t);
        if facts.maintenance {
            self.finish(t, OutcomeResult::Aborted(AbortReason::Maintenance));
            return;
        }
        let kind = self.executions.get(&t).map(|e| e.qc.proposal.kind);
        if facts.left && kind != Some(peerfence_proto::FenceKind::Operator) {
            // It stopped cleanly meanwhile: peerfence no longer protects it, and its closed
            // watchdog would make a deadline confirmation a lie.
            self.finish(t, OutcomeResult::Aborted(AbortReason::TargetLeft));
            return;
        }
        if facts.storage == Liveness::Alive {
            self.finish(t, OutcomeResult::Aborted(AbortReason::TargetAlive));
            return;
        }
        let cfg = self.cfg.clone();
        let Some(spec) = cfg.fencing.levels.get(level) else {
            self.finish(t, OutcomeResult::Failed(FailReason::AllLevelsFailed));
            return;
        };
        let id = self.next_command_id();
        let Some(exec) = self.executions.get_mut(&t) else {
            return;
        };
        if self.now >= exec.deadline {
            self.finish(t, OutcomeResult::Failed(FailReason::AllLevelsFailed));
            return;
        }
        exec.level = level;
        exec.level_deadline = (self.now + cfg.level_budget(spec)).min(exec.deadline);
        let remaining = exec.level_deadline.saturating_since(self.now);
        let qc = exec.qc.clone();
        match spec.kind {
            LevelKind::Agent { timeout } => {
                exec.step = Step::AwaitOff(id);
                self.out.push_back(Output::Fence(FenceCommand {
                    id,
                    target: t,
                    level: level as u8,
                    action: AgentAction::Off,
                    timeout: timeout.min(remaining),
                    qc,
                }));
            }
            LevelKind::PoisonPill if kind == Some(peerfence_proto::FenceKind::Operator) => {
                // An operator fence of a host that left needs power-Off evidence: its daemon
                // closed its watchdog, so no deadline ever confirms it.
                self.emit(Event::LevelFailed {
                    target: t,
                    level: level as u8,
                    timed_out: false,
                });
                self.finish(t, OutcomeResult::Failed(FailReason::AllLevelsFailed));
            }
            LevelKind::PoisonPill => {
                exec.step = Step::AwaitPill(id);
                exec.pill_written = true;
                // Durable first: whoever ends this attempt, even after a restart, clears the pill.
                let proposal = qc.proposal;
                if let Some(r) = self
                    .durable
                    .fence_log
                    .iter_mut()
                    .rev()
                    .find(|r| r.qc.proposal == proposal && r.outcome.is_none())
                {
                    r.pill_written = true;
                }
                self.dirty = true;
                self.persist();
                self.out.push_back(Output::WritePill { id, target: t, qc });
            }
        }
    }

    fn command_owner(&self, id: CommandId) -> Option<MemberId> {
        self.executions.iter().find_map(|(t, e)| match e.step {
            Step::AwaitOff(c) | Step::AwaitStatus(c) | Step::AwaitPill(c) if c == id => Some(*t),
            _ => None,
        })
    }

    fn ask_status(&mut self, t: MemberId) {
        let id = self.next_command_id();
        let Some(exec) = self.executions.get_mut(&t) else {
            return;
        };
        let remaining = exec.level_deadline.saturating_since(self.now);
        exec.step = Step::AwaitStatus(id);
        let (level, qc) = (exec.level as u8, exec.qc.clone());
        self.out.push_back(Output::Fence(FenceCommand {
            id,
            target: t,
            level,
            action: AgentAction::Status,
            timeout: remaining,
            qc,
        }));
    }

    pub(super) fn on_fence_result(&mut self, id: CommandId, result: AgentResult) {
        let Some(t) = self.command_owner(id) else {
            // Late (after its timeout) or for a power-on: nothing depends on it.
            return;
        };
        let Some(exec) = self.executions.get(&t) else {
            return;
        };
        let level = exec.level as u8;
        match (exec.step, result) {
            (Step::AwaitOff(_), AgentResult::Done | AgentResult::Power(_)) => self.ask_status(t),
            (Step::AwaitOff(_), AgentResult::Failed) => self.level_failed(t, false),
            (Step::AwaitOff(_), AgentResult::TimedOut) => self.level_failed(t, true),
            (Step::AwaitStatus(_), AgentResult::Power(super::PowerState::Off)) => {
                self.peers[t.index()].power = super::PowerState::Off;
                self.finish(t, OutcomeResult::Confirmed(Evidence::PowerOff { level }));
            }
            (Step::AwaitStatus(_), _) => {
                let next_poll = self.now + self.cfg.fencing.status_poll_interval;
                if let Some(exec) = self.executions.get_mut(&t) {
                    exec.step = Step::StatusWait { next_poll };
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_pill_written(&mut self, id: CommandId, ok: bool) {
        let Some(t) = self.command_owner(id) else {
            return;
        };
        if !ok {
            self.level_failed(t, false);
            return;
        }
        let confirm_at = self.now + self.cfg.pill_confirm_wait();
        if let Some(exec) = self.executions.get_mut(&t) {
            exec.step = Step::PillWait {
                written_at: self.now,
                confirm_at,
                alive_seen: false,
            };
        }
    }

    pub(super) fn progress_executions(&mut self) {
        for t in self.executions.keys().copied().collect::<Vec<_>>() {
            let Some(exec) = self.executions.get(&t) else {
                continue;
            };
            let (step, deadline, level) = (exec.step, exec.level_deadline, exec.level as u8);
            match step {
                Step::StatusWait { next_poll } if self.now >= next_poll && self.now < deadline => {
                    self.ask_status(t);
                    continue;
                }
                Step::PillWait {
                    written_at,
                    confirm_at,
                    alive_seen,
                } => {
                    let advanced = self.peers[t.index()]
                        .hb
                        .last_change()
                        .is_some_and(|c| c > written_at);
                    let alive_seen = alive_seen || advanced;
                    if let Some(exec) = self.executions.get_mut(&t) {
                        exec.step = Step::PillWait {
                            written_at,
                            confirm_at,
                            alive_seen,
                        };
                    }
                    if self.has_left(t) {
                        // Its daemon stopped cleanly and closed its watchdog: the deadline
                        // proves nothing any more.
                        self.finish(t, OutcomeResult::Aborted(AbortReason::TargetLeft));
                        continue;
                    }
                    // Positive evidence only: fresh reads showing no change since the pill. If
                    // this node cannot read storage right now it cannot confirm; it waits.
                    let stalled = matches!(self.liveness(t), Liveness::Stalled { .. });
                    if !alive_seen && self.now >= confirm_at && stalled {
                        self.finish(
                            t,
                            OutcomeResult::Confirmed(Evidence::WatchdogDeadline { level }),
                        );
                        continue;
                    }
                    if self.now >= deadline {
                        if alive_seen {
                            // Its heartbeat moved after the pill: it is alive and can read its
                            // slot; never confirm by deadline. It will reboot (new boot id) or it
                            // was never dead.
                            self.finish(t, OutcomeResult::Aborted(AbortReason::TargetAlive));
                        } else {
                            self.level_failed(t, true);
                        }
                    }
                    continue;
                }
                _ => {}
            }
            if self.now >= deadline {
                self.level_failed(t, true);
            }
        }
    }

    fn level_failed(&mut self, t: MemberId, timed_out: bool) {
        let Some(exec) = self.executions.get(&t) else {
            return;
        };
        let level = exec.level;
        self.emit(Event::LevelFailed {
            target: t,
            level: level as u8,
            timed_out,
        });
        if level + 1 < self.cfg.fencing.levels.len() {
            self.begin_level(t, level + 1);
        } else {
            self.finish(t, OutcomeResult::Failed(FailReason::AllLevelsFailed));
        }
    }

    /// Ends this node's attempt on `t`: record, persist, tell everyone.
    pub(super) fn finish(&mut self, t: MemberId, result: OutcomeResult) {
        let Some(exec) = self.executions.remove(&t) else {
            return;
        };
        let p = exec.qc.proposal;
        if let Some(r) = self
            .durable
            .fence_log
            .iter_mut()
            .rev()
            .find(|r| r.qc.proposal == p && r.outcome.is_none())
        {
            r.outcome = Some(result);
        }
        self.durable.release(&p);
        self.durable.news_outcome(&p, result);
        self.dirty = true;
        match result {
            OutcomeResult::Confirmed(evidence) => {
                self.confirmed(t, p.target_boot, evidence);
                if self.cfg.fencing.after_off == AfterOff::Reboot
                    && let Evidence::PowerOff { level } = evidence
                {
                    let id = self.next_command_id();
                    let timeout = match self
                        .cfg
                        .fencing
                        .levels
                        .get(usize::from(level))
                        .map(|l| l.kind)
                    {
                        Some(LevelKind::Agent { timeout }) => timeout,
                        _ => self.cfg.fencing.status_poll_interval,
                    };
                    self.out.push_back(Output::Fence(FenceCommand {
                        id,
                        target: t,
                        level,
                        action: AgentAction::On,
                        timeout,
                        qc: exec.qc.clone(),
                    }));
                }
            }
            OutcomeResult::Failed(reason) => {
                let max = u16::from(self.cfg.fencing.max_attempts.get());
                let retry = self.cfg.retry_backoff(u32::from(exec.attempt));
                let peer = &mut self.peers[t.index()];
                peer.attempts = peer.attempts.max(exec.attempt);
                let retry_in = if exec.attempt >= max {
                    peer.failed = true;
                    peer.next_retry_at = None;
                    None
                } else {
                    peer.next_retry_at = Some(self.now + retry);
                    Some(retry)
                };
                self.persist();
                self.emit(Event::FenceFailed {
                    target: t,
                    boot: p.target_boot,
                    attempt: exec.attempt,
                    reason,
                    retry_in,
                });
            }
            OutcomeResult::Aborted(reason) => {
                self.persist();
                self.emit(Event::FenceAborted { target: t, reason });
            }
        }
        if exec.pill_written {
            self.clear_pill(t, p);
        }
        self.announce_outcome(
            &exec.qc,
            FenceOutcome {
                proposal: p,
                attempt: exec.attempt,
                result,
            },
        );
    }

    /// Signs an outcome of a fence this node executed and tells every member: directly with the
    /// certificate (so that a receiver that missed it can verify a quorum agreed), and by gossip
    /// without it. Kept with the news, so that members that missed both learn it from the news.
    fn announce_outcome(&mut self, qc: &QuorumCertificate, outcome: FenceOutcome) {
        let signed = self
            .vote_key
            .sign_outcome(&self.cfg.cluster, self.cfg.digest(), outcome);
        if self.durable.news_proof(&signed) {
            self.dirty = true;
        }
        self.send_all(
            Message::CertifiedOutcome(CertifiedOutcome {
                qc: qc.clone(),
                signed,
            }),
            true,
        );
        self.swim
            .broadcast(&peerfence_proto::Broadcast::SignedOutcome(signed));
    }

    /// Records `t` fenced in `boot` (durably, first) and announces it once.
    pub(super) fn confirmed(&mut self, t: MemberId, boot: BootId, evidence: Evidence) {
        if self.durable.record_fenced(t, boot) {
            self.dirty = true;
        }
        // "Safe to recover" must never be visible before the record that justifies it is.
        self.persist();
        if self.peers[t.index()].safe_reported != Some(boot) {
            self.peers[t.index()].safe_reported = Some(boot);
            self.emit(Event::FenceConfirmed {
                target: t,
                boot,
                evidence,
            });
            self.emit(Event::SafeToRecover {
                target: t,
                boot,
                evidence,
            });
        }
    }

    /// `m` showed a new boot: whatever ran in `old` is gone.
    pub(super) fn new_boot_evidence(&mut self, m: MemberId, old: BootId, new: BootId) {
        let evidence = Evidence::NewBootId { boot: new };
        if self
            .executions
            .get(&m)
            .is_some_and(|e| e.qc.proposal.target_boot == old)
        {
            self.finish(m, OutcomeResult::Confirmed(evidence));
            return;
        }
        let inflight = self.peers[m.index()]
            .inflight
            .as_ref()
            .is_some_and(|f| f.proposal.target_boot == old);
        if inflight {
            self.peers[m.index()].inflight = None;
            self.confirmed(m, old, evidence);
            return;
        }
        // An attempt this node ran before it restarted (durable), or a promise it granted for a
        // fence of that boot: it judged the old boot dead before the restart, which a node in
        // its quiet period has not yet done again.
        let interrupted = self
            .interrupted
            .iter()
            .any(|i| i.proposal.target == m && i.proposal.target_boot == old);
        let promised = self
            .durable
            .promise_for(m)
            .is_some_and(|p| p.proposal.target_boot == old && p.proposal.kind.stops_vms());
        if interrupted || promised {
            if interrupted {
                self.end_interrupted(m, old, OutcomeResult::Confirmed(evidence));
            }
            self.confirmed(m, old, evidence);
            return;
        }
        // No fence ran to completion, but this node judged the host dead in `old` (its watchdog
        // or an operator rebooted it): the old boot's VMs are gone all the same, and the cloud
        // may recover them. Nothing is recorded as fenced and no budget is spent.
        let p = &mut self.peers[m.index()];
        if p.considered_dead == Some(old) && p.safe_reported != Some(old) {
            p.safe_reported = Some(old);
            p.considered_dead = None;
            self.emit(Event::SafeToRecover {
                target: m,
                boot: old,
                evidence,
            });
        }
    }

    /// At start: attempts this node began before restarting may still run until their deadline;
    /// rounds it opened without starting a fence are released now.
    pub(super) fn resume_interrupted_attempts(&mut self) {
        let open = std::mem::take(&mut self.durable.open_rounds);
        for p in open {
            let started = self.durable.fence_log.iter().any(|r| r.qc.proposal == p);
            if !started {
                self.durable.release(&p);
                self.send_all(
                    Message::Release(peerfence_proto::Release { proposal: p }),
                    true,
                );
            }
        }
        self.dirty = true;
        self.interrupted = self
            .durable
            .fence_log
            .iter()
            .filter(|r| r.outcome.is_none() && r.qc.proposal.kind.is_fence())
            .map(|r| Interrupted {
                proposal: r.qc.proposal,
                attempt: r.attempt,
                deadline: r.deadline,
                pill_written: r.pill_written,
            })
            .collect();
    }

    /// Ends the interrupted attempt on `target`'s `boot` with `result`: recorded, released,
    /// its pill cleared, its outcome sent.
    fn end_interrupted(&mut self, target: MemberId, boot: BootId, result: OutcomeResult) {
        let Some(pos) = self
            .interrupted
            .iter()
            .position(|i| i.proposal.target == target && i.proposal.target_boot == boot)
        else {
            return;
        };
        let i = self.interrupted.remove(pos);
        if let Some(r) = self
            .durable
            .fence_log
            .iter_mut()
            .find(|r| r.qc.proposal == i.proposal && r.outcome.is_none())
        {
            r.outcome = Some(result);
        }
        self.durable.news_outcome(&i.proposal, result);
        self.durable.release(&i.proposal);
        self.dirty = true;
        self.persist();
        if i.pill_written {
            self.clear_pill(i.proposal.target, i.proposal);
        }
        let outcome = FenceOutcome {
            proposal: i.proposal,
            attempt: i.attempt,
            result,
        };
        let qc = self
            .durable
            .fence_log
            .iter()
            .rev()
            .find(|r| r.qc.proposal == i.proposal)
            .map(|r| r.qc.clone());
        match qc {
            Some(qc) => self.announce_outcome(&qc, outcome),
            // The fence record (persisted before any fence command) was dropped as the oldest
            // of a full log: gossip alone, for members that hold the certificate.
            None => {
                let signed =
                    self.vote_key
                        .sign_outcome(&self.cfg.cluster, self.cfg.digest(), outcome);
                self.swim
                    .broadcast(&peerfence_proto::Broadcast::SignedOutcome(signed));
            }
        }
    }

    /// Ends interrupted attempts whose deadline passed: they failed, and voters may now release.
    pub(super) fn progress_interrupted(&mut self) {
        let now = self.now;
        let due: Vec<(MemberId, BootId)> = self
            .interrupted
            .iter()
            .filter(|i| now >= i.deadline)
            .map(|i| (i.proposal.target, i.proposal.target_boot))
            .collect();
        for (target, boot) in due {
            self.end_interrupted(target, boot, OutcomeResult::Failed(FailReason::Interrupted));
        }
    }
}

/// Retries of a failed pill clear: 1 s, doubling, at most this.
const CLEAR_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// A pill clear in flight or waiting to be tried again.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingClear {
    pub target: MemberId,
    pub proposal: Proposal,
    /// The command in flight, if one is.
    pub id: Option<CommandId>,
    /// When to try again when none is in flight.
    pub next_try: Instant,
    pub tries: u32,
}

impl PendingClear {
    /// A clear to ask for now, never tried yet.
    fn new(target: MemberId, proposal: Proposal, now: Instant) -> Self {
        Self {
            target,
            proposal,
            id: None,
            next_try: now,
            tries: 0,
        }
    }
}

impl Node {
    /// Clears `target`'s pill of `proposal` (and only that one): recorded durably first, then
    /// asked of the driver, and asked again until it is done.
    pub(super) fn clear_pill(&mut self, target: MemberId, proposal: Proposal) {
        if !self
            .durable
            .pills_to_clear
            .iter()
            .any(|(t, p)| *t == target && *p == proposal)
        {
            if self.durable.pills_to_clear.len() >= crate::durable::PILLS_TO_CLEAR_MAX {
                self.stats.drop("pills_to_clear_full");
                self.durable.pills_to_clear.remove(0);
            }
            self.durable.pills_to_clear.push((target, proposal));
            self.dirty = true;
            self.persist();
        }
        if self
            .clears
            .iter()
            .any(|c| c.proposal == proposal && c.target == target)
        {
            return;
        }
        self.clears
            .push(PendingClear::new(target, proposal, self.now));
        self.retry_clears();
    }

    /// Asks the driver for every clear whose turn has come.
    pub(super) fn retry_clears(&mut self) {
        for i in 0..self.clears.len() {
            let c = self.clears[i];
            if c.id.is_some() || self.now < c.next_try {
                continue;
            }
            let id = self.next_command_id();
            self.clears[i].id = Some(id);
            self.out.push_back(Output::ClearPill {
                id,
                target: c.target,
                proposal: c.proposal,
            });
        }
    }

    pub(super) fn on_pill_cleared(&mut self, id: CommandId, ok: bool) {
        let Some(i) = self.clears.iter().position(|c| c.id == Some(id)) else {
            return;
        };
        if ok {
            let c = self.clears.remove(i);
            self.durable
                .pills_to_clear
                .retain(|(t, p)| !(*t == c.target && *p == c.proposal));
            self.dirty = true;
            return;
        }
        let c = &mut self.clears[i];
        c.id = None;
        c.tries = c.tries.saturating_add(1);
        let wait =
            (std::time::Duration::from_secs(1) * (1u32 << c.tries.min(6))).min(CLEAR_RETRY_MAX);
        c.next_try = self.now + wait;
        if c.tries == 10 {
            let target = c.target;
            self.emit(Event::PillNotCleared { target });
        }
    }

    /// At start: clears that a previous run could not finish.
    pub(super) fn resume_clears(&mut self) {
        for (target, proposal) in self.durable.pills_to_clear.clone() {
            self.clears
                .push(PendingClear::new(target, proposal, self.now));
        }
    }
}
