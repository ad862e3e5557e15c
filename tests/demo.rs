//! `peerfence demo` end to end: the built binary plays its whole story against real daemons and
//! exits 0, every act's key line shows in its output, and no daemon outlives it.
//!
//! The demo must never hang CI: it runs under a deadline, after which it gets SIGTERM (its own
//! cleanup stops the daemons), then SIGKILL, and the test fails with what it printed.

// Tests wait on processes and read /proc; the sans-IO rule of clippy.toml is about the library.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The demo takes about a minute; four is generous for a loaded two-core machine.
const DEADLINE: Duration = Duration::from_secs(240);

/// Pids of live processes whose command line mentions `dir` (the demo's daemons name their
/// configuration files in it).
fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let want = dir.display().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().next().map(|st| st == "Z"))
            })
            .unwrap_or(true);
        if text.contains(&want) && !zombie && pid != std::process::id() as i32 {
            found.push((pid, text.trim().to_owned()));
        }
    }
    found
}

fn collect(mut from: impl Read + Send + 'static, echo: bool) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            let chunk = String::from_utf8_lossy(&buf[..n]).into_owned();
            if echo {
                eprint!("{chunk}");
            }
            sink.lock().unwrap().push_str(&chunk);
        }
    });
    text
}

#[test]
fn the_demo_plays_every_act_and_leaves_nothing_behind() {
    let _serial = common::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!("pf-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let started = Instant::now();
    let mut child = Command::new(common::bin())
        .arg("demo")
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap(), true);
    let err = collect(child.stderr.take().unwrap(), true);
    let status = common::wait_for(DEADLINE, || child.try_wait().ok().flatten());
    let Some(status) = status else {
        // Ask it to stop (its cleanup stops the daemons), then make sure.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let gone = common::wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
        if gone.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (pid, _) in processes_under(&dir) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        panic!(
            "the demo did not finish within {DEADLINE:?}; it printed:\n{}\n{}",
            out.lock().unwrap(),
            err.lock().unwrap()
        );
    };
    let took = started.elapsed();
    // The readers finish once the pipes close (the demo and every daemon are gone).
    let _ = common::wait_for(Duration::from_secs(5), || {
        (Arc::strong_count(&out) == 1 && Arc::strong_count(&err) == 1).then_some(())
    });
    let out = out.lock().unwrap().clone();
    let err = err.lock().unwrap().clone();
    eprintln!("the demo took {took:?}");
    assert!(status.success(), "exit {status}:\n{out}\n{err}");
    for line in [
        // Act 1.
        "every host sees the other four Alive",
        "cluster ready: quorum 3 of 5, armed, mode enforce",
        // Act 2.
        "n3 crashed (its daemon got SIGKILL)",
        "`status` answered Off (evidence PowerOff)",
        "n3 Fenced and confirmed in every survivor's view",
        "n3 rejoined with a new boot id",
        // Act 3.
        "STORM on all five",
        "every request was refused",
        "no fence in flight on any host, nobody Fencing or Fenced",
        "no self-fence action recorded",
        // Act 4.
        "storm over after",
        "all five Healthy, eligible and Available",
        "The story held: every act happened as told.",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}\n{err}");
    }
    let left = processes_under(&dir);
    for (pid, _) in &left {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    assert!(left.is_empty(), "left running after the demo: {left:?}");
    assert!(
        !dir.exists(),
        "the demo removes its directory without --keep"
    );
}
