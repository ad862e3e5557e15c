//! I2 — No fence of a host that was, in ground truth, alive and writing its heartbeat.
//!
//! Why it must hold: a host that keeps writing its heartbeat is running; fencing it kills healthy
//! VMs (the LINSTOR/DRBD cascade started exactly like that). Voters need the heartbeat stopped
//! for `activity_timeout` on their own clocks, so at a fence start the target cannot have been
//! writing steadily. "Steadily" is three or more successful writes within the last
//! `activity_timeout`: a host whose storage came back a moment before the fence (one write, seen
//! by nobody yet) is a race the design accepts; a steady writer is a bug. Writes that hung
//! through an outage and land together when the path answers again are not counted (the world
//! records only writes issued while the path worked): they say the storage is back, not that
//! the host was writing; seed 1705 of `random` counted four of them as "steady".

use super::{Ctx, Found};

pub struct Check;

impl Check {
    pub fn on_fence(&mut self, ctx: &Ctx, target: usize, what: &str) -> Found {
        let window = Ctx::us(ctx.cfg.storage.activity_timeout);
        let recent = ctx.hosts[target]
            .writes
            .iter()
            .filter(|&&t| t + window > ctx.now)
            .count();
        if recent >= 3 {
            vec![(
                "I2",
                format!(
                    "{what} of h{target} while it was writing its heartbeat ({recent} writes in the last {} ms)",
                    window / 1000
                ),
            )]
        } else {
            Vec::new()
        }
    }
}
