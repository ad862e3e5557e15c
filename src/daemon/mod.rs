//! The daemon shell around the core: `peerfence run`.
//!
//! Everything that touches the world lives here (and only here): the clock, the QUIC
//! transport, TLS, files, health-check threads, the status endpoint. One task owns the core's
//! `Node` and is the only reader of the clock; everything else talks to it through one bounded
//! channel ([`Msg`]). After every input it drains the node's outputs in order, and a `Persist`
//! is written and synced before the next output is looked at.
//!
//! This module is exempt from the core's sans-IO lints (`clippy.toml`): doing IO is its job.
#![allow(clippy::disallowed_methods)]

pub mod actions;
pub mod certs;
pub mod checks;
pub mod cloudstack;
pub mod config;
pub mod demo;
pub mod events;
pub mod fence;
pub mod history;
pub mod http;
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

/// Messages the node's task receives. The channel is bounded ([`INBOX`]); network input that
/// finds it full is dropped and counted, local threads wait.
pub enum Msg {
    /// An input for the node.
    Input(Input),
    /// A request for the status view.
    Status(oneshot::Sender<serde_json::Value>),
    /// A local self-fence request (CloudStack's heartbeat script `-c`).
    SelfFenceRequest(oneshot::Sender<SelfFenceAnswer>),
    /// Leave the cluster and stop (SIGTERM, SIGINT).
    Shutdown,
}

/// Capacity of the node's inbox.
pub const INBOX: usize = 8192;

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

/// The one clock of the daemon: monotonic time since start, as the core's instant.
#[derive(Clone, Copy)]
struct Clock {
    std: std::time::Instant,
    tokio: tokio::time::Instant,
}

impl Clock {
    fn start() -> Self {
        Self {
            std: std::time::Instant::now(),
            tokio: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.std.elapsed().as_micros() as u64)
    }

    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        self.tokio + Duration::from_micros(at.as_micros())
    }
}

/// Runs the daemon until SIGTERM or SIGINT (a second one exits at once).
pub async fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
    let clock = Clock::start();
    let core = cfg.core.clone();
    let vote = certs::load_vote_key(&cfg.vote_key)?;
    let names: Vec<String> = core
        .roster
        .ids()
        .map(|m| core.roster.name(m).to_owned())
        .collect();
    let tls = certs::Tls::load(&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key, names)?;
    let boot = boot_id(cfg.boot_id)?;
    let store = store::StateFile::open(&cfg.data_dir)?;
    let durable = store.load()?;
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed)
        .map_err(|e| DaemonError::BootId("getrandom".into(), e.to_string()))?;
    let mut node = Node::new(
        core.clone(),
        cfg.me,
        vote,
        boot,
        durable,
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
    let history = Arc::new(std::sync::Mutex::new(history::History::default()));
    history.lock().unwrap_or_else(|p| p.into_inner()).seed(
        &node.durable().fence_log,
        &core.roster,
        &levels,
    );
    let (tx, mut rx) = mpsc::channel::<Msg>(INBOX);
    let transport = transport::Transport::bind(cfg.listen, tls, cfg.addresses.clone(), tx.clone())
        .map_err(io(format!("cannot listen on {} (QUIC/UDP)", cfg.listen)))?;
    let generation = Arc::new(AtomicU32::new(node.generation()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut shell = Shell {
        clock,
        store,
        transport,
        tx: tx.clone(),
        agents: agents.clone(),
        local: cfg.local.clone(),
        watchdog,
        answer: None,
        events: events.clone(),
        history: history.clone(),
        levels: levels.clone(),
    };
    // The first output persists the new generation: nothing leaves before it is on disk.
    shell.drain(&mut node).await?;
    storage::spawn(
        core.clone(),
        cfg.me,
        boot,
        generation.clone(),
        tx.clone(),
        stop.clone(),
    )
    .map_err(io("cannot start the storage heartbeat threads"))?;
    checks::spawn(&cfg.health, tx.clone(), stop.clone())
        .map_err(io("cannot start the health-check threads"))?;
    if let Some(addr) = cfg.http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io(format!("cannot listen on {addr} (HTTP)")))?;
        tokio::spawn(http::serve(listener, tx.clone()));
        tracing::info!(%addr, "status endpoint: GET /v1/cluster");
    }
    tokio::spawn(signals(tx.clone()));
    fence::spawn_periodic(agents, names_of(&core), cfg.me, tx.clone());

    loop {
        let deadline = clock.deadline(node.poll_timeout());
        let input = tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Input(input)) => Some(input),
                Some(Msg::Status(reply)) => {
                    let _ = reply.send(status(&node, &shell, &cfg.addresses));
                    None
                }
                Some(Msg::SelfFenceRequest(reply)) => {
                    shell.answer = None;
                    node.handle(
                        clock.now(),
                        Input::Operator(OperatorCommand::SelfFenceRequest),
                    );
                    generation.store(node.generation(), Ordering::SeqCst);
                    shell.drain(&mut node).await?;
                    if let Some(a) = shell.answer.take() {
                        let _ = reply.send(a);
                    }
                    None
                }
                Some(Msg::Shutdown) | None => break,
            },
            _ = tokio::time::sleep_until(deadline) => Some(Input::Tick),
        };
        if let Some(input) = input {
            node.handle(clock.now(), input);
            generation.store(node.generation(), Ordering::SeqCst);
            shell.drain(&mut node).await?;
        }
    }
    tracing::info!("leaving the cluster");
    node.handle(clock.now(), Input::Shutdown);
    shell.drain(&mut node).await?;
    stop.store(true, Ordering::SeqCst);
    if let Some(w) = shell.watchdog.take() {
        // Magic close unless the core stopped feeding (then the reset must still come).
        w.close();
    }
    shell.transport.close(Duration::from_secs(1)).await;
    tracing::info!("stopped");
    Ok(())
}

fn names_of(core: &crate::config::Config) -> Vec<String> {
    core.roster
        .ids()
        .map(|m| core.roster.name(m).to_owned())
        .collect()
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
    /// The last answer to a local self-fence request, picked up by the requester.
    answer: Option<SelfFenceAnswer>,
    /// Every event, for the API, the dashboard and hooks.
    events: Arc<events::EventLog>,
    /// Fence rounds, for `GET /v1/fences`.
    history: Arc<std::sync::Mutex<history::History>>,
    /// Fence level names by index.
    levels: Vec<String>,
}

impl Shell {
    /// Carries out every output, in order. A `Persist` is durable before the next output is
    /// read; fence agents and pill writes run in the background and answer as inputs.
    async fn drain(&mut self, node: &mut Node) -> Result<(), DaemonError> {
        while let Some(out) = node.poll_output() {
            match out {
                Output::Persist(state) => {
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
                } => self.transport.send(to, bytes, reliable),
                Output::Fence(cmd) => {
                    let host = node.config().roster.name(cmd.target).to_owned();
                    let agent_ok = self
                        .agents
                        .get(usize::from(cmd.level))
                        .is_some_and(Option::is_some);
                    if !agent_ok {
                        tracing::error!(target_member = %host, level = cmd.level, "no fence agent for this level");
                        node.handle(
                            self.clock.now(),
                            Input::FenceResult {
                                id: cmd.id,
                                result: AgentResult::Failed,
                            },
                        );
                        continue;
                    }
                    let (agents, tx) = (self.agents.clone(), self.tx.clone());
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
                        let input = Input::FenceResult {
                            id: cmd.id,
                            result: out.result,
                        };
                        let _ = tx.send(Msg::Input(input)).await;
                    });
                }
                Output::WritePill { id, target, qc } => {
                    let tx = self.tx.clone();
                    storage::write_pill(node.config().clone(), target, qc, move |ok| {
                        let _ = tx.blocking_send(Msg::Input(Input::PillWritten { id, ok }));
                    });
                }
                Output::ClearPill { target } => storage::clear_pill(node.config().clone(), target),
                Output::SelfFence(cmd) => {
                    tracing::error!(action = actions::action_name(cmd.action), reason = ?cmd.reason,
                        voters = ?cmd.qc.votes.iter().map(|v| node.config().roster.name(v.voter)).collect::<Vec<_>>(),
                        "self-fence ordered with a quorum certificate: acting on this host");
                    actions::execute(&self.local, cmd.action, cmd.reason);
                }
                Output::Watchdog(action) => match (&self.watchdog, action) {
                    (Some(w), WatchdogAction::Feed) => w.feed(),
                    (Some(w), WatchdogAction::Stop) => w.stop(),
                    (None, _) => {}
                },
                Output::Event(e) => {
                    if let Event::SelfFenceRequestAnswered { answer } = &e {
                        self.answer = Some(*answer);
                    }
                    let roster = &node.config().roster;
                    log_event(roster, &e);
                    self.history
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .on_event(&e, roster, &self.levels);
                    let (message, details) = events::describe(&e, roster, &self.levels);
                    let member = events::member_of(&e).map(|m| roster.name(m).to_owned());
                    self.events
                        .publish(events::kind_of(&e), member, message, details);
                }
            }
        }
        Ok(())
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

fn status(node: &Node, shell: &Shell, addresses: &[std::net::SocketAddr]) -> serde_json::Value {
    let transport = &shell.transport;
    serde_json::json!({
        "node": node.status(),
        "cluster": node.config().cluster.as_str(),
        "config_digest": format!("{:016x}", node.config().digest().0),
        // Member name → its peerfence (QUIC) address, so that callers that know hosts by IP
        // (CloudStack passes the host's IP) can find the member.
        "addresses": node
            .config()
            .roster
            .ids()
            .map(|m| (node.config().roster.name(m).to_owned(), serde_json::Value::from(addresses[m.index()].to_string())))
            .collect::<serde_json::Map<_, _>>(),
        "messages": node.stats(),
        "transport": transport.stats(),
        "watchdog": shell.watchdog.as_ref().map(|w| w.stats()),
        "fence_levels": node.config().fencing.levels.iter().map(|l| l.name.clone()).collect::<Vec<_>>(),
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
