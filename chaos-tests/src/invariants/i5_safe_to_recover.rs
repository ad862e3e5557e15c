//! I5 — "Safe to recover t" only after confirmation; when emitted, t's VMs are not running.
//!
//! Why it must hold: "safe to recover" is what makes the cloud start t's VMs elsewhere. If they
//! still run on t, two writers share one disk and its filesystem is destroyed (rgmanager's
//! double-mounted ext3, Nova's "shut off" VM that ran on). Checked against ground truth at the
//! instant of the announcement: t is off, was reset, or runs another boot.

use super::{Ctx, Found};
use peerfence_proto::BootId;

pub struct Check;

impl Check {
    pub fn check(&mut self, ctx: &Ctx, reporter: usize, target: usize, boot: BootId) -> Found {
        if ctx.hosts[target].vms_of(boot) {
            vec![(
                "I5",
                format!(
                    "h{reporter} announced h{target} ({boot:?}) safe to recover while its VMs run"
                ),
            )]
        } else {
            Vec::new()
        }
    }
}
