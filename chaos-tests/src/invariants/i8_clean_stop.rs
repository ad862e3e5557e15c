//! I8 — A host whose daemon was stopped cleanly is never fenced, except by an operator's
//! explicit fence.
//!
//! Why it must hold: a clean stop (`systemctl stop`, an upgrade whose new version fails to
//! start) is an operator's statement that peerfence no longer protects the host. Its VMs keep
//! running and its watchdog was closed, so nothing will ever reset it: silence from such a host is
//! not death. Fencing it powers off running VMs; confirming it by a deadline announces running
//! VMs safe to recover. Checked at every fence start and at every level that acts on the target
//! (an agent `off`, a poison pill): the target's daemon stopped cleanly and has not started since.
//! "Cleanly" is ground truth from the world: the daemon stopped and magic-closed its watchdog,
//! which it does only once its stop is known (A8). A daemon stopped while nobody could hear it
//! keeps its watchdog armed: its host is a silent host like a crashed one, and may be fenced.

use super::{Ctx, Found};
use peerfence_proto::{FenceKind, Proposal};

pub struct Check;

impl Check {
    pub fn on_action(&mut self, ctx: &Ctx, p: &Proposal, what: &str) -> Found {
        let t = p.target.index();
        let host = &ctx.hosts[t];
        if host.clean_stopped && host.vms_running && p.kind != FenceKind::Operator {
            vec![(
                "I8",
                format!(
                    "{what} of h{t}, whose daemon was stopped cleanly and whose VMs run (round {:?} of h{})",
                    p.round,
                    p.proposer.index()
                ),
            )]
        } else {
            Vec::new()
        }
    }
}
