//! Identifiers that appear on the wire.
//!
//! Members are named by their index in the cluster's sorted roster (`MemberId`). That is only
//! meaningful because every envelope carries the digest of the cluster's safety configuration,
//! roster included, and peers drop messages whose digest differs from their own: two nodes that
//! agree on the digest agree on what every index means.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest cluster peerfence accepts. It bounds every per-member collection on the wire (votes in
/// a quorum certificate, health paths) and in the core.
pub const MAX_MEMBERS: usize = 128;

/// Longest cluster name, in bytes.
pub const MAX_CLUSTER_ID_BYTES: usize = 64;

/// A configured member: its index in the roster sorted by name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberId(pub u16);

impl MemberId {
    /// The roster index as a `usize`, for indexing per-member tables.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}

/// The kernel boot id of a host (`/proc/sys/kernel/random/boot_id`). A new boot id proves that
/// the previous instance of the host, and every VM it ran, is gone.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BootId(pub [u8; 16]);

impl fmt::Debug for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first four bytes are enough to tell boots apart in logs and traces.
        write!(
            f,
            "boot:{:02x}{:02x}{:02x}{:02x}",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Digest of the cluster-wide safety configuration (cluster name, roster with vote keys, and the
/// parameters every member must share, such as the watchdog timeout). Messages carrying another
/// digest are dropped: a node with a different roster would compute a different quorum.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfigDigest(pub u64);

impl fmt::Debug for ConfigDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "digest:{:016x}", self.0)
    }
}

/// Name of a cluster: 1 to 64 bytes of `[a-z0-9._-]`. Validated while decoding, so a message
/// with a malformed name never reaches the core.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterId(String);

/// Why a string is not a valid cluster name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cluster name {value:?} is invalid: it must be 1 to 64 bytes of lowercase letters, digits, '.', '_' or '-'"
)]
pub struct InvalidClusterId {
    /// The rejected value (truncated to 80 characters so that garbage cannot flood a log line).
    pub value: String,
}

impl ClusterId {
    /// Validates `name` as a cluster name.
    pub fn new(name: &str) -> Result<Self, InvalidClusterId> {
        let ok = !name.is_empty()
            && name.len() <= MAX_CLUSTER_ID_BYTES
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidClusterId {
                value: name.chars().take(80).collect(),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClusterId {
    type Error = InvalidClusterId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<ClusterId> for String {
    fn from(value: ClusterId) -> Self {
        value.0
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SWIM identity of one running instance of a member: the member plus a generation that
/// grows with every daemon start and every automatic rejoin. foca keeps one identity per member
/// (`Addr` is the `MemberId`) and the higher generation wins, so a restarted daemon is never
/// mistaken for, or shadowed by, its previous instance.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ident {
    /// The member this instance runs on.
    pub member: MemberId,
    /// Grows with each start and each rejoin of the member's daemon.
    pub generation: u32,
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}#{}", self.member.0, self.generation)
    }
}

impl foca::Identity for Ident {
    type Addr = MemberId;

    fn renew(&self) -> Option<Self> {
        // A member declared Down rejoins at once with the next generation. Running out of
        // generations (4 billion rejoins) leaves it down, which is safe: it is simply not heard.
        self.generation.checked_add(1).map(|generation| Self {
            member: self.member,
            generation,
        })
    }

    fn addr(&self) -> MemberId {
        self.member
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Identifies one fencing round: proposer generation in the high half and a per-generation
/// counter in the low half, so a proposer that restarts can never reuse a round number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Round(pub u64);

impl Round {
    /// Builds a round number from a proposer generation and a counter.
    pub fn new(generation: u32, counter: u32) -> Self {
        Self((u64::from(generation) << 32) | u64::from(counter))
    }
}

impl fmt::Debug for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}.{}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// An ed25519 public key (32 bytes), as configured for each member to verify its votes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key:{:02x}{:02x}{:02x}{:02x}",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// An ed25519 signature (64 bytes). Stored as two halves because serde derives arrays only up to
/// 32 elements; on the wire it is 64 raw bytes either way.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signature {
    /// Bytes 0..32 (the R point).
    pub r: [u8; 32],
    /// Bytes 32..64 (the s scalar).
    pub s: [u8; 32],
}

impl Signature {
    /// Splits a 64-byte signature.
    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        let mut r = [0u8; 32];
        let mut s = [0u8; 32];
        r.copy_from_slice(&bytes[..32]);
        s.copy_from_slice(&bytes[32..]);
        Self { r, s }
    }

    /// Joins the two halves.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.r);
        out[32..].copy_from_slice(&self.s);
        out
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sig:{:02x}{:02x}{:02x}{:02x}",
            self.r[0], self.r[1], self.r[2], self.r[3]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    #[test]
    fn cluster_id_rules() {
        assert!(ClusterId::new("prod-kvm.eu_1").is_ok());
        assert!(ClusterId::new("").is_err());
        assert!(ClusterId::new("Prod").is_err());
        assert!(ClusterId::new("a b").is_err());
        assert!(ClusterId::new(&"a".repeat(64)).is_ok());
        assert!(ClusterId::new(&"a".repeat(65)).is_err());
    }

    #[test]
    fn newer_generation_wins_and_renew_grows() {
        let a = Ident {
            member: MemberId(3),
            generation: 7,
        };
        let b = a.renew().expect("not exhausted");
        assert_eq!(b.generation, 8);
        assert_eq!(a.addr(), b.addr());
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
        let last = Ident {
            member: MemberId(3),
            generation: u32::MAX,
        };
        assert!(last.renew().is_none());
    }

    #[test]
    fn rounds_from_later_generations_are_larger() {
        assert!(Round::new(2, 0) > Round::new(1, u32::MAX));
        assert_eq!(format!("{:?}", Round::new(3, 9)), "r3.9");
    }

    #[test]
    fn signature_halves_roundtrip() {
        let mut bytes = [0u8; 64];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(Signature::from_bytes(bytes).to_bytes(), bytes);
    }
}
