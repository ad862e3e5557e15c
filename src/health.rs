//! This host's own health, from the results its driver reports: storage heartbeat writes per
//! path, management agent checks, isolation checks.
//!
//! Slow is not Failed: a path is Failed only after `failures_before_failed` consecutive failed or
//! timed-out writes (or when the driver stops reporting at all, which means the writer itself is
//! stuck). The verdict is Healthy only when every path has completed a write and none is Failed,
//! and the isolation check (when configured) passes.

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

#[derive(Debug, Clone, Default)]
struct PathWrites {
    consecutive_failures: u32,
    last_report: Option<Instant>,
    last_success: Option<Instant>,
    last_latency: Option<Duration>,
    /// When the current run of failures began (time of the first failed report in the run).
    failing_since: Option<Instant>,
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

    /// Records one write result. Returns false (and changes nothing) for an unknown path.
    pub fn record_write(&mut self, now: Instant, path: usize, outcome: WriteOutcome) -> bool {
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
            }
            WriteOutcome::Failed | WriteOutcome::TimedOut => {
                if p.consecutive_failures == 0 {
                    p.failing_since = Some(now);
                }
                p.consecutive_failures = p.consecutive_failures.saturating_add(1);
            }
        }
        true
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
        match (p.last_success, p.last_latency) {
            (None, _) => StorageHealth::Unknown,
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
        let storage_ok = (0..self.paths.len()).all(|i| {
            matches!(
                self.path_health(config, now, i),
                StorageHealth::Ok | StorageHealth::Slow
            )
        });
        if storage_ok && self.isolation != IsolationHealth::Failed {
            Verdict::Healthy
        } else {
            Verdict::Unhealthy
        }
    }

    /// Since when every path has been Failed without interruption, if they all are. This host
    /// then writes its heartbeat nowhere, which is what a self-fence is about.
    pub fn all_failed_since(&self, config: &Config, now: Instant) -> Option<Instant> {
        let mut since = Instant::ZERO;
        for (i, p) in self.paths.iter().enumerate() {
            if self.path_health(config, now, i) != StorageHealth::Failed {
                return None;
            }
            let start = p
                .failing_since
                .or(p.last_success)
                .unwrap_or(self.started_at);
            since = since.max(start);
        }
        Some(since)
    }

    /// Whether any path wrote successfully within `window`: the watchdog's storage condition.
    pub fn wrote_within(&self, now: Instant, window: Duration) -> bool {
        self.paths
            .iter()
            .filter_map(|p| p.last_success)
            .any(|t| now.saturating_since(t) <= window)
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

    #[test]
    fn slow_is_not_failed_and_failed_needs_consecutive_failures() {
        let cfg = config(5);
        let mut h = LocalHealth::new(&cfg, at(0.0));
        assert_eq!(h.verdict(&cfg, at(0.0)), Verdict::Unhealthy, "no write yet");
        h.record_write(at(1.0), 0, WriteOutcome::Ok { latency: ms(10) });
        assert_eq!(h.path_health(&cfg, at(1.0), 0), StorageHealth::Ok);
        assert_eq!(h.verdict(&cfg, at(1.0)), Verdict::Healthy);
        h.record_write(at(2.0), 0, WriteOutcome::Ok { latency: ms(1500) });
        assert_eq!(h.path_health(&cfg, at(2.0), 0), StorageHealth::Slow);
        assert_eq!(
            h.verdict(&cfg, at(2.0)),
            Verdict::Healthy,
            "slow is still healthy"
        );
        h.record_write(at(3.0), 0, WriteOutcome::TimedOut);
        h.record_write(at(4.0), 0, WriteOutcome::TimedOut);
        assert_eq!(h.path_health(&cfg, at(4.0), 0), StorageHealth::Slow);
        assert!(h.all_failed_since(&cfg, at(4.0)).is_none());
        h.record_write(at(5.0), 0, WriteOutcome::Failed);
        assert_eq!(h.path_health(&cfg, at(5.0), 0), StorageHealth::Failed);
        assert_eq!(h.verdict(&cfg, at(5.0)), Verdict::Unhealthy);
        assert_eq!(h.all_failed_since(&cfg, at(5.0)), Some(at(3.0)));
        h.record_write(at(6.0), 0, WriteOutcome::Ok { latency: ms(5) });
        assert_eq!(h.verdict(&cfg, at(6.0)), Verdict::Healthy);
        assert!(h.all_failed_since(&cfg, at(6.0)).is_none());
    }

    #[test]
    fn a_silent_writer_is_failed() {
        let cfg = config(5);
        let mut h = LocalHealth::new(&cfg, at(0.0));
        h.record_write(at(1.0), 0, WriteOutcome::Ok { latency: ms(5) });
        // 3 x 1 s + 2 s + 1 s = 6 s of silence allowed.
        assert_eq!(h.path_health(&cfg, at(7.0), 0), StorageHealth::Ok);
        assert_eq!(h.path_health(&cfg, at(7.1), 0), StorageHealth::Failed);
        assert!(h.wrote_within(at(6.0), cfg.storage_failed_detect()));
        assert!(!h.wrote_within(at(7.1), cfg.storage_failed_detect()));
    }

    #[test]
    fn isolation_needs_consecutive_failures() {
        let cfg = config(5);
        let mut h = LocalHealth::new(&cfg, at(0.0));
        h.record_write(at(1.0), 0, WriteOutcome::Ok { latency: ms(5) });
        h.record_isolation(&cfg, false);
        h.record_isolation(&cfg, false);
        assert_eq!(h.verdict(&cfg, at(1.0)), Verdict::Healthy);
        h.record_isolation(&cfg, false);
        assert_eq!(h.isolation(), IsolationHealth::Failed);
        assert_eq!(h.verdict(&cfg, at(1.0)), Verdict::Unhealthy);
        h.record_isolation(&cfg, true);
        assert_eq!(h.verdict(&cfg, at(1.0)), Verdict::Healthy);
    }

    #[test]
    fn unknown_paths_are_ignored() {
        let cfg = config(5);
        let mut h = LocalHealth::new(&cfg, at(0.0));
        assert!(!h.record_write(at(1.0), 7, WriteOutcome::Failed));
    }
}
