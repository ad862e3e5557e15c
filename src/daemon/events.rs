//! The daemon's event log: every core [`Event`] (and every audited operator action) becomes
//! one [`ApiEvent`] with a stable `kind`, member names instead of ids, and a line a person can
//! read. The log keeps the last [`EVENT_BUFFER`] events for `GET /v1/events?since=` and fans
//! new ones out to SSE clients and hooks through a bounded broadcast channel: a slow reader
//! loses events (and is told so), it never slows the node's task.

use crate::config::Roster;
use crate::node::{Event, SelfFenceAnswer};
use crate::rules::HaState;
use peerfence_proto::{Evidence, FenceKind, MemberId, Proposal, QuorumCertificate};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::broadcast;

/// Events kept for replay (`?since=`).
pub const EVENT_BUFFER: usize = 1024;
/// Events a live subscriber may fall behind by before it loses some.
pub const SUBSCRIBER_LAG: usize = 256;

/// One event as the API, the dashboard and hooks see it. Field names are stable (docs/API.md).
#[derive(Debug, Clone, Serialize)]
pub struct ApiEvent {
    /// Sequence number in this daemon process, from 1, without gaps.
    pub seq: u64,
    /// Wall-clock time (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The member whose view this is (the daemon that produced the event).
    pub node: String,
    /// Stable snake_case name (the hook event names are among them).
    pub kind: &'static str,
    /// The member it is about, if any.
    pub member: Option<String>,
    /// One line for people.
    pub message: String,
    /// Structured details; the fields depend on `kind`.
    pub details: Value,
}

/// The bounded log and its fan-out.
pub struct EventLog {
    node: String,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<ApiEvent>>,
}

struct Inner {
    next_seq: u64,
    buf: VecDeque<Arc<ApiEvent>>,
}

impl EventLog {
    /// An empty log for the member `node`.
    pub fn new(node: impl Into<String>) -> Arc<Self> {
        let (tx, _) = broadcast::channel(SUBSCRIBER_LAG);
        Arc::new(Self {
            node: node.into(),
            inner: Mutex::new(Inner {
                next_seq: 1,
                buf: VecDeque::with_capacity(EVENT_BUFFER),
            }),
            tx,
        })
    }

    /// The member whose log this is.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Appends one event and hands it to live subscribers.
    pub fn publish(
        &self,
        kind: &'static str,
        member: Option<String>,
        message: String,
        details: Value,
    ) -> Arc<ApiEvent> {
        let now = SystemTime::now();
        let unix_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let ev = Arc::new(ApiEvent {
            seq: inner.next_seq,
            time: humantime::format_rfc3339_millis(now).to_string(),
            unix_ms,
            node: self.node.clone(),
            kind,
            member,
            message,
            details,
        });
        inner.next_seq += 1;
        if inner.buf.len() == EVENT_BUFFER {
            inner.buf.pop_front();
        }
        inner.buf.push_back(ev.clone());
        // Sent under the lock so that subscribers see events in `seq` order.
        let _ = self.tx.send(ev.clone());
        ev
    }

    /// Events with `seq > since` still in the buffer, oldest first, and a live subscription
    /// that starts right after them (no gap, no duplicate).
    pub fn replay_and_subscribe(
        &self,
        since: Option<u64>,
    ) -> (Vec<Arc<ApiEvent>>, broadcast::Receiver<Arc<ApiEvent>>) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let old = match since {
            Some(s) => inner.buf.iter().filter(|e| e.seq > s).cloned().collect(),
            None => Vec::new(),
        };
        (old, rx)
    }

    /// A live subscription only.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ApiEvent>> {
        self.tx.subscribe()
    }

    /// The last `n` events, oldest first.
    pub fn recent(&self, n: usize) -> Vec<Arc<ApiEvent>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let skip = inner.buf.len().saturating_sub(n);
        inner.buf.iter().skip(skip).cloned().collect()
    }

    /// The oldest `seq` still buffered, and the next one to be given.
    pub fn bounds(&self) -> (u64, u64) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let first = inner.buf.front().map(|e| e.seq).unwrap_or(inner.next_seq);
        (first, inner.next_seq)
    }
}

/// Snake_case name of an HA state (as in `GET /v1/cluster`).
pub fn ha_name(s: HaState) -> &'static str {
    match s {
        HaState::Initializing => "initializing",
        HaState::Available => "available",
        HaState::Suspect => "suspect",
        HaState::Checking => "checking",
        HaState::Fencing => "fencing",
        HaState::Fenced => "fenced",
        HaState::Partitioned => "partitioned",
        HaState::Unmanageable => "unmanageable",
        HaState::FenceFailed => "fence_failed",
        HaState::Failed => "failed",
        HaState::Ineligible => "ineligible",
        HaState::Left => "left",
        HaState::Disabled => "disabled",
        HaState::FenceDeviceDown => "fence_device_down",
    }
}

/// The `kind` of a core event. An HA change into Suspect, Partitioned, Unmanageable or Fencing
/// is named after the new state: those are the hook names operators subscribe to.
pub fn kind_of(e: &Event) -> &'static str {
    match e {
        Event::SwimChanged { .. } => "swim_changed",
        Event::HaChanged { to, .. } => match to {
            HaState::Suspect => "suspect",
            HaState::Partitioned => "partitioned",
            HaState::Unmanageable => "unmanageable",
            HaState::Fencing => "fencing",
            _ => "ha_changed",
        },
        Event::VerdictChanged { .. } => "verdict_changed",
        Event::WouldFence { .. } => "would_fence",
        Event::Proposed { .. } => "proposed",
        Event::RoundAbandoned { .. } => "round_abandoned",
        Event::Voted { .. } => "voted",
        Event::FenceStarted { .. } => "fence_started",
        Event::CertificateSeen { .. } => "certificate_seen",
        Event::LevelFailed { .. } => "level_failed",
        Event::FenceConfirmed { .. } => "fenced",
        Event::SafeToRecover { .. } => "safe_to_recover",
        Event::FenceFailed { .. } => "fence_failed",
        Event::FenceAborted { .. } => "fence_aborted",
        Event::StormEntered { .. } => "storm_entered",
        Event::StormLeft => "storm_left",
        Event::BudgetExhausted { .. } => "budget_exhausted",
        Event::SelfFenceRequested { .. } => "self_fence_requested",
        Event::SelfFenceBlocked { .. } => "self_fence_blocked",
        Event::SelfFenceLogOnly => "self_fence_log_only",
        Event::SelfFenceExecuted { .. } => "self_fence",
        Event::StalePoisonPill => "stale_poison_pill",
        Event::ForgedCertificate { .. } => "forged_certificate",
        Event::WatchdogStopped { .. } => "watchdog_stopped",
        Event::WatchdogResumed => "watchdog_resumed",
        Event::Rebooted { .. } => "rebooted",
        Event::PowerChanged { .. } => "power_changed",
        Event::HostFoundOff { .. } => "host_found_off",
        Event::ArmChanged { armed: true, .. } => "armed",
        Event::ArmChanged { armed: false, .. } => "disarmed",
        Event::MaintenanceChanged { .. } => "maintenance",
        Event::ManualFence { .. } => "manual_fence",
        Event::FlagRefused { .. } => "flag_refused",
        Event::SelfFenceRequestAnswered { .. } => "self_fence_request_answered",
        Event::EligibilityChanged { .. } => "eligibility_changed",
        Event::MemberLeft { .. } => "member_left",
        Event::PillNotCleared { .. } => "pill_not_cleared",
        Event::MemberReturned { .. } => "member_returned",
    }
}

/// The member a core event is about.
pub fn member_of(e: &Event) -> Option<MemberId> {
    Some(match e {
        Event::SwimChanged { member, .. }
        | Event::HaChanged { member, .. }
        | Event::Rebooted { member, .. }
        | Event::PowerChanged { member, .. }
        | Event::HostFoundOff { member }
        | Event::MaintenanceChanged { member, .. }
        | Event::MemberLeft { member, .. }
        | Event::PillNotCleared { target: member }
        | Event::MemberReturned { member, .. } => *member,
        Event::WouldFence { target, .. }
        | Event::FenceConfirmed { target, .. }
        | Event::SafeToRecover { target, .. }
        | Event::FenceFailed { target, .. }
        | Event::FenceAborted { target, .. }
        | Event::LevelFailed { target, .. }
        | Event::BudgetExhausted { target }
        | Event::ManualFence { target, .. } => *target,
        Event::Proposed { proposal }
        | Event::Voted { proposal, .. }
        | Event::RoundAbandoned { proposal, .. } => proposal.target,
        Event::FenceStarted { qc, .. } | Event::CertificateSeen { qc } => qc.proposal.target,
        _ => return None,
    })
}

/// Evidence as JSON, levels by name.
pub fn evidence_json(e: &Evidence, levels: &[String]) -> Value {
    let level = |l: &u8| levels.get(usize::from(*l)).cloned();
    match e {
        Evidence::PowerOff { level: l } => json!({"type": "power_off", "level": level(l)}),
        Evidence::NewBootId { boot } => json!({"type": "new_boot_id", "boot": boot.to_string()}),
        Evidence::WatchdogDeadline { level: l } => {
            json!({"type": "watchdog_deadline", "level": level(l)})
        }
        Evidence::SelfFenceDeadline => json!({"type": "self_fence_deadline"}),
    }
}

/// What the evidence means, for people.
pub fn evidence_text(e: &Evidence, levels: &[String]) -> String {
    let level = |l: &u8| {
        levels
            .get(usize::from(*l))
            .cloned()
            .unwrap_or_else(|| format!("level {l}"))
    };
    match e {
        Evidence::PowerOff { level: l } => format!("power reported off by level {}", level(l)),
        Evidence::NewBootId { .. } => "it came back with a new boot id".into(),
        Evidence::WatchdogDeadline { level: l } => format!(
            "poison pill written by level {}, and its watchdog deadline has passed",
            level(l)
        ),
        Evidence::SelfFenceDeadline => {
            "it fenced itself under a certificate and its watchdog deadline has passed".into()
        }
    }
}

/// A proposal as JSON, members by name.
pub fn proposal_json(p: &Proposal, roster: &Roster) -> Value {
    json!({
        "target": roster.name(p.target),
        "target_boot": p.target_boot.to_string(),
        "proposer": roster.name(p.proposer),
        "round": format!("{:?}", p.round),
        "kind": match p.kind {
            FenceKind::Fence => "fence".to_string(),
            FenceKind::Operator => "operator-fence".to_string(),
            FenceKind::SelfFence(a) => format!("self_fence:{a:?}").to_lowercase(),
        },
        "budget_slot": p.budget_slot,
    })
}

/// A quorum certificate as JSON: who voted and with which evidence.
pub fn certificate_json(qc: &QuorumCertificate, roster: &Roster) -> Value {
    json!({
        "proposal": proposal_json(&qc.proposal, roster),
        "votes": qc.votes.iter().map(|v| json!({
            "voter": roster.name(v.voter),
            "voter_healthy": v.evidence.voter_healthy,
            "target_down_ms": v.evidence.target_down_ms,
            "heartbeat_stalled_ms": v.evidence.heartbeat_stalled_ms,
        })).collect::<Vec<_>>(),
    })
}

fn answer_text(a: &SelfFenceAnswer) -> String {
    a.explain().to_string()
}

/// The one-line message and details of a core event.
pub fn describe(e: &Event, roster: &Roster, levels: &[String]) -> (String, Value) {
    let name = |m: &MemberId| roster.name(*m).to_owned();
    let level = |l: &u8| {
        levels
            .get(usize::from(*l))
            .cloned()
            .unwrap_or_else(|| format!("level {l}"))
    };
    match e {
        Event::SwimChanged { member, from, to } => (
            format!("{} is {to:?} in gossip (was {from:?})", name(member)),
            json!({"from": format!("{from:?}").to_lowercase(), "to": format!("{to:?}").to_lowercase()}),
        ),
        Event::HaChanged { member, from, to } => (
            format!(
                "{} is now {} (was {})",
                name(member),
                ha_name(*to),
                ha_name(*from)
            ),
            json!({"from": ha_name(*from), "to": ha_name(*to)}),
        ),
        Event::VerdictChanged { verdict } => (
            format!("this host's own verdict is now {verdict:?}"),
            json!({"verdict": format!("{verdict:?}").to_lowercase()}),
        ),
        Event::WouldFence { target, boot } => (
            format!(
                "observe mode: would have proposed a fence of {}",
                name(target)
            ),
            json!({"boot": boot.to_string()}),
        ),
        Event::Proposed { proposal } => (
            format!("proposed a fence of {}", name(&proposal.target)),
            json!({"proposal": proposal_json(proposal, roster)}),
        ),
        Event::RoundAbandoned { proposal, refusal } => (
            format!(
                "gave up a round on {} without a quorum{}",
                name(&proposal.target),
                refusal
                    .map(|r| format!(" (refused: {r:?})"))
                    .unwrap_or_default()
            ),
            json!({"proposal": proposal_json(proposal, roster), "refusal": refusal.map(|r| format!("{r:?}"))}),
        ),
        Event::Voted { proposal, verdict } => (
            format!(
                "voted for fencing {} (proposed by {})",
                name(&proposal.target),
                name(&proposal.proposer)
            ),
            json!({"proposal": proposal_json(proposal, roster), "verdict": format!("{verdict:?}").to_lowercase()}),
        ),
        Event::FenceStarted { qc, attempt } => (
            format!(
                "fencing {} (attempt {attempt}) with votes of {}",
                name(&qc.proposal.target),
                qc.votes
                    .iter()
                    .map(|v| name(&v.voter))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            json!({"attempt": attempt, "certificate": certificate_json(qc, roster)}),
        ),
        Event::CertificateSeen { qc } => (
            format!(
                "{} is fencing {} with votes of {}",
                name(&qc.proposal.proposer),
                name(&qc.proposal.target),
                qc.votes
                    .iter()
                    .map(|v| name(&v.voter))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            json!({"certificate": certificate_json(qc, roster)}),
        ),
        Event::LevelFailed {
            target,
            level: l,
            timed_out,
        } => (
            format!(
                "fence level {} {} for {}",
                level(l),
                if *timed_out { "timed out" } else { "failed" },
                name(target)
            ),
            json!({"level": level(l), "timed_out": timed_out}),
        ),
        Event::FenceConfirmed {
            target,
            boot,
            evidence,
        } => (
            format!(
                "{} is fenced: {}",
                name(target),
                evidence_text(evidence, levels)
            ),
            json!({"boot": boot.to_string(), "evidence": evidence_json(evidence, levels)}),
        ),
        Event::SafeToRecover {
            target,
            boot,
            evidence,
        } => (
            format!("{}'s VMs may be restarted elsewhere", name(target)),
            json!({"boot": boot.to_string(), "evidence": evidence_json(evidence, levels)}),
        ),
        Event::FenceFailed {
            target,
            boot,
            attempt,
            reason,
            retry_in,
        } => (
            format!(
                "fence of {} failed (attempt {attempt}, {reason:?}){}",
                name(target),
                match retry_in {
                    Some(d) => format!("; retry in {}", crate::config::fmt_duration(*d)),
                    None => "; attempts exhausted, an operator must act".into(),
                }
            ),
            json!({"boot": boot.to_string(), "attempt": attempt, "reason": format!("{reason:?}"),
                   "retry_in_ms": retry_in.map(|d| d.as_millis() as u64)}),
        ),
        Event::FenceAborted { target, reason } => (
            format!("fence of {} stopped: {reason:?}", name(target)),
            json!({"reason": format!("{reason:?}")}),
        ),
        Event::StormEntered { count, threshold } => (
            format!(
                "storm: {count} members down or unhealthy (threshold {threshold}); nobody is fenced"
            ),
            json!({"count": count, "threshold": threshold}),
        ),
        Event::StormLeft => ("storm over; fencing allowed again".into(), json!({})),
        Event::BudgetExhausted { target } => (
            format!(
                "fence budget spent: {} cannot be fenced until the window passes",
                name(target)
            ),
            json!({}),
        ),
        Event::SelfFenceRequested { action } => (
            format!("this host asks its peers' leave to self-fence ({action:?})"),
            json!({"action": format!("{action:?}")}),
        ),
        Event::SelfFenceBlocked { reason } => (
            format!("this host's self-fence is not happening: {reason:?}"),
            json!({"reason": format!("{reason:?}")}),
        ),
        Event::SelfFenceLogOnly => (
            "self_fence = log-only: this host would have asked to self-fence".into(),
            json!({}),
        ),
        Event::SelfFenceExecuted { action, reason } => (
            format!("this host is acting on itself: {action:?} ({reason:?})"),
            json!({"action": format!("{action:?}"), "reason": format!("{reason:?}")}),
        ),
        Event::StalePoisonPill => (
            "a poison pill from an earlier boot was found and cleared".into(),
            json!({}),
        ),
        Event::ForgedCertificate { from } => (
            format!(
                "a certificate or pill that does not verify was received{}; nothing was done",
                from.map(|f| format!(" from {}", name(&f)))
                    .unwrap_or_default()
            ),
            json!({"from": from.map(|f| name(&f))}),
        ),
        Event::WatchdogStopped { reason } => (
            format!("watchdog no longer fed: {reason:?}"),
            json!({"reason": format!("{reason:?}")}),
        ),
        Event::WatchdogResumed => ("watchdog fed again".into(), json!({})),
        Event::Rebooted { member, old, new } => (
            format!("{} rebooted", name(member)),
            json!({"old_boot": old.to_string(), "new_boot": new.to_string()}),
        ),
        Event::PowerChanged { member, state } => (
            format!("{} power is {state:?}", name(member)),
            json!({"power": format!("{state:?}").to_lowercase()}),
        ),
        Event::HostFoundOff { member } => (
            format!(
                "{} found powered off with no fence in flight (reported only)",
                name(member)
            ),
            json!({}),
        ),
        Event::ArmChanged { armed, by } => (
            format!(
                "cluster {} (by {})",
                if *armed { "armed" } else { "disarmed" },
                name(by)
            ),
            json!({"armed": armed, "by": name(by)}),
        ),
        Event::MaintenanceChanged { member, on, by } => (
            format!(
                "{} maintenance {} (by {})",
                name(member),
                if *on { "on" } else { "off" },
                name(by)
            ),
            json!({"on": on, "by": name(by)}),
        ),
        Event::FlagRefused { reason } => (
            format!("operator command refused: {reason}"),
            json!({"reason": reason}),
        ),
        Event::ManualFence { target, accepted } => (
            format!(
                "manual fence of {} {}",
                name(target),
                if *accepted {
                    "accepted (it still needs the quorum)"
                } else {
                    "refused"
                }
            ),
            json!({"accepted": accepted}),
        ),
        Event::SelfFenceRequestAnswered { answer } => (
            format!("local self-fence request: {}", answer_text(answer)),
            json!({"accepted": answer.accepted(), "answer": format!("{answer:?}")}),
        ),
        Event::EligibilityChanged { ineligible } => (
            match ineligible {
                None => "this host may propose and vote again".into(),
                Some(i) => format!("this host may not propose or vote: {i:?}"),
            },
            json!({"ineligible": ineligible.map(|i| format!("{i:?}"))}),
        ),
        Event::PillNotCleared { target } => (
            format!(
                "the poison pill in {}'s slot could not be cleared after ten tries; peerfence keeps trying every minute: check the shared storage (or remove HOST.pill by hand once the fence is over)",
                name(target)
            ),
            json!({}),
        ),
        Event::MemberLeft { member, generation } => (
            format!(
                "{}'s daemon was stopped cleanly (generation {generation}): peerfence no longer protects that host, and nobody fences it for its silence",
                name(member)
            ),
            json!({"generation": generation}),
        ),
        Event::MemberReturned { member, generation } => (
            format!(
                "{}'s daemon runs again (generation {generation})",
                name(member)
            ),
            json!({"generation": generation}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(log: &EventLog, n: usize) {
        for i in 0..n {
            log.publish("test", None, format!("e{i}"), json!({}));
        }
    }

    #[test]
    fn replay_is_bounded_and_ordered() {
        let log = EventLog::new("n1");
        ev(&log, EVENT_BUFFER + 10);
        let (first, next) = log.bounds();
        assert_eq!(first, 11);
        assert_eq!(next, EVENT_BUFFER as u64 + 11);
        let (old, _) = log.replay_and_subscribe(Some(EVENT_BUFFER as u64 + 5));
        let seqs: Vec<u64> = old.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (EVENT_BUFFER as u64 + 6..=EVENT_BUFFER as u64 + 10).collect::<Vec<_>>()
        );
        let (none, _) = log.replay_and_subscribe(None);
        assert!(none.is_empty());
    }

    #[test]
    fn subscription_continues_after_replay() {
        let log = EventLog::new("n1");
        ev(&log, 3);
        let (old, mut rx) = log.replay_and_subscribe(Some(1));
        assert_eq!(old.len(), 2);
        ev(&log, 1);
        assert_eq!(rx.try_recv().map(|e| e.seq).ok(), Some(4));
    }
}
