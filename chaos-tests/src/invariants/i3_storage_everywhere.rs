//! I3 — Shared storage lost everywhere ⇒ zero fences and zero self-fence actions that stop VMs.
//!
//! Why it must hold: when every host loses storage at once the fault is common-mode; fencing
//! anyone (or everyone fencing themselves, as kvmheartbeat.sh does) turns a storage outage into
//! a cluster-wide outage. No host is healthy, so none may vote. Checked: no fence start and no
//! VM-stopping self-fence once storage has been lost everywhere for longer than a node needs to
//! notice (plus the time a round stays open), and no watchdog reset of a host whose daemon runs
//! in a quorate partition while storage is lost everywhere (its peers vouch for it).
//!
//! The one accepted exception is DESIGN.md's known trade-off (as in SBD): a host that was in a
//! minority partition while storage was lost everywhere stops feeding, and may be reset even if
//! the partition heals before its watchdog fires. "In a quorate partition" means what a member
//! can know: an exchange of contact probes, both ways, directly or through one relay, with
//! q − 1 running peers. So a reset is judged only when the host had that during its whole last
//! watchdog window.

use super::{Ctx, Found};

pub struct Check;

impl Check {
    fn settled(ctx: &Ctx) -> Option<u64> {
        let bound = Ctx::us(
            ctx.cfg.storage_failed_detect()
                + ctx.cfg.storage.heartbeat_interval
                + ctx.cfg.fencing.proposal_timeout,
        );
        ctx.all_lost_since.filter(|&since| ctx.now >= since + bound)
    }

    pub fn on_action(&mut self, ctx: &Ctx, what: &str) -> Found {
        match Self::settled(ctx) {
            Some(since) => vec![(
                "I3",
                format!(
                    "{what} while shared storage was lost everywhere (for {} ms)",
                    (ctx.now - since) / 1000
                ),
            )],
            None => Vec::new(),
        }
    }

    pub fn on_watchdog_reset(&mut self, ctx: &Ctx, host: usize) -> Found {
        if ctx.all_lost_since.is_none() || ctx.hosts[host].node.is_none() {
            return Vec::new();
        }
        let window = Ctx::us(
            ctx.cfg.watchdog.timeout
                + ctx.cfg.watchdog.contact_timeout
                + ctx.cfg.watchdog.contact_interval
                + ctx.cfg.watchdog.feed_interval,
        );
        // A daemon whose own node task stalled (a hung fsync, SIGSTOP) could not feed: being
        // reset for it is what the watchdog is for.
        if ctx.hosts[host]
            .blocked_at
            .is_some_and(|t| t + window >= ctx.now)
        {
            return Vec::new();
        }
        if ctx.minority_at[host].is_some_and(|t| t + window >= ctx.now) {
            return Vec::new();
        }
        // Vouches need an exchange both ways with q - 1 running daemons, directly or through one
        // relay: that, not arbitrary transitive reachability, is what "in a quorate partition"
        // means to a member.
        let up: Vec<bool> = ctx.hosts.iter().map(|h| h.node.is_some()).collect();
        let peers = ctx.net.contact_peers(host, &up);
        if 1 + peers >= ctx.cfg.quorum() {
            vec![(
                "I3",
                format!(
                    "watchdog reset h{host} while storage was lost everywhere and it could exchange contact probes with {peers} running peers (quorum {})",
                    ctx.cfg.quorum()
                ),
            )]
        } else {
            Vec::new()
        }
    }
}
