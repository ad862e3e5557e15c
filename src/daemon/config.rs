//! The daemon's configuration file: the core's sections plus what only a real host needs
//! (`[node]`, `[tls]`, `[health]`, `[http]`). Validation reuses the core's, then adds the
//! daemon's own rules; every problem names its field, its value and the rule.

use crate::config::{
    Config, ConfigError, ConfigErrors, LevelKind, Mode, RawCluster, RawConfig, RawFencing,
    RawSelfFence, RawStorage, RawSwim, RawWatchdog, fmt_duration,
};
use peerfence_proto::MemberId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// Bearer tokens allowed to act (arm, disarm, maintenance, manual fence): `NAME TOKEN`
    /// lines, mode 0600. Without it, every action is refused with 401.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Serve HTTPS with this member's certificate (`[tls]`), and accept client certificates
    /// from the cluster CA as credentials for actions. Default false (plain HTTP).
    #[serde(default)]
    pub tls: bool,
}

/// `[agents.LEVEL]`: the ClusterLabs fence agent behind the fence level named LEVEL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentLevel {
    /// The agent program: a name looked up in `PATH` (`"fence_ipmilan"`) or an absolute path.
    pub command: Vec<String>,
    /// Parameters for every host, as the agent's stdin `name=value` lines (no `action`: peerfence
    /// sets it on every call).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Per-host parameters (e.g. the BMC address), by member name; they override `params`.
    #[serde(default)]
    pub hosts: BTreeMap<String, BTreeMap<String, String>>,
    /// A file (mode 0600) of secret parameters: `name=value` lines for every host and
    /// `HOST.name=value` lines for one host. Never logged, never shown.
    #[serde(default)]
    pub secrets_file: Option<PathBuf>,
    /// Secret parameters read from the environment: parameter name → variable name.
    #[serde(default)]
    pub secret_env: BTreeMap<String, String>,
    /// Time for one call of the agent. Default `"10s"`, at most the level's timeout.
    #[serde(default)]
    pub action_timeout: Option<String>,
    /// Extra tries of a failed `off`/`on`, made only while a whole `action_timeout` is left of
    /// the level's time. Default 1, at most 5.
    #[serde(default)]
    pub retries: Option<u8>,
    /// Interval of `monitor` per host (the device's health). Default `"60s"`; `"off"` disables.
    #[serde(default)]
    pub monitor_interval: Option<String>,
    /// Interval of the power `status` per host (first agent level only). Default `"30s"`;
    /// `"off"` disables.
    #[serde(default)]
    pub power_status_interval: Option<String>,
}

/// `[local_actions]`: how this host's self-fence actions and watchdog are carried out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocalActions {
    /// `"system"` (default): real actions (sysrq, systemctl). `"record"`: append each action to
    /// `record_file` and do nothing else — for tests and the demo.
    #[serde(default)]
    pub executor: Option<String>,
    /// Where `"record"` writes.
    #[serde(default)]
    pub record_file: Option<PathBuf>,
    /// `reboot`: time allowed for `sync` before `sysrq b`. Default `"5s"`.
    #[serde(default)]
    pub sync_timeout: Option<String>,
    /// `graceful-reboot`: time allowed for `systemctl reboot` before escalating to `reboot`.
    /// Default `"120s"`.
    #[serde(default)]
    pub graceful_timeout: Option<String>,
    /// `restart-agent`: the unit restarted. Default: `health.agent.systemd_unit`.
    #[serde(default)]
    pub agent_unit: Option<String>,
    /// The watchdog device (used when `watchdog.enabled`). Default `"/dev/watchdog"`.
    #[serde(default)]
    pub watchdog_device: Option<PathBuf>,
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
    /// `[agents.LEVEL]`, one per agent level.
    #[serde(default)]
    pub agents: BTreeMap<String, RawAgentLevel>,
    /// `[local_actions]`.
    #[serde(default)]
    pub local_actions: RawLocalActions,
    /// `[hooks]`: exec hooks and webhooks on events (`hooks.rs`).
    #[serde(default)]
    pub hooks: super::hooks::RawHooks,
    /// `[testing]` (core).
    #[serde(default)]
    pub testing: crate::config::RawTesting,
}

/// A secret parameter value: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(********)")
    }
}

/// Where a level's secrets come from (read when the daemon starts, not by `check-config`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecretSources {
    /// The 0600 file.
    pub file: Option<PathBuf>,
    /// Parameter → environment variable.
    pub env: BTreeMap<String, String>,
}

/// A validated `[agents.LEVEL]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLevelConfig {
    /// Fence level index.
    pub level: u8,
    /// Level name.
    pub name: String,
    /// Program and fixed arguments.
    pub command: Vec<String>,
    /// Parameters for every host.
    pub params: BTreeMap<String, String>,
    /// Per-host parameters by member name.
    pub hosts: BTreeMap<String, BTreeMap<String, String>>,
    /// Secret sources.
    pub secrets: SecretSources,
    /// One call's time.
    pub action_timeout: Duration,
    /// Extra tries of `off`/`on`.
    pub retries: u8,
    /// `monitor` interval, if on.
    pub monitor_interval: Option<Duration>,
    /// Power `status` interval, if on (first agent level only).
    pub power_status_interval: Option<Duration>,
}

/// How local actions are carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executor {
    /// Real actions.
    System,
    /// Append to a file, do nothing (tests, demo).
    Record(PathBuf),
}

/// Validated `[local_actions]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalActionsConfig {
    /// Executor.
    pub executor: Executor,
    /// `sync` deadline of `reboot`.
    pub sync_timeout: Duration,
    /// Escalation deadline of `graceful-reboot`.
    pub graceful_timeout: Duration,
    /// Unit for `restart-agent`.
    pub agent_unit: Option<String>,
    /// Watchdog device.
    pub watchdog_device: PathBuf,
}

/// Parameter names peerfence sets itself, or that make agents do something else than asked
/// (fence-agents treats a legacy `option=` like a missing action: *reboot*).
const RESERVED_PARAMS: &[&str] = &["action", "option"];

pub(super) fn valid_param_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
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
    /// API tokens file, if any (read at start).
    pub token_file: Option<PathBuf>,
    /// HTTPS with client certificates.
    pub http_tls: bool,
    /// Agent levels by level index (`None` for a poison-pill level).
    pub agents: Vec<Option<AgentLevelConfig>>,
    /// Local actions and the watchdog device.
    pub local: LocalActionsConfig,
    /// Exec hooks and webhooks.
    pub hooks: super::hooks::HooksConfig,
}

pub(super) struct Problems(pub(super) Vec<ConfigError>);

impl Problems {
    pub(super) fn err(
        &mut self,
        field: &str,
        value: impl std::fmt::Display,
        rule: impl Into<String>,
    ) {
        self.0.push(ConfigError {
            field: field.into(),
            value: value.to_string(),
            rule: rule.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        field: &str,
        raw: &Option<String>,
        default: &str,
    ) -> Duration {
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
            testing: self.testing.clone(),
        }
    }

    /// Validates everything; returns every problem at once.
    pub fn validate(&self) -> Result<DaemonConfig, ConfigErrors> {
        let core = self.core_raw().validate();
        let mut p = Problems(match &core {
            Ok(_) => Vec::new(),
            Err(e) => e.0.clone(),
        });

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

        let agents = match &core {
            Ok(c) => self.validate_agents(&mut p, c, &names),
            Err(_) => Vec::new(),
        };
        let local = self.validate_local(&mut p);
        if let Ok(c) = &core {
            p.0.extend(test_settings_refused(c, boot_id, &local));
        }
        let hooks = self.hooks.validate(&mut p);

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
            token_file: self.http.token_file.clone(),
            http_tls: self.http.tls,
            agents,
            local,
            hooks,
        })
    }

    fn validate_agents(
        &self,
        p: &mut Problems,
        core: &Config,
        names: &[&str],
    ) -> Vec<Option<AgentLevelConfig>> {
        let mut out = Vec::new();
        let mut first_agent = true;
        for (i, level) in core.fencing.levels.iter().enumerate() {
            let LevelKind::Agent { timeout } = level.kind else {
                if self.agents.contains_key(&level.name) {
                    p.err(
                        &format!("agents.{}", level.name),
                        "(present)",
                        "names a poison-pill level, which runs no agent; remove it",
                    );
                }
                out.push(None);
                continue;
            };
            let field = format!("agents.{}", level.name);
            let Some(a) = self.agents.get(&level.name) else {
                p.err(
                    &field,
                    "(missing)",
                    format!(
                        "fencing.levels[{i}] ({}) is an agent level: say which fence agent runs it, e.g. [agents.{}] command = [\"fence_ipmilan\"]",
                        level.name, level.name
                    ),
                );
                out.push(None);
                continue;
            };
            if a.command.is_empty() || a.command[0].is_empty() {
                p.err(
                    &format!("{field}.command"),
                    format!("{:?}", a.command),
                    "must name the agent program, e.g. [\"fence_ipmilan\"]",
                );
            }
            let check_params = |p: &mut Problems, what: &str, params: &BTreeMap<String, String>| {
                for (k, v) in params {
                    if !valid_param_name(k) {
                        p.err(
                            &format!("{what}.{k}"),
                            format!("{k:?}"),
                            "a parameter name is lowercase letters, digits, '_' or '-'",
                        );
                    } else if RESERVED_PARAMS.contains(&k.as_str()) {
                        p.err(
                            &format!("{what}.{k}"),
                            format!("{v:?}"),
                            "is set by peerfence on every call (a stray action or option would make the agent reboot); remove it",
                        );
                    }
                    if v.contains(['\n', '\r', '\0']) {
                        p.err(
                            &format!("{what}.{k}"),
                            "(value with a line break)",
                            "must be one line: values go to the agent as name=value lines",
                        );
                    }
                }
            };
            check_params(p, &format!("{field}.params"), &a.params);
            for (host, params) in &a.hosts {
                if !names.contains(&host.as_str()) {
                    p.err(
                        &format!("{field}.hosts.{host}"),
                        format!("{host:?}"),
                        format!("must be one of cluster.members ({})", names.join(", ")),
                    );
                }
                check_params(p, &format!("{field}.hosts.{host}"), params);
            }
            for (k, var) in &a.secret_env {
                if !valid_param_name(k) || RESERVED_PARAMS.contains(&k.as_str()) {
                    p.err(
                        &format!("{field}.secret_env.{k}"),
                        format!("{k:?}"),
                        "must be an agent parameter name (not action or option)",
                    );
                }
                if var.is_empty() {
                    p.err(
                        &format!("{field}.secret_env.{k}"),
                        "\"\"",
                        "must name an environment variable",
                    );
                }
            }
            let action_timeout =
                p.duration(&format!("{field}.action_timeout"), &a.action_timeout, "10s");
            if action_timeout > timeout {
                p.err(
                    &format!("{field}.action_timeout"),
                    fmt_duration(action_timeout),
                    format!(
                        "must not exceed the level's timeout ({}) in fencing.levels[{i}]",
                        fmt_duration(timeout)
                    ),
                );
            }
            let retries = a.retries.unwrap_or(1);
            if retries > 5 {
                p.err(
                    &format!("{field}.retries"),
                    retries,
                    "must be at most 5 (the level's timeout bounds them anyway)",
                );
            }
            let mut interval = |name: &str, raw: &Option<String>, default: &str| {
                if raw.as_deref() == Some("off") {
                    None
                } else {
                    Some(p.duration(&format!("{field}.{name}"), raw, default))
                }
            };
            let monitor_interval = interval("monitor_interval", &a.monitor_interval, "60s");
            let power_status_interval = if first_agent {
                interval("power_status_interval", &a.power_status_interval, "30s")
            } else {
                None
            };
            first_agent = false;
            out.push(Some(AgentLevelConfig {
                level: i as u8,
                name: level.name.clone(),
                command: a.command.clone(),
                params: a.params.clone(),
                hosts: a.hosts.clone(),
                secrets: SecretSources {
                    file: a.secrets_file.clone(),
                    env: a.secret_env.clone(),
                },
                action_timeout,
                retries,
                monitor_interval,
                power_status_interval,
            }));
        }
        for name in self.agents.keys() {
            if !core.fencing.levels.iter().any(|l| &l.name == name) {
                p.err(
                    &format!("agents.{name}"),
                    format!("{name:?}"),
                    format!(
                        "names no fence level (fencing.levels: {})",
                        core.fencing
                            .levels
                            .iter()
                            .map(|l| l.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        out
    }

    fn validate_local(&self, p: &mut Problems) -> LocalActionsConfig {
        let l = &self.local_actions;
        let executor = match l.executor.as_deref().unwrap_or("system") {
            "system" => Executor::System,
            "record" => match &l.record_file {
                Some(f) => Executor::Record(f.clone()),
                None => {
                    p.err(
                        "local_actions.record_file",
                        "(missing)",
                        "is required with executor = \"record\"",
                    );
                    Executor::System
                }
            },
            other => {
                p.err(
                    "local_actions.executor",
                    format!("{other:?}"),
                    "must be \"system\" (real actions) or \"record\" (tests and demos: write them to record_file, do nothing)",
                );
                Executor::System
            }
        };
        let sync_timeout = p.duration("local_actions.sync_timeout", &l.sync_timeout, "5s");
        let graceful_timeout = p.duration(
            "local_actions.graceful_timeout",
            &l.graceful_timeout,
            "120s",
        );
        let agent_unit = l.agent_unit.clone().or_else(|| {
            self.health
                .agent
                .as_ref()
                .and_then(|a| a.systemd_unit.clone())
        });
        if self.self_fence.action.as_deref() == Some("restart-agent") && agent_unit.is_none() {
            p.err(
                "local_actions.agent_unit",
                "(missing)",
                "self_fence.action = \"restart-agent\" needs the unit to restart: set agent_unit, or health.agent.systemd_unit",
            );
        }
        LocalActionsConfig {
            executor,
            sync_timeout,
            graceful_timeout,
            agent_unit,
            watchdog_device: l
                .watchdog_device
                .clone()
                .unwrap_or_else(|| PathBuf::from("/dev/watchdog")),
        }
    }
}

/// How to allow a test setting, the end of every refusal of one.
const TEST_RIG_FIX: &str = "or, on a test rig (a laptop, CI, the demo), set [testing] allow_test_settings = true in every member's configuration";

/// The host-local settings that void the safety argument on a production cluster, each refused
/// in enforce mode unless `testing.allow_test_settings` (part of the digest, so the whole
/// cluster agrees it is a test rig). Observe mode never acts, so it needs no switch.
fn test_settings_refused(
    core: &Config,
    boot_id: BootIdSource,
    local: &LocalActionsConfig,
) -> Vec<ConfigError> {
    let mut out = Vec::new();
    if core.mode != Mode::Enforce || core.test_rig {
        return out;
    }
    let err = |field: &str, value: String, rule: String| ConfigError {
        field: field.into(),
        value,
        rule,
    };
    if boot_id == BootIdSource::PerStart {
        out.push(err(
            "node.boot_id",
            "\"per-start\"".into(),
            format!(
                "is a test setting refused in enforce mode: every daemon start would look like a reboot of this host, and its peers take a new boot id as proof that its VMs stopped (they would announce VMs that still run safe to recover); use \"kernel\" (the default), {TEST_RIG_FIX}"
            ),
        ));
    }
    if let Executor::Record(_) = local.executor {
        out.push(err(
            "local_actions.executor",
            "\"record\"".into(),
            format!(
                "is a test setting refused in enforce mode: self-fence actions would only be written to record_file, so a host its peers count as fenced or rebooted would keep running its VMs; use \"system\" (the default), {TEST_RIG_FIX}"
            ),
        ));
    }
    // Only a device present on this host can be judged here; one that is missing now is judged
    // again when the daemon opens it (see `fake_watchdog_refused`).
    if core.watchdog.enabled
        && let Ok(meta) = std::fs::metadata(&local.watchdog_device)
        && let Some(e) = fake_watchdog_error(core, &local.watchdog_device, meta.file_type())
    {
        out.push(e);
    }
    out
}

fn fake_watchdog_error(
    core: &Config,
    device: &std::path::Path,
    kind: std::fs::FileType,
) -> Option<ConfigError> {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_char_device() || core.mode != Mode::Enforce || core.test_rig {
        return None;
    }
    Some(ConfigError {
        field: "local_actions.watchdog_device".into(),
        value: format!("{:?}", device.display().to_string()),
        rule: format!(
            "is not a character device (a plain file or FIFO is the tests' fake watchdog) while watchdog.enabled = true, a test setting refused in enforce mode: nothing would reset this host when peerfence stops feeding it, yet its peers confirm fences by that deadline; name the real device (/dev/watchdog, or softdog's), {TEST_RIG_FIX}"
        ),
    })
}

/// The watchdog check of [`RawDaemonConfig::validate`] made again where the device is opened:
/// `check-config` can only judge a device that exists on the host it runs on. `None` when the
/// device is a character device, cannot be looked at (opening it will say why), or the
/// configuration allows test settings or never acts.
pub fn fake_watchdog_refused(cfg: &DaemonConfig) -> Option<ConfigError> {
    let meta = std::fs::metadata(&cfg.local.watchdog_device).ok()?;
    fake_watchdog_error(&cfg.core, &cfg.local.watchdog_device, meta.file_type())
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
        for a in self.agents.iter().flatten() {
            lines.push(format!(
                "fence level {} runs {:?} (one call at most {}, {} retries)",
                a.name,
                a.command.join(" "),
                fmt_duration(a.action_timeout),
                a.retries
            ));
        }
        if c.watchdog.enabled {
            lines.push(format!(
                "watchdog device {} (timeout {})",
                self.local.watchdog_device.display(),
                fmt_duration(c.watchdog.timeout)
            ));
        }
        if let Executor::Record(f) = &self.local.executor {
            lines.push(format!(
                "local actions are only recorded in {} (executor = \"record\")",
                f.display()
            ));
        }
        if c.test_rig {
            lines.push(
                "a test rig ([testing] allow_test_settings = true): per-start boot ids, the record executor and fake watchdogs are allowed in enforce mode".into(),
            );
        }
        lines.extend(self.hooks.summary());
        lines
    }
}
