//! I4 — At most one fence in flight per target; fences in any budget window ≤ the budget.
//!
//! Why it must hold: two executors on one target race each other's power commands and double
//! the blast radius of a mistake; and a cascade (each reboot moving load that times out the next
//! host) is only stopped by a hard budget. An attempt is in flight from its start until its
//! executor reports its end, or, if the executor dies first, until the attempt's deadline (the
//! agent it launched is killed by then). Budget: distinct target boots fenced (or VM-stopping
//! self-fenced) within any window of `budget_window − promise_ttl` (a vote may precede its
//! fence by up to a promise lifetime) never exceed `budget`.

use super::{Ctx, Found};
use peerfence_proto::{BootId, Proposal};
use std::collections::HashMap;

/// One attempt: executor, proposal, start, end (once known).
type Attempt = (usize, Proposal, u64, Option<u64>);

#[derive(Default)]
pub struct Check {
    /// Attempts per target.
    inflight: HashMap<usize, Vec<Attempt>>,
    /// first start per (target, boot)
    spent: HashMap<(usize, BootId), u64>,
}

impl Check {
    pub fn on_start(&mut self, ctx: &Ctx, executor: usize, p: &Proposal, _attempt: u16) -> Found {
        let mut found = Vec::new();
        let target = p.target.index();
        let list = self.inflight.entry(target).or_default();
        for (other, op, start, end) in list.iter() {
            if end.is_none_or(|e| e > ctx.now) && op != p {
                found.push((
                    "I4",
                    format!(
                        "two fences in flight on h{target}: h{executor} starts {:?} while h{other}'s {:?} (started {} ms ago) runs",
                        p.round, op.round, (ctx.now - start) / 1000
                    ),
                ));
            }
        }
        list.push((executor, *p, ctx.now, None));
        found.extend(self.spend(ctx, target, p.target_boot));
        found
    }

    pub fn on_self_fence(&mut self, ctx: &Ctx, p: &Proposal) -> Found {
        self.spend(ctx, p.target.index(), p.target_boot)
    }

    fn spend(&mut self, ctx: &Ctx, target: usize, boot: BootId) -> Found {
        self.spent.entry((target, boot)).or_insert(ctx.now);
        let window =
            Ctx::us(ctx.cfg.fencing.budget_window).saturating_sub(Ctx::us(ctx.cfg.promise_ttl()));
        let in_window = self
            .spent
            .values()
            .filter(|&&t| t + window > ctx.now)
            .count();
        let budget = usize::from(ctx.cfg.fencing.budget.get());
        if in_window > budget {
            vec![(
                "I4",
                format!("{in_window} fences within one budget window, budget is {budget}"),
            )]
        } else {
            Vec::new()
        }
    }

    pub fn on_end(&mut self, ctx: &Ctx, executor: usize, target: usize) {
        if let Some(list) = self.inflight.get_mut(&target) {
            for e in list.iter_mut().filter(|e| e.0 == executor && e.3.is_none()) {
                e.3 = Some(ctx.now);
            }
        }
    }

    pub fn on_executor_gone(&mut self, ctx: &Ctx, host: usize) {
        let max = Ctx::us(ctx.cfg.attempt_max());
        for list in self.inflight.values_mut() {
            for e in list.iter_mut().filter(|e| e.0 == host && e.3.is_none()) {
                e.3 = Some(e.2 + max);
            }
        }
    }
}
