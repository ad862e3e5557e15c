//! `peerfence check-config`: accepts the shipped example, names every problem, exits 2 on error.

// Tests write temporary files; the sans-IO rule of clippy.toml is about the library.
#![allow(clippy::disallowed_methods)]

use std::process::Command;

fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peerfence"))
        .arg("check-config")
        .arg(path)
        .output()
        .expect("binary runs")
}

#[test]
fn the_shipped_example_is_valid() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/peerfence.example.toml");
    let out = check(&example);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn problems_are_listed_with_field_value_and_rule() {
    let dir = std::env::temp_dir().join(format!("pf-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/peerfence.example.toml"),
    )
    .unwrap();
    let broken = example
        .replace("probe_rtt = \"300ms\"", "probe_rtt = \"2s\"")
        .replace("activity_timeout = \"5s\"", "activity_timeout = \"2s\"")
        .replace("address = \"10.0.0.12:7946\"", "address = \"kvm02\"")
        .replace("name = \"kvm01\"  ", "name = \"kvm09\"  ");
    let path = dir.join("broken.toml");
    std::fs::write(&path, broken).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("swim.probe_rtt = \"2s\": must be below swim.probe_period (1s)"),
        "{err}"
    );
    assert!(err.contains("storage.activity_timeout = \"2s\""), "{err}");
    assert!(
        err.contains("cluster.members[1].address = \"kvm02\": must be an ip:port"),
        "{err}"
    );
    assert!(
        err.contains("node.name = \"kvm09\": must be one of cluster.members"),
        "{err}"
    );
    // Agent sections are checked once the core's part is valid.
    let agents = example
        .replace("[agents.ipmi.hosts.kvm03]", "[agents.ipmi.hosts.kvm09]")
        .replace(
            "params = { username = \"admin\",",
            "params = { action = \"reboot\", username = \"admin\",",
        );
    std::fs::write(&path, agents).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agents.ipmi.hosts.kvm09 = \"kvm09\": must be one of cluster.members"),
        "{err}"
    );
    // A stray action would make fence-agents reboot: refused, with the reason.
    assert!(
        err.contains("agents.ipmi.params.action = \"\\\"reboot\\\"\"")
            || err.contains("agents.ipmi.params.action"),
        "{err}"
    );
    assert!(err.contains("set by peerfence on every call"), "{err}");
    let out = check(&dir.join("missing.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    std::fs::remove_dir_all(&dir).ok();
}
