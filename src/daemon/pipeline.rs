//! The order in which the daemon carries out the node's outputs while its state file is written
//! in the background.
//!
//! The driver contract (`node/io.rs`): a `Persist` is durable before anything after it is acted
//! on, except a SWIM packet (`Send { membership: true }`), which may overtake persists still
//! being written once the last *completed* persist holds the node's current generation. A slow
//! disk then delays votes, fence commands and events, but not the probes that tell peers this
//! host is alive.
//!
//! [`Pipeline`] is that rule and nothing else: it takes outputs in the node's order and says
//! what to carry out now, what to hold, and which state to write next; it knows neither tokio
//! nor files, so the daemon's node task (`daemon/mod.rs`) does the writing and this module's
//! tests read as the rule's specification. At most one write is in flight. When it completes and
//! more `Persist`s are held, only the newest is written next (each is a full snapshot, and
//! everything held waits for a state that contains all of theirs: group commit), and what was
//! held before the first of them goes at once.

use crate::durable::DurableState;
use crate::node::Output;
use std::collections::VecDeque;

/// Outputs held behind a write in flight, at most. With group commit an output waits for at
/// most two writes (the one in flight and the one holding everything queued meanwhile), so the
/// queue holds what the node emits besides SWIM during two fsyncs: at the largest cluster (128
/// members) a busy node emits well under two thousand such outputs a second, so this covers
/// writes of more than 15 s each. Reaching it means the data directory's disk is stuck (or the
/// node emits without end): the daemon stops rather than drop a held vote or fence command, or
/// keep answering SWIM for a node that can no longer act.
pub const MAX_HELD: usize = 65_536;

/// Numbers outputs in the node's order (the first pushed is 0).
pub type Seq = u64;

/// What to do with one output just pushed.
#[derive(Debug)]
pub enum Step {
    /// Carry it out now.
    Now(Output),
    /// Write this state now (no write was in flight); say [`Pipeline::written`] when it is
    /// durable.
    Write(Box<DurableState>),
    /// Held behind the write in flight; [`Pipeline::written`] hands it back.
    Held,
}

/// What follows the completion of the write in flight.
#[derive(Debug, Default)]
pub struct Written {
    /// Write this state next (the newest held), if any.
    pub write: Option<Box<DurableState>>,
    /// Carry these out now, in this order: every output held before the next `Persist`.
    pub release: Vec<(Seq, Output)>,
}

/// More than [`MAX_HELD`] outputs would be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{held} outputs of the node are waiting for the state file write in flight (at most {limit} may): the data directory's disk is stuck or the node emits without end; stopping rather than drop a held vote or fence command"
)]
pub struct Overflow {
    /// Outputs held.
    pub held: usize,
    /// The bound.
    pub limit: usize,
}

/// The ordering state of one node's outputs.
#[derive(Debug)]
pub struct Pipeline {
    /// Generation of the last completed write (of the state loaded at start before any).
    durable_generation: u32,
    /// Generation of the state being written, if a write is in flight.
    writing: Option<u32>,
    /// Outputs waiting for the write in flight, in the node's order; never empty while no write
    /// is in flight.
    held: VecDeque<(Seq, Output)>,
    /// The number the next output gets.
    next: Seq,
    /// At most this many held.
    limit: usize,
}

impl Pipeline {
    /// Nothing in flight; `durable_generation` is the generation of the state on disk (0 if
    /// none).
    pub fn new(durable_generation: u32) -> Self {
        Self::with_limit(durable_generation, MAX_HELD)
    }

    /// As [`Pipeline::new`] with another bound (tests).
    pub fn with_limit(durable_generation: u32, limit: usize) -> Self {
        Self {
            durable_generation,
            writing: None,
            held: VecDeque::new(),
            next: 0,
            limit,
        }
    }

    /// Takes the node's next output. `generation` is the node's current generation
    /// (`Node::generation()`), which decides whether a SWIM packet may overtake the write.
    pub fn push(&mut self, out: Output, generation: u32) -> Result<(Seq, Step), Overflow> {
        let seq = self.next;
        if self.writing.is_none() {
            debug_assert!(self.held.is_empty(), "outputs are held only behind a write");
            self.next += 1;
            return Ok((
                seq,
                match out {
                    Output::Persist(state) => {
                        self.writing = Some(state.generation);
                        Step::Write(state)
                    }
                    out => Step::Now(out),
                },
            ));
        }
        // A SWIM packet carries this generation: peers must not learn it before it is on disk
        // (a crash would let the next start reuse it). Anything it piggybacks besides is
        // re-gossiped and re-learnt (docs/SAFETY.md A3).
        let swim = matches!(
            out,
            Output::Send {
                membership: true,
                ..
            }
        );
        if swim && self.durable_generation >= generation {
            self.next += 1;
            return Ok((seq, Step::Now(out)));
        }
        if self.held.len() >= self.limit {
            return Err(Overflow {
                held: self.held.len() + 1,
                limit: self.limit,
            });
        }
        self.next += 1;
        self.held.push_back((seq, out));
        Ok((seq, Step::Held))
    }

    /// The write in flight is durable: what to write next and what may go now. Without a write
    /// in flight, nothing.
    pub fn written(&mut self) -> Written {
        let Some(generation) = self.writing.take() else {
            return Written::default();
        };
        self.durable_generation = generation;
        let mut release = Vec::new();
        while let Some((seq, out)) = self.held.pop_front() {
            if matches!(out, Output::Persist(_)) {
                self.held.push_front((seq, out));
                break;
            }
            release.push((seq, out));
        }
        if self.held.is_empty() {
            return Written {
                write: None,
                release,
            };
        }
        // Group commit: the newest held state contains every change of the older ones, and
        // everything still held comes after the first of them, so all of it may go once the
        // newest is durable. The older states are never written.
        let mut newest = None;
        let mut rest = VecDeque::with_capacity(self.held.len());
        for (seq, out) in self.held.drain(..) {
            match out {
                Output::Persist(state) => newest = Some(state),
                out => rest.push_back((seq, out)),
            }
        }
        self.held = rest;
        if let Some(state) = &newest {
            self.writing = Some(state.generation);
        }
        Written {
            write: newest,
            release,
        }
    }

    /// A write is in flight.
    pub fn writing(&self) -> bool {
        self.writing.is_some()
    }

    /// Nothing is in flight or held.
    pub fn idle(&self) -> bool {
        self.writing.is_none() && self.held.is_empty()
    }

    /// Outputs held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The number the next pushed output gets.
    pub fn next_seq(&self) -> Seq {
        self.next
    }

    /// Every output numbered below this has been handed out (to carry out, or to write).
    pub fn handed_out_before(&self) -> Seq {
        self.held.front().map_or(self.next, |(seq, _)| *seq)
    }

    /// Generation of the last completed write.
    pub fn durable_generation(&self) -> u32 {
        self.durable_generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Event;
    use peerfence_proto::MemberId;

    /// A state of `generation`, told apart by `tag`.
    fn persist(generation: u32, tag: u32) -> Output {
        let mut s = DurableState::new();
        s.generation = generation;
        s.round_counter = tag;
        Output::Persist(Box::new(s))
    }

    /// A SWIM packet to member `to`.
    fn swim(to: u16) -> Output {
        Output::Send {
            to: MemberId(to),
            bytes: bytes::Bytes::from_static(b"swim"),
            reliable: false,
            membership: true,
        }
    }

    /// A vote (any agreement message) to member `to`.
    fn vote(to: u16) -> Output {
        Output::Send {
            to: MemberId(to),
            bytes: bytes::Bytes::from_static(b"vote"),
            reliable: true,
            membership: false,
        }
    }

    fn event() -> Output {
        Output::Event(Event::StormLeft)
    }

    /// A short name of an output, to compare sequences.
    fn name(o: &Output) -> String {
        match o {
            Output::Persist(s) => format!("persist {}", s.round_counter),
            Output::Send {
                to,
                membership: true,
                ..
            } => format!("swim {}", to.0),
            Output::Send { to, .. } => format!("vote {}", to.0),
            Output::Event(_) => "event".into(),
            _ => "other".into(),
        }
    }

    fn step(s: &Step) -> String {
        match s {
            Step::Now(o) => format!("now {}", name(o)),
            Step::Write(s) => format!("write {}", s.round_counter),
            Step::Held => "held".into(),
        }
    }

    /// Pushes every output at `generation`; the steps, by name.
    fn push_all(p: &mut Pipeline, outs: Vec<Output>, generation: u32) -> Vec<String> {
        outs.into_iter()
            .map(|o| step(&p.push(o, generation).unwrap().1))
            .collect()
    }

    fn released(w: &Written) -> Vec<String> {
        w.release.iter().map(|(_, o)| name(o)).collect()
    }

    #[test]
    fn with_no_write_in_flight_everything_goes_at_once_and_a_persist_starts_a_write() {
        let mut p = Pipeline::new(3);
        assert_eq!(
            push_all(&mut p, vec![vote(1), event(), persist(3, 1)], 3),
            ["now vote 1", "now event", "write 1"]
        );
        assert!(p.writing());
        let w = p.written();
        assert!(w.write.is_none() && w.release.is_empty());
        assert!(p.idle());
        assert_eq!(p.durable_generation(), 3);
    }

    #[test]
    fn swim_overtakes_a_write_when_the_generation_is_durable_and_the_vote_waits() {
        let mut p = Pipeline::new(3);
        assert_eq!(
            push_all(&mut p, vec![persist(3, 1), vote(1), swim(2)], 3),
            ["write 1", "held", "now swim 2"]
        );
        let w = p.written();
        assert_eq!(
            released(&w),
            ["vote 1"],
            "the vote goes once its promise is durable"
        );
        assert!(w.write.is_none());
        assert!(p.idle());
    }

    #[test]
    fn swim_waits_behind_the_write_of_a_new_generation() {
        // At start the node persists its new generation: a SWIM packet announcing it must not
        // leave before it is on disk, or a crash would let the next start reuse it.
        let mut p = Pipeline::new(3);
        assert_eq!(
            push_all(&mut p, vec![persist(4, 1), swim(1), swim(2)], 4),
            ["write 1", "held", "held"]
        );
        let w = p.written();
        assert_eq!(released(&w), ["swim 1", "swim 2"]);
        assert_eq!(p.durable_generation(), 4);
        // Now durable: SWIM overtakes later writes.
        assert_eq!(
            push_all(&mut p, vec![persist(4, 2), event(), swim(1)], 4),
            ["write 2", "held", "now swim 1"]
        );
    }

    #[test]
    fn only_membership_sends_overtake() {
        let mut p = Pipeline::new(1);
        let steps = push_all(
            &mut p,
            vec![
                persist(1, 1),
                vote(1),
                Output::Watchdog(crate::node::WatchdogAction::Feed),
                Output::ClearPill {
                    id: 7,
                    target: MemberId(2),
                    proposal: peerfence_proto::Proposal {
                        target: MemberId(2),
                        target_boot: peerfence_proto::BootId([2; 16]),
                        proposer: MemberId(0),
                        round: peerfence_proto::Round::new(1, 1),
                        kind: peerfence_proto::FenceKind::Fence,
                        budget_slot: Some(0),
                        lane: 0,
                    },
                },
                Output::StopHeartbeat { generation: 1 },
                event(),
            ],
            1,
        );
        assert_eq!(steps, ["write 1", "held", "held", "held", "held", "held"]);
        let w = p.written();
        assert_eq!(w.release.len(), 5);
        let seqs: Vec<Seq> = w.release.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5], "released in the node's order");
    }

    #[test]
    fn outputs_between_two_persists_go_when_the_first_is_durable() {
        let mut p = Pipeline::new(1);
        assert_eq!(
            push_all(
                &mut p,
                vec![persist(1, 1), vote(1), persist(1, 2), vote(2)],
                1
            ),
            ["write 1", "held", "held", "held"]
        );
        let w = p.written();
        assert_eq!(released(&w), ["vote 1"]);
        assert_eq!(w.write.as_ref().map(|s| s.round_counter), Some(2));
        assert!(p.writing());
        let w = p.written();
        assert_eq!(released(&w), ["vote 2"]);
        assert!(w.write.is_none() && p.idle());
    }

    #[test]
    fn group_commit_writes_only_the_newest_of_three_queued_states_and_releases_in_order() {
        let mut p = Pipeline::new(1);
        assert_eq!(
            push_all(
                &mut p,
                vec![
                    persist(1, 1),
                    event(),
                    persist(1, 2),
                    vote(2),
                    persist(1, 3),
                    vote(3),
                    persist(1, 4),
                    vote(4),
                    swim(9),
                ],
                1
            ),
            [
                "write 1",
                "held",
                "held",
                "held",
                "held",
                "held",
                "held",
                "held",
                "now swim 9"
            ]
        );
        let w = p.written();
        assert_eq!(released(&w), ["event"], "held before the next persist");
        assert_eq!(
            w.write.as_ref().map(|s| s.round_counter),
            Some(4),
            "states 2 and 3 are never written: 4 holds all of them"
        );
        assert_eq!(p.held(), 3);
        // Arriving during the group write: behind it.
        assert_eq!(push_all(&mut p, vec![event()], 1), ["held"]);
        let w = p.written();
        assert_eq!(released(&w), ["vote 2", "vote 3", "vote 4", "event"]);
        let seqs: Vec<Seq> = w.release.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [3, 5, 7, 9]);
        assert!(w.write.is_none() && p.idle());
    }

    #[test]
    fn a_persist_arriving_during_a_group_write_waits_for_it() {
        let mut p = Pipeline::new(1);
        push_all(&mut p, vec![persist(1, 1), persist(1, 2), vote(2)], 1);
        let w = p.written();
        assert_eq!(w.write.as_ref().map(|s| s.round_counter), Some(2));
        assert_eq!(
            push_all(&mut p, vec![persist(1, 3), vote(3)], 1),
            ["held", "held"]
        );
        let w = p.written();
        assert_eq!(released(&w), ["vote 2"]);
        assert_eq!(w.write.as_ref().map(|s| s.round_counter), Some(3));
        let w = p.written();
        assert_eq!(released(&w), ["vote 3"]);
        assert!(p.idle());
    }

    #[test]
    fn the_durable_generation_is_that_of_the_completed_write() {
        let mut p = Pipeline::new(3);
        push_all(&mut p, vec![persist(4, 1)], 4);
        assert_eq!(p.durable_generation(), 3, "in flight is not durable");
        assert_eq!(push_all(&mut p, vec![swim(1)], 4), ["held"]);
        p.written();
        assert_eq!(p.durable_generation(), 4);
    }

    #[test]
    fn handed_out_before_tracks_the_oldest_held_output() {
        let mut p = Pipeline::new(1);
        push_all(&mut p, vec![event(), persist(1, 1)], 1);
        assert_eq!(p.handed_out_before(), 2);
        push_all(&mut p, vec![event(), swim(1), event()], 1);
        assert_eq!(p.handed_out_before(), 2, "output 2 is held");
        assert_eq!(p.next_seq(), 5);
        p.written();
        assert_eq!(p.handed_out_before(), 5);
    }

    #[test]
    fn the_queue_is_bounded_and_overflow_is_an_error_not_a_drop() {
        let mut p = Pipeline::with_limit(1, 3);
        push_all(&mut p, vec![persist(1, 1), vote(1), vote(2), vote(3)], 1);
        let err = p.push(vote(4), 1).unwrap_err();
        assert_eq!(err, Overflow { held: 4, limit: 3 });
        assert!(err.to_string().contains("stuck"), "{err}");
        // SWIM still overtakes (it is never held once the generation is durable).
        assert!(matches!(p.push(swim(1), 1), Ok((_, Step::Now(_)))));
        // Nothing held was lost.
        assert_eq!(released(&p.written()), ["vote 1", "vote 2", "vote 3"]);
    }

    #[test]
    fn written_without_a_write_in_flight_does_nothing() {
        let mut p = Pipeline::new(1);
        let w = p.written();
        assert!(w.write.is_none() && w.release.is_empty() && p.idle());
    }
}
