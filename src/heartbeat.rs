//! What this host sees of its peers' storage heartbeats.
//!
//! A peer is *storage-alive* in this host's view when its counter (or boot id) changed within
//! `activity_timeout`, measured on this host's own monotonic clock. It is *stalled* only with
//! positive evidence: on every path this host read the peer's slot recently and saw no change for
//! at least `activity_timeout`. Anything else (this host's own reads failing, not observed long
//! enough yet) is *unknown*, and unknown never justifies a fence.

use crate::config::Config;
use crate::time::Instant;
use peerfence_proto::{BootId, HeartbeatRecord};
use std::time::Duration;

/// A peer's storage liveness in this host's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The counter changed within `activity_timeout`.
    Alive,
    /// No change on any path for at least `activity_timeout`, with fresh reads on every path.
    Stalled {
        /// Since when (the latest last-change across paths).
        since: Instant,
    },
    /// Not enough evidence either way.
    Unknown,
}

#[derive(Debug, Clone, Default)]
struct PathView {
    value: Option<(BootId, u64)>,
    /// The value is the last record of a clean stop.
    stopped: bool,
    first_read_at: Option<Instant>,
    last_read_at: Option<Instant>,
    last_change_at: Option<Instant>,
}

/// One peer's heartbeat observations. (Which boot is the peer's current one is decided by the
/// node from every source, ordered by daemon generation; here a boot change is just a change.)
#[derive(Debug, Clone)]
pub struct PeerHeartbeat {
    paths: Vec<PathView>,
}

/// What an observation revealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Nothing new.
    Same,
    /// The counter (or boot) moved.
    Advanced,
    /// First value ever seen.
    First,
}

impl PeerHeartbeat {
    /// Nothing observed yet.
    pub fn new(config: &Config) -> Self {
        Self {
            paths: vec![PathView::default(); config.storage.paths.len()],
        }
    }

    /// Records one successful read of the peer's slot on `path` (`None`: the slot is empty).
    ///
    /// A change between two reads that follow each other closely (within the freshness window)
    /// happened between them: fresh life. A change seen on the very first read, or after a gap in
    /// this host's reads (its own storage failed, its reads hung), says nothing about *when* it
    /// was written: a write that landed just before the gap would look like life although the
    /// writer may have died since. Observation then starts over from this read.
    pub fn observe(
        &mut self,
        config: &Config,
        now: Instant,
        path: usize,
        record: Option<HeartbeatRecord>,
        stopped: bool,
    ) -> Observed {
        let fresh = Self::fresh_window(config);
        let Some(p) = self.paths.get_mut(path) else {
            return Observed::Same;
        };
        p.stopped = stopped && record.is_some();
        let gap = p
            .last_read_at
            .is_none_or(|t| now.saturating_since(t) > fresh);
        let value = record.map(|r| (r.boot, r.counter));
        let changed = p.value != value;
        p.last_read_at = Some(now);
        if p.first_read_at.is_none() {
            p.first_read_at = Some(now);
        }
        if !changed {
            // The same value on both sides of a gap: counters only grow, so nothing was
            // written in between; what was known before the gap still holds.
            return Observed::Same;
        }
        p.value = value;
        if gap {
            p.first_read_at = Some(now);
            p.last_change_at = None;
            Observed::First
        } else {
            p.last_change_at = Some(now);
            Observed::Advanced
        }
    }

    /// Reads are fresh when one happened within two intervals plus a write timeout (a read can
    /// be as slow as a write).
    fn fresh_window(config: &Config) -> Duration {
        config.storage.heartbeat_interval * 2 + config.storage.write_timeout
    }

    /// Liveness now.
    pub fn liveness(&self, config: &Config, now: Instant) -> Liveness {
        let activity = config.storage.activity_timeout;
        let fresh = Self::fresh_window(config);
        let mut all_stalled = true;
        let mut since = Instant::ZERO;
        for p in &self.paths {
            if let Some(changed) = p.last_change_at
                && now.saturating_since(changed) < activity
            {
                return Liveness::Alive;
            }
            let fresh_read = p
                .last_read_at
                .is_some_and(|t| now.saturating_since(t) <= fresh);
            let quiet_from = match (p.last_change_at, p.first_read_at) {
                (Some(c), _) => Some(c),
                (None, first) => first,
            };
            match quiet_from {
                Some(q) if fresh_read && now.saturating_since(q) >= activity => {
                    since = since.max(q);
                }
                _ => all_stalled = false,
            }
        }
        if all_stalled && !self.paths.is_empty() {
            Liveness::Stalled { since }
        } else {
            Liveness::Unknown
        }
    }

    /// Whether no path has shown a change for longer than `after`, with fresh reads on every
    /// path: an early warning, weaker than [`Liveness::Stalled`], used only to count trouble.
    pub fn late(&self, config: &Config, now: Instant, after: Duration) -> bool {
        let fresh = Self::fresh_window(config);
        !self.paths.is_empty()
            && self.paths.iter().all(|p| {
                let fresh_read = p
                    .last_read_at
                    .is_some_and(|t| now.saturating_since(t) <= fresh);
                let quiet_from = p.last_change_at.or(p.first_read_at);
                fresh_read && quiet_from.is_some_and(|q| now.saturating_since(q) > after)
            })
    }

    /// Whether the latest record read on `path` is the last one of a clean stop.
    pub fn stopped_on(&self, path: usize) -> bool {
        self.paths.get(path).is_some_and(|p| p.stopped)
    }

    /// The most recent change seen on any path.
    pub fn last_change(&self) -> Option<Instant> {
        self.paths.iter().filter_map(|p| p.last_change_at).max()
    }

    /// Time since the last change on any path (or since observation began), for evidence.
    pub fn stalled_for(&self, now: Instant) -> Duration {
        let from = self
            .paths
            .iter()
            .filter_map(|p| p.last_change_at.or(p.first_read_at))
            .max();
        from.map(|t| now.saturating_since(t)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::config;
    use peerfence_proto::MemberId;

    fn at(s: f64) -> Instant {
        Instant::from_micros((s * 1e6) as u64)
    }

    fn rec(boot: u8, counter: u64) -> Option<HeartbeatRecord> {
        Some(HeartbeatRecord {
            member: MemberId(1),
            boot: BootId([boot; 16]),
            generation: u32::from(boot),
            counter,
        })
    }

    #[test]
    fn alive_while_the_counter_moves_stalled_after_activity_timeout() {
        let cfg = config(5); // activity 5 s, interval 1 s, write timeout 2 s
        let mut hb = PeerHeartbeat::new(&cfg);
        assert_eq!(
            hb.observe(&cfg, at(0.0), 0, rec(1, 10), false),
            Observed::First
        );
        assert_eq!(
            hb.liveness(&cfg, at(0.0)),
            Liveness::Unknown,
            "one value proves nothing"
        );
        assert_eq!(
            hb.observe(&cfg, at(1.0), 0, rec(1, 11), false),
            Observed::Advanced
        );
        assert_eq!(hb.liveness(&cfg, at(1.0)), Liveness::Alive);
        for i in 2..=6 {
            assert_eq!(
                hb.observe(&cfg, at(i as f64), 0, rec(1, 11), false),
                Observed::Same
            );
        }
        assert_eq!(hb.liveness(&cfg, at(5.9)), Liveness::Alive);
        assert_eq!(
            hb.liveness(&cfg, at(6.0)),
            Liveness::Stalled { since: at(1.0) }
        );
        assert_eq!(hb.stalled_for(at(6.0)), Duration::from_secs(5));
    }

    #[test]
    fn late_comes_before_stalled() {
        let cfg = config(5);
        let mut hb = PeerHeartbeat::new(&cfg);
        hb.observe(&cfg, at(0.0), 0, rec(1, 1), false);
        hb.observe(&cfg, at(1.0), 0, rec(1, 2), false);
        let after = Duration::from_secs(3);
        for i in 2..=5 {
            hb.observe(&cfg, at(i as f64), 0, rec(1, 2), false);
        }
        assert!(!hb.late(&cfg, at(4.0), after));
        assert!(hb.late(&cfg, at(4.1), after));
        assert_eq!(
            hb.liveness(&cfg, at(4.1)),
            Liveness::Alive,
            "late is not yet stalled"
        );
        assert!(!hb.late(&cfg, at(9.5), after), "stale reads say nothing");
    }

    #[test]
    fn stale_reads_are_unknown_not_stalled() {
        let cfg = config(5);
        let mut hb = PeerHeartbeat::new(&cfg);
        hb.observe(&cfg, at(0.0), 0, rec(1, 1), false);
        hb.observe(&cfg, at(1.0), 0, rec(1, 2), false);
        // This host's reads stop (its storage failed): no evidence of a stall.
        assert_eq!(hb.liveness(&cfg, at(10.0)), Liveness::Unknown);
        hb.observe(&cfg, at(10.0), 0, rec(1, 2), false);
        assert_eq!(
            hb.liveness(&cfg, at(10.0)),
            Liveness::Stalled { since: at(1.0) }
        );
    }

    #[test]
    fn an_empty_slot_watched_long_enough_is_stalled() {
        let cfg = config(5);
        let mut hb = PeerHeartbeat::new(&cfg);
        for i in 0..=5 {
            hb.observe(&cfg, at(i as f64), 0, None, false);
        }
        assert_eq!(
            hb.liveness(&cfg, at(5.0)),
            Liveness::Stalled { since: at(0.0) }
        );
    }

    #[test]
    fn a_new_boot_is_life() {
        let cfg = config(5);
        let mut hb = PeerHeartbeat::new(&cfg);
        hb.observe(&cfg, at(0.0), 0, rec(1, 50), false);
        hb.observe(&cfg, at(1.0), 0, rec(1, 51), false);
        for i in 2..=8 {
            hb.observe(&cfg, at(i as f64), 0, rec(1, 51), false);
        }
        assert!(matches!(
            hb.liveness(&cfg, at(8.0)),
            Liveness::Stalled { .. }
        ));
        assert_eq!(
            hb.observe(&cfg, at(9.0), 0, rec(2, 1), false),
            Observed::Advanced
        );
        assert_eq!(hb.liveness(&cfg, at(9.0)), Liveness::Alive);
    }

    /// A slot read empty, then holding a record one read later, was written in between: life
    /// (a host that just booted and wrote its first heartbeat is not "not yet known").
    #[test]
    fn a_first_record_in_a_slot_read_empty_is_life() {
        let cfg = config(5);
        let mut hb = PeerHeartbeat::new(&cfg);
        for i in 0..10 {
            hb.observe(&cfg, at(i as f64), 0, None, false);
        }
        assert!(matches!(
            hb.liveness(&cfg, at(9.0)),
            Liveness::Stalled { .. }
        ));
        assert_eq!(
            hb.observe(&cfg, at(10.0), 0, rec(2, 1), false),
            Observed::Advanced
        );
        assert_eq!(hb.liveness(&cfg, at(10.0)), Liveness::Alive);
    }

    /// Issue 10 §8: a change seen after a gap in this host's reads (its storage was out) says
    /// nothing about when it was written; observation starts over.
    #[test]
    fn a_change_seen_after_a_read_gap_is_not_fresh_life() {
        let cfg = config(5);
        let mut hb = PeerHeartbeat::new(&cfg);
        for i in 0..=3 {
            hb.observe(&cfg, at(i as f64), 0, rec(1, i + 1), false);
        }
        assert_eq!(hb.liveness(&cfg, at(3.0)), Liveness::Alive);
        // This host cannot read for 20 s; the peer's last write landed after its last read.
        assert_eq!(
            hb.observe(&cfg, at(23.0), 0, rec(1, 5), false),
            Observed::First
        );
        assert_eq!(hb.liveness(&cfg, at(23.0)), Liveness::Unknown);
        for i in 24..=27 {
            hb.observe(&cfg, at(i as f64), 0, rec(1, 5), false);
        }
        assert_eq!(
            hb.liveness(&cfg, at(27.0)),
            Liveness::Unknown,
            "not judged yet"
        );
        hb.observe(&cfg, at(28.0), 0, rec(1, 5), false);
        assert_eq!(
            hb.liveness(&cfg, at(28.0)),
            Liveness::Stalled { since: at(23.0) },
            "stalled a full activity timeout after observation began again"
        );
    }
}
