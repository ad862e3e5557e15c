//! `peerfence init` and the start of `peerfence run` (Safety at the seams: durable state lost).
//! A first start is explicit; a data directory whose state was lost is refused; init recovers a
//! member that ran before above the generation its heartbeat slot shows, and the member rejoins
//! its cluster, voting for nothing until its old promises have lapsed.

// Tests write files and wait on processes; the sans-IO rule of clippy.toml is about the library.
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;
use peerfence::daemon::config::{DaemonConfig, RawDaemonConfig};
use peerfence::daemon::store::StateFile;
use peerfence::durable::RECOVER_GENERATION_MARGIN;
use std::process::{Command, Output};
use std::time::Duration;

fn config_of(c: &Cluster, i: usize) -> DaemonConfig {
    let text = std::fs::read_to_string(&c.members[i].config).unwrap();
    RawDaemonConfig::from_toml(&text)
        .and_then(|r| r.validate())
        .unwrap()
}

fn init(c: &Cluster, i: usize, extra: &[&str]) -> Output {
    Command::new(bin())
        .args(["init", "--config"])
        .arg(&c.members[i].config)
        .args(extra)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts member `i` and expects `run` to refuse at once: returns its log.
fn refused(c: &mut Cluster, i: usize) -> String {
    c.start(i);
    let status = c.wait_exit(i, Duration::from_secs(20));
    let log = c.log(i);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    log
}

/// Writes member `i`'s heartbeat slot on the shared path: a record of `generation`.
fn write_slot(c: &Cluster, i: usize, generation: u32, stopped: bool) {
    let cfg = config_of(c, i);
    let hb = peerfence_proto::HeartbeatRecord {
        member: cfg.me,
        boot: peerfence_proto::BootId([7; 16]),
        generation,
        counter: 40,
    };
    let record = peerfence_proto::StorageRecord {
        cluster: cfg.core.cluster.clone(),
        digest: cfg.core.digest(),
        body: if stopped {
            peerfence_proto::StorageBody::Stopped(hb)
        } else {
            peerfence_proto::StorageBody::Heartbeat(hb)
        },
    };
    std::fs::write(
        c.dir
            .join("shared")
            .join(format!("{}.hb", c.members[i].name)),
        peerfence_proto::encode_storage(&record).unwrap(),
    )
    .unwrap();
}

#[test]
fn run_refuses_an_uninitialised_data_dir_and_a_lost_state_file() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new("init-refuse", 3, "");
    let data = c.dir.join("data").join("n0");

    // Never initialised: no marker, no state. Before this change `run` started from nothing.
    std::fs::remove_dir_all(&data).unwrap();
    let log = refused(&mut c, 0);
    assert!(log.contains("holds no peerfence state"), "{log}");
    assert!(log.contains("a first start is explicit"), "{log}");
    assert!(log.contains("peerfence init --config FILE"), "{log}");
    assert!(!data.exists(), "run creates no data directory");

    // init makes it; a second init has nothing to do and says which file is there.
    let out = init(&c, 0, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("n0 starts fresh"), "{}", text(&out));
    assert!(data.join("initialized").exists());
    let out = init(&c, 0, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{} already exists", data.join("state").display())),
        "{}",
        text(&out)
    );

    // The marker outlived the state (a deleted file, a disk replaced under it): refused, with
    // the way out.
    std::fs::remove_file(data.join("state")).unwrap();
    let log = refused(&mut c, 0);
    assert!(log.contains("durable state was lost"), "{log}");
    assert!(
        log.contains("Run `peerfence init --config FILE`: it recovers safely"),
        "{log}"
    );

    // A damaged state file is still refused as before (init does not paper over it either).
    std::fs::write(data.join("state"), b"PFSTATE1 garbage garbage garbage").unwrap();
    let log = refused(&mut c, 0);
    assert!(log.contains("durable state is damaged"), "{log}");
    assert_eq!(init(&c, 0, &[]).status.code(), Some(1));

    // Another member's data directory is not this one's.
    std::fs::copy(
        c.dir.join("data").join("n1").join("initialized"),
        data.join("initialized"),
    )
    .unwrap();
    std::fs::remove_file(data.join("state")).unwrap();
    let out = init(&c, 0, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("node.data_dir must be this member's own directory"),
        "{}",
        text(&out)
    );
}

#[test]
fn init_recovers_above_the_generation_of_the_hosts_own_slot() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let c = Cluster::new("init-slot", 3, "");
    let data = c.dir.join("data").join("n0");
    std::fs::remove_dir_all(&data).unwrap();
    write_slot(&c, 0, 7, false);
    let out = init(&c, 0, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("n0 ran before, generation 7"), "{said}");
    assert!(said.contains("recovering above generation"), "{said}");
    assert!(said.contains("votes for nothing"), "{said}");
    let state = StateFile::open(&data).unwrap().load().unwrap().unwrap();
    assert!(
        state.generation >= 7 + RECOVER_GENERATION_MARGIN,
        "generation {}",
        state.generation
    );
    assert!(state.recovering);

    // A clean stop's record counts too, and a member whose slot is empty starts fresh.
    std::fs::remove_dir_all(c.dir.join("data").join("n1")).unwrap();
    write_slot(&c, 1, 30, true);
    let out = init(&c, 1, &[]);
    assert!(
        text(&out).contains("generation 30 (stopped cleanly)"),
        "{}",
        text(&out)
    );
    let state = StateFile::open(&c.dir.join("data").join("n1"))
        .unwrap()
        .load()
        .unwrap()
        .unwrap();
    assert!(state.generation >= 30 + RECOVER_GENERATION_MARGIN && state.recovering);
    let fresh = StateFile::open(&c.dir.join("data").join("n2"))
        .unwrap()
        .load()
        .unwrap()
        .unwrap();
    assert!(!fresh.recovering && fresh.generation == 0);

    // No readable storage path (its marker is gone: a mount that failed?): the generation
    // cannot be known, so init refuses unless told that this host never ran.
    std::fs::remove_file(c.dir.join("shared").join(".peerfence-cluster")).unwrap();
    std::fs::remove_dir_all(c.dir.join("data").join("n2")).unwrap();
    let out = init(&c, 2, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("no storage path could be read"), "{said}");
    assert!(said.contains(".peerfence-cluster is missing"), "{said}");
    assert!(said.contains("--no-storage"), "{said}");
    assert!(!c.dir.join("data").join("n2").join("state").exists());
    let out = init(&c, 2, &["--no-storage"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not known"), "{}", text(&out));
}

/// A member's data directory is wiped while it is down: `run` refuses, `init` recovers it from
/// its heartbeat slot, and it rejoins with a higher generation (its peers see it Alive), not
/// eligible to vote until its old promises have lapsed.
#[test]
fn a_member_whose_state_was_wiped_recovers_and_rejoins() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let d = bin();
    // The shortest quiet period and a long fence level (so a promise lifetime of about 35 s):
    // `recovering` shows well after the quiet period, before the old promises could lapse.
    let tweak = format!(
        "[fencing]\nlevels = [{{ name = \"sim\", kind = \"agent\", timeout = \"30s\" }}]\nstartup_quiet_period = \"5s\"\n\n[agents.sim]\ncommand = [\"{d}\", \"agent\", \"sim\"]\nmonitor_interval = \"off\"\npower_status_interval = \"off\"\n"
    );
    let mut c = Cluster::new("init-rejoin", 3, &tweak);
    for i in 0..3 {
        c.start(i);
    }
    assert_cluster_forms(&c);
    // Its heartbeat reaches the shared path before its state goes.
    let before = wait_for(Duration::from_secs(20), || {
        let s = c.status(2)?;
        (s["node"]["storage"][0] == "Ok").then(|| s["node"]["generation"].as_u64())?
    })
    .expect("n2 writes its heartbeat");
    let boot_before = c.view(0, 2).unwrap()["boot"].clone();

    c.kill(2);
    std::fs::remove_dir_all(c.dir.join("data").join("n2")).unwrap();
    let log = refused(&mut c, 2);
    assert!(log.contains("peerfence init --config FILE"), "{log}");

    let said = c.init(2);
    assert!(
        said.contains(&format!("n2 ran before, generation {before}")),
        "{said}"
    );
    c.start(2);
    let rejoined = wait_for(Duration::from_secs(40), || {
        let generation = c.status(2)?["node"]["generation"].as_u64()?;
        let accepted = [0, 1].iter().all(|&i| {
            c.view(i, 2)
                .is_some_and(|v| v["swim"] == "Alive" && v["boot"] != boot_before)
        });
        accepted.then_some(generation)
    });
    let generation = rejoined.unwrap_or_else(|| panic!("n2 did not rejoin:\n{}", c.log(2)));
    assert!(
        generation > before + u64::from(RECOVER_GENERATION_MARGIN),
        "generation {generation}, before {before}"
    );
    // It waits out the promises it may have made before the loss: not eligible, and says why.
    let summary = wait_for(Duration::from_secs(20), || {
        let s = c.status(2)?;
        (s["summary"]["ineligible"] != "initializing").then(|| s["summary"].clone())
    })
    .expect("n2 answers");
    assert_eq!(summary["ineligible"], "recovering", "{summary}");
    assert_eq!(summary["eligible"], false, "{summary}");
}
