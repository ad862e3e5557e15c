//! The command line: listing, JSON shape, replay, and usage errors.

use std::process::Command;

fn chaos(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peerfence-chaos"))
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn list_names_every_scenario() {
    let out = chaos(&["sim", "--list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for name in [
        "crash-one",
        "crash-two-of-seven",
        "storage-loss-everywhere",
        "storage-loss-one",
        "storage-flapping-cascade",
        "partition-minority",
        "partition-isolated-no-storage",
        "agent-death",
        "bmc-dead",
        "restart-during-fence",
        "storm",
        "lossy-network-20",
        "random",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from --list"
        );
    }
}

#[test]
fn json_summary_has_the_documented_fields() {
    let out = chaos(&[
        "sim",
        "--scenario",
        "crash-one",
        "--seeds",
        "4",
        "--first-seed",
        "10",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(v["scenario"], "crash-one");
    assert_eq!(v["runs"], 4);
    assert!(v["violations"].as_array().unwrap().is_empty());
    assert!(v["fences_total"].as_u64().unwrap() >= 4);
    assert_eq!(v["self_fence_actions_total"], 0);
    assert!(v["confirm_ms_p50"].as_u64().is_some());
    assert!(v["confirm_ms_p99"].as_u64().unwrap() < 10_000);
    assert!(v["sim_speedup"].as_f64().unwrap() > 1.0);
}

#[test]
fn scenarios_without_crashes_report_null_latency() {
    let out = chaos(&["sim", "--scenario", "agent-death", "--seeds", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["confirm_ms_p50"].is_null() && v["confirm_ms_p99"].is_null());
}

#[test]
fn trace_replays_one_seed_as_a_timeline() {
    let out = chaos(&[
        "sim",
        "--scenario",
        "crash-one",
        "--first-seed",
        "7",
        "--seeds",
        "1",
        "--trace",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("FAULT CrashHost"));
    assert!(text.contains("FenceStarted"));
    assert!(text.contains("SafeToRecover"));
    assert!(text.contains("0 violations"));
}

#[test]
fn usage_errors_exit_2_and_say_what_to_do() {
    let out = chaos(&["sim", "--scenario", "no-such-thing"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--list"));
    let out = chaos(&["sim", "--scenario", "crash-one", "--nodes", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs between"));
}
