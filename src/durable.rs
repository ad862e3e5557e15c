//! The durable part of a node's state: what must survive a crash for the safety argument to hold.
//!
//! * promises: a voter that forgot a promise could vote twice for one target;
//! * budget-slot reservations: forgetting them would let the budget be spent twice;
//! * the fence log: an executor that restarts must know an attempt may still be running;
//! * fenced boots: a host is fenced at most once per boot;
//! * arm and maintenance flags, the SWIM generation, and the "watchdog stopped for this boot"
//!   latch (a daemon restarted after a poison pill must not resume feeding).
//!
//! The node emits [`crate::node::Output::Persist`] with a snapshot of this value *before* any
//! output that depends on it; the driver writes it durably before releasing later outputs. The
//! simulator crashes nodes between outputs and restarts them from exactly the last snapshot.
//!
//! Instants stored here are on the writing host's monotonic clock, which restarts at reboot.
//! [`DurableState::rebase`] handles that conservatively: after a reboot every stored deadline is
//! re-armed from `now` with its full length, so nothing expires early.

use crate::time::Instant;
use peerfence_proto::{
    ArmState, BootId, FlagVersion, MaintenanceState, MemberId, OutcomeResult, Proposal,
    QuorumCertificate, SignedOutcome, SignedVote,
};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Version of this structure's encoding.
pub const DURABLE_FORMAT: u32 = 3;

/// Format 2 is format 3 without its last field, `news_proofs` (an empty list).
const FORMAT_2: u32 = 2;

/// Fence records kept (oldest dropped first).
pub const FENCE_LOG_MAX: usize = 64;

/// Largest encoded durable state accepted by [`DurableState::decode`].
pub const MAX_DURABLE_BYTES: usize = 4 * 1024 * 1024;

/// A live promise: this node voted for `proposal` and votes for no other round on that target,
/// and no other target on that lane, until it is released or expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    /// The proposal voted for.
    pub proposal: Proposal,
    /// When granted.
    pub granted_at: Instant,
    /// When it lapses without a release.
    pub expires_at: Instant,
    /// The signed vote, resent verbatim if the proposer asks again.
    pub vote: SignedVote,
}

/// A budget slot reserved for one target boot until `reserved_at + budget_window`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotReservation {
    /// Slot number, below the budget.
    pub slot: u8,
    /// For whom.
    pub target: MemberId,
    /// Which boot.
    pub target_boot: BootId,
    /// When reserved (first vote, or first sight of its certificate).
    pub reserved_at: Instant,
    /// Whether a fence under it is known to have started (a certificate was seen); unstarted
    /// reservations are freed when the round is released.
    pub started: bool,
}

/// A fence attempt this node executed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// The certificate it ran under.
    pub qc: QuorumCertificate,
    /// Attempt number for this target boot.
    pub attempt: u16,
    /// When it started.
    pub started_at: Instant,
    /// When it must be over (level budgets exhausted).
    pub deadline: Instant,
    /// How it ended; `None` while running (or if the node crashed during it).
    pub outcome: Option<OutcomeResult>,
    /// A poison pill was (or may have been) written for it: it must be cleared when the attempt
    /// ends, also if this node restarted in between.
    pub pill_written: bool,
}

/// A member whose daemon stopped cleanly: it told the cluster that peerfence no longer protects
/// its host, and until it returns with a higher generation nobody fences it for its silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftMember {
    /// Member.
    pub member: MemberId,
    /// The generation that stopped.
    pub generation: u32,
    /// When this node learnt it (its own clock; re-armed after a reboot of this host).
    pub since: Instant,
}

/// A fence (or VM-stopping self-fence) this node knows started under a certificate in the current
/// budget window: what it tells a member that starts or comes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewsRecord {
    /// The certificate.
    pub qc: QuorumCertificate,
    /// How the attempt ended, once known.
    pub outcome: Option<OutcomeResult>,
    /// When this node learnt it (its clock).
    pub at: Instant,
}

/// Generations a member that lost its state skips above the highest one its own heartbeat slots
/// show (a generation can run for less than a heartbeat interval and never be written there).
pub const RECOVER_GENERATION_MARGIN: u32 = 16;

/// Pending pill clears kept at most (one per member of the largest cluster, twice).
pub const PILLS_TO_CLEAR_MAX: usize = 256;

/// How far one flag update may move the flag counter past the highest this node knows. Each
/// operator command steps it by one, so a genuine update is never near this far ahead; a
/// forged one at `u64::MAX` (which would leave the cluster disarmed for good, no later command
/// being able to outbid it) is refused everywhere.
pub const FLAG_STEP_MAX: u64 = 1 << 20;

/// Fence news kept at most (two full budgets).
pub const NEWS_MAX: usize = 64;

/// The last boot of a member known fenced (confirmed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FencedBoot {
    /// Member.
    pub member: MemberId,
    /// Its boot that was fenced.
    pub boot: BootId,
}

/// Everything a node must not forget across a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    /// [`DURABLE_FORMAT`].
    pub format: u32,
    /// SWIM generation of the last run; the next start uses a larger one.
    pub generation: u32,
    /// Host boot during which this state was last written (decides whether stored instants are
    /// still on the current clock).
    pub boot: Option<BootId>,
    /// At most one per target.
    pub promises: Vec<Promise>,
    /// At most one per budget slot.
    pub slots: Vec<SlotReservation>,
    /// Fence attempts this node executed, newest last, at most [`FENCE_LOG_MAX`].
    pub fence_log: VecDeque<FenceRecord>,
    /// At most one per member.
    pub fenced: Vec<FencedBoot>,
    /// Cluster arm switch.
    pub armed: ArmState,
    /// Maintenance flags, at most one per member.
    pub maintenance: Vec<MaintenanceState>,
    /// Set once this host was told to die in this boot (poison pill, hard self-fence): the
    /// watchdog is never fed again in that boot, even by a restarted daemon.
    pub watchdog_stopped_for: Option<BootId>,
    /// Counter for round numbers within the current generation.
    pub round_counter: u32,
    /// Member names in id order when this state was written. Member-keyed entries follow names
    /// across a roster change (ids are indexes in the name-sorted roster, and shift when a
    /// member is added or removed).
    pub roster: Vec<String>,
    /// Members whose daemons stopped cleanly, at most one per member.
    pub left: Vec<LeftMember>,
    /// Pills this node wrote (or found stale) that still have to be cleared, by their attempt:
    /// a pill left behind would fence its target when it next reads its slot. At most
    /// [`PILLS_TO_CLEAR_MAX`]; retried until cleared, across restarts.
    pub pills_to_clear: Vec<(MemberId, Proposal)>,
    /// Recent fences (certificates and outcomes), newest last, at most [`NEWS_MAX`], none older
    /// than the budget window.
    pub news: VecDeque<NewsRecord>,
    /// Made by [`DurableState::recovered`] for a member whose state was lost: the node it starts
    /// turns this into `votes_from` and clears it.
    pub recovering: bool,
    /// A member that lost its state must also hear the fence news of enough peers (their
    /// certificates and budget reservations) before it votes again, unless a whole budget
    /// window passes first (`votes_from_anyway`).
    pub votes_need_news: bool,
    /// See `votes_need_news`.
    pub votes_from_anyway: Option<Instant>,
    /// A member that lost its state votes (and vouches) again only from this instant: by then
    /// every promise and budget reservation it may have made has lapsed.
    pub votes_from: Option<Instant>,
    /// The writer's clock when this state was last handed out for persisting. A later start in
    /// the same boot whose clock reads less has a clock that did not keep running (a clock that
    /// starts with the process): its stored instants are then re-armed like after a reboot.
    pub clock_at: Instant,
    /// Rounds this node opened as proposer and has not closed. After a restart, those without a
    /// fence record never started a fence (the record is persisted before any fence command),
    /// so they are released at once instead of holding their voters' promises until expiry.
    pub open_rounds: Vec<Proposal>,
    /// The executors' signed outcomes of fences in `news` (at most one per news record): what
    /// this node relays so that a member that missed an outcome can verify it. Kept last so
    /// that format 2 (written before outcomes were signed) decodes with it empty.
    pub news_proofs: Vec<SignedOutcome>,
}

impl Default for DurableState {
    fn default() -> Self {
        Self::new()
    }
}

/// Why stored state could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurableError {
    /// Not decodable.
    #[error("durable state is corrupt: {0}")]
    Corrupt(String),
    /// Written by another format version.
    #[error("durable state has format {found}, this build reads format {DURABLE_FORMAT}")]
    Format {
        /// Stored format.
        found: u32,
    },
}

impl DurableState {
    /// The state of a node that never ran: armed, nothing promised, nothing fenced.
    pub fn new() -> Self {
        Self {
            format: DURABLE_FORMAT,
            generation: 0,
            boot: None,
            promises: Vec::new(),
            slots: Vec::new(),
            fence_log: VecDeque::new(),
            fenced: Vec::new(),
            armed: ArmState {
                armed: true,
                version: FlagVersion {
                    counter: 0,
                    by: MemberId(0),
                },
            },
            maintenance: Vec::new(),
            watchdog_stopped_for: None,
            round_counter: 0,
            roster: Vec::new(),
            left: Vec::new(),
            pills_to_clear: Vec::new(),
            news: VecDeque::new(),
            recovering: false,
            votes_need_news: false,
            votes_from_anyway: None,
            votes_from: None,
            clock_at: Instant::ZERO,
            open_rounds: Vec::new(),
            news_proofs: Vec::new(),
        }
    }

    /// The state for a member whose durable state was lost (a replaced disk, a wiped data
    /// directory) while its peers may remember it: a generation above any it ran before
    /// (`min_generation`, from its own heartbeat slot on shared storage), and a period without
    /// votes, since the promises and budget reservations it held are gone.
    pub fn recovered(min_generation: u32) -> Self {
        Self {
            generation: min_generation,
            recovering: true,
            ..Self::new()
        }
    }

    /// Encodes for storage.
    pub fn encode(&self) -> Vec<u8> {
        let cfg = bincode::config::standard().with_limit::<MAX_DURABLE_BYTES>();
        // Plain data within its size bounds always encodes.
        bincode::serde::encode_to_vec(self, cfg).unwrap_or_default()
    }

    /// Decodes stored bytes (this format, or format 1 of the first releases, converted).
    pub fn decode(bytes: &[u8]) -> Result<Self, DurableError> {
        let cfg = bincode::config::standard().with_limit::<MAX_DURABLE_BYTES>();
        // The format comes first, whatever the version.
        let found: u32 = bincode::serde::decode_from_slice::<u32, _>(bytes, cfg)
            .map(|(f, _)| f)
            .map_err(|e| DurableError::Corrupt(e.to_string()))?;
        if found == 1 {
            return v1::decode(bytes, cfg);
        }
        let upgraded;
        let bytes = if found == FORMAT_2 {
            // Format 2 is this layout up to `open_rounds`; bincode encodes the missing trailing
            // `news_proofs` (an empty list) as its length, one zero byte.
            upgraded = [bytes, &[0u8]].concat();
            &upgraded[..]
        } else {
            bytes
        };
        let (mut state, used): (DurableState, usize) =
            bincode::serde::decode_from_slice(bytes, cfg)
                .map_err(|e| DurableError::Corrupt(e.to_string()))?;
        if used != bytes.len() {
            return Err(DurableError::Corrupt(format!(
                "{} trailing bytes",
                bytes.len() - used
            )));
        }
        if state.format == FORMAT_2 {
            state.format = DURABLE_FORMAT;
        }
        if state.format != DURABLE_FORMAT {
            return Err(DurableError::Format {
                found: state.format,
            });
        }
        Ok(state)
    }

    /// Prepares loaded state for a run in `boot` starting at `now`: stored instants from another
    /// boot are re-armed from `now` with their full length (never shortened). Within one boot
    /// they stand as they are: the driver's clock keeps running across daemon restarts (the
    /// daemon reads CLOCK_BOOTTIME). Should it have restarted anyway (`now` before the last
    /// persisted instant), they are re-armed too, rather than lasting as long as the previous
    /// process had run. Returns whether instants were re-armed.
    pub fn rebase(&mut self, boot: BootId, now: Instant) -> bool {
        if self.boot == Some(boot) && now >= self.clock_at {
            return false;
        }
        for p in &mut self.promises {
            let ttl = p.expires_at.saturating_since(p.granted_at);
            p.granted_at = now;
            p.expires_at = now + ttl;
        }
        for s in &mut self.slots {
            s.reserved_at = now;
        }
        for l in &mut self.left {
            l.since = now;
        }
        let clock_at = self.clock_at;
        for v in [&mut self.votes_from, &mut self.votes_from_anyway]
            .into_iter()
            .flatten()
        {
            // Re-armed: what was left of the wait, from now.
            let left = v.saturating_since(clock_at);
            *v = now + left;
        }
        for n in &mut self.news {
            n.at = now;
        }
        for r in &mut self.fence_log {
            let len = r.deadline.saturating_since(r.started_at);
            r.started_at = now;
            r.deadline = now + len;
        }
        self.boot = Some(boot);
        self.clock_at = now;
        true
    }

    /// Moves member-keyed entries from the roster this state was written under to `names` (the
    /// current roster, in id order). Entries about members no longer configured are dropped:
    /// nobody can fence them under the new roster. Returns whether anything moved.
    pub fn remap_roster(&mut self, names: &[String]) -> bool {
        if self.roster.is_empty() || self.roster == names {
            let changed = self.roster.is_empty() && !names.is_empty();
            self.roster = names.to_vec();
            return changed;
        }
        let map: Vec<Option<MemberId>> = self
            .roster
            .iter()
            .map(|old| {
                names
                    .iter()
                    .position(|n| n == old)
                    .and_then(|i| u16::try_from(i).ok())
                    .map(MemberId)
            })
            .collect();
        let m = |id: MemberId| map.get(id.index()).copied().flatten();
        let mp = |p: &Proposal| -> Option<Proposal> {
            Some(Proposal {
                target: m(p.target)?,
                proposer: m(p.proposer)?,
                ..*p
            })
        };
        self.promises = std::mem::take(&mut self.promises)
            .into_iter()
            .filter_map(|mut pr| {
                pr.proposal = mp(&pr.proposal)?;
                pr.vote.voter = m(pr.vote.voter)?;
                Some(pr)
            })
            .collect();
        self.slots = std::mem::take(&mut self.slots)
            .into_iter()
            .filter_map(|mut r| {
                r.target = m(r.target)?;
                Some(r)
            })
            .collect();
        self.fenced = std::mem::take(&mut self.fenced)
            .into_iter()
            .filter_map(|mut f| {
                f.member = m(f.member)?;
                Some(f)
            })
            .collect();
        self.maintenance = std::mem::take(&mut self.maintenance)
            .into_iter()
            .filter_map(|mut f| {
                f.member = m(f.member)?;
                f.version.by = m(f.version.by).unwrap_or(f.member);
                Some(f)
            })
            .collect();
        self.armed.version.by = m(self.armed.version.by).unwrap_or(MemberId(0));
        self.fence_log = std::mem::take(&mut self.fence_log)
            .into_iter()
            .filter_map(|mut r| {
                r.qc.proposal = mp(&r.qc.proposal)?;
                r.qc.votes.retain_mut(|v| match m(v.voter) {
                    Some(id) => {
                        v.voter = id;
                        true
                    }
                    None => false,
                });
                Some(r)
            })
            .collect();
        // Certificates name members by roster index and were signed under the old roster's
        // digest: they no longer verify. Forget them.
        self.news.clear();
        self.news_proofs.clear();
        self.pills_to_clear = std::mem::take(&mut self.pills_to_clear)
            .into_iter()
            .filter_map(|(t, p)| Some((m(t)?, mp(&p)?)))
            .collect();
        self.left = std::mem::take(&mut self.left)
            .into_iter()
            .filter_map(|mut l| {
                l.member = m(l.member)?;
                Some(l)
            })
            .collect();
        self.open_rounds = std::mem::take(&mut self.open_rounds)
            .iter()
            .filter_map(mp)
            .collect();
        self.roster = names.to_vec();
        true
    }

    /// The live promise on `target`, if any (call [`Self::expire`] first).
    pub fn promise_for(&self, target: MemberId) -> Option<&Promise> {
        self.promises.iter().find(|p| p.proposal.target == target)
    }

    /// A live promise on `lane` for a target other than `target`.
    pub fn lane_holder(&self, lane: u8, target: MemberId) -> Option<&Promise> {
        self.promises
            .iter()
            .find(|p| p.proposal.lane == lane && p.proposal.target != target)
    }

    /// Records a granted promise (replacing nothing: the caller checked there is none).
    pub fn grant(&mut self, promise: Promise) {
        assert!(
            self.promise_for(promise.proposal.target).is_none(),
            "a second live promise on one target would allow two quorums"
        );
        self.promises.push(promise);
    }

    /// Drops the promise for exactly this proposal. Returns whether one was held.
    pub fn release(&mut self, proposal: &Proposal) -> bool {
        let before = self.promises.len();
        self.promises.retain(|p| &p.proposal != proposal);
        before != self.promises.len()
    }

    /// The reservation of `slot`, if held.
    pub fn slot(&self, slot: u8) -> Option<&SlotReservation> {
        self.slots.iter().find(|s| s.slot == slot)
    }

    /// Whether `slot` may be used for `target` in `boot`: free, or already reserved for that very
    /// target boot (a retry spends no new budget).
    pub fn slot_usable(&self, slot: u8, target: MemberId, boot: BootId) -> bool {
        match self.slot(slot) {
            None => true,
            Some(r) => r.target == target && r.target_boot == boot,
        }
    }

    /// Reserves `slot` for `target` in `boot`, or marks an existing reservation for that target
    /// boot as started. A reservation of the slot for another target is replaced and returned:
    /// callers that vote check [`Self::slot_usable`] first, so only a verified certificate (which
    /// outranks a local reservation from a round that cannot also have reached quorum) replaces.
    pub fn reserve_slot(
        &mut self,
        slot: u8,
        target: MemberId,
        boot: BootId,
        now: Instant,
        started: bool,
    ) -> Option<SlotReservation> {
        if let Some(r) = self.slots.iter_mut().find(|s| s.slot == slot) {
            if r.target == target && r.target_boot == boot {
                r.started |= started;
                return None;
            }
            let replaced = r.clone();
            *r = SlotReservation {
                slot,
                target,
                target_boot: boot,
                reserved_at: now,
                started,
            };
            return Some(replaced);
        }
        self.slots.push(SlotReservation {
            slot,
            target,
            target_boot: boot,
            reserved_at: now,
            started,
        });
        None
    }

    /// Frees a reservation that never saw a fence start (its round was released).
    pub fn free_unstarted_slot(&mut self, slot: u8, target: MemberId, boot: BootId) -> bool {
        let before = self.slots.len();
        self.slots.retain(|s| {
            !(s.slot == slot && s.target == target && s.target_boot == boot && !s.started)
        });
        before != self.slots.len()
    }

    /// Drops lapsed promises and slot reservations older than `budget_window`. Returns whether
    /// anything changed.
    pub fn expire(&mut self, now: Instant, budget_window: std::time::Duration) -> bool {
        let before = (self.promises.len(), self.slots.len(), self.news.len());
        self.promises.retain(|p| p.expires_at > now);
        self.slots
            .retain(|s| now.saturating_since(s.reserved_at) < budget_window);
        self.news
            .retain(|n| now.saturating_since(n.at) < budget_window);
        let news = &self.news;
        self.news_proofs
            .retain(|o| news.iter().any(|n| n.qc.proposal == o.outcome.proposal));
        before != (self.promises.len(), self.slots.len(), self.news.len())
    }

    /// Remembers that a fence started under `qc` (once per proposal). Returns whether it is new.
    pub fn record_news(&mut self, qc: &QuorumCertificate, now: Instant) -> bool {
        if self.news.iter().any(|n| n.qc.proposal == qc.proposal) {
            return false;
        }
        self.news.push_back(NewsRecord {
            qc: qc.clone(),
            outcome: None,
            at: now,
        });
        while self.news.len() > NEWS_MAX {
            if let Some(gone) = self.news.pop_front() {
                self.news_proofs
                    .retain(|o| o.outcome.proposal != gone.qc.proposal);
            }
        }
        true
    }

    /// The certificate of `proposal`, if this node verified one (it is in the news).
    pub fn news_certificate(&self, proposal: &Proposal) -> Option<&QuorumCertificate> {
        self.news
            .iter()
            .find(|n| &n.qc.proposal == proposal)
            .map(|n| &n.qc)
    }

    /// Keeps the executor's signed outcome of a fence in the news, to relay it (the first one
    /// only: an attempt ends once). Returns whether it was new.
    pub fn news_proof(&mut self, signed: &SignedOutcome) -> bool {
        let p = &signed.outcome.proposal;
        if self.news_certificate(p).is_none()
            || self.news_proofs.iter().any(|o| &o.outcome.proposal == p)
        {
            return false;
        }
        self.news_proofs.push(*signed);
        true
    }

    /// The signed outcome kept for `proposal`.
    pub fn proof_of(&self, proposal: &Proposal) -> Option<SignedOutcome> {
        self.news_proofs
            .iter()
            .find(|o| &o.outcome.proposal == proposal)
            .copied()
    }

    /// Notes how the fence under `proposal` ended. Returns whether anything changed.
    pub fn news_outcome(&mut self, proposal: &Proposal, result: OutcomeResult) -> bool {
        match self.news.iter_mut().find(|n| &n.qc.proposal == proposal) {
            Some(n) if n.outcome.is_none() => {
                n.outcome = Some(result);
                true
            }
            _ => false,
        }
    }

    /// The boot of `member` last confirmed fenced.
    pub fn fenced_boot(&self, member: MemberId) -> Option<BootId> {
        self.fenced
            .iter()
            .find(|f| f.member == member)
            .map(|f| f.boot)
    }

    /// Records that `member` was fenced in `boot`.
    pub fn record_fenced(&mut self, member: MemberId, boot: BootId) -> bool {
        match self.fenced.iter_mut().find(|f| f.member == member) {
            Some(f) if f.boot == boot => false,
            Some(f) => {
                f.boot = boot;
                true
            }
            None => {
                self.fenced.push(FencedBoot { member, boot });
                true
            }
        }
    }

    /// Appends a fence record, dropping the oldest beyond [`FENCE_LOG_MAX`].
    pub fn log_fence(&mut self, record: FenceRecord) {
        self.fence_log.push_back(record);
        while self.fence_log.len() > FENCE_LOG_MAX {
            self.fence_log.pop_front();
        }
    }

    /// Remembers a round this node opened (at most one per target).
    pub fn open_round(&mut self, proposal: Proposal) {
        self.open_rounds.retain(|p| p.target != proposal.target);
        self.open_rounds.push(proposal);
    }

    /// Forgets an opened round (closed by certificate or abandoned).
    pub fn close_round(&mut self, proposal: &Proposal) -> bool {
        let before = self.open_rounds.len();
        self.open_rounds.retain(|p| p != proposal);
        before != self.open_rounds.len()
    }

    /// The generation of `member` that stopped cleanly, if one did and has not returned.
    pub fn left_generation(&self, member: MemberId) -> Option<u32> {
        self.left
            .iter()
            .find(|l| l.member == member)
            .map(|l| l.generation)
    }

    /// The clean-stop record of `member`.
    pub fn left_record(&self, member: MemberId) -> Option<&LeftMember> {
        self.left.iter().find(|l| l.member == member)
    }

    /// Records that `member`'s daemon stopped cleanly at `generation` (a later generation than
    /// any recorded one). Returns whether anything changed.
    pub fn record_left(&mut self, member: MemberId, generation: u32, now: Instant) -> bool {
        match self.left.iter_mut().find(|l| l.member == member) {
            Some(l) if l.generation >= generation => false,
            Some(l) => {
                l.generation = generation;
                l.since = now;
                true
            }
            None => {
                self.left.push(LeftMember {
                    member,
                    generation,
                    since: now,
                });
                true
            }
        }
    }

    /// Forgets the clean stop of `member` once it runs a generation above it. Returns whether
    /// one was forgotten.
    pub fn returned(&mut self, member: MemberId, generation: u32) -> bool {
        let before = self.left.len();
        self.left
            .retain(|l| !(l.member == member && generation > l.generation));
        before != self.left.len()
    }

    /// Maintenance flag of `member`.
    pub fn maintenance(&self, member: MemberId) -> Option<&MaintenanceState> {
        self.maintenance.iter().find(|m| m.member == member)
    }

    /// Whether `member` is in maintenance.
    pub fn in_maintenance(&self, member: MemberId) -> bool {
        self.maintenance(member).is_some_and(|m| m.on)
    }

    /// Applies a maintenance update if newer. Returns whether it changed anything.
    pub fn apply_maintenance(&mut self, update: MaintenanceState) -> bool {
        match self
            .maintenance
            .iter_mut()
            .find(|m| m.member == update.member)
        {
            Some(m) if m.version >= update.version => false,
            Some(m) => {
                *m = update;
                true
            }
            None => {
                self.maintenance.push(update);
                true
            }
        }
    }

    /// Applies an arm update if newer. Returns whether it changed anything.
    pub fn apply_arm(&mut self, update: ArmState) -> bool {
        if update.version > self.armed.version {
            self.armed = update;
            true
        } else {
            false
        }
    }

    /// Whether a received flag version is within [`FLAG_STEP_MAX`] of what this node knows.
    pub fn flag_step_ok(&self, version: FlagVersion) -> bool {
        version.counter <= self.max_flag_counter().saturating_add(FLAG_STEP_MAX)
    }

    /// Highest flag counter seen, for a new local version.
    pub fn max_flag_counter(&self) -> u64 {
        self.maintenance
            .iter()
            .map(|m| m.version.counter)
            .chain(std::iter::once(self.armed.version.counter))
            .max()
            .unwrap_or(0)
    }
}

/// Format 1 (the first releases): the same fields up to `open_rounds`, none of the later ones.
mod v1 {
    use super::*;

    #[derive(Serialize, Deserialize)]
    pub(super) struct V1 {
        pub format: u32,
        pub generation: u32,
        pub boot: Option<BootId>,
        pub promises: Vec<Promise>,
        pub slots: Vec<SlotReservation>,
        pub fence_log: VecDeque<FenceRecord>,
        pub fenced: Vec<FencedBoot>,
        pub armed: ArmState,
        pub maintenance: Vec<MaintenanceState>,
        pub watchdog_stopped_for: Option<BootId>,
        pub round_counter: u32,
        pub roster: Vec<String>,
        pub open_rounds: Vec<Proposal>,
    }

    pub(super) fn decode<C: bincode::config::Config>(
        bytes: &[u8],
        cfg: C,
    ) -> Result<DurableState, DurableError> {
        let (old, used): (V1, usize) = bincode::serde::decode_from_slice(bytes, cfg)
            .map_err(|e| DurableError::Corrupt(e.to_string()))?;
        if used != bytes.len() {
            return Err(DurableError::Corrupt(format!(
                "{} trailing bytes",
                bytes.len() - used
            )));
        }
        debug_assert_eq!(old.format, 1);
        Ok(DurableState {
            format: DURABLE_FORMAT,
            generation: old.generation,
            // Format 1 was written by a daemon whose clock started with its process: its
            // instants mean nothing on the boot clock. `boot: None` makes the next start
            // re-arm every one of them from "now" with its full length (never shorter).
            boot: None,
            promises: old.promises,
            slots: old.slots,
            fence_log: old.fence_log,
            fenced: old.fenced,
            armed: old.armed,
            maintenance: old.maintenance,
            // Names a boot id, not an instant: still true.
            watchdog_stopped_for: old.watchdog_stopped_for,
            round_counter: old.round_counter,
            roster: old.roster,
            open_rounds: old.open_rounds,
            ..DurableState::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerfence_proto::{FenceKind, Round, Signature, VoteEvidence};
    use std::time::Duration;

    fn proposal(target: u16, lane: u8) -> Proposal {
        Proposal {
            target: MemberId(target),
            target_boot: BootId([target as u8; 16]),
            proposer: MemberId(0),
            round: Round::new(1, 1),
            kind: FenceKind::Fence,
            budget_slot: Some(0),
            lane,
        }
    }

    fn promise(target: u16, at: u64, ttl: u64) -> Promise {
        Promise {
            proposal: proposal(target, 0),
            granted_at: Instant::from_micros(at),
            expires_at: Instant::from_micros(at + ttl),
            vote: SignedVote {
                voter: MemberId(1),
                evidence: VoteEvidence {
                    voter_healthy: true,
                    target_down_ms: 0,
                    heartbeat_stalled_ms: 0,
                },
                signature: Signature::from_bytes([0; 64]),
            },
        }
    }

    #[test]
    fn encode_roundtrip_and_corruption() {
        let mut s = DurableState::new();
        s.grant(promise(2, 10, 100));
        s.reserve_slot(
            0,
            MemberId(2),
            BootId([2; 16]),
            Instant::from_micros(10),
            false,
        );
        let bytes = s.encode();
        assert_eq!(DurableState::decode(&bytes).unwrap(), s);
        assert!(DurableState::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(DurableState::decode(&extra).is_err());
    }

    /// A state file of format 2 (before signed outcomes) loads, with no outcome proofs: it is
    /// format 3's bytes without the last field (an empty list, one zero byte).
    #[test]
    fn format_2_loads_without_outcome_proofs() {
        let mut s = DurableState::new();
        s.grant(promise(2, 10, 100));
        let mut bytes = s.encode();
        assert_eq!(bytes.pop(), Some(0), "news_proofs is last and empty");
        assert_eq!(bytes[0], 3, "the format comes first, one byte");
        bytes[0] = 2;
        assert_eq!(DurableState::decode(&bytes).unwrap(), s);
        // Format 3 without its last field is not format 3.
        bytes[0] = 3;
        assert!(DurableState::decode(&bytes).is_err());
    }

    /// A state file of format 1 (the first releases) still loads, its instants re-armed at the
    /// next start (it was written on a clock that restarted with the process).
    #[test]
    fn format_1_loads_and_its_instants_are_rearmed() {
        let mut old = DurableState::new();
        old.grant(promise(2, 100, 30_000_000));
        let v1 = v1::V1 {
            format: 1,
            generation: 7,
            boot: Some(BootId([1; 16])),
            promises: old.promises.clone(),
            slots: Vec::new(),
            fence_log: VecDeque::new(),
            fenced: vec![FencedBoot {
                member: MemberId(3),
                boot: BootId([3; 16]),
            }],
            armed: old.armed,
            maintenance: Vec::new(),
            watchdog_stopped_for: None,
            round_counter: 4,
            roster: vec!["a".into(), "b".into()],
            open_rounds: Vec::new(),
        };
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&v1, cfg).unwrap();
        let mut s = DurableState::decode(&bytes).unwrap();
        assert_eq!(s.format, DURABLE_FORMAT);
        assert_eq!(s.generation, 7);
        assert_eq!(s.fenced_boot(MemberId(3)), Some(BootId([3; 16])));
        // Same boot id, but the old instants are re-armed from now, in full.
        assert!(s.rebase(BootId([1; 16]), Instant::from_micros(5_000_000_000)));
        assert_eq!(
            s.promises[0].expires_at,
            Instant::from_micros(5_000_000_000 + 30_000_000)
        );
    }

    #[test]
    #[should_panic(expected = "second live promise")]
    fn two_promises_on_one_target_are_a_bug() {
        let mut s = DurableState::new();
        s.grant(promise(2, 0, 10));
        s.grant(promise(2, 0, 10));
    }

    #[test]
    fn rebase_after_reboot_never_shortens() {
        let mut s = DurableState::new();
        s.boot = Some(BootId([1; 16]));
        s.grant(promise(2, 1_000_000, 30_000_000));
        s.reserve_slot(
            0,
            MemberId(2),
            BootId([2; 16]),
            Instant::from_micros(1_000_000),
            true,
        );
        // Same boot: unchanged.
        let mut same = s.clone();
        same.rebase(BootId([1; 16]), Instant::from_micros(5));
        assert_eq!(same, s);
        // Same boot but a clock that restarted (it reads less than the last persisted instant):
        // re-armed like after a reboot instead of lasting as long as the previous process ran.
        let mut restarted = s.clone();
        restarted.clock_at = Instant::from_micros(1_000_000);
        assert!(restarted.rebase(BootId([1; 16]), Instant::from_micros(5)));
        assert_eq!(
            restarted.promises[0].expires_at,
            Instant::from_micros(30_000_005)
        );
        // New boot, monotonic clock restarted near zero: full lengths from now.
        s.rebase(BootId([7; 16]), Instant::from_micros(50));
        assert_eq!(s.promises[0].expires_at, Instant::from_micros(30_000_050));
        assert_eq!(s.slots[0].reserved_at, Instant::from_micros(50));
    }

    #[test]
    fn expiry_and_slot_rules() {
        let mut s = DurableState::new();
        let boot = BootId([2; 16]);
        s.grant(promise(2, 0, 10));
        s.reserve_slot(1, MemberId(2), boot, Instant::ZERO, false);
        assert!(s.slot_usable(1, MemberId(2), boot));
        assert!(!s.slot_usable(1, MemberId(3), boot));
        assert!(s.slot_usable(0, MemberId(3), boot));
        assert!(s.expire(Instant::from_micros(10), Duration::from_secs(1)));
        assert!(s.promises.is_empty());
        assert_eq!(s.slots.len(), 1);
        assert!(s.free_unstarted_slot(1, MemberId(2), boot));
        s.reserve_slot(1, MemberId(2), boot, Instant::ZERO, true);
        assert!(
            !s.free_unstarted_slot(1, MemberId(2), boot),
            "started slots stay spent"
        );
        s.expire(Instant::from_micros(1_000_000), Duration::from_secs(1));
        assert!(s.slots.is_empty(), "the window passed");
    }

    #[test]
    fn flags_converge_on_the_newest_version() {
        let mut s = DurableState::new();
        let v = |counter, by| FlagVersion {
            counter,
            by: MemberId(by),
        };
        assert!(s.apply_arm(ArmState {
            armed: false,
            version: v(3, 1)
        }));
        assert!(!s.apply_arm(ArmState {
            armed: true,
            version: v(2, 4)
        }));
        assert!(s.apply_arm(ArmState {
            armed: true,
            version: v(3, 2)
        }));
        assert!(s.armed.armed);
        assert!(s.apply_maintenance(MaintenanceState {
            member: MemberId(1),
            on: true,
            version: v(4, 0)
        }));
        assert!(s.in_maintenance(MemberId(1)));
        assert_eq!(s.max_flag_counter(), 4);
    }

    #[test]
    fn member_keyed_entries_follow_names_across_a_roster_change() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut s = DurableState::new();
        assert!(
            s.remap_roster(&names(&["a", "c", "d"])),
            "first roster is recorded"
        );
        // "d" (id 2) is in maintenance, "c" (id 1) fenced, a promise targets "d".
        s.apply_maintenance(MaintenanceState {
            member: MemberId(2),
            on: true,
            version: FlagVersion {
                counter: 1,
                by: MemberId(0),
            },
        });
        s.record_fenced(MemberId(1), BootId([1; 16]));
        let mut p = promise(2, 0, 10);
        p.proposal.proposer = MemberId(0); // proposed by "a"
        s.grant(p);
        // "b" joins and sorts before "c" and "d"; "a" leaves.
        assert!(s.remap_roster(&names(&["b", "c", "d"])));
        assert!(
            s.in_maintenance(MemberId(2)),
            "d keeps its maintenance flag"
        );
        assert_eq!(
            s.fenced_boot(MemberId(1)),
            Some(BootId([1; 16])),
            "c stays fenced"
        );
        assert_eq!(
            s.promises.len(),
            0,
            "its proposer (a) is gone, so is the promise"
        );
        let mut s2 = DurableState::new();
        s2.remap_roster(&names(&["a", "c", "d"]));
        s2.apply_maintenance(MaintenanceState {
            member: MemberId(2),
            on: true,
            version: FlagVersion {
                counter: 1,
                by: MemberId(1),
            },
        });
        s2.remap_roster(&names(&["a", "b", "c", "d"]));
        assert!(
            !s2.in_maintenance(MemberId(2)),
            "the flag no longer sits on c"
        );
        assert!(s2.in_maintenance(MemberId(3)), "it moved with d");
        assert!(
            !s2.remap_roster(&names(&["a", "b", "c", "d"])),
            "same roster: nothing moves"
        );
    }

    #[test]
    fn fence_log_is_bounded() {
        let mut s = DurableState::new();
        let qc = QuorumCertificate {
            proposal: proposal(2, 0),
            votes: vec![],
        };
        for i in 0..(FENCE_LOG_MAX + 10) {
            s.log_fence(FenceRecord {
                qc: qc.clone(),
                attempt: i as u16,
                started_at: Instant::ZERO,
                deadline: Instant::ZERO,
                outcome: None,
                pill_written: false,
            });
        }
        assert_eq!(s.fence_log.len(), FENCE_LOG_MAX);
        assert_eq!(s.fence_log[0].attempt, 10);
    }
}
