//! `peerfence cloudstack-heartbeat` against real daemons on loopback: read mode says ALIVE for a
//! running member and still ALIVE once a killed member's heartbeat has stopped (DEAD is only for a
//! confirmed fence), write mode
//! follows the local storage heartbeat, `-c` is refused when the daemon would do nothing, an
//! unknown host exits 2 and a missing daemon exits 3.
//!
//! Every member here shares 127.0.0.1, so HOST is given by member name; matching by IP is covered
//! by the unit tests in src/daemon/cloudstack.rs. `-c` is checked here only as refused (the test
//! configuration's self-fence action is log-only); the unit tests cover an accepted answer.

// Tests write files and wait on processes; the sans-IO rule of clippy.toml is about the library.
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const ALIVE: &str = "=====> ALIVE <=====";

fn heartbeat(args: &[&str], endpoint: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peerfence"))
        .arg("cloudstack-heartbeat")
        .args(args)
        .args(["--endpoint", endpoint])
        .env_remove("PEERFENCE_ENDPOINT")
        .output()
        .unwrap()
}

fn first_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

fn describe(o: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn read_and_write_modes_follow_the_daemons_view() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new("cloudstack", 3, "");
    for i in 0..3 {
        c.start(i);
    }
    let all = [0, 1, 2];
    wait_for(Duration::from_secs(30), || {
        all_alive(&c, &all).then_some(())
    })
    .unwrap_or_else(|| panic!("the cluster never formed; logs in {}", c.dir.display()));
    // n0 has seen n1's heartbeat advance, and its own writes have completed.
    wait_for(Duration::from_secs(30), || {
        let own_ok = c.status(0)?["node"]["storage"]
            .as_array()?
            .iter()
            .all(|s| s == "Ok" || s == "Slow");
        (own_ok && c.view(0, 1)?["storage_alive"] == true).then_some(())
    })
    .expect("n0 never saw n1's storage heartbeat, or its own, healthy");

    let n0 = format!("http://127.0.0.1:{}", c.members[0].http);

    // Read mode, as KVMHAChecker runs it.
    let read_n1 = [
        "-i", "10.0.0.1", "-p", "/export", "-m", "/mnt/x", "-h", "n1", "-r", "-t", "60",
    ];
    let o = heartbeat(&read_n1, &n0);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(first_line(&o), ALIVE, "{}", describe(&o));
    // The local host is alive too.
    let o = heartbeat(&["-r", "-h", "n0"], &n0);
    assert_eq!(first_line(&o), ALIVE, "{}", describe(&o));

    // Write mode, as KVMHAMonitor runs it: healthy storage heartbeat ⇒ 0.
    let o = heartbeat(
        &[
            "-i",
            "10.0.0.1",
            "-p",
            "/export",
            "-m",
            "/mnt/x",
            "-h",
            "10.0.0.11",
        ],
        &n0,
    );
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));

    // An unknown host: exit 2, and the members are listed.
    let o = heartbeat(&["-r", "-h", "kvm-nowhere"], &n0);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    assert!(first_line(&o).is_empty(), "{}", describe(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for m in ["kvm-nowhere", "n0", "n1", "n2"] {
        assert!(err.contains(m), "{err}");
    }

    // Fence mode only asks the daemon; here self_fence is log-only, so it refuses: exit 1.
    let o = heartbeat(
        &["-i", "10.0.0.1", "-p", "/export", "-m", "/mnt/x", "-c"],
        &n0,
    );
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(o.stdout.is_empty(), "{}", describe(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("self-fence request refused"), "{err}");

    // Kill n1's daemon (its host, and its VMs, may well run on): even once n0 sees its
    // heartbeat stop, read mode says ALIVE. In CloudStack a DEAD is the fence itself (the VMs
    // are restarted elsewhere at once), so only a fence confirmed in n1's current boot may say
    // it, and this cluster fences nobody (log-only, no fence level reaches n1).
    c.kill(1);
    let killed = Instant::now();
    wait_for(Duration::from_secs(30), || {
        (c.view(0, 1)?["storage_alive"] == false).then_some(())
    })
    .unwrap_or_else(|| panic!("n0 never saw n1's heartbeat stop: {:?}", c.view(0, 1)));
    eprintln!(
        "heartbeat stopped in n0's view {:?} after the kill",
        killed.elapsed()
    );
    let o = heartbeat(&read_n1, &n0);
    assert_eq!(first_line(&o), ALIVE, "{}", describe(&o));
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("only a confirmed fence"), "{err}");
    assert!(err.contains("stopped for"), "{err}");
    assert_eq!(c.view(0, 1).unwrap()["dead"], false);
    // Its neighbours are still alive, and n0's own heartbeat is still healthy.
    let o = heartbeat(&["-r", "-h", "n2"], &n0);
    assert_eq!(first_line(&o), ALIVE, "{}", describe(&o));
    let o = heartbeat(&[], &n0);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
}

#[test]
fn no_daemon_exits_3_and_says_what_to_check() {
    let port = free_tcp_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    for args in [&["-r", "-h", "n1"][..], &[][..], &["-c"][..]] {
        let started = Instant::now();
        let o = heartbeat(args, &endpoint);
        assert!(started.elapsed() < Duration::from_secs(20), "it hung");
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", describe(&o));
        assert!(o.stdout.is_empty(), "{args:?}: {}", describe(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&endpoint), "{err}");
        assert!(err.contains("Is peerfence running?"), "{err}");
        assert!(err.contains("http.listen"), "{err}");
    }
}

#[test]
fn endpoint_comes_from_the_environment_too() {
    let port = free_tcp_port();
    let o = Command::new(env!("CARGO_BIN_EXE_peerfence"))
        .args(["cloudstack-heartbeat", "-r", "-h", "n1"])
        .env("PEERFENCE_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", describe(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("127.0.0.1:{port}")),
        "{}",
        describe(&o)
    );
}
