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

pub mod certs;
pub mod checks;
pub mod config;
pub mod http;
pub mod storage;
pub mod store;
pub mod transport;

use crate::node::{AgentResult, Event, Input, Node, Output};
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
    tracing::info!(boot = %boot, generation = node.generation(), "starting");

    let (tx, mut rx) = mpsc::channel::<Msg>(INBOX);
    let transport = transport::Transport::bind(cfg.listen, tls, cfg.addresses.clone(), tx.clone())
        .map_err(io(format!("cannot listen on {} (QUIC/UDP)", cfg.listen)))?;
    let generation = Arc::new(AtomicU32::new(node.generation()));
    let stop = Arc::new(AtomicBool::new(false));
    // The first output persists the new generation: nothing leaves before it is on disk.
    drain(&mut node, &clock, &store, &transport).await?;
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

    loop {
        let deadline = clock.deadline(node.poll_timeout());
        let input = tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Input(input)) => Some(input),
                Some(Msg::Status(reply)) => {
                    let _ = reply.send(status(&node, &transport, &cfg.addresses));
                    None
                }
                Some(Msg::Shutdown) | None => break,
            },
            _ = tokio::time::sleep_until(deadline) => Some(Input::Tick),
        };
        if let Some(input) = input {
            node.handle(clock.now(), input);
            generation.store(node.generation(), Ordering::SeqCst);
            drain(&mut node, &clock, &store, &transport).await?;
        }
    }
    tracing::info!("leaving the cluster");
    node.handle(clock.now(), Input::Shutdown);
    drain(&mut node, &clock, &store, &transport).await?;
    stop.store(true, Ordering::SeqCst);
    transport.close(Duration::from_secs(1)).await;
    tracing::info!("stopped");
    Ok(())
}

/// Carries out every output, in order. A `Persist` is durable before the next output is read.
async fn drain(
    node: &mut Node,
    clock: &Clock,
    store: &store::StateFile,
    transport: &transport::Transport,
) -> Result<(), DaemonError> {
    while let Some(out) = node.poll_output() {
        match out {
            Output::Persist(state) => {
                let store = store.clone();
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
            } => transport.send(to, bytes, reliable),
            Output::Fence(cmd) => {
                tracing::error!(target_member = %cmd.target, level = cmd.level, action = ?cmd.action,
                    "fence agents are not run by this build yet: the level fails");
                node.handle(
                    clock.now(),
                    Input::FenceResult {
                        id: cmd.id,
                        result: AgentResult::Failed,
                    },
                );
            }
            Output::WritePill { id, target, .. } => {
                tracing::error!(target_member = %target, "poison pills are not written by this build yet: the level fails");
                node.handle(clock.now(), Input::PillWritten { id, ok: false });
            }
            Output::ClearPill { .. } => {}
            Output::SelfFence(cmd) => {
                tracing::error!(action = ?cmd.action, reason = ?cmd.reason,
                    "a self-fence was ordered but this build does not carry out self-fence actions yet");
            }
            Output::Watchdog(_) => {}
            Output::Event(e) => log_event(&node.config().roster, &e),
        }
    }
    Ok(())
}

/// The member an event is about, to name it in the log.
fn event_member(e: &Event) -> Option<peerfence_proto::MemberId> {
    Some(match e {
        Event::SwimChanged { member, .. }
        | Event::HaChanged { member, .. }
        | Event::Rebooted { member, .. }
        | Event::PowerChanged { member, .. }
        | Event::HostFoundOff { member }
        | Event::MaintenanceChanged { member, .. } => *member,
        Event::WouldFence { target, .. }
        | Event::FenceConfirmed { target, .. }
        | Event::SafeToRecover { target, .. }
        | Event::FenceFailed { target, .. }
        | Event::FenceAborted { target, .. }
        | Event::LevelFailed { target, .. }
        | Event::BudgetExhausted { target }
        | Event::ManualFence { target, .. } => *target,
        Event::Proposed { proposal }
        | Event::Voted { proposal, .. }
        | Event::RoundAbandoned { proposal, .. } => proposal.target,
        Event::FenceStarted { qc, .. } => qc.proposal.target,
        _ => return None,
    })
}

fn log_event(roster: &crate::config::Roster, e: &Event) {
    let member = event_member(e).map(|m| roster.name(m)).unwrap_or("-");
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

fn status(
    node: &Node,
    transport: &transport::Transport,
    addresses: &[std::net::SocketAddr],
) -> serde_json::Value {
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
