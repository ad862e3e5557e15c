//! Fence history for `GET /v1/fences`: one entry per fence round this daemon took part in or
//! heard of, with its quorum certificate (who voted, with which evidence), the levels that
//! failed, and how it ended. Built from the core's events, at most [`HISTORY_MAX`] entries
//! (oldest dropped), and seeded at start from the durable log of fences this host executed, so
//! a restart does not forget them.

use super::events::{certificate_json, evidence_json, proposal_json};
use crate::config::Roster;
use crate::durable::FenceRecord;
use crate::node::Event;
use peerfence_proto::{MemberId, OutcomeResult, Proposal, QuorumCertificate};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::VecDeque;

/// Entries kept.
pub const HISTORY_MAX: usize = 128;

/// One fence round.
#[derive(Debug, Clone, Serialize)]
pub struct FenceEntry {
    /// The target host.
    pub target: String,
    /// Its fenced boot.
    pub target_boot: String,
    /// Who proposed (and executes) it.
    pub proposer: String,
    /// Whether this daemon executed it.
    pub executed_here: bool,
    /// Attempt number, when executed here.
    pub attempt: Option<u16>,
    /// The quorum certificate (`null` when this daemon only voted and never saw it).
    pub certificate: Option<Value>,
    /// The proposal.
    pub proposal: Value,
    /// `"voted"`, `"in_flight"`, `"confirmed"`, `"failed"` or `"aborted"`.
    pub state: &'static str,
    /// Levels that failed, in order (`{"level", "timed_out"}`).
    pub levels_failed: Vec<Value>,
    /// The confirmation evidence.
    pub confirmation: Option<Value>,
    /// Why it failed or was stopped.
    pub reason: Option<String>,
    /// Wall-clock time this daemon first heard of it (RFC 3339).
    pub first_seen: String,
    /// Wall-clock time of the last change.
    pub updated: String,
    /// `safe_to_recover` was emitted for it.
    pub safe_to_recover: bool,
    #[serde(skip)]
    key: (MemberId, peerfence_proto::BootId, MemberId),
}

/// The bounded history.
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<FenceEntry>,
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl History {
    /// Seeds from the durable log of fences executed on this host.
    pub fn seed(&mut self, log: &VecDeque<FenceRecord>, roster: &Roster, levels: &[String]) {
        for r in log {
            let e = self.entry(&r.qc.proposal, roster, "in_flight");
            e.executed_here = true;
            e.attempt = Some(r.attempt);
            e.certificate = Some(certificate_json(&r.qc, roster));
            e.first_seen = "before the last restart".into();
            e.updated = e.first_seen.clone();
            match r.outcome {
                Some(OutcomeResult::Confirmed(ev)) => {
                    e.state = "confirmed";
                    e.confirmation = Some(evidence_json(&ev, levels));
                }
                Some(OutcomeResult::Failed(f)) => {
                    e.state = "failed";
                    e.reason = Some(format!("{f:?}"));
                }
                Some(OutcomeResult::Aborted(a)) => {
                    e.state = "aborted";
                    e.reason = Some(format!("{a:?}"));
                }
                // Running when the daemon stopped: the core ends it on its own.
                None => e.state = "interrupted",
            }
        }
    }

    fn entry(&mut self, p: &Proposal, roster: &Roster, state: &'static str) -> &mut FenceEntry {
        let key = (p.target, p.target_boot, p.proposer);
        if let Some(i) = self.entries.iter().position(|e| e.key == key) {
            let e = &mut self.entries[i];
            e.updated = now();
            return e;
        }
        if self.entries.len() == HISTORY_MAX {
            self.entries.pop_front();
        }
        let t = now();
        self.entries.push_back(FenceEntry {
            target: roster.name(p.target).to_owned(),
            target_boot: p.target_boot.to_string(),
            proposer: roster.name(p.proposer).to_owned(),
            executed_here: false,
            attempt: None,
            certificate: None,
            proposal: proposal_json(p, roster),
            state,
            levels_failed: Vec::new(),
            confirmation: None,
            reason: None,
            first_seen: t.clone(),
            updated: t,
            safe_to_recover: false,
            key,
        });
        self.entries.back_mut().expect("just pushed")
    }

    /// The latest entry for `target` (the one events without a proposal refer to).
    fn latest(&mut self, target: MemberId) -> Option<&mut FenceEntry> {
        let e = self.entries.iter_mut().rev().find(|e| e.key.0 == target)?;
        e.updated = now();
        Some(e)
    }

    fn certified(&mut self, qc: &QuorumCertificate, roster: &Roster) -> &mut FenceEntry {
        let e = self.entry(&qc.proposal, roster, "in_flight");
        e.certificate = Some(certificate_json(qc, roster));
        if e.state == "voted" {
            e.state = "in_flight";
        }
        e
    }

    /// Updates the history from one core event.
    pub fn on_event(&mut self, ev: &Event, roster: &Roster, levels: &[String]) {
        let level_name = |l: u8| levels.get(usize::from(l)).cloned();
        match ev {
            Event::Voted { proposal, .. } => {
                self.entry(proposal, roster, "voted");
            }
            Event::FenceStarted { qc, attempt } => {
                let e = self.certified(qc, roster);
                e.executed_here = true;
                e.attempt = Some(*attempt);
                e.state = "in_flight";
            }
            Event::CertificateSeen { qc } => {
                self.certified(qc, roster);
            }
            Event::LevelFailed {
                target,
                level,
                timed_out,
            } => {
                if let Some(e) = self.latest(*target) {
                    e.levels_failed
                        .push(json!({"level": level_name(*level), "timed_out": timed_out}));
                }
            }
            Event::FenceConfirmed {
                target, evidence, ..
            } => {
                if let Some(e) = self.latest(*target) {
                    e.state = "confirmed";
                    e.confirmation = Some(evidence_json(evidence, levels));
                }
            }
            Event::SafeToRecover { target, .. } => {
                if let Some(e) = self.latest(*target) {
                    e.safe_to_recover = true;
                }
            }
            Event::FenceFailed { target, reason, .. } => {
                if let Some(e) = self.latest(*target) {
                    e.state = "failed";
                    e.reason = Some(format!("{reason:?}"));
                }
            }
            Event::FenceAborted { target, reason } => {
                if let Some(e) = self.latest(*target) {
                    e.state = "aborted";
                    e.reason = Some(format!("{reason:?}"));
                }
            }
            _ => {}
        }
    }

    /// Newest first.
    pub fn list(&self) -> Vec<FenceEntry> {
        self.entries.iter().rev().cloned().collect()
    }
}
