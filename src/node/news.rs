//! Anti-entropy for fences: a member that starts, restarts or comes back learns every fence of
//! the current budget window that it missed — the certificate and, when known, the outcome —
//! from each peer it sees come alive. Without it, a voter killed during a round kept the fenced
//! host in `Checking`, proposed it again and again, and counted a different budget than its
//! peers. A member that lost its state also takes its peers' budget reservations, and votes
//! again only once it has heard enough of them (see [`Node::recovering`]).
//!
//! News is bounded: at most [`peerfence_proto::NEWS_ITEMS_MAX`] certificates a message and
//! [`peerfence_proto::NEWS_PARTS_MAX`] messages a batch, no more than the node keeps
//! ([`crate::durable::NEWS_MAX`]).

use super::{Event, Node};
use peerfence_proto::{
    FenceNews, MemberId, Message, NEWS_ITEMS_MAX, NEWS_PARTS_MAX, NEWS_SLOTS_MAX, OutcomeResult,
    SignedFenceNews, SignedNewsItem,
};

/// What this node received of one peer's latest batch.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Heard {
    batch: u64,
    /// Bit i: part i received.
    parts_seen: u32,
    /// A whole batch from this peer arrived since this node started.
    pub complete: bool,
}

impl Node {
    /// Sends `to` every fence this node knows in the budget window, and its reservations.
    pub(super) fn send_news(&mut self, to: MemberId) {
        if to == self.me || !self.cfg.roster.contains(to) {
            return;
        }
        self.news_batch = self.news_batch.wrapping_add(1);
        let batch = (u64::from(self.me.0) << 48) ^ self.news_batch;
        // An outcome goes out only as its executor signed it; one this node knows but holds no
        // signature for (kept by a build before outcomes were signed) goes out as unknown.
        let items: Vec<SignedNewsItem> = self
            .durable
            .news
            .iter()
            .rev()
            .take(NEWS_ITEMS_MAX * usize::from(NEWS_PARTS_MAX))
            .map(|n| SignedNewsItem {
                qc: n.qc.clone(),
                outcome: n
                    .outcome
                    .and_then(|_| self.durable.proof_of(&n.qc.proposal)),
            })
            .collect();
        let slots: Vec<_> = self
            .durable
            .slots
            .iter()
            .take(NEWS_SLOTS_MAX)
            .map(|s| (s.slot, s.target, s.target_boot))
            .collect();
        let chunks: Vec<Vec<SignedNewsItem>> = if items.is_empty() {
            vec![Vec::new()]
        } else {
            items.chunks(NEWS_ITEMS_MAX).map(<[_]>::to_vec).collect()
        };
        let parts = chunks.len() as u8;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let news = SignedFenceNews {
                batch,
                part: i as u8,
                parts,
                items: chunk,
                slots: if i == 0 { slots.clone() } else { Vec::new() },
            };
            self.send(to, Message::SignedFenceNews(news), true);
        }
    }

    /// News from a build before outcomes were signed: its certificates count (each verified),
    /// its unsigned outcomes do not (the fence is taken as possibly still running).
    pub(super) fn on_legacy_fence_news(&mut self, from: MemberId, news: FenceNews) {
        let items = news
            .items
            .into_iter()
            .map(|i| {
                if i.outcome.is_some() {
                    self.stats.drop("unsigned_outcome");
                }
                SignedNewsItem {
                    qc: i.qc,
                    outcome: None,
                }
            })
            .collect();
        let news = SignedFenceNews {
            batch: news.batch,
            part: news.part,
            parts: news.parts,
            items,
            slots: news.slots,
        };
        self.on_fence_news(from, news);
    }

    pub(super) fn on_fence_news(&mut self, from: MemberId, news: SignedFenceNews) {
        for item in news.items {
            if self.keys.verify_certificate(&item.qc).is_err() {
                self.stats.drop("bad_news_certificate");
                continue;
            }
            // A relayed outcome counts only as its executor signed it (the decoder checked that
            // it names the certificate's proposal).
            let outcome = match item.outcome {
                Some(signed) if self.keys.verify_outcome(&signed).is_ok() => Some(signed),
                Some(_) => {
                    self.stats.drop("bad_outcome_signature");
                    None
                }
                None => None,
            };
            self.learn_fence(&item.qc, outcome.map(|o| o.outcome.result));
            if let Some(signed) = outcome
                && self.durable.news_proof(&signed)
            {
                self.dirty = true;
            }
        }
        if self.durable.votes_need_news {
            // This node lost its state: whatever its peers reserved, it may have reserved too.
            for (slot, target, boot) in news.slots {
                if slot < self.cfg.fencing.budget.get() && self.cfg.roster.contains(target) {
                    self.durable
                        .reserve_slot(slot, target, boot, self.now, true);
                    self.dirty = true;
                }
            }
        }
        let h = &mut self.news_heard[from.index()];
        if h.batch != news.batch {
            h.batch = news.batch;
            h.parts_seen = 0;
        }
        h.parts_seen |= 1 << news.part;
        if h.parts_seen.count_ones() >= u32::from(news.parts) {
            h.complete = true;
        }
        let heard = self.news_heard.iter().filter(|h| h.complete).count();
        if self.durable.votes_need_news && heard >= self.news_needed() {
            self.durable.votes_need_news = false;
            self.dirty = true;
        }
        self.persist();
    }

    /// Peers whose news a member that lost its state must hear: then at least one of them voted
    /// for any certificate of the window (a certificate's q voters, less this member, and these
    /// peers cannot be disjoint among the n − 1 others).
    pub(super) fn news_needed(&self) -> usize {
        self.cfg.n() - self.cfg.quorum() + 1
    }

    /// A verified certificate of a fence that started (from the news or the network): its slot
    /// is spent, and, when its outcome is known, the target's state follows it.
    pub(super) fn learn_fence(
        &mut self,
        qc: &peerfence_proto::QuorumCertificate,
        outcome: Option<OutcomeResult>,
    ) {
        let p = qc.proposal;
        if !p.kind.stops_vms() {
            return;
        }
        if self.durable.record_news(qc, self.now) {
            self.dirty = true;
            if let Some(s) = p.budget_slot {
                self.durable
                    .reserve_slot(s, p.target, p.target_boot, self.now, true);
            }
            self.emit(Event::CertificateSeen {
                qc: std::sync::Arc::new(qc.clone()),
            });
        }
        let Some(result) = outcome else {
            // It may still run: no second fence of that boot, here or by this node's vote,
            // until it must be over.
            let t = p.target;
            if t != self.me && self.peers[t.index()].inflight.is_none() {
                let until = self.now + self.cfg.attempt_max() + self.cfg.fencing.confirm_margin * 2;
                self.peers[t.index()].inflight = Some(super::peer::Inflight {
                    proposal: p,
                    seen_at: self.now,
                    until,
                });
            }
            return;
        };
        if self.durable.news_outcome(&p, result) {
            self.dirty = true;
        }
        let t = p.target;
        if t == self.me {
            return;
        }
        match result {
            OutcomeResult::Confirmed(evidence) => {
                // Only about the boot this node knows the host in (a host that rebooted since
                // is another story).
                if self.peers[t.index()]
                    .boot
                    .is_none_or(|b| b == p.target_boot)
                {
                    if self.peers[t.index()].boot.is_none() {
                        self.peers[t.index()].boot = Some(p.target_boot);
                    }
                    self.confirmed(t, p.target_boot, evidence);
                }
            }
            OutcomeResult::Failed(_) | OutcomeResult::Aborted(_) => {}
        }
    }
}
