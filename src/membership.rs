//! SWIM membership: foca inside the core, fed with our codec, our timers and our broadcasts.
//!
//! foca is sans-IO like the rest of the core. It asks for packets to be sent and timers to be
//! scheduled through a [`foca::Runtime`]; ours records sends in a queue and timers in an ordered
//! map keyed by (deadline, submission number), so every timer comes back, in deadline order and,
//! for equal deadlines, in the order foca asked for them. Custom broadcasts (health, flags,
//! outcomes, leave notices) pass through [`Handler`], which decodes them, keeps only news, and
//! hands them to the node through a small inbox.

use crate::config::Config;
use crate::crypto::KeyRing;
use crate::time::Instant;
use bytes::Bytes;
use foca::{BroadcastHandler, Foca, Invalidates, OwnedNotification, Runtime, State, Timer};
use peerfence_proto::swim::SwimCodec;
use peerfence_proto::{Broadcast, DecodeError, FlagVersion, Ident, MemberId, Round};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Broadcast items queued for the node at most (one packet carries far fewer).
const INBOX_MAX: usize = 4096;
/// Outcome keys remembered for de-duplication.
const OUTCOME_KEYS_MAX: usize = 512;
/// Timers fired per call at most; foca never schedules zero-delay chains, this bounds a bug.
const TIMERS_PER_CALL_MAX: usize = 10_000;

/// SWIM state of a member in this node's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SwimState {
    /// Never heard of since this node started.
    Unknown,
    /// Active.
    Alive,
    /// Active but suspected; treated as alive.
    Suspect,
    /// Declared down.
    Down,
}

/// Identifies a broadcast for foca's dissemination queue: a newer item for the same key replaces
/// the older one still being disseminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BroadcastKey {
    /// Health of a member.
    Health(MemberId),
    /// The arm switch.
    Arm,
    /// Maintenance flag of a member.
    Maintenance(MemberId),
    /// Outcome of one round.
    Outcome(MemberId, MemberId, Round),
    /// Leave notice of a member.
    Leave(MemberId),
    /// A signed outcome of one round; the last field is the signature's first 8 bytes, so that
    /// an unverified item (the SWIM layer holds no keys) with a genuine one's round cannot keep
    /// the genuine one from being disseminated.
    SignedOutcome(MemberId, MemberId, Round, u64),
}

impl Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        self == other
    }
}

/// The dissemination key of an item.
fn key_of(item: &Broadcast) -> BroadcastKey {
    match item {
        Broadcast::Health(h) => BroadcastKey::Health(h.member),
        Broadcast::SignedHealth(h) => BroadcastKey::Health(h.health.member),
        Broadcast::Arm(_) => BroadcastKey::Arm,
        Broadcast::Maintenance(m) => BroadcastKey::Maintenance(m.member),
        Broadcast::Outcome(o) => {
            BroadcastKey::Outcome(o.proposal.target, o.proposal.proposer, o.proposal.round)
        }
        Broadcast::Leave(l) => BroadcastKey::Leave(l.member),
        Broadcast::SignedOutcome(o) => signed_outcome_key(o),
    }
}

fn signed_outcome_key(o: &peerfence_proto::SignedOutcome) -> BroadcastKey {
    let p = &o.outcome.proposal;
    let sig = o.signature.to_bytes();
    let mut head = [0u8; 8];
    head.copy_from_slice(&sig[..8]);
    BroadcastKey::SignedOutcome(p.target, p.proposer, p.round, u64::from_le_bytes(head))
}

/// A broadcast item that did not decode or names an unknown member.
#[derive(Debug, thiserror::Error)]
#[error("bad broadcast item: {0}")]
pub struct BadBroadcast(String);

type Inbox = Arc<Mutex<VecDeque<Broadcast>>>;

/// Decides which broadcast items are news, and queues them for the node.
pub struct Handler {
    n: usize,
    health: Vec<Option<(u32, u64)>>,
    arm: Option<FlagVersion>,
    /// Highest flag counter passed on (seeded from the durable state): a flag further ahead
    /// than [`crate::durable::FLAG_STEP_MAX`] is never news (the node counts it).
    flag_max: u64,
    maintenance: Vec<Option<FlagVersion>>,
    leave: Vec<Option<u32>>,
    outcomes: VecDeque<BroadcastKey>,
    inbox: Inbox,
    dropped: u64,
    /// Verifies signed items before they count as news: a forged one is never passed on, so
    /// it can neither reach the node nor shadow a genuine item with a higher version. `None` in
    /// unit tests of the dissemination rules only.
    keys: Option<KeyRing>,
}

impl Handler {
    fn new(n: usize, inbox: Inbox, keys: Option<KeyRing>, flag_max: u64) -> Self {
        Self {
            keys,
            flag_max,
            n,
            health: vec![None; n],
            arm: None,
            maintenance: vec![None; n],
            leave: vec![None; n],
            outcomes: VecDeque::new(),
            inbox,
            dropped: 0,
        }
    }

    fn member(&self, m: MemberId) -> Result<usize, BadBroadcast> {
        if m.index() < self.n {
            Ok(m.index())
        } else {
            Err(BadBroadcast(format!("unknown member {m}")))
        }
    }

    /// Whether `item` is a flag further ahead than [`crate::durable::FLAG_STEP_MAX`] of the
    /// highest counter passed on so far (which it raises otherwise).
    fn flag_too_far(&mut self, item: &Broadcast) -> bool {
        let counter = match item {
            Broadcast::Arm(a) => a.version.counter,
            Broadcast::Maintenance(m) => m.version.counter,
            _ => return false,
        };
        if counter > self.flag_max.saturating_add(crate::durable::FLAG_STEP_MAX) {
            return true;
        }
        self.flag_max = self.flag_max.max(counter);
        false
    }

    /// Checks the signature of a signed item (before it is recorded as known).
    fn verified(&self, ok: impl FnOnce(&KeyRing) -> bool) -> Result<(), BadBroadcast> {
        match &self.keys {
            Some(keys) if !ok(keys) => Err(BadBroadcast("signature does not verify".into())),
            _ => Ok(()),
        }
    }

    /// Returns the key if `item` is news (and records it as known). A signed item whose
    /// signature does not verify is an error: foca drops the packet that carried it (a relayer
    /// that verifies never carries one, so the packet is the forger's), counted `bad_broadcast`.
    fn news(&mut self, item: &Broadcast) -> Result<Option<BroadcastKey>, BadBroadcast> {
        Ok(match item {
            // Unsigned health (a build before signed health, or forged): never news.
            Broadcast::Health(_) => None,
            Broadcast::SignedHealth(sh) => {
                let h = &sh.health;
                let i = self.member(h.member)?;
                let v = (h.generation, h.seq);
                if self.health[i].is_some_and(|known| known >= v) {
                    None
                } else {
                    self.verified(|k| k.verify_health(sh).is_ok())?;
                    self.health[i] = Some(v);
                    Some(BroadcastKey::Health(h.member))
                }
            }
            Broadcast::Arm(a) => {
                if self.arm.is_some_and(|known| known >= a.version) {
                    None
                } else {
                    self.arm = Some(a.version);
                    Some(BroadcastKey::Arm)
                }
            }
            Broadcast::Maintenance(m) => {
                let i = self.member(m.member)?;
                if self.maintenance[i].is_some_and(|known| known >= m.version) {
                    None
                } else {
                    self.maintenance[i] = Some(m.version);
                    Some(BroadcastKey::Maintenance(m.member))
                }
            }
            // An unsigned outcome (from a build before outcomes were signed, or forged) is
            // never news: not disseminated; the node only counts it.
            Broadcast::Outcome(_) => None,
            Broadcast::SignedOutcome(o) => {
                self.member(o.outcome.proposal.target)?;
                self.member(o.outcome.proposal.proposer)?;
                let key = signed_outcome_key(o);
                if self.outcomes.contains(&key) {
                    None
                } else {
                    self.verified(|k| k.verify_outcome(o).is_ok())?;
                    self.outcomes.push_back(key);
                    if self.outcomes.len() > OUTCOME_KEYS_MAX {
                        self.outcomes.pop_front();
                    }
                    Some(key)
                }
            }
            Broadcast::Leave(l) => {
                let i = self.member(l.member)?;
                if self.leave[i].is_some_and(|known| known >= l.generation) {
                    None
                } else {
                    self.leave[i] = Some(l.generation);
                    Some(BroadcastKey::Leave(l.member))
                }
            }
        })
    }
}

impl BroadcastHandler<Ident> for Handler {
    type Key = BroadcastKey;
    type Error = BadBroadcast;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&Ident>,
    ) -> Result<Option<Self::Key>, Self::Error> {
        let item = peerfence_proto::decode_broadcast(data)
            .map_err(|e: DecodeError| BadBroadcast(e.to_string()))?;
        let too_far = self.flag_too_far(&item);
        let key = if too_far { None } else { self.news(&item)? };
        if too_far || matches!(item, Broadcast::Outcome(_) | Broadcast::Health(_)) {
            // Handed to the node (which counts the drop), never passed on.
            let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
            if inbox.len() < INBOX_MAX {
                inbox.push_back(item);
            } else {
                self.dropped += 1;
            }
            return Ok(None);
        }
        if key.is_none() && sender.is_none() {
            // This node's own periodic re-broadcast (anti-entropy): disseminate it although it
            // is old news here, so that members that missed it catch up. Receivers that know it
            // already do not pass it on.
            return Ok(Some(key_of(&item)));
        }
        if key.is_some() {
            // The lock is never contended: only the node's own thread touches it, between calls.
            let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
            if inbox.len() < INBOX_MAX {
                inbox.push_back(item);
            } else {
                self.dropped += 1;
            }
        }
        Ok(key)
    }
}

/// Why a SWIM packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwimDrop {
    /// The SWIM header names a sender other than the authenticated peer.
    SenderMismatch,
    /// foca rejected it (malformed, from ourselves, too big, bad broadcast).
    Rejected(&'static str),
}

struct Rt<'a> {
    now: Instant,
    sends: &'a mut Vec<(MemberId, Bytes)>,
    timers: &'a mut BTreeMap<(Instant, u64), Timer<Ident>>,
    timer_seq: &'a mut u64,
    notes: &'a mut Vec<OwnedNotification<Ident>>,
}

impl Runtime<Ident> for Rt<'_> {
    fn notify(&mut self, notification: foca::Notification<'_, Ident>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: Ident, data: &[u8]) {
        self.sends.push((to.member, Bytes::copy_from_slice(data)));
    }

    fn submit_after(&mut self, event: Timer<Ident>, after: Duration) {
        *self.timer_seq += 1;
        self.timers
            .insert((self.now + after, *self.timer_seq), event);
    }
}

/// foca plus everything it needs from us.
pub struct Membership {
    foca: Foca<Ident, SwimCodec, ChaCha8Rng, Handler>,
    inbox: Inbox,
    timers: BTreeMap<(Instant, u64), Timer<Ident>>,
    timer_seq: u64,
    sends: Vec<(MemberId, Bytes)>,
    notes: Vec<OwnedNotification<Ident>>,
    me: MemberId,
    n: usize,
    errors: u64,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Membership({:?}, {} timers)",
            self.foca.identity(),
            self.timers.len()
        )
    }
}

/// foca configuration from ours.
pub fn foca_config(config: &Config) -> foca::Config {
    let s = &config.swim;
    let mut c = foca::Config::simple();
    c.probe_period = s.probe_period;
    c.probe_rtt = s.probe_rtt;
    c.num_indirect_probes =
        NonZeroUsize::new(usize::from(s.num_indirect_probes.get())).unwrap_or(NonZeroUsize::MIN);
    c.max_transmissions = s.max_transmissions;
    c.suspect_to_down_after = s.suspect_to_down_after;
    // Members rejoin with a new generation, so forgetting Down identities is only a memory
    // matter; a day keeps it bounded by the number of restarts per day.
    c.remove_down_after = Some(Duration::from_secs(24 * 3600));
    c.max_packet_size =
        NonZeroUsize::new(usize::from(s.max_packet_bytes)).unwrap_or(NonZeroUsize::MIN);
    c.notify_down_members = true;
    c.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(30),
        num_members: NonZeroUsize::MIN,
    });
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: s.announce_period,
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    c.periodic_gossip = Some(foca::PeriodicParams {
        frequency: s.gossip_period,
        num_members: NonZeroUsize::new(usize::from(s.gossip_fanout.get()))
            .unwrap_or(NonZeroUsize::MIN),
    });
    c
}

impl Membership {
    /// A member running as `me` with `generation`, randomness from `seed`.
    /// `flag_max` is the highest operator-flag counter in the durable state.
    pub fn new(config: &Config, me: MemberId, generation: u32, seed: u64, flag_max: u64) -> Self {
        let inbox: Inbox = Arc::default();
        let handler = Handler::new(
            config.n(),
            inbox.clone(),
            Some(KeyRing::new(config)),
            flag_max,
        );
        let foca = Foca::with_custom_broadcast(
            Ident {
                member: me,
                generation,
            },
            foca_config(config),
            ChaCha8Rng::seed_from_u64(seed),
            SwimCodec,
            handler,
        );
        Self {
            foca,
            inbox,
            timers: BTreeMap::new(),
            timer_seq: 0,
            sends: Vec::new(),
            notes: Vec::new(),
            me,
            n: config.n(),
            errors: 0,
        }
    }

    fn rt(&mut self, now: Instant) -> (Rt<'_>, &mut Foca<Ident, SwimCodec, ChaCha8Rng, Handler>) {
        (
            Rt {
                now,
                sends: &mut self.sends,
                timers: &mut self.timers,
                timer_seq: &mut self.timer_seq,
                notes: &mut self.notes,
            },
            &mut self.foca,
        )
    }

    /// Current identity (changes when foca rejoins after being declared down).
    pub fn identity(&self) -> Ident {
        *self.foca.identity()
    }

    /// Announces to every configured member that is not active in our view: how a node joins at
    /// start, and how it finds members it has never heard of later.
    pub fn announce_to_inactive(&mut self, now: Instant) {
        let active: Vec<MemberId> = self.foca.iter_members().map(|m| m.id().member).collect();
        for i in 0..self.n {
            let m = MemberId(i as u16);
            if m == self.me || active.contains(&m) {
                continue;
            }
            let (mut rt, foca) = self.rt(now);
            // The destination generation is irrelevant for Announce (foca accepts any identity
            // with its address).
            if foca
                .announce(
                    Ident {
                        member: m,
                        generation: 0,
                    },
                    &mut rt,
                )
                .is_err()
            {
                self.errors += 1;
            }
        }
    }

    /// Handles one SWIM packet from the authenticated peer `from`.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        from: MemberId,
        packet: &[u8],
    ) -> Result<(), SwimDrop> {
        let mut peek = packet;
        let header = foca::Codec::decode_header(&mut SwimCodec, &mut peek)
            .map_err(|_| SwimDrop::Rejected("malformed"))?;
        if header.src.member != from {
            return Err(SwimDrop::SenderMismatch);
        }
        let (mut rt, foca) = self.rt(now);
        foca.handle_data(packet, &mut rt).map_err(|e| {
            SwimDrop::Rejected(match e {
                foca::Error::DataTooBig => "too_big",
                foca::Error::DataFromOurselves => "from_ourselves",
                foca::Error::MalformedPacket => "malformed",
                foca::Error::Decode(_) => "malformed",
                foca::Error::CustomBroadcast(_) => "bad_broadcast",
                _ => "rejected",
            })
        })
    }

    /// Fires every timer due at `now`, in order.
    pub fn fire_timers(&mut self, now: Instant) {
        for _ in 0..TIMERS_PER_CALL_MAX {
            let Some(entry) = self.timers.first_entry() else {
                return;
            };
            if entry.key().0 > now {
                return;
            }
            let timer = entry.remove();
            let (mut rt, foca) = self.rt(now);
            if foca.handle_timer(timer, &mut rt).is_err() {
                self.errors += 1;
            }
        }
    }

    /// When the next timer is due.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(t, _)| *t)
    }

    /// Queues a broadcast item for dissemination.
    pub fn broadcast(&mut self, item: &Broadcast) {
        match peerfence_proto::encode_broadcast(item) {
            Ok(bytes) => {
                if self.foca.add_broadcast(&bytes).is_err() {
                    self.errors += 1;
                }
            }
            Err(_) => self.errors += 1,
        }
    }

    /// Leaves the cluster (declares our own identity down).
    pub fn leave(&mut self, now: Instant) {
        let (mut rt, foca) = self.rt(now);
        if foca.leave_cluster(&mut rt).is_err() {
            self.errors += 1;
        }
    }

    /// Packets to send.
    pub fn take_sends(&mut self) -> Vec<(MemberId, Bytes)> {
        std::mem::take(&mut self.sends)
    }

    /// News from broadcasts (including our own items).
    pub fn take_inbox(&mut self) -> Vec<Broadcast> {
        let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        inbox.drain(..).collect()
    }

    /// Discards foca notifications: the node reads states directly (Suspect has none).
    pub fn clear_notifications(&mut self) {
        self.notes.clear();
    }

    /// State and generation of every member in our view (`Unknown` for never heard of).
    pub fn states(&self) -> Vec<(SwimState, u32)> {
        let mut out = vec![(SwimState::Unknown, 0); self.n];
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            if let Some(slot) = out.get_mut(id.member.index()) {
                let s = match m.state() {
                    State::Alive => SwimState::Alive,
                    State::Suspect => SwimState::Suspect,
                    State::Down => SwimState::Down,
                };
                *slot = (s, id.generation);
            }
        }
        out
    }

    /// Internal errors counted (should stay zero).
    pub fn errors(&self) -> u64 {
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::config;

    #[test]
    fn timers_come_back_in_deadline_then_submission_order() {
        let cfg = config(3);
        let mut m = Membership::new(&cfg, MemberId(0), 1, 1, 0);
        m.timers.clear();
        let now = Instant::from_micros(1_000);
        {
            let (mut rt, _) = m.rt(now);
            rt.submit_after(Timer::PeriodicGossip(1), Duration::from_millis(5));
            rt.submit_after(Timer::PeriodicAnnounce(2), Duration::from_millis(1));
            rt.submit_after(Timer::PeriodicGossip(3), Duration::from_millis(1));
        }
        let order: Vec<Timer<Ident>> = m.timers.values().cloned().collect();
        assert_eq!(
            order,
            vec![
                Timer::PeriodicAnnounce(2),
                Timer::PeriodicGossip(3),
                Timer::PeriodicGossip(1)
            ]
        );
        assert_eq!(m.next_timer(), Some(now + Duration::from_millis(1)));
        // Firing at a time delivers exactly the due ones and keeps the rest.
        m.fire_timers(now + Duration::from_millis(2));
        assert!(m.timers.values().any(|t| *t == Timer::PeriodicGossip(1)));
        assert!(!m.timers.values().any(|t| *t == Timer::PeriodicAnnounce(2)));
    }

    #[test]
    fn packets_claiming_another_sender_are_rejected_before_foca_sees_them() {
        let cfg = config(3);
        let mut a = Membership::new(&cfg, MemberId(0), 1, 1, 0);
        let mut b = Membership::new(&cfg, MemberId(1), 1, 2, 0);
        a.announce_to_inactive(Instant::ZERO);
        let sends = a.take_sends();
        let (_, packet) = sends.iter().find(|(to, _)| *to == MemberId(1)).unwrap();
        assert_eq!(
            b.handle_packet(Instant::ZERO, MemberId(2), packet),
            Err(SwimDrop::SenderMismatch)
        );
        assert_eq!(b.handle_packet(Instant::ZERO, MemberId(0), packet), Ok(()));
        assert_eq!(
            b.handle_packet(Instant::ZERO, MemberId(0), &[1, 2, 3]),
            Err(SwimDrop::Rejected("malformed"))
        );
    }

    #[test]
    fn only_news_is_disseminated() {
        let inbox: Inbox = Arc::default();
        let mut h = Handler::new(3, inbox, None, 0);
        let update = |seq| peerfence_proto::HealthUpdate {
            member: MemberId(1),
            generation: 1,
            seq,
            boot: peerfence_proto::BootId([1; 16]),
            verdict: peerfence_proto::Verdict::Healthy,
            storage: vec![],
            agent: peerfence_proto::AgentHealth::Unknown,
            isolation: peerfence_proto::IsolationHealth::NotConfigured,
        };
        let health = |seq| {
            Broadcast::SignedHealth(peerfence_proto::SignedHealth {
                health: update(seq),
                signature: peerfence_proto::Signature::from_bytes([0; 64]),
            })
        };
        assert!(
            h.news(&Broadcast::Health(update(9))).unwrap().is_none(),
            "unsigned health is never news"
        );
        assert!(h.news(&health(2)).unwrap().is_some());
        assert!(
            h.news(&health(2)).unwrap().is_none(),
            "a repeat is not news"
        );
        assert!(
            h.news(&health(1)).unwrap().is_none(),
            "an older update is not news"
        );
        assert!(h.news(&health(3)).unwrap().is_some());
        let stranger = Broadcast::Leave(peerfence_proto::LeaveNotice {
            member: MemberId(7),
            generation: 1,
        });
        assert!(h.news(&stranger).is_err());
    }

    /// A signed item that does not verify is refused before it is recorded: it cannot shadow
    /// the genuine update, which is still news afterwards.
    #[test]
    fn a_forged_signed_item_is_refused_and_shadows_nothing() {
        let cfg = crate::testutil::raw(3).validate().unwrap();
        let inbox: Inbox = Arc::default();
        let mut h = Handler::new(3, inbox, Some(KeyRing::new(&cfg)), 0);
        let update = |generation| peerfence_proto::HealthUpdate {
            member: MemberId(1),
            generation,
            seq: 1,
            boot: peerfence_proto::BootId([1; 16]),
            verdict: peerfence_proto::Verdict::Healthy,
            storage: vec![],
            agent: peerfence_proto::AgentHealth::Unknown,
            isolation: peerfence_proto::IsolationHealth::NotConfigured,
        };
        // Signed by member 2, claiming to be member 1, at the highest generation.
        let forged =
            crate::testutil::key(2).sign_health(&cfg.cluster, cfg.digest(), update(u32::MAX));
        assert!(h.news(&Broadcast::SignedHealth(forged)).is_err());
        let genuine = crate::testutil::key(1).sign_health(&cfg.cluster, cfg.digest(), update(3));
        assert!(h.news(&Broadcast::SignedHealth(genuine)).unwrap().is_some());
    }
}
