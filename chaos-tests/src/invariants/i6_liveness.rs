//! I6 (liveness) — A crashed host whose BMC works, with a healthy majority left, is fenced and
//! confirmed within the bound its scenario states.
//!
//! Why it must hold: safety alone is easy (never fence anyone); the product exists so that a
//! dead host's VMs come back quickly. Checked at the end of the run for every crash the scenario
//! declared with a bound: some node confirmed the crashed boot within that bound.

use super::{Ctx, Found};
use crate::world::RunResult;

pub struct Check;

impl Check {
    pub fn finish(&mut self, ctx: &Ctx, r: &RunResult) -> Found {
        let mut found = Vec::new();
        for c in &r.crashes {
            let Some(bound) = c.bound_us else { continue };
            if ctx.now < c.at + bound {
                found.push((
                    "I6",
                    format!(
                        "run ended before the bound of h{}'s crash elapsed (scenario too short)",
                        c.host
                    ),
                ));
                continue;
            }
            match r.confirmations.get(&(c.host, c.boot)) {
                Some((at, _)) if *at <= c.at + bound => {}
                Some((at, ev)) => found.push((
                    "I6",
                    format!(
                        "h{} confirmed ({ev:?}) {} ms after its crash, bound {} ms",
                        c.host,
                        (at - c.at) / 1000,
                        bound / 1000
                    ),
                )),
                None => found.push((
                    "I6",
                    format!(
                        "h{} crashed at {} ms and was never confirmed fenced (bound {} ms)",
                        c.host,
                        c.at / 1000,
                        bound / 1000
                    ),
                )),
            }
        }
        found
    }
}
