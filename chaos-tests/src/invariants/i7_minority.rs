//! I7 — A minority partition never executes a fence.
//!
//! Why it must hold: in a split, the minority cannot tell "the others died" from "I am cut off";
//! if it fenced, both sides could fence each other. Checked at every fence start and quorum
//! self-fence: the actor's network partition (hosts mutually reachable, ground truth) holds a
//! quorum of configured members, unless the partition is younger than one proposal timeout (a
//! certificate gathered just before the split may still be used).

use super::{Ctx, Found};

pub struct Check;

impl Check {
    pub fn on_action(&mut self, ctx: &Ctx, actor: usize, what: &str) -> Found {
        let up = vec![true; ctx.hosts.len()];
        let comp = ctx.net.component(actor, &up);
        let grace = Ctx::us(ctx.cfg.fencing.proposal_timeout + ctx.cfg.fencing.retransmit_interval);
        let q = ctx
            .host_cfg
            .get(actor)
            .map_or(ctx.cfg.quorum(), |c| c.quorum());
        if comp.len() < q && ctx.now >= ctx.net.changed_at + grace {
            vec![(
                "I7",
                format!(
                    "h{actor} executed a {what} from a partition of {} (quorum {})",
                    comp.len(),
                    q
                ),
            )]
        } else {
            Vec::new()
        }
    }
}
