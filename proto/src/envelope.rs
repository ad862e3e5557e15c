//! The versioned envelope around every message, and the bounded decoders.
//!
//! Wire layout: `version: u16` (bincode varint), then `(cluster, digest, sender, message)` in
//! bincode 2 standard encoding (varint integers, little endian). The version is decoded first so
//! that a future layout can change everything after it.
//!
//! Decoding garbage never panics and never allocates more than the size limit: the input length is
//! checked first, bincode's own limit caps every length prefix, trailing bytes are rejected, and
//! [`Validate`] checks the counts that bincode cannot know about.

use crate::ids::{ClusterId, ConfigDigest, MAX_MEMBERS, MemberId};
use crate::messages::{Broadcast, MAX_STORAGE_PATHS, Message, Proposal, QuorumCertificate};
use crate::storage::StorageRecord;
use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest encoded envelope accepted, in bytes (a certificate of 128 votes is about 13 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Largest SWIM packet carried in a [`Message::Swim`]. Transports cap it lower (QUIC datagrams are
/// about 1200 bytes); this is the hard ceiling a decoder accepts.
pub const MAX_SWIM_PACKET_BYTES: usize = 1400;

/// The bincode configuration of every peerfence encoding, with the size limit built in.
pub type WireConfig = Configuration<LittleEndian, Varint, Limit<MAX_MESSAGE_BYTES>>;

/// See [`WireConfig`].
pub fn wire_config() -> WireConfig {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// A message with its routing and authentication context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's cluster; a message for another cluster is dropped.
    pub cluster: ClusterId,
    /// The sender's safety-configuration digest; a mismatch is dropped.
    pub digest: ConfigDigest,
    /// Sender as it claims; the receiver checks it against the transport's authenticated
    /// identity (the TLS certificate) and drops the message on mismatch.
    pub sender: MemberId,
    /// The body.
    pub message: Message,
}

/// Why bytes did not decode. Every variant is caused by the input, never by the decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than the limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Another protocol version.
    #[error("protocol version {found} is not supported (this build speaks version {supported})")]
    UnsupportedVersion {
        /// Version in the input.
        found: u16,
        /// Version this build speaks.
        supported: u16,
    },
    /// Not a valid encoding.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Valid encoding followed by extra bytes.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// Well-formed but violates a protocol rule (a count over its limit, say).
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

impl DecodeError {
    /// Short name, for drop counters.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
            DecodeError::Invalid(_) => "invalid",
        }
    }
}

/// Why a value did not encode (too large for the limit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode message: {0}")]
pub struct EncodeError(pub String);

/// Protocol rules that the type system does not carry. Run on every decoded value.
pub trait Validate {
    /// `Err` names the broken rule.
    fn validate(&self) -> Result<(), &'static str>;
}

impl Validate for Proposal {
    fn validate(&self) -> Result<(), &'static str> {
        if matches!(self.kind, crate::messages::FenceKind::SelfFence(_))
            && self.target != self.proposer
        {
            return Err("a self-fence proposal must target its proposer");
        }
        if self.budget_slot.is_none() && self.kind.stops_vms() {
            return Err("a proposal that stops VMs must name a budget slot");
        }
        Ok(())
    }
}

impl Validate for QuorumCertificate {
    fn validate(&self) -> Result<(), &'static str> {
        self.proposal.validate()?;
        if self.votes.len() > MAX_MEMBERS {
            return Err("a certificate holds more votes than the largest cluster has members");
        }
        Ok(())
    }
}

impl Validate for Message {
    fn validate(&self) -> Result<(), &'static str> {
        match self {
            Message::Swim(packet) if packet.len() > MAX_SWIM_PACKET_BYTES => {
                Err("SWIM packet larger than the SWIM packet limit")
            }
            Message::Swim(_) => Ok(()),
            Message::Propose(p) => p.validate(),
            Message::Vote(v) => v.proposal.validate(),
            Message::Refuse(r) => r.proposal.validate(),
            Message::Release(r) => r.proposal.validate(),
            Message::Certificate(qc) => qc.validate(),
            Message::Outcome(o) => o.proposal.validate(),
            Message::Contact(_)
            | Message::ContactAck(_)
            | Message::Leave(_)
            | Message::LeaveAck(_) => Ok(()),
            Message::FenceNews(n) => {
                if n.items.len() > crate::messages::NEWS_ITEMS_MAX
                    || n.slots.len() > crate::messages::NEWS_SLOTS_MAX
                {
                    return Err("fence news carries more items than allowed");
                }
                if n.parts == 0 || n.parts > crate::messages::NEWS_PARTS_MAX || n.part >= n.parts {
                    return Err("fence news part out of range");
                }
                n.items.iter().try_for_each(|i| i.qc.validate())
            }
            Message::CertifiedOutcome(c) => {
                if c.qc.proposal != c.signed.outcome.proposal {
                    return Err("a certified outcome names another proposal than its certificate");
                }
                c.qc.validate()
            }
            Message::SignedFenceNews(n) => {
                if n.items.len() > crate::messages::NEWS_ITEMS_MAX
                    || n.slots.len() > crate::messages::NEWS_SLOTS_MAX
                {
                    return Err("fence news carries more items than allowed");
                }
                if n.parts == 0 || n.parts > crate::messages::NEWS_PARTS_MAX || n.part >= n.parts {
                    return Err("fence news part out of range");
                }
                n.items.iter().try_for_each(|i| {
                    if i.outcome
                        .is_some_and(|o| o.outcome.proposal != i.qc.proposal)
                    {
                        return Err("a news outcome names another proposal than its certificate");
                    }
                    i.qc.validate()
                })
            }
        }
    }
}

impl Validate for Broadcast {
    fn validate(&self) -> Result<(), &'static str> {
        match self {
            Broadcast::Health(h) if h.storage.len() > MAX_STORAGE_PATHS => {
                Err("health update describes more storage paths than allowed")
            }
            Broadcast::Outcome(o) => o.proposal.validate(),
            Broadcast::SignedOutcome(o) => o.outcome.proposal.validate(),
            Broadcast::SignedHealth(h) if h.health.storage.len() > MAX_STORAGE_PATHS => {
                Err("health update describes more storage paths than allowed")
            }
            _ => Ok(()),
        }
    }
}

/// Encodes an envelope.
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, EncodeError> {
    let body = (
        PROTOCOL_VERSION,
        &envelope.cluster,
        envelope.digest,
        envelope.sender,
        &envelope.message,
    );
    let bytes = bincode::serde::encode_to_vec(body, wire_config())
        .map_err(|e| EncodeError(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(EncodeError(format!(
            "{} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Decodes and validates an envelope.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let rest = version_prefix(bytes, MAX_MESSAGE_BYTES)?;
    let (cluster, digest, sender, message): (ClusterId, ConfigDigest, MemberId, Message) =
        decode_exact(rest)?;
    message.validate().map_err(DecodeError::Invalid)?;
    Ok(Envelope {
        cluster,
        digest,
        sender,
        message,
    })
}

/// Encodes one custom broadcast item (unversioned: it only travels inside a versioned envelope).
pub fn encode_broadcast(item: &Broadcast) -> Result<Vec<u8>, EncodeError> {
    bincode::serde::encode_to_vec(item, wire_config()).map_err(|e| EncodeError(e.to_string()))
}

/// Decodes one custom broadcast item; the whole input must be one item.
pub fn decode_broadcast(bytes: &[u8]) -> Result<Broadcast, DecodeError> {
    if bytes.len() > MAX_SWIM_PACKET_BYTES {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_SWIM_PACKET_BYTES,
        });
    }
    let item: Broadcast = decode_exact(bytes)?;
    item.validate().map_err(DecodeError::Invalid)?;
    Ok(item)
}

/// Encodes a record kept on shared storage (versioned like an envelope).
pub fn encode_storage(record: &StorageRecord) -> Result<Vec<u8>, EncodeError> {
    bincode::serde::encode_to_vec((PROTOCOL_VERSION, record), wire_config())
        .map_err(|e| EncodeError(e.to_string()))
}

/// Decodes a record read from shared storage.
pub fn decode_storage(bytes: &[u8]) -> Result<StorageRecord, DecodeError> {
    let rest = version_prefix(bytes, MAX_MESSAGE_BYTES)?;
    let record: StorageRecord = decode_exact(rest)?;
    record.validate().map_err(DecodeError::Invalid)?;
    Ok(record)
}

/// Checks the length limit and the version, and returns what follows the version.
fn version_prefix(bytes: &[u8], max: usize) -> Result<&[u8], DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let (version, used): (u16, usize) = bincode::serde::decode_from_slice(bytes, wire_config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    Ok(&bytes[used..])
}

/// Decodes exactly one value from `bytes`; leftovers are an error.
pub(crate) fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(bytes, wire_config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}
