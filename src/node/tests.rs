//! Handler-level tests: a small in-memory cluster (instant network, one shared clock, perfect
//! storage) drives real nodes, and each test asserts on the outputs the handlers emit. The
//! chaos simulator covers timing, faults and randomness; these pin down ordering and contents.

use super::*;
use crate::config::{RawConfig, RawLevel};
use crate::crypto::VoteKey;
use crate::health::WriteOutcome;
use crate::testutil::{key, raw};
use peerfence_proto::{
    FenceKind, FenceOutcome, HealthUpdate, HeartbeatRecord, OutcomeResult, Proposal,
    QuorumCertificate, RefuseReason, Round, SignedVote, VoteEvidence,
};

const STEP: Duration = Duration::from_millis(100);

fn boot(i: usize) -> BootId {
    BootId([i as u8 + 1; 16])
}

/// A cluster of real nodes on a perfect in-memory network and storage.
struct Cluster {
    cfg: Arc<Config>,
    nodes: Vec<Option<Node>>,
    disks: Vec<Option<DurableState>>,
    now: Instant,
    /// Outputs in emission order, per member.
    log: Vec<Vec<Output>>,
    hb: Vec<u64>,
    writing: Vec<bool>,
    cut: Vec<bool>,
    powered_off: Vec<bool>,
    /// BMCs that never answer.
    bmc_hung: Vec<bool>,
    /// BMCs that answer every command with an error.
    bmc_failing: Vec<bool>,
    queue: VecDeque<(MemberId, MemberId, Bytes)>,
    next_second: Instant,
    /// Directed links that drop everything.
    blocked: std::collections::HashSet<(usize, usize)>,
    /// Members whose incoming messages are held back until released.
    held: Vec<bool>,
    held_queue: VecDeque<(MemberId, MemberId, Bytes)>,
    /// Members whose slot holds the last record of a clean stop.
    stopped: Vec<bool>,
}

impl Cluster {
    fn new(n: usize, tweak: impl FnOnce(&mut RawConfig)) -> Self {
        let mut r = raw(n);
        tweak(&mut r);
        let cfg = Arc::new(r.validate().expect("test config"));
        let now = Instant::from_micros(1_000_000);
        let mut c = Self {
            cfg,
            nodes: (0..n).map(|_| None).collect(),
            disks: vec![None; n],
            now,
            log: vec![Vec::new(); n],
            hb: vec![0; n],
            writing: vec![true; n],
            cut: vec![false; n],
            powered_off: vec![false; n],
            bmc_hung: vec![false; n],
            bmc_failing: vec![false; n],
            queue: VecDeque::new(),
            next_second: now,
            blocked: Default::default(),
            held: vec![false; n],
            held_queue: VecDeque::new(),
            stopped: vec![false; n],
        };
        for i in 0..n {
            c.start(i);
        }
        c
    }

    fn start(&mut self, i: usize) {
        self.stopped[i] = false;
        let node = Node::new(
            self.cfg.clone(),
            MemberId(i as u16),
            key(i),
            boot(i),
            self.disks[i].clone(),
            i as u64 + 7,
            self.now,
        )
        .expect("node starts");
        self.nodes[i] = Some(node);
        self.drain(i);
    }

    /// The daemon stops on purpose: it shuts down (its last outputs go out), its slot keeps
    /// the clean-stop record, and its host (VMs) keeps running.
    fn stop_cleanly(&mut self, i: usize) {
        self.handle(i, Input::Shutdown);
        assert!(
            self.log[i]
                .iter()
                .any(|o| matches!(o, Output::StopHeartbeat { .. })),
            "a clean stop asks for the last heartbeat record"
        );
        self.nodes[i] = None;
        self.writing[i] = false;
        self.stopped[i] = true;
        self.deliver();
    }

    /// The daemon dies: whatever it did not persist is lost.
    fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    fn handle(&mut self, i: usize, input: Input) {
        if let Some(n) = self.nodes[i].as_mut() {
            n.handle(self.now, input);
        }
        self.drain(i);
    }

    fn drain(&mut self, i: usize) {
        let mut outs = Vec::new();
        if let Some(n) = self.nodes[i].as_mut() {
            while let Some(o) = n.poll_output() {
                outs.push(o);
            }
        }
        for o in outs {
            match &o {
                Output::Persist(s) => self.disks[i] = Some((**s).clone()),
                Output::Send { to, bytes, .. } => {
                    self.queue
                        .push_back((MemberId(i as u16), *to, bytes.clone()))
                }
                Output::Fence(cmd) if self.bmc_hung[cmd.target.index()] => {}
                Output::Fence(cmd) if self.bmc_failing[cmd.target.index()] => {
                    self.log[i].push(o.clone());
                    self.handle(
                        i,
                        Input::FenceResult {
                            id: cmd.id,
                            result: AgentResult::Failed,
                        },
                    );
                    continue;
                }
                Output::Fence(cmd) => {
                    let t = cmd.target.index();
                    let result = match cmd.action {
                        AgentAction::Off => {
                            self.powered_off[t] = true;
                            self.nodes[t] = None;
                            self.writing[t] = false;
                            AgentResult::Done
                        }
                        AgentAction::On => AgentResult::Done,
                        AgentAction::Status => AgentResult::Power(if self.powered_off[t] {
                            PowerState::Off
                        } else {
                            PowerState::On
                        }),
                    };
                    self.log[i].push(o.clone());
                    self.handle(i, Input::FenceResult { id: cmd.id, result });
                    continue;
                }
                _ => {}
            }
            self.log[i].push(o);
        }
    }

    fn deliver(&mut self) {
        for _ in 0..100_000 {
            let Some((from, to, bytes)) = self.queue.pop_front() else {
                return;
            };
            if self.cut[from.index()]
                || self.cut[to.index()]
                || self.blocked.contains(&(from.index(), to.index()))
            {
                continue;
            }
            if self.held[to.index()] {
                self.held_queue.push_back((from, to, bytes));
                continue;
            }
            self.handle(to.index(), Input::Datagram { from, bytes });
        }
        panic!("message storm in the test cluster");
    }

    fn storage_round(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            if self.nodes[i].is_none() {
                continue;
            }
            if self.writing[i] {
                self.hb[i] += 1;
                self.handle(
                    i,
                    Input::StorageWrite {
                        path: 0,
                        outcome: WriteOutcome::Ok {
                            latency: Duration::from_millis(5),
                        },
                        counter: self.hb[i],
                    },
                );
            } else {
                self.handle(
                    i,
                    Input::StorageWrite {
                        path: 0,
                        outcome: WriteOutcome::TimedOut,
                        counter: self.hb[i],
                    },
                );
            }
        }
        for i in 0..n {
            for m in 0..n {
                // Every member's slot, this node's own included (it checks its writes show).
                if self.nodes[i].is_none() || !self.writing[i] {
                    continue;
                }
                let generation = self.disks[m].as_ref().map(|d| d.generation).unwrap_or(1);
                let record = HeartbeatRecord {
                    member: MemberId(m as u16),
                    boot: boot(m),
                    generation,
                    counter: self.hb[m],
                };
                self.handle(
                    i,
                    Input::HeartbeatRead {
                        path: 0,
                        member: MemberId(m as u16),
                        record: Some(record),
                        stopped: self.stopped[m],
                    },
                );
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now = self.now + STEP;
            if self.now >= self.next_second {
                self.next_second = self.now + Duration::from_secs(1);
                self.storage_round();
            }
            for i in 0..self.nodes.len() {
                self.handle(i, Input::Tick);
            }
            self.deliver();
        }
    }

    /// Lets messages held for `i` through.
    fn release_held(&mut self, i: usize) {
        self.held[i] = false;
        let held = std::mem::take(&mut self.held_queue);
        self.queue.extend(held);
        self.deliver();
    }

    /// Stops `i` dead: no messages, no heartbeat, no daemon.
    fn kill_host(&mut self, i: usize) {
        self.crash(i);
        self.writing[i] = false;
        self.cut[i] = true;
    }

    fn events(&self, i: usize) -> impl Iterator<Item = &Event> {
        self.log[i].iter().filter_map(|o| match o {
            Output::Event(e) => Some(e),
            _ => None,
        })
    }

    fn all_events(&self) -> impl Iterator<Item = (usize, &Event)> {
        (0..self.log.len()).flat_map(move |i| self.events(i).map(move |e| (i, e)))
    }
}

fn settled(n: usize, tweak: impl FnOnce(&mut RawConfig)) -> Cluster {
    let mut c = Cluster::new(n, tweak);
    c.run_for(Duration::from_secs(15));
    c
}

#[test]
fn a_healthy_cluster_settles_and_everyone_is_eligible() {
    let c = settled(5, |_| {});
    for node in c.nodes.iter().flatten() {
        let s = node.status();
        assert_eq!(s.ineligible, None, "{:?}", s.me);
        assert_eq!(s.visible, 5);
        assert!(s.peers.iter().all(|p| p.ha == HaState::Available));
        assert!(s.watchdog_feeding || !node.config().watchdog.enabled);
    }
}

#[test]
fn a_dead_host_is_fenced_under_a_valid_certificate_and_only_then_safe() {
    let mut c = settled(5, |_| {});
    c.kill_host(4);
    c.run_for(Duration::from_secs(12));
    let ring = KeyRing::new(&c.cfg);
    let mut fenced = 0;
    for i in 0..4 {
        let mut persisted_fenced = false;
        for o in &c.log[i] {
            match o {
                Output::Fence(cmd) => {
                    assert_eq!(cmd.target, MemberId(4));
                    assert_eq!(ring.verify_certificate(&cmd.qc), Ok(()));
                    assert!(cmd.qc.votes.len() >= c.cfg.quorum());
                    fenced += 1;
                }
                Output::Persist(s) if s.fenced_boot(MemberId(4)) == Some(boot(4)) => {
                    persisted_fenced = true
                }
                Output::Event(Event::SafeToRecover {
                    target, boot: b, ..
                }) => {
                    assert_eq!((*target, *b), (MemberId(4), boot(4)));
                    assert!(
                        persisted_fenced,
                        "h{i} announced safe to recover before persisting the fence"
                    );
                }
                _ => {}
            }
        }
    }
    assert!(fenced >= 2, "off and status were issued");
    let safe = c
        .all_events()
        .filter(|(_, e)| matches!(e, Event::SafeToRecover { .. }))
        .count();
    assert_eq!(safe, 4, "every survivor learns the outcome");
}

#[test]
fn every_vote_is_persisted_before_it_is_sent() {
    let mut c = settled(5, |_| {});
    c.kill_host(3);
    c.run_for(Duration::from_secs(12));
    let mut votes = 0;
    for i in 0..5 {
        let mut promised = Vec::new();
        for o in &c.log[i] {
            match o {
                Output::Persist(s) => promised = s.promises.iter().map(|p| p.proposal).collect(),
                Output::Send { bytes, .. } => {
                    let env = peerfence_proto::decode(bytes).expect("own message decodes");
                    if let Message::Vote(v) = env.message {
                        assert!(
                            promised.contains(&v.proposal),
                            "h{i} sent a vote whose promise was not persisted first"
                        );
                        votes += 1;
                    }
                }
                _ => {}
            }
        }
    }
    assert!(votes >= 2);
}

#[test]
fn observe_mode_reports_would_fence_and_never_proposes() {
    let mut c = settled(5, |r| r.cluster.mode = Some("observe".into()));
    c.kill_host(2);
    c.run_for(Duration::from_secs(15));
    let would = c
        .all_events()
        .filter(|(_, e)| matches!(e, Event::WouldFence { target, .. } if *target == MemberId(2)))
        .count();
    assert!(would >= 1);
    assert!(
        !c.all_events()
            .any(|(_, e)| matches!(e, Event::Proposed { .. } | Event::FenceStarted { .. }))
    );
    assert!(
        c.log
            .iter()
            .flatten()
            .all(|o| !matches!(o, Output::Fence(_)))
    );
}

#[test]
fn disarm_propagates_and_stops_all_fencing() {
    let mut c = settled(5, |_| {});
    c.handle(0, Input::Operator(OperatorCommand::Disarm));
    c.run_for(Duration::from_secs(3));
    for node in c.nodes.iter().flatten() {
        assert!(!node.status().armed, "{:?} still armed", node.me());
        assert_eq!(node.status().ineligible, Some(Ineligible::Disarmed));
    }
    c.kill_host(4);
    c.run_for(Duration::from_secs(15));
    assert!(
        c.log
            .iter()
            .flatten()
            .all(|o| !matches!(o, Output::Fence(_)))
    );
    assert!(
        c.nodes[0]
            .as_ref()
            .unwrap()
            .status()
            .peers
            .iter()
            .any(|p| p.ha == HaState::Disabled)
    );
    // Re-arming lets the fence through.
    c.handle(1, Input::Operator(OperatorCommand::Arm));
    c.run_for(Duration::from_secs(8));
    assert!(
        c.log
            .iter()
            .flatten()
            .any(|o| matches!(o, Output::Fence(_)))
    );
}

#[test]
fn a_host_in_maintenance_is_never_fenced() {
    let mut c = settled(5, |_| {});
    c.handle(
        1,
        Input::Operator(OperatorCommand::Maintenance {
            member: MemberId(4),
            on: true,
        }),
    );
    c.run_for(Duration::from_secs(2));
    c.kill_host(4);
    c.run_for(Duration::from_secs(20));
    assert!(
        c.log
            .iter()
            .flatten()
            .all(|o| !matches!(o, Output::Fence(_)))
    );
    let s = c.nodes[0].as_ref().unwrap().status();
    assert_eq!(
        s.peers.iter().find(|p| p.member == MemberId(4)).unwrap().ha,
        HaState::Ineligible
    );
}

#[test]
fn a_cleanly_stopped_daemon_is_not_fenced() {
    let mut c = settled(5, |_| {});
    c.handle(3, Input::Shutdown);
    c.deliver();
    c.crash(3);
    c.writing[3] = false;
    c.run_for(Duration::from_secs(20));
    assert!(
        c.log
            .iter()
            .flatten()
            .all(|o| !matches!(o, Output::Fence(_)))
    );
}

/// A stopping daemon may close its watchdog only once fewer than a quorum of peers could vote
/// to fence it unaware: in a cluster of 5 (quorum 3), after two acknowledgements, each sent
/// after the acknowledging peer persisted the stop.
#[test]
fn a_clean_stop_is_known_after_all_but_a_quorum_less_one_acknowledged() {
    let mut c = settled(5, |_| {});
    // Only h0 and h1 hear h3's notice.
    for to in [2, 4] {
        c.blocked.insert((3, to));
    }
    c.handle(3, Input::Shutdown);
    let progress = c.nodes[3].as_ref().unwrap().leave_progress().unwrap();
    assert!(!progress.known(), "nobody acknowledged yet: {progress:?}");
    assert_eq!(progress.unaware, 4);
    c.deliver();
    let progress = c.nodes[3].as_ref().unwrap().leave_progress().unwrap();
    assert_eq!(progress.acked_by.len(), 2, "{progress:?}");
    assert!(
        progress.known(),
        "two unaware peers cannot make a quorum of 3"
    );
    for i in [0, 1] {
        // Persisted before acknowledging: the ack follows the persist in the output order.
        let log = &c.log[i];
        let ack = log
            .iter()
            .position(|o| matches!(o, Output::Send { bytes, .. } if matches!(peerfence_proto::decode(bytes).map(|e| e.message), Ok(Message::LeaveAck(_)))))
            .expect("an acknowledgement was sent");
        let persisted = log[..ack].iter().rposition(
            |o| matches!(o, Output::Persist(s) if s.left_generation(MemberId(3)).is_some()),
        );
        assert!(
            persisted.is_some(),
            "h{i} acknowledged before persisting the stop"
        );
    }
}

/// Cut off from its peers, a stopping daemon never learns that its stop is known (its peers
/// will fence a silent host, so its watchdog must stay armed); peers that stop at the same time
/// count each other as gone.
#[test]
fn a_clean_stop_nobody_heard_is_not_known_and_simultaneous_stops_are() {
    let mut c = settled(5, |_| {});
    c.cut[2] = true;
    c.handle(2, Input::Shutdown);
    c.deliver();
    let progress = c.nodes[2].as_ref().unwrap().leave_progress().unwrap();
    assert!(!progress.known(), "{progress:?}");
    c.cut[2] = false;
    // Everyone else stops at once: their notices cross, and each stopping node answers.
    for i in [0, 1, 3, 4] {
        c.handle(i, Input::Shutdown);
    }
    c.deliver();
    for i in [0, 1, 3, 4] {
        let p = c.nodes[i].as_ref().unwrap().leave_progress().unwrap();
        assert!(p.known(), "h{i}: {p:?}");
    }
}

/// A peer that stopped cleanly itself does not count as knowing of a later stop: it may start
/// again without having heard of it, and vote. Cut off from the one running peer, a stopping
/// member of a 3-cluster whose other peer has left gets no acknowledgement and is not known.
#[test]
fn a_peer_that_left_does_not_count_as_knowing_of_a_later_stop() {
    let mut c = settled(3, |_| {});
    c.stop_cleanly(2);
    c.cut[1] = true;
    c.handle(1, Input::Shutdown);
    c.deliver();
    let progress = c.nodes[1].as_ref().unwrap().leave_progress().unwrap();
    assert_eq!(progress.unaware, 2, "{progress:?}");
    assert!(!progress.known(), "{progress:?}");
}

/// A member that holds a promise on the leaver (its vote may still make a certificate) does not
/// acknowledge the stop.
#[test]
fn a_voter_holding_a_promise_on_the_leaver_does_not_acknowledge() {
    let mut c = settled(5, |_| {});
    c.bmc_hung[4] = true;
    c.kill_host(4);
    c.run_for(Duration::from_secs(9));
    let voter = (0..4)
        .find(|&i| {
            c.nodes[i]
                .as_ref()
                .unwrap()
                .durable()
                .promise_for(MemberId(4))
                .is_some()
        })
        .expect("a voter holds a promise on h4");
    let before = c.log[voter].len();
    // h4's daemon sends a Leave (as if it came back and stopped at once).
    let bytes = Bytes::from(
        peerfence_proto::encode(&Envelope {
            cluster: c.cfg.cluster.clone(),
            digest: c.cfg.digest(),
            sender: MemberId(4),
            message: Message::Leave(peerfence_proto::LeaveNotice {
                member: MemberId(4),
                generation: 1,
            }),
        })
        .unwrap(),
    );
    c.handle(
        voter,
        Input::Datagram {
            from: MemberId(4),
            bytes,
        },
    );
    let acked = c.log[voter][before..].iter().any(|o| matches!(o, Output::Send { bytes, .. } if matches!(peerfence_proto::decode(bytes).map(|e| e.message), Ok(Message::LeaveAck(_)))));
    assert!(!acked, "a voter bound by its promise acknowledged the stop");
}

#[test]
fn a_voter_restarted_from_its_disk_keeps_its_promise() {
    let mut c = settled(5, |_| {});
    c.bmc_hung[4] = true; // the attempt hangs on its first level: promises stay live
    c.kill_host(4);
    c.run_for(Duration::from_secs(9));
    let target = MemberId(4);
    let started = c
        .all_events()
        .find_map(|(i, e)| match e {
            Event::FenceStarted { qc, .. } => Some((i, qc.proposal)),
            _ => None,
        })
        .expect("a fence started");
    // A voter other than the proposer, holding its promise.
    let voter = (0..4)
        .find(|&i| i != started.0 && c.disks[i].as_ref().unwrap().promise_for(target).is_some())
        .expect("a voter holds a promise");
    // Crash it and restart it from exactly what it persisted.
    c.crash(voter);
    c.start(voter);
    let held = c.nodes[voter]
        .as_ref()
        .unwrap()
        .durable()
        .promise_for(target)
        .cloned();
    assert_eq!(
        held.map(|p| p.proposal),
        Some(started.1),
        "the promise survived the restart"
    );
    // Another member now proposes a second round on the same target: refused.
    let other = (0..4).find(|&i| i != voter && i != started.0).unwrap();
    let second = Proposal {
        proposer: MemberId(other as u16),
        round: Round::new(1, 100),
        ..started.1
    };
    let bytes = Bytes::from(
        peerfence_proto::encode(&Envelope {
            cluster: c.cfg.cluster.clone(),
            digest: c.cfg.digest(),
            sender: second.proposer,
            message: Message::Propose(second),
        })
        .unwrap(),
    );
    c.log[voter].clear();
    c.handle(
        voter,
        Input::Datagram {
            from: second.proposer,
            bytes,
        },
    );
    let refused = c.log[voter].iter().any(|o| match o {
        Output::Send { bytes, .. } => matches!(
            peerfence_proto::decode(bytes).map(|e| e.message),
            Ok(Message::Refuse(r)) if matches!(r.reason, RefuseReason::PromisedElsewhere { .. })
        ),
        _ => false,
    });
    assert!(
        refused,
        "a restarted voter must refuse a second round on a promised target"
    );
    assert!(
        !c.log[voter]
            .iter()
            .any(|o| matches!(o, Output::Event(Event::Voted { .. })))
    );
}

#[test]
fn garbage_and_forged_datagrams_are_dropped_counted_and_change_nothing() {
    let mut c = settled(5, |_| {});
    let before = c.nodes[0].as_ref().unwrap().durable().clone();
    let node = c.nodes[0].as_mut().unwrap();
    let now = c.now;
    let mut send = |from: u16, bytes: Vec<u8>| {
        node.handle(
            now,
            Input::Datagram {
                from: MemberId(from),
                bytes: Bytes::from(bytes),
            },
        );
        while let Some(o) = node.poll_output() {
            assert!(!matches!(
                o,
                Output::Persist(_) | Output::Fence(_) | Output::SelfFence(_)
            ));
        }
    };
    send(1, vec![0xff; 64]);
    send(1, vec![]);
    send(99, vec![1, 2, 3]);
    let env = |sender: u16, cluster: &str, digest: u64| {
        peerfence_proto::encode(&Envelope {
            cluster: peerfence_proto::ClusterId::new(cluster).unwrap(),
            digest: peerfence_proto::ConfigDigest(digest),
            sender: MemberId(sender),
            message: Message::Release(peerfence_proto::Release {
                proposal: Proposal {
                    target: MemberId(4),
                    target_boot: boot(4),
                    proposer: MemberId(sender),
                    round: Round::new(1, 1),
                    kind: FenceKind::Fence,
                    budget_slot: Some(0),
                    lane: 0,
                },
            }),
        })
        .unwrap()
    };
    let digest = c.cfg.digest().0;
    send(1, env(2, "test", digest)); // claims to be member 2, arrives from member 1
    send(1, env(1, "other", digest));
    send(1, env(1, "test", digest ^ 1));
    let node = c.nodes[0].as_ref().unwrap();
    let d = &node.stats().dropped;
    assert!(d.get("malformed").copied().unwrap_or(0) >= 2, "{d:?}");
    assert_eq!(d.get("unknown_sender"), Some(&1));
    assert_eq!(d.get("forged_sender"), Some(&1));
    assert_eq!(d.get("other_cluster"), Some(&1));
    assert_eq!(d.get("config_digest_mismatch"), Some(&1));
    assert_eq!(node.durable(), &before);
}

fn certificate(
    c: &Cluster,
    target: usize,
    target_boot: BootId,
    voters: &[usize],
) -> QuorumCertificate {
    let proposal = Proposal {
        target: MemberId(target as u16),
        target_boot,
        proposer: MemberId(voters[0] as u16),
        round: Round::new(1, 7),
        kind: FenceKind::Fence,
        budget_slot: Some(0),
        lane: 0,
    };
    let votes = voters
        .iter()
        .map(|&v| {
            let evidence = VoteEvidence {
                voter_healthy: true,
                target_down_ms: 5000,
                heartbeat_stalled_ms: 6000,
            };
            let k: VoteKey = key(v);
            SignedVote {
                voter: MemberId(v as u16),
                evidence,
                signature: k.sign(
                    &c.cfg.cluster,
                    c.cfg.digest(),
                    &proposal,
                    MemberId(v as u16),
                    &evidence,
                ),
            }
        })
        .collect();
    QuorumCertificate { proposal, votes }
}

#[test]
fn a_valid_poison_pill_for_this_boot_stops_the_watchdog_before_acting() {
    let mut c = settled(5, |r| {
        r.watchdog.enabled = Some(true);
    });
    let pill = certificate(&c, 2, boot(2), &[0, 1, 3]);
    c.log[2].clear();
    c.handle(
        2,
        Input::PoisonPillRead {
            path: 0,
            pill: Some(pill),
        },
    );
    let outs: Vec<&Output> = c.log[2]
        .iter()
        .filter(|o| !matches!(o, Output::Event(_) | Output::Send { .. }))
        .collect();
    assert!(
        matches!(outs[0], Output::Persist(s) if s.watchdog_stopped_for == Some(boot(2))),
        "{outs:?}"
    );
    assert!(matches!(outs[1], Output::Watchdog(WatchdogAction::Stop)));
    assert!(matches!(outs[2], Output::SelfFence(cmd) if cmd.reason == SelfFenceReason::PoisonPill));
    // The latch survives a restart: the watchdog is never fed again in this boot.
    c.crash(2);
    c.start(2);
    c.log[2].clear();
    c.run_for(Duration::from_secs(5));
    assert!(
        !c.log[2]
            .iter()
            .any(|o| matches!(o, Output::Watchdog(WatchdogAction::Feed)))
    );
}

#[test]
fn forged_or_stale_poison_pills_do_not_kill() {
    let mut c = settled(5, |r| r.watchdog.enabled = Some(true));
    // Two votes: below quorum.
    let weak = certificate(&c, 2, boot(2), &[0, 1]);
    c.log[2].clear();
    c.handle(
        2,
        Input::PoisonPillRead {
            path: 0,
            pill: Some(weak),
        },
    );
    assert!(!c.log[2].iter().any(|o| matches!(
        o,
        Output::SelfFence(_) | Output::Watchdog(WatchdogAction::Stop)
    )));
    assert!(
        c.events(2)
            .any(|e| matches!(e, Event::ForgedCertificate { .. }))
    );
    // A valid certificate for an earlier boot: cleared, ignored.
    let stale = certificate(&c, 2, BootId([0xee; 16]), &[0, 1, 3]);
    c.log[2].clear();
    c.handle(
        2,
        Input::PoisonPillRead {
            path: 0,
            pill: Some(stale),
        },
    );
    assert!(
        c.log[2]
            .iter()
            .any(|o| matches!(o, Output::ClearPill { .. }))
    );
    assert!(!c.log[2].iter().any(|o| matches!(o, Output::SelfFence(_))));
}

#[test]
fn a_host_that_lost_its_own_storage_self_fences_only_with_the_quorum() {
    let mut c = settled(5, |_| {});
    c.writing[1] = false; // its writes time out; its heartbeat stops for everyone
    c.run_for(Duration::from_secs(25));
    let acted: Vec<&Output> = c.log[1]
        .iter()
        .filter(|o| matches!(o, Output::SelfFence(_)))
        .collect();
    assert_eq!(acted.len(), 1, "exactly one self-fence");
    let Output::SelfFence(cmd) = acted[0] else {
        unreachable!()
    };
    assert_eq!(cmd.action, LocalAction::Reboot);
    assert_eq!(KeyRing::new(&c.cfg).verify_certificate(&cmd.qc), Ok(()));
    assert!(cmd.qc.votes.iter().all(|v| v.voter != MemberId(1)));
}

#[test]
fn storage_lost_everywhere_means_no_fence_and_no_self_fence() {
    let mut c = settled(5, |r| r.watchdog.enabled = Some(true));
    c.writing.iter_mut().for_each(|w| *w = false);
    c.run_for(Duration::from_secs(40));
    assert!(
        c.log
            .iter()
            .flatten()
            .all(|o| !matches!(o, Output::Fence(_) | Output::SelfFence(_)))
    );
    assert!(
        c.all_events()
            .any(|(_, e)| matches!(e, Event::StormEntered { .. }))
    );
    assert!(
        c.all_events()
            .any(|(_, e)| matches!(e, Event::SelfFenceBlocked { .. }))
    );
    // Everyone is still vouched for by a quorum, so every watchdog keeps being fed.
    for node in c.nodes.iter().flatten() {
        assert!(
            node.status().watchdog_feeding,
            "{:?} stopped feeding",
            node.me()
        );
    }
}

#[test]
fn a_node_cut_off_without_storage_stops_feeding_its_watchdog() {
    let mut c = settled(5, |r| r.watchdog.enabled = Some(true));
    c.cut[0] = true;
    c.writing[0] = false;
    c.run_for(Duration::from_secs(12));
    assert!(c.events(0).any(|e| matches!(
        e,
        Event::WatchdogStopped {
            reason: WatchdogStopReason::NoStorageNoQuorum
        }
    )));
}

#[test]
fn a_node_rejects_a_wrong_key_at_start() {
    let cfg = Arc::new(raw(5).validate().unwrap());
    let err = Node::new(
        cfg.clone(),
        MemberId(0),
        key(1),
        boot(0),
        None,
        1,
        Instant::ZERO,
    )
    .unwrap_err();
    assert!(matches!(err, StartError::KeyMismatch(_)));
    let err = Node::new(cfg, MemberId(9), key(1), boot(0), None, 1, Instant::ZERO).unwrap_err();
    assert_eq!(err, StartError::NotAMember(MemberId(9)));
}

#[test]
fn the_first_output_persists_the_new_generation() {
    let cfg = Arc::new(raw(3).validate().unwrap());
    let mut n = Node::new(
        cfg.clone(),
        MemberId(0),
        key(0),
        boot(0),
        None,
        1,
        Instant::ZERO,
    )
    .unwrap();
    let Some(Output::Persist(s)) = n.poll_output() else {
        panic!("first output must persist")
    };
    assert_eq!(s.generation, 1);
    let mut n2 = Node::new(
        cfg,
        MemberId(0),
        key(0),
        boot(0),
        Some(*s),
        1,
        Instant::ZERO,
    )
    .unwrap();
    let Some(Output::Persist(s2)) = n2.poll_output() else {
        panic!()
    };
    assert_eq!(s2.generation, 2);
}

#[test]
fn failed_attempts_back_off_and_end_in_failed() {
    let mut c = settled(5, |r| {
        r.fencing.max_attempts = Some(3);
    });
    c.bmc_failing[4] = true; // wrong password: every attempt fails at once
    c.kill_host(4);
    c.run_for(Duration::from_secs(60));
    let mut failures: Vec<(u16, Option<Duration>)> = c
        .all_events()
        .filter_map(|(_, e)| match e {
            Event::FenceFailed {
                attempt, retry_in, ..
            } => Some((*attempt, *retry_in)),
            _ => None,
        })
        .collect();
    // Each retry is proposed by the next member in the rendezvous order: the executors differ.
    failures.sort();
    let executors: std::collections::BTreeSet<usize> = (0..4)
        .filter(|&i| c.events(i).any(|e| matches!(e, Event::FenceFailed { .. })))
        .collect();
    assert!(executors.len() >= 2, "the proposer turned: {executors:?}");
    assert_eq!(
        failures,
        vec![
            (1, Some(Duration::from_secs(10))),
            (2, Some(Duration::from_secs(20))),
            (3, None)
        ],
        "back-off 10 s, 20 s, then Failed after max_attempts"
    );
    for node in c.nodes.iter().flatten() {
        let p = node
            .status()
            .peers
            .into_iter()
            .find(|p| p.member == MemberId(4))
            .unwrap();
        assert_eq!(p.ha, HaState::Failed, "{:?}", node.me());
        assert_eq!(p.attempts, 3);
    }
    // Nothing more happens on its own; an operator's manual request tries again.
    let fences = c
        .log
        .iter()
        .flatten()
        .filter(|o| matches!(o, Output::Fence(_)))
        .count();
    c.run_for(Duration::from_secs(60));
    assert_eq!(
        fences,
        c.log
            .iter()
            .flatten()
            .filter(|o| matches!(o, Output::Fence(_)))
            .count()
    );
    c.bmc_failing[4] = false;
    c.handle(
        0,
        Input::Operator(OperatorCommand::ManualFence {
            target: MemberId(4),
        }),
    );
    c.run_for(Duration::from_secs(5));
    assert!(
        c.all_events().any(
            |(_, e)| matches!(e, Event::FenceConfirmed { target, .. } if *target == MemberId(4))
        )
    );
}

#[test]
fn a_renewed_generation_is_persisted_before_it_is_used() {
    use bytes::BufMut;
    use foca::{Codec, Header, Member, Message as SwimMessage};
    use peerfence_proto::{Ident, swim::SwimCodec};
    let cfg = Arc::new(raw(3).validate().unwrap());
    let mut n = Node::new(
        cfg.clone(),
        MemberId(0),
        key(0),
        boot(0),
        None,
        1,
        Instant::ZERO,
    )
    .unwrap();
    while n.poll_output().is_some() {}
    assert_eq!(n.generation(), 1);
    // Member 1 tells us the cluster declared our generation 1 down.
    let mut packet = Vec::new();
    let header = Header {
        src: Ident {
            member: MemberId(1),
            generation: 1,
        },
        src_incarnation: 0,
        dst: Ident {
            member: MemberId(0),
            generation: 1,
        },
        message: SwimMessage::Gossip,
    };
    SwimCodec.encode_header(&header, &mut packet).unwrap();
    packet.put_u16(1);
    SwimCodec
        .encode_member(
            &Member::down(Ident {
                member: MemberId(0),
                generation: 1,
            }),
            &mut packet,
        )
        .unwrap();
    let bytes = Bytes::from(
        peerfence_proto::encode(&Envelope {
            cluster: cfg.cluster.clone(),
            digest: cfg.digest(),
            sender: MemberId(1),
            message: Message::Swim(packet),
        })
        .unwrap(),
    );
    n.handle(
        Instant::from_micros(1000),
        Input::Datagram {
            from: MemberId(1),
            bytes,
        },
    );
    assert_eq!(n.generation(), 2, "foca renewed the identity");
    let outs: Vec<Output> = std::iter::from_fn(|| n.poll_output()).collect();
    let persist = outs
        .iter()
        .position(|o| matches!(o, Output::Persist(s) if s.generation == 2))
        .expect("the new generation is persisted");
    let first_send = outs.iter().position(|o| matches!(o, Output::Send { .. }));
    assert!(
        first_send.is_none_or(|i| i > persist),
        "nothing leaves before the Persist: {outs:?}"
    );
}

#[test]
fn vouches_are_relayed_around_a_cut_link() {
    // Four hosts, one dead: the three others are a bare quorum. Storage is lost everywhere and
    // the link between 0 and 1 is cut; 2 still talks to both. Nobody may stop feeding.
    let mut c = settled(4, |r| r.watchdog.enabled = Some(true));
    c.kill_host(3);
    c.run_for(Duration::from_secs(2));
    c.writing.iter_mut().for_each(|w| *w = false);
    c.blocked.insert((0, 1));
    c.blocked.insert((1, 0));
    c.run_for(Duration::from_secs(40));
    for i in 0..3 {
        let s = c.nodes[i].as_ref().unwrap().status();
        assert!(
            s.watchdog_feeding,
            "h{i} stopped feeding although a quorum vouches through h2"
        );
        assert!(
            !c.events(i)
                .any(|e| matches!(e, Event::WatchdogStopped { .. })),
            "h{i}"
        );
    }
    // Cut 2 off as well: now 0 and 1 are alone and must stop.
    c.cut[2] = true;
    c.run_for(Duration::from_secs(15));
    assert!(!c.nodes[0].as_ref().unwrap().status().watchdog_feeding);
    assert!(!c.nodes[1].as_ref().unwrap().status().watchdog_feeding);
}

#[test]
fn a_flag_set_while_a_member_was_cut_off_reaches_it_later() {
    let mut c = settled(5, |_| {});
    c.cut[4] = true;
    c.handle(0, Input::Operator(OperatorCommand::Disarm));
    c.handle(
        1,
        Input::Operator(OperatorCommand::Maintenance {
            member: MemberId(2),
            on: true,
        }),
    );
    c.run_for(Duration::from_secs(20)); // long past the gossip's transmissions
    assert!(c.nodes[4].as_ref().unwrap().status().armed);
    c.cut[4] = false;
    c.run_for(Duration::from_secs(15));
    let n4 = c.nodes[4].as_ref().unwrap();
    assert!(
        !n4.status().armed,
        "the disarm reached the member that was cut off"
    );
    assert!(
        n4.durable().in_maintenance(MemberId(2)),
        "so did the maintenance flag"
    );
}

#[test]
fn a_pill_is_cleared_after_its_interrupted_attempt() {
    let mut c = settled(5, |r| {
        r.watchdog.enabled = Some(true);
        r.fencing.levels = Some(vec![RawLevel::poison_pill("pill")]);
    });
    c.kill_host(4);
    c.run_for(Duration::from_secs(10));
    let executor = (0..4)
        .find(|&i| {
            c.log[i]
                .iter()
                .any(|o| matches!(o, Output::WritePill { .. }))
        })
        .expect("a pill was written");
    // The executor dies right after writing the pill and comes back from its disk.
    c.crash(executor);
    c.start(executor);
    c.log[executor].clear();
    c.run_for(c.cfg.attempt_max() + Duration::from_secs(2));
    assert!(
        c.log[executor]
            .iter()
            .any(|o| matches!(o, Output::ClearPill { target, .. } if *target == MemberId(4))),
        "the restarted executor clears the pill of the attempt it could not finish"
    );
}

#[test]
fn a_self_fence_is_called_off_when_storage_returns_during_the_round() {
    // Its peers stop hearing from host 1 once its messages are held: a slow suspicion keeps
    // them from declaring it Down and fencing it themselves before it asks.
    let mut c = settled(5, |r| r.swim.suspect_to_down_after = Some("60s".into()));
    c.writing[1] = false;
    // Hold everything sent to host 1 once it knows its storage failed, so that the votes on its
    // request wait; the network is otherwise instant and the round would end in one step.
    for _ in 0..300 {
        c.run_for(STEP);
        if c.events(1).any(|e| {
            matches!(
                e,
                Event::VerdictChanged {
                    verdict: Verdict::Unhealthy
                }
            )
        }) {
            c.held[1] = true;
        }
        if c.events(1).any(|e| matches!(e, Event::Proposed { .. })) {
            break;
        }
    }
    assert!(
        c.events(1).any(|e| matches!(e, Event::Proposed { .. })),
        "host 1 asked"
    );
    assert!(!c.log[1].iter().any(|o| matches!(o, Output::SelfFence(_))));
    // Its storage is back before the votes arrive.
    c.writing[1] = true;
    c.hb[1] += 1;
    let counter = c.hb[1];
    c.handle(
        1,
        Input::StorageWrite {
            path: 0,
            outcome: WriteOutcome::Ok {
                latency: Duration::from_millis(5),
            },
            counter,
        },
    );
    c.release_held(1);
    c.run_for(Duration::from_secs(1));
    assert!(
        !c.log[1].iter().any(|o| matches!(o, Output::SelfFence(_))),
        "storage came back: no reboot"
    );
    assert!(
        c.events(1)
            .any(|e| matches!(e, Event::RoundAbandoned { .. })),
        "{:?}",
        c.events(1).collect::<Vec<_>>()
    );
}

#[test]
fn a_local_self_fence_request_only_waives_the_grace_and_still_needs_the_quorum() {
    let answer = |c: &Cluster, i: usize| {
        c.events(i)
            .filter_map(|e| match e {
                Event::SelfFenceRequestAnswered { answer } => Some(*answer),
                _ => None,
            })
            .last()
    };
    let mut c = settled(5, |r| r.self_fence.grace = Some("120s".into()));
    // Healthy storage: noted, nothing happens.
    c.handle(1, Input::Operator(OperatorCommand::SelfFenceRequest));
    assert_eq!(answer(&c, 1), Some(SelfFenceAnswer::StorageHealthy));
    // Its storage fails; long before the 120 s grace, the request makes it ask the quorum.
    c.writing[1] = false;
    c.run_for(Duration::from_secs(15));
    assert!(!c.log[1].iter().any(|o| matches!(o, Output::SelfFence(_))));
    c.handle(1, Input::Operator(OperatorCommand::SelfFenceRequest));
    assert_eq!(answer(&c, 1), Some(SelfFenceAnswer::AskingQuorum));
    c.run_for(Duration::from_secs(5));
    let acted: Vec<&Output> = c.log[1]
        .iter()
        .filter(|o| matches!(o, Output::SelfFence(_)))
        .collect();
    assert_eq!(acted.len(), 1, "the quorum agreed once");
    let Output::SelfFence(cmd) = acted[0] else {
        unreachable!()
    };
    assert_eq!(KeyRing::new(&c.cfg).verify_certificate(&cmd.qc), Ok(()));

    // With every host's storage gone (common mode), the request changes nothing.
    let mut c = settled(5, |r| r.self_fence.grace = Some("120s".into()));
    c.writing.iter_mut().for_each(|w| *w = false);
    c.run_for(Duration::from_secs(15));
    c.handle(1, Input::Operator(OperatorCommand::SelfFenceRequest));
    assert_eq!(answer(&c, 1), Some(SelfFenceAnswer::AskingQuorum));
    c.run_for(Duration::from_secs(20));
    assert!(
        c.log
            .iter()
            .flatten()
            .all(|o| !matches!(o, Output::SelfFence(_) | Output::Fence(_)))
    );

    // log-only: refused, explained.
    let mut c = settled(3, |r| r.self_fence.action = Some("log-only".into()));
    c.handle(0, Input::Operator(OperatorCommand::SelfFenceRequest));
    assert_eq!(answer(&c, 0), Some(SelfFenceAnswer::NoAction));
    assert!(!SelfFenceAnswer::NoAction.accepted());
}

/// Issue 10 §1: a clean stop is remembered by every member, across their own restarts and across
/// the leaver's silence, and also by a member that lost its state and learns it only from the
/// leaver's heartbeat slot. Nothing but an operator fence may fence it.
#[test]
fn a_clean_stop_is_remembered_across_restarts_and_from_the_slot() {
    let mut c = settled(5, |_| {});
    c.stop_cleanly(4);
    c.run_for(Duration::from_secs(2));
    for i in 0..4 {
        let d = c.disks[i].as_ref().unwrap();
        assert!(
            d.left_generation(MemberId(4)).is_some(),
            "h{i} persisted the leave"
        );
    }
    // Three peers restart (a rolling upgrade); one of them lost its state entirely.
    for i in 0..3 {
        c.crash(i);
    }
    c.disks[2] = None;
    for i in 0..3 {
        c.start(i);
    }
    // h2 hears nobody for a while: it can learn the clean stop only from h4's heartbeat slot.
    c.cut[2] = true;
    c.run_for(Duration::from_secs(3));
    let p = c.nodes[2]
        .as_ref()
        .unwrap()
        .status()
        .peers
        .into_iter()
        .find(|p| p.member == MemberId(4))
        .unwrap();
    assert!(
        p.left.is_some(),
        "h2 read the clean stop from the slot: {p:?}"
    );
    c.cut[2] = false;
    c.run_for(Duration::from_secs(30));
    for i in 0..4 {
        let node = c.nodes[i].as_ref().unwrap();
        let p = node
            .status()
            .peers
            .into_iter()
            .find(|p| p.member == MemberId(4))
            .unwrap();
        assert_eq!(p.ha, HaState::Left, "h{i}");
        assert!(p.left.is_some(), "h{i}");
        assert!(!p.dead);
    }
    assert!(
        c.all_events().all(
            |(_, e)| !matches!(e, Event::Proposed { proposal } if proposal.target == MemberId(4))
        ),
        "nobody proposed to fence a host that left"
    );
    // It comes back with a higher generation: the leave is over.
    c.writing[4] = true;
    c.cut[4] = false;
    c.start(4);
    c.run_for(Duration::from_secs(15));
    for i in 0..4 {
        let node = c.nodes[i].as_ref().unwrap();
        assert!(
            node.durable().left_generation(MemberId(4)).is_none(),
            "h{i}"
        );
        let p = node
            .status()
            .peers
            .into_iter()
            .find(|p| p.member == MemberId(4))
            .unwrap();
        assert_eq!(p.ha, HaState::Available, "h{i}");
    }
}

/// An operator may still fence a host that left: the proposal is an operator fence, voters accept
/// it, and the poison pill is never used for it (a closed watchdog proves nothing).
#[test]
fn an_operator_fence_of_a_host_that_left_needs_power_off() {
    let mut c = settled(5, |r| {
        r.fencing.levels = Some(vec![RawLevel::poison_pill("pill")]);
        r.watchdog.enabled = Some(true);
    });
    c.stop_cleanly(4);
    c.run_for(Duration::from_secs(10));
    c.handle(
        0,
        Input::Operator(OperatorCommand::ManualFence {
            target: MemberId(4),
        }),
    );
    c.run_for(Duration::from_secs(10));
    let started: Vec<_> = c
        .all_events()
        .filter_map(|(_, e)| match e {
            Event::FenceStarted { qc, .. } => Some(qc.proposal.kind),
            _ => None,
        })
        .collect();
    assert_eq!(
        started,
        vec![FenceKind::Operator],
        "one operator fence started"
    );
    assert!(
        c.log
            .iter()
            .flatten()
            .all(|o| !matches!(o, Output::WritePill { .. })),
        "no pill for a host whose watchdog is closed"
    );
    assert!(
        c.all_events()
            .all(|(_, e)| !matches!(e, Event::SafeToRecover { .. })),
        "never confirmed without power Off"
    );
}

/// Issue 10 §8: a member restarted during a fence learns the certificate and the outcome from
/// its peers when it comes back (anti-entropy): it knows the host fenced and counts the same
/// budget as they do, instead of proposing it again and again.
#[test]
fn a_member_restarted_during_a_fence_learns_its_outcome() {
    // Seven hosts: two down at once is not yet a storm.
    let mut c = settled(7, |_| {});
    // h3 is in maintenance, so that its own silence while its daemon is down fences nobody.
    c.handle(
        0,
        Input::Operator(OperatorCommand::Maintenance {
            member: MemberId(3),
            on: true,
        }),
    );
    c.run_for(Duration::from_secs(2));
    c.crash(3);
    c.cut[3] = true;
    c.kill_host(4);
    c.run_for(Duration::from_secs(12));
    assert!(
        c.nodes[0]
            .as_ref()
            .unwrap()
            .durable()
            .fenced_boot(MemberId(4))
            == Some(boot(4)),
        "the others fenced h4"
    );
    c.cut[3] = false;
    c.start(3);
    c.run_for(Duration::from_secs(12));
    let n3 = c.nodes[3].as_ref().unwrap();
    assert_eq!(n3.durable().fenced_boot(MemberId(4)), Some(boot(4)));
    let p = n3
        .status()
        .peers
        .into_iter()
        .find(|p| p.member == MemberId(4))
        .unwrap();
    assert_eq!(p.ha, HaState::Fenced);
    assert_eq!(
        n3.status().budget_used,
        c.nodes[0].as_ref().unwrap().status().budget_used,
        "one budget view"
    );
    assert!(
        !c.events(3).any(|e| matches!(e, Event::Proposed { .. })),
        "it never proposed the fenced host again: {:?}",
        c.events(3)
            .filter(|e| !matches!(e, Event::HaChanged { .. } | Event::SwimChanged { .. }))
            .collect::<Vec<_>>()
    );
}

/// Issue 10 §9: a member whose state was lost comes back with a generation above its old one
/// and votes again only after a promise lifetime and its peers' news.
#[test]
fn a_member_that_lost_its_state_waits_before_voting() {
    let mut c = settled(5, |_| {});
    let old = c.disks[2].as_ref().unwrap().generation;
    c.crash(2);
    c.disks[2] = Some(DurableState::recovered(old + 16));
    c.start(2);
    c.run_for(Duration::from_secs(15));
    let s = c.nodes[2].as_ref().unwrap().status();
    assert!(s.generation > old);
    assert_eq!(s.ineligible, Some(Ineligible::Recovering));
    c.run_for(c.cfg.promise_ttl());
    let s = c.nodes[2].as_ref().unwrap().status();
    assert_eq!(
        s.ineligible, None,
        "news heard and promises lapsed: it votes again"
    );
}

/// Issue 10 §5: a proposer whose node task stalled past `proposal_timeout` (its votes sat in
/// its inbox) must not count them: a certificate formed late would run an attempt that outlives
/// its voters' promises.
#[test]
fn votes_handled_after_the_proposal_timeout_make_no_certificate() {
    // Three hosts: the proposer's own vote and one more make the quorum, so the first late
    // vote it handles completes the certificate.
    let mut c = settled(3, |_| {});
    c.kill_host(2);
    let is_vote = |bytes: &Bytes| {
        matches!(
            peerfence_proto::decode(bytes).map(|e| e.message),
            Ok(Message::Vote(_))
        )
    };
    // Run until someone proposes; from then on its inbox is held. Once the other member's vote
    // sits in that inbox, the proposer's node task stalls.
    let mut proposed_at = None;
    let mut p = 0;
    for _ in 0..300 {
        c.now = c.now + STEP;
        if c.now >= c.next_second {
            c.next_second = c.now + Duration::from_secs(1);
            c.storage_round();
        }
        for i in 0..3 {
            c.handle(i, Input::Tick);
        }
        if proposed_at.is_none()
            && let Some(i) =
                (0..2).find(|&i| c.events(i).any(|e| matches!(e, Event::Proposed { .. })))
        {
            p = i;
            proposed_at = Some(c.now);
            c.held[p] = true;
        }
        c.deliver();
        if c.held_queue.iter().any(|(_, _, b)| is_vote(b)) {
            break;
        }
    }
    let started = proposed_at.expect("a proposal");
    assert!(
        c.held_queue.iter().any(|(_, _, b)| is_vote(b)),
        "a vote is waiting"
    );
    // The stall lasts until just past the proposal timeout; the other member goes on.
    let stall_end = started + c.cfg.fencing.proposal_timeout + Duration::from_millis(200);
    while c.now < stall_end {
        c.now = c.now + STEP;
        for i in (0..3).filter(|&i| i != p) {
            c.handle(i, Input::Tick);
        }
        c.deliver();
    }
    // It wakes up and handles its inbox, the vote first (the daemon's inbox is in arrival
    // order, and nothing says a timer is handled before it).
    let mut held = std::mem::take(&mut c.held_queue);
    held.make_contiguous().sort_by_key(|(_, _, b)| !is_vote(b));
    c.held[p] = false;
    for (from, to, bytes) in held {
        c.handle(to.index(), Input::Datagram { from, bytes });
    }
    assert!(
        !c.log[p]
            .iter()
            .any(|o| matches!(o, Output::Event(Event::FenceStarted { .. }))),
        "late votes made a certificate"
    );
}

/// Issue 10 §5: an executor that stalls past its attempt's deadline does not begin its next
/// level with a fresh budget: the attempt never outlives the promises its voters granted.
#[test]
fn a_level_begun_late_gets_only_what_is_left_of_the_attempt() {
    let mut c = settled(5, |r| {
        r.fencing.levels = Some(vec![
            RawLevel::agent("bmc", "10s"),
            RawLevel::poison_pill("pill"),
        ]);
        r.watchdog.enabled = Some(true);
    });
    c.bmc_hung[4] = true;
    c.kill_host(4);
    let mut executor = None;
    for _ in 0..200 {
        c.run_for(STEP);
        executor = (0..4).find(|&i| c.log[i].iter().any(|o| matches!(o, Output::Fence(_))));
        if executor.is_some() {
            break;
        }
    }
    let e = executor.expect("a fence started");
    // The executor's node task stalls for longer than the whole attempt may take.
    let stalled = c.cfg.attempt_max() + Duration::from_secs(1);
    c.now = c.now + stalled;
    c.handle(e, Input::Tick);
    assert!(
        !c.log[e]
            .iter()
            .any(|o| matches!(o, Output::WritePill { .. })),
        "a pill level begun after the attempt's deadline"
    );
    assert!(
        c.events(e)
            .any(|ev| matches!(ev, Event::FenceFailed { .. }))
    );
}

/// Issue 10 §7: a pill clear that fails is kept durably and asked for again (with back-off, and
/// after a restart) until it succeeds; it names the attempt whose pill it removes.
#[test]
fn a_failed_pill_clear_is_retried_until_it_succeeds() {
    let mut c = settled(5, |r| {
        r.watchdog.enabled = Some(true);
        r.fencing.levels = Some(vec![RawLevel::poison_pill("pill")]);
    });
    c.kill_host(4);
    c.run_for(c.cfg.attempt_max() + Duration::from_secs(10));
    let executor = (0..4)
        .find(|&i| {
            c.log[i]
                .iter()
                .any(|o| matches!(o, Output::WritePill { .. }))
        })
        .expect("a pill was written");
    let clears = |c: &Cluster| -> Vec<(u64, Proposal)> {
        c.log[executor]
            .iter()
            .filter_map(|o| match o {
                Output::ClearPill { id, proposal, .. } => Some((*id, *proposal)),
                _ => None,
            })
            .collect()
    };
    let first = clears(&c);
    assert_eq!(first.len(), 1, "one clear asked for");
    let written = c.log[executor]
        .iter()
        .find_map(|o| match o {
            Output::WritePill { qc, .. } => Some(qc.proposal),
            _ => None,
        })
        .unwrap();
    assert_eq!(first[0].1, written, "it names the attempt whose pill it is");
    c.handle(
        executor,
        Input::PillCleared {
            id: first[0].0,
            ok: false,
        },
    );
    assert!(
        !c.disks[executor]
            .as_ref()
            .unwrap()
            .pills_to_clear
            .is_empty()
    );
    c.run_for(Duration::from_secs(3));
    let again = clears(&c);
    assert_eq!(again.len(), 2, "asked again after a failure");
    // A restart before it succeeds: the new run asks again, from its disk.
    c.crash(executor);
    c.start(executor);
    c.log[executor].clear();
    c.run_for(Duration::from_secs(1));
    let after = clears(&c);
    assert_eq!(after.len(), 1, "the restarted node asks again");
    c.handle(
        executor,
        Input::PillCleared {
            id: after[0].0,
            ok: true,
        },
    );
    c.run_for(Duration::from_secs(1));
    assert!(
        c.disks[executor]
            .as_ref()
            .unwrap()
            .pills_to_clear
            .is_empty()
    );
}

/// Issue 10 §7: after a confirmed fence, the next power poll's Off is what happened, not a host
/// "found off with no fence"; and a host that fenced itself by quorum counts the slot it spent,
/// as its peers do.
#[test]
fn views_agree_with_what_happened_after_a_fence() {
    let mut c = settled(5, |_| {});
    c.kill_host(4);
    c.run_for(Duration::from_secs(12));
    assert_eq!(
        c.nodes[0]
            .as_ref()
            .unwrap()
            .durable()
            .fenced_boot(MemberId(4)),
        Some(boot(4))
    );
    for i in 0..4 {
        c.handle(
            i,
            Input::PowerStatus {
                member: MemberId(4),
                state: PowerState::Off,
            },
        );
        assert!(
            !c.events(i).any(|e| matches!(e, Event::HostFoundOff { .. })),
            "h{i} reported a fenced host as found off"
        );
    }

    // A self-fence by quorum: the self-fencer's own budget view counts it.
    let mut c = settled(5, |_| {});
    c.writing[1] = false;
    c.run_for(Duration::from_secs(20));
    assert!(
        c.log[1].iter().any(|o| matches!(o, Output::SelfFence(_))),
        "host 1 fenced itself"
    );
    let used = |c: &Cluster, i: usize| c.disks[i].as_ref().unwrap().slots.len();
    assert_eq!(used(&c, 1), 1, "its own view counts the slot");
    assert_eq!(used(&c, 0), 1, "as a peer's does");
}

/// Issue 11: an outcome that leads to "safe to recover" needs its executor's signature and a
/// certificate this node verified. A compromised member's forgeries — unsigned, over a
/// certificate of its own vote, naming another executor, gossip without a certificate, a genuine
/// certificate with an outcome it signed for someone else's fence — change nothing but counters.
#[test]
fn forged_outcomes_are_dropped_counted_and_change_nothing() {
    let mut c = settled(5, |_| {});
    let cfg = c.cfg.clone();
    let (cluster, digest) = (cfg.cluster.clone(), cfg.digest());
    let confirmed = |qc: &QuorumCertificate| FenceOutcome {
        proposal: qc.proposal,
        attempt: 1,
        result: OutcomeResult::Confirmed(peerfence_proto::Evidence::PowerOff { level: 0 }),
    };
    // h1 is the liar; h4 is alive.
    let own = certificate(&c, 4, boot(4), &[1]);
    let quorum = certificate(&c, 4, boot(4), &[2, 1, 3]); // h2 proposed: h1 is not its executor
    let signed_own = key(1).sign_outcome(&cluster, digest, confirmed(&own));
    let signed_for_h2 = key(1).sign_outcome(&cluster, digest, confirmed(&quorum));
    let mut spoofed = own.clone();
    spoofed.proposal.proposer = MemberId(2);
    let signed_spoofed = key(1).sign_outcome(&cluster, digest, confirmed(&spoofed));
    let news = |qc: QuorumCertificate, outcome| {
        Message::SignedFenceNews(peerfence_proto::SignedFenceNews {
            batch: 1,
            part: 0,
            parts: 1,
            items: vec![peerfence_proto::SignedNewsItem {
                qc,
                outcome: Some(outcome),
            }],
            slots: Vec::new(),
        })
    };
    let messages = [
        Message::Outcome(confirmed(&own)),
        Message::CertifiedOutcome(peerfence_proto::CertifiedOutcome {
            qc: own.clone(),
            signed: signed_own,
        }),
        Message::CertifiedOutcome(peerfence_proto::CertifiedOutcome {
            qc: spoofed.clone(),
            signed: signed_spoofed,
        }),
        news(quorum.clone(), signed_for_h2),
    ];
    let node = c.nodes[0].as_mut().unwrap();
    for message in messages {
        let bytes = peerfence_proto::encode(&Envelope {
            cluster: cluster.clone(),
            digest,
            sender: MemberId(1),
            message,
        })
        .unwrap();
        node.handle(
            c.now,
            Input::Datagram {
                from: MemberId(1),
                bytes: Bytes::from(bytes),
            },
        );
    }
    // By gossip (relayed by anyone): an unsigned one, and a signed one whose certificate this
    // node never verified.
    node.on_broadcast(Broadcast::Outcome(confirmed(&own)));
    node.on_broadcast(Broadcast::SignedOutcome(signed_own));
    while node.poll_output().is_some() {}
    let d = &node.stats().dropped;
    assert_eq!(d.get("unsigned_outcome"), Some(&2), "{d:?}");
    assert_eq!(d.get("bad_certificate"), Some(&1), "{d:?}");
    assert_eq!(d.get("forged_sender"), Some(&1), "{d:?}");
    assert_eq!(d.get("bad_outcome_signature"), Some(&1), "{d:?}");
    assert_eq!(d.get("outcome_without_certificate"), Some(&1), "{d:?}");
    assert_eq!(node.durable().fenced_boot(MemberId(4)), None);
    assert!(node.durable().news_proofs.is_empty());
    let h4 = node
        .status()
        .peers
        .into_iter()
        .find(|p| p.member == MemberId(4))
        .unwrap();
    assert_ne!(h4.ha, HaState::Fenced);
    assert!(!c.events(0).any(|e| matches!(
        e,
        Event::FenceConfirmed { .. } | Event::SafeToRecover { .. }
    )));
}

/// Issue 11: the real executor's signed outcome, relayed by gossip, counts once this node holds
/// the certificate; the same bytes with one bit changed do not.
#[test]
fn a_signed_outcome_counts_only_with_its_certificate_and_intact() {
    let mut c = settled(5, |_| {});
    let cfg = c.cfg.clone();
    let qc = certificate(&c, 4, boot(4), &[1, 2, 3]);
    let outcome = FenceOutcome {
        proposal: qc.proposal,
        attempt: 1,
        result: OutcomeResult::Confirmed(peerfence_proto::Evidence::PowerOff { level: 0 }),
    };
    let signed = key(1).sign_outcome(&cfg.cluster, cfg.digest(), outcome);
    let mut tampered = signed;
    tampered.outcome.attempt = 2;
    let node = c.nodes[0].as_mut().unwrap();
    node.on_broadcast(Broadcast::SignedOutcome(signed));
    assert_eq!(
        node.stats().dropped.get("outcome_without_certificate"),
        Some(&1)
    );
    node.on_certificate(MemberId(1), qc);
    node.on_broadcast(Broadcast::SignedOutcome(tampered));
    assert_eq!(node.stats().dropped.get("bad_outcome_signature"), Some(&1));
    assert_eq!(node.durable().fenced_boot(MemberId(4)), None);
    node.on_broadcast(Broadcast::SignedOutcome(signed));
    assert_eq!(node.durable().fenced_boot(MemberId(4)), Some(boot(4)));
    assert_eq!(
        node.durable().proof_of(&signed.outcome.proposal),
        Some(signed)
    );
}

/// Issue 11: a new boot counts only when the host's own slot shows it. Even a health update its
/// member signed (a compromised or confused member) does not move this node to a new boot;
/// the slot's record does.
#[test]
fn a_new_boot_in_signed_health_alone_is_not_a_reboot() {
    let mut c = settled(5, |_| {});
    let cfg = c.cfg.clone();
    let node = c.nodes[0].as_mut().unwrap();
    let update = HealthUpdate {
        member: MemberId(4),
        generation: 1_000,
        seq: 1,
        boot: BootId([0xee; 16]),
        verdict: peerfence_proto::Verdict::Healthy,
        storage: vec![peerfence_proto::StorageHealth::Ok],
        agent: peerfence_proto::AgentHealth::Alive,
        isolation: peerfence_proto::IsolationHealth::NotConfigured,
    };
    let signed = key(4).sign_health(&cfg.cluster, cfg.digest(), update);
    node.on_broadcast(Broadcast::SignedHealth(signed));
    assert_eq!(node.peers[4].boot, Some(boot(4)));
    assert_eq!(
        node.stats().dropped.get("health_boot_unconfirmed"),
        Some(&1)
    );
    assert!(!c.events(0).any(|e| matches!(e, Event::Rebooted { .. })));
    // The slot shows the new boot: now it is one.
    let record = HeartbeatRecord {
        member: MemberId(4),
        boot: BootId([0xee; 16]),
        generation: 1_000,
        counter: 1,
    };
    let node = c.nodes[0].as_mut().unwrap();
    node.handle(
        c.now,
        Input::HeartbeatRead {
            path: 0,
            member: MemberId(4),
            record: Some(record),
            stopped: false,
        },
    );
    assert_eq!(node.peers[4].boot, Some(BootId([0xee; 16])));
}

/// Issue 11: a flag version far ahead of what the node knows is refused (a forged disarm at
/// `u64::MAX` would outbid every later command); an operator command that cannot take effect is
/// answered with a refusal and announces nothing.
#[test]
fn a_flag_too_far_ahead_is_refused_and_commands_announce_only_what_applied() {
    let mut c = settled(3, |_| {});
    let node = c.nodes[0].as_mut().unwrap();
    let forged = peerfence_proto::ArmState {
        armed: false,
        version: peerfence_proto::FlagVersion {
            counter: u64::MAX,
            by: MemberId(2),
        },
    };
    node.on_broadcast(Broadcast::Arm(forged));
    assert!(node.durable().armed.armed);
    assert_eq!(node.stats().dropped.get("flag_step_too_large"), Some(&1));
    // Within the step it is applied (flags are not signed yet: see SAFETY.md, trust model).
    let near = peerfence_proto::ArmState {
        armed: false,
        version: peerfence_proto::FlagVersion {
            counter: crate::durable::FLAG_STEP_MAX,
            by: MemberId(2),
        },
    };
    node.on_broadcast(Broadcast::Arm(near));
    assert!(!node.durable().armed.armed);
    // An operator's arm outbids it.
    node.handle(c.now, Input::Operator(OperatorCommand::Arm));
    assert!(node.durable().armed.armed);
    assert_eq!(
        node.durable().armed.version.counter,
        crate::durable::FLAG_STEP_MAX + 1
    );
    // A counter at the top (an old state file) refuses instead of wrapping or panicking.
    node.durable.armed.version.counter = u64::MAX;
    while node.poll_output().is_some() {}
    node.handle(c.now, Input::Operator(OperatorCommand::Disarm));
    let mut refused = false;
    while let Some(o) = node.poll_output() {
        match o {
            Output::Event(Event::FlagRefused { .. }) => refused = true,
            Output::Event(Event::ArmChanged { .. }) => panic!("announced a change not applied"),
            _ => {}
        }
    }
    assert!(refused);
    assert!(node.durable().armed.armed);
}
