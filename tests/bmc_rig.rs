//! Tests of the simulated-BMC rig itself (tests/common/bmc.rs), with the real ipmi_sim, ipmitool
//! and fence_ipmilan: power is observable as a host process that the BMC kills and restarts.
//! Missing tools fail these tests: install them with `.ci/install-deps`.
// Tests write files and wait on processes; the sans-IO rule of clippy.toml is about the library.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::bmc::{self, Bmc};
use common::wait_for;

const USER: &str = "admin";
const PASSWORD: &str = "secret";
/// A bound on one fence_ipmilan run that must succeed quickly.
const QUICK: Duration = Duration::from_secs(15);

/// A scratch directory for one test, with a host (`host/`) whose power-on runs `sleep 1000`.
/// On drop it kills the host's process and removes the directory (kept if the test failed).
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pf-bmc-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let s = Scratch { dir };
        bmc::write_start_script(&s.host(), "exec sleep 1000");
        s
    }

    fn host(&self) -> PathBuf {
        self.dir.join("host")
    }

    fn work(&self) -> PathBuf {
        self.dir.join("bmc")
    }

    /// Powers the host on by hand (as the test would start a daemon) and returns its pid.
    fn power_on_host(&self) -> u32 {
        // Through sh, not exec of the script itself: another test thread forking while this
        // one's script file was still open for writing makes exec fail with ETXTBSY ("Text file
        // busy"; seen once in CI). Reading a script as sh's input has no such race.
        let ok = Command::new("sh")
            .arg(self.host().join("start"))
            .status()
            .unwrap();
        assert!(ok.success());
        wait_for(Duration::from_secs(5), || bmc::host_pid(&self.host()))
            .expect("the start script did not record a live pid")
    }

    /// What the BMC asked of the host, one request a line.
    fn bmc_log(&self) -> String {
        std::fs::read_to_string(self.host().join("bmc.log")).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(pid) = bmc::host_pid(&self.host()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if std::thread::panicking() {
            eprintln!("rig files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs fence_ipmilan against `bmc` with the right credentials and prints what it took.
fn fence(bmc: &Bmc, action: &str, extra: &[(&str, &str)]) -> (i32, Duration, String) {
    let r = bmc::fence_ipmilan(bmc.port(), USER, PASSWORD, action, extra, QUICK);
    eprintln!("fence_ipmilan action={action}: rc {} in {:.3?}", r.0, r.1);
    r
}

/// Waits (at most 5 s) until `pid` is gone or a zombie.
fn gone(pid: u32) -> bool {
    wait_for(Duration::from_secs(5), || {
        (!bmc::process_alive(pid)).then_some(())
    })
    .is_some()
}

fn start_bmc(s: &Scratch, name: &str) -> Bmc {
    bmc::require_tools().unwrap();
    let port = bmc::free_udp_port();
    let t = std::time::Instant::now();
    let b = Bmc::start(&s.work(), name, port, USER, PASSWORD, &s.host());
    eprintln!(
        "ipmi_sim {name} on port {port} ready in {:.3?}",
        t.elapsed()
    );
    b
}

fn assert_host_untouched(host: &Path, pid: u32) {
    assert!(bmc::process_alive(pid), "the host process {pid} died");
    assert_eq!(bmc::host_pid(host), Some(pid));
}

#[test]
fn fence_ipmilan_status_off_on_drive_the_host_process() {
    bmc::require_tools().unwrap();
    let s = Scratch::new("power");
    let first = s.power_on_host();
    let mut b = start_bmc(&s, "power");

    let (rc, _, out) = fence(&b, "status", &[]);
    assert_eq!(rc, 0, "status of a host that is on: {out}");
    assert!(out.contains("Status: ON"), "{out}");

    let (rc, _, out) = fence(&b, "off", &[]);
    assert_eq!(rc, 0, "off: {out}");
    assert!(gone(first), "off left the host process {first} running");
    assert_eq!(bmc::host_pid(&s.host()), None);

    let (rc, _, out) = fence(&b, "status", &[]);
    assert_eq!(rc, 2, "status of a host that is off: {out}");
    assert!(out.contains("Status: OFF"), "{out}");

    let (rc, _, out) = fence(&b, "on", &[]);
    assert_eq!(rc, 0, "on: {out}");
    let second = bmc::host_pid(&s.host()).expect("on did not start the host");
    assert_ne!(second, first);
    assert!(bmc::process_alive(second));

    let (rc, _, out) = fence(&b, "status", &[]);
    assert_eq!(rc, 0, "status after on: {out}");

    let log = s.bmc_log();
    eprintln!("what the BMC asked of the host:\n{log}");
    let sets: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, req)| req))
        .filter(|req| req.starts_with("set "))
        .collect();
    assert_eq!(sets, ["set power 0", "set power 1"], "{log}");

    b.stop();
    b.stop();
}

#[test]
fn wrong_password_fails_fast_and_leaves_the_host_alone() {
    bmc::require_tools().unwrap();
    let s = Scratch::new("password");
    let pid = s.power_on_host();
    let b = start_bmc(&s, "password");

    let (rc, took, out) = bmc::fence_ipmilan(b.port(), USER, "wrong", "off", &[], QUICK);
    eprintln!("fence_ipmilan action=off, wrong password: rc {rc} in {took:.3?}");
    assert_eq!(rc, 1, "{out}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {out}");
    assert_host_untouched(&s.host(), pid);
    assert!(!s.bmc_log().contains("set "), "{}", s.bmc_log());

    let (rc, _, out) = fence(&b, "status", &[]);
    assert_eq!(rc, 0, "the right password still works: {out}");
}

#[test]
fn hung_bmc_fails_within_the_power_timeout_and_recovers_on_resume() {
    bmc::require_tools().unwrap();
    let s = Scratch::new("hung");
    let pid = s.power_on_host();
    let b = start_bmc(&s, "hung");

    b.hang();
    let timeouts = [
        ("power_timeout", "5"),
        ("login_timeout", "5"),
        ("shell_timeout", "5"),
    ];
    let (rc, took, out) = bmc::fence_ipmilan(
        b.port(),
        USER,
        PASSWORD,
        "status",
        &timeouts,
        Duration::from_secs(20),
    );
    eprintln!("fence_ipmilan action=status, hung BMC: rc {rc} in {took:.3?}");
    assert_ne!(rc, 0, "a hung BMC answered: {out}");
    assert_ne!(rc, -1, "fence_ipmilan had to be killed: {out}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {out}");

    b.resume();
    let t = std::time::Instant::now();
    let back = wait_for(Duration::from_secs(10), || {
        let (rc, _, out) = bmc::fence_ipmilan(b.port(), USER, PASSWORD, "status", &[], QUICK);
        (rc == 0).then_some(out)
    });
    eprintln!("status answered {:.3?} after resume", t.elapsed());
    assert!(back.is_some_and(|out| out.contains("Status: ON")));
    assert_host_untouched(&s.host(), pid);
}

#[test]
fn reset_reboot_identify_and_soft_shutdown_follow_the_host_contract() {
    bmc::require_tools().unwrap();
    let s = Scratch::new("contract");
    let first = s.power_on_host();
    let b = start_bmc(&s, "contract");

    let (rc, took, out) = b.ipmitool(&["chassis", "identify", "1"]);
    eprintln!("ipmitool chassis identify: rc {rc:?} in {took:.3?}");
    assert_eq!(rc, Some(0), "{out}");
    assert_host_untouched(&s.host(), first);

    let (rc, took, out) = b.ipmitool(&["chassis", "power", "reset"]);
    eprintln!("ipmitool chassis power reset: rc {rc:?} in {took:.3?}");
    assert_eq!(rc, Some(0), "{out}");
    assert!(gone(first), "reset left {first} running");
    let second = bmc::host_pid(&s.host()).expect("reset did not power the host on again");
    assert_ne!(second, first);

    let (rc, _, out) = fence(&b, "reboot", &[]);
    assert_eq!(rc, 0, "reboot: {out}");
    assert!(gone(second), "reboot left {second} running");
    let third = bmc::host_pid(&s.host()).expect("reboot did not power the host on again");
    assert_ne!(third, second);

    // `power soft` is an ACPI shutdown request: SIGTERM, and `sleep` exits on it.
    let (rc, took, out) = b.ipmitool(&["chassis", "power", "soft"]);
    eprintln!("ipmitool chassis power soft: rc {rc:?} in {took:.3?}");
    assert_eq!(rc, Some(0), "{out}");
    assert!(gone(third), "soft shutdown left {third} running");
    assert_eq!(bmc::host_pid(&s.host()), None);
    let (rc, _, out) = fence(&b, "status", &[]);
    assert_eq!(rc, 2, "status after soft shutdown: {out}");

    let log = s.bmc_log();
    eprintln!("what the BMC asked of the host:\n{log}");
    for req in ["set identify", "set reset 1", "set shutdown 1"] {
        assert!(log.contains(req), "no {req:?} in:\n{log}");
    }
}
