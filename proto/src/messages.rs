//! Message bodies: the fencing agreement (proposal, vote, refusal, release, quorum certificate,
//! outcome) and the gossiped state (health, arm state, maintenance).
//!
//! Every type here is plain data. Validation that needs the roster (is this voter a member, is
//! the signature good) lives in the core; validation that needs nothing else (sizes, counts)
//! lives in [`crate::Validate`] and runs on every decode.

use crate::ids::{BootId, ClusterId, ConfigDigest, MemberId, Round, Signature};
use serde::{Deserialize, Serialize};

/// Most shared-storage paths a health update may describe.
pub const MAX_STORAGE_PATHS: usize = 16;

/// What a fencing round asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FenceKind {
    /// Power the target off through its fence levels (BMC, then poison pill).
    Fence,
    /// The target asks the quorum's leave to take its own configured action, because it lost its
    /// own storage while its peers did not. Proposer and target are the same member.
    SelfFence(SelfFenceAction),
    /// An operator's explicit fence of a host whose daemon was stopped cleanly. Voters accept it
    /// although the host left (every other rule still applies), and only power-Off evidence
    /// confirms it: a daemon that stopped cleanly closed its watchdog, so no deadline ever does.
    Operator,
}

impl FenceKind {
    /// Whether carrying it out stops the target's VMs (and so spends fence budget).
    pub fn stops_vms(self) -> bool {
        match self {
            FenceKind::Fence | FenceKind::Operator => true,
            FenceKind::SelfFence(action) => action.stops_vms(),
        }
    }

    /// Whether another member runs it through fence levels (not a self-fence).
    pub fn is_fence(self) -> bool {
        matches!(self, FenceKind::Fence | FenceKind::Operator)
    }
}

/// Self-fence actions that need the quorum's agreement. `log-only` and `none` never do and never
/// appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SelfFenceAction {
    /// Sync with a deadline, then `sysrq b`.
    Reboot,
    /// `systemctl reboot`, escalating to `Reboot` after a deadline.
    GracefulReboot,
    /// Restart the management agent unit; the VMs keep running.
    RestartAgent,
}

impl SelfFenceAction {
    /// Whether the action stops the host's VMs.
    pub fn stops_vms(self) -> bool {
        matches!(
            self,
            SelfFenceAction::Reboot | SelfFenceAction::GracefulReboot
        )
    }
}

/// A proposal to fence `target` in its boot `target_boot`. Voters sign exactly these fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Proposal {
    /// Member to fence (for a self-fence, the proposer itself).
    pub target: MemberId,
    /// The target's boot the proposal is about; a target seen with another boot is not fenced.
    pub target_boot: BootId,
    /// The proposing member (must equal the envelope's authenticated sender).
    pub proposer: MemberId,
    /// Unique per proposer and target across restarts.
    pub round: Round,
    /// Fence or self-fence.
    pub kind: FenceKind,
    /// Fence-budget slot (0..budget) this fence spends; `None` for actions that keep VMs running.
    /// A voter reserves a slot for one target per budget window, so any two fences that share a
    /// slot inside one window would need a voter that reserved it twice: there is none.
    pub budget_slot: Option<u8>,
    /// Concurrency lane (0..max_concurrent). A voter holds at most one live promise per lane, so
    /// no more than `max_concurrent` fences can be in flight cluster-wide.
    pub lane: u8,
}

/// What the voter saw when it voted; signed with the vote and shown with the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VoteEvidence {
    /// The voter's own health verdict was Healthy when it voted (always true in a valid vote;
    /// signed so that a certificate states it).
    pub voter_healthy: bool,
    /// How long the voter had seen the target Down in SWIM, in milliseconds (0 for self-fence).
    pub target_down_ms: u32,
    /// How long the voter had seen the target's storage heartbeat not advancing, in milliseconds.
    pub heartbeat_stalled_ms: u32,
}

/// A voter's signed grant of its promise for one proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The proposal voted for.
    pub proposal: Proposal,
    /// One signed vote.
    pub vote: SignedVote,
}

/// The part of a vote a certificate stores (the proposal is stored once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVote {
    /// The voting member.
    pub voter: MemberId,
    /// What it saw.
    pub evidence: VoteEvidence,
    /// ed25519 over [`vote_signing_bytes`].
    pub signature: Signature,
}

/// A proposal plus votes from a strict majority of configured members: the only thing that may
/// start a fence. Any member can verify it with the roster's public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumCertificate {
    /// What was agreed.
    pub proposal: Proposal,
    /// At least a quorum of distinct voters (at most [`crate::ids::MAX_MEMBERS`]).
    pub votes: Vec<SignedVote>,
}

/// Domain separation tag for vote signatures: a signature made for anything else never verifies
/// as a vote.
pub const VOTE_SIGNING_CONTEXT: &[u8] = b"peerfence/vote/v1";

/// The exact bytes a voter signs: context, cluster, config digest, proposal, voter, evidence.
/// Binding the cluster and digest means a vote from one cluster can never count in another.
pub fn vote_signing_bytes(
    cluster: &ClusterId,
    digest: ConfigDigest,
    proposal: &Proposal,
    voter: MemberId,
    evidence: &VoteEvidence,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(VOTE_SIGNING_CONTEXT);
    // Encoding plain fixed-shape data into a Vec cannot fail; the fallback keeps this total
    // anyway (an empty body never verifies against a real signature).
    let body = (cluster, digest, proposal, voter, evidence);
    match bincode::serde::encode_to_vec(body, crate::envelope::wire_config()) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(_) => out.clear(),
    }
    out
}

/// Why a voter refused; sent back so that the proposer can stop early and operators can see why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The voter's own health verdict is not Healthy (rule E1).
    VoterUnhealthy,
    /// The voter does not see a quorum of members alive (rule E2).
    NoQuorumVisible,
    /// The cluster is disarmed (rule E3).
    Disarmed,
    /// The cluster runs in observe mode (rule E3).
    ObserveMode,
    /// Too many members are down or unhealthy: storm mode (rule E4).
    Storm,
    /// The voter started recently and has not observed long enough to judge.
    Initializing,
    /// The voter does not see the target Down in SWIM.
    TargetNotDown,
    /// The voter sees the target's storage heartbeat advancing: partitioned, not dead.
    TargetStorageAlive,
    /// The voter cannot tell whether the target's heartbeat advances (its own reads are stale,
    /// or it has not observed for `activity_timeout` yet).
    TargetStorageUnknown,
    /// The target is in maintenance.
    TargetInMaintenance,
    /// The target was already fenced in this boot.
    TargetAlreadyFenced,
    /// The voter knows the target under another boot id.
    TargetBootMismatch,
    /// The voter holds a live promise for this target to another round.
    PromisedElsewhere {
        /// Holder of the promise.
        proposer: MemberId,
        /// Its round.
        round: Round,
    },
    /// Every fence-budget slot is reserved in the voter's current window.
    BudgetSpent,
    /// This budget slot is reserved for another target in the voter's window.
    SlotTaken {
        /// The slot.
        slot: u8,
    },
    /// The voter holds a live promise for another target on this lane.
    LaneBusy {
        /// The lane.
        lane: u8,
    },
    /// The proposal is malformed (slot or lane out of range, wrong kind for its target).
    Invalid,
    /// The target's daemon was stopped cleanly and has not returned: only an operator's explicit
    /// fence ([`FenceKind::Operator`]) may fence it.
    TargetLeft,
    /// A fence of the target's boot is already in flight in the voter's view (it saw the
    /// certificate, or runs the attempt): a second one must not start.
    FenceInFlight,
    /// The voter lost its durable state (a replaced disk) and waits until every promise and
    /// budget reservation it may have made has lapsed.
    Recovering,
}

/// A refusal to vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The proposal refused.
    pub proposal: Proposal,
    /// The refusing member.
    pub voter: MemberId,
    /// Why.
    pub reason: RefuseReason,
}

/// The proposer gives up a round that never started a fence: voters drop the promise and free
/// the budget slot it reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The abandoned proposal.
    pub proposal: Proposal,
}

/// Proof that a fence attempt reached its goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Evidence {
    /// A fence agent reported the power Off after `off` (level index).
    PowerOff {
        /// Fence level that confirmed.
        level: u8,
    },
    /// The target came back with a new boot id: its previous instance is gone.
    NewBootId {
        /// The new boot.
        boot: BootId,
    },
    /// Poison pill written, heartbeat stopped, and the watchdog deadline (with drift margin)
    /// passed: the target's watchdog has reset it.
    WatchdogDeadline {
        /// Fence level (the poison pill level) that confirmed.
        level: u8,
    },
    /// The target self-fenced under a certificate (stopping its watchdog at once), is Down and
    /// silent on storage, and its watchdog deadline (with drift margin) has passed.
    SelfFenceDeadline,
}

/// Why a fence attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailReason {
    /// Every level failed or timed out.
    AllLevelsFailed,
    /// The proposer restarted in the middle of the attempt.
    Interrupted,
}

/// Why a fence attempt was stopped before confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortReason {
    /// The target's storage heartbeat advanced again: it is alive.
    TargetAlive,
    /// The target entered maintenance.
    Maintenance,
    /// The target's daemon stopped cleanly (its watchdog is closed: no deadline can confirm).
    TargetLeft,
}

/// Result of a fence attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutcomeResult {
    /// Fenced, with evidence. "Safe to recover" follows.
    Confirmed(Evidence),
    /// Not fenced; retried with back-off.
    Failed(FailReason),
    /// Stopped because fencing became wrong.
    Aborted(AbortReason),
}

/// The end of a fence attempt, sent by its executor to every member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceOutcome {
    /// The proposal the attempt executed.
    pub proposal: Proposal,
    /// 1 for the first attempt on this target boot, then 2, 3...
    pub attempt: u16,
    /// What happened.
    pub result: OutcomeResult,
}

/// An outcome signed by its executor (the proposal's proposer) with its vote key: the executor's
/// own statement of what happened and of the evidence. Any member can verify it, whoever relays
/// it, and no other member can make one. Replaces the unsigned [`Message::Outcome`] and
/// [`Broadcast::Outcome`], which receivers no longer act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOutcome {
    /// The outcome.
    pub outcome: FenceOutcome,
    /// ed25519 of `outcome.proposal.proposer` over [`outcome_signing_bytes`].
    pub signature: Signature,
}

/// A signed outcome with the certificate it ends: what the executor sends every member directly,
/// so that a receiver that missed the certificate can still verify that a quorum agreed before it
/// takes a `Confirmed` as true.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedOutcome {
    /// The certificate the attempt ran under (its proposal is the outcome's).
    pub qc: QuorumCertificate,
    /// The executor's signed outcome.
    pub signed: SignedOutcome,
}

/// Domain separation tag for outcome signatures (never verifies as a vote, nor a vote as this).
pub const OUTCOME_SIGNING_CONTEXT: &[u8] = b"peerfence/outcome/v1";

/// The exact bytes an executor signs: context, cluster, config digest, the whole outcome
/// (proposal, attempt, result with its evidence).
pub fn outcome_signing_bytes(
    cluster: &ClusterId,
    digest: ConfigDigest,
    outcome: &FenceOutcome,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(OUTCOME_SIGNING_CONTEXT);
    // As in `vote_signing_bytes`: cannot fail; an empty body never verifies.
    match bincode::serde::encode_to_vec((cluster, digest, outcome), crate::envelope::wire_config())
    {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(_) => out.clear(),
    }
    out
}

/// A member's health verdict: whether it may propose or vote (rule E1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Storage writable on every required path, isolation check ok.
    Healthy,
    /// Not healthy; see the details.
    Unhealthy,
    /// Just started: its own storage has not been measured yet. Not Healthy (it may not vote),
    /// but not evidence of trouble either (peers do not count it toward a storm).
    Initializing,
}

/// Storage heartbeat write health on one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageHealth {
    /// Writes complete under the slow threshold.
    Ok,
    /// Writes complete, but slowly. Slow is not Failed.
    Slow,
    /// Several consecutive writes failed or timed out.
    Failed,
    /// No write has completed yet since start.
    Unknown,
    /// Writes complete, but the path has not proved it is shared: this host does not read back
    /// what it wrote, or sees no peer's heartbeat move on it (a mount that failed at boot, a
    /// directory replaced underneath, a stale client cache). Not healthy.
    Unverified,
}

/// Management agent liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentHealth {
    /// The agent is running.
    Alive,
    /// The agent is not running; the VMs may well be.
    Dead,
    /// Not configured or not checked yet.
    Unknown,
}

/// Isolation address reachability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IsolationHealth {
    /// At least one isolation address answers.
    Ok,
    /// None answers.
    Failed,
    /// Not configured.
    NotConfigured,
}

/// A member's own health, gossiped as a foca custom broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthUpdate {
    /// Whose health.
    pub member: MemberId,
    /// Its daemon generation; with `seq` it orders updates across restarts.
    pub generation: u32,
    /// Grows with each update of one generation.
    pub seq: u64,
    /// Its boot id.
    pub boot: BootId,
    /// Its verdict.
    pub verdict: Verdict,
    /// Write health per shared storage path (at most [`MAX_STORAGE_PATHS`]).
    pub storage: Vec<StorageHealth>,
    /// Management agent.
    pub agent: AgentHealth,
    /// Isolation addresses.
    pub isolation: IsolationHealth,
}

/// A health update signed by its member's vote key: only the member itself can say what its
/// boot, generation and verdict are, whoever relays the update. Replaces [`Broadcast::Health`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHealth {
    /// The update.
    pub health: HealthUpdate,
    /// ed25519 of `health.member` over [`health_signing_bytes`].
    pub signature: Signature,
}

/// Domain separation tag for health signatures.
pub const HEALTH_SIGNING_CONTEXT: &[u8] = b"peerfence/health/v1";

/// The exact bytes a member signs for its health: context, cluster, config digest, the update.
pub fn health_signing_bytes(
    cluster: &ClusterId,
    digest: ConfigDigest,
    health: &HealthUpdate,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(HEALTH_SIGNING_CONTEXT);
    // As in `vote_signing_bytes`: cannot fail; an empty body never verifies.
    match bincode::serde::encode_to_vec((cluster, digest, health), crate::envelope::wire_config()) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(_) => out.clear(),
    }
    out
}

/// A version for cluster-wide flags: the higher counter wins, ties broken by the member that set
/// it, so every member converges on the same value whatever order updates arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlagVersion {
    /// Lamport-style counter.
    pub counter: u64,
    /// The member where the operator set it.
    pub by: MemberId,
}

/// Cluster-wide arm switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmState {
    /// Armed: fencing may happen. Disarmed: nobody proposes or votes.
    pub armed: bool,
    /// Version of this value.
    pub version: FlagVersion,
}

/// Maintenance flag of one host: never fenced, never self-fences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceState {
    /// The host.
    pub member: MemberId,
    /// In maintenance.
    pub on: bool,
    /// Version of this value.
    pub version: FlagVersion,
}

/// Items carried as foca custom broadcasts (piggybacked on SWIM packets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Broadcast {
    /// A member's health.
    Health(HealthUpdate),
    /// The arm switch.
    Arm(ArmState),
    /// A maintenance flag.
    Maintenance(MaintenanceState),
    /// A fence outcome (also sent directly; gossip reaches members that missed it).
    Outcome(FenceOutcome),
    /// A member's daemon is stopping on purpose (not crashing).
    Leave(LeaveNotice),
    /// A fence outcome signed by its executor (gossip reaches members that missed the direct
    /// [`Message::CertifiedOutcome`]; a `Confirmed` counts only where the certificate is known).
    SignedOutcome(SignedOutcome),
    /// A member's health, signed by it (replaces [`Broadcast::Health`]).
    SignedHealth(SignedHealth),
}

/// A daemon stopping cleanly says so before it goes quiet. Peers then treat that member like one
/// in maintenance until it returns with a higher generation: an operator stopped the daemon, the
/// host and its VMs still run, and fencing it would kill them for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveNotice {
    /// The member leaving.
    pub member: MemberId,
    /// The generation that leaves; a later generation is a new run.
    pub generation: u32,
}

/// Every message between peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// One foca (SWIM) packet, custom broadcasts included.
    Swim(Vec<u8>),
    /// Please vote for this proposal.
    Propose(Proposal),
    /// A signed vote.
    Vote(Vote),
    /// A refusal.
    Refuse(Refusal),
    /// The proposer abandons a round that never started a fence.
    Release(Release),
    /// A fence is starting under this certificate.
    Certificate(QuorumCertificate),
    /// A fence attempt ended.
    Outcome(FenceOutcome),
    /// "Can you hear me, and do you vouch for me?" Sent only by a member whose own storage is not
    /// healthy: its watchdog keeps being fed only while a quorum vouches for it.
    Contact(Contact),
    /// Answer to a [`Contact`].
    ContactAck(ContactAck),
    /// The sender's daemon is stopping on purpose (also gossiped as [`Broadcast::Leave`]).
    Leave(LeaveNotice),
    /// Anti-entropy: the fences the sender knows of in the current budget window, sent to a
    /// member that starts or comes back, so that it learns certificates and outcomes it missed
    /// (and, after losing its state, the budget slots it had reserved).
    FenceNews(FenceNews),
    /// "I have recorded your clean stop" (durably, before sending): the answer to a [`Leave`]
    /// naming the leaver and the generation that stopped. A stopping daemon magic-closes its
    /// watchdog only once enough members know (or its slot took the stop record): a stop nobody
    /// heard is, to its peers, a silent host they will fence.
    LeaveAck(LeaveNotice),
    /// A fence attempt ended: the executor's signed outcome with the certificate it ran under
    /// (replaces [`Message::Outcome`]).
    CertifiedOutcome(CertifiedOutcome),
    /// Fence news whose outcomes are signed by their executors (replaces
    /// [`Message::FenceNews`]).
    SignedFenceNews(SignedFenceNews),
}

/// One known fence with its executor's signed outcome, if the sender has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedNewsItem {
    /// The certificate the fence ran under.
    pub qc: QuorumCertificate,
    /// Its outcome as signed by the executor; its proposal must be the certificate's.
    pub outcome: Option<SignedOutcome>,
}

/// [`FenceNews`] with signed outcomes: the same batch, part and slot rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedFenceNews {
    /// Identifies the batch.
    pub batch: u64,
    /// This part's number, below `parts`.
    pub part: u8,
    /// Parts in the batch.
    pub parts: u8,
    /// At most [`NEWS_ITEMS_MAX`] items.
    pub items: Vec<SignedNewsItem>,
    /// As [`FenceNews::slots`].
    pub slots: Vec<(u8, MemberId, BootId)>,
}

/// Certificates carried in one [`FenceNews`] message at most (a certificate of 128 votes is
/// about 13 KiB; four fit in an envelope).
pub const NEWS_ITEMS_MAX: usize = 4;
/// Parts one batch of news may have at most.
pub const NEWS_PARTS_MAX: u8 = 16;

/// One known fence: its certificate, and how it ended if the sender knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewsItem {
    /// The certificate the fence (or VM-stopping self-fence) ran under.
    pub qc: QuorumCertificate,
    /// Its outcome, if known to the sender.
    pub outcome: Option<OutcomeResult>,
}

/// One part of a batch of fence news.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceNews {
    /// Identifies the batch (the sender's choice); parts of one batch share it.
    pub batch: u64,
    /// This part's number, below `parts`.
    pub part: u8,
    /// Parts in the batch (at least one, even when there is no news).
    pub parts: u8,
    /// At most [`NEWS_ITEMS_MAX`] items.
    pub items: Vec<NewsItem>,
    /// The budget slots the sender holds reserved (slot, target, target boot), in the first
    /// part only, at most [`NEWS_SLOTS_MAX`]: a member that lost its state reserves them too
    /// before it votes again.
    pub slots: Vec<(u8, MemberId, BootId)>,
}

/// Slot reservations one batch of news lists at most (the largest budget).
pub const NEWS_SLOTS_MAX: usize = 32;

/// A contact probe (see [`Message::Contact`]). Sent directly to `target`, or to a relay that
/// forwards it once to `target` (like SWIM's indirect probes), so that a member still reaches
/// peers it has no direct link to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The member asking. A relay forwards only probes whose sender is their origin: one hop.
    pub origin: MemberId,
    /// The member asked; a receiver that is not the target relays.
    pub target: MemberId,
    /// The origin's current boot; peers that agreed to fence that boot do not vouch.
    pub boot: BootId,
    /// Echoed in the answer; tells the origin when the probe it answers was sent.
    pub nonce: u64,
}

/// The answer to a contact probe, sent back the way the probe came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactAck {
    /// The member that asked; a receiver that is not the origin relays the answer to it.
    pub origin: MemberId,
    /// The member answering.
    pub voucher: MemberId,
    /// The probe's nonce.
    pub nonce: u64,
    /// False when the answering member holds a promise, a fence in flight, or a fence record
    /// against the prober's boot: such a peer must not keep the prober's watchdog fed.
    pub vouch: bool,
}

impl Message {
    /// Short name, for counters and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Swim(_) => "swim",
            Message::Propose(_) => "propose",
            Message::Vote(_) => "vote",
            Message::Refuse(_) => "refuse",
            Message::Release(_) => "release",
            Message::Certificate(_) => "certificate",
            Message::Outcome(_) => "outcome",
            Message::Contact(_) => "contact",
            Message::ContactAck(_) => "contact_ack",
            Message::Leave(_) => "leave",
            Message::FenceNews(_) => "fence_news",
            Message::LeaveAck(_) => "leave_ack",
            Message::CertifiedOutcome(_) => "certified_outcome",
            Message::SignedFenceNews(_) => "signed_fence_news",
        }
    }
}
