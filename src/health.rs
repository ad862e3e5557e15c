//! This host's own health, from the results its driver reports: storage heartbeat writes per
//! path, management agent checks, isolation checks.
//!
//! Slow is not Failed: a path is Failed only after `failures_before_failed` consecutive failed or
//! timed-out writes (or when the driver stops reporting at all, which means the writer itself is
//! stuck). The verdict is Healthy only when every path has completed a write and none is Failed,
//! and the isolation check (when configured) passes.
//!
//! A write that succeeds is not yet a write anybody sees. A path counts as healthy (for rule E1
//! and for the watchdog) only while it proves it is shared: this host reads back, through its
//! read path, every write it was told succeeded, and it sees some peer's heartbeat change on that
//! path (or every peer's last record there says its daemon stopped cleanly). Otherwise it is
//! `Unverified`: a mount that failed at boot, a directory replaced underneath, or a client cache
//! serving stale data would let this host feed its watchdog on writes nobody can see.

use crate::config::Config;
use crate::time::Instant;
use peerfence_proto::{AgentHealth, IsolationHealth, StorageHealth, Verdict};
use std::time::Duration;

/// Result of one heartbeat write, as the driver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written and synced in `latency`.
    Ok {
        /// Time the write took.
        latency: Duration,
    },
    /// The write returned an error.
    Failed,
    /// The write did not complete within `storage.write_timeout`; the driver abandoned it.
    TimedOut,
}

/// Successful writes remembered per path for the read-back check.
const WRITTEN_MAX: usize = 8;

#[derive(Debug, Clone, Default)]
struct PathWrites {
    consecutive_failures: u32,
    last_report: Option<Instant>,
    last_success: Option<Instant>,
    last_latency: Option<Duration>,
    /// When the current run of failures began (time of the first failed report in the run).
    failing_since: Option<Instant>,
    /// Recent successful writes: (counter, when reported).
    written: std::collections::VecDeque<(u64, Instant)>,
    /// Last read of this host's own slot that showed every write reported done a read cycle
    /// before it.
    readback_ok: Option<Instant>,
    /// Last time a peer's record on this path was seen changing.
    peer_seen: Option<Instant>,
    /// Every other member's latest record on this path is the last one of a clean stop.
    others_stopped: bool,
    /// Since when the path has been written but not proved shared.
    unverified_since: Option<Instant>,
}

/// Tracks this host's health.
#[derive(Debug, Clone)]
pub struct LocalHealth {
    paths: Vec<PathWrites>,
    agent: AgentHealth,
    isolation: IsolationHealth,
    isolation_failures: u32,
    started_at: Instant,
}

impl LocalHealth {
    /// No results yet.
    pub fn new(config: &Config, now: Instant) -> Self {
        Self {
            paths: vec![PathWrites::default(); config.storage.paths.len()],
            agent: AgentHealth::Unknown,
            isolation: IsolationHealth::NotConfigured,
            isolation_failures: 0,
            started_at: now,
        }
    }

    /// Records one write result of the record numbered `counter`. Returns false (and changes
    /// nothing) for an unknown path.
    pub fn record_write(
        &mut self,
        now: Instant,
        path: usize,
        outcome: WriteOutcome,
        counter: u64,
    ) -> bool {
        let Some(p) = self.paths.get_mut(path) else {
            return false;
        };
        p.last_report = Some(now);
        match outcome {
            WriteOutcome::Ok { latency } => {
                p.consecutive_failures = 0;
                p.failing_since = None;
                p.last_success = Some(now);
                p.last_latency = Some(latency);
                p.written.push_back((counter, now));
                while p.written.len() > WRITTEN_MAX {
                    p.written.pop_front();
                }
            }
            WriteOutcome::Failed | WriteOutcome::TimedOut => {
                // "Written but not seen" is timed only while writes succeed.
                p.unverified_since = None;
                if p.consecutive_failures == 0 {
                    p.failing_since = Some(now);
                }
                p.consecutive_failures = p.consecutive_failures.saturating_add(1);
            }
        }
        true
    }

    /// This host read its own slot on `path` and found the record numbered `counter` (`None`:
    /// nothing, or not its own). Every write reported done more than one read cycle
    /// (`storage.write_timeout`) before must show: reads that lag behind writes this host was
    /// told succeeded are not reads of what its peers read.
    pub fn record_readback(
        &mut self,
        config: &Config,
        now: Instant,
        path: usize,
        counter: Option<u64>,
    ) {
        let Some(p) = self.paths.get_mut(path) else {
            return;
        };
        let due = now.saturating_sub(config.storage.write_timeout);
        let Some(&(expected, _)) = p.written.iter().rev().find(|(_, at)| *at <= due) else {
            // Nothing old enough to judge by yet.
            return;
        };
        if counter.is_some_and(|c| c >= expected) {
            p.readback_ok = Some(now);
        }
    }

    /// A peer's record on `path` was seen changing: the path is shared.
    pub fn record_peer_seen(&mut self, now: Instant, path: usize) {
        if let Some(p) = self.paths.get_mut(path) {
            p.peer_seen = Some(now);
        }
    }

    /// Whether every other member's latest record on `path` is a clean stop's (then no peer can
    /// be seen moving, and none can fence this host before it writes again).
    pub fn set_others_stopped(&mut self, path: usize, stopped: bool) {
        if let Some(p) = self.paths.get_mut(path) {
            p.others_stopped = stopped;
        }
    }

    /// Whether `path` proves it is shared now: own writes read back, and a peer seen moving on
    /// it (or every peer stopped cleanly), each within `storage.activity_timeout`.
    pub fn verified(&self, config: &Config, now: Instant, path: usize) -> bool {
        let Some(p) = self.paths.get(path) else {
            return false;
        };
        let within = |t: Option<Instant>| {
            t.is_some_and(|t| now.saturating_since(t) <= config.storage.activity_timeout)
        };
        within(p.readback_ok) && (within(p.peer_seen) || p.others_stopped)
    }

    /// Call at every evaluation: notes since when each written path has been unverified.
    pub fn refresh_verification(&mut self, config: &Config, now: Instant) {
        for i in 0..self.paths.len() {
            let written =
                self.paths[i].last_success.is_some() && self.paths[i].consecutive_failures == 0;
            let verified = self.verified(config, now, i);
            let p = &mut self.paths[i];
            if verified || !written {
                p.unverified_since = None;
            } else {
                p.unverified_since.get_or_insert(now);
            }
        }
    }

    /// How long after its start a host may take to prove its paths shared: two read cycles
    /// after its first writes, plus the time a peer's write takes to show.
    fn verify_grace(config: &Config) -> Duration {
        config.storage.heartbeat_interval * 3 + config.storage.write_timeout * 2
    }

    /// This host's daemon did not run for a while: what was measured across the gap (writes
    /// that timed out while their reporting thread was stopped, silence) is not evidence. Every
    /// path's clock starts over from `now`: silence across the gap is not a stuck writer, and a
    /// failing path stays failed (not healthy) but must keep failing for a whole grace period
    /// from now before a self-fence is asked for.
    pub fn restart_measurement(&mut self, now: Instant) {
        for p in &mut self.paths {
            if p.consecutive_failures > 0 {
                p.failing_since = Some(now);
            }
            if p.unverified_since.is_some() {
                p.unverified_since = Some(now);
            }
            p.last_report = Some(now);
        }
    }

    /// Records a management agent check.
    pub fn record_agent(&mut self, alive: bool) {
        self.agent = if alive {
            AgentHealth::Alive
        } else {
            AgentHealth::Dead
        };
    }

    /// Records an isolation check; Failed after the same number of consecutive failures as
    /// storage, so one lost packet is not isolation.
    pub fn record_isolation(&mut self, config: &Config, ok: bool) {
        if ok {
            self.isolation_failures = 0;
            self.isolation = IsolationHealth::Ok;
        } else {
            self.isolation_failures = self.isolation_failures.saturating_add(1);
            if self.isolation_failures >= u32::from(config.storage.failures_before_failed.get()) {
                self.isolation = IsolationHealth::Failed;
            } else if self.isolation == IsolationHealth::NotConfigured {
                self.isolation = IsolationHealth::Ok;
            }
        }
    }

    /// Health of one path now.
    pub fn path_health(&self, config: &Config, now: Instant, path: usize) -> StorageHealth {
        let Some(p) = self.paths.get(path) else {
            return StorageHealth::Unknown;
        };
        if p.consecutive_failures >= u32::from(config.storage.failures_before_failed.get()) {
            return StorageHealth::Failed;
        }
        // The driver reports every interval even when a write hangs (it abandons the hung write
        // at the timeout). Silence longer than that means the writer itself is stuck.
        let stale_after = config.storage_failed_detect() + config.storage.heartbeat_interval;
        let last = p.last_report.unwrap_or(self.started_at);
        if now.saturating_since(last) > stale_after {
            return StorageHealth::Failed;
        }
        if p.last_success.is_some()
            && !self.verified(config, now, path)
            && now.saturating_since(self.started_at) >= Self::verify_grace(config)
        {
            return StorageHealth::Unverified;
        }
        match (p.last_success, p.last_latency) {
            (None, _) => StorageHealth::Unknown,
            _ if !self.verified(config, now, path) => StorageHealth::Unknown,
            (Some(_), Some(l)) if l > config.storage.slow_threshold => StorageHealth::Slow,
            (Some(_), _) if p.consecutive_failures > 0 => StorageHealth::Slow,
            _ => StorageHealth::Ok,
        }
    }

    /// Health of every path.
    pub fn storage(&self, config: &Config, now: Instant) -> Vec<StorageHealth> {
        (0..self.paths.len())
            .map(|i| self.path_health(config, now, i))
            .collect()
    }

    /// Rule E1's input: Healthy only when every path has written and none is Failed, and the
    /// isolation check (if configured) passes.
    pub fn verdict(&self, config: &Config, now: Instant) -> Verdict {
        let health: Vec<StorageHealth> = (0..self.paths.len())
            .map(|i| self.path_health(config, now, i))
            .collect();
        let storage_ok = health
            .iter()
            .all(|h| matches!(h, StorageHealth::Ok | StorageHealth::Slow));
        if storage_ok && self.isolation != IsolationHealth::Failed {
            return Verdict::Healthy;
        }
        // Not measured yet, and nothing wrong seen: a restarted daemon is not a sick host (its
        // peers must not count it toward a storm).
        let starting = now.saturating_since(self.started_at)
            < Self::verify_grace(config) + config.storage_failed_detect();
        let nothing_wrong = self.isolation != IsolationHealth::Failed
            && health.iter().all(|h| {
                matches!(
                    h,
                    StorageHealth::Ok | StorageHealth::Slow | StorageHealth::Unknown
                )
            });
        if starting && nothing_wrong {
            Verdict::Initializing
        } else {
            Verdict::Unhealthy
        }
    }

    /// Since when every path has been Failed without interruption, if they all are. This host
    /// then writes its heartbeat nowhere, which is what a self-fence is about.
    pub fn all_failed_since(&self, config: &Config, now: Instant) -> Option<Instant> {
        let mut since = Instant::ZERO;
        for (i, p) in self.paths.iter().enumerate() {
            // A path nobody else sees is as good as a failed one: this host's heartbeat is
            // nowhere its peers can read it.
            let start = match self.path_health(config, now, i) {
                StorageHealth::Failed => p
                    .failing_since
                    .or(p.last_success)
                    .unwrap_or(self.started_at),
                // Not noted yet by an evaluation: it became unverified just now.
                StorageHealth::Unverified => p.unverified_since.unwrap_or(now),
                _ => return None,
            };
            since = since.max(start);
        }
        Some(since)
    }

    /// Whether any path that proves it is shared wrote successfully within `window`: the
    /// watchdog's storage condition.
    pub fn wrote_within(&self, config: &Config, now: Instant, window: Duration) -> bool {
        self.paths.iter().enumerate().any(|(i, p)| {
            p.last_success
                .is_some_and(|t| now.saturating_since(t) <= window)
                && self.verified(config, now, i)
        })
    }

    /// Whether every path is plainly Ok (contact probes are only needed otherwise).
    pub fn storage_all_ok(&self, config: &Config, now: Instant) -> bool {
        (0..self.paths.len()).all(|i| self.path_health(config, now, i) == StorageHealth::Ok)
    }

    /// Management agent state.
    pub fn agent(&self) -> AgentHealth {
        self.agent
    }

    /// Isolation state.
    pub fn isolation(&self) -> IsolationHealth {
        self.isolation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::config;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn at(s: f64) -> Instant {
        Instant::from_micros((s * 1e6) as u64)
    }

    /// A write reported at `t`, seen shared: read back and a peer seen moving on the path.
    fn shared_write(
        cfg: &Config,
        h: &mut LocalHealth,
        t: f64,
        counter: u64,
        outcome: WriteOutcome,
    ) {
        h.record_write(at(t), 0, outcome, counter);
        h.record_peer_seen(at(t), 0);
        // The read-back a cycle later shows it (and every earlier write).
        h.record_readback(cfg, at(t) + cfg.storage.write_timeout, 0, Some(counter));
    }

    #[test]
    fn slow_is_not_failed_and_failed_needs_consecutive_failures() {
        let cfg = config(5);
        let mut h = LocalHealth::new(&cfg, at(0.0));
        assert_eq!(
            h.verdict(&cfg, at(0.0)),
            Verdict::Initializing,
            "nothing measured yet: initializing, not unhealthy"
        );
        shared_write(&cfg, &mut h, 1.0, 1, WriteOutcome::Ok { latency: ms(10) });
        shared_write(&cfg, &mut h, 2.0, 2, WriteOutcome::Ok { latency: ms(10) });
        assert_eq!(h.path_health(&cfg, at(4.0), 0), StorageHealth::Ok);
        assert_eq!(h.verdict(&cfg, at(4.0)), Verdict::Healthy);
        shared_write(&cfg, &mut h, 5.0, 3, WriteOutcome::Ok { latency: ms(1500) });
        assert_eq!(h.path_health(&cfg, at(7.0), 0), StorageHealth::Slow);
        assert_eq!(
            h.verdict(&cfg, at(7.0)),
            Verdict::Healthy,
            "slow is still healthy"
        );
        h.record_write(at(8.0), 0, WriteOutcome::TimedOut, 4);
        h.record_write(at(9.0), 0, WriteOutcome::TimedOut, 5);
        assert_eq!(h.path_health(&cfg, at(9.0), 0), StorageHealth::Slow);
        assert!(h.all_failed_since(&cfg, at(9.0)).is_none());
        h.record_write(at(10.0), 0, WriteOutcome::Failed, 6);
        assert_eq!(h.path_health(&cfg, at(10.0), 0), StorageHealth::Failed);
        assert_eq!(h.verdict(&cfg, at(10.0)), Verdict::Unhealthy);
        assert_eq!(h.all_failed_since(&cfg, at(10.0)), Some(at(8.0)));
        shared_write(&cfg, &mut h, 11.0, 7, WriteOutcome::Ok { latency: ms(5) });
        assert_eq!(h.verdict(&cfg, at(13.0)), Verdict::Healthy);
        assert!(h.all_failed_since(&cfg, at(13.0)).is_none());
    }

    #[test]
    fn a_silent_writer_is_failed() {
        let cfg = config(5);
        let mut h = LocalHealth::new(&cfg, at(0.0));
        shared_write(&cfg, &mut h, 1.0, 1, WriteOutcome::Ok { latency: ms(5) });
        // 3 x 1 s + 2 s + 1 s = 6 s of silence allowed.
        assert_eq!(h.path_health(&cfg, at(5.0), 0), StorageHealth::Ok);
        assert_eq!(h.path_health(&cfg, at(7.1), 0), StorageHealth::Failed);
        assert!(h.wrote_within(&cfg, at(6.0), cfg.storage_failed_detect()));
        assert!(!h.wrote_within(&cfg, at(7.1), cfg.storage_failed_detect()));
    }

    /// Issue 10 §4: a write that succeeds but that nobody sees (a mount that failed at boot, a
    /// private directory) is not storage: the path is Unverified, the host is not Healthy, and
    /// its writes do not feed the watchdog.
    #[test]
    fn a_write_nobody_sees_is_not_a_healthy_path() {
        let cfg = config(5);
        let mut h = LocalHealth::new(&cfg, at(0.0));
        for i in 1..=20u64 {
            let t = i as f64;
            h.record_write(at(t), 0, WriteOutcome::Ok { latency: ms(5) }, i);
            // It reads its own writes back fine, but never sees a peer move.
            h.record_readback(&cfg, at(t + 0.5), 0, Some(i));
            h.refresh_verification(&cfg, at(t + 0.5));
        }
        assert_eq!(h.path_health(&cfg, at(20.5), 0), StorageHealth::Unverified);
        assert_eq!(h.verdict(&cfg, at(20.5)), Verdict::Unhealthy);
        assert!(!h.wrote_within(&cfg, at(20.5), cfg.storage_failed_detect()));
        assert!(
            h.all_failed_since(&cfg, at(20.5)).is_some(),
            "its heartbeat is nowhere its peers read: a self-fence matter"
        );
        // Every peer's last record says it stopped cleanly: nobody can move, nobody can fence.
        h.set_others_stopped(0, true);
        assert_eq!(h.path_health(&cfg, at(20.5), 0), StorageHealth::Ok);
    }

    /// Reads served from a stale cache do not show this host's own latest writes.
    #[test]
    fn stale_reads_of_its_own_writes_unverify_the_path() {
        let cfg = config(5);
        let mut h = LocalHealth::new(&cfg, at(0.0));
        for i in 1..=5u64 {
            shared_write(
                &cfg,
                &mut h,
                i as f64,
                i,
                WriteOutcome::Ok { latency: ms(5) },
            );
        }
        assert_eq!(h.path_health(&cfg, at(7.0), 0), StorageHealth::Ok);
        for i in 6..=14u64 {
            let t = i as f64;
            h.record_write(at(t), 0, WriteOutcome::Ok { latency: ms(5) }, i);
            h.record_peer_seen(at(t), 0);
            // The read path keeps showing counter 5.
            h.record_readback(&cfg, at(t + 0.5), 0, Some(5));
        }
        assert_eq!(h.path_health(&cfg, at(14.5), 0), StorageHealth::Unverified);
        assert_eq!(h.verdict(&cfg, at(14.5)), Verdict::Unhealthy);
    }

    #[test]
    fn isolation_needs_consecutive_failures() {
        let cfg = config(5);
        let mut h = LocalHealth::new(&cfg, at(0.0));
        shared_write(&cfg, &mut h, 1.0, 1, WriteOutcome::Ok { latency: ms(5) });
        shared_write(&cfg, &mut h, 2.0, 2, WriteOutcome::Ok { latency: ms(5) });
        h.record_isolation(&cfg, false);
        h.record_isolation(&cfg, false);
        assert_eq!(h.verdict(&cfg, at(4.0)), Verdict::Healthy);
        h.record_isolation(&cfg, false);
        assert_eq!(h.isolation(), IsolationHealth::Failed);
        assert_eq!(h.verdict(&cfg, at(4.0)), Verdict::Unhealthy);
        h.record_isolation(&cfg, true);
        assert_eq!(h.verdict(&cfg, at(4.0)), Verdict::Healthy);
    }

    #[test]
    fn unknown_paths_are_ignored() {
        let cfg = config(5);
        let mut h = LocalHealth::new(&cfg, at(0.0));
        assert!(!h.record_write(at(1.0), 7, WriteOutcome::Failed, 1));
    }

    /// Issue 10 §7: after a stall of the host itself, what was measured across the gap is not
    /// evidence: a path silent for the gap is not failed, a failing one must fail a whole grace
    /// period again from the end of the stall.
    #[test]
    fn a_stall_of_the_host_itself_restarts_the_measurement() {
        let cfg = config(5);
        let mut h = LocalHealth::new(&cfg, at(0.0));
        shared_write(&cfg, &mut h, 1.0, 1, WriteOutcome::Ok { latency: ms(5) });
        // Frozen from 2 s to 60 s: no report at all.
        assert_eq!(
            h.path_health(&cfg, at(60.0), 0),
            StorageHealth::Failed,
            "silence"
        );
        h.restart_measurement(at(60.0));
        assert_ne!(h.path_health(&cfg, at(60.0), 0), StorageHealth::Failed);
        // A path that was failing before the stall stays failed, its grace restarted.
        for (i, t) in [61.0, 62.0, 63.0].into_iter().enumerate() {
            h.record_write(at(t), 0, WriteOutcome::Failed, 10 + i as u64);
        }
        assert_eq!(h.all_failed_since(&cfg, at(63.0)), Some(at(61.0)));
        h.restart_measurement(at(90.0));
        assert_eq!(h.path_health(&cfg, at(90.0), 0), StorageHealth::Failed);
        assert_eq!(h.all_failed_since(&cfg, at(90.0)), Some(at(90.0)));
    }
}
