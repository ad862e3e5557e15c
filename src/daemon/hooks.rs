//! Event hooks: tell other systems what happened, without ever slowing the fencing down.
//!
//! `[[hooks.exec]]` runs a program and `[[hooks.webhook]]` POSTs JSON for a chosen set of
//! events (fence confirmed, safe to recover, storm...). The point is integration: a cloud
//! controller (CloudStack, OpenStack) may restart a host's VMs elsewhere once `safe_to_recover`
//! says the host is certainly dead. docs/HOOKS.md is the operator's side of this module.
//!
//! Shape, and why:
//!
//! ```text
//!  node task ── publish ──► EventLog ── broadcast (256) ──► dispatcher ── try_send ──► queue per hook ──► worker
//!                                                          (never waits)              (bounded)          (one event at a time)
//! ```
//!
//! * The node's task only publishes to the event log, which never waits for anybody. The one
//!   dispatcher never waits either: it offers each event to each interested hook's bounded queue
//!   and drops it for that hook when the queue is full. A hook that hangs or a webhook receiver
//!   that is down therefore costs its own events, nothing else.
//! * If the dispatcher itself falls behind the broadcast channel (it lags), it takes the missed
//!   events back from the log's replay buffer; only what fell out of that buffer too is lost,
//!   and counted as dropped for every hook (their kinds are unknown by then).
//! * Each hook's worker delivers its events one at a time in event order: an exec hook runs its
//!   program in a process group of its own, killed at the hook's timeout; a webhook retries with
//!   exponential back-off and then gives up. Delivery is at most once, per node: nothing is
//!   stored across restarts, and every member fires its own hooks for what it saw.
//! * Secrets: a webhook's bearer token is read from a 0600 file when an event is delivered (so a
//!   rotated token is picked up), sent only in the `Authorization` header and never logged.
//!   Exec hooks start with an empty environment plus `PATH`: the daemon's own environment may
//!   hold fence-agent passwords (`secret_env`), which hooks have no business seeing.
#![allow(clippy::disallowed_methods)]

use super::config::{Problems, Secret};
use super::events::{ApiEvent, EventLog};
use super::fence::{output_tail, read_private_file, run_bounded};
use crate::config::fmt_duration;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

/// The event kinds a hook may subscribe to: the ones an operator or a cloud controller acts on.
/// The others (`swim_changed`, `voted`...) are too many and too internal to promise as an
/// interface; `GET /v1/events` has them all.
pub const HOOK_EVENTS: &[&str] = &[
    "suspect",
    "partitioned",
    "unmanageable",
    "fencing",
    "fenced",
    "safe_to_recover",
    "fence_failed",
    "storm_entered",
    "storm_left",
    "self_fence",
    "disarmed",
    "armed",
    "maintenance",
];

/// Longest timeout of one exec run or one webhook try: a hook is a notification, not a job.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Most webhook retries after the first try.
const MAX_RETRIES: u32 = 10;
/// Largest queue per hook.
const MAX_QUEUE: usize = 4096;
/// Longest wait between two webhook tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// `PATH` of exec hooks when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where distributions keep the system's CA bundle, for `https://` webhooks without `ca_file`
/// (Debian/Ubuntu/Alpine/Arch, RHEL/Fedora, SUSE, others).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// `[hooks]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    /// `[[hooks.exec]]`.
    #[serde(default)]
    pub exec: Vec<RawExecHook>,
    /// `[[hooks.webhook]]`.
    #[serde(default)]
    pub webhook: Vec<RawWebhook>,
}

/// One `[[hooks.exec]]`: a program run once per event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExecHook {
    /// Name for logs and stats; unique among all hooks.
    pub name: String,
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    /// Event kinds, from [`HOOK_EVENTS`].
    pub events: Vec<String>,
    /// Time allowed for one run. Default `"10s"`, at most 5 min.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Extra environment variables (not secrets: the configuration is not secret).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Events waiting for this hook at most. Default 64, at most 4096.
    #[serde(default)]
    pub queue: Option<usize>,
}

/// One `[[hooks.webhook]]`: a JSON POST per event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// Name for logs and stats; unique among all hooks.
    pub name: String,
    /// `http://` or `https://` URL.
    pub url: String,
    /// Event kinds, from [`HOOK_EVENTS`].
    pub events: Vec<String>,
    /// Time allowed for one try. Default `"5s"`, at most 5 min.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Tries after the first one. Default 3, at most 10.
    #[serde(default)]
    pub retries: Option<u32>,
    /// A file (mode 0600) holding a token sent as `Authorization: Bearer`.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// `https://` only: trust this CA (PEM) instead of the system's CA bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Events waiting for this hook at most. Default 64, at most 4096.
    #[serde(default)]
    pub queue: Option<usize>,
}

/// A validated `[[hooks.exec]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecHook {
    /// Name.
    pub name: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Event kinds.
    pub events: Vec<&'static str>,
    /// Time allowed for one run.
    pub timeout: Duration,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Queue capacity.
    pub queue: usize,
}

/// A validated `[[hooks.webhook]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Name.
    pub name: String,
    /// URL.
    pub url: String,
    /// Event kinds.
    pub events: Vec<&'static str>,
    /// Time allowed for one try.
    pub timeout: Duration,
    /// Tries after the first.
    pub retries: u32,
    /// Bearer token file.
    pub bearer_token_file: Option<PathBuf>,
    /// CA for `https://` (else the system's bundle).
    pub ca_file: Option<PathBuf>,
    /// Queue capacity.
    pub queue: usize,
}

/// Validated `[hooks]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HooksConfig {
    /// Exec hooks.
    pub exec: Vec<ExecHook>,
    /// Webhooks.
    pub webhook: Vec<Webhook>,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn valid_env_name(n: &str) -> bool {
    let mut b = n.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Checks one hook's event list; the known names as `&'static str`.
fn events(p: &mut Problems, field: &str, raw: &[String]) -> Vec<&'static str> {
    if raw.is_empty() {
        p.err(
            field,
            "[]",
            format!("must list at least one event: {}", HOOK_EVENTS.join(", ")),
        );
    }
    let mut out: Vec<&'static str> = Vec::new();
    for e in raw {
        match HOOK_EVENTS.iter().find(|k| **k == e.as_str()) {
            Some(k) if !out.contains(k) => out.push(k),
            Some(_) => {}
            None => p.err(
                field,
                format!("{e:?}"),
                format!("is not a hook event; one of {}", HOOK_EVENTS.join(", ")),
            ),
        }
    }
    out
}

/// Checks a timeout: a duration (as everywhere) and at most [`MAX_TIMEOUT`].
fn timeout(p: &mut Problems, field: &str, raw: &Option<String>, default: &str) -> Duration {
    let d = p.duration(field, raw, default);
    if d > MAX_TIMEOUT {
        p.err(
            field,
            format!("{:?}", fmt_duration(d)),
            "must be at most 5min: a hook is a notification; start long work in the background",
        );
    }
    d
}

fn queue(p: &mut Problems, field: &str, raw: Option<usize>) -> usize {
    let q = raw.unwrap_or(64);
    if q == 0 || q > MAX_QUEUE {
        p.err(field, q, format!("must be from 1 to {MAX_QUEUE}"));
    }
    q.clamp(1, MAX_QUEUE)
}

/// Checks a webhook URL; whether it is `https://`.
fn url(p: &mut Problems, field: &str, text: &str) -> bool {
    let shown = format!("{text:?}");
    let Ok(uri) = text.parse::<ureq::http::Uri>() else {
        p.err(
            field,
            shown,
            "is not a URL; write it like \"http://10.0.0.5:8080/peerfence\"",
        );
        return false;
    };
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            p.err(field, shown, "must start with http:// or https://");
            return false;
        }
    };
    match uri.authority() {
        None => p.err(
            field,
            shown,
            "must name a host, e.g. \"http://10.0.0.5:8080/peerfence\"",
        ),
        Some(a) if a.as_str().contains('@') => p.err(
            field,
            "(a URL with credentials)",
            "must not hold credentials (they would show in logs); put a token in bearer_token_file",
        ),
        Some(_) => {}
    }
    https
}

impl RawHooks {
    /// Validates every hook; problems go to `p`.
    pub(super) fn validate(&self, p: &mut Problems) -> HooksConfig {
        let mut names: Vec<String> = Vec::new();
        let mut check_name = |p: &mut Problems, field: &str, n: &str| {
            if !valid_name(n) {
                p.err(
                    field,
                    format!("{n:?}"),
                    "must be 1 to 64 letters, digits, '.', '_' or '-'",
                );
            } else if names.iter().any(|m| m == n) {
                p.err(field, format!("{n:?}"), "is the name of another hook");
            }
            names.push(n.to_owned());
        };
        let mut out = HooksConfig::default();
        for (i, h) in self.exec.iter().enumerate() {
            let f = format!("hooks.exec[{i}]");
            check_name(p, &format!("{f}.name"), &h.name);
            if h.command.first().is_none_or(|c| c.is_empty()) {
                p.err(
                    &format!("{f}.command"),
                    format!("{:?}", h.command),
                    "must name a program, e.g. [\"/usr/local/bin/pf-hook\"] (no shell)",
                );
            }
            for (k, v) in &h.env {
                if !valid_env_name(k) || k.starts_with("PEERFENCE_") || k == "PATH" {
                    p.err(
                        &format!("{f}.env.{k}"),
                        format!("{k:?}"),
                        "must be a variable name (letters, digits, '_'), not PATH and not PEERFENCE_* (set by peerfence)",
                    );
                }
                if v.contains('\0') {
                    p.err(
                        &format!("{f}.env.{k}"),
                        "(value with a NUL byte)",
                        "must be text without NUL",
                    );
                }
            }
            out.exec.push(ExecHook {
                name: h.name.clone(),
                command: h.command.clone(),
                events: events(p, &format!("{f}.events"), &h.events),
                timeout: timeout(p, &format!("{f}.timeout"), &h.timeout, "10s"),
                env: h.env.clone(),
                queue: queue(p, &format!("{f}.queue"), h.queue),
            });
        }
        for (i, h) in self.webhook.iter().enumerate() {
            let f = format!("hooks.webhook[{i}]");
            check_name(p, &format!("{f}.name"), &h.name);
            let https = url(p, &format!("{f}.url"), &h.url);
            let retries = h.retries.unwrap_or(3);
            if retries > MAX_RETRIES {
                p.err(
                    &format!("{f}.retries"),
                    retries,
                    format!("must be at most {MAX_RETRIES} (tries after the first; back-off 1s, 2s, 4s ... up to 30s)"),
                );
            }
            if h.ca_file.is_some() && !https {
                p.err(
                    &format!("{f}.ca_file"),
                    format!(
                        "{:?}",
                        h.ca_file.as_deref().unwrap_or(Path::new("")).display()
                    ),
                    "is only used with an https:// url; remove it or use https://",
                );
            }
            if h.bearer_token_file
                .as_ref()
                .is_some_and(|t| t.as_os_str().is_empty())
            {
                p.err(
                    &format!("{f}.bearer_token_file"),
                    "\"\"",
                    "must name a file (mode 0600), or be left out",
                );
            }
            out.webhook.push(Webhook {
                name: h.name.clone(),
                url: h.url.clone(),
                events: events(p, &format!("{f}.events"), &h.events),
                timeout: timeout(p, &format!("{f}.timeout"), &h.timeout, "5s"),
                retries: retries.min(MAX_RETRIES),
                bearer_token_file: h.bearer_token_file.clone(),
                ca_file: h.ca_file.clone(),
                queue: queue(p, &format!("{f}.queue"), h.queue),
            });
        }
        out
    }
}

impl HooksConfig {
    /// One line per hook for the start-up log and `check-config` (never the token or the URL's
    /// query, which may hold one).
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for h in &self.exec {
            lines.push(format!(
                "exec hook {} runs {:?} on {} (timeout {}, queue {})",
                h.name,
                h.command.join(" "),
                h.events.join(", "),
                fmt_duration(h.timeout),
                h.queue
            ));
        }
        for h in &self.webhook {
            lines.push(format!(
                "webhook {} posts to {} on {} (timeout {}, {} retries, queue {}{})",
                h.name,
                url_for_logs(&h.url),
                h.events.join(", "),
                fmt_duration(h.timeout),
                h.retries,
                h.queue,
                if h.bearer_token_file.is_some() {
                    ", bearer token"
                } else {
                    ""
                }
            ));
        }
        lines
    }
}

/// The URL without its query (which may hold a token).
fn url_for_logs(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// Wait before retry number `retry` (0 for the first retry): 1 s, 2 s, 4 s ... at most 30 s.
pub fn backoff(retry: u32) -> Duration {
    Duration::from_secs(1u64 << retry.min(5)).min(MAX_BACKOFF)
}

/// One hook's counters; read by [`Hooks::stats`].
#[derive(Default)]
struct Stats {
    /// Events delivered (exit 0, or a 2xx answer).
    delivered: AtomicU64,
    /// Events given up on (exit code, timeout, no 2xx after every try).
    failed: AtomicU64,
    /// Events never handed to the hook: its queue was full, or the dispatcher lost them.
    dropped: AtomicU64,
    /// The last failure, for people (never a secret).
    last_error: Mutex<Option<String>>,
}

impl Stats {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }
}

/// One event, ready to deliver: the event and its JSON document (built once for every hook).
struct Delivery {
    event: Arc<ApiEvent>,
    cluster: Arc<str>,
    /// `ApiEvent` plus `cluster`, as one JSON object.
    document: String,
}

impl Delivery {
    fn new(event: &Arc<ApiEvent>, cluster: &Arc<str>) -> Self {
        let mut doc = serde_json::to_value(&**event).unwrap_or_else(|_| json!({}));
        if let Some(o) = doc.as_object_mut() {
            o.insert("cluster".into(), Value::from(&**cluster));
        }
        Delivery {
            event: event.clone(),
            cluster: cluster.clone(),
            document: doc.to_string(),
        }
    }

    /// The `PEERFENCE_*` variables of an exec hook.
    fn env(&self) -> Vec<(&'static str, String)> {
        let e = &self.event;
        vec![
            ("PEERFENCE_EVENT", e.kind.to_owned()),
            ("PEERFENCE_SEQ", e.seq.to_string()),
            ("PEERFENCE_TIME", e.time.clone()),
            ("PEERFENCE_NODE", e.node.clone()),
            ("PEERFENCE_MEMBER", e.member.clone().unwrap_or_default()),
            ("PEERFENCE_MESSAGE", e.message.clone()),
            ("PEERFENCE_CLUSTER", self.cluster.to_string()),
            // The boot a fence was about: with the member and the kind, the key receivers
            // dedupe on (every member fires its own hooks).
            (
                "PEERFENCE_BOOT",
                e.details["boot"].as_str().unwrap_or_default().to_owned(),
            ),
        ]
    }
}

/// A hook as the dispatcher and the stats see it.
struct Entry {
    name: String,
    kind: &'static str,
    events: Vec<&'static str>,
    capacity: usize,
    tx: mpsc::Sender<Arc<Delivery>>,
    stats: Arc<Stats>,
}

/// The running hooks: a handle for their stats. The tasks run on without it.
#[derive(Clone, Default)]
pub struct Hooks {
    entries: Arc<Vec<Entry>>,
}

impl Hooks {
    /// Per hook (by name): its type, events, queue, and delivered, failed, dropped and
    /// last_error. Never a token or a URL.
    pub fn stats(&self) -> Value {
        self.entries
            .iter()
            .map(|e| {
                let s = &e.stats;
                let queued = e.capacity.saturating_sub(e.tx.capacity());
                (
                    e.name.clone(),
                    json!({
                        "type": e.kind,
                        "events": e.events,
                        "queue": e.capacity,
                        "queued": queued,
                        "delivered": s.delivered.load(Ordering::Relaxed),
                        "failed": s.failed.load(Ordering::Relaxed),
                        "dropped": s.dropped.load(Ordering::Relaxed),
                        "last_error": *s.last_error.lock().unwrap_or_else(|p| p.into_inner()),
                    }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Starts every configured hook and the dispatcher that feeds them from `events`. Call it
/// inside the tokio runtime, before the first event is published (nothing earlier is
/// delivered). Problems a hook can only meet at run time (its token file, its CA) are logged
/// now and counted as failures on each event: a broken hook never stops the daemon.
pub fn spawn(cfg: &HooksConfig, events: &Arc<EventLog>, cluster: &str) -> Hooks {
    let mut entries = Vec::new();
    let cluster: Arc<str> = Arc::from(cluster);
    for h in &cfg.exec {
        let (tx, rx) = mpsc::channel(h.queue);
        let stats = Arc::new(Stats::default());
        tokio::spawn(exec_worker(h.clone(), rx, stats.clone()));
        entries.push(Entry {
            name: h.name.clone(),
            kind: "exec",
            events: h.events.clone(),
            capacity: h.queue,
            tx,
            stats,
        });
    }
    for h in &cfg.webhook {
        let (tx, rx) = mpsc::channel(h.queue);
        let stats = Arc::new(Stats::default());
        let agent = http_agent(h);
        if let Err(why) = &agent {
            tracing::error!(hook = %h.name, "webhook cannot be used: {why}; its events will fail");
        }
        if let Some(f) = &h.bearer_token_file
            && let Err(why) = read_token(f)
        {
            tracing::error!(hook = %h.name, "webhook bearer_token_file {}: {why}; its events will fail until it is fixed", f.display());
        }
        tokio::spawn(webhook_worker(h.clone(), agent, rx, stats.clone()));
        entries.push(Entry {
            name: h.name.clone(),
            kind: "webhook",
            events: h.events.clone(),
            capacity: h.queue,
            tx,
            stats,
        });
    }
    let hooks = Hooks {
        entries: Arc::new(entries),
    };
    // Each hook's line is in the start-up summary (`DaemonConfig::summary`).
    if !hooks.entries.is_empty() {
        start_dispatcher(events.clone(), hooks.entries.clone(), cluster);
    }
    hooks
}

/// Subscribes now (so that nothing published after this call is missed) and spawns the
/// dispatcher.
fn start_dispatcher(log: Arc<EventLog>, entries: Arc<Vec<Entry>>, cluster: Arc<str>) {
    let (_, next) = log.bounds();
    let since = next.saturating_sub(1);
    let (early, rx) = log.replay_and_subscribe(Some(since));
    tokio::spawn(dispatch(log, rx, early, since, entries, cluster));
}

/// Offers every event to the hooks that want it; never waits.
async fn dispatch(
    log: Arc<EventLog>,
    mut rx: tokio::sync::broadcast::Receiver<Arc<ApiEvent>>,
    early: Vec<Arc<ApiEvent>>,
    mut last: u64,
    entries: Arc<Vec<Entry>>,
    cluster: Arc<str>,
) {
    for ev in early {
        last = ev.seq;
        offer(&entries, &ev, &cluster);
    }
    loop {
        match rx.recv().await {
            Ok(ev) => {
                last = ev.seq;
                offer(&entries, &ev, &cluster);
            }
            Err(RecvError::Lagged(n)) => {
                // Take the missed events back from the log's buffer, with a fresh subscription
                // that continues right after them (no gap, no duplicate).
                let (missed, fresh) = log.replay_and_subscribe(Some(last));
                rx = fresh;
                let lost = match missed.first() {
                    Some(first) => first.seq.saturating_sub(last + 1),
                    None => n,
                };
                if lost > 0 {
                    // Their kinds are unknown now: count them for every hook.
                    for e in entries.iter() {
                        let total = e.stats.dropped.fetch_add(lost, Ordering::Relaxed) + lost;
                        tracing::warn!(hook = %e.name, lost, dropped_total = total,
                            "hook dispatcher fell behind the event log: events lost, this hook may have missed some");
                    }
                }
                for ev in missed {
                    last = ev.seq;
                    offer(&entries, &ev, &cluster);
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

fn offer(entries: &[Entry], ev: &Arc<ApiEvent>, cluster: &Arc<str>) {
    if !HOOK_EVENTS.contains(&ev.kind) {
        return;
    }
    let mut delivery: Option<Arc<Delivery>> = None;
    for e in entries.iter().filter(|e| e.events.contains(&ev.kind)) {
        let d = delivery
            .get_or_insert_with(|| Arc::new(Delivery::new(ev, cluster)))
            .clone();
        match e.tx.try_send(d) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                let total = e.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(hook = %e.name, event = ev.kind, seq = ev.seq, member = ev.member.as_deref().unwrap_or("-"),
                    dropped_total = total, queue = e.capacity,
                    "hook queue full: event dropped for this hook (it is slower than the events come)");
            }
            // The worker is gone: the runtime is stopping.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Runs the exec hook once per event, one at a time, in event order.
async fn exec_worker(h: ExecHook, mut rx: mpsc::Receiver<Arc<Delivery>>, stats: Arc<Stats>) {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    while let Some(d) = rx.recv().await {
        let ev = &d.event;
        let Some((program, args)) = h.command.split_first() else {
            stats.fail("no command configured".into());
            continue;
        };
        let mut cmd = tokio::process::Command::new(program);
        // An empty environment: the daemon's may hold fence-agent secrets (`secret_env`).
        cmd.args(args)
            .env_clear()
            .env("PATH", &path)
            .envs(&h.env)
            .envs(d.env());
        let mut input = d.document.clone().into_bytes();
        input.push(b'\n');
        let run = run_bounded(cmd, input, h.timeout).await;
        let output = output_tail(&format!("{}\n{}", run.stdout, run.stderr));
        let member = ev.member.as_deref().unwrap_or("-");
        let elapsed_ms = run.elapsed.as_millis() as u64;
        if run.error.is_none() && !run.timed_out && run.code == Some(0) {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            tracing::info!(hook = %h.name, event = ev.kind, seq = ev.seq, member, code = 0, elapsed_ms, %output, "exec hook done");
            continue;
        }
        let why = match (&run.error, run.timed_out, run.code) {
            (Some(e), _, _) => e.clone(),
            (None, true, _) => format!(
                "killed (with its process group) at its timeout of {}",
                fmt_duration(h.timeout)
            ),
            (None, false, Some(c)) => format!("exit code {c}"),
            (None, false, None) => "killed by a signal".into(),
        };
        tracing::warn!(hook = %h.name, event = ev.kind, seq = ev.seq, member, code = ?run.code,
            timed_out = run.timed_out, elapsed_ms, %output, "exec hook failed: {why}");
        stats.fail(format!("{} #{}: {why}", ev.kind, ev.seq));
    }
}

/// Reads a bearer token: a 0600 file holding one line of visible ASCII.
fn read_token(path: &Path) -> Result<Secret, String> {
    let text = read_private_file(path, "a bearer token")?;
    let token = text.trim();
    if token.is_empty() {
        return Err("is empty".into());
    }
    // Never echo it: say what is wrong, not what is there.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must hold one line of printable ASCII (the token), nothing else".into());
    }
    Ok(Secret(token.to_owned()))
}

/// The trusted roots of an `https://` webhook: its `ca_file`, else the system's bundle.
fn load_roots(ca_file: Option<&Path>) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let path = match ca_file {
        Some(f) => f.to_path_buf(),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "no system CA bundle found (looked for {}); set ca_file",
                    SYSTEM_CA_BUNDLES.join(", ")
                )
            })?,
    };
    let pem =
        std::fs::read(&path).map_err(|e| format!("{}: cannot be read: {e}", path.display()))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The HTTP client of one webhook: its timeout for a whole try, no redirects (a 3xx is not a
/// delivery), no proxy from the environment (where the token goes is the configuration's
/// business alone), and for `https://` rustls on ring with the webhook's roots.
fn http_agent(h: &Webhook) -> Result<ureq::Agent, String> {
    let mut b = ureq::Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(h.timeout))
        .user_agent(concat!("peerfence/", env!("CARGO_PKG_VERSION")));
    if h.url.starts_with("https://") {
        let roots = load_roots(h.ca_file.as_deref())?;
        b = b.tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                .unversioned_rustls_crypto_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .build(),
        );
    }
    Ok(b.build().new_agent())
}

/// One try: POST the document; `Err` says why it is not a delivery (never the token).
fn post_once(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&Secret>,
    body: &str,
) -> Result<u16, String> {
    let mut req = agent.post(url).header("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {}", t.0));
    }
    let resp = req.send(body.as_bytes()).map_err(|e| e.to_string())?;
    let status = resp.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(format!("answered HTTP {status}"))
    }
}

/// Posts each event, one at a time, in event order, retrying with back-off.
async fn webhook_worker(
    h: Webhook,
    agent: Result<ureq::Agent, String>,
    mut rx: mpsc::Receiver<Arc<Delivery>>,
    stats: Arc<Stats>,
) {
    while let Some(d) = rx.recv().await {
        let ev = &d.event;
        let member = ev.member.as_deref().unwrap_or("-");
        let agent = match &agent {
            Ok(a) => a.clone(),
            Err(why) => {
                stats.fail(format!("{} #{}: {why}", ev.kind, ev.seq));
                continue;
            }
        };
        // Read for every event, so that a rotated token is used without a restart.
        let token = match h.bearer_token_file.as_deref().map(read_token).transpose() {
            Ok(t) => t.map(Arc::new),
            Err(why) => {
                tracing::warn!(hook = %h.name, event = ev.kind, seq = ev.seq, member, "webhook not sent: bearer_token_file {why}");
                stats.fail(format!("{} #{}: bearer_token_file {why}", ev.kind, ev.seq));
                continue;
            }
        };
        let started = Instant::now();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let (agent, url, token, d2) = (agent.clone(), h.url.clone(), token.clone(), d.clone());
            // ureq blocks; its global timeout bounds the try, so the blocking thread is too.
            let result = tokio::task::spawn_blocking(move || {
                post_once(&agent, &url, token.as_deref(), &d2.document)
            })
            .await
            .unwrap_or_else(|e| Err(format!("the sending thread failed: {e}")));
            match result {
                Ok(status) => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(hook = %h.name, event = ev.kind, seq = ev.seq, member, status, tries,
                        elapsed_ms = started.elapsed().as_millis() as u64, "webhook delivered");
                    break;
                }
                Err(why) if tries > h.retries => {
                    tracing::warn!(hook = %h.name, event = ev.kind, seq = ev.seq, member, tries,
                        "webhook given up: {why}");
                    stats.fail(format!(
                        "{} #{}: {why} (after {tries} tries)",
                        ev.kind, ev.seq
                    ));
                    break;
                }
                Err(why) => {
                    let wait = backoff(tries - 1);
                    tracing::warn!(hook = %h.name, event = ev.kind, seq = ev.seq, member, tries,
                        retry_in_ms = wait.as_millis() as u64, "webhook failed, will retry: {why}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> (HooksConfig, Vec<String>) {
        #[derive(Deserialize)]
        struct File {
            hooks: RawHooks,
        }
        let raw: File = toml::from_str(toml_text).expect("TOML parses");
        let mut p = Problems(Vec::new());
        let cfg = raw.hooks.validate(&mut p);
        (cfg, p.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn a_good_section_validates_with_defaults() {
        let (cfg, errs) = check(
            r#"
[[hooks.exec]]
name = "cloudstack-recover"
command = ["/usr/local/bin/pf-hook", "arg"]
events = ["fenced", "safe_to_recover", "fenced"]
env = { OS_CLOUD = "admin" }

[[hooks.webhook]]
name = "ops"
url = "http://10.0.0.5:8080/peerfence?token=x"
events = ["safe_to_recover", "storm_entered"]
bearer_token_file = "/etc/peerfence/webhook-token"

[[hooks.webhook]]
name = "tls"
url = "https://ops.example.com/hook"
events = ["armed"]
ca_file = "/etc/peerfence/ops-ca.pem"
timeout = "2s"
retries = 10
queue = 4096
"#,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let e = &cfg.exec[0];
        assert_eq!(e.events, vec!["fenced", "safe_to_recover"]);
        assert_eq!(e.timeout, Duration::from_secs(10));
        assert_eq!(e.queue, 64);
        let w = &cfg.webhook[0];
        assert_eq!(
            (w.timeout, w.retries, w.queue),
            (Duration::from_secs(5), 3, 64)
        );
        assert_eq!((cfg.webhook[1].retries, cfg.webhook[1].queue), (10, 4096));
        // The summary names hooks and events, never a token or the URL's query.
        let summary = cfg.summary().join("\n");
        assert!(summary.contains("webhook ops posts to http://10.0.0.5:8080/peerfence on"));
        assert!(!summary.contains("token=x"), "{summary}");
    }

    #[test]
    fn every_problem_names_field_value_and_rule() {
        let (_, errs) = check(
            r#"
[[hooks.exec]]
name = "a"
command = []
events = ["fenc"]
timeout = "6min"
env = { PEERFENCE_EVENT = "x" }
queue = 0

[[hooks.exec]]
name = "a"
command = ["/bin/true"]
events = []

[[hooks.webhook]]
name = "bad name"
url = "ftp://10.0.0.5/x"
events = ["fenced"]
retries = 11
queue = 5000
timeout = "5"

[[hooks.webhook]]
name = "w2"
url = "http://user:pw@10.0.0.5/x"
events = ["storm_left"]
ca_file = "/etc/ca.pem"
"#,
        );
        let all = errs.join("\n");
        for want in [
            "hooks.exec[0].command = []: must name a program",
            "hooks.exec[0].events = \"fenc\": is not a hook event; one of suspect, partitioned, unmanageable, fencing, fenced, safe_to_recover, fence_failed, storm_entered, storm_left, self_fence, disarmed, armed, maintenance",
            "hooks.exec[0].timeout = \"6m\": must be at most 5min",
            "hooks.exec[0].env.PEERFENCE_EVENT = \"PEERFENCE_EVENT\": must be a variable name",
            "hooks.exec[0].queue = 0: must be from 1 to 4096",
            "hooks.exec[1].name = \"a\": is the name of another hook",
            "hooks.exec[1].events = []: must list at least one event",
            "hooks.webhook[0].name = \"bad name\": must be 1 to 64 letters",
            "hooks.webhook[0].url = \"ftp://10.0.0.5/x\": must start with http:// or https://",
            "hooks.webhook[0].retries = 11: must be at most 10",
            "hooks.webhook[0].queue = 5000: must be from 1 to 4096",
            "hooks.webhook[0].timeout = \"5\": is not a duration",
            "hooks.webhook[1].url = (a URL with credentials): must not hold credentials",
            "hooks.webhook[1].ca_file = \"/etc/ca.pem\": is only used with an https:// url",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
        // The password in the URL is not echoed.
        assert!(!all.contains("pw@"), "{all}");
        assert_eq!(errs.len(), 14, "{all}");
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_thirty() {
        let secs: Vec<u64> = (0..8).map(|r| backoff(r).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(30));
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pf-hooks-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn script(path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Polls `f` every 20 ms for at most `limit`.
    async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + limit;
        loop {
            if f() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stat(h: &Hooks, name: &str, field: &str) -> u64 {
        h.stats()[name][field].as_u64().unwrap_or(0)
    }

    fn exec_hook(name: &str, command: Vec<String>, events: &[&'static str]) -> ExecHook {
        ExecHook {
            name: name.into(),
            command,
            events: events.to_vec(),
            timeout: Duration::from_secs(10),
            env: BTreeMap::new(),
            queue: 64,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let d = scratch("queue");
        let hook = d.join("hook.sh");
        // Blocks until the test releases it.
        script(
            &hook,
            &format!(
                "#!/bin/sh\nwhile [ ! -e {0}/release ]; do sleep 0.05; done\n",
                d.display()
            ),
        );
        let mut h = exec_hook("slow", vec![hook.display().to_string()], &["storm_entered"]);
        h.queue = 1;
        let cfg = HooksConfig {
            exec: vec![h],
            webhook: vec![],
        };
        let log = EventLog::new("n1");
        let hooks = spawn(&cfg, &log, "c");
        for _ in 0..5 {
            log.publish("storm_entered", None, "storm".into(), json!({}));
        }
        // One runs, one waits in the queue, the rest are dropped (the publisher never waited).
        assert!(
            eventually(Duration::from_secs(10), || stat(&hooks, "slow", "dropped")
                >= 3)
            .await
        );
        std::fs::write(d.join("release"), "").unwrap();
        let settled = eventually(Duration::from_secs(20), || {
            stat(&hooks, "slow", "delivered") + stat(&hooks, "slow", "dropped") == 5
        })
        .await;
        assert!(settled, "{}", hooks.stats());
        assert!(stat(&hooks, "slow", "delivered") >= 1);
        assert_eq!(stat(&hooks, "slow", "failed"), 0);
        std::fs::remove_dir_all(&d).ok();
    }

    /// A hook entry whose queue the test reads itself.
    fn bare_entry(capacity: usize) -> (Entry, mpsc::Receiver<Arc<Delivery>>) {
        let (tx, rx) = mpsc::channel(capacity);
        let e = Entry {
            name: "bare".into(),
            kind: "exec",
            events: vec!["fenced"],
            capacity,
            tx,
            stats: Arc::new(Stats::default()),
        };
        (e, rx)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lagging_dispatcher_takes_missed_events_back_from_the_log() {
        use crate::daemon::events::{EVENT_BUFFER, SUBSCRIBER_LAG};
        // On one thread the dispatcher cannot run while we publish: it lags for sure.
        for (published, lost) in [(SUBSCRIBER_LAG + 44, 0), (EVENT_BUFFER + 276, 276)] {
            let log = EventLog::new("n1");
            let (entry, mut rx) = bare_entry(EVENT_BUFFER * 2);
            let entries = Arc::new(vec![entry]);
            start_dispatcher(log.clone(), entries.clone(), Arc::from("c"));
            for i in 0..published {
                // Every other event is one no hook takes: the seqs must still line up.
                let kind = if i % 2 == 0 { "fenced" } else { "voted" };
                log.publish(kind, None, String::new(), json!({}));
            }
            let mut got = Vec::new();
            let end = Instant::now() + Duration::from_secs(10);
            while got.len() < (published - lost as usize).div_ceil(2) && Instant::now() < end {
                match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                    Ok(Some(d)) => got.push(d.event.seq),
                    _ => continue,
                }
            }
            let want: Vec<u64> = (lost + 1..=published as u64)
                .filter(|s| s % 2 == 1)
                .collect();
            assert_eq!(got, want, "published {published}");
            assert_eq!(entries[0].stats.dropped.load(Ordering::Relaxed), lost);
        }
    }
}
