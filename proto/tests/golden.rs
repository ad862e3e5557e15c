//! Golden byte vectors: these exact bytes are what peers exchange. If one of these tests fails, the
//! wire format changed. That breaks mixed-version clusters, so either undo the change or bump
//! `PROTOCOL_VERSION`, document it in PROTOCOL.md, and update the vectors deliberately.

use peerfence_proto::*;

fn cluster() -> ClusterId {
    ClusterId::new("prod-kvm").unwrap()
}

fn proposal() -> Proposal {
    Proposal {
        target: MemberId(3),
        target_boot: BootId([0xb0; 16]),
        proposer: MemberId(1),
        round: Round::new(2, 5),
        kind: FenceKind::Fence,
        budget_slot: Some(0),
        lane: 1,
    }
}

fn signed_vote(voter: u16) -> SignedVote {
    SignedVote {
        voter: MemberId(voter),
        evidence: VoteEvidence {
            voter_healthy: true,
            target_down_ms: 5_200,
            heartbeat_stalled_ms: 6_100,
        },
        signature: Signature::from_bytes([voter as u8; 64]),
    }
}

fn envelope(message: Message) -> Envelope {
    Envelope {
        cluster: cluster(),
        digest: ConfigDigest(0x0123_4567_89ab_cdef),
        sender: MemberId(1),
        message,
    }
}

fn check(name: &str, bytes: &[u8], golden: &str) {
    let got = hex::encode(bytes);
    assert_eq!(
        got, golden,
        "wire encoding of {name} changed; see the header of tests/golden.rs"
    );
}

fn roundtrip(env: &Envelope) -> Vec<u8> {
    let bytes = encode(env).unwrap();
    assert_eq!(&decode(&bytes).unwrap(), env);
    bytes
}

#[test]
fn golden_propose() {
    let bytes = roundtrip(&envelope(Message::Propose(proposal())));
    check("Propose", &bytes, GOLDEN_PROPOSE);
}

#[test]
fn golden_vote() {
    let bytes = roundtrip(&envelope(Message::Vote(Vote {
        proposal: proposal(),
        vote: signed_vote(2),
    })));
    check("Vote", &bytes, GOLDEN_VOTE);
}

#[test]
fn golden_certificate() {
    let qc = QuorumCertificate {
        proposal: proposal(),
        votes: vec![signed_vote(0), signed_vote(1), signed_vote(2)],
    };
    let bytes = roundtrip(&envelope(Message::Certificate(qc)));
    check("Certificate", &bytes, GOLDEN_CERTIFICATE);
}

#[test]
fn golden_refuse_release_outcome() {
    let refuse = roundtrip(&envelope(Message::Refuse(Refusal {
        proposal: proposal(),
        voter: MemberId(4),
        reason: RefuseReason::PromisedElsewhere {
            proposer: MemberId(2),
            round: Round::new(1, 1),
        },
    })));
    check("Refuse", &refuse, GOLDEN_REFUSE);
    let release = roundtrip(&envelope(Message::Release(Release {
        proposal: proposal(),
    })));
    check("Release", &release, GOLDEN_RELEASE);
    let outcome = roundtrip(&envelope(Message::Outcome(FenceOutcome {
        proposal: proposal(),
        attempt: 1,
        result: OutcomeResult::Confirmed(Evidence::PowerOff { level: 0 }),
    })));
    check("Outcome", &outcome, GOLDEN_OUTCOME);
}

#[test]
fn golden_contact() {
    let contact = roundtrip(&envelope(Message::Contact(Contact {
        origin: MemberId(1),
        target: MemberId(3),
        boot: BootId([0x33; 16]),
        nonce: 77,
    })));
    check("Contact", &contact, GOLDEN_CONTACT);
    let ack = roundtrip(&envelope(Message::ContactAck(ContactAck {
        origin: MemberId(1),
        voucher: MemberId(3),
        nonce: 77,
        vouch: false,
    })));
    check("ContactAck", &ack, GOLDEN_CONTACT_ACK);
}

#[test]
fn golden_swim_carrier() {
    let bytes = roundtrip(&envelope(Message::Swim(vec![1, 2, 3, 250, 251, 255])));
    check("Swim", &bytes, GOLDEN_SWIM);
}

#[test]
fn golden_broadcasts() {
    let health = Broadcast::Health(HealthUpdate {
        member: MemberId(2),
        generation: 4,
        seq: 300,
        boot: BootId([0x2a; 16]),
        verdict: Verdict::Healthy,
        storage: vec![StorageHealth::Ok, StorageHealth::Slow],
        agent: AgentHealth::Alive,
        isolation: IsolationHealth::NotConfigured,
    });
    let bytes = encode_broadcast(&health).unwrap();
    assert_eq!(decode_broadcast(&bytes).unwrap(), health);
    check("Broadcast::Health", &bytes, GOLDEN_HEALTH);

    let arm = Broadcast::Arm(ArmState {
        armed: false,
        version: FlagVersion {
            counter: 7,
            by: MemberId(0),
        },
    });
    let bytes = encode_broadcast(&arm).unwrap();
    assert_eq!(decode_broadcast(&bytes).unwrap(), arm);
    check("Broadcast::Arm", &bytes, GOLDEN_ARM);

    let maintenance = Broadcast::Maintenance(MaintenanceState {
        member: MemberId(3),
        on: true,
        version: FlagVersion {
            counter: 8,
            by: MemberId(1),
        },
    });
    let bytes = encode_broadcast(&maintenance).unwrap();
    assert_eq!(decode_broadcast(&bytes).unwrap(), maintenance);
    check("Broadcast::Maintenance", &bytes, GOLDEN_MAINTENANCE);

    let leave = Broadcast::Leave(LeaveNotice {
        member: MemberId(4),
        generation: 9,
    });
    let bytes = encode_broadcast(&leave).unwrap();
    assert_eq!(decode_broadcast(&bytes).unwrap(), leave);
    check("Broadcast::Leave", &bytes, GOLDEN_LEAVE);
}

#[test]
fn golden_storage_records() {
    let hb = StorageRecord {
        cluster: cluster(),
        digest: ConfigDigest(42),
        body: StorageBody::Heartbeat(HeartbeatRecord {
            member: MemberId(2),
            boot: BootId([0x11; 16]),
            generation: 3,
            counter: 1_000_000,
        }),
    };
    let bytes = encode_storage(&hb).unwrap();
    assert_eq!(decode_storage(&bytes).unwrap(), hb);
    check("StorageRecord::Heartbeat", &bytes, GOLDEN_HEARTBEAT);
}

/// Variants appended in the "safety at the seams" round: the clean-stop record, fence news, the
/// operator fence and the new refusal reasons. Appending keeps every older byte as it was.
#[test]
fn golden_appended_variants() {
    let stopped = StorageRecord {
        cluster: cluster(),
        digest: ConfigDigest(42),
        body: StorageBody::Stopped(HeartbeatRecord {
            member: MemberId(2),
            boot: BootId([0x11; 16]),
            generation: 3,
            counter: 7,
        }),
    };
    let bytes = encode_storage(&stopped).unwrap();
    assert_eq!(decode_storage(&bytes).unwrap(), stopped);
    check("StorageRecord::Stopped", &bytes, GOLDEN_STOPPED);

    let news = FenceNews {
        batch: 9,
        part: 0,
        parts: 1,
        items: vec![NewsItem {
            qc: QuorumCertificate {
                proposal: Proposal {
                    kind: FenceKind::Operator,
                    ..proposal()
                },
                votes: vec![signed_vote(0)],
            },
            outcome: None,
        }],
        slots: vec![(0, MemberId(3), BootId([0xb0; 16]))],
    };
    let bytes = roundtrip(&envelope(Message::FenceNews(news)));
    check("FenceNews", &bytes, GOLDEN_FENCE_NEWS);

    for (reason, golden) in [
        (RefuseReason::TargetLeft, GOLDEN_REFUSE_LEFT),
        (RefuseReason::FenceInFlight, GOLDEN_REFUSE_IN_FLIGHT),
        (RefuseReason::Recovering, GOLDEN_REFUSE_RECOVERING),
    ] {
        let bytes = roundtrip(&envelope(Message::Refuse(Refusal {
            proposal: proposal(),
            voter: MemberId(2),
            reason,
        })));
        check("Refuse", &bytes, golden);
    }

    let ack = roundtrip(&envelope(Message::LeaveAck(LeaveNotice {
        member: MemberId(3),
        generation: 5,
    })));
    check("LeaveAck", &ack, GOLDEN_LEAVE_ACK);
}

#[test]
fn golden_signed_outcomes() {
    let signed = SignedOutcome {
        outcome: FenceOutcome {
            proposal: proposal(),
            attempt: 1,
            result: OutcomeResult::Confirmed(Evidence::PowerOff { level: 0 }),
        },
        signature: Signature::from_bytes([0x51; 64]),
    };
    let qc = QuorumCertificate {
        proposal: proposal(),
        votes: vec![signed_vote(2)],
    };
    let certified = roundtrip(&envelope(Message::CertifiedOutcome(CertifiedOutcome {
        qc: qc.clone(),
        signed,
    })));
    check("CertifiedOutcome", &certified, GOLDEN_CERTIFIED_OUTCOME);
    let news = roundtrip(&envelope(Message::SignedFenceNews(SignedFenceNews {
        batch: 7,
        part: 0,
        parts: 1,
        items: vec![SignedNewsItem {
            qc,
            outcome: Some(signed),
        }],
        slots: vec![(0, MemberId(3), BootId([0xb0; 16]))],
    })));
    check("SignedFenceNews", &news, GOLDEN_SIGNED_FENCE_NEWS);
    let gossip = Broadcast::SignedOutcome(signed);
    let bytes = encode_broadcast(&gossip).unwrap();
    assert_eq!(decode_broadcast(&bytes).unwrap(), gossip);
    check(
        "Broadcast::SignedOutcome",
        &bytes,
        GOLDEN_BROADCAST_SIGNED_OUTCOME,
    );
    let health = Broadcast::SignedHealth(SignedHealth {
        health: HealthUpdate {
            member: MemberId(2),
            generation: 4,
            seq: 300,
            boot: BootId([0x2a; 16]),
            verdict: Verdict::Healthy,
            storage: vec![StorageHealth::Ok],
            agent: AgentHealth::Alive,
            isolation: IsolationHealth::NotConfigured,
        },
        signature: Signature::from_bytes([0x48; 64]),
    });
    let bytes = encode_broadcast(&health).unwrap();
    assert_eq!(decode_broadcast(&bytes).unwrap(), health);
    check(
        "Broadcast::SignedHealth",
        &bytes,
        GOLDEN_BROADCAST_SIGNED_HEALTH,
    );
}

#[test]
fn an_outcome_with_another_proposal_than_its_certificate_is_invalid() {
    let mut other = proposal();
    other.target = MemberId(2);
    let env = envelope(Message::CertifiedOutcome(CertifiedOutcome {
        qc: QuorumCertificate {
            proposal: proposal(),
            votes: vec![signed_vote(2)],
        },
        signed: SignedOutcome {
            outcome: FenceOutcome {
                proposal: other,
                attempt: 1,
                result: OutcomeResult::Confirmed(Evidence::PowerOff { level: 0 }),
            },
            signature: Signature::from_bytes([0x51; 64]),
        },
    }));
    let bytes = encode(&env).unwrap();
    assert!(matches!(decode(&bytes), Err(DecodeError::Invalid(_))));
}

#[test]
fn golden_swim_header() {
    use bytes::BufMut;
    use foca::{Codec, Header, Member, Message as SwimMessage, State};
    let mut codec = swim::SwimCodec;
    let header = Header {
        src: Ident {
            member: MemberId(1),
            generation: 3,
        },
        src_incarnation: 2,
        dst: Ident {
            member: MemberId(4),
            generation: 0,
        },
        message: SwimMessage::Ping(9),
    };
    let mut buf = Vec::new();
    codec.encode_header(&header, &mut buf).unwrap();
    let member = Member::new(
        Ident {
            member: MemberId(2),
            generation: 1,
        },
        5,
        State::Suspect,
    );
    codec.encode_member(&member, &mut buf).unwrap();
    check("SWIM header + member", &buf, GOLDEN_SWIM_HEADER);
    let mut slice = &buf[..];
    assert_eq!(codec.decode_header(&mut slice).unwrap(), header);
    assert_eq!(codec.decode_member(&mut slice).unwrap(), member);
    assert!(slice.is_empty());

    // A failed encode leaves the buffer untouched, as foca requires.
    let mut small = [0u8; 3];
    let mut window = &mut small[..];
    assert!(codec.encode_header(&header, &mut window).is_err());
    assert_eq!(window.remaining_mut(), 3);
}

const GOLDEN_PROPOSE: &str = "010870726f642d6b766dfdefcdab8967452301010103b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd050000000200000000010001";
const GOLDEN_VOTE: &str = "010870726f642d6b766dfdefcdab8967452301010203b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd0500000002000000000100010201fb5014fbd41702020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202";
const GOLDEN_CERTIFICATE: &str = "010870726f642d6b766dfdefcdab8967452301010503b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd050000000200000000010001030001fb5014fbd417000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000101fb5014fbd417010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010101010201fb5014fbd41702020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202";
const GOLDEN_REFUSE: &str = "010870726f642d6b766dfdefcdab8967452301010303b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd050000000200000000010001040c02fd0100000001000000";
const GOLDEN_RELEASE: &str = "010870726f642d6b766dfdefcdab8967452301010403b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd050000000200000000010001";
const GOLDEN_OUTCOME: &str = "010870726f642d6b766dfdefcdab8967452301010603b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd05000000020000000001000101000000";
const GOLDEN_SWIM: &str = "010870726f642d6b766dfdefcdab8967452301010006010203fafbff";
const GOLDEN_HEALTH: &str = "000204fb2c012a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a000200010002";
const GOLDEN_ARM: &str = "01000700";
const GOLDEN_MAINTENANCE: &str = "0203010801";
const GOLDEN_HEARTBEAT: &str =
    "010870726f642d6b766d2a00021111111111111111111111111111111103fc40420f00";
const GOLDEN_SWIM_HEADER: &str = "0103020400000902010501";
const GOLDEN_CONTACT: &str =
    "010870726f642d6b766dfdefcdab896745230101070103333333333333333333333333333333334d";
const GOLDEN_CONTACT_ACK: &str = "010870726f642d6b766dfdefcdab8967452301010801034d00";
const GOLDEN_LEAVE: &str = "040409";
const GOLDEN_STOPPED: &str = "010870726f642d6b766d2a0202111111111111111111111111111111110307";
const GOLDEN_FENCE_NEWS: &str = "010870726f642d6b766dfdefcdab8967452301010a0900010103b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd050000000200000002010001010001fb5014fbd4170000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000010003b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
const GOLDEN_REFUSE_LEFT: &str = "010870726f642d6b766dfdefcdab8967452301010303b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd0500000002000000000100010211";
const GOLDEN_REFUSE_IN_FLIGHT: &str = "010870726f642d6b766dfdefcdab8967452301010303b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd0500000002000000000100010212";
const GOLDEN_LEAVE_ACK: &str = "010870726f642d6b766dfdefcdab8967452301010b0305";
const GOLDEN_REFUSE_RECOVERING: &str = "010870726f642d6b766dfdefcdab8967452301010303b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd0500000002000000000100010213";
const GOLDEN_CERTIFIED_OUTCOME: &str = "010870726f642d6b766dfdefcdab8967452301010c03b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd050000000200000000010001010201fb5014fbd4170202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020203b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd0500000002000000000100010100000051515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151";
const GOLDEN_SIGNED_FENCE_NEWS: &str = "010870726f642d6b766dfdefcdab8967452301010d0700010103b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd050000000200000000010001010201fb5014fbd417020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020103b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd0500000002000000000100010100000051515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151010003b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
const GOLDEN_BROADCAST_SIGNED_OUTCOME: &str = "0503b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b001fd0500000002000000000100010100000051515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151515151";
const GOLDEN_BROADCAST_SIGNED_HEALTH: &str = "060204fb2c012a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a000100000248484848484848484848484848484848484848484848484848484848484848484848484848484848484848484848484848484848484848484848484848484848";
