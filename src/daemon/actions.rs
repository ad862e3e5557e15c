//! Self-fence actions: one interface for what a host does to itself.
//!
//! The core orders an action only with a quorum certificate (or a poison pill naming this boot);
//! this module carries it out. `reboot` syncs with a deadline (a hung NFS mount must not stop the
//! reboot) then writes `b` to `/proc/sysrq-trigger`; `graceful-reboot` runs `systemctl reboot`
//! and escalates to `reboot` if the host still runs after its deadline; `restart-agent` restarts
//! the management agent's unit; `power-off` (poison pill) writes `o`. `log-only` and `none` never
//! reach here: the core only reports them.
//!
//! The `record` executor appends each action to a file and does nothing else: tests and the
//! demo use it so that nothing on the machine running them is rebooted.
#![allow(clippy::disallowed_methods)]

use super::config::{Executor, LocalActionsConfig};
use crate::node::{LocalAction, SelfFenceReason};
use std::io::Write;
use std::time::Duration;

/// The name operators see (as in the configuration).
pub fn action_name(a: LocalAction) -> &'static str {
    match a {
        LocalAction::Reboot => "reboot",
        LocalAction::GracefulReboot => "graceful-reboot",
        LocalAction::RestartAgent => "restart-agent",
        LocalAction::PowerOff => "power-off",
    }
}

/// Carries out `action` on a thread of its own (a hung `sync` or `systemctl` must not block
/// the node's task) and returns at once.
pub fn execute(cfg: &LocalActionsConfig, action: LocalAction, reason: SelfFenceReason) {
    let owned = cfg.clone();
    let spawned = std::thread::Builder::new()
        .name("pf-self-fence".into())
        .spawn(move || match &owned.executor {
            Executor::Record(file) => record(file, action, reason),
            Executor::System => system(&owned, action),
        });
    if let Err(e) = spawned {
        // Last resort: do it from here.
        tracing::error!(error = %e, "cannot start the self-fence thread; acting inline");
        if cfg.executor == Executor::System {
            sysrq(if action == LocalAction::PowerOff {
                b'o'
            } else {
                b'b'
            });
        }
    }
}

fn record(file: &std::path::Path, action: LocalAction, reason: SelfFenceReason) {
    let line = format!("{} {:?}\n", action_name(action), reason);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| {
            f.write_all(line.as_bytes())?;
            f.sync_data()
        });
    match written {
        Ok(()) => {
            tracing::warn!(action = action_name(action), file = %file.display(), "self-fence recorded (executor = \"record\": nothing else done)")
        }
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "cannot record the self-fence action")
        }
    }
}

fn system(cfg: &LocalActionsConfig, action: LocalAction) {
    match action {
        LocalAction::Reboot => {
            sync_with_deadline(cfg.sync_timeout);
            sysrq(b'b');
        }
        LocalAction::PowerOff => {
            // A poison pill: no sync — the host's storage may be what is being protected.
            sysrq(b'o');
        }
        LocalAction::GracefulReboot => {
            let ran = run_with_timeout("systemctl", &["reboot"], Duration::from_secs(30));
            if !ran {
                tracing::error!("systemctl reboot failed; rebooting hard");
            } else {
                // Still here after the deadline: the graceful path is stuck.
                std::thread::sleep(cfg.graceful_timeout);
                tracing::error!(deadline = ?cfg.graceful_timeout, "graceful reboot did not finish in time; rebooting hard");
            }
            sync_with_deadline(cfg.sync_timeout);
            sysrq(b'b');
        }
        LocalAction::RestartAgent => {
            let Some(unit) = &cfg.agent_unit else {
                tracing::error!("restart-agent ordered but no agent unit is configured");
                return;
            };
            if run_with_timeout("systemctl", &["restart", unit], Duration::from_secs(90)) {
                tracing::warn!(unit, "management agent restarted");
            } else {
                tracing::error!(unit, "restarting the management agent failed");
            }
        }
    }
}

/// `sync(2)` on a helper thread, waited for at most `deadline`.
#[allow(unsafe_code)]
fn sync_with_deadline(deadline: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("pf-sync".into())
        .spawn(move || {
            // SAFETY: sync(2) takes no arguments and cannot fail.
            unsafe { libc::sync() };
            let _ = tx.send(());
        });
    if rx.recv_timeout(deadline).is_err() {
        tracing::error!(
            ?deadline,
            "sync did not finish in time; rebooting without it"
        );
    }
}

fn sysrq(key: u8) {
    tracing::error!(key = %(key as char), "writing to /proc/sysrq-trigger");
    if let Err(e) = std::fs::write("/proc/sysrq-trigger", [key]) {
        tracing::error!(error = %e, "cannot write /proc/sysrq-trigger");
    }
}

fn run_with_timeout(program: &str, args: &[&str], limit: Duration) -> bool {
    let Ok(mut child) = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .spawn()
    else {
        return false;
    };
    let end = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return s.success(),
            Ok(None) if std::time::Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(100))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_record_executor_records_and_does_nothing_else() {
        let file = std::env::temp_dir().join(format!("pf-actions-{}", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let cfg = LocalActionsConfig {
            executor: Executor::Record(file.clone()),
            sync_timeout: Duration::from_secs(1),
            graceful_timeout: Duration::from_secs(1),
            agent_unit: None,
            watchdog_device: PathBuf::from("/dev/null"),
        };
        execute(&cfg, LocalAction::Reboot, SelfFenceReason::QuorumAgreed);
        execute(&cfg, LocalAction::PowerOff, SelfFenceReason::PoisonPill);
        let end = std::time::Instant::now() + Duration::from_secs(10);
        let mut text = String::new();
        while std::time::Instant::now() < end {
            text = std::fs::read_to_string(&file).unwrap_or_default();
            if text.lines().count() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(text.contains("reboot QuorumAgreed"), "{text}");
        assert!(text.contains("power-off PoisonPill"), "{text}");
        std::fs::remove_file(&file).ok();
    }
}
