//! # peerfence core
//!
//! The sans-IO heart of peerfence: [`node::Node`] decides who may fence whom. It never reads a
//! clock, touches a socket or a file, or draws unseeded randomness; the daemon and the simulator
//! feed it inputs stamped with `now` and carry out its outputs.

// The core has no unsafe code. The daemon shell allows it function by function, where a
// system call has no safe wrapper in std (kill, sync, watchdog ioctls), each with a SAFETY note.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod crypto;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod durable;
pub mod health;
pub mod heartbeat;
pub mod membership;
pub mod node;
pub mod quorum;
pub mod rules;
pub mod time;

#[cfg(test)]
mod testutil;
