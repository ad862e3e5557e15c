//! Helpers shared by the core's unit tests.

use crate::config::{Config, raw_for_members};
use crate::crypto::VoteKey;
use peerfence_proto::PublicKey;

/// Deterministic vote key of member `i`.
pub fn key(i: usize) -> VoteKey {
    VoteKey::from_secret([i as u8 + 1; 32])
}

/// A validated default configuration with `n` members named h0..h{n-1}.
pub fn config(n: usize) -> Config {
    raw(n).validate().expect("default test config is valid")
}

/// The raw form of [`config`], to tweak before validating.
pub fn raw(n: usize) -> crate::config::RawConfig {
    let members: Vec<(String, PublicKey)> =
        (0..n).map(|i| (format!("h{i}"), key(i).public())).collect();
    raw_for_members("test", &members)
}
