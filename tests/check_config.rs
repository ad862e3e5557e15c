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

/// The example's commented hook section, uncommented (its own setting lines start with "#" and
/// no space).
fn with_example_hooks(example: &str) -> String {
    let mut hooks = false;
    example
        .lines()
        .map(|l| {
            hooks |= l.starts_with("#[[hooks.");
            match l.strip_prefix('#') {
                Some(code) if hooks && !code.is_empty() && !code.starts_with(' ') => code,
                _ => l,
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn hooks_are_checked_like_every_other_section() {
    let dir = std::env::temp_dir().join(format!("pf-check-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/peerfence.example.toml"),
    )
    .unwrap();
    // The example's hooks, uncommented, are valid and listed in the summary.
    let good = with_example_hooks(&example);
    assert!(good.contains("\n[[hooks.webhook]]\n"), "{good}");
    let path = dir.join("hooks.toml");
    std::fs::write(&path, &good).unwrap();
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("exec hook openstack-evacuate runs \"/usr/local/bin/pf-openstack-evacuate\" on safe_to_recover"),
        "{stdout}"
    );
    assert!(
        stdout.contains("webhook ops posts to http://10.0.0.5:8080/peerfence"),
        "{stdout}"
    );
    // A typo in an event name, an empty command and a bad URL are named with field and rule.
    let broken = good
        .replace(
            "events = [\"safe_to_recover\"]",
            "events = [\"safe_to_recovr\"]",
        )
        .replace(
            "command = [\"/usr/local/bin/pf-openstack-evacuate\"]",
            "command = []",
        )
        .replace("url = \"http://10.0.0.5", "url = \"10.0.0.5");
    std::fs::write(&path, broken).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hooks.exec[0].events = \"safe_to_recovr\": is not a hook event; one of suspect, partitioned,"),
        "{err}"
    );
    assert!(
        err.contains("hooks.exec[0].command = []: must name a program"),
        "{err}"
    );
    assert!(
        err.contains("hooks.webhook[0].url = \"10.0.0.5:8080/peerfence\""),
        "{err}"
    );
    // An unknown field is refused like everywhere else.
    std::fs::write(&path, good.replace("queue = 64", "qeueu = 64")).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("qeueu"));
    std::fs::remove_dir_all(&dir).ok();
}
