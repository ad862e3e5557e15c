//! `peerfence agent sim`: a fence agent that speaks the ClusterLabs API and "powers" a local
//! process. It serves the demo and the tests where no BMC exists.
//!
//! Parameters arrive as `name=value` lines on stdin (or `--name=value` arguments), like any
//! fence agent: `action` (off, on, reboot, status, monitor, metadata; required — a missing action
//! is refused rather than taken as reboot), `pid_file` (the "host": power is on while the process
//! it names lives and is not a zombie), `start` (a shell command run detached by `on`),
//! `down_file` (while this file exists the "device" is down: every action but metadata fails),
//! and `plug`/`port`/`nodename` (accepted, ignored). Exit codes: 0 success or status on,
//! 2 status off, 1 failure.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// Parameters this agent knows, with their descriptions (its metadata).
const PARAMS: &[(&str, &str)] = &[
    (
        "action",
        "Fencing action: off, on, reboot, status, monitor, metadata",
    ),
    (
        "pid_file",
        "File naming the pid of the process that stands for the host",
    ),
    (
        "start",
        "Shell command that starts the host process (for on)",
    ),
    (
        "down_file",
        "While this file exists, the simulated device is down",
    ),
    ("plug", "Accepted and ignored"),
    ("port", "Accepted and ignored"),
    ("nodename", "Accepted and ignored"),
];

/// Whether `pid` is a live, non-zombie process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn read_pid(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn metadata() -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\" ?>\n<resource-agent name=\"peerfence-agent-sim\" shortdesc=\"Simulated fence agent: powers a local process\">\n<parameters>\n",
    );
    for (name, desc) in PARAMS {
        x.push_str(&format!(
            "  <parameter name=\"{name}\" unique=\"0\" required=\"0\">\n    <content type=\"string\"/>\n    <shortdesc lang=\"en\">{desc}</shortdesc>\n  </parameter>\n"
        ));
    }
    x.push_str("</parameters>\n<actions>\n");
    for a in ["on", "off", "reboot", "status", "monitor", "metadata"] {
        x.push_str(&format!("  <action name=\"{a}\"/>\n"));
    }
    x.push_str("</actions>\n</resource-agent>\n");
    x
}

#[allow(unsafe_code)]
fn power_off(pid_file: &Path) -> i32 {
    let Some(pid) = read_pid(pid_file) else {
        return 0; // nothing running: already off
    };
    if alive(pid) {
        // SAFETY: kill(2) with a pid read from the configured file; no memory is involved.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let end = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        if Instant::now() >= end {
            eprintln!("process {pid} still runs 5 s after SIGKILL");
            return 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    0
}

fn power_on(params: &BTreeMap<String, String>, pid_file: &Path) -> i32 {
    if read_pid(pid_file).is_some_and(alive) {
        return 0;
    }
    let Some(start) = params.get("start") else {
        eprintln!("on: no start command configured");
        return 1;
    };
    let spawned = std::process::Command::new("setsid")
        .args(["-f", "sh", "-c", start])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match spawned {
        Ok(s) if s.success() => 0,
        Ok(s) => {
            eprintln!("on: start command failed: {s}");
            1
        }
        Err(e) => {
            eprintln!("on: cannot run setsid: {e}");
            1
        }
    }
}

/// Parses `name=value` lines and `--name=value` arguments (arguments win).
pub fn parse(stdin: &str, args: &[String]) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    for line in stdin.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            p.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    for a in args {
        if let Some((k, v)) = a.trim_start_matches('-').split_once('=') {
            p.insert(k.replace('-', "_"), v.to_owned());
        }
    }
    p
}

/// Runs one call; returns the exit code.
pub fn run(params: &BTreeMap<String, String>) -> i32 {
    let Some(action) = params.get("action") else {
        eprintln!("no action given: refusing (fence-agents would take a missing action as reboot)");
        return 1;
    };
    if action == "metadata" {
        print!("{}", metadata());
        return 0;
    }
    if let Some(k) = params.keys().find(|k| !PARAMS.iter().any(|(n, _)| n == k)) {
        eprintln!("unknown parameter {k:?}");
        return 1;
    }
    if params
        .get("down_file")
        .is_some_and(|f| Path::new(f).exists())
    {
        eprintln!("device down (down_file exists)");
        return 1;
    }
    if action == "monitor" {
        return 0;
    }
    let Some(pid_file) = params.get("pid_file").map(Path::new) else {
        eprintln!("{action}: pid_file is required");
        return 1;
    };
    match action.as_str() {
        "status" => {
            if read_pid(pid_file).is_some_and(alive) {
                println!("Status: ON");
                0
            } else {
                println!("Status: OFF");
                2
            }
        }
        "off" => power_off(pid_file),
        "on" => power_on(params, pid_file),
        "reboot" => match power_off(pid_file) {
            0 => power_on(params, pid_file),
            rc => rc,
        },
        other => {
            eprintln!("unknown action {other:?}");
            1
        }
    }
}

/// `peerfence agent sim`: reads stdin (unless it is a terminal and arguments were given).
pub fn main(args: &[String]) -> i32 {
    let mut stdin = String::new();
    if args.iter().all(|a| !a.contains("action=")) {
        let _ = std::io::stdin().take(64 * 1024).read_to_string(&mut stdin);
    }
    run(&parse(&stdin, args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powers_a_process_off_and_reports_it() {
        let dir = std::env::temp_dir().join(format!("pf-simagent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("host.pid");
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        std::fs::write(&pid_file, child.id().to_string()).unwrap();
        let p = |action: &str| {
            parse(
                &format!("action={action}\npid_file={}\n", pid_file.display()),
                &[],
            )
        };
        assert_eq!(run(&p("status")), 0);
        assert_eq!(run(&p("monitor")), 0);
        // Our own child becomes a zombie until reaped: that counts as off.
        assert_eq!(run(&p("off")), 0);
        assert_eq!(run(&p("status")), 2);
        child.wait().unwrap();
        // A device that is down fails everything.
        let down = dir.join("down");
        std::fs::write(&down, "").unwrap();
        let mut q = p("monitor");
        q.insert("down_file".into(), down.display().to_string());
        assert_eq!(run(&q), 1);
        // No action: refused, never a reboot.
        assert_eq!(run(&parse("pid_file=/x\n", &[])), 1);
        assert_eq!(run(&parse("action=status\nbogus=1\n", &[])), 1);
        assert!(
            crate::daemon::fence::parameter_names(&metadata())
                .unwrap()
                .contains("pid_file")
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
