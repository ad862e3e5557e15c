//! Fence execution with real daemons on loopback and the built-in simulated agent
//! (`peerfence agent sim`): a hung host is fenced by quorum and confirmed Off; a fence device
//! that is down shows in the HA state before anything fails; the poison pill fences a host whose
//! "BMC" is down and confirms only after the watchdog deadline; a frozen host that wakes up and
//! finds a pill naming its boot powers itself off and stops feeding its watchdog. Self-fence
//! actions go to the `record` executor and the watchdog to a fake device (a plain file), so
//! nothing on the test machine is rebooted.
//!
//! A "host" is one daemon process; it is hung with SIGSTOP (power still on, nothing answers).

#![allow(clippy::disallowed_methods)]

mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

fn ha(c: &Cluster, i: usize, j: usize) -> Option<String> {
    c.view(i, j)
        .and_then(|v| v["ha"].as_str().map(str::to_owned))
}

fn wait_ha(c: &Cluster, i: usize, j: usize, want: &str, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    wait_for(limit, || {
        (ha(c, i, j).as_deref() == Some(want)).then(|| t.elapsed())
    })
}

#[test]
fn a_hung_host_is_fenced_by_quorum_through_its_agent_and_confirmed_off() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let n = 4;
    let mut c = Cluster::new_with("fence-agent", n, "enforce", |_, dir| {
        format!(
            "[fencing]\nlevels = [{{ name = \"sim\", kind = \"agent\", timeout = \"10s\" }}]\nstartup_quiet_period = \"5s\"\n\n{}",
            sim_agent("sim", dir, n, "")
        )
    });
    prepare_hosts(&c);
    let pids: Vec<u32> = (0..n).map(|i| start_host(&mut c, i)).collect();
    assert_cluster_forms(&c);
    // Power is polled through the agent, and every device answers its monitor.
    assert!(
        wait_for(Duration::from_secs(20), || {
            let v = c.view(0, 3)?;
            (v["power"] == "On" && v["fence_devices"][0] == true && v["ha"] == "Available")
                .then_some(())
        })
        .is_some(),
        "{:?}",
        c.view(0, 3)
    );

    // A fence device that is down is said before anything fails (in its peers' HA state and
    // in its own status), and recovers.
    let down = c.dir.join("hosts/n2.down");
    std::fs::write(&down, "").unwrap();
    let said = wait_ha(&c, 0, 2, "FenceDeviceDown", Duration::from_secs(20));
    assert!(said.is_some(), "{:?}", c.view(0, 2));
    assert!(
        wait_for(Duration::from_secs(20), || {
            (c.status(2)?["node"]["fence_devices"][0] == false).then_some(())
        })
        .is_some()
    );
    std::fs::remove_file(&down).unwrap();
    assert!(wait_ha(&c, 0, 2, "Available", Duration::from_secs(20)).is_some());

    // Host n3 hangs: it is fenced by the quorum through its agent and confirmed Off.
    let hung = Instant::now();
    signal(pids[3], "-STOP");
    let fenced = wait_for(Duration::from_secs(60), || {
        (0..3)
            .all(|i| ha(&c, i, 3).as_deref() == Some("Fenced"))
            .then(|| hung.elapsed())
    });
    let logs: String = (0..3).map(|i| c.log(i)).collect();
    assert!(fenced.is_some(), "{:?}\n{logs}", c.view(0, 3));
    eprintln!(
        "hung host fenced and confirmed Off after {:?}",
        fenced.unwrap()
    );
    assert!(
        wait_for(Duration::from_secs(10), || (c.view(0, 3)?["power"]
            == "Off")
            .then_some(()))
        .is_some()
    );
    // Now, and only now, the CloudStack drop-in answers DEAD for it (it said ALIVE while n3 was
    // merely silent: a DEAD makes CloudStack restart the VMs at once).
    let endpoint = format!("http://127.0.0.1:{}", c.members[0].http);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_peerfence"))
        .args([
            "cloudstack-heartbeat",
            "-r",
            "-h",
            "n3",
            "--endpoint",
            &endpoint,
        ])
        .env_remove("PEERFENCE_ENDPOINT")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("=====> DEAD <======"),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(c.view(0, 3).unwrap()["dead"], true);
    // The agent really powered it off: the process is gone (killed by SIGKILL).
    let child = c.members[3].child.as_mut().unwrap();
    let status = wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten());
    assert!(status.is_some_and(|s| !s.success()));
    assert!(logs.contains("fence agent finished"), "{logs}");
    // Exactly one member ran it.
    let executors = (0..3)
        .filter(|&i| c.log(i).contains("FenceStarted"))
        .count();
    assert_eq!(executors, 1, "{logs}");
}

fn pill_cluster(tag: &str) -> Cluster {
    let n = 4;
    Cluster::new_with(tag, n, "enforce", |i, dir| {
        format!(
            r#"[fencing]
levels = [{{ name = "bmc", kind = "agent", timeout = "3s" }}, {{ name = "pill", kind = "poison-pill" }}]
startup_quiet_period = "5s"
{}
{}"#,
            fake_watchdog_sections(i, dir),
            sim_agent("bmc", dir, n, "retries = 0")
        )
    })
}

fn prepare_pill(c: &Cluster) {
    prepare_hosts(c);
    make_fake_watchdogs(c);
    // n3's BMC is unreachable from the start.
    std::fs::write(c.dir.join("hosts/n3.down"), "").unwrap();
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn the_poison_pill_fences_a_host_whose_bmc_is_down_and_confirms_at_the_watchdog_deadline() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = pill_cluster("pill");
    prepare_pill(&c);
    let pids: Vec<u32> = (0..4).map(|i| start_host(&mut c, i)).collect();
    assert_cluster_forms(&c);
    // Every member feeds its (fake) watchdog.
    let wd3 = c.dir.join("wd-n3");
    assert!(
        wait_for(Duration::from_secs(10), || (file_len(&wd3) >= 3)
            .then_some(()))
        .is_some()
    );
    assert!(wait_ha(&c, 0, 3, "FenceDeviceDown", Duration::from_secs(20)).is_some());

    signal(pids[3], "-STOP");
    let pill = c.dir.join("shared/n3.pill");
    let written = wait_for(Duration::from_secs(60), || pill.exists().then(Instant::now));
    assert!(written.is_some(), "no pill written:\n{}", c.log(0));
    let written = written.unwrap();
    // Confirmation waits for the deadline: the frozen host's watchdog (4 s) must have fired.
    let confirmed = wait_for(Duration::from_secs(60), || {
        (ha(&c, 0, 3).as_deref() == Some("Fenced")).then(|| written.elapsed())
    });
    let logs: String = (0..3).map(|i| c.log(i)).collect();
    assert!(confirmed.is_some(), "{logs}");
    let waited = confirmed.unwrap();
    eprintln!("pill written → confirmed after {waited:?}");
    assert!(
        waited >= Duration::from_secs(4 + 3),
        "confirmed too early: {waited:?}"
    );
    assert!(logs.contains("WatchdogDeadline"), "{logs}");
    assert!(
        logs.contains("LevelFailed"),
        "the BMC level must have failed first"
    );
    // The pill is cleared once the outcome is known.
    assert!(wait_for(Duration::from_secs(10), || (!pill.exists()).then_some(())).is_some());
    signal(pids[3], "-CONT");
}

#[test]
fn a_frozen_host_that_wakes_up_to_a_pill_for_its_boot_powers_off_and_stops_its_watchdog() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = pill_cluster("pill-wake");
    prepare_pill(&c);
    let pids: Vec<u32> = (0..4).map(|i| start_host(&mut c, i)).collect();
    assert_cluster_forms(&c);
    signal(pids[3], "-STOP");
    let pill = c.dir.join("shared/n3.pill");
    assert!(wait_for(Duration::from_secs(60), || pill.exists().then_some(())).is_some());
    // It wakes up before the deadline and reads its slot.
    signal(pids[3], "-CONT");
    let record = c.dir.join("actions-n3");
    let acted = wait_for(Duration::from_secs(15), || {
        std::fs::read_to_string(&record)
            .ok()
            .filter(|t| t.contains("power-off PoisonPill"))
    });
    assert!(acted.is_some(), "{}", c.log(3));
    // It stopped feeding for good: no magic close, no more keepalives.
    let stopped = wait_for(Duration::from_secs(10), || {
        c.status(3)
            .filter(|s| s["watchdog"]["stopped"] == true)
            .map(|_| ())
    });
    assert!(
        stopped.is_some(),
        "{:?}",
        c.status(3).map(|s| s["watchdog"].clone())
    );
    let wd3 = c.dir.join("wd-n3");
    let len = file_len(&wd3);
    let after = wait_for(Duration::from_secs(3), || {
        (file_len(&wd3) != len).then_some(())
    });
    assert!(after.is_none(), "keepalives went on after the pill");
    assert!(!std::fs::read_to_string(&wd3).unwrap().ends_with('V'));
    // Its peers never confirmed by deadline: its heartbeat moved after the pill.
    assert_ne!(ha(&c, 0, 3).as_deref(), Some("Fenced"));
}

/// A clean stop closes the watchdog (the magic `V`) only once too few peers could vote unaware
/// to make a quorum: stopped while its peers are frozen (to them a silent host, which they will
/// fence), the daemon leaves its watchdog armed and says so; stopped while its peers answer, it
/// closes the watchdog.
#[test]
fn a_clean_stop_closes_the_watchdog_only_once_its_peers_heard_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = pill_cluster("leave-wd");
    prepare_hosts(&c);
    make_fake_watchdogs(&c);
    let pids: Vec<u32> = (0..4).map(|i| start_host(&mut c, i)).collect();
    assert_cluster_forms(&c);
    let dir = c.dir.clone();
    let wd = |i: usize| dir.join(format!("wd-n{i}"));
    for i in [2, 3] {
        assert!(
            wait_for(Duration::from_secs(10), || (file_len(&wd(i)) >= 3)
                .then_some(()))
            .is_some()
        );
    }

    // Nobody hears n2: its three peers are frozen. A quorum (3) of them could vote unaware.
    for i in [0, 1, 3] {
        signal(pids[i], "-STOP");
    }
    signal(pids[2], "-TERM");
    let (status, log) = exit_of(&mut c, 2);
    for i in [0, 1, 3] {
        signal(pids[i], "-CONT");
    }
    assert!(status.is_some_and(|s| s.success()), "{log}");
    assert!(
        log.contains("too few peers acknowledged this clean stop"),
        "{log}"
    );
    assert!(
        !std::fs::read_to_string(wd(2)).unwrap().ends_with('V'),
        "an unheard stop must leave the watchdog armed"
    );

    // n3 stops while n0 and n1 answer: two acknowledgements leave one unaware peer (n2), fewer
    // than a quorum.
    assert!(
        wait_for(Duration::from_secs(20), || all_alive(&c, &[0, 1, 3])
            .then_some(()))
        .is_some(),
        "{}",
        c.log(0)
    );
    signal(pids[3], "-TERM");
    let (status, log) = exit_of(&mut c, 3);
    assert!(status.is_some_and(|s| s.success()), "{log}");
    assert!(
        log.contains("the cluster knows of this clean stop"),
        "{log}"
    );
    assert!(
        std::fs::read_to_string(wd(3)).unwrap().ends_with('V'),
        "a heard stop magic-closes the watchdog:\n{log}"
    );
}

/// Waits for member `i` to exit; returns its exit status and log.
fn exit_of(c: &mut Cluster, i: usize) -> (Option<std::process::ExitStatus>, String) {
    let child = c.members[i].child.as_mut().unwrap();
    let status = wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
    (status, c.log(i))
}

#[test]
fn the_daemon_refuses_unknown_agent_parameters_and_a_missing_watchdog() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // A parameter the agent's metadata does not list stops the start, naming the field.
    let mut c = Cluster::new_with("refuse-param", 3, "enforce", |_, dir| {
        format!(
            "[fencing]\nlevels = [{{ name = \"sim\", kind = \"agent\", timeout = \"10s\" }}]\n\n{}",
            sim_agent("sim", dir, 3, "params = { pid_fil = \"/tmp/typo\" }")
        )
    });
    prepare_hosts(&c);
    c.start(0);
    let (status, log) = exit_of(&mut c, 0);
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(log.contains("agents.sim.params.pid_fil"), "{log}");
    assert!(
        log.contains("pid_file"),
        "the known parameters are listed: {log}"
    );
    drop(c);

    // watchdog.enabled with a device that cannot be opened: refused, saying why.
    let mut c = Cluster::new_with("refuse-watchdog", 3, "enforce", |_, dir| {
        format!(
            "[watchdog]\nenabled = true\n\n[local_actions]\nwatchdog_device = \"{}/no-such-watchdog\"\n",
            dir.display()
        )
    });
    c.start(0);
    let (status, log) = exit_of(&mut c, 0);
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(log.contains("no-such-watchdog"), "{log}");
    assert!(log.contains("refusing to start"), "{log}");
}
