//! Configuration: the raw form (what an operator writes, all fields optional with documented
//! defaults) and the validated form the core runs on.
//!
//! [`RawConfig::validate`] checks every field and every relation between fields and returns *all*
//! problems at once; each [`ConfigError`] names the field, the value and the rule, e.g.
//! `swim.probe_rtt = "1500ms": must be below swim.probe_period (1s)`. A [`Config`] can only be
//! obtained through validation, so code holding one never re-checks.
//!
//! Durations are written with units (`"500ms"`, `"5s"`, `"1h"`). Defaults suit a LAN cluster whose
//! hosts share storage, and are listed in the field docs of [`RawConfig`] and in
//! `docs/ARCHITECTURE.md`.

use crate::quorum;
use crate::time::stretch;
use peerfence_proto::{ClusterId, ConfigDigest, MAX_MEMBERS, MemberId, PublicKey, SelfFenceAction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::num::{NonZeroU8, NonZeroU32};
use std::time::Duration;

/// Most shared storage paths.
pub const MAX_PATHS: usize = peerfence_proto::MAX_STORAGE_PATHS;
/// Most fence levels.
pub const MAX_LEVELS: usize = 8;
/// Largest fence budget per window.
pub const MAX_BUDGET: u8 = 32;
/// Largest number of fences in flight at once.
pub const MAX_CONCURRENT: u8 = 16;
/// Smallest `fencing.confirm_margin`: it pads every promise and deadline for the time a node
/// takes to notice an instant has passed (it evaluates every [`crate::node::TICK`]).
pub const CONFIRM_MARGIN_MIN: Duration = Duration::from_millis(500);
const _: () = assert!(
    CONFIRM_MARGIN_MIN.as_millis() >= 2 * crate::node::TICK.as_millis(),
    "the margin must cover a few evaluation periods"
);

/// One configuration problem: which field, what value, which rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `storage.activity_timeout`.
    pub field: String,
    /// The offending value as written (or as defaulted).
    pub value: String,
    /// The rule, phrased so that it also says how to fix it.
    pub rule: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.rule)
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration problem(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// A member as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMember {
    /// Host name, also the DNS name in its TLS certificate: 1 to 63 bytes of letters, digits,
    /// '-' and '.', not starting or ending with '-' or '.'. Unique in the cluster.
    pub name: String,
    /// The member's ed25519 vote-verification key, 64 hex digits.
    pub vote_key: String,
    /// Its peerfence (QUIC, UDP) address, `host:port` or `ip:port`. Required by the daemon; the
    /// core does not use it.
    #[serde(default)]
    pub address: Option<String>,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Cluster name (lowercase letters, digits, '.', '_', '-'; at most 64 bytes). Required.
    pub name: String,
    /// `"enforce"` (default) carries out fences; `"observe"` computes everything and reports
    /// "would fence" without proposing, voting or fencing.
    #[serde(default)]
    pub mode: Option<String>,
    /// Every member, including this host. At least 3, at most 128. Must be identical on every
    /// member (the configuration digest enforces it).
    pub members: Vec<RawMember>,
}

/// `[swim]`: membership timings (foca).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSwim {
    /// How often each member probes one other member. Default `"1s"`.
    pub probe_period: Option<String>,
    /// Wait for a direct probe reply before asking others to probe indirectly; must be below
    /// `probe_period`. Default `"300ms"`.
    pub probe_rtt: Option<String>,
    /// How long a Suspect member has to refute before it is declared Down. Default `"3s"`.
    pub suspect_to_down_after: Option<String>,
    /// Members asked to probe indirectly. Default 3.
    pub num_indirect_probes: Option<u8>,
    /// How many times each update is piggybacked. Default 6.
    pub max_transmissions: Option<u8>,
    /// Periodic gossip interval. Default `"200ms"`.
    pub gossip_period: Option<String>,
    /// Members gossiped to each period. Default 3.
    pub gossip_fanout: Option<u8>,
    /// Largest SWIM packet, bytes (must fit the transport's datagram). Default 1100, at most 1400.
    pub max_packet_bytes: Option<u16>,
    /// How often to announce to members not currently active (joins after partitions).
    /// Default `"5s"`.
    pub announce_period: Option<String>,
}

/// `[storage]`: the storage heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    /// Shared storage paths, each a directory every member mounts. 1 to 16. Required.
    pub paths: Vec<String>,
    /// Write (and read) interval of the heartbeat. Default `"1s"`.
    pub heartbeat_interval: Option<String>,
    /// A write not completed within this counts as failed. Default `"2s"`.
    pub write_timeout: Option<String>,
    /// A write slower than this (but within the timeout) makes the path Slow. Default `"500ms"`.
    pub slow_threshold: Option<String>,
    /// Consecutive failed writes before a path is Failed. Default 3.
    pub failures_before_failed: Option<u8>,
    /// A peer whose heartbeat counter has not changed for this long, on this host's clock, is
    /// not storage-alive. Must exceed `heartbeat_interval + write_timeout` so that one slow write
    /// never looks like a stopped host. Default `"5s"`.
    pub activity_timeout: Option<String>,
}

/// One `[[fencing.levels]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLevel {
    /// Name shown in events and status, e.g. `"ipmi"`.
    pub name: String,
    /// `"agent"` (a ClusterLabs fence agent) or `"poison-pill"` (shared storage).
    pub kind: String,
    /// Time for the whole level: `off`, then `status` until Off. Agent levels only; default
    /// `"20s"`.
    #[serde(default)]
    pub timeout: Option<String>,
}

impl RawLevel {
    /// A fence-agent level.
    pub fn agent(name: &str, timeout: &str) -> Self {
        Self {
            name: name.into(),
            kind: "agent".into(),
            timeout: Some(timeout.into()),
        }
    }

    /// A poison-pill level.
    pub fn poison_pill(name: &str) -> Self {
        Self {
            name: name.into(),
            kind: "poison-pill".into(),
            timeout: None,
        }
    }
}

/// `[fencing]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFencing {
    /// Fence levels, tried in order. Default: one agent level `"bmc"` with a 20 s timeout.
    pub levels: Option<Vec<RawLevel>>,
    /// `"off"` (default) leaves a fenced host off; `"reboot"` powers it on after Off is verified.
    pub after_off: Option<String>,
    /// Interval between `status` calls after `off`. Default `"1s"`.
    pub status_poll_interval: Option<String>,
    /// Time to collect a quorum of votes. Default `"3s"`.
    pub proposal_timeout: Option<String>,
    /// Resend a proposal to silent voters this often. Default `"500ms"`.
    pub retransmit_interval: Option<String>,
    /// Back-off per rank: the n-th ranked proposer waits n times this. Default `"2s"`.
    pub proposer_backoff: Option<String>,
    /// First retry delay after a failed attempt; doubles up to `retry_backoff_max`.
    /// Default `"10s"`.
    pub retry_backoff_initial: Option<String>,
    /// Longest retry delay. Default `"250s"`.
    pub retry_backoff_max: Option<String>,
    /// Attempts before a host is Failed (needs an operator). Default 5.
    pub max_attempts: Option<u8>,
    /// Fences (and VM-stopping self-fences) allowed per `budget_window`, cluster-wide.
    /// Default 3, at most 32.
    pub budget: Option<u8>,
    /// Budget window. Default `"1h"`.
    pub budget_window: Option<String>,
    /// Fences in flight at once, cluster-wide. Default 2, at most 16.
    pub max_concurrent: Option<u8>,
    /// Storm threshold: more members than this down or unhealthy stops all fencing.
    /// Default max(1, floor(n/3)).
    pub max_unhealthy: Option<u16>,
    /// Storm mode ends after this long with the count back at or below the threshold.
    /// Default `"60s"`.
    pub storm_cooldown: Option<String>,
    /// After start, observe this long before proposing or voting. Default `"10s"`.
    pub startup_quiet_period: Option<String>,
    /// Bound on the rate difference between any two hosts' monotonic clocks, parts per million.
    /// Default 1000 (0.1 %), at most 100000.
    pub clock_drift_ppm: Option<u32>,
    /// Extra margin added to every cross-host deadline. Default `"2s"`.
    pub confirm_margin: Option<String>,
}

/// `[self_fence]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSelfFence {
    /// `"reboot"`, `"graceful-reboot"`, `"restart-agent"`, `"log-only"` or `"none"`.
    /// Default `"reboot"`.
    pub action: Option<String>,
    /// Storage must have been Failed continuously this long before asking. Default `"10s"`.
    pub grace: Option<String>,
    /// Ask again this often while no quorum agrees. Default `"10s"`.
    pub retry_interval: Option<String>,
}

/// `[watchdog]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWatchdog {
    /// Whether every member runs with a hardware or softdog watchdog. Required (true) when a
    /// poison-pill level is configured. Default false.
    pub enabled: Option<bool>,
    /// Watchdog timeout. Default `"10s"`.
    pub timeout: Option<String>,
    /// Feed interval; at most a third of the timeout. Default `"1s"`.
    pub feed_interval: Option<String>,
    /// A member with failed storage keeps feeding only while a quorum vouched for it within this.
    /// Default `"5s"`.
    pub contact_timeout: Option<String>,
    /// Contact probe interval while storage is not healthy. Default `"1s"`.
    pub contact_interval: Option<String>,
}

/// `[testing]`: settings that make sense only on a test rig (the simulator, the demo, a laptop).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTesting {
    /// Allows, in enforce mode, the host-local settings a production host must never run with:
    /// `node.boot_id = "per-start"` (a daemon restart would look like a reboot and announce
    /// running VMs safe to recover), a plain file as `watchdog.device` (nothing would reset the
    /// host), and `local_actions.executor = "record"` (nothing would be done). It is part of the
    /// configuration digest, so every member of a cluster agrees whether it is a test rig.
    /// Default false.
    pub allow_test_settings: Option<bool>,
}

/// The whole configuration as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[cluster]`.
    pub cluster: RawCluster,
    /// `[swim]`.
    #[serde(default)]
    pub swim: RawSwim,
    /// `[storage]`.
    #[serde(default)]
    pub storage: RawStorage,
    /// `[fencing]`.
    #[serde(default)]
    pub fencing: RawFencing,
    /// `[self_fence]`.
    #[serde(default)]
    pub self_fence: RawSelfFence,
    /// `[watchdog]`.
    #[serde(default)]
    pub watchdog: RawWatchdog,
    /// `[testing]`.
    #[serde(default)]
    pub testing: RawTesting,
}

/// Enforce or observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Fences are proposed, voted and carried out.
    Enforce,
    /// Everything is computed and reported as "would fence"; nothing is proposed or executed.
    Observe,
}

/// What a fenced host is left as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AfterOff {
    /// Left off.
    Off,
    /// Powered on again once Off is verified.
    Reboot,
}

/// The configured self-fence action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelfFenceSetting {
    /// Needs the quorum's agreement, then acts.
    Act(SelfFenceAction),
    /// Logs that it would act; never asks, never acts.
    LogOnly,
    /// Does nothing.
    None,
}

/// How one fence level works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelKind {
    /// A fence agent: `off`, then `status` until Off, all within `timeout`.
    Agent {
        /// Time for the whole level.
        timeout: Duration,
    },
    /// Write the certificate into the target's slot on every path, then wait for the target's
    /// watchdog deadline.
    PoisonPill,
}

/// One fence level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceLevel {
    /// Name for events and status.
    pub name: String,
    /// Agent or poison pill.
    pub kind: LevelKind,
}

/// A configured member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Host name.
    pub name: String,
    /// Vote-verification key.
    pub vote_key: PublicKey,
}

/// The configured members, sorted by name; a member's [`MemberId`] is its index here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    members: Vec<MemberInfo>,
}

impl Roster {
    /// Number of configured members, `n`.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false for a validated roster (at least 3 members); here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Strict majority of configured members.
    pub fn quorum(&self) -> usize {
        quorum::quorum(self.members.len())
    }

    /// The member with this id, if configured.
    pub fn get(&self, id: MemberId) -> Option<&MemberInfo> {
        self.members.get(id.index())
    }

    /// Whether `id` is configured.
    pub fn contains(&self, id: MemberId) -> bool {
        id.index() < self.members.len()
    }

    /// The id of the member named `name`.
    pub fn id_of(&self, name: &str) -> Option<MemberId> {
        self.members
            .iter()
            .position(|m| m.name == name)
            .and_then(|i| u16::try_from(i).ok())
            .map(MemberId)
    }

    /// Every configured member id, in order.
    pub fn ids(&self) -> impl Iterator<Item = MemberId> + '_ {
        (0..self.members.len()).map(|i| MemberId(i as u16))
    }

    /// Name of `id`, or `"?"` for an unknown id (only ever used for display).
    pub fn name(&self, id: MemberId) -> &str {
        self.get(id).map(|m| m.name.as_str()).unwrap_or("?")
    }
}

/// `[swim]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwimConfig {
    /// See [`RawSwim::probe_period`].
    pub probe_period: Duration,
    /// See [`RawSwim::probe_rtt`].
    pub probe_rtt: Duration,
    /// See [`RawSwim::suspect_to_down_after`].
    pub suspect_to_down_after: Duration,
    /// See [`RawSwim::num_indirect_probes`].
    pub num_indirect_probes: NonZeroU8,
    /// See [`RawSwim::max_transmissions`].
    pub max_transmissions: NonZeroU8,
    /// See [`RawSwim::gossip_period`].
    pub gossip_period: Duration,
    /// See [`RawSwim::gossip_fanout`].
    pub gossip_fanout: NonZeroU8,
    /// See [`RawSwim::max_packet_bytes`].
    pub max_packet_bytes: u16,
    /// See [`RawSwim::announce_period`].
    pub announce_period: Duration,
}

/// `[storage]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// See [`RawStorage::paths`].
    pub paths: Vec<String>,
    /// See [`RawStorage::heartbeat_interval`].
    pub heartbeat_interval: Duration,
    /// See [`RawStorage::write_timeout`].
    pub write_timeout: Duration,
    /// See [`RawStorage::slow_threshold`].
    pub slow_threshold: Duration,
    /// See [`RawStorage::failures_before_failed`].
    pub failures_before_failed: NonZeroU8,
    /// See [`RawStorage::activity_timeout`].
    pub activity_timeout: Duration,
}

/// `[fencing]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencingConfig {
    /// See [`RawFencing::levels`].
    pub levels: Vec<FenceLevel>,
    /// See [`RawFencing::after_off`].
    pub after_off: AfterOff,
    /// See [`RawFencing::status_poll_interval`].
    pub status_poll_interval: Duration,
    /// See [`RawFencing::proposal_timeout`].
    pub proposal_timeout: Duration,
    /// See [`RawFencing::retransmit_interval`].
    pub retransmit_interval: Duration,
    /// See [`RawFencing::proposer_backoff`].
    pub proposer_backoff: Duration,
    /// See [`RawFencing::retry_backoff_initial`].
    pub retry_backoff_initial: Duration,
    /// See [`RawFencing::retry_backoff_max`].
    pub retry_backoff_max: Duration,
    /// See [`RawFencing::max_attempts`].
    pub max_attempts: NonZeroU8,
    /// See [`RawFencing::budget`].
    pub budget: NonZeroU8,
    /// See [`RawFencing::budget_window`].
    pub budget_window: Duration,
    /// See [`RawFencing::max_concurrent`].
    pub max_concurrent: NonZeroU8,
    /// See [`RawFencing::max_unhealthy`].
    pub max_unhealthy: usize,
    /// See [`RawFencing::storm_cooldown`].
    pub storm_cooldown: Duration,
    /// See [`RawFencing::startup_quiet_period`].
    pub startup_quiet_period: Duration,
    /// See [`RawFencing::clock_drift_ppm`].
    pub clock_drift_ppm: u32,
    /// See [`RawFencing::confirm_margin`].
    pub confirm_margin: Duration,
}

/// `[self_fence]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfFenceConfig {
    /// See [`RawSelfFence::action`].
    pub action: SelfFenceSetting,
    /// See [`RawSelfFence::grace`].
    pub grace: Duration,
    /// See [`RawSelfFence::retry_interval`].
    pub retry_interval: Duration,
}

/// `[watchdog]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogConfig {
    /// See [`RawWatchdog::enabled`].
    pub enabled: bool,
    /// See [`RawWatchdog::timeout`].
    pub timeout: Duration,
    /// See [`RawWatchdog::feed_interval`].
    pub feed_interval: Duration,
    /// See [`RawWatchdog::contact_timeout`].
    pub contact_timeout: Duration,
    /// See [`RawWatchdog::contact_interval`].
    pub contact_interval: Duration,
}

/// A validated configuration. Obtain one with [`RawConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Cluster name.
    pub cluster: ClusterId,
    /// Configured members.
    pub roster: Roster,
    /// Enforce or observe.
    pub mode: Mode,
    /// Membership timings.
    pub swim: SwimConfig,
    /// Storage heartbeat.
    pub storage: StorageConfig,
    /// Fencing.
    pub fencing: FencingConfig,
    /// Self-fencing.
    pub self_fence: SelfFenceConfig,
    /// Watchdog.
    pub watchdog: WatchdogConfig,
    /// `testing.allow_test_settings`: this cluster is a test rig (see [`RawTesting`]).
    pub test_rig: bool,
    digest: ConfigDigest,
}

impl Config {
    /// Digest of the cluster-wide safety parameters; see `proto/PROTOCOL.md`.
    pub fn digest(&self) -> ConfigDigest {
        self.digest
    }

    /// Number of configured members.
    pub fn n(&self) -> usize {
        self.roster.len()
    }

    /// Strict majority of configured members.
    pub fn quorum(&self) -> usize {
        self.roster.quorum()
    }

    /// Longest time a path can keep failing before its verdict is Failed: the configured number
    /// of consecutive write attempts, the last of which runs into the write timeout.
    pub fn storage_failed_detect(&self) -> Duration {
        self.storage.heartbeat_interval * u32::from(self.storage.failures_before_failed.get())
            + self.storage.write_timeout
    }

    /// Longest time a member may go on feeding its watchdog after the last evidence that it
    /// should (its last successful write, the send time of the last vouched contact, or the
    /// appearance of a poison pill in its slot), measured on its own clock.
    pub fn watchdog_stop_bound(&self) -> Duration {
        // A write can be visible to readers before its fsync returns; the writer counts it only
        // when the driver reports it, up to one write timeout later. Hence the extra timeout.
        (self.storage_failed_detect() + self.storage.write_timeout)
            .max(self.watchdog.contact_timeout)
            .max(self.storage.heartbeat_interval)
            + self.watchdog.feed_interval
    }

    /// How long after writing a poison pill (on the fencer's clock) the target is certainly reset:
    /// its feeding stops within [`Self::watchdog_stop_bound`], its watchdog fires within
    /// `watchdog.timeout`, both stretched for clock drift, plus `confirm_margin`.
    pub fn pill_confirm_wait(&self) -> Duration {
        stretch(
            self.watchdog_stop_bound() + self.watchdog.timeout,
            2 * self.fencing.clock_drift_ppm,
        ) + self.fencing.confirm_margin
    }

    /// Time allowed for writing a poison pill on every path.
    pub fn pill_write_timeout(&self) -> Duration {
        self.storage.write_timeout
    }

    /// Longest one fence attempt can take: every level's time budget in sequence.
    pub fn attempt_max(&self) -> Duration {
        self.fencing
            .levels
            .iter()
            .map(|l| self.level_budget(l))
            .sum()
    }

    /// Time budget of one level.
    pub fn level_budget(&self, level: &FenceLevel) -> Duration {
        match level.kind {
            LevelKind::Agent { timeout } => timeout,
            LevelKind::PoisonPill => self.pill_write_timeout() + self.pill_confirm_wait(),
        }
    }

    /// How long a voter keeps a promise: long enough to cover vote collection and a whole fence
    /// attempt on the proposer's clock even if the voter's clock runs fast, so that no second
    /// quorum for the same target can form while the first attempt may still be running.
    pub fn promise_ttl(&self) -> Duration {
        stretch(
            self.fencing.proposal_timeout + self.attempt_max(),
            2 * self.fencing.clock_drift_ppm,
        ) + self.fencing.confirm_margin
    }

    /// Whether any level confirms by watchdog deadline.
    pub fn has_poison_pill(&self) -> bool {
        self.fencing
            .levels
            .iter()
            .any(|l| l.kind == LevelKind::PoisonPill)
    }

    /// Retry delay after `failed_attempts` failed attempts: initial, doubled each time, capped.
    pub fn retry_backoff(&self, failed_attempts: u32) -> Duration {
        let shift = failed_attempts.saturating_sub(1).min(16);
        (self.fencing.retry_backoff_initial * (1u32 << shift)).min(self.fencing.retry_backoff_max)
    }
}

/// Collects errors while validating.
struct Check {
    errors: Vec<ConfigError>,
}

impl Check {
    fn err(&mut self, field: &str, value: impl fmt::Display, rule: impl Into<String>) {
        self.errors.push(ConfigError {
            field: field.to_owned(),
            value: value.to_string(),
            rule: rule.into(),
        });
    }

    /// Parses a duration field, falling back to `default` when absent. Durations must be
    /// positive and below one week (a typo such as "100000h" is caught, not obeyed).
    fn duration(&mut self, field: &str, raw: &Option<String>, default: &str) -> Duration {
        let text = raw.as_deref().unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.err(field, quoted(text), "must be greater than zero");
                fallback(default)
            }
            Ok(d) if d > Duration::from_secs(7 * 24 * 3600) => {
                self.err(field, quoted(text), "must be at most one week (168h)");
                fallback(default)
            }
            Ok(d) => d,
            Err(e) => {
                self.err(
                    field,
                    quoted(text),
                    format!(
                        "is not a duration ({e}); write it with a unit, e.g. \"500ms\" or \"5s\""
                    ),
                );
                fallback(default)
            }
        }
    }

    fn nonzero_u8(&mut self, field: &str, raw: Option<u8>, default: u8, max: u8) -> NonZeroU8 {
        let v = raw.unwrap_or(default);
        if v == 0 || v > max {
            self.err(field, v, format!("must be between 1 and {max}"));
            return NonZeroU8::new(default).unwrap_or(NonZeroU8::MIN);
        }
        NonZeroU8::new(v).unwrap_or(NonZeroU8::MIN)
    }

    fn less(&mut self, field: &str, a: Duration, other: &str, b: Duration, why: &str) {
        if a >= b {
            self.err(
                field,
                quoted(&fmt_duration(a)),
                format!("must be below {other} ({}){why}", fmt_duration(b)),
            );
        }
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn fallback(default: &str) -> Duration {
    humantime::parse_duration(default).unwrap_or(Duration::from_secs(1))
}

/// Formats a duration the way an operator writes one (to the millisecond).
pub fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// Whether `name` is usable as a member name: a DNS name, because it is the subject of the
/// member's TLS certificate.
pub fn valid_member_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
}

fn parse_key(hex_key: &str) -> Option<PublicKey> {
    if hex_key.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex_key.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    // The key must be a valid curve point, or no vote could ever verify against it.
    ed25519_dalek::VerifyingKey::from_bytes(&out).ok()?;
    Some(PublicKey(out))
}

impl RawConfig {
    /// Parses TOML text. Syntax errors and unknown fields come back as one [`ConfigError`]
    /// naming the position; use [`RawConfig::validate`] next.
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigErrors> {
        toml_parse(text)
    }

    /// Checks everything and builds the validated [`Config`], or returns every problem found.
    pub fn validate(&self) -> Result<Config, ConfigErrors> {
        let mut c = Check { errors: Vec::new() };

        // [cluster]
        let cluster = match ClusterId::new(&self.cluster.name) {
            Ok(id) => Some(id),
            Err(_) => {
                c.err(
                    "cluster.name",
                    quoted(&self.cluster.name),
                    "must be 1 to 64 bytes of lowercase letters, digits, '.', '_' or '-'",
                );
                None
            }
        };
        let mode = match self.cluster.mode.as_deref().unwrap_or("enforce") {
            "enforce" => Mode::Enforce,
            "observe" => Mode::Observe,
            other => {
                c.err(
                    "cluster.mode",
                    quoted(other),
                    "must be \"enforce\" or \"observe\"",
                );
                Mode::Observe
            }
        };
        let mut members: Vec<MemberInfo> = Vec::new();
        for (i, m) in self.cluster.members.iter().enumerate() {
            let field = format!("cluster.members[{i}]");
            if !valid_member_name(&m.name) {
                c.err(
                    &format!("{field}.name"),
                    quoted(&m.name),
                    "must be a DNS name (it names the member's TLS certificate): 1 to 63 bytes of letters, digits, '-' and '.', not starting or ending with '-' or '.'",
                );
                continue;
            }
            if members.iter().any(|o| o.name == m.name) {
                c.err(
                    &format!("{field}.name"),
                    quoted(&m.name),
                    "appears twice; member names must be unique",
                );
                continue;
            }
            match parse_key(&m.vote_key) {
                Some(key) => {
                    if members.iter().any(|o| o.vote_key == key) {
                        c.err(
                            &format!("{field}.vote_key"),
                            quoted(&abbreviate(&m.vote_key)),
                            "is also another member's key; every member needs its own key",
                        );
                    }
                    members.push(MemberInfo {
                        name: m.name.clone(),
                        vote_key: key,
                    })
                }
                None => c.err(
                    &format!("{field}.vote_key"),
                    quoted(&abbreviate(&m.vote_key)),
                    "must be 64 hex digits of a valid ed25519 public key",
                ),
            }
        }
        let count = self.cluster.members.len();
        if !(3..=MAX_MEMBERS).contains(&count) {
            c.err(
                "cluster.members",
                format!("{count} members"),
                format!(
                    "must list between 3 and {MAX_MEMBERS} members (a majority must survive one failure)"
                ),
            );
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let n = members.len().max(1);

        // [swim]
        let s = &self.swim;
        let probe_period = c.duration("swim.probe_period", &s.probe_period, "1s");
        let probe_rtt = c.duration("swim.probe_rtt", &s.probe_rtt, "300ms");
        c.less(
            "swim.probe_rtt",
            probe_rtt,
            "swim.probe_period",
            probe_period,
            "",
        );
        let suspect_to_down_after =
            c.duration("swim.suspect_to_down_after", &s.suspect_to_down_after, "3s");
        let num_indirect_probes =
            c.nonzero_u8("swim.num_indirect_probes", s.num_indirect_probes, 3, 16);
        let max_transmissions = c.nonzero_u8("swim.max_transmissions", s.max_transmissions, 6, 64);
        let gossip_period = c.duration("swim.gossip_period", &s.gossip_period, "200ms");
        let gossip_fanout = c.nonzero_u8("swim.gossip_fanout", s.gossip_fanout, 3, 16);
        let max_packet_bytes = s.max_packet_bytes.unwrap_or(1100);
        if !(512..=peerfence_proto::MAX_SWIM_PACKET_BYTES as u16).contains(&max_packet_bytes) {
            c.err(
                "swim.max_packet_bytes",
                max_packet_bytes,
                format!(
                    "must be between 512 and {} bytes",
                    peerfence_proto::MAX_SWIM_PACKET_BYTES
                ),
            );
        }
        let announce_period = c.duration("swim.announce_period", &s.announce_period, "5s");

        // [storage]
        let st = &self.storage;
        if st.paths.is_empty() || st.paths.len() > MAX_PATHS {
            c.err(
                "storage.paths",
                format!("{} paths", st.paths.len()),
                format!("must list between 1 and {MAX_PATHS} shared storage paths"),
            );
        }
        for (i, p) in st.paths.iter().enumerate() {
            if p.is_empty() || st.paths[..i].contains(p) {
                c.err(
                    &format!("storage.paths[{i}]"),
                    quoted(p),
                    "must be non-empty and unique",
                );
            }
        }
        let heartbeat_interval =
            c.duration("storage.heartbeat_interval", &st.heartbeat_interval, "1s");
        let write_timeout = c.duration("storage.write_timeout", &st.write_timeout, "2s");
        let slow_threshold = c.duration("storage.slow_threshold", &st.slow_threshold, "500ms");
        c.less(
            "storage.slow_threshold",
            slow_threshold,
            "storage.write_timeout",
            write_timeout,
            "",
        );
        let failures_before_failed = c.nonzero_u8(
            "storage.failures_before_failed",
            st.failures_before_failed,
            3,
            20,
        );
        let activity_timeout = c.duration("storage.activity_timeout", &st.activity_timeout, "5s");
        if activity_timeout <= heartbeat_interval + write_timeout {
            c.err(
                "storage.activity_timeout",
                quoted(&fmt_duration(activity_timeout)),
                format!(
                    "must exceed storage.heartbeat_interval + storage.write_timeout ({}), or one slow write would look like a stopped heartbeat",
                    fmt_duration(heartbeat_interval + write_timeout)
                ),
            );
        }

        // [fencing]
        let f = &self.fencing;
        let default_levels = vec![RawLevel::agent("bmc", "20s")];
        let raw_levels = f.levels.as_ref().unwrap_or(&default_levels);
        if raw_levels.is_empty() || raw_levels.len() > MAX_LEVELS {
            c.err(
                "fencing.levels",
                format!("{} levels", raw_levels.len()),
                format!("must list between 1 and {MAX_LEVELS} fence levels"),
            );
        }
        let mut levels = Vec::new();
        for (i, l) in raw_levels.iter().enumerate() {
            let field = format!("fencing.levels[{i}]");
            if !valid_member_name(&l.name) || levels.iter().any(|o: &FenceLevel| o.name == l.name) {
                c.err(
                    &format!("{field}.name"),
                    quoted(&l.name),
                    "must be a unique name of letters, digits, '-' and '.'",
                );
            }
            let kind = match l.kind.as_str() {
                "agent" => LevelKind::Agent {
                    timeout: c.duration(&format!("{field}.timeout"), &l.timeout, "20s"),
                },
                "poison-pill" => {
                    if l.timeout.is_some() {
                        c.err(
                            &format!("{field}.timeout"),
                            quoted(l.timeout.as_deref().unwrap_or_default()),
                            "does not apply to a poison-pill level (its wait follows from the watchdog settings); remove it",
                        );
                    }
                    if i + 1 != raw_levels.len() {
                        c.err(
                            &format!("{field}.kind"),
                            quoted(&l.kind),
                            "a poison-pill level must be the last level",
                        );
                    }
                    LevelKind::PoisonPill
                }
                other => {
                    c.err(
                        &format!("{field}.kind"),
                        quoted(other),
                        "must be \"agent\" or \"poison-pill\"",
                    );
                    continue;
                }
            };
            levels.push(FenceLevel {
                name: l.name.clone(),
                kind,
            });
        }
        let after_off = match f.after_off.as_deref().unwrap_or("off") {
            "off" => AfterOff::Off,
            "reboot" => AfterOff::Reboot,
            other => {
                c.err(
                    "fencing.after_off",
                    quoted(other),
                    "must be \"off\" or \"reboot\"",
                );
                AfterOff::Off
            }
        };
        let status_poll_interval = c.duration(
            "fencing.status_poll_interval",
            &f.status_poll_interval,
            "1s",
        );
        let proposal_timeout = c.duration("fencing.proposal_timeout", &f.proposal_timeout, "3s");
        let retransmit_interval = c.duration(
            "fencing.retransmit_interval",
            &f.retransmit_interval,
            "500ms",
        );
        c.less(
            "fencing.retransmit_interval",
            retransmit_interval,
            "fencing.proposal_timeout",
            proposal_timeout,
            "",
        );
        let proposer_backoff = c.duration("fencing.proposer_backoff", &f.proposer_backoff, "2s");
        let retry_backoff_initial = c.duration(
            "fencing.retry_backoff_initial",
            &f.retry_backoff_initial,
            "10s",
        );
        let retry_backoff_max =
            c.duration("fencing.retry_backoff_max", &f.retry_backoff_max, "250s");
        if retry_backoff_initial > retry_backoff_max {
            c.err(
                "fencing.retry_backoff_initial",
                quoted(&fmt_duration(retry_backoff_initial)),
                format!(
                    "must not exceed fencing.retry_backoff_max ({})",
                    fmt_duration(retry_backoff_max)
                ),
            );
        }
        let max_attempts = c.nonzero_u8("fencing.max_attempts", f.max_attempts, 5, 50);
        let budget = c.nonzero_u8("fencing.budget", f.budget, 3, MAX_BUDGET);
        let budget_window = c.duration("fencing.budget_window", &f.budget_window, "1h");
        let max_concurrent = c.nonzero_u8(
            "fencing.max_concurrent",
            f.max_concurrent,
            2,
            MAX_CONCURRENT,
        );
        let max_unhealthy = match f.max_unhealthy {
            None => quorum::default_max_unhealthy(n),
            Some(v) => {
                let v = usize::from(v);
                if v == 0 || n - quorum::quorum(n) < v {
                    c.err(
                        "fencing.max_unhealthy",
                        v,
                        format!(
                            "must be between 1 and {} (n - quorum for {n} members): with more down, no quorum is left to decide",
                            (n - quorum::quorum(n)).max(1)
                        ),
                    );
                }
                v
            }
        };
        let storm_cooldown = c.duration("fencing.storm_cooldown", &f.storm_cooldown, "60s");
        let startup_quiet_period = c.duration(
            "fencing.startup_quiet_period",
            &f.startup_quiet_period,
            "10s",
        );
        if startup_quiet_period < activity_timeout {
            c.err(
                "fencing.startup_quiet_period",
                quoted(&fmt_duration(startup_quiet_period)),
                format!(
                    "must be at least storage.activity_timeout ({}): a node must watch heartbeats that long before judging them",
                    fmt_duration(activity_timeout)
                ),
            );
        }
        let clock_drift_ppm = f.clock_drift_ppm.unwrap_or(1000);
        if clock_drift_ppm > 100_000 {
            c.err(
                "fencing.clock_drift_ppm",
                clock_drift_ppm,
                "must be at most 100000 (10 %)",
            );
        }
        let confirm_margin = c.duration("fencing.confirm_margin", &f.confirm_margin, "2s");
        if confirm_margin < CONFIRM_MARGIN_MIN {
            c.err(
                "fencing.confirm_margin",
                quoted(&fmt_duration(confirm_margin)),
                format!(
                    "must be at least {}: an executor notices the end of its attempt only at its next evaluation, and every promise must outlast that",
                    fmt_duration(CONFIRM_MARGIN_MIN)
                ),
            );
        }

        // [self_fence]
        let sf = &self.self_fence;
        let action = match sf.action.as_deref().unwrap_or("reboot") {
            "reboot" => SelfFenceSetting::Act(SelfFenceAction::Reboot),
            "graceful-reboot" => SelfFenceSetting::Act(SelfFenceAction::GracefulReboot),
            "restart-agent" => SelfFenceSetting::Act(SelfFenceAction::RestartAgent),
            "log-only" => SelfFenceSetting::LogOnly,
            "none" => SelfFenceSetting::None,
            other => {
                c.err(
                    "self_fence.action",
                    quoted(other),
                    "must be one of \"reboot\", \"graceful-reboot\", \"restart-agent\", \"log-only\", \"none\"",
                );
                SelfFenceSetting::None
            }
        };
        let grace = c.duration("self_fence.grace", &sf.grace, "10s");
        let retry_interval = c.duration("self_fence.retry_interval", &sf.retry_interval, "10s");

        // [watchdog]
        let w = &self.watchdog;
        let enabled = w.enabled.unwrap_or(false);
        let timeout = c.duration("watchdog.timeout", &w.timeout, "10s");
        let feed_interval = c.duration("watchdog.feed_interval", &w.feed_interval, "1s");
        if feed_interval * 3 > timeout {
            c.err(
                "watchdog.feed_interval",
                quoted(&fmt_duration(feed_interval)),
                format!(
                    "must be at most a third of watchdog.timeout ({})",
                    fmt_duration(timeout)
                ),
            );
        }
        let contact_timeout = c.duration("watchdog.contact_timeout", &w.contact_timeout, "5s");
        let contact_interval = c.duration("watchdog.contact_interval", &w.contact_interval, "1s");
        c.less(
            "watchdog.contact_interval",
            contact_interval,
            "watchdog.contact_timeout",
            contact_timeout,
            "",
        );
        let has_pill = levels.iter().any(|l| l.kind == LevelKind::PoisonPill);
        if has_pill && !enabled {
            c.err(
                "watchdog.enabled",
                "false",
                "must be true when a poison-pill level is configured: confirming a fence by deadline is only sound when every member runs a watchdog",
            );
        }

        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        let Some(cluster) = cluster else {
            return Err(ConfigErrors(c.errors));
        };
        let mut config = Config {
            cluster,
            roster: Roster { members },
            mode,
            swim: SwimConfig {
                probe_period,
                probe_rtt,
                suspect_to_down_after,
                num_indirect_probes,
                max_transmissions,
                gossip_period,
                gossip_fanout,
                max_packet_bytes,
                announce_period,
            },
            storage: StorageConfig {
                paths: st.paths.clone(),
                heartbeat_interval,
                write_timeout,
                slow_threshold,
                failures_before_failed,
                activity_timeout,
            },
            fencing: FencingConfig {
                levels,
                after_off,
                status_poll_interval,
                proposal_timeout,
                retransmit_interval,
                proposer_backoff,
                retry_backoff_initial,
                retry_backoff_max,
                max_attempts,
                budget,
                budget_window,
                max_concurrent,
                max_unhealthy,
                storm_cooldown,
                startup_quiet_period,
                clock_drift_ppm,
                confirm_margin,
            },
            self_fence: SelfFenceConfig {
                action,
                grace,
                retry_interval,
            },
            watchdog: WatchdogConfig {
                enabled,
                timeout,
                feed_interval,
                contact_timeout,
                contact_interval,
            },
            test_rig: self.testing.allow_test_settings.unwrap_or(false),
            digest: ConfigDigest(0),
        };
        if config.promise_ttl() >= config.fencing.budget_window {
            return Err(ConfigErrors(vec![ConfigError {
                field: "fencing.budget_window".into(),
                value: quoted(&fmt_duration(config.fencing.budget_window)),
                rule: format!(
                    "must exceed the promise lifetime derived from the fence levels and watchdog ({})",
                    fmt_duration(config.promise_ttl())
                ),
            }]));
        }
        config.digest = compute_digest(&config);
        Ok(config)
    }
}

fn abbreviate(s: &str) -> String {
    if s.len() > 12 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(12).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s.to_owned()
    }
}

/// The digest covers what every member must agree on for the safety argument to hold: who the
/// members are and their keys (quorum, signatures), the heartbeat and watchdog timings that
/// deadline confirmation relies on, the budget and lanes (slot and lane ranges), the proposal
/// timeout and every level's time budget (promises must cover any member's attempt), and
/// whether a poison-pill level exists. Mode, SWIM timings and the self-fence action may differ per member
/// and during rolling changes.
fn compute_digest(c: &Config) -> ConfigDigest {
    let mut h = Sha256::new();
    let mut put = |label: &str, bytes: &[u8]| {
        h.update((label.len() as u32).to_le_bytes());
        h.update(label.as_bytes());
        h.update((bytes.len() as u32).to_le_bytes());
        h.update(bytes);
    };
    let ms = |d: Duration| (d.as_micros() as u64).to_le_bytes();
    put("cluster", c.cluster.as_str().as_bytes());
    for m in &c.roster.members {
        put("member", m.name.as_bytes());
        put("key", &m.vote_key.0);
    }
    // Every member must write and read the same paths: a member with another path set would
    // see its peers' heartbeats stop there while they run.
    for p in &c.storage.paths {
        put("storage_path", p.as_bytes());
    }
    put("heartbeat_interval", &ms(c.storage.heartbeat_interval));
    put("write_timeout", &ms(c.storage.write_timeout));
    put(
        "failures_before_failed",
        &[c.storage.failures_before_failed.get()],
    );
    put("activity_timeout", &ms(c.storage.activity_timeout));
    put("watchdog_enabled", &[u8::from(c.watchdog.enabled)]);
    put("watchdog_timeout", &ms(c.watchdog.timeout));
    put("feed_interval", &ms(c.watchdog.feed_interval));
    put("contact_timeout", &ms(c.watchdog.contact_timeout));
    put("budget", &[c.fencing.budget.get()]);
    put("budget_window", &ms(c.fencing.budget_window));
    put("max_concurrent", &[c.fencing.max_concurrent.get()]);
    put("poison_pill", &[u8::from(c.has_poison_pill())]);
    // Promise lifetime and every deadline that derives from the levels: a member with longer
    // levels would run attempts its peers' promises no longer cover.
    put("proposal_timeout", &ms(c.fencing.proposal_timeout));
    for l in &c.fencing.levels {
        put("level", &ms(c.level_budget(l)));
    }
    put("promise_ttl", &ms(c.promise_ttl()));
    put("clock_drift_ppm", &c.fencing.clock_drift_ppm.to_le_bytes());
    put("confirm_margin", &ms(c.fencing.confirm_margin));
    // A test rig may run settings that void the watchdog and boot-id arguments: every member
    // must know whether its peers do.
    put("test_rig", &[u8::from(c.test_rig)]);
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    ConfigDigest(u64::from_le_bytes(first))
}

/// Builds a raw configuration with defaults for tests and the simulator: `names` as members
/// with the given keys, one storage path.
pub fn raw_for_members(cluster: &str, members: &[(String, PublicKey)]) -> RawConfig {
    RawConfig {
        cluster: RawCluster {
            name: cluster.to_owned(),
            mode: None,
            members: members
                .iter()
                .map(|(name, key)| RawMember {
                    name: name.clone(),
                    vote_key: key.0.iter().map(|b| format!("{b:02x}")).collect(),
                    address: None,
                })
                .collect(),
        },
        swim: RawSwim::default(),
        storage: RawStorage {
            paths: vec!["/shared/a".into()],
            ..RawStorage::default()
        },
        fencing: RawFencing::default(),
        self_fence: RawSelfFence::default(),
        watchdog: RawWatchdog::default(),
        testing: RawTesting::default(),
    }
}

fn toml_parse(text: &str) -> Result<RawConfig, ConfigErrors> {
    toml::from_str(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            field: "(file)".into(),
            value: e
                .span()
                .map(|s| format!("bytes {}..{}", s.start, s.end))
                .unwrap_or_else(|| "?".into()),
            rule: e.message().to_owned(),
        }])
    })
}

/// Milliseconds in a `NonZeroU32`, for foca's sizing hints.
pub fn cluster_size_hint(n: usize) -> NonZeroU32 {
    NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{key, raw};

    fn errors_of(r: &RawConfig) -> Vec<ConfigError> {
        r.validate().expect_err("config should be invalid").0
    }

    fn has(errors: &[ConfigError], field: &str, needle: &str) -> bool {
        errors
            .iter()
            .any(|e| e.field == field && e.to_string().contains(needle))
    }

    #[test]
    fn defaults_are_valid_and_documented_values_hold() {
        let c = raw(5).validate().unwrap();
        assert_eq!(c.quorum(), 3);
        assert_eq!(c.fencing.max_unhealthy, 1);
        assert_eq!(c.storage.activity_timeout, Duration::from_secs(5));
        assert_eq!(c.swim.probe_period, Duration::from_secs(1));
        assert_eq!(c.fencing.budget.get(), 3);
        assert_eq!(c.fencing.budget_window, Duration::from_secs(3600));
        assert_eq!(
            c.self_fence.action,
            SelfFenceSetting::Act(SelfFenceAction::Reboot)
        );
        assert_eq!(c.storage_failed_detect(), Duration::from_secs(5));
        // The roster is sorted by name, whatever order it was written in.
        let mut r = raw(3);
        r.cluster.members.reverse();
        assert_eq!(r.validate().unwrap().roster.id_of("h0"), Some(MemberId(0)));
    }

    #[test]
    fn every_error_names_field_value_and_rule() {
        let mut r = raw(5);
        r.swim.probe_rtt = Some("1500ms".into());
        r.storage.activity_timeout = Some("2s".into());
        r.storage.write_timeout = Some("soon".into());
        r.fencing.budget = Some(0);
        r.cluster.members[1].name = r.cluster.members[0].name.clone();
        r.cluster.members[2].vote_key = "zz".into();
        let e = errors_of(&r);
        assert!(
            has(&e, "swim.probe_rtt", "must be below swim.probe_period (1s)"),
            "{e:?}"
        );
        assert!(has(
            &e,
            "storage.activity_timeout",
            "one slow write would look like a stopped heartbeat"
        ));
        assert!(has(&e, "storage.write_timeout", "\"soon\""));
        assert!(has(&e, "fencing.budget", "between 1 and 32"));
        assert!(has(&e, "cluster.members[1].name", "unique"));
        assert!(has(&e, "cluster.members[2].vote_key", "64 hex digits"));
        for err in &e {
            assert!(
                !err.field.is_empty() && !err.value.is_empty() && !err.rule.is_empty(),
                "{err:?}"
            );
        }
    }

    #[test]
    fn poison_pill_requires_watchdogs() {
        let mut r = raw(5);
        r.fencing.levels = Some(vec![RawLevel::poison_pill("pill")]);
        assert!(has(
            &errors_of(&r),
            "watchdog.enabled",
            "every member runs a watchdog"
        ));
        r.watchdog.enabled = Some(true);
        assert!(r.validate().unwrap().has_poison_pill());
    }

    #[test]
    fn a_pill_level_must_come_last_and_storm_threshold_must_leave_a_quorum() {
        let mut r = raw(5);
        r.watchdog.enabled = Some(true);
        r.fencing.levels = Some(vec![
            RawLevel::poison_pill("pill"),
            RawLevel::agent("bmc", "20s"),
        ]);
        r.fencing.max_unhealthy = Some(3);
        let e = errors_of(&r);
        assert!(has(&e, "fencing.levels[0].kind", "must be the last level"));
        assert!(has(&e, "fencing.max_unhealthy", "no quorum is left"));
    }

    #[test]
    fn too_few_members_is_explained() {
        let e = errors_of(&raw(2));
        assert!(has(&e, "cluster.members", "between 3 and 128"));
    }

    #[test]
    fn digest_covers_safety_parameters_only() {
        let a = raw(5).validate().unwrap().digest();
        assert_eq!(a, raw(5).validate().unwrap().digest());
        let mut r = raw(5);
        r.watchdog.timeout = Some("20s".into());
        assert_ne!(r.validate().unwrap().digest(), a);
        let mut r = raw(5);
        r.cluster.members[4].vote_key = key(9)
            .public()
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(r.validate().unwrap().digest(), a);
        let mut r = raw(5);
        r.fencing.levels = Some(vec![RawLevel::agent("bmc", "60s")]);
        assert_ne!(
            r.validate().unwrap().digest(),
            a,
            "level budgets set promise lifetimes"
        );
        let mut r = raw(5);
        r.fencing.proposal_timeout = Some("4s".into());
        assert_ne!(r.validate().unwrap().digest(), a);
        let mut r = raw(5);
        r.storage.paths.push("/shared/other".into());
        assert_ne!(
            r.validate().unwrap().digest(),
            a,
            "members with other path sets would see each other's heartbeats stop"
        );
        let mut r = raw(5);
        r.swim.gossip_period = Some("300ms".into());
        r.cluster.mode = Some("observe".into());
        assert_eq!(
            r.validate().unwrap().digest(),
            a,
            "tuning and mode may differ during a rolling change"
        );
    }

    #[test]
    fn derived_deadlines_cover_drift_and_levels() {
        let mut r = raw(5);
        r.watchdog.enabled = Some(true);
        r.fencing.levels = Some(vec![
            RawLevel::agent("bmc", "10s"),
            RawLevel::poison_pill("pill"),
        ]);
        let c = r.validate().unwrap();
        // stop bound: max(5s + 2s write, 5s, 1s) + 1s feed = 8s; + 10s watchdog, stretched,
        // + 2s margin.
        assert_eq!(c.watchdog_stop_bound(), Duration::from_secs(8));
        assert!(c.pill_confirm_wait() > Duration::from_secs(20));
        assert!(c.pill_confirm_wait() < Duration::from_millis(20_100));
        assert!(c.promise_ttl() > c.fencing.proposal_timeout + c.attempt_max());
        assert_eq!(c.retry_backoff(1), Duration::from_secs(10));
        assert_eq!(c.retry_backoff(3), Duration::from_secs(40));
        assert_eq!(c.retry_backoff(9), Duration::from_secs(250));
    }

    #[test]
    fn toml_parses_with_units_and_rejects_unknown_fields() {
        let keys: Vec<String> = (0..3)
            .map(|i| {
                key(i)
                    .public()
                    .0
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect();
        let text = format!(
            r#"
[cluster]
name = "prod-kvm"
mode = "observe"
members = [
  {{ name = "kvm01", vote_key = "{}" }},
  {{ name = "kvm02", vote_key = "{}" }},
  {{ name = "kvm03", vote_key = "{}" }},
]
[storage]
paths = ["/mnt/primary/peerfence"]
activity_timeout = "8s"
[fencing]
budget = 2
budget_window = "30m"
"#,
            keys[0], keys[1], keys[2]
        );
        let c = RawConfig::from_toml(&text).unwrap().validate().unwrap();
        assert_eq!(c.mode, Mode::Observe);
        assert_eq!(c.storage.activity_timeout, Duration::from_secs(8));
        assert_eq!(c.fencing.budget_window, Duration::from_secs(1800));
        let bad = text.replace("budget = 2", "budget = 2\nbugdet = 3");
        let e = RawConfig::from_toml(&bad).unwrap_err();
        assert!(e.to_string().contains("bugdet"), "{e}");
    }
}
