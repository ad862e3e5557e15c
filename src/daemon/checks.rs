//! Health checks other than storage: the management agent, isolation addresses, and custom
//! commands. Each check runs in a thread of its own with its own timeout, so one that hangs
//! delays nothing else; a command that overruns is killed.

use super::Msg;
use super::config::{AgentCheck, ExecCheck, HealthConfig};
use super::metrics::Metrics;
use crate::node::Input;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Sender;

/// Runs a command, killing it after `timeout`. True only for exit status 0 in time.
pub fn run_command(cmd: &[String], timeout: Duration) -> bool {
    let Some((prog, args)) = cmd.split_first() else {
        return false;
    };
    let Ok(mut child) = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return false,
        }
    }
}

/// Whether the process named in `pid_file` exists.
pub fn pid_alive(pid_file: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return false;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether one of `addresses` accepts a TCP connection within `timeout`.
pub fn any_reachable(addresses: &[String], timeout: Duration) -> bool {
    addresses.iter().any(|a| {
        a.to_socket_addrs()
            .ok()
            .into_iter()
            .flatten()
            .any(|sa| TcpStream::connect_timeout(&sa, timeout).is_ok())
    })
}

fn agent_ok(check: &AgentCheck, timeout: Duration) -> bool {
    match check {
        AgentCheck::SystemdUnit(unit) => run_command(
            &[
                "systemctl".into(),
                "is-active".into(),
                "--quiet".into(),
                unit.clone(),
            ],
            timeout,
        ),
        AgentCheck::PidFile(f) => pid_alive(f),
        AgentCheck::Exec(cmd) => run_command(cmd, timeout),
    }
}

/// Latest result of each check that feeds the isolation input.
struct IsolationState {
    isolation: Option<bool>,
    exec: Vec<Option<bool>>,
}

impl IsolationState {
    /// All known results pass (unknown ones do not fail the host).
    fn all_ok(&self) -> bool {
        self.isolation.unwrap_or(true) && self.exec.iter().all(|r| r.unwrap_or(true))
    }
}

/// Calls `f` every `interval` (catching up without bursts when a call ran long) until `stop` is
/// set or `f` returns false. The periodic threads of checks and storage heartbeats use it.
pub(super) fn every(interval: Duration, stop: &AtomicBool, mut f: impl FnMut() -> bool) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if !f() {
            return;
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// Starts every configured check.
pub fn spawn(
    health: &HealthConfig,
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let interval = health.interval;
    // Each check's duration and result, for `/metrics`.
    let timed = move |check: &str, f: &mut dyn FnMut() -> bool| {
        let start = Instant::now();
        let ok = f();
        metrics
            .check_seconds
            .get_or_create(&vec![
                ("check", check.to_owned()),
                ("result", if ok { "ok" } else { "failed" }.to_owned()),
            ])
            .observe(start.elapsed().as_secs_f64());
        ok
    };
    if let Some((check, timeout)) = health.agent.clone() {
        let (tx, stop, timed) = (tx.clone(), stop.clone(), timed.clone());
        std::thread::Builder::new()
            .name("pf-check-agent".into())
            .spawn(move || {
                every(interval, &stop, || {
                    let alive = timed("agent", &mut || agent_ok(&check, timeout));
                    tx.blocking_send(Msg::Input(Input::AgentCheck { alive }))
                        .is_ok()
                })
            })?;
    }
    if health.isolation.is_none() && health.exec.is_empty() {
        return Ok(());
    }
    let state = Arc::new(Mutex::new(IsolationState {
        isolation: None,
        exec: vec![None; health.exec.len()],
    }));
    let report = move |state: &Mutex<IsolationState>,
                       tx: &Sender<Msg>,
                       set: &dyn Fn(&mut IsolationState)| {
        let ok = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            set(&mut s);
            s.all_ok()
        };
        tx.blocking_send(Msg::Input(Input::IsolationCheck { ok }))
            .is_ok()
    };
    if let Some((addresses, timeout)) = health.isolation.clone() {
        let (tx, stop, state, timed) = (tx.clone(), stop.clone(), state.clone(), timed.clone());
        std::thread::Builder::new()
            .name("pf-check-isolation".into())
            .spawn(move || {
                every(interval, &stop, || {
                    let ok = timed("isolation", &mut || any_reachable(&addresses, timeout));
                    report(&state, &tx, &|s| s.isolation = Some(ok))
                })
            })?;
    }
    for (
        i,
        ExecCheck {
            name,
            command,
            timeout,
        },
    ) in health.exec.iter().cloned().enumerate()
    {
        let (tx, stop, state, timed) = (tx.clone(), stop.clone(), state.clone(), timed.clone());
        let label = format!("exec:{name}");
        std::thread::Builder::new()
            .name(format!("pf-check-{name}"))
            .spawn(move || {
                every(interval, &stop, || {
                    let ok = timed(&label, &mut || run_command(&command, timeout));
                    report(&state, &tx, &|s| s.exec[i] = Some(ok))
                })
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_pass_fail_and_time_out() {
        assert!(run_command(&["true".into()], Duration::from_secs(5)));
        assert!(!run_command(&["false".into()], Duration::from_secs(5)));
        assert!(!run_command(
            &["/nonexistent/program".into()],
            Duration::from_secs(5)
        ));
        let started = Instant::now();
        assert!(!run_command(
            &["sleep".into(), "30".into()],
            Duration::from_millis(200)
        ));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "killed at its timeout"
        );
    }

    #[test]
    fn pid_files_and_isolation() {
        let dir = std::env::temp_dir().join(format!("pf-checks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("agent.pid");
        std::fs::write(&f, format!("{}\n", std::process::id())).unwrap();
        assert!(pid_alive(&f));
        std::fs::write(&f, "999999999\n").unwrap();
        assert!(!pid_alive(&f));
        std::fs::write(&f, "garbage").unwrap();
        assert!(!pid_alive(&f));
        assert!(!pid_alive(&dir.join("missing.pid")));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        assert!(any_reachable(
            &["127.0.0.1:1".into(), open],
            Duration::from_secs(1)
        ));
        drop(listener);
        std::fs::remove_dir_all(&dir).ok();
    }
}
