//! Garbage from the network never panics, never allocates past the limit, and is rejected with a
//! reason that names what was wrong.

use peerfence_proto::*;
use proptest::prelude::*;

fn valid_envelope_bytes() -> Vec<u8> {
    encode(&Envelope {
        cluster: ClusterId::new("c1").unwrap(),
        digest: ConfigDigest(7),
        sender: MemberId(0),
        message: Message::Swim(vec![9; 40]),
    })
    .unwrap()
}

#[test]
fn oversized_input_is_rejected_before_decoding() {
    let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
    assert!(matches!(decode(&big), Err(DecodeError::TooLarge { .. })));
    assert!(matches!(
        decode_broadcast(&vec![0u8; MAX_SWIM_PACKET_BYTES + 1]),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn huge_length_prefix_does_not_allocate() {
    // version 1, then a cluster name claiming u64::MAX/2 bytes: bincode's limit refuses it
    // before allocating anything.
    let mut bytes = vec![1u8, 0xfd];
    bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
    let err = decode(&bytes).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
}

#[test]
fn other_versions_are_named() {
    let mut bytes = valid_envelope_bytes();
    bytes[0] = 2;
    assert_eq!(
        decode(&bytes).unwrap_err(),
        DecodeError::UnsupportedVersion {
            found: 2,
            supported: PROTOCOL_VERSION
        }
    );
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut bytes = valid_envelope_bytes();
    bytes.push(0);
    assert_eq!(decode(&bytes).unwrap_err(), DecodeError::TrailingBytes(1));
}

#[test]
fn invalid_cluster_names_do_not_decode() {
    let mut bytes = valid_envelope_bytes();
    // The name "c1" starts at byte 2 (after version and length); make it uppercase.
    assert_eq!(bytes[2], b'c');
    bytes[2] = b'C';
    assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));
}

#[test]
fn oversized_swim_packets_are_invalid() {
    let bytes = encode(&Envelope {
        cluster: ClusterId::new("c1").unwrap(),
        digest: ConfigDigest(7),
        sender: MemberId(0),
        message: Message::Swim(vec![0; MAX_SWIM_PACKET_BYTES + 1]),
    })
    .unwrap();
    assert!(matches!(decode(&bytes), Err(DecodeError::Invalid(_))));
}

#[test]
fn self_fence_for_someone_else_is_invalid() {
    let p = Proposal {
        target: MemberId(1),
        target_boot: BootId([1; 16]),
        proposer: MemberId(2),
        round: Round::new(1, 1),
        kind: FenceKind::SelfFence(SelfFenceAction::Reboot),
        budget_slot: Some(0),
        lane: 0,
    };
    let bytes = encode(&Envelope {
        cluster: ClusterId::new("c1").unwrap(),
        digest: ConfigDigest(7),
        sender: MemberId(2),
        message: Message::Propose(p),
    })
    .unwrap();
    assert!(matches!(decode(&bytes), Err(DecodeError::Invalid(_))));
}

#[test]
fn certificates_with_too_many_votes_are_invalid() {
    let vote = SignedVote {
        voter: MemberId(0),
        evidence: VoteEvidence {
            voter_healthy: true,
            target_down_ms: 0,
            heartbeat_stalled_ms: 0,
        },
        signature: Signature::from_bytes([0; 64]),
    };
    let qc = QuorumCertificate {
        proposal: Proposal {
            target: MemberId(1),
            target_boot: BootId([1; 16]),
            proposer: MemberId(2),
            round: Round::new(1, 1),
            kind: FenceKind::Fence,
            budget_slot: Some(0),
            lane: 0,
        },
        votes: vec![vote; MAX_MEMBERS + 1],
    };
    let bytes = encode(&Envelope {
        cluster: ClusterId::new("c1").unwrap(),
        digest: ConfigDigest(7),
        sender: MemberId(2),
        message: Message::Certificate(qc),
    })
    .unwrap();
    assert!(matches!(decode(&bytes), Err(DecodeError::Invalid(_))));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes);
        let _ = decode_broadcast(&bytes);
        let _ = decode_storage(&bytes);
        let mut codec = swim::SwimCodec;
        let mut slice = &bytes[..];
        let _ = foca::Codec::decode_header(&mut codec, &mut slice);
        let _ = foca::Codec::decode_member(&mut codec, &mut slice);
    }

    #[test]
    fn mutated_valid_messages_never_panic(pos in 0usize..64, byte in any::<u8>(), cut in 0usize..64) {
        let mut bytes = valid_envelope_bytes();
        let len = bytes.len();
        bytes[pos % len] = byte;
        bytes.truncate(len - (cut % len));
        let _ = decode(&bytes);
    }

    #[test]
    fn envelopes_roundtrip(sender in any::<u16>(), digest in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..MAX_SWIM_PACKET_BYTES)) {
        let env = Envelope {
            cluster: ClusterId::new("roundtrip").unwrap(),
            digest: ConfigDigest(digest),
            sender: MemberId(sender),
            message: Message::Swim(payload),
        };
        let bytes = encode(&env).unwrap();
        prop_assert_eq!(decode(&bytes).unwrap(), env);
    }
}
