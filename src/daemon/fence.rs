//! Fence agents: the ClusterLabs fence-agent API, exactly, with bounded time and no secret leaks.
//!
//! An agent is a program (`fence_ipmilan`, `fence_redfish`, `peerfence agent sim`...) that reads
//! `name=value` lines on stdin and exits 0 (success, or "on" for `status`), 2 ("off" for
//! `status`) or 1 (failure). Every call here writes an explicit `action=` line first: fence-agents
//! 4.12 treats a missing action, or the legacy `option=` key, as *reboot* — a config may not set
//! either (see `config.rs`).
//!
//! Every call has a timeout; at the timeout the agent's whole process group is killed (an agent
//! runs helpers such as `ipmitool`) and the call counts as failed. `off` and `on` are retried only
//! while a whole `action_timeout` is left of the level's time. Secrets (from a 0600 file or the
//! environment) go on stdin only; the agent's output is logged only after every secret value in
//! it has been masked.
#![allow(clippy::disallowed_methods)]

use super::Msg;
use super::config::{AgentLevelConfig, Secret};
use crate::node::{AgentAction, AgentResult, Input, PowerState};
use peerfence_proto::MemberId;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::Sender;

/// Largest part of a child process's output (agent, exec hook) kept for logs.
const OUTPUT_KEEP: usize = 2048;

/// Agent processes the periodic checks (monitor, power status) may run at once, all levels
/// together. Fence actions do not wait for this.
const PERIODIC_CONCURRENCY: usize = 4;

/// One call of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Power off.
    Off,
    /// Power on.
    On,
    /// Power state: exit 0 on, 2 off.
    Status,
    /// Is the fence device reachable and working.
    Monitor,
    /// XML description of the agent's parameters.
    Metadata,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Off => "off",
            Op::On => "on",
            Op::Status => "status",
            Op::Monitor => "monitor",
            Op::Metadata => "metadata",
        }
    }
}

impl From<AgentAction> for Op {
    fn from(a: AgentAction) -> Self {
        match a {
            AgentAction::Off => Op::Off,
            AgentAction::On => Op::On,
            AgentAction::Status => Op::Status,
        }
    }
}

/// What one call did.
#[derive(Debug, Clone)]
pub struct Call {
    /// Exit code (`None`: killed at the timeout, or could not be started).
    pub code: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// How long it ran.
    pub elapsed: Duration,
    /// The tail of its stdout and stderr, secrets masked.
    pub output: String,
    /// Stdout (only kept for `metadata`).
    pub stdout: String,
}

/// Why an agent level cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Secrets file problem.
    #[error("agents.{level}.secrets_file {path}: {rule}")]
    Secrets {
        /// Level name.
        level: String,
        /// File.
        path: String,
        /// What is wrong and how to fix it.
        rule: String,
    },
    /// A secret environment variable is not set.
    #[error(
        "agents.{level}.secret_env.{param}: environment variable {var} is not set; export it in the daemon's environment (e.g. a systemd EnvironmentFile with mode 0600)"
    )]
    Env {
        /// Level name.
        level: String,
        /// Parameter.
        param: String,
        /// Variable.
        var: String,
    },
    /// A secret environment variable holds a line break or NUL.
    #[error(
        "agents.{level}.secret_env.{param}: environment variable {var} holds a line break or NUL; it would reach the fence agent as lines of its own (a second action= line, say). Set it to one line"
    )]
    EnvNotOneLine {
        /// Level name.
        level: String,
        /// Parameter.
        param: String,
        /// Variable.
        var: String,
    },
    /// `metadata` failed.
    #[error(
        "agents.{level}.command {command:?}: `action=metadata` failed ({why}); is the agent installed (Debian: fence-agents)?"
    )]
    Metadata {
        /// Level name.
        level: String,
        /// Command.
        command: String,
        /// What happened.
        why: String,
    },
    /// A configured parameter the agent does not know.
    #[error(
        "{field}: the agent {command:?} has no parameter {param:?} (its metadata lists: {known}); fix the name or remove it"
    )]
    UnknownParam {
        /// Where it was configured.
        field: String,
        /// The parameter.
        param: String,
        /// Command.
        command: String,
        /// What the agent knows.
        known: String,
    },
}

/// One agent level, ready to run: its configuration and its secrets.
pub struct Agent {
    /// Configuration.
    pub cfg: AgentLevelConfig,
    /// Secrets for every host.
    common: BTreeMap<String, Secret>,
    /// Secrets per host.
    per_host: BTreeMap<String, BTreeMap<String, Secret>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("level", &self.cfg.name)
            .field("command", &self.cfg.command)
            .finish_non_exhaustive()
    }
}

/// Secrets for every host, and per host.
type SecretMaps = (
    BTreeMap<String, Secret>,
    BTreeMap<String, BTreeMap<String, Secret>>,
);

/// Reads a file that holds `what` (passwords, a token): it must not be readable by group or
/// others. `Err` is the rule broken and how to fix it, never the file's content.
pub(super) fn read_private_file(path: &Path, what: &str) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "has mode {mode:04o}; it holds {what}, so it must not be readable by others: chmod 600 {}",
            path.display()
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot be read: {e}"))
}

/// Whether `value` can go on an agent's stdin as one `name=value` line: a line break would add
/// lines of its own (`x\naction=reboot`: fence_ipmilan obeys the *last* `action=`), a NUL ends
/// the value early in a C agent.
fn one_line(value: &str) -> bool {
    !value.contains(['\n', '\r', '\0'])
}

/// Reads a secrets file: `name=value` or `HOST.name=value` lines, `#` comments. It must not be
/// readable by group or others. `HOST` may hold dots (`kvm1.example.com.password`): parameter
/// names never do, so the name is what follows the last one.
fn read_secrets_file(level: &str, path: &Path) -> Result<SecretMaps, AgentError> {
    let err = |rule: String| AgentError::Secrets {
        level: level.into(),
        path: path.display().to_string(),
        rule,
    };
    let text = read_private_file(path, "passwords").map_err(err)?;
    let mut common = BTreeMap::new();
    let mut per_host: BTreeMap<String, BTreeMap<String, Secret>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Never echo the line: it holds a secret.
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(format!(
                "line {}: expected name=value or HOST.name=value",
                n + 1
            )));
        };
        let (host, name) = match key.trim().rsplit_once('.') {
            Some((h, k)) => (Some(h.to_owned()), k.to_owned()),
            None => (None, key.trim().to_owned()),
        };
        if name == "action" || name == "option" || !super::config::valid_param_name(&name) {
            return Err(err(format!(
                "line {}: {name:?} is not a secret parameter (lowercase letters, digits, '_' or '-'; not action or option)",
                n + 1
            )));
        }
        if !one_line(value) {
            return Err(err(format!(
                "line {}: the value of {name} holds a carriage return or NUL; it would reach the agent as a line of its own. Remove it",
                n + 1
            )));
        }
        let v = Secret(value.trim().to_owned());
        match host {
            Some(h) => {
                per_host.entry(h).or_default().insert(name, v);
            }
            None => {
                common.insert(name, v);
            }
        }
    }
    Ok((common, per_host))
}

/// What `check-config` can judge of a level's secrets where it runs: a secrets file that is
/// there must be private and well-formed (as `run` requires); a missing file or an unset
/// variable is reported as a note (the daemon's host and environment may differ).
pub fn check_secrets(cfg: &AgentLevelConfig) -> Result<Vec<String>, AgentError> {
    let mut notes = Vec::new();
    if let Some(f) = &cfg.secrets.file {
        if f.exists() {
            read_secrets_file(&cfg.name, f)?;
        } else {
            notes.push(format!(
                "agents.{}.secrets_file {}: not found here; `run` needs it (mode 0600)",
                cfg.name,
                f.display()
            ));
        }
    }
    for (param, var) in &cfg.secrets.env {
        match std::env::var(var) {
            Ok(v) if !one_line(&v) => {
                return Err(AgentError::EnvNotOneLine {
                    level: cfg.name.clone(),
                    param: param.clone(),
                    var: var.clone(),
                });
            }
            Ok(_) => {}
            Err(_) => notes.push(format!(
                "agents.{}.secret_env.{param}: {var} is not set here; `run` needs it in the daemon's environment",
                cfg.name
            )),
        }
    }
    Ok(notes)
}

impl Agent {
    /// Loads the level's secrets (file and environment).
    pub fn load(cfg: AgentLevelConfig) -> Result<Agent, AgentError> {
        Self::load_with(cfg, |var| std::env::var(var).ok())
    }

    /// [`Agent::load`] with the environment given (tests cannot set variables safely).
    fn load_with(
        cfg: AgentLevelConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Agent, AgentError> {
        let (mut common, per_host) = match &cfg.secrets.file {
            Some(f) => read_secrets_file(&cfg.name, f)?,
            None => Default::default(),
        };
        for (param, var) in &cfg.secrets.env {
            let v = env(var).ok_or_else(|| AgentError::Env {
                level: cfg.name.clone(),
                param: param.clone(),
                var: var.clone(),
            })?;
            if !one_line(&v) {
                return Err(AgentError::EnvNotOneLine {
                    level: cfg.name.clone(),
                    param: param.clone(),
                    var: var.clone(),
                });
            }
            common.insert(param.clone(), Secret(v));
        }
        Ok(Agent {
            cfg,
            common,
            per_host,
        })
    }

    /// Every secret value, to mask them in output.
    fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.common
            .values()
            .chain(self.per_host.values().flat_map(|m| m.values()))
            .map(|s| s.0.as_str())
            .filter(|s| s.len() >= 3)
    }

    /// The stdin of one call: the action first, then the parameters (host ones override).
    /// `Err` names a parameter whose value is not one line: every source is checked when it is
    /// loaded, and this is the last check before anything reaches the agent.
    fn stdin(&self, host: Option<&str>, op: Op) -> Result<String, String> {
        let mut params: BTreeMap<&str, &str> = BTreeMap::new();
        for (k, v) in &self.cfg.params {
            params.insert(k, v);
        }
        for (k, v) in &self.common {
            params.insert(k, &v.0);
        }
        if let Some(h) = host {
            if let Some(hp) = self.cfg.hosts.get(h) {
                for (k, v) in hp {
                    params.insert(k, v);
                }
            }
            if let Some(hs) = self.per_host.get(h) {
                for (k, v) in hs {
                    params.insert(k, &v.0);
                }
            }
        }
        let mut text = format!("action={}\n", op.as_str());
        for (k, v) in params {
            if !one_line(k) || !one_line(v) || k.contains('=') {
                return Err(format!(
                    "refused to run the agent: parameter {:?} is not one name=value line (a line break or NUL in it would add lines to the agent's stdin)",
                    k.replace(['\n', '\r', '\0'], "?")
                ));
            }
            text.push_str(k);
            text.push('=');
            text.push_str(v);
            text.push('\n');
        }
        Ok(text)
    }

    /// Masks every secret value in `text` and keeps its tail.
    fn mask(&self, text: &str) -> String {
        let mut t = text.to_owned();
        for s in self.secret_values() {
            t = t.replace(s, "********");
        }
        output_tail(&t)
    }

    /// Runs one call, killing the agent's process group at `timeout`.
    pub async fn call(&self, host: Option<&str>, op: Op, timeout: Duration) -> Call {
        let started = Instant::now();
        let Some((program, args)) = self.cfg.command.split_first() else {
            return Call {
                code: None,
                timed_out: false,
                elapsed: started.elapsed(),
                output: "no command configured".into(),
                stdout: String::new(),
            };
        };
        let input = match self.stdin(host, op) {
            Ok(text) => text,
            Err(why) => {
                tracing::error!(level = %self.cfg.name, "{why}");
                return Call {
                    code: None,
                    timed_out: false,
                    elapsed: started.elapsed(),
                    output: why,
                    stdout: String::new(),
                };
            }
        };
        let mut cmd = tokio::process::Command::new(program);
        // Python agents print a DeprecationWarning on every run otherwise.
        cmd.args(args).env("PYTHONWARNINGS", "ignore");
        let run = run_bounded(cmd, input.into_bytes(), timeout).await;
        let output = match &run.error {
            Some(why) => why.clone(),
            None if run.timed_out => format!("killed after {timeout:?}"),
            None => self.mask(&format!("{}\n{}", run.stdout, run.stderr)),
        };
        Call {
            code: run.code,
            timed_out: run.timed_out,
            elapsed: run.elapsed,
            output,
            stdout: if op == Op::Metadata && run.error.is_none() {
                run.stdout
            } else {
                String::new()
            },
        }
    }

    /// Carries out one fence command within `budget`: `off`/`on` with retries while a whole
    /// `action_timeout` is left, `status` once.
    pub async fn fence_action(&self, host: &str, action: AgentAction, budget: Duration) -> Outcome {
        let started = Instant::now();
        let op = Op::from(action);
        let mut tries = 0u8;
        loop {
            let left = budget.saturating_sub(started.elapsed());
            let call = self
                .call(Some(host), op, self.cfg.action_timeout.min(left))
                .await;
            tries += 1;
            let result = match (op, call.code) {
                (Op::Status, Some(0)) => AgentResult::Power(PowerState::On),
                (Op::Status, Some(2)) => AgentResult::Power(PowerState::Off),
                (Op::Off | Op::On, Some(0)) => AgentResult::Done,
                _ if call.timed_out => AgentResult::TimedOut,
                _ => AgentResult::Failed,
            };
            let done = matches!(result, AgentResult::Done | AgentResult::Power(_));
            let left = budget.saturating_sub(started.elapsed());
            let may_retry = matches!(op, Op::Off | Op::On)
                && tries <= self.cfg.retries
                && left >= self.cfg.action_timeout;
            if done || !may_retry {
                return Outcome {
                    result,
                    tries,
                    last: call,
                };
            }
            tracing::warn!(level = %self.cfg.name, host, action = op.as_str(), code = ?call.code,
                output = %call.output, "fence agent failed; retrying while time is left");
        }
    }

    /// Runs `metadata` and rejects configured parameters the agent does not know.
    pub async fn check_metadata(&self) -> Result<BTreeSet<String>, AgentError> {
        let call = self.call(None, Op::Metadata, self.cfg.action_timeout).await;
        let command = self.cfg.command.join(" ");
        if call.code != Some(0) {
            return Err(AgentError::Metadata {
                level: self.cfg.name.clone(),
                command,
                why: if call.timed_out {
                    format!("no answer within {:?}", self.cfg.action_timeout)
                } else {
                    format!("exit {:?}: {}", call.code, call.output)
                },
            });
        }
        let known = parameter_names(&call.stdout).map_err(|why| AgentError::Metadata {
            level: self.cfg.name.clone(),
            command: command.clone(),
            why,
        })?;
        let level = &self.cfg.name;
        let mut configured: Vec<(String, &str)> = Vec::new();
        for k in self.cfg.params.keys() {
            configured.push((format!("agents.{level}.params.{k}"), k));
        }
        for (h, ps) in &self.cfg.hosts {
            for k in ps.keys() {
                configured.push((format!("agents.{level}.hosts.{h}.{k}"), k));
            }
        }
        for k in self.common.keys() {
            configured.push((format!("agents.{level} secret {k:?}"), k));
        }
        for (h, ps) in &self.per_host {
            for k in ps.keys() {
                configured.push((format!("agents.{level} secret {h}.{k}"), k));
            }
        }
        for (field, k) in configured {
            if !known.contains(k) {
                return Err(AgentError::UnknownParam {
                    field,
                    param: k.to_owned(),
                    command,
                    known: known.iter().cloned().collect::<Vec<_>>().join(", "),
                });
            }
        }
        Ok(known)
    }
}

/// What a child process run by [`run_bounded`] did.
#[derive(Debug, Clone, Default)]
pub(super) struct Finished {
    /// Exit code (`None`: killed at the timeout or by a signal, or never started).
    pub code: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// How long it ran.
    pub elapsed: Duration,
    /// Its stdout (lossy UTF-8), whole: callers keep what they need.
    pub stdout: String,
    /// Its stderr (lossy UTF-8).
    pub stderr: String,
    /// It could not be started or waited for, and why.
    pub error: Option<String>,
}

/// Runs `cmd` (program, arguments and environment already set) with `input` on its stdin, in a
/// process group of its own, and kills that whole group at `timeout`: fence agents and hooks
/// start helpers (`ipmitool`, `curl`...) that must not outlive them. Shared by fence agents and
/// exec hooks.
#[allow(unsafe_code)]
pub(super) async fn run_bounded(
    mut cmd: tokio::process::Command,
    input: Vec<u8>,
    timeout: Duration,
) -> Finished {
    let started = Instant::now();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let program = cmd.as_std().get_program().to_string_lossy().into_owned();
            return Finished {
                elapsed: started.elapsed(),
                error: Some(format!("cannot start {program:?}: {e}")),
                ..Finished::default()
            };
        }
    };
    let pid = child.id();
    let mut stdin = child.stdin.take();
    let run = async move {
        if let Some(s) = stdin.as_mut() {
            // A program that does not read its stdin is its own business; the exit code counts.
            let _ = s.write_all(&input).await;
            let _ = s.shutdown().await;
        }
        drop(stdin);
        child.wait_with_output().await
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(out)) => Finished {
            code: out.status.code(),
            timed_out: false,
            elapsed: started.elapsed(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            error: None,
        },
        Ok(Err(e)) => Finished {
            elapsed: started.elapsed(),
            error: Some(format!("waiting for the process failed: {e}")),
            ..Finished::default()
        },
        Err(_) => {
            if let Some(pid) = pid {
                // SAFETY: kill(2) on a process group we created; no memory is involved.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
            Finished {
                timed_out: true,
                elapsed: started.elapsed(),
                ..Finished::default()
            }
        }
    }
}

/// The last [`OUTPUT_KEEP`] bytes of `text`, trimmed, cut on a character boundary: enough to
/// see why a program failed without letting a chatty one fill the log.
pub(super) fn output_tail(text: &str) -> String {
    let t = text.trim();
    if t.len() > OUTPUT_KEEP {
        let mut cut = t.len() - OUTPUT_KEEP;
        while !t.is_char_boundary(cut) {
            cut += 1;
        }
        format!("...{}", &t[cut..])
    } else {
        t.to_owned()
    }
}

/// The names of `<parameter name="...">` elements in an agent's metadata.
pub fn parameter_names(xml: &str) -> Result<BTreeSet<String>, String> {
    use quick_xml::events::Event as X;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut names = BTreeSet::new();
    loop {
        match reader.read_event() {
            Ok(X::Start(e) | X::Empty(e)) if e.name().as_ref() == b"parameter" => {
                for a in e.attributes().flatten() {
                    if a.key.as_ref() == b"name" {
                        names.insert(String::from_utf8_lossy(&a.value).into_owned());
                    }
                }
            }
            Ok(X::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("its metadata is not XML: {e}")),
        }
    }
    if names.is_empty() {
        return Err("its metadata lists no parameters".into());
    }
    Ok(names)
}

/// A fence command's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// For the core.
    pub result: AgentResult,
    /// Calls made.
    pub tries: u8,
    /// The last call.
    pub last: Call,
}

/// Starts the periodic `monitor` (every level with an interval) and power `status` (the first
/// agent level) of every host. Results go to the node as inputs.
pub fn spawn_periodic(
    agents: Arc<Vec<Option<Agent>>>,
    names: Vec<String>,
    me: MemberId,
    tx: Sender<Msg>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PERIODIC_CONCURRENCY));
    for (i, a) in agents.iter().enumerate() {
        let Some(a) = a else { continue };
        if let Some(every) = a.cfg.monitor_interval {
            let (agents, names, tx, slots) =
                (agents.clone(), names.clone(), tx.clone(), slots.clone());
            tokio::spawn(async move {
                let mut last: BTreeMap<usize, bool> = BTreeMap::new();
                loop {
                    for (m, host) in names.iter().enumerate() {
                        let Some(Some(a)) = agents.get(i) else { return };
                        let Ok(_slot) = slots.acquire().await else {
                            return;
                        };
                        let call = a.call(Some(host), Op::Monitor, a.cfg.action_timeout).await;
                        let ok = call.code == Some(0);
                        if last.insert(m, ok) != Some(ok) {
                            if ok {
                                tracing::info!(level = %a.cfg.name, host, "fence device answers monitor");
                            } else {
                                tracing::warn!(level = %a.cfg.name, host, code = ?call.code, timed_out = call.timed_out,
                                    output = %call.output, "fence device monitor failed: this host could not be fenced by this level now");
                            }
                        }
                        let input = Input::FenceDevice {
                            member: MemberId(m as u16),
                            level: a.cfg.level,
                            ok,
                        };
                        if tx.send(Msg::Input(input)).await.is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(every).await;
                }
            });
        }
        if let Some(every) = a.cfg.power_status_interval {
            let (agents, names, tx, slots) =
                (agents.clone(), names.clone(), tx.clone(), slots.clone());
            tokio::spawn(async move {
                loop {
                    for (m, host) in names.iter().enumerate() {
                        if m == me.index() {
                            continue;
                        }
                        let Some(Some(a)) = agents.get(i) else { return };
                        let Ok(_slot) = slots.acquire().await else {
                            return;
                        };
                        let call = a.call(Some(host), Op::Status, a.cfg.action_timeout).await;
                        let state = match call.code {
                            Some(0) => PowerState::On,
                            Some(2) => PowerState::Off,
                            _ => PowerState::Unknown,
                        };
                        let input = Input::PowerStatus {
                            member: MemberId(m as u16),
                            state,
                        };
                        if tx.send(Msg::Input(input)).await.is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(every).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::SecretSources;

    fn level(command: Vec<String>) -> AgentLevelConfig {
        AgentLevelConfig {
            level: 0,
            name: "ipmi".into(),
            command,
            params: [("lanplus".to_owned(), "1".to_owned())].into(),
            hosts: [(
                "kvm01".to_owned(),
                [("ip".to_owned(), "10.0.0.21".to_owned())].into(),
            )]
            .into(),
            secrets: SecretSources::default(),
            action_timeout: Duration::from_secs(5),
            retries: 1,
            monitor_interval: None,
            power_status_interval: None,
        }
    }

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pf-fence-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn stdin_starts_with_the_action_and_host_values_override() {
        let mut a = Agent::load(level(vec!["x".into()])).unwrap();
        a.common
            .insert("password".into(), Secret("hunter22".into()));
        let text = a.stdin(Some("kvm01"), Op::Off).unwrap();
        assert!(text.starts_with("action=off\n"), "{text}");
        assert!(text.contains("ip=10.0.0.21\n"));
        assert!(text.contains("lanplus=1\n"));
        assert!(text.contains("password=hunter22\n"));
        assert!(!text.contains("option="));
        assert_eq!(
            a.mask("Failed: password hunter22 rejected"),
            "Failed: password ******** rejected"
        );
        assert!(!format!("{a:?}").contains("hunter22"));
    }

    #[test]
    fn secrets_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("secrets");
        let f = d.join("ipmi.secrets");
        std::fs::write(&f, "# comment\npassword=s3cret\nkvm01.password=other\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secrets_file("ipmi", &f).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("s3cret"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (common, per_host) = read_secrets_file("ipmi", &f).unwrap();
        assert_eq!(common["password"].0, "s3cret");
        assert_eq!(per_host["kvm01"]["password"].0, "other");
        std::fs::write(&f, "action=reboot\n").unwrap();
        assert!(read_secrets_file("ipmi", &f).is_err());
        // A dotted member name keeps its dots: the parameter is after the last one.
        std::fs::write(&f, "kvm1.example.com.password=p4ss\n").unwrap();
        let (_, per_host) = read_secrets_file("ipmi", &f).unwrap();
        assert_eq!(per_host["kvm1.example.com"]["password"].0, "p4ss");
        // A carriage return or NUL inside a value is refused, never echoed.
        for bad in ["password=x\raction=reboot\n", "password=x\0y\n"] {
            std::fs::write(&f, bad).unwrap();
            let err = read_secrets_file("ipmi", &f).unwrap_err().to_string();
            assert!(err.contains("carriage return or NUL"), "{err}");
            assert!(!err.contains("reboot"), "{err}");
        }
        std::fs::remove_dir_all(&d).ok();
    }

    /// Issue 11: a secret from the environment with a line break would add an `action=` line
    /// that `fence_ipmilan` obeys (it takes the last one). Refused at load, and again at the
    /// stdin write whatever the source.
    #[test]
    fn a_value_with_a_line_break_never_reaches_an_agent() {
        let mut cfg = level(vec!["x".into()]);
        cfg.secrets.env = [("password".to_owned(), "IPMI_PASSWORD".to_owned())].into();
        let err = Agent::load_with(cfg, |_| Some("x\naction=reboot".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line break or NUL"), "{err}");
        assert!(!err.contains("reboot"), "{err}");
        let mut a = Agent::load(level(vec!["x".into()])).unwrap();
        a.common
            .insert("password".into(), Secret("x\naction=reboot".into()));
        let err = a.stdin(Some("kvm01"), Op::Off).unwrap_err();
        assert!(err.contains("\"password\""), "{err}");
    }

    #[test]
    fn metadata_parameters_are_read() {
        let xml = r#"<?xml version="1.0" ?>
<resource-agent name="fence_x" shortdesc="x">
<parameters>
  <parameter name="action" unique="0"><getopt mixed="-o"/></parameter>
  <parameter name="ip" unique="0" required="1"><content type="string"/></parameter>
  <parameter name="lanplus"/>
</parameters>
</resource-agent>"#;
        let names = parameter_names(xml).unwrap();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            vec!["action", "ip", "lanplus"]
        );
        assert!(parameter_names("<a><b></a>").is_err());
        assert!(parameter_names("<resource-agent/>").is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_that_hangs_is_killed_at_its_timeout_and_exit_codes_map() {
        let d = scratch("codes");
        let script = d.join("agent.sh");
        // Records its stdin; the action decides the exit code; "off" hangs.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncat > {}/stdin.txt\ncase \"$(head -1 {}/stdin.txt)\" in\n action=status) exit 2;;\n action=off) sleep 30;;\n *) exit 1;;\nesac\n",
                d.display(),
                d.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cfg = level(vec![script.display().to_string()]);
        cfg.action_timeout = Duration::from_millis(500);
        cfg.retries = 3;
        let a = Agent::load(cfg).unwrap();
        let st = a
            .fence_action("kvm01", AgentAction::Status, Duration::from_secs(5))
            .await;
        assert_eq!(st.result, AgentResult::Power(PowerState::Off));
        let stdin = std::fs::read_to_string(d.join("stdin.txt")).unwrap();
        assert!(stdin.starts_with("action=status\n"));
        // Off hangs: killed at 500 ms per try; retried only while a whole try fits in 1.2 s.
        let off = a
            .fence_action("kvm01", AgentAction::Off, Duration::from_millis(1200))
            .await;
        assert_eq!(off.result, AgentResult::TimedOut);
        assert_eq!(off.tries, 2);
        let on = a
            .fence_action("kvm01", AgentAction::On, Duration::from_secs(5))
            .await;
        assert_eq!(on.result, AgentResult::Failed);
        std::fs::remove_dir_all(&d).ok();
    }
}
