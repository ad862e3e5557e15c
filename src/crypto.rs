//! Vote signatures and quorum certificates.
//!
//! Each member holds one ed25519 key; its public half is in the roster. A vote signs
//! [`peerfence_proto::vote_signing_bytes`] (context tag, cluster, config digest, proposal, voter,
//! evidence), so a vote can never be replayed into another cluster, another configuration or
//! another proposal. [`KeyRing::verify_certificate`] is the single check that every fence command,
//! every received certificate and every poison pill passes.

use crate::config::{Config, Roster};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use peerfence_proto::{
    ClusterId, ConfigDigest, FenceKind, FenceOutcome, HealthUpdate, MemberId, Proposal, PublicKey,
    QuorumCertificate, Signature, SignedHealth, SignedOutcome, SignedVote, VoteEvidence,
    health_signing_bytes, outcome_signing_bytes, vote_signing_bytes,
};
use std::fmt;

/// This member's private vote key. Its `Debug` never shows the secret.
pub struct VoteKey(SigningKey);

impl VoteKey {
    /// A key from its 32-byte secret.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&secret))
    }

    /// The public half, as written in the roster.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs a vote.
    pub fn sign(
        &self,
        cluster: &ClusterId,
        digest: ConfigDigest,
        proposal: &Proposal,
        voter: MemberId,
        evidence: &VoteEvidence,
    ) -> Signature {
        let bytes = vote_signing_bytes(cluster, digest, proposal, voter, evidence);
        Signature::from_bytes(self.0.sign(&bytes).to_bytes())
    }
}

impl VoteKey {
    /// Signs an outcome of a fence this member executed.
    pub fn sign_outcome(
        &self,
        cluster: &ClusterId,
        digest: ConfigDigest,
        outcome: FenceOutcome,
    ) -> SignedOutcome {
        let bytes = outcome_signing_bytes(cluster, digest, &outcome);
        SignedOutcome {
            outcome,
            signature: Signature::from_bytes(self.0.sign(&bytes).to_bytes()),
        }
    }

    /// Signs this member's own health update.
    pub fn sign_health(
        &self,
        cluster: &ClusterId,
        digest: ConfigDigest,
        health: HealthUpdate,
    ) -> SignedHealth {
        let bytes = health_signing_bytes(cluster, digest, &health);
        SignedHealth {
            health,
            signature: Signature::from_bytes(self.0.sign(&bytes).to_bytes()),
        }
    }
}

impl fmt::Debug for VoteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VoteKey(public {:?}, secret redacted)", self.public())
    }
}

/// Why a vote or certificate does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Fewer distinct valid votes than a quorum of configured members.
    #[error("certificate has {got} votes, a quorum is {need}")]
    TooFewVotes {
        /// Votes present.
        got: usize,
        /// Quorum.
        need: usize,
    },
    /// The same member voted twice.
    #[error("member {0} appears twice")]
    DuplicateVoter(MemberId),
    /// A voter that is not configured.
    #[error("voter {0} is not a configured member")]
    UnknownVoter(MemberId),
    /// Target or proposer not configured.
    #[error("target or proposer is not a configured member")]
    UnknownMember,
    /// The target voted on its own fence.
    #[error("the target {0} cannot vote on its own fence")]
    TargetVoted(MemberId),
    /// A signature does not verify.
    #[error("signature of {0} does not verify")]
    BadSignature(MemberId),
    /// A vote does not state that its voter was healthy.
    #[error("vote of {0} does not state a healthy voter")]
    VoterNotHealthy(MemberId),
    /// Proposal fields out of range for this configuration.
    #[error("proposal is out of range for this configuration (budget slot or lane)")]
    OutOfRange,
}

/// The roster's verification keys, decoded once.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Option<VerifyingKey>>,
    cluster: ClusterId,
    digest: ConfigDigest,
    quorum: usize,
    budget: u8,
    lanes: u8,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyRing({} keys, quorum {})",
            self.keys.len(),
            self.quorum
        )
    }
}

impl KeyRing {
    /// Decodes the roster's keys (validated config guarantees they decode).
    pub fn new(config: &Config) -> Self {
        Self {
            keys: keys_of(&config.roster),
            cluster: config.cluster.clone(),
            digest: config.digest(),
            quorum: config.quorum(),
            budget: config.fencing.budget.get(),
            lanes: config.fencing.max_concurrent.get(),
        }
    }

    /// Checks proposal fields against this configuration.
    pub fn check_proposal(&self, p: &Proposal) -> Result<(), CertError> {
        if p.target.index() >= self.keys.len() || p.proposer.index() >= self.keys.len() {
            return Err(CertError::UnknownMember);
        }
        if p.lane >= self.lanes || p.budget_slot.is_some_and(|s| s >= self.budget) {
            return Err(CertError::OutOfRange);
        }
        if p.budget_slot.is_none() && p.kind.stops_vms() {
            return Err(CertError::OutOfRange);
        }
        if matches!(p.kind, FenceKind::SelfFence(_)) && p.target != p.proposer {
            return Err(CertError::OutOfRange);
        }
        Ok(())
    }

    /// Verifies one vote for `proposal`.
    pub fn verify_vote(&self, proposal: &Proposal, vote: &SignedVote) -> Result<(), CertError> {
        let Some(Some(key)) = self.keys.get(vote.voter.index()) else {
            return Err(CertError::UnknownVoter(vote.voter));
        };
        if vote.voter == proposal.target {
            return Err(CertError::TargetVoted(vote.voter));
        }
        if !vote.evidence.voter_healthy {
            return Err(CertError::VoterNotHealthy(vote.voter));
        }
        let bytes = vote_signing_bytes(
            &self.cluster,
            self.digest,
            proposal,
            vote.voter,
            &vote.evidence,
        );
        let sig = ed25519_dalek::Signature::from_bytes(&vote.signature.to_bytes());
        key.verify_strict(&bytes, &sig)
            .map_err(|_| CertError::BadSignature(vote.voter))
    }

    /// Verifies a quorum certificate: proposal in range, at least a quorum of distinct configured
    /// voters other than the target, each signature valid and each stating a healthy voter.
    pub fn verify_certificate(&self, qc: &QuorumCertificate) -> Result<(), CertError> {
        self.check_proposal(&qc.proposal)?;
        let mut seen = vec![false; self.keys.len()];
        for vote in &qc.votes {
            let slot = seen
                .get_mut(vote.voter.index())
                .ok_or(CertError::UnknownVoter(vote.voter))?;
            if *slot {
                return Err(CertError::DuplicateVoter(vote.voter));
            }
            *slot = true;
            self.verify_vote(&qc.proposal, vote)?;
        }
        if qc.votes.len() < self.quorum {
            return Err(CertError::TooFewVotes {
                got: qc.votes.len(),
                need: self.quorum,
            });
        }
        Ok(())
    }
}

impl KeyRing {
    /// Verifies an outcome: its proposal in range, signed by that proposal's proposer (the only
    /// member that executes it). Whoever relayed it, only the executor can have made it.
    pub fn verify_outcome(&self, signed: &SignedOutcome) -> Result<(), CertError> {
        let proposal = &signed.outcome.proposal;
        self.check_proposal(proposal)?;
        let Some(Some(key)) = self.keys.get(proposal.proposer.index()) else {
            return Err(CertError::UnknownMember);
        };
        let bytes = outcome_signing_bytes(&self.cluster, self.digest, &signed.outcome);
        let sig = ed25519_dalek::Signature::from_bytes(&signed.signature.to_bytes());
        key.verify_strict(&bytes, &sig)
            .map_err(|_| CertError::BadSignature(proposal.proposer))
    }

    /// Verifies a health update: signed by the member it describes.
    pub fn verify_health(&self, signed: &SignedHealth) -> Result<(), CertError> {
        let m = signed.health.member;
        let Some(Some(key)) = self.keys.get(m.index()) else {
            return Err(CertError::UnknownMember);
        };
        let bytes = health_signing_bytes(&self.cluster, self.digest, &signed.health);
        let sig = ed25519_dalek::Signature::from_bytes(&signed.signature.to_bytes());
        key.verify_strict(&bytes, &sig)
            .map_err(|_| CertError::BadSignature(m))
    }
}

fn keys_of(roster: &Roster) -> Vec<Option<VerifyingKey>> {
    roster
        .ids()
        .map(|id| {
            roster
                .get(id)
                .and_then(|m| VerifyingKey::from_bytes(&m.vote_key.0).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw_for_members;
    use peerfence_proto::{BootId, Round};

    fn setup(n: usize) -> (Config, Vec<VoteKey>) {
        let keys: Vec<VoteKey> = (0..n)
            .map(|i| VoteKey::from_secret([i as u8 + 1; 32]))
            .collect();
        let members: Vec<(String, PublicKey)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("h{i}"), k.public()))
            .collect();
        let cfg = raw_for_members("test", &members).validate().unwrap();
        (cfg, keys)
    }

    fn proposal() -> Proposal {
        Proposal {
            target: MemberId(4),
            target_boot: BootId([9; 16]),
            proposer: MemberId(0),
            round: Round::new(1, 1),
            kind: FenceKind::Fence,
            budget_slot: Some(0),
            lane: 0,
        }
    }

    fn vote(cfg: &Config, key: &VoteKey, voter: u16, p: &Proposal) -> SignedVote {
        let evidence = VoteEvidence {
            voter_healthy: true,
            target_down_ms: 4000,
            heartbeat_stalled_ms: 6000,
        };
        SignedVote {
            voter: MemberId(voter),
            evidence,
            signature: key.sign(&cfg.cluster, cfg.digest(), p, MemberId(voter), &evidence),
        }
    }

    #[test]
    fn quorum_of_valid_votes_verifies() {
        let (cfg, keys) = setup(5);
        let ring = KeyRing::new(&cfg);
        let p = proposal();
        let qc = QuorumCertificate {
            proposal: p,
            votes: (0..3).map(|i| vote(&cfg, &keys[i], i as u16, &p)).collect(),
        };
        assert_eq!(ring.verify_certificate(&qc), Ok(()));
    }

    #[test]
    fn every_broken_certificate_is_named() {
        let (cfg, keys) = setup(5);
        let ring = KeyRing::new(&cfg);
        let p = proposal();
        let good: Vec<SignedVote> = (0..3).map(|i| vote(&cfg, &keys[i], i as u16, &p)).collect();

        let short = QuorumCertificate {
            proposal: p,
            votes: good[..2].to_vec(),
        };
        assert_eq!(
            ring.verify_certificate(&short),
            Err(CertError::TooFewVotes { got: 2, need: 3 })
        );

        let dup = QuorumCertificate {
            proposal: p,
            votes: vec![good[0].clone(), good[1].clone(), good[1].clone()],
        };
        assert_eq!(
            ring.verify_certificate(&dup),
            Err(CertError::DuplicateVoter(MemberId(1)))
        );

        let mut forged = good.clone();
        forged[2].voter = MemberId(3); // signed by member 2, claimed by member 3
        let qc = QuorumCertificate {
            proposal: p,
            votes: forged,
        };
        assert_eq!(
            ring.verify_certificate(&qc),
            Err(CertError::BadSignature(MemberId(3)))
        );

        let mut other = p;
        other.target = MemberId(3);
        let moved = QuorumCertificate {
            proposal: other,
            votes: good.clone(),
        };
        assert!(matches!(
            ring.verify_certificate(&moved),
            Err(CertError::BadSignature(_))
        ));

        let by_target = QuorumCertificate {
            proposal: p,
            votes: vec![
                good[0].clone(),
                good[1].clone(),
                vote(&cfg, &keys[4], 4, &p),
            ],
        };
        assert_eq!(
            ring.verify_certificate(&by_target),
            Err(CertError::TargetVoted(MemberId(4)))
        );

        let mut stranger = good.clone();
        stranger[0].voter = MemberId(9);
        let qc = QuorumCertificate {
            proposal: p,
            votes: stranger,
        };
        assert_eq!(
            ring.verify_certificate(&qc),
            Err(CertError::UnknownVoter(MemberId(9)))
        );

        let mut wide = p;
        wide.lane = 9;
        assert_eq!(ring.check_proposal(&wide), Err(CertError::OutOfRange));
    }

    #[test]
    fn votes_do_not_cross_clusters() {
        let (cfg, keys) = setup(5);
        let p = proposal();
        let votes: Vec<SignedVote> = (0..3).map(|i| vote(&cfg, &keys[i], i as u16, &p)).collect();
        // Same keys, another cluster name: another digest and cluster in the signed bytes.
        let members: Vec<(String, PublicKey)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("h{i}"), k.public()))
            .collect();
        let other = raw_for_members("other", &members).validate().unwrap();
        let qc = QuorumCertificate { proposal: p, votes };
        assert!(KeyRing::new(&other).verify_certificate(&qc).is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = VoteKey::from_secret([0x42; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains("4242"));
    }
}
