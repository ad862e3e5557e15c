//! What goes into a [`super::Node`] and what comes out.
//!
//! The driver's loop is: feed an [`Input`] with `handle(now, input)`, drain every [`Output`] with
//! `poll_output()` in order, and call `handle(now, Input::Tick)` when `poll_timeout()` is due.
//! Outputs are ordered: a [`Output::Persist`] precedes every output that depends on it, and the
//! driver must make it durable before acting on anything after it. One exception keeps SWIM
//! alive while a slow disk syncs: a `Send` marked `membership` (a SWIM packet) may go out while
//! earlier persists are still being written, provided the last *completed* persist holds the
//! node's current generation ([`super::Node::generation`]). Everything else waits, in order; the
//! node may meanwhile be fed more inputs.

use crate::durable::DurableState;
use crate::health::WriteOutcome;
use crate::membership::SwimState;
use crate::rules::{HaState, Ineligible};
use bytes::Bytes;
use peerfence_proto::{
    AbortReason, BootId, Evidence, FailReason, HeartbeatRecord, MemberId, Proposal,
    QuorumCertificate, RefuseReason, SelfFenceAction, Verdict,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Identifies one command the node asked the driver to run; results carry it back. Results for
/// unknown ids (late, after a timeout) are ignored.
pub type CommandId = u64;

/// Power state reported by a fence agent's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PowerState {
    /// Powered on.
    On,
    /// Powered off.
    Off,
    /// Could not tell.
    Unknown,
}

/// Result of one fence-agent action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentResult {
    /// `off` or `on` succeeded.
    Done,
    /// `status` answered.
    Power(PowerState),
    /// The agent failed (exit code 1, wrong password, unreachable).
    Failed,
    /// The agent did not finish within the command's timeout; the driver killed it.
    TimedOut,
}

/// An operator's request, already authenticated by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorCommand {
    /// Put a host in or out of maintenance (cluster-wide).
    Maintenance {
        /// The host.
        member: MemberId,
        /// On or off.
        on: bool,
    },
    /// Arm the cluster.
    Arm,
    /// Disarm the cluster: nobody proposes or votes.
    Disarm,
    /// Ask for a fence of `target` now (still needs the quorum and every rule).
    ManualFence {
        /// The host.
        target: MemberId,
    },
    /// Something on this host (CloudStack's heartbeat script, `-c`) believes this host should
    /// fence itself. It never acts by itself: when every storage path is Failed, the grace
    /// period is waived and the quorum is asked at once; otherwise it is noted and refused.
    SelfFenceRequest,
}

/// Everything a node reacts to.
#[derive(Debug, Clone)]
pub enum Input {
    /// Time passed (call at `poll_timeout()`; extra calls are harmless).
    Tick,
    /// A message from a peer; `from` is the identity the transport authenticated.
    Datagram {
        /// Authenticated sender.
        from: MemberId,
        /// The envelope bytes.
        bytes: Bytes,
    },
    /// One heartbeat write on a path finished (or was abandoned at its timeout).
    StorageWrite {
        /// Path index in `storage.paths`.
        path: usize,
        /// What happened.
        outcome: WriteOutcome,
        /// The counter of the record written (the read-back check looks for it).
        counter: u64,
    },
    /// One successful read of `member`'s heartbeat slot on `path` (`None`: empty slot).
    HeartbeatRead {
        /// Path index.
        path: usize,
        /// Whose slot.
        member: MemberId,
        /// What it held.
        record: Option<HeartbeatRecord>,
        /// The record is the owner's last, written when its daemon stopped cleanly.
        stopped: bool,
    },
    /// `member`'s slot on `path` holds a heartbeat of this cluster written under another
    /// configuration (a rolling change is under way). It says nothing this node's rules may use
    /// about the member (its peers with another digest are invisible to it), but a change of it
    /// proves the path is shared storage.
    ForeignHeartbeat {
        /// Path index.
        path: usize,
        /// Whose slot.
        member: MemberId,
        /// Its counter and boot.
        record: HeartbeatRecord,
    },
    /// This host's own poison-pill slot on `path` was read.
    PoisonPillRead {
        /// Path index.
        path: usize,
        /// The pill found, if any.
        pill: Option<QuorumCertificate>,
    },
    /// Management agent check.
    AgentCheck {
        /// Running.
        alive: bool,
    },
    /// Isolation address check (send only if isolation addresses are configured).
    IsolationCheck {
        /// At least one answered.
        ok: bool,
    },
    /// A fence-agent command finished.
    FenceResult {
        /// The command.
        id: CommandId,
        /// Its result.
        result: AgentResult,
    },
    /// A [`Output::ClearPill`] finished: `ok` when no path holds that pill any more.
    PillCleared {
        /// The command.
        id: CommandId,
        /// Cleared (or not there) on every path.
        ok: bool,
    },
    /// A poison-pill write finished.
    PillWritten {
        /// The command.
        id: CommandId,
        /// Written on every path.
        ok: bool,
    },
    /// Periodic power status of a host (from its fence agent's `status`).
    PowerStatus {
        /// The host.
        member: MemberId,
        /// Its power.
        state: PowerState,
    },
    /// The periodic `monitor` of a host's fence device for one level.
    FenceDevice {
        /// The host whose device it is.
        member: MemberId,
        /// Fence level index.
        level: u8,
        /// The device answered.
        ok: bool,
    },
    /// An operator's request.
    Operator(OperatorCommand),
    /// The daemon is stopping on purpose: tell peers, stop acting.
    Shutdown,
}

/// How long a stopping daemon waits for its stop to be known ([`Node::leave_progress`]) before
/// it gives up and leaves its watchdog armed.
///
/// [`Node::leave_progress`]: super::Node::leave_progress
pub const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// A clean stop in progress, as [`Node::leave_progress`] sees it now.
///
/// [`Node::leave_progress`]: super::Node::leave_progress
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveProgress {
    /// Peers that recorded the stop (durably, before acknowledging).
    pub acked_by: Vec<MemberId>,
    /// Peers that might still vote to fence this host without knowing of its stop: every peer
    /// that has not acknowledged it (one that stopped itself may start again unaware).
    pub unaware: usize,
    /// Votes a certificate needs.
    pub quorum: usize,
}

impl LeaveProgress {
    /// Fewer than a quorum could vote unaware: every certificate against this host would need
    /// the vote of a member that knows (and refuses `TargetLeft`). The watchdog may be closed.
    pub fn known(&self) -> bool {
        self.unaware < self.quorum
    }
}

/// Fence-agent action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentAction {
    /// Power off.
    Off,
    /// Power on.
    On,
    /// Report power state.
    Status,
}

/// Run a fence agent.
#[derive(Debug, Clone)]
pub struct FenceCommand {
    /// Echo in [`Input::FenceResult`].
    pub id: CommandId,
    /// Host to act on.
    pub target: MemberId,
    /// Fence level index (the driver maps it to an agent and its parameters).
    pub level: u8,
    /// Action.
    pub action: AgentAction,
    /// Kill the agent and report [`AgentResult::TimedOut`] after this.
    pub timeout: Duration,
    /// The certificate that authorises it.
    pub qc: Arc<QuorumCertificate>,
}

/// What a host does to itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocalAction {
    /// Sync with a deadline, then `sysrq b`.
    Reboot,
    /// `systemctl reboot`, escalating to `Reboot`.
    GracefulReboot,
    /// Restart the management agent; VMs keep running.
    RestartAgent,
    /// Power off at once (`sysrq o`).
    PowerOff,
}

impl LocalAction {
    /// Whether the action stops the host's VMs.
    pub fn stops_vms(self) -> bool {
        !matches!(self, LocalAction::RestartAgent)
    }
}

impl From<SelfFenceAction> for LocalAction {
    fn from(a: SelfFenceAction) -> Self {
        match a {
            SelfFenceAction::Reboot => LocalAction::Reboot,
            SelfFenceAction::GracefulReboot => LocalAction::GracefulReboot,
            SelfFenceAction::RestartAgent => LocalAction::RestartAgent,
        }
    }
}

/// Why a host acts on itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelfFenceReason {
    /// A quorum of healthy peers agreed that its storage fault is local.
    QuorumAgreed,
    /// A valid poison pill naming its current boot was found in its slot.
    PoisonPill,
}

/// Act on this host.
#[derive(Debug, Clone)]
pub struct SelfFenceCommand {
    /// What to do.
    pub action: LocalAction,
    /// Why.
    pub reason: SelfFenceReason,
    /// The certificate that authorises it.
    pub qc: Arc<QuorumCertificate>,
}

/// Watchdog decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchdogAction {
    /// Keep the host alive: write a keepalive.
    Feed,
    /// Stop feeding: the watchdog resets the host at its deadline.
    Stop,
}

/// Why the watchdog stopped being fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchdogStopReason {
    /// No storage write and no quorum vouching for this host.
    NoStorageNoQuorum,
    /// Told to die in this boot (poison pill, VM-stopping self-fence).
    FenceOrdered,
}

/// The answer to a local self-fence request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelfFenceAnswer {
    /// Every storage path is Failed: the quorum is being asked now (it may still refuse).
    AskingQuorum,
    /// This host's own storage heartbeat works: nothing to do. Should it fail, the host asks
    /// the quorum by itself.
    StorageHealthy,
    /// `self_fence.action` is `log-only` or `none`: nothing would be done.
    NoAction,
    /// Disarmed, observe mode or maintenance: nothing would be done.
    Blocked(SelfFenceBlock),
}

impl SelfFenceAnswer {
    /// Whether the request was taken (the quorum decides from here).
    pub fn accepted(self) -> bool {
        matches!(
            self,
            SelfFenceAnswer::AskingQuorum | SelfFenceAnswer::StorageHealthy
        )
    }

    /// One sentence for the requester.
    pub fn explain(self) -> &'static str {
        match self {
            SelfFenceAnswer::AskingQuorum => {
                "every storage path of this host has failed: asking the healthy peers to agree to the configured self-fence action now"
            }
            SelfFenceAnswer::StorageHealthy => {
                "peerfence's own storage heartbeat on this host works: no self-fence; if it fails, peerfence asks the quorum by itself"
            }
            SelfFenceAnswer::NoAction => {
                "self_fence.action is log-only or none: peerfence will not act on this host"
            }
            SelfFenceAnswer::Blocked(SelfFenceBlock::Maintenance) => {
                "this host is in maintenance: no self-fence"
            }
            SelfFenceAnswer::Blocked(SelfFenceBlock::NotArmed) => {
                "the cluster is disarmed or in observe mode: no self-fence"
            }
            SelfFenceAnswer::Blocked(SelfFenceBlock::NoQuorum) => {
                "no quorum of healthy peers agrees: no self-fence"
            }
        }
    }
}

/// Why a self-fence did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelfFenceBlock {
    /// No quorum of healthy peers agreed (they may have lost storage too).
    NoQuorum,
    /// The host is in maintenance.
    Maintenance,
    /// Disarmed or observe mode.
    NotArmed,
}

/// Why a "safe to recover" was emitted: the evidence of confirmation.
pub type SafeEvidence = Evidence;

/// Notable things, for operators, hooks and the simulator's checkers.
#[derive(Debug, Clone)]
pub enum Event {
    /// A member's SWIM state changed in this node's view.
    SwimChanged {
        /// Member.
        member: MemberId,
        /// Before.
        from: SwimState,
        /// After.
        to: SwimState,
    },
    /// A member's HA state changed in this node's view.
    HaChanged {
        /// Member.
        member: MemberId,
        /// Before.
        from: HaState,
        /// After.
        to: HaState,
    },
    /// This node's own verdict changed.
    VerdictChanged {
        /// New verdict.
        verdict: Verdict,
    },
    /// Observe mode: this node would have proposed a fence.
    WouldFence {
        /// Target.
        target: MemberId,
        /// Its boot.
        boot: BootId,
    },
    /// This node proposed.
    Proposed {
        /// The proposal.
        proposal: Proposal,
    },
    /// This node gave up a round without a quorum.
    RoundAbandoned {
        /// The proposal.
        proposal: Proposal,
        /// A refusal reason heard, if any.
        refusal: Option<RefuseReason>,
    },
    /// This node voted (after persisting its promise).
    Voted {
        /// The proposal.
        proposal: Proposal,
        /// This node's verdict when voting (always Healthy).
        verdict: Verdict,
    },
    /// A fence started under a certificate (emitted by the executor).
    FenceStarted {
        /// The certificate.
        qc: Arc<QuorumCertificate>,
        /// Attempt number.
        attempt: u16,
    },
    /// A verified quorum certificate of another proposer was received: a fence (or self-fence)
    /// of its target runs elsewhere under it. For history and operators; no decision uses it.
    CertificateSeen {
        /// The certificate.
        qc: Arc<QuorumCertificate>,
    },
    /// One level failed; the next runs, if any.
    LevelFailed {
        /// Target.
        target: MemberId,
        /// Level index.
        level: u8,
        /// Timed out (else failed).
        timed_out: bool,
    },
    /// A fence was confirmed (by the executor, or learnt from it).
    FenceConfirmed {
        /// Target.
        target: MemberId,
        /// Its fenced boot.
        boot: BootId,
        /// Proof.
        evidence: Evidence,
    },
    /// The target's VMs may be restarted elsewhere. Emitted only after confirmation.
    SafeToRecover {
        /// Target.
        target: MemberId,
        /// The boot whose VMs are gone.
        boot: BootId,
        /// Proof.
        evidence: Evidence,
    },
    /// An attempt failed.
    FenceFailed {
        /// Target.
        target: MemberId,
        /// Its boot.
        boot: BootId,
        /// Attempt number.
        attempt: u16,
        /// Why.
        reason: FailReason,
        /// When the next attempt may start; `None` when attempts are exhausted.
        retry_in: Option<Duration>,
    },
    /// An attempt was stopped because fencing became wrong.
    FenceAborted {
        /// Target.
        target: MemberId,
        /// Why.
        reason: AbortReason,
    },
    /// Storm mode entered: too many members down or unhealthy; nobody fences.
    StormEntered {
        /// Members down or unhealthy.
        count: usize,
        /// Threshold.
        threshold: usize,
    },
    /// Storm mode left after the cooldown.
    StormLeft,
    /// Every budget slot is spent in this node's view; no new fence until the window passes.
    BudgetExhausted {
        /// The target that could not be proposed.
        target: MemberId,
    },
    /// This host asks its peers' leave to self-fence.
    SelfFenceRequested {
        /// The configured action.
        action: SelfFenceAction,
    },
    /// This host's self-fence is not happening.
    SelfFenceBlocked {
        /// Why.
        reason: SelfFenceBlock,
    },
    /// `log-only` self-fence setting: this host would have asked to self-fence.
    SelfFenceLogOnly,
    /// This host is acting on itself.
    SelfFenceExecuted {
        /// Action.
        action: LocalAction,
        /// Reason.
        reason: SelfFenceReason,
    },
    /// A poison pill from an earlier boot was found and cleared.
    StalePoisonPill,
    /// A pill or certificate that does not verify was received; nothing was done.
    ForgedCertificate {
        /// Who sent or wrote it (if known).
        from: Option<MemberId>,
    },
    /// The watchdog stopped being fed.
    WatchdogStopped {
        /// Why.
        reason: WatchdogStopReason,
    },
    /// Feeding resumed.
    WatchdogResumed,
    /// A host was seen with a new boot id.
    Rebooted {
        /// Host.
        member: MemberId,
        /// Boot before.
        old: BootId,
        /// Boot now.
        new: BootId,
    },
    /// Power state of a host changed.
    PowerChanged {
        /// Host.
        member: MemberId,
        /// New state.
        state: PowerState,
    },
    /// A host found Off with no fence in flight: reported, never "recovered" on that basis.
    HostFoundOff {
        /// Host.
        member: MemberId,
    },
    /// Arm switch changed.
    ArmChanged {
        /// Armed now.
        armed: bool,
        /// Set by.
        by: MemberId,
    },
    /// Maintenance flag changed.
    MaintenanceChanged {
        /// Host.
        member: MemberId,
        /// On now.
        on: bool,
        /// Set by.
        by: MemberId,
    },
    /// An operator's arm, disarm or maintenance command did not take effect (nothing was set
    /// or announced).
    FlagRefused {
        /// Why.
        reason: &'static str,
    },
    /// A manual fence request was accepted (it still needs a quorum) or refused.
    ManualFence {
        /// Target.
        target: MemberId,
        /// Accepted.
        accepted: bool,
    },
    /// A poison pill could not be cleared after ten tries: it is retried (every minute), but
    /// an operator should look at the storage ("remove PATH/HOST.pill by hand").
    PillNotCleared {
        /// Whose slot.
        target: MemberId,
    },
    /// A local self-fence request ([`OperatorCommand::SelfFenceRequest`]) was answered.
    SelfFenceRequestAnswered {
        /// The answer.
        answer: SelfFenceAnswer,
    },
    /// A member's daemon stopped cleanly (learnt from its notice, gossip, or its heartbeat slot):
    /// peerfence no longer protects that host, and nobody fences it for its silence.
    MemberLeft {
        /// Member.
        member: MemberId,
        /// The generation that stopped.
        generation: u32,
    },
    /// A member that had stopped cleanly runs again (a higher generation).
    MemberReturned {
        /// Member.
        member: MemberId,
        /// Its new generation.
        generation: u32,
    },
    /// This node's eligibility changed.
    EligibilityChanged {
        /// `None` when eligible.
        ineligible: Option<Ineligible>,
    },
}

/// Everything a node asks its driver to do.
#[derive(Debug, Clone)]
pub enum Output {
    /// Make this state durable before acting on any later output.
    Persist(Box<DurableState>),
    /// Send bytes to a peer. `reliable` messages (agreement) deserve a stream; others
    /// (SWIM, contact probes) are datagrams.
    Send {
        /// Peer.
        to: MemberId,
        /// Envelope bytes.
        bytes: Bytes,
        /// Deliver reliably.
        reliable: bool,
        /// A SWIM packet: it depends on no persist but the one holding the current generation,
        /// and may overtake a persist in flight (see the module docs).
        membership: bool,
    },
    /// Run a fence agent.
    Fence(FenceCommand),
    /// Write the poison pill into `target`'s slot on every shared path.
    WritePill {
        /// Echo in [`Input::PillWritten`].
        id: CommandId,
        /// Target.
        target: MemberId,
        /// The certificate written.
        qc: Arc<QuorumCertificate>,
    },
    /// Clear `target`'s poison-pill slot on every path, but only where it still holds the
    /// pill of `proposal` (a newer attempt's pill stays). Report [`Input::PillCleared`]; the node
    /// keeps the clear durably and asks again, with back-off, until it succeeds.
    ClearPill {
        /// Echo in [`Input::PillCleared`].
        id: CommandId,
        /// Whose slot.
        target: MemberId,
        /// The attempt whose pill it is.
        proposal: Proposal,
    },
    /// Act on this host.
    SelfFence(SelfFenceCommand),
    /// Feed or stop the watchdog.
    Watchdog(WatchdogAction),
    /// The daemon stops on purpose: stop writing heartbeats and write, on every path, one last
    /// record of this generation marked stopped (`StorageBody::Stopped`), so that any reader of
    /// shared storage, also one that restarts later, knows the host is no longer protected.
    StopHeartbeat {
        /// The generation that stops.
        generation: u32,
    },
    /// Something worth telling.
    Event(Event),
}
