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

/// Safety at the seams, item 6: per-start boot ids, the record executor and a plain file as the
/// watchdog void the safety argument; in enforce mode each is refused, naming field, value and
/// rule, unless the whole cluster says it is a test rig. Observe mode never acts: allowed.
#[test]
fn test_settings_are_refused_in_enforce_mode_unless_the_cluster_is_a_test_rig() {
    let dir = std::env::temp_dir().join(format!("pf-check-testing-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fake_watchdog = dir.join("wd");
    std::fs::write(&fake_watchdog, "").unwrap();
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/peerfence.example.toml"),
    )
    .unwrap();
    let with = |mode: &str| {
        let text = example
            .replace("mode = \"observe\"  ", &format!("mode = \"{mode}\"  "))
            .replace("# boot_id = \"kernel\"  ", "boot_id = \"per-start\"  ")
            .replace(
                "executor = \"system\" ",
                &format!(
                    "executor = \"record\"\nrecord_file = \"{}/actions\" ",
                    dir.display()
                ),
            )
            .replace(
                "watchdog_device = \"/dev/watchdog\"",
                &format!("watchdog_device = \"{}\"", fake_watchdog.display()),
            )
            .replace("\nenabled = false\n", "\nenabled = true\n");
        assert!(text.contains("boot_id = \"per-start\""), "{text}");
        assert!(text.contains("executor = \"record\""), "{text}");
        assert!(text.contains("\nenabled = true\n"), "{text}");
        text
    };
    let path = dir.join("rig.toml");

    std::fs::write(&path, with("enforce")).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 configuration problem(s)"), "{err}");
    assert!(
        err.contains("node.boot_id = \"per-start\": is a test setting refused in enforce mode"),
        "{err}"
    );
    assert!(
        err.contains("would look like a reboot of this host"),
        "{err}"
    );
    assert!(
        err.contains(
            "local_actions.executor = \"record\": is a test setting refused in enforce mode"
        ),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "local_actions.watchdog_device = \"{}\": is not a character device",
            fake_watchdog.display()
        )),
        "{err}"
    );
    // Each says how to fix it.
    assert_eq!(
        err.matches("set [testing] allow_test_settings = true")
            .count(),
        3,
        "{err}"
    );

    // The switch, on every member of a test rig: valid, and the summary says so.
    let rig = with("enforce").replace(
        "\nallow_test_settings = false\n",
        "\nallow_test_settings = true\n",
    );
    assert!(rig.contains("\nallow_test_settings = true\n"), "{rig}");
    std::fs::write(&path, rig).unwrap();
    let out = check(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("a test rig ([testing] allow_test_settings = true)")
    );

    // Observe mode never acts: no switch needed.
    std::fs::write(&path, with("observe")).unwrap();
    let out = check(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A watchdog device that is not there when check-config runs cannot be judged: not
    // refused here (the daemon judges it when it opens the device).
    std::fs::remove_file(&fake_watchdog).unwrap();
    std::fs::write(&path, with("enforce")).unwrap();
    let err = String::from_utf8_lossy(&check(&path).stderr).into_owned();
    assert!(err.contains("2 configuration problem(s)"), "{err}");
    assert!(!err.contains("local_actions.watchdog_device"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Issue 11: `check-config` refuses a secrets file others can read, and one whose value would
/// add a line to the agent's stdin, as `run` does — without echoing the secret.
#[test]
fn a_readable_or_multi_line_secrets_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("pf-check-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secrets = dir.join("ipmi.secrets");
    std::fs::write(&secrets, "password=s3cret\n").unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/peerfence.example.toml"),
    )
    .unwrap()
    .replace("/etc/peerfence/ipmi.secrets", secrets.to_str().unwrap());
    let path = dir.join("peerfence.toml");
    std::fs::write(&path, example).unwrap();
    let out = check(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(check(&path).status.success());
    std::fs::write(&secrets, "password=s3cret\raction=reboot\n").unwrap();
    let out = check(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("carriage return or NUL"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
