//! Invariant checkers, one module per invariant of DESIGN.md. Each is evaluated against ground
//! truth (the world's hosts, storage and network) at the moment the checked thing happens, not
//! against what any node believed. A checker never trusts the core: I1 verifies signatures with
//! ed25519 directly, I5 looks at whether the VMs really still run.

mod i1_certificate;
mod i2_live_writer;
mod i3_storage_everywhere;
mod i4_inflight_budget;
mod i5_safe_to_recover;
mod i6_liveness;
mod i7_minority;
mod i8_clean_stop;

use crate::net::Network;
use crate::world::{Host, RunResult};
use peerfence::config::Config;
use peerfence::node::SelfFenceCommand;
use peerfence_proto::{BootId, Proposal, QuorumCertificate, Verdict};
use std::collections::HashMap;

/// A vote as the world saw it emitted.
#[derive(Debug, Clone, Copy)]
pub struct VoteRecord {
    /// True time.
    pub at: u64,
    /// Since when the voter's storage was lost (ground truth), if it was.
    pub storage_lost_since: Option<u64>,
    /// The verdict the voter reported with its vote.
    pub verdict: Verdict,
}

/// Read-only ground truth handed to checkers.
pub struct Ctx<'a> {
    /// True time, µs.
    pub now: u64,
    /// Hosts.
    pub hosts: &'a [Host],
    /// Configuration (the run's first; timings do not change during a run).
    pub cfg: &'a Config,
    /// The configuration each host runs now (rosters and digests may differ during a rolling
    /// change).
    pub host_cfg: &'a [std::sync::Arc<Config>],
    /// Network.
    pub net: &'a Network,
    /// Since when every host's storage is lost, if it is.
    pub all_lost_since: Option<u64>,
    /// Every vote emitted so far.
    pub votes: &'a HashMap<(usize, Proposal), VoteRecord>,
    /// Per host, the last time it was in a partition smaller than a quorum.
    pub minority_at: &'a [Option<u64>],
}

impl Ctx<'_> {
    /// `d` in µs.
    pub fn us(d: std::time::Duration) -> u64 {
        d.as_micros() as u64
    }
}

type Found = Vec<(&'static str, String)>;

/// All checkers.
pub struct Checks {
    i1: i1_certificate::Check,
    i2: i2_live_writer::Check,
    i3: i3_storage_everywhere::Check,
    i4: i4_inflight_budget::Check,
    i5: i5_safe_to_recover::Check,
    i6: i6_liveness::Check,
    i7: i7_minority::Check,
    i8: i8_clean_stop::Check,
}

impl Checks {
    /// Fresh checkers for a run.
    pub fn new(cfg: &Config) -> Self {
        Self {
            i1: i1_certificate::Check::new(cfg),
            i2: i2_live_writer::Check,
            i3: i3_storage_everywhere::Check,
            i4: i4_inflight_budget::Check::default(),
            i5: i5_safe_to_recover::Check,
            i6: i6_liveness::Check,
            i7: i7_minority::Check,
            i8: i8_clean_stop::Check,
        }
    }

    /// Any action carried out under a certificate (fence command, pill, self-fence).
    pub fn on_authorised(
        &mut self,
        ctx: &Ctx,
        actor: usize,
        qc: &QuorumCertificate,
        what: &str,
    ) -> Found {
        self.i1.check(ctx, actor, qc, what)
    }

    /// A fence attempt starts.
    pub fn on_fence_started(
        &mut self,
        ctx: &Ctx,
        executor: usize,
        qc: &QuorumCertificate,
        attempt: u16,
    ) -> Found {
        let mut f = self.i1.check(ctx, executor, qc, "fence start");
        f.extend(self.i2.on_fence(ctx, qc.proposal.target.index(), "fence"));
        f.extend(self.i3.on_action(ctx, "fence start"));
        f.extend(self.i4.on_start(ctx, executor, &qc.proposal, attempt));
        f.extend(self.i7.on_action(ctx, executor, "fence"));
        f.extend(self.i8.on_action(ctx, &qc.proposal, "fence start"));
        f
    }

    /// A level acts on the target (an agent `off`, a poison pill): the target is checked again.
    pub fn on_level(&mut self, ctx: &Ctx, qc: &QuorumCertificate, what: &str) -> Found {
        let mut f = self.i2.on_fence(ctx, qc.proposal.target.index(), what);
        f.extend(self.i8.on_action(ctx, &qc.proposal, what));
        f
    }

    /// A fence attempt ends at its executor.
    pub fn on_fence_ended(&mut self, ctx: &Ctx, executor: usize, target: usize) {
        self.i4.on_end(ctx, executor, target);
    }

    /// A daemon is gone (crash, reset, power off).
    pub fn on_daemon_gone(&mut self, ctx: &Ctx, host: usize) {
        self.i4.on_executor_gone(ctx, host);
    }

    /// A self-fence action is carried out.
    pub fn on_self_fence(&mut self, ctx: &Ctx, host: usize, cmd: &SelfFenceCommand) -> Found {
        let mut f = Vec::new();
        if cmd.action.stops_vms() {
            f.extend(self.i2.on_fence(ctx, host, "self-fence"));
            f.extend(self.i3.on_action(ctx, "VM-stopping self-fence"));
            if cmd.reason == peerfence::node::SelfFenceReason::QuorumAgreed {
                f.extend(self.i4.on_self_fence(ctx, &cmd.qc.proposal));
                f.extend(self.i7.on_action(ctx, host, "self-fence"));
            }
        }
        f
    }

    /// A node announced "safe to recover".
    pub fn on_safe_to_recover(
        &mut self,
        ctx: &Ctx,
        reporter: usize,
        target: usize,
        boot: BootId,
    ) -> Found {
        self.i5.check(ctx, reporter, target, boot)
    }

    /// A watchdog reset a host.
    pub fn on_watchdog_reset(&mut self, ctx: &Ctx, host: usize) -> Found {
        self.i3.on_watchdog_reset(ctx, host)
    }

    /// End of run.
    pub fn finish(&mut self, ctx: &Ctx, result: &RunResult) -> Found {
        self.i6.finish(ctx, result)
    }
}
