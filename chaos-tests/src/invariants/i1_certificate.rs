//! I1 — No fence starts without a valid quorum certificate from a strict majority of configured
//! members, all of them healthy when they voted.
//!
//! Why it must hold: a certificate is the only thing that proves a healthy majority agreed. A
//! fence started on anything less is exactly the mass-fencing failure (one host, or a minority
//! that lost its storage, deciding alone). Checked on every action taken under a certificate:
//! signatures verified here with ed25519 directly (not through the core), distinct configured
//! voters other than the target, at least a quorum, and each vote's voter healthy in ground
//! truth when it voted (storage not lost for longer than the time a node needs to notice).

use super::{Ctx, Found};
use ed25519_dalek::{Signature, VerifyingKey};
use peerfence::config::Config;
use peerfence_proto::{Proposal, QuorumCertificate, Verdict, vote_signing_bytes};
use std::collections::HashSet;

pub struct Check {
    /// Certificates already verified, with the digest of the configuration they verified under.
    verified: HashSet<(Proposal, u64)>,
}

/// The roster's keys, in id order.
fn keys(cfg: &Config) -> Vec<VerifyingKey> {
    cfg.roster
        .ids()
        .map(|m| {
            let key = cfg.roster.get(m).map(|i| i.vote_key.0).unwrap_or([0; 32]);
            VerifyingKey::from_bytes(&key).expect("roster keys are valid points")
        })
        .collect()
}

impl Check {
    pub fn new(_cfg: &Config) -> Self {
        Self {
            verified: HashSet::new(),
        }
    }

    pub fn check(&mut self, ctx: &Ctx, actor: usize, qc: &QuorumCertificate, what: &str) -> Found {
        // Against the configuration the actor runs: during a rolling change the roster (and
        // so the quorum) and the digest its voters signed under may differ from the first one.
        let cfg = ctx.host_cfg.get(actor).map_or(ctx.cfg, |c| &**c);
        let key = (qc.proposal, cfg.digest().0);
        if self.verified.contains(&key) {
            return Vec::new();
        }
        match self.verify(ctx, cfg, qc) {
            Ok(()) => {
                self.verified.insert(key);
                Vec::new()
            }
            Err(e) => vec![(
                "I1",
                format!(
                    "h{actor} acted ({what}) on certificate {:?}: {e}",
                    qc.proposal
                ),
            )],
        }
    }

    fn verify(&self, ctx: &Ctx, cfg: &Config, qc: &QuorumCertificate) -> Result<(), String> {
        let p = &qc.proposal;
        let n = cfg.n();
        let keys = keys(cfg);
        if p.target.index() >= n || p.proposer.index() >= n {
            return Err("target or proposer not configured".into());
        }
        let mut seen = HashSet::new();
        // How long a node may take to notice its own storage is gone, plus a read interval.
        let detect = Ctx::us(ctx.cfg.storage_failed_detect() + ctx.cfg.storage.heartbeat_interval);
        for v in &qc.votes {
            let i = v.voter.index();
            if i >= n {
                return Err(format!("voter {} not configured", v.voter));
            }
            if v.voter == p.target {
                return Err("the target voted".into());
            }
            if !seen.insert(i) {
                return Err(format!("voter {} counted twice", v.voter));
            }
            if !v.evidence.voter_healthy {
                return Err(format!(
                    "vote of {} does not state a healthy voter",
                    v.voter
                ));
            }
            let bytes = vote_signing_bytes(&cfg.cluster, cfg.digest(), p, v.voter, &v.evidence);
            let sig = Signature::from_bytes(&v.signature.to_bytes());
            keys[i]
                .verify_strict(&bytes, &sig)
                .map_err(|_| format!("signature of {} does not verify", v.voter))?;
            match ctx.votes.get(&(i, *p)) {
                None => return Err(format!("vote of {} was never emitted by its node", v.voter)),
                Some(rec) => {
                    if rec.verdict != Verdict::Healthy {
                        return Err(format!(
                            "{} voted while its verdict was {:?}",
                            v.voter, rec.verdict
                        ));
                    }
                    if let Some(lost) = rec.storage_lost_since
                        && rec.at.saturating_sub(lost) > detect
                    {
                        return Err(format!(
                            "{} voted {} ms after losing its storage (bound {} ms)",
                            v.voter,
                            (rec.at - lost) / 1000,
                            detect / 1000
                        ));
                    }
                }
            }
        }
        let q = cfg.quorum();
        if seen.len() < q {
            return Err(format!("{} votes, quorum is {q}", seen.len()));
        }
        Ok(())
    }
}
