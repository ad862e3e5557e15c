//! The daemon's configuration file: the core's sections plus what only a real host needs
//! (`[node]`, `[tls]`, `[health]`, `[http]`). Validation reuses the core's, then adds the
//! daemon's own rules; every problem names its field, its value and the rule.

use crate::config::{
    Config, ConfigError, ConfigErrors, LevelKind, RawCluster, RawConfig, RawFencing, RawSelfFence,
    RawStorage, RawSwim, RawWatchdog, fmt_duration,
};
use peerfence_proto::MemberId;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `[node]`: this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// This member's name in `cluster.members`. Required.
    pub name: String,
    /// Directory for durable state (created 0700 if missing). Required.
    pub data_dir: PathBuf,
    /// QUIC (UDP) listen address. Default: this member's `address` from `cluster.members`.
    #[serde(default)]
    pub listen: Option<String>,
    /// `"kernel"` (default) reads `/proc/sys/kernel/random/boot_id`. `"per-start"` draws a new
    /// one at every daemon start: only for test clusters whose members share one machine.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// This member's ed25519 vote key (hex secret, mode 0600). Required.
    pub vote_key: PathBuf,
}

/// `[tls]`: the cluster CA and this member's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This member's certificate (PEM), issued by the CA, naming the member.
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// `[health.agent]`: how to tell whether the management agent runs. One of the three.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// A systemd unit that must be active (`systemctl is-active`).
    #[serde(default)]
    pub systemd_unit: Option<String>,
    /// A pid file whose process must exist.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// A command that must exit 0.
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    /// Time allowed for one check. Default `"5s"`.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// `[health.isolation]`: addresses this host must reach to count as connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIsolation {
    /// `host:port` addresses tried with a TCP connect; one answering is enough.
    pub addresses: Vec<String>,
    /// Time allowed per connect. Default `"1s"`.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// One `[[health.exec]]` check: a command that must exit 0 for this host to be Healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    /// Name for logs and status.
    pub name: String,
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    /// Time allowed. Default `"5s"`.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// `[health]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Interval of the agent, isolation and exec checks. Default `"2s"`.
    #[serde(default)]
    pub interval: Option<String>,
    /// Management agent check; none by default.
    #[serde(default)]
    pub agent: Option<RawAgent>,
    /// Isolation addresses; none by default.
    #[serde(default)]
    pub isolation: Option<RawIsolation>,
    /// Extra checks; they count like the isolation check (all must pass).
    #[serde(default)]
    pub exec: Vec<RawExec>,
}

/// `[http]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Status endpoint address. Default `"127.0.0.1:7947"`. Set `""` to turn it off.
    #[serde(default)]
    pub listen: Option<String>,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemonConfig {
    /// `[node]`.
    pub node: RawNode,
    /// `[tls]`.
    pub tls: RawTls,
    /// `[cluster]` (core).
    pub cluster: RawCluster,
    /// `[swim]` (core).
    #[serde(default)]
    pub swim: RawSwim,
    /// `[storage]` (core).
    #[serde(default)]
    pub storage: RawStorage,
    /// `[fencing]` (core).
    #[serde(default)]
    pub fencing: RawFencing,
    /// `[self_fence]` (core).
    #[serde(default)]
    pub self_fence: RawSelfFence,
    /// `[watchdog]` (core).
    #[serde(default)]
    pub watchdog: RawWatchdog,
    /// `[health]`.
    #[serde(default)]
    pub health: RawHealth,
    /// `[http]`.
    #[serde(default)]
    pub http: RawHttp,
}

/// Where this host's boot id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootIdSource {
    /// `/proc/sys/kernel/random/boot_id`.
    Kernel,
    /// A fresh random id at every daemon start (test clusters on one machine).
    PerStart,
}

/// The management agent check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCheck {
    /// `systemctl is-active --quiet UNIT`.
    SystemdUnit(String),
    /// The process named in a pid file exists.
    PidFile(PathBuf),
    /// A command exits 0.
    Exec(Vec<String>),
}

/// A command check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCheck {
    /// Name.
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Time allowed.
    pub timeout: Duration,
}

/// Validated `[health]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Check interval.
    pub interval: Duration,
    /// Agent check and its timeout.
    pub agent: Option<(AgentCheck, Duration)>,
    /// Isolation addresses and the connect timeout.
    pub isolation: Option<(Vec<String>, Duration)>,
    /// Extra checks.
    pub exec: Vec<ExecCheck>,
}

/// The validated daemon configuration.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The core's part.
    pub core: Arc<Config>,
    /// This member.
    pub me: MemberId,
    /// Durable state directory.
    pub data_dir: PathBuf,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Every member's QUIC address, by member id.
    pub addresses: Vec<SocketAddr>,
    /// Boot id source.
    pub boot_id: BootIdSource,
    /// Vote key file.
    pub vote_key: PathBuf,
    /// TLS files.
    pub tls: RawTls,
    /// Health checks.
    pub health: HealthConfig,
    /// Status endpoint, if on.
    pub http: Option<SocketAddr>,
}

struct Problems(Vec<ConfigError>);

impl Problems {
    fn err(&mut self, field: &str, value: impl std::fmt::Display, rule: impl Into<String>) {
        self.0.push(ConfigError {
            field: field.into(),
            value: value.to_string(),
            rule: rule.into(),
        });
    }

    fn duration(&mut self, field: &str, raw: &Option<String>, default: &str) -> Duration {
        let text = raw.as_deref().unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() && d <= Duration::from_secs(3600) => d,
            Ok(_) => {
                self.err(
                    field,
                    format!("{text:?}"),
                    "must be above zero and at most one hour",
                );
                Duration::from_secs(1)
            }
            Err(e) => {
                self.err(
                    field,
                    format!("{text:?}"),
                    format!("is not a duration ({e}); write it with a unit, e.g. \"2s\""),
                );
                Duration::from_secs(1)
            }
        }
    }
}

fn addr(p: &mut Problems, field: &str, text: &str) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.err(
                field,
                format!("{text:?}"),
                "must be an ip:port address, e.g. \"10.0.0.11:7946\" or \"[fd00::11]:7946\"",
            );
            None
        }
    }
}

impl RawDaemonConfig {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
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

    /// The core's sections as a core configuration.
    pub fn core_raw(&self) -> RawConfig {
        RawConfig {
            cluster: self.cluster.clone(),
            swim: self.swim.clone(),
            storage: self.storage.clone(),
            fencing: self.fencing.clone(),
            self_fence: self.self_fence.clone(),
            watchdog: self.watchdog.clone(),
        }
    }

    /// Validates everything; returns every problem at once.
    pub fn validate(&self) -> Result<DaemonConfig, ConfigErrors> {
        let core = self.core_raw().validate();
        let mut p = Problems(match &core {
            Ok(_) => Vec::new(),
            Err(e) => e.0.clone(),
        });

        // This build's daemon carries out neither fence agents' nor self-fence actions nor the
        // watchdog yet (they come with fence execution). Saying so here beats a configuration
        // that looks armed and is not.
        let action = self.self_fence.action.as_deref().unwrap_or("reboot");
        if matches!(action, "reboot" | "graceful-reboot" | "restart-agent") {
            p.err(
                "self_fence.action",
                format!("{action:?}"),
                "is not carried out by this build of the daemon yet (self-fence actions arrive with fence execution); use \"log-only\" or \"none\"",
            );
        }
        if self.watchdog.enabled == Some(true) {
            p.err(
                "watchdog.enabled",
                "true",
                "is not supported by this build of the daemon yet (the watchdog device arrives with fence execution); set it to false",
            );
        }

        let names: Vec<&str> = self
            .cluster
            .members
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        let me = match &core {
            Ok(c) => c.roster.id_of(&self.node.name),
            Err(_) => None,
        };
        if !names.contains(&self.node.name.as_str()) {
            p.err(
                "node.name",
                format!("{:?}", self.node.name),
                format!("must be one of cluster.members ({})", names.join(", ")),
            );
        }
        let mut addresses: Vec<(String, SocketAddr)> = Vec::new();
        for (i, m) in self.cluster.members.iter().enumerate() {
            let field = format!("cluster.members[{i}].address");
            match &m.address {
                None => p.err(
                    &field,
                    "(missing)",
                    "every member needs its peerfence address, e.g. address = \"10.0.0.11:7946\"",
                ),
                Some(a) => {
                    if let Some(sa) = addr(&mut p, &field, a) {
                        if addresses.iter().any(|(_, o)| *o == sa) {
                            p.err(&field, format!("{a:?}"), "is also another member's address");
                        }
                        addresses.push((m.name.clone(), sa));
                    }
                }
            }
        }
        let listen = match self.node.listen.as_deref() {
            Some(l) => addr(&mut p, "node.listen", l),
            None => addresses
                .iter()
                .find(|(n, _)| *n == self.node.name)
                .map(|(_, a)| *a),
        };
        let boot_id = match self.node.boot_id.as_deref().unwrap_or("kernel") {
            "kernel" => BootIdSource::Kernel,
            "per-start" => BootIdSource::PerStart,
            other => {
                p.err(
                    "node.boot_id",
                    format!("{other:?}"),
                    "must be \"kernel\" or \"per-start\" (test clusters sharing one machine)",
                );
                BootIdSource::Kernel
            }
        };
        if self.node.data_dir.as_os_str().is_empty() {
            p.err(
                "node.data_dir",
                "\"\"",
                "must name a directory for durable state",
            );
        }

        let h = &self.health;
        let interval = p.duration("health.interval", &h.interval, "2s");
        let agent = h.agent.as_ref().and_then(|a| {
            let timeout = p.duration("health.agent.timeout", &a.timeout, "5s");
            let set = [
                a.systemd_unit.is_some(),
                a.pid_file.is_some(),
                a.exec.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if set != 1 {
                p.err(
                    "health.agent",
                    format!("{set} methods"),
                    "must set exactly one of systemd_unit, pid_file, exec",
                );
                return None;
            }
            let check = if let Some(u) = &a.systemd_unit {
                AgentCheck::SystemdUnit(u.clone())
            } else if let Some(f) = &a.pid_file {
                AgentCheck::PidFile(f.clone())
            } else {
                let cmd = a.exec.clone().unwrap_or_default();
                if cmd.is_empty() {
                    p.err("health.agent.exec", "[]", "must name a program");
                }
                AgentCheck::Exec(cmd)
            };
            Some((check, timeout))
        });
        let isolation = h.isolation.as_ref().map(|i| {
            let timeout = p.duration("health.isolation.timeout", &i.timeout, "1s");
            if i.addresses.is_empty() {
                p.err(
                    "health.isolation.addresses",
                    "[]",
                    "must list at least one host:port, or remove [health.isolation]",
                );
            }
            (i.addresses.clone(), timeout)
        });
        let mut exec = Vec::new();
        for (i, e) in h.exec.iter().enumerate() {
            let timeout = p.duration(&format!("health.exec[{i}].timeout"), &e.timeout, "5s");
            if e.command.is_empty() {
                p.err(
                    &format!("health.exec[{i}].command"),
                    "[]",
                    "must name a program",
                );
            }
            exec.push(ExecCheck {
                name: e.name.clone(),
                command: e.command.clone(),
                timeout,
            });
        }
        let http = match self.http.listen.as_deref() {
            Some("") => None,
            Some(l) => addr(&mut p, "http.listen", l),
            None => Some(SocketAddr::from(([127, 0, 0, 1], 7947))),
        };

        if !p.0.is_empty() {
            return Err(ConfigErrors(p.0));
        }
        let (Ok(core), Some(me), Some(listen)) = (core, me, listen) else {
            return Err(ConfigErrors(vec![ConfigError {
                field: "node".into(),
                value: self.node.name.clone(),
                rule: "could not be resolved against the cluster".into(),
            }]));
        };
        // Addresses by member id (the roster is sorted by name).
        let addresses = core
            .roster
            .ids()
            .map(|m| {
                addresses
                    .iter()
                    .find(|(n, _)| n == core.roster.name(m))
                    .map(|(_, a)| *a)
                    .unwrap_or(listen)
            })
            .collect();
        Ok(DaemonConfig {
            core: Arc::new(core),
            me,
            data_dir: self.node.data_dir.clone(),
            listen,
            addresses,
            boot_id,
            vote_key: self.node.vote_key.clone(),
            tls: self.tls.clone(),
            health: HealthConfig {
                interval,
                agent,
                isolation,
                exec,
            },
            http,
        })
    }
}

impl DaemonConfig {
    /// Lines worth printing at start-up and by `check-config`: derived deadlines, and what this
    /// build does with each fence level.
    pub fn summary(&self) -> Vec<String> {
        let c = &self.core;
        let mut lines = vec![
            format!(
                "cluster {} with {} members (quorum {}), mode {:?}, digest {:016x}; this is {} on {}",
                c.cluster,
                c.n(),
                c.quorum(),
                c.mode,
                c.digest().0,
                c.roster.name(self.me),
                self.listen
            ),
            format!(
                "derived: storage failure detected within {}, promise lifetime {}",
                fmt_duration(c.storage_failed_detect()),
                fmt_duration(c.promise_ttl())
            ),
        ];
        for (i, l) in c.fencing.levels.iter().enumerate() {
            if let LevelKind::Agent { .. } = l.kind {
                lines.push(format!(
                    "warning: fencing.levels[{i}] ({}) is a fence-agent level; this build does not run fence agents yet, so it always fails",
                    l.name
                ));
            }
        }
        lines
    }
}
