//! Fencing through a real BMC protocol: one `ipmi_sim` BMC per host on 127.0.0.1 whose chassis
//! control stops and starts that host's daemon process, driven by the real `fence_ipmilan`
//! (lanplus, cipher 3). Tools: `.ci/install-deps` (Debian openipmi, ipmitool, fence-agents).
//!
//! A crashed host is a daemon hung with SIGSTOP: power still on, nothing answers.

#![allow(clippy::disallowed_methods)]

mod common;
use common::bmc::{Bmc, require_tools};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PASSWORD: &str = "s3cr3t-BMC-pw";

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

fn host_dir(c: &Cluster, i: usize) -> PathBuf {
    c.dir.join(format!("hosts/{}", c.members[i].name))
}

/// Starts member `i` and records its pid where its BMC looks for "the host".
fn start_host(c: &mut Cluster, i: usize) -> u32 {
    c.start(i);
    let pid = c.members[i].child.as_ref().unwrap().id();
    std::fs::write(host_dir(c, i).join("pid"), pid.to_string()).unwrap();
    pid
}

/// `[agents.ipmi]` (fence_ipmilan, secrets from a 0600 file) and, when `sim`, a second agent
/// level `sim` on the same host processes.
fn config(dir: &Path, ports: &[u16], levels: &str, ipmi_timeouts: &str, extra: &str) -> String {
    let d = dir.display();
    let mut s = format!(
        r#"[fencing]
levels = {levels}
startup_quiet_period = "5s"

[agents.ipmi]
command = ["fence_ipmilan"]
params = {{ ip = "127.0.0.1", username = "admin", lanplus = "1", cipher = "3", power_wait = "0", {ipmi_timeouts} }}
secrets_file = "{d}/ipmi.secrets"
action_timeout = "5s"
retries = 0
monitor_interval = "15s"
power_status_interval = "15s"
"#
    );
    for (i, p) in ports.iter().enumerate() {
        s.push_str(&format!("[agents.ipmi.hosts.n{i}]\nipport = \"{p}\"\n"));
    }
    s.push_str(extra);
    s
}

fn sim_level(dir: &Path, n: usize) -> String {
    let bin = env!("CARGO_BIN_EXE_peerfence");
    let mut s = format!(
        "\n[agents.sim]\ncommand = [\"{bin}\", \"agent\", \"sim\"]\naction_timeout = \"3s\"\nmonitor_interval = \"off\"\npower_status_interval = \"off\"\n"
    );
    for i in 0..n {
        s.push_str(&format!(
            "[agents.sim.hosts.n{i}]\npid_file = \"{}/hosts/n{i}/pid\"\n",
            dir.display()
        ));
    }
    s
}

struct Rig {
    c: Cluster,
    bmcs: Vec<Bmc>,
    pids: Vec<u32>,
}

/// Four hosts, one BMC each (n3's password in the daemons' secrets is `n3_password`).
fn rig(tag: &str, tweak: impl Fn(usize, &Path, &[u16]) -> String, n3_password: &str) -> Rig {
    require_tools().unwrap();
    let n = 4;
    let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    let mut c = Cluster::new_with(tag, n, "enforce", |i, dir| tweak(i, dir, &ports));
    let secrets = c.dir.join("ipmi.secrets");
    std::fs::write(
        &secrets,
        format!("password={PASSWORD}\nn3.password={n3_password}\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut bmcs = Vec::new();
    // Fake watchdog devices, for the configurations that enable one.
    make_fake_watchdogs(&c);
    for (i, port) in ports.iter().enumerate() {
        let hd = host_dir(&c, i);
        std::fs::create_dir_all(&hd).unwrap();
        bmcs.push(Bmc::start(
            &c.dir.join("bmc"),
            &format!("bmc{i}"),
            *port,
            "admin",
            PASSWORD,
            &hd,
        ));
    }
    let pids = (0..n).map(|i| start_host(&mut c, i)).collect();
    assert_cluster_forms(&c);
    Rig { c, bmcs, pids }
}

fn ha(c: &Cluster, i: usize, j: usize) -> Option<String> {
    c.view(i, j)
        .and_then(|v| v["ha"].as_str().map(str::to_owned))
}

fn logs(c: &Cluster) -> String {
    (0..c.members.len()).map(|i| c.log(i)).collect()
}

fn fenced_by_all(c: &Cluster, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    wait_for(limit, || {
        (0..3)
            .all(|i| ha(c, i, 3).as_deref() == Some("Fenced"))
            .then(|| t.elapsed())
    })
}

#[test]
fn a_crashed_host_is_fenced_by_quorum_and_confirmed_off_through_ipmi() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let levels = r#"[{ name = "ipmi", kind = "agent", timeout = "10s" }]"#;
    let mut r = rig(
        "ipmi-crash",
        |_, d, p| config(d, p, levels, "power_timeout = \"4\"", ""),
        PASSWORD,
    );
    // Power is read through IPMI before anything happens.
    assert!(
        wait_for(Duration::from_secs(30), || {
            let v = r.c.view(0, 3)?;
            (v["power"] == "On" && v["fence_devices"][0] == true).then_some(())
        })
        .is_some(),
        "{:?}",
        r.c.view(0, 3)
    );
    signal(r.pids[3], "-STOP");
    let took = fenced_by_all(&r.c, Duration::from_secs(60));
    assert!(took.is_some(), "{}", logs(&r.c));
    eprintln!(
        "crashed host fenced and confirmed Off through IPMI in {:?}",
        took.unwrap()
    );
    // A power poll begun before the fence may still report On once; the next one says Off.
    assert!(
        wait_for(Duration::from_secs(40), || {
            (r.c.view(0, 3)?["power"] == "Off").then_some(())
        })
        .is_some()
    );
    let bmc_log = std::fs::read_to_string(host_dir(&r.c, 3).join("bmc.log")).unwrap();
    assert!(bmc_log.contains("set power 0"), "{bmc_log}");
    let child = r.c.members[3].child.as_mut().unwrap();
    assert!(wait_for(Duration::from_secs(10), || child.try_wait().ok().flatten()).is_some());
    let all = logs(&r.c);
    assert!(all.contains("PowerOff { level: 0 }"), "{all}");
    assert!(!all.contains(PASSWORD), "a BMC password reached a log");
    drop(r.bmcs);
}

#[test]
fn a_hung_bmc_fails_its_level_on_the_timeout_and_the_next_level_runs() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let levels = r#"[{ name = "ipmi", kind = "agent", timeout = "5s" }, { name = "sim", kind = "agent", timeout = "10s" }]"#;
    let r = rig(
        "ipmi-hung",
        |_, d, p| {
            // fence_ipmilan's own timeouts are longer than the level's: peerfence kills it.
            config(
                d,
                p,
                levels,
                "power_timeout = \"20\", login_timeout = \"20\", shell_timeout = \"20\"",
                &sim_level(d, 4),
            )
        },
        PASSWORD,
    );
    r.bmcs[3].hang();
    signal(r.pids[3], "-STOP");
    let took = fenced_by_all(&r.c, Duration::from_secs(90));
    let all = logs(&r.c);
    assert!(took.is_some(), "{all}");
    eprintln!(
        "hung BMC: fenced through the next level in {:?}",
        took.unwrap()
    );
    assert!(
        all.contains("LevelFailed { target: m3, level: 0, timed_out: true }"),
        "{all}"
    );
    assert!(all.contains("PowerOff { level: 1 }"), "{all}");
    r.bmcs[3].resume();
}

#[test]
fn a_wrong_bmc_password_fails_fast_is_reported_and_nothing_is_confirmed() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let levels = r#"[{ name = "ipmi", kind = "agent", timeout = "10s" }]"#;
    let r = rig(
        "ipmi-password",
        |_, d, p| config(d, p, levels, "power_timeout = \"4\"", ""),
        "not-the-password",
    );
    // The monitor already says so, before any failure.
    let t = Instant::now();
    assert!(
        wait_for(Duration::from_secs(30), || {
            (ha(&r.c, 0, 3).as_deref() == Some("FenceDeviceDown")).then_some(())
        })
        .is_some(),
        "{:?}",
        r.c.view(0, 3)
    );
    eprintln!(
        "wrong password reported as FenceDeviceDown after {:?}",
        t.elapsed()
    );
    signal(r.pids[3], "-STOP");
    let failed = wait_for(Duration::from_secs(60), || {
        (ha(&r.c, 0, 3).as_deref() == Some("FenceFailed")).then_some(())
    });
    let all = logs(&r.c);
    assert!(failed.is_some(), "{:?}\n{all}", r.c.view(0, 3));
    assert!(
        all.contains("LevelFailed { target: m3, level: 0, timed_out: false }"),
        "{all}"
    );
    assert!(all.contains("FenceFailed"), "{all}");
    // Fast: the agent's own answer, not a timeout.
    let elapsed: Vec<u64> = all
        .lines()
        .filter(|l| l.contains("fence agent finished"))
        .filter_map(|l| l.split("elapsed_ms=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(!elapsed.is_empty(), "{all}");
    assert!(elapsed.iter().all(|&ms| ms < 3000), "{elapsed:?}");
    // Nothing confirmed, the host untouched, no password in any log.
    assert!(!all.contains("FenceConfirmed"), "{all}");
    let bmc_log = std::fs::read_to_string(host_dir(&r.c, 3).join("bmc.log")).unwrap_or_default();
    assert!(!bmc_log.contains("set power"), "{bmc_log}");
    assert!(!all.contains(PASSWORD) && !all.contains("not-the-password"));
    signal(r.pids[3], "-CONT");
}

#[test]
fn the_poison_pill_fences_a_host_whose_bmc_is_unreachable_after_the_deadline() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let levels = r#"[{ name = "ipmi", kind = "agent", timeout = "5s" }, { name = "pill", kind = "poison-pill" }]"#;
    let mut r = rig(
        "ipmi-pill",
        |i, d, p| {
            let extra = fake_watchdog_sections(i, d);
            config(d, p, levels, "power_timeout = \"4\"", &extra)
        },
        PASSWORD,
    );
    r.bmcs[3].stop();
    signal(r.pids[3], "-STOP");
    let pill = r.c.dir.join("shared/n3.pill");
    let written = wait_for(Duration::from_secs(60), || pill.exists().then(Instant::now));
    assert!(written.is_some(), "{}", logs(&r.c));
    let written = written.unwrap();
    let confirmed = wait_for(Duration::from_secs(60), || {
        (ha(&r.c, 0, 3).as_deref() == Some("Fenced")).then(|| written.elapsed())
    });
    let all = logs(&r.c);
    assert!(confirmed.is_some(), "{all}");
    let waited = confirmed.unwrap();
    eprintln!("unreachable BMC: pill written → confirmed after {waited:?}");
    assert!(
        waited >= Duration::from_secs(4 + 3),
        "confirmed too early: {waited:?}"
    );
    assert!(all.contains("WatchdogDeadline"), "{all}");
    assert!(all.contains("LevelFailed { target: m3, level: 0"), "{all}");
}
