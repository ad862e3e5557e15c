//! # peerfence-proto
//!
//! Everything that crosses the network or shared storage between peerfence daemons: identifiers
//! ([`ids`]), message bodies ([`messages`]), the versioned envelope and its bounded decoders
//! ([`envelope`]), the SWIM codec handed to foca ([`swim`]) and the records kept on shared
//! storage ([`storage`]). See `PROTOCOL.md` next to this crate for the layout in prose.
//!
//! Rules every decoder here keeps: input is checked against a size limit before anything is
//! allocated, nothing panics on any input, trailing bytes are an error, and counts are validated
//! (see [`envelope::Validate`]). Golden byte vectors in `tests/golden.rs` pin the encoding: a change
//! that alters bytes on the wire fails CI and must bump [`envelope::PROTOCOL_VERSION`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod envelope;
pub mod ids;
pub mod messages;
pub mod storage;
pub mod swim;

pub use envelope::{
    DecodeError, EncodeError, Envelope, MAX_MESSAGE_BYTES, MAX_SWIM_PACKET_BYTES, PROTOCOL_VERSION,
    Validate, decode, decode_broadcast, decode_storage, encode, encode_broadcast, encode_storage,
};
pub use ids::{
    BootId, ClusterId, ConfigDigest, Ident, MAX_MEMBERS, MemberId, PublicKey, Round, Signature,
};
pub use messages::*;
pub use storage::{HeartbeatRecord, StorageBody, StorageRecord};
