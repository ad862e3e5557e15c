//! The daemon shell around the core: `peerfence run`.
//!
//! Everything that touches the world lives here (and only here): the clock, the QUIC
//! transport, TLS, files, health-check threads, the status endpoint. One task owns the core's
//! `Node` and is the only reader of the clock; everything else talks to it through one bounded
//! channel ([`Msg`]). After every input it drains the node's outputs in order. A `Persist` is
//! written and synced in the background while the task keeps handling inputs; what came after it
//! waits (SWIM packets excepted, see [`pipeline`]) and is carried out once it is durable.
//!
//! This module is exempt from the core's sans-IO lints (`clippy.toml`): doing IO is its job.
#![allow(clippy::disallowed_methods)]

pub mod actions;
pub mod certs;
pub mod checks;
pub mod client;
pub mod cloudstack;
pub mod config;
pub mod demo;
pub mod events;
pub mod fence;
pub mod history;
pub mod hooks;
pub mod http;
pub mod https;
pub mod metrics;
pub mod pipeline;
pub mod simagent;
pub mod storage;
pub mod store;
pub mod transport;
pub mod watchdog;

use crate::node::{
    AgentResult, Event, Input, Node, OperatorCommand, Output, SelfFenceAnswer, WatchdogAction,
};
use crate::time::Instant;
use config::{BootIdSource, DaemonConfig};
use peerfence_proto::BootId;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};

/// Messages the node's task receives. The channel is bounded ([`INBOX`]); network input that
/// finds it full is dropped and counted, local threads wait.
pub enum Msg {
    /// An input for the node.
    Input(Input),
    /// A request for the status view.
    Status(oneshot::Sender<serde_json::Value>),
    /// A local self-fence request (CloudStack's heartbeat script `-c`).
    SelfFenceRequest(oneshot::Sender<SelfFenceAnswer>),
    /// An authenticated operator action from the API. The answer is the events it produced
    /// (the `audit` event first), or the HTTP error to give.
    Action {
        /// What to do.
        action: Action,
        /// Who asks (`token:NAME`), for the audit event.
        by: String,
        /// From where.
        remote: std::net::SocketAddr,
        /// The answer.
        reply: oneshot::Sender<ActionAnswer>,
    },
    /// Leave the cluster and stop (SIGTERM, SIGINT).
    Shutdown,
}

/// What an API action produced, or the HTTP status and message to refuse it with.
pub type ActionAnswer = Result<Vec<Arc<events::ApiEvent>>, (axum::http::StatusCode, String)>;

/// An operator action from the API (each becomes one core [`OperatorCommand`]).
#[derive(Debug, Clone)]
pub enum Action {
    /// Arm the cluster.
    Arm,
    /// Disarm the cluster.
    Disarm,
    /// Maintenance of a host on or off.
    Maintenance {
        /// Member name.
        host: String,
        /// On or off.
        on: bool,
    },
    /// Ask for a fence of a host (it still needs the quorum).
    Fence {
        /// Member name.
        host: String,
    },
}

impl Action {
    /// Stable name (API responses, audit events, metrics).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Arm => "arm",
            Action::Disarm => "disarm",
            Action::Maintenance { on: true, .. } => "maintenance_on",
            Action::Maintenance { on: false, .. } => "maintenance_off",
            Action::Fence { .. } => "manual_fence",
        }
    }
}

/// Capacity of the node's inbox.
pub const INBOX: usize = 8192;

/// API actions and self-fence requests whose answer waits for outputs held behind a state-file
/// write, at most. Each requester gives up after 2 s (`http.rs`) and is then forgotten; more
/// than this many at once are refused (busy) before anything is done.
pub const MAX_WAITERS: usize = 64;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A certificate, key or vote key problem.
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    /// The durable state could not be read or written.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The node refused to start.
    #[error("cannot start: {0}")]
    Start(#[from] crate::node::StartError),
    /// More outputs are held behind a state-file write than [`pipeline::MAX_HELD`].
    #[error(transparent)]
    Held(#[from] pipeline::Overflow),
    /// Binding or another IO failure.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The boot id could not be read.
    #[error("cannot read the boot id from {0}: {1}")]
    BootId(String, String),
    /// A fence agent cannot be used.
    #[error(transparent)]
    Agent(#[from] fence::AgentError),
    /// The API token file cannot be used.
    #[error(transparent)]
    Tokens(#[from] http::TokenError),
    /// The configuration relies on a watchdog that cannot be opened.
    #[error(
        "watchdog.enabled = true (confirming fences by deadline relies on every member's watchdog), but {0}; refusing to start"
    )]
    Watchdog(watchdog::WatchdogError),
    /// The watchdog would not reset the host when the daemon dies, or resets it later than
    /// configured.
    #[error(
        "watchdog.enabled = true, but the watchdog cannot be relied on: {0}; use a driver with magic close that resets the host (most hardware watchdogs; softdog)"
    )]
    WatchdogUnsafe(String),
    /// A test-only setting found when the daemon used it (`check-config` could not judge it).
    #[error(
        "{0} (found when the device was opened: check-config judges only a device that exists on the host it runs on); refusing to start"
    )]
    TestSetting(crate::config::ConfigError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// This host's boot id.
pub fn boot_id(source: BootIdSource) -> Result<BootId, DaemonError> {
    match source {
        BootIdSource::PerStart => {
            let mut b = [0u8; 16];
            getrandom::fill(&mut b)
                .map_err(|e| DaemonError::BootId("getrandom".into(), e.to_string()))?;
            Ok(BootId(b))
        }
        BootIdSource::Kernel => {
            let path = "/proc/sys/kernel/random/boot_id";
            let text = std::fs::read_to_string(path)
                .map_err(|e| DaemonError::BootId(path.into(), e.to_string()))?;
            let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
            let mut b = [0u8; 16];
            if hex.len() != 32 {
                return Err(DaemonError::BootId(
                    path.into(),
                    format!("unexpected content {text:?}"),
                ));
            }
            for (i, out) in b.iter_mut().enumerate() {
                *out = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map_err(|e| DaemonError::BootId(path.into(), e.to_string()))?;
            }
            Ok(BootId(b))
        }
    }
}

/// The one clock of the daemon: CLOCK_BOOTTIME, as the core's instant. It counts from the
/// host's boot and keeps running across daemon restarts (and suspends), so an instant persisted
/// by one daemon process means the same to the next one in the same boot; only a new boot
/// restarts it (and the core re-arms stored deadlines then). A clock that started with each
/// process would make a promise granted after 20 days of uptime last another 20 days.
#[derive(Clone, Copy)]
struct Clock {
    boot: Instant,
    tokio: tokio::time::Instant,
}

/// Raises the soft limit on open descriptors to the hard one (systemd's default soft limit is
/// 1,024): the API's connections are capped well below it, and what is left is the reserve for
/// heartbeat files, the state file, agents and hooks. Logged, never fatal.
#[allow(unsafe_code)]
fn raise_descriptor_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit; getrlimit only writes into it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            lim.rlim_cur = before;
        }
    }
    tracing::info!(
        before,
        now = lim.rlim_cur,
        api_connections_max = https::MAX_CONNECTIONS,
        "open descriptor limit"
    );
}

/// CLOCK_BOOTTIME in microseconds (CLOCK_MONOTONIC if the kernel lacks it, which every kernel
/// since 2.6.39 has).
#[allow(unsafe_code)]
fn boottime_micros() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes into it.
    let mut rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // SAFETY: as above.
        rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    }
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec.max(0) as u64) * 1_000_000 + (ts.tv_nsec.max(0) as u64) / 1_000
}

impl Clock {
    fn start() -> Self {
        Self {
            boot: Instant::from_micros(boottime_micros()),
            tokio: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> Instant {
        // Never earlier than at start, whatever the kernel says.
        Instant::from_micros(boottime_micros()).max(self.boot)
    }

    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        self.tokio + at.saturating_since(self.boot)
    }
}

/// Runs the daemon until SIGTERM or SIGINT (a second one exits at once).
pub async fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
    let clock = Clock::start();
    raise_descriptor_limit();
    let core = cfg.core.clone();
    let vote = certs::load_vote_key(&cfg.vote_key)?;
    let names: Vec<String> = core
        .roster
        .ids()
        .map(|m| core.roster.name(m).to_owned())
        .collect();
    let tls = certs::Tls::load(&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key, names)?;
    let boot = boot_id(cfg.boot_id)?;
    // Never from nothing: `peerfence init` made this state, or recovered it after a loss.
    let store = store::StateFile::at(&cfg.data_dir);
    let durable = store.load_initialized(core.cluster.as_str(), core.roster.name(cfg.me))?;
    let on_disk = durable.generation;
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed)
        .map_err(|e| DaemonError::BootId("getrandom".into(), e.to_string()))?;
    let mut node = Node::new(
        core.clone(),
        cfg.me,
        vote,
        boot,
        Some(durable),
        u64::from_le_bytes(seed),
        clock.now(),
    )?;
    for line in cfg.summary() {
        tracing::info!("{line}");
    }
    // Agents: secrets loaded, `metadata` checked against the configured parameters, before the
    // node can ask for a fence.
    let mut agents = Vec::new();
    for level in &cfg.agents {
        agents.push(match level {
            Some(l) => {
                let agent = fence::Agent::load(l.clone())?;
                let known = agent.check_metadata().await?;
                tracing::info!(level = %l.name, parameters = known.len(), "fence agent metadata checked");
                Some(agent)
            }
            None => None,
        });
    }
    let agents = Arc::new(agents);
    let watchdog = if core.watchdog.enabled {
        if let Some(e) = config::fake_watchdog_refused(&cfg) {
            return Err(DaemonError::TestSetting(e));
        }
        let dev = watchdog::Device::open(&cfg.local.watchdog_device, core.watchdog.timeout)
            .map_err(DaemonError::Watchdog)?;
        tracing::info!(device = %cfg.local.watchdog_device.display(), timeout_s = ?dev.timeout_secs(), "watchdog opened");
        // A driver that stops on any close (no magic close) or only raises an alarm would let a
        // crashed daemon's host live on: the deadline every confirmation relies on is gone.
        if dev.resets_after_crash() == Some(false) {
            let _ = dev.magic_close();
            return Err(DaemonError::WatchdogUnsafe(
                cfg.local.watchdog_device.display().to_string(),
            ));
        }
        if let Some(secs) = dev.timeout_secs() {
            let want = core.watchdog.timeout.as_secs_f64().ceil() as u32;
            if secs > want {
                let _ = dev.magic_close();
                return Err(DaemonError::WatchdogUnsafe(format!(
                    "{} runs a {secs} s timeout where watchdog.timeout asks for {want} s (confirmation deadlines would come too early); set watchdog.timeout to at least {secs}s",
                    cfg.local.watchdog_device.display()
                )));
            }
        }
        Some(watchdog::Feeder::spawn(dev).map_err(io("cannot start the watchdog thread"))?)
    } else {
        None
    };
    tracing::info!(boot = %boot, generation = node.generation(), "starting");

    let levels: Vec<String> = core.fencing.levels.iter().map(|l| l.name.clone()).collect();
    let events = events::EventLog::new(core.roster.name(cfg.me));
    let hooks = hooks::spawn(&cfg.hooks, &events, core.cluster.as_str());
    let history = Arc::new(std::sync::Mutex::new(history::History::default()));
    history.lock().unwrap_or_else(|p| p.into_inner()).seed(
        &node.durable().fence_log,
        &core.roster,
        &levels,
    );
    let metrics = metrics::Metrics::new();
    let tokens = match &cfg.token_file {
        Some(path) => http::Tokens::load(path)?,
        None => http::Tokens::default(),
    };
    let (tx, mut rx) = mpsc::channel::<Msg>(INBOX);
    let transport = transport::Transport::bind(cfg.listen, tls, cfg.addresses.clone(), tx.clone())
        .map_err(io(format!("cannot listen on {} (QUIC/UDP)", cfg.listen)))?;
    let generation = Arc::new(AtomicU32::new(node.generation()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers = storage::Writers {
        stop: stop.clone(),
        counter: Arc::default(),
    };
    let mut shell = Shell {
        keys: crate::crypto::KeyRing::new(&core),
        clock,
        store,
        transport,
        tx: tx.clone(),
        agents: agents.clone(),
        local: cfg.local.clone(),
        watchdog,
        pipeline: pipeline::Pipeline::new(on_disk),
        write: None,
        waiters: Vec::new(),
        events: events.clone(),
        history: history.clone(),
        levels: levels.clone(),
        metrics: metrics.clone(),
        hooks,
        writers: writers.clone(),
        me: cfg.me,
        boot,
    };
    // The first output persists the new generation: nothing leaves before it is on disk, and
    // nothing else starts before it is either.
    shell.drain(&mut node).await?;
    shell.flush(&mut node).await?;
    storage::spawn(
        core.clone(),
        cfg.me,
        boot,
        generation.clone(),
        tx.clone(),
        writers,
    )
    .map_err(io("cannot start the storage heartbeat threads"))?;
    checks::spawn(&cfg.health, tx.clone(), stop.clone(), metrics.clone())
        .map_err(io("cannot start the health-check threads"))?;
    if let Some(addr) = cfg.http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io(format!("cannot listen on {addr} (HTTP)")))?;
        let api = http::Api {
            tx: tx.clone(),
            events: events.clone(),
            history: history.clone(),
            metrics: metrics.clone(),
            tokens: Arc::new(tokens),
            streams: Arc::default(),
        };
        let tls = if cfg.http_tls {
            Some(https::server_config(
                &cfg.tls.ca,
                &cfg.tls.cert,
                &cfg.tls.key,
            )?)
        } else {
            None
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, dashboard = %format!("{scheme}://{addr}/"), "HTTP API: /v1/cluster, /v1/fences, /v1/events, /metrics");
        tokio::spawn(http::serve(listener, api, tls));
    }
    tokio::spawn(signals(tx.clone()));
    fence::spawn_periodic(agents, names_of(&core), cfg.me, tx.clone());

    loop {
        let deadline = clock.deadline(node.poll_timeout());
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Input(input)) => shell.input(&mut node, input).await?,
                // Answered at once, also while a write is in flight: the status view is the
                // node's, whatever the disk is doing.
                Some(Msg::Status(reply)) => {
                    let _ = reply.send(status(&node, &shell, &cfg.addresses));
                }
                Some(Msg::SelfFenceRequest(reply)) => {
                    shell.self_fence_request(&mut node, reply).await?;
                }
                Some(Msg::Action { action, by, remote, reply }) => {
                    shell.action(&mut node, action, &by, remote, reply).await?;
                }
                Some(Msg::Shutdown) | None => break,
            },
            _ = tokio::time::sleep_until(deadline) => shell.input(&mut node, Input::Tick).await?,
            done = write_done(&mut shell.write) => shell.written(&mut node, done).await?,
        }
        // The heartbeat writers put the generation in every record: only one that is on disk
        // (a daemon that crashed before persisting it would start with it again).
        generation.store(
            shell.pipeline.durable_generation().min(node.generation()),
            Ordering::SeqCst,
        );
    }
    tracing::info!("leaving the cluster");
    node.handle(clock.now(), Input::Shutdown);
    shell.drain(&mut node).await?;
    // Every held output (the clean-stop notices, the last heartbeat record) goes out, each after
    // the persist it follows.
    shell.flush(&mut node).await?;
    // The watchdog is closed only once the stop is known: to peers that never heard it, this
    // host is silent, and they fence it (by a deadline too, which only a reset makes true).
    let known = leave_known(&mut shell, &mut node, &mut rx).await?;
    stop.store(true, Ordering::SeqCst);
    if let Some(w) = shell.watchdog.take() {
        if known {
            // Magic close unless the core stopped feeding (then the reset must still come).
            w.close();
        } else {
            // Closed without the magic character, as a crash would: the countdown runs on.
            drop(w);
        }
    }
    shell.transport.close(Duration::from_secs(1)).await;
    tracing::info!("stopped");
    Ok(())
}

/// After the clean-stop notices went out: waits (at most [`Node::leave_wait`]) until enough peers
/// acknowledged the stop (or stop too) that no quorum could vote to fence this host unaware,
/// feeding the node what arrives. Says in the log which it was, or what was missing.
async fn leave_known(
    shell: &mut Shell,
    node: &mut Node,
    rx: &mut mpsc::Receiver<Msg>,
) -> Result<bool, DaemonError> {
    let wait = node.leave_wait();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let Some(progress) = node.leave_progress() else {
            return Ok(true);
        };
        if progress.known() {
            tracing::info!(
                acks = progress.acked_by.len(),
                unaware = progress.unaware,
                "the cluster knows of this clean stop: fewer than a quorum ({}) of peers could vote unaware",
                progress.quorum
            );
            return Ok(true);
        }
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Input(input @ Input::Datagram { .. })) => shell.input(node, input).await?,
                Some(_) => {}
                None => return Ok(false),
            },
            // A peer's stop learnt meanwhile is persisted before it is acknowledged.
            done = write_done(&mut shell.write) => shell.written(node, done).await?,
            _ = tokio::time::sleep_until(deadline) => {
                let watchdog = shell.watchdog.is_some();
                tracing::error!(
                    acks = progress.acked_by.len(),
                    unaware = progress.unaware,
                    quorum = progress.quorum,
                    "too few peers acknowledged this clean stop within {} ({} could still vote unaware, a quorum is {}): to the cluster this host is silent and will be fenced{}",
                    crate::config::fmt_duration(wait),
                    progress.unaware,
                    progress.quorum,
                    if watchdog {
                        "; the watchdog stays armed and resets this host, so that a fence confirmed by its deadline is true"
                    } else {
                        ""
                    }
                );
                return Ok(false);
            }
        }
    }
}

fn names_of(core: &crate::config::Config) -> Vec<String> {
    core.roster
        .ids()
        .map(|m| core.roster.name(m).to_owned())
        .collect()
}

/// Waits for the state-file write in flight (forever if there is none) and forgets it once done,
/// so that a `select!` may poll it again and again.
async fn write_done(
    write: &mut Option<JoinHandle<Result<(), store::StoreError>>>,
) -> Result<Result<(), store::StoreError>, JoinError> {
    let Some(handle) = write.as_mut() else {
        return std::future::pending().await;
    };
    let done = handle.await;
    *write = None;
    done
}

/// Someone waiting for what its request to the node produced: the outputs numbered
/// `from..upto` (one handle and its drain), some of which may be held behind a write.
struct Waiter {
    from: pipeline::Seq,
    upto: pipeline::Seq,
    /// An output in range fed the node an input: what that produced counts too (it did while
    /// the drain was synchronous), so `upto` moves past it.
    cascade: bool,
    reply: Reply,
}

enum Reply {
    /// An API action: the events so far (the audit event first).
    Action(Vec<Arc<events::ApiEvent>>, oneshot::Sender<ActionAnswer>),
    /// A local self-fence request: the core's answer, once it is carried out.
    SelfFence(Option<SelfFenceAnswer>, oneshot::Sender<SelfFenceAnswer>),
}

impl Waiter {
    fn covers(&self, seq: pipeline::Seq) -> bool {
        (self.from..self.upto).contains(&seq)
    }

    fn gone(&self) -> bool {
        match &self.reply {
            Reply::Action(_, tx) => tx.is_closed(),
            Reply::SelfFence(_, tx) => tx.is_closed(),
        }
    }

    fn answer(self) {
        match self.reply {
            Reply::Action(events, tx) => {
                let _ = tx.send(Ok(events));
            }
            // No answer produced: the requester times out, as it always did.
            Reply::SelfFence(answer, tx) => {
                if let Some(a) = answer {
                    let _ = tx.send(a);
                }
            }
        }
    }
}

/// The core's command for an API action, and the host it names; or the HTTP refusal.
fn operator_command(
    node: &Node,
    action: &Action,
) -> Result<(OperatorCommand, Option<String>), (axum::http::StatusCode, String)> {
    use axum::http::StatusCode;
    let cfg = node.config();
    let resolve = |host: &str| {
        cfg.roster.id_of(host).ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!(
                    "no member is named {host:?}; the members are {}",
                    names_of(cfg).join(", ")
                ),
            )
        })
    };
    Ok(match action {
        Action::Arm => (OperatorCommand::Arm, None),
        Action::Disarm => (OperatorCommand::Disarm, None),
        Action::Maintenance { host, on } => (
            OperatorCommand::Maintenance {
                member: resolve(host)?,
                on: *on,
            },
            Some(host.clone()),
        ),
        Action::Fence { host } => {
            let target = resolve(host)?;
            if target == node.status().me {
                return Err((
                    StatusCode::CONFLICT,
                    format!("{host} is this host: ask another member's endpoint to fence it"),
                ));
            }
            (OperatorCommand::ManualFence { target }, Some(host.clone()))
        }
    })
}

/// What the node's task owns besides the node: where its outputs go.
struct Shell {
    clock: Clock,
    store: store::StateFile,
    transport: transport::Transport,
    tx: mpsc::Sender<Msg>,
    agents: Arc<Vec<Option<fence::Agent>>>,
    local: config::LocalActionsConfig,
    watchdog: Option<watchdog::Feeder>,
    /// Which outputs wait for the state-file write in flight.
    pipeline: pipeline::Pipeline,
    /// The state-file write in flight (at most one).
    write: Option<JoinHandle<Result<(), store::StoreError>>>,
    /// Requesters waiting for the outputs their request produced (at most [`MAX_WAITERS`]).
    waiters: Vec<Waiter>,
    /// Every event, for the API, the dashboard and hooks.
    events: Arc<events::EventLog>,
    /// Fence rounds, for `GET /v1/fences`.
    history: Arc<std::sync::Mutex<history::History>>,
    /// Fence level names by index.
    levels: Vec<String>,
    /// Metrics.
    metrics: Arc<metrics::Metrics>,
    /// Hooks (their counters go into the status view).
    hooks: hooks::Hooks,
    /// The heartbeat writers (stopped, and a last record written, on a clean stop).
    writers: storage::Writers,
    /// This member.
    me: peerfence_proto::MemberId,
    /// This host's boot.
    boot: BootId,
    /// The roster's vote keys: every certificate is checked again here before anything acts on
    /// it (the core asserts it too; two checks on both sides of the boundary).
    keys: crate::crypto::KeyRing,
}

/// The boundary check before a fence agent, a pill write or a self-fence runs: the certificate
/// verifies, and it is about `target`. The core never emits anything else (it asserts it), so a
/// refusal here is a bug, logged loudly, and nothing runs.
fn authorised(
    keys: &crate::crypto::KeyRing,
    qc: &peerfence_proto::QuorumCertificate,
    target: peerfence_proto::MemberId,
    what: &str,
) -> bool {
    match keys.verify_certificate(qc) {
        Ok(()) if qc.proposal.target == target => true,
        Ok(()) => {
            tracing::error!(
                what,
                "refusing: the certificate is about another member (a bug; nothing was run)"
            );
            false
        }
        Err(e) => {
            tracing::error!(what, error = %e, "refusing: the certificate does not verify (a bug; nothing was run)");
            false
        }
    }
}

impl Shell {
    /// Times the storage heartbeat writes, for `/metrics` (the other checks time themselves).
    fn observe(&self, input: &Input) {
        use crate::health::WriteOutcome;
        let Input::StorageWrite { path, outcome, .. } = input else {
            return;
        };
        let (result, secs) = match outcome {
            WriteOutcome::Ok { latency } => ("ok", latency.as_secs_f64()),
            WriteOutcome::Failed => ("failed", 0.0),
            WriteOutcome::TimedOut => ("timed_out", 0.0),
        };
        self.metrics
            .storage_write_seconds
            .get_or_create(&vec![
                ("path", path.to_string()),
                ("result", result.to_owned()),
            ])
            .observe(secs);
    }

    /// Feeds one input and carries out what follows.
    async fn input(&mut self, node: &mut Node, input: Input) -> Result<(), DaemonError> {
        self.observe(&input);
        node.handle(self.clock.now(), input);
        self.drain(node).await
    }

    /// Whether another requester may wait (forgetting those that gave up).
    fn room_for_waiter(&mut self) -> bool {
        self.waiters.retain(|w| !w.gone());
        self.waiters.len() < MAX_WAITERS
    }

    /// Feeds `cmd` on behalf of a requester who waits for what it produces.
    async fn request(
        &mut self,
        node: &mut Node,
        cmd: OperatorCommand,
        reply: Reply,
    ) -> Result<(), DaemonError> {
        // Open-ended while the drain runs (nothing else is fed meanwhile), closed after it.
        self.waiters.push(Waiter {
            from: self.pipeline.next_seq(),
            upto: pipeline::Seq::MAX,
            cascade: false,
            reply,
        });
        node.handle(self.clock.now(), Input::Operator(cmd));
        let drained = self.drain(node).await;
        let upto = self.pipeline.next_seq();
        if let Some(w) = self.waiters.last_mut() {
            w.upto = upto;
        }
        drained?;
        self.answer_waiters();
        Ok(())
    }

    /// Answers every waiter whose outputs have all been carried out.
    fn answer_waiters(&mut self) {
        let done = self.pipeline.handed_out_before();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| w.upto <= done);
        self.waiters = waiting;
        for w in ready {
            w.answer();
        }
    }

    /// A local self-fence request: answered with the core's answer once it is carried out.
    async fn self_fence_request(
        &mut self,
        node: &mut Node,
        reply: oneshot::Sender<SelfFenceAnswer>,
    ) -> Result<(), DaemonError> {
        if !self.room_for_waiter() {
            // Dropping the reply tells the requester the node is busy (503), before anything
            // was done.
            tracing::warn!(
                waiting = self.waiters.len(),
                "local self-fence request refused: too many requests wait for the state file"
            );
            return Ok(());
        }
        let reply = Reply::SelfFence(None, reply);
        self.request(node, OperatorCommand::SelfFenceRequest, reply)
            .await
    }

    /// Carries out one API action: the audit event first, then the core's command; answers
    /// with every event it produced, once they are all carried out (some may wait for a
    /// persist).
    async fn action(
        &mut self,
        node: &mut Node,
        action: Action,
        by: &str,
        remote: std::net::SocketAddr,
        reply: oneshot::Sender<ActionAnswer>,
    ) -> Result<(), DaemonError> {
        use axum::http::StatusCode;
        let (cmd, host) = match operator_command(node, &action) {
            Ok(c) => c,
            Err(refusal) => {
                let _ = reply.send(Err(refusal));
                return Ok(());
            }
        };
        if !self.room_for_waiter() {
            let _ = reply.send(Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} requests are waiting for this node's state file to be written; try again",
                    self.waiters.len()
                ),
            )));
            return Ok(());
        }
        let name = action.name();
        tracing::warn!(by, %remote, action = name, host = host.as_deref().unwrap_or("-"), "operator action");
        let audit = self.events.publish(
            "audit",
            host.clone(),
            format!(
                "{name}{} requested by {by} from {remote}",
                host.as_deref().map(|h| format!(" of {h}")).unwrap_or_default()
            ),
            serde_json::json!({"action": name, "host": host, "by": by, "remote": remote.to_string()}),
        );
        self.metrics
            .events
            .get_or_create(&metrics::label("kind", "audit"))
            .inc();
        self.request(node, cmd, Reply::Action(vec![audit], reply))
            .await
    }

    /// Takes every output the node has, in order, through the pipeline: carried out now, held
    /// behind the write in flight, or written (in the background).
    async fn drain(&mut self, node: &mut Node) -> Result<(), DaemonError> {
        while let Some(out) = node.poll_output() {
            let (seq, step) = self.pipeline.push(out, node.generation())?;
            match step {
                pipeline::Step::Now(out) => {
                    self.carry_out(node, seq, out).await?;
                }
                pipeline::Step::Write(state) => self.start_write(state),
                pipeline::Step::Held => {}
            }
        }
        Ok(())
    }

    /// Starts writing `state` (write, fsync, rename, fsync of the directory) on a blocking
    /// thread; [`write_done`] reports it.
    fn start_write(&mut self, state: Box<crate::durable::DurableState>) {
        debug_assert!(self.write.is_none(), "one state-file write at a time");
        let store = self.store.clone();
        self.write = Some(tokio::task::spawn_blocking(move || store.save(&state)));
    }

    /// The write in flight finished: a failure stops the daemon; otherwise the next state is
    /// written and what was held behind this one is carried out.
    async fn written(
        &mut self,
        node: &mut Node,
        done: Result<Result<(), store::StoreError>, JoinError>,
    ) -> Result<(), DaemonError> {
        done.map_err(|e| DaemonError::Io {
            what: "persisting durable state".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
        let next = self.pipeline.written();
        if let Some(state) = next.write {
            self.start_write(state);
        }
        for (seq, out) in next.release {
            if self.carry_out(node, seq, out).await? {
                for w in self.waiters.iter_mut().filter(|w| w.covers(seq)) {
                    w.cascade = true;
                }
            }
        }
        // What the released outputs fed the node, after them (as in the node's order).
        self.drain(node).await?;
        let upto = self.pipeline.next_seq();
        for w in self.waiters.iter_mut().filter(|w| w.cascade) {
            w.cascade = false;
            w.upto = w.upto.max(upto);
        }
        self.answer_waiters();
        Ok(())
    }

    /// Waits for the write in flight and every one after it, carrying out everything held
    /// (start-up and clean stop; no input is handled meanwhile).
    async fn flush(&mut self, node: &mut Node) -> Result<(), DaemonError> {
        while self.write.is_some() {
            let done = write_done(&mut self.write).await;
            self.written(node, done).await?;
        }
        Ok(())
    }

    /// Carries out output `seq`. Fence agents and pill writes run in the background and answer
    /// as inputs. Returns whether it fed the node an input (its outputs are drained after).
    async fn carry_out(
        &mut self,
        node: &mut Node,
        seq: pipeline::Seq,
        out: Output,
    ) -> Result<bool, DaemonError> {
        match out {
            Output::Persist(state) => {
                // The pipeline hands every persist to `start_write`; should one come here, it
                // is written inline, durable before anything after it, as the contract says.
                let store = self.store.clone();
                tokio::task::spawn_blocking(move || store.save(&state))
                    .await
                    .map_err(|e| DaemonError::Io {
                        what: "persisting durable state".into(),
                        source: std::io::Error::other(e.to_string()),
                    })??;
            }
            Output::Send {
                to,
                bytes,
                reliable,
                ..
            } => self.transport.send(to, bytes, reliable),
            Output::Fence(cmd) => {
                let host = node.config().roster.name(cmd.target).to_owned();
                // `on` after a confirmed fence carries the certificate too.
                // A command that cannot run fails at once (the node tries its next level).
                let failed = Input::FenceResult {
                    id: cmd.id,
                    result: AgentResult::Failed,
                };
                if !authorised(&self.keys, &cmd.qc, cmd.target, "fence agent") {
                    node.handle(self.clock.now(), failed);
                    return Ok(true);
                }
                let agent_ok = self
                    .agents
                    .get(usize::from(cmd.level))
                    .is_some_and(Option::is_some);
                if !agent_ok {
                    tracing::error!(target_member = %host, level = cmd.level, "no fence agent for this level");
                    node.handle(self.clock.now(), failed);
                    return Ok(true);
                }
                let (agents, tx) = (self.agents.clone(), self.tx.clone());
                let agent_seconds = self.metrics.agent_seconds.clone();
                tokio::spawn(async move {
                    let Some(Some(agent)) = agents.get(usize::from(cmd.level)) else {
                        return;
                    };
                    let out = agent.fence_action(&host, cmd.action, cmd.timeout).await;
                    let last = &out.last;
                    tracing::warn!(target_member = %host, level = %agent.cfg.name, action = ?cmd.action,
                        result = ?out.result, tries = out.tries, code = ?last.code,
                        elapsed_ms = last.elapsed.as_millis() as u64, output = %last.output,
                        "fence agent finished");
                    agent_seconds
                        .get_or_create(&vec![
                            ("level", agent.cfg.name.clone()),
                            ("action", format!("{:?}", cmd.action).to_lowercase()),
                            ("result", format!("{:?}", out.result).to_lowercase()),
                        ])
                        .observe(last.elapsed.as_secs_f64());
                    let input = Input::FenceResult {
                        id: cmd.id,
                        result: out.result,
                    };
                    let _ = tx.send(Msg::Input(input)).await;
                });
            }
            Output::WritePill { id, target, qc } => {
                if !authorised(&self.keys, &qc, target, "poison pill") {
                    node.handle(self.clock.now(), Input::PillWritten { id, ok: false });
                    return Ok(true);
                }
                let tx = self.tx.clone();
                storage::write_pill(node.config().clone(), target, qc, move |ok| {
                    let _ = tx.blocking_send(Msg::Input(Input::PillWritten { id, ok }));
                });
            }
            Output::ClearPill {
                id,
                target,
                proposal,
            } => {
                let tx = self.tx.clone();
                storage::clear_pill(node.config().clone(), target, proposal, move |ok| {
                    let _ = tx.blocking_send(Msg::Input(Input::PillCleared { id, ok }));
                });
            }
            Output::SelfFence(cmd) => {
                if !authorised(&self.keys, &cmd.qc, self.me, "self-fence") {
                    return Ok(true);
                }
                tracing::error!(action = actions::action_name(cmd.action), reason = ?cmd.reason,
                    voters = ?cmd.qc.votes.iter().map(|v| node.config().roster.name(v.voter)).collect::<Vec<_>>(),
                    "self-fence ordered with a quorum certificate: acting on this host");
                actions::execute(&self.local, cmd.action, cmd.reason);
            }
            Output::StopHeartbeat { generation } => {
                let (cfg, writers, me, boot) = (
                    node.config().clone(),
                    self.writers.clone(),
                    self.me,
                    self.boot,
                );
                let paths = cfg.storage.paths.len();
                let took = tokio::task::spawn_blocking(move || {
                    storage::write_stopped(&cfg, me, boot, generation, &writers)
                })
                .await
                .unwrap_or_else(|_| vec![false; paths]);
                let written = took.iter().filter(|ok| **ok).count();
                tracing::info!(
                    generation,
                    written,
                    paths,
                    "clean-stop record written to this host's heartbeat slots"
                );
            }
            Output::Watchdog(action) => match (&self.watchdog, action) {
                (Some(w), WatchdogAction::Feed) => w.feed(),
                (Some(w), WatchdogAction::Stop) => w.stop(),
                (None, _) => {}
            },
            Output::Event(e) => {
                let roster = &node.config().roster;
                log_event(roster, &e);
                self.history
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .on_event(&e, roster, &self.levels);
                let (message, details) = events::describe(&e, roster, &self.levels);
                let member = events::member_of(&e).map(|m| roster.name(m).to_owned());
                let kind = events::kind_of(&e);
                self.metrics
                    .events
                    .get_or_create(&metrics::label("kind", kind))
                    .inc();
                let outcome = match &e {
                    Event::FenceConfirmed { .. } => Some("confirmed"),
                    Event::FenceFailed { .. } => Some("failed"),
                    Event::FenceAborted { .. } => Some("aborted"),
                    _ => None,
                };
                if let Some(o) = outcome {
                    self.metrics
                        .fences
                        .get_or_create(&metrics::label("outcome", o))
                        .inc();
                }
                let ev = self.events.publish(kind, member, message, details);
                for w in self.waiters.iter_mut().filter(|w| w.covers(seq)) {
                    match &mut w.reply {
                        Reply::Action(events, _) => events.push(ev.clone()),
                        Reply::SelfFence(answer, _) => {
                            if let Event::SelfFenceRequestAnswered { answer: a } = &e {
                                *answer = Some(*a);
                            }
                        }
                    }
                }
            }
        }
        Ok(false)
    }
}

fn log_event(roster: &crate::config::Roster, e: &Event) {
    let member = events::member_of(e).map(|m| roster.name(m)).unwrap_or("-");
    match e {
        Event::WouldFence { .. }
        | Event::FenceStarted { .. }
        | Event::FenceConfirmed { .. }
        | Event::SafeToRecover { .. }
        | Event::FenceFailed { .. }
        | Event::FenceAborted { .. }
        | Event::StormEntered { .. }
        | Event::ForgedCertificate { .. }
        | Event::SelfFenceBlocked { .. }
        | Event::SelfFenceLogOnly
        | Event::WatchdogStopped { .. } => tracing::warn!(member, event = ?e),
        _ => tracing::info!(member, event = ?e),
    }
}

/// Lower-cases a unit-variant enum serialized as a string (and every string in an array).
fn lc(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::String(s) => serde_json::Value::String(s.to_lowercase()),
        serde_json::Value::Array(a) => a.into_iter().map(lc).collect(),
        other => other,
    }
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Why a peer is in its HA state, in words (the dashboard and `peerfence status` show it).
fn why(p: &crate::node::PeerStatus) -> String {
    use crate::rules::HaState as H;
    let age = p.heartbeat_age_ms as f64 / 1000.0;
    match p.ha {
        H::Initializing => "this node is in its start-up quiet period: it judges nobody yet".into(),
        H::Available => "alive in gossip, storage heartbeat fresh".into(),
        H::Suspect => "gossip suspects it (missed probes); treated as alive".into(),
        H::Checking => format!(
            "down in gossip; storage heartbeat unchanged for {age:.1} s; the quorum decides"
        ),
        H::Fencing => "a fence is in flight under a quorum certificate".into(),
        H::Fenced => "fenced and confirmed in its current boot".into(),
        H::Partitioned => format!(
            "down in gossip but its storage heartbeat is fresh ({age:.1} s): it is running, so it is not fenced"
        ),
        H::Unmanageable => "its management agent is dead while storage is alive".into(),
        H::FenceFailed => format!(
            "the last fence attempt failed ({} so far); retrying with back-off",
            p.attempts
        ),
        H::Failed => "fence attempts exhausted: an operator must act".into(),
        H::Ineligible => "in maintenance: never fenced".into(),
        H::Left => {
            let (generation, ms) = p.left.unwrap_or_default();
            format!(
                "its daemon was stopped cleanly {:.0} s ago (generation {generation}): peerfence no longer protects this host and never fences it for its silence; start peerfence there again, or fence it explicitly (peerfence fence HOST) if it must be powered off",
                ms as f64 / 1000.0
            )
        }
        H::Disabled => "the cluster is disarmed: nobody is fenced".into(),
        H::FenceDeviceDown => {
            "its fence device failed its last monitor: a failure now could not be fenced by that level"
                .into()
        }
    }
}

fn status(node: &Node, shell: &Shell, addresses: &[std::net::SocketAddr]) -> serde_json::Value {
    use serde_json::json;
    let transport = &shell.transport;
    let st = node.status();
    let cfg = node.config();
    let roster = &cfg.roster;
    let name = |m: peerfence_proto::MemberId| roster.name(m).to_owned();
    let healthy = st.verdict == peerfence_proto::Verdict::Healthy;
    let maint_self = node.durable().in_maintenance(st.me);
    let mut self_why = Vec::new();
    for (i, h) in st.storage.iter().enumerate() {
        if *h != peerfence_proto::StorageHealth::Ok {
            self_why.push(format!("storage path {i} is {h:?}"));
        }
    }
    if st.agent == peerfence_proto::AgentHealth::Dead {
        self_why.push("the management agent is dead".into());
    }
    if st.isolation == peerfence_proto::IsolationHealth::Failed {
        self_why.push("no isolation address answers".into());
    }
    let mut members = Vec::new();
    for m in roster.ids() {
        let address = addresses.get(m.index()).map(|a| a.to_string());
        if m == st.me {
            members.push(json!({
                "name": name(m),
                "self": true,
                "address": address,
                "swim": "alive",
                "ha": if maint_self { "ineligible" } else if healthy { "available" } else { "unhealthy" },
                "why": if self_why.is_empty() { "this host: all its checks pass".to_string() } else { format!("this host: {}", self_why.join("; ")) },
                "power": "on",
                "heartbeat_age_ms": 0,
                "storage_alive": true,
                "boot": st.boot.to_string(),
                "verdict": lc(json(&st.verdict)),
                "agent": lc(json(&st.agent)),
                "storage": lc(json(&st.storage)),
                "isolation": lc(json(&st.isolation)),
                "maintenance": maint_self,
                "fence_devices": st.fence_devices,
                "attempts": 0,
            }));
            continue;
        }
        let Some(p) = st.peers.iter().find(|p| p.member == m) else {
            continue;
        };
        members.push(json!({
            "name": p.name,
            "self": false,
            "address": address,
            "swim": lc(json(&p.swim)),
            "ha": events::ha_name(p.ha),
            "why": why(p),
            "power": lc(json(&p.power)),
            "heartbeat_age_ms": p.heartbeat_age_ms,
            "storage_alive": p.storage_alive,
            "boot": p.boot.map(|b| b.to_string()),
            "verdict": p.verdict.map(|v| lc(json(&v))),
            "agent": p.agent.map(|a| lc(json(&a))),
            "storage": p.storage.as_ref().map(|s| lc(json(s))),
            "isolation": p.isolation.map(|i| lc(json(&i))),
            "maintenance": p.maintenance,
            "fence_devices": p.fence_devices,
            "attempts": p.attempts,
            "dead": p.dead,
            "left": p.left.map(|(generation, ms)| json!({"generation": generation, "for_ms": ms})),
        }));
    }
    let budget = usize::from(st.budget);
    json!({
        "summary": {
            "node": name(st.me),
            "members": roster.len(),
            "quorum": st.quorum,
            "visible": st.visible,
            "eligible": st.ineligible.is_none(),
            "ineligible": st.ineligible.map(|i| lc(json(&i))),
            "armed": st.armed,
            "mode": lc(json(&st.mode)),
            "storm": st.storm,
            "verdict": lc(json(&st.verdict)),
            "budget": budget,
            "budget_used": st.budget_used,
            "budget_left": budget.saturating_sub(st.budget_used),
            "budget_window_s": cfg.fencing.budget_window.as_secs(),
            "fences_in_flight": st.fences_in_flight.iter().map(|m| name(*m)).collect::<Vec<_>>(),
            "watchdog_feeding": st.watchdog_feeding,
        },
        "members": members,
        "node": st,
        "cluster": cfg.cluster.as_str(),
        "config_digest": format!("{:016x}", cfg.digest().0),
        // Member name → its peerfence (QUIC) address, so that callers that know hosts by IP
        // (CloudStack passes the host's IP) can find the member.
        "addresses": roster
            .ids()
            .map(|m| (name(m), serde_json::Value::from(addresses[m.index()].to_string())))
            .collect::<serde_json::Map<_, _>>(),
        "messages": node.stats(),
        "transport": transport.stats(),
        "watchdog": shell.watchdog.as_ref().map(|w| w.stats()),
        "fence_levels": shell.levels,
        "events": {"first_seq": shell.events.bounds().0, "next_seq": shell.events.bounds().1},
        "hooks": shell.hooks.stats(),
        "state_file": {
            "writing": shell.pipeline.writing(),
            "held": shell.pipeline.held(),
            "durable_generation": shell.pipeline.durable_generation(),
        },
    })
}

async fn signals(tx: mpsc::Sender<Msg>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("signal received: leaving cleanly (a second signal exits at once)");
    let _ = tx.send(Msg::Shutdown).await;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    /// The daemon's clock is the host's boot clock: a second daemon process (a second `Clock`)
    /// reads on where the first left off instead of starting again near zero, so instants the
    /// first one persisted keep their meaning.
    #[test]
    fn the_clock_counts_from_boot_and_survives_a_restart() {
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let first = Clock::start();
        let a = first.now();
        assert!(
            a.as_micros() as f64 >= (uptime - 1.0) * 1e6,
            "{a:?} vs uptime {uptime} s"
        );
        let second = Clock::start();
        assert!(
            second.now() >= a,
            "a restarted daemon's clock never goes back"
        );
        // Deadlines map onto tokio's clock from the start of this process.
        assert_eq!(second.deadline(second.boot), second.tokio);
    }
}

#[cfg(test)]
mod boundary_tests {
    use super::*;
    use peerfence_proto::{FenceKind, MemberId, Proposal, QuorumCertificate, Round};

    /// Issue 10 §7: the daemon checks every certificate again before an agent, a pill or a
    /// self-fence runs: a forged or misdirected one runs nothing.
    #[test]
    fn the_boundary_refuses_what_the_core_would_never_emit() {
        let cfg = crate::testutil::config(3);
        let keys = crate::crypto::KeyRing::new(&cfg);
        let forged = QuorumCertificate {
            proposal: Proposal {
                target: MemberId(2),
                target_boot: BootId([2; 16]),
                proposer: MemberId(0),
                round: Round::new(1, 1),
                kind: FenceKind::Fence,
                budget_slot: Some(0),
                lane: 0,
            },
            votes: vec![],
        };
        assert!(!authorised(&keys, &forged, MemberId(2), "fence agent"));
        // A real one passes, but only for its own target.
        let p = forged.proposal;
        let votes = [0u16, 1]
            .iter()
            .map(|&v| {
                let evidence = peerfence_proto::VoteEvidence {
                    voter_healthy: true,
                    target_down_ms: 4000,
                    heartbeat_stalled_ms: 6000,
                };
                peerfence_proto::SignedVote {
                    voter: MemberId(v),
                    evidence,
                    signature: crate::testutil::key(usize::from(v)).sign(
                        &cfg.cluster,
                        cfg.digest(),
                        &p,
                        MemberId(v),
                        &evidence,
                    ),
                }
            })
            .collect();
        let real = QuorumCertificate { proposal: p, votes };
        assert!(authorised(&keys, &real, MemberId(2), "fence agent"));
        assert!(!authorised(&keys, &real, MemberId(1), "fence agent"));
    }
}
