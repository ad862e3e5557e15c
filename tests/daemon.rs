//! The daemon as real processes on loopback: joining, failure detection, rejoining, refusing
//! strangers, dropping forged senders, a hanging storage write, a hanging state-file write, and
//! crash-safe durable state.
//!
//! Every wait is bounded polling of the status endpoint with a generous deadline; where the
//! issue states a bound (join within 3 s, Down within the detection bound) the measured time is
//! checked against it. Tests run one at a time (they start several daemons each).

// Tests write files and wait on processes; the sans-IO rule of clippy.toml is about the library.
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn five_daemons_join_detect_a_kill_and_see_it_rejoin_with_a_new_boot() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new("five", 5, "");
    for i in 0..5 {
        c.start(i);
    }
    let last_start = c.members[4].started.unwrap();
    let all: Vec<usize> = (0..5).collect();
    let joined = wait_for(Duration::from_secs(30), || {
        all_alive(&c, &all).then(Instant::now)
    });
    let joined = joined.unwrap_or_else(|| {
        panic!(
            "the cluster never formed; logs in {}\n{}",
            c.dir.display(),
            c.log(0)
        )
    });
    let took = joined - last_start;
    eprintln!("all 5 saw each other Alive {took:?} after the last start");
    assert!(
        took <= Duration::from_secs(3),
        "joining took {took:?}, bound 3 s"
    );

    let boot_before = c.view(0, 2).unwrap()["boot"].clone();
    c.kill(2);
    let killed = Instant::now();
    // Detection bound with the default timings: every member probes every other within n - 1
    // probe periods, then suspect_to_down_after, plus one period for the news to spread.
    let bound = Duration::from_secs(4 + 3 + 1);
    let others = [0, 1, 3, 4];
    let down = wait_for(Duration::from_secs(30), || {
        others
            .iter()
            .all(|&i| c.view(i, 2).is_some_and(|v| v["swim"] == "Down"))
            .then(Instant::now)
    })
    .expect("the killed member was never seen Down");
    let took = down - killed;
    eprintln!("all others saw the killed member Down after {took:?}");
    assert!(took <= bound, "detection took {took:?}, bound {bound:?}");
    // Its storage heartbeat stopped too.
    assert!(
        wait_for(Duration::from_secs(20), || {
            c.view(0, 2)
                .filter(|v| v["storage_alive"] == false)
                .map(|_| ())
        })
        .is_some()
    );

    c.start(2);
    let rejoined = wait_for(Duration::from_secs(30), || {
        others
            .iter()
            .all(|&i| {
                c.view(i, 2).is_some_and(|v| {
                    v["swim"] == "Alive" && v["boot"] != boot_before && !v["boot"].is_null()
                })
            })
            .then_some(())
    });
    assert!(
        rejoined.is_some(),
        "the restarted member did not rejoin with a new boot id"
    );
    let s = c.status(2).unwrap();
    assert!(
        s["node"]["generation"].as_u64().unwrap() >= 2,
        "its SWIM generation grew across the restart"
    );
}

/// A QUIC client of our own, for the tests that play a stranger or a lying member.
mod client {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    pub fn runtime() -> tokio::runtime::Runtime {
        // Multi-threaded, so that connections keep being driven between block_on calls.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn endpoint(client: rustls::ClientConfig) -> quinn::Endpoint {
        let mut e = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let q = quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
        e.set_default_client_config(quinn::ClientConfig::new(Arc::new(q)));
        e
    }

    /// Completes a handshake from our side (the server may still refuse us right after).
    pub async fn connect(
        client: rustls::ClientConfig,
        port: u16,
        name: &str,
    ) -> Result<quinn::Connection, String> {
        let e = endpoint(client);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let connecting = e.connect(addr, name).map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(10), connecting)
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| e.to_string())
    }

    /// True if the server refuses us: the handshake fails, or the connection is closed on us.
    pub async fn refused(client: rustls::ClientConfig, port: u16, name: &str) -> bool {
        match connect(client, port, name).await {
            Err(_) => true,
            Ok(conn) => tokio::time::timeout(Duration::from_secs(10), conn.closed())
                .await
                .is_ok(),
        }
    }

    pub fn tls_with_cert(dir: &Path, ca: &Path, name: &str) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut std::fs::read(ca).unwrap().as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<_> = rustls_pemfile::certs(
            &mut std::fs::read(dir.join(format!("{name}.crt")))
                .unwrap()
                .as_slice(),
        )
        .map(|c| c.unwrap())
        .collect();
        let key = rustls_pemfile::private_key(
            &mut std::fs::read(dir.join(format!("{name}.key")))
                .unwrap()
                .as_slice(),
        )
        .unwrap()
        .unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        c.alpn_protocols = vec![b"peerfence/1".to_vec()];
        c
    }

    pub fn tls_without_cert(ca: &Path) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut std::fs::read(ca).unwrap().as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"peerfence/1".to_vec()];
        c
    }

    pub async fn send_stream(conn: &quinn::Connection, bytes: &[u8]) {
        let mut s = conn.open_uni().await.unwrap();
        s.write_all(bytes).await.unwrap();
        s.finish().unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.stopped()).await;
    }

    pub fn datagram(conn: &quinn::Connection, bytes: &[u8]) {
        conn.send_datagram(Bytes::copy_from_slice(bytes)).unwrap();
    }
}

fn counter(s: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = s;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

#[test]
fn strangers_garbage_and_forged_senders_change_nothing_but_counters() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Four members configured, three running: the test plays the fourth (n3), with its real
    // certificate, to send a message claiming to come from n2.
    let mut c = Cluster::new("strangers", 4, "");
    for i in 0..3 {
        c.start(i);
    }
    assert!(
        wait_for(Duration::from_secs(30), || all_alive(&c, &[0, 1, 2])
            .then_some(()))
        .is_some()
    );
    let certs = c.dir.join("certs");
    let port = c.members[0].quic;
    let before = c.status(0).unwrap();
    let rt = client::runtime();

    // A certificate from another CA, with a member's name.
    let foreign = c.dir.join("foreign");
    let ok = Command::new(bin())
        .args(["certs", "init", "--dir"])
        .arg(&foreign)
        .args(["--cluster", "test"])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let ok = Command::new(bin())
        .args(["certs", "issue", "--dir"])
        .arg(&foreign)
        .args(["--id", "n3"])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let stranger = client::tls_with_cert(&foreign, &certs.join("ca.crt"), "n3");
    assert!(
        rt.block_on(client::refused(stranger, port, "n0")),
        "a foreign-CA certificate is refused"
    );
    // No certificate at all.
    let anonymous = client::tls_without_cert(&certs.join("ca.crt"));
    assert!(
        rt.block_on(client::refused(anonymous, port, "n0")),
        "a client without a certificate is refused"
    );
    let refused = wait_for(Duration::from_secs(10), || {
        let s = c.status(0)?;
        (counter(&s, &["transport", "handshakes_refused"]) >= 2).then_some(s)
    });
    assert!(refused.is_some(), "both refusals are counted");

    // Random bytes to the QUIC port: counted, nothing else.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut garbage = vec![0u8; 1200];
    for round in 0..50u32 {
        for (k, b) in garbage.iter_mut().enumerate() {
            *b = (k as u32).wrapping_mul(2_654_435_761).wrapping_add(round) as u8;
        }
        udp.send_to(&garbage, ("127.0.0.1", port)).unwrap();
    }
    let after = wait_for(Duration::from_secs(10), || {
        let s = c.status(0)?;
        (counter(&s, &["transport", "udp_datagrams_in"])
            >= counter(&before, &["transport", "udp_datagrams_in"]) + 50)
            .then_some(s)
    })
    .expect("the garbage reached the port and was counted");
    assert_eq!(
        after["messages"]["dropped"], before["messages"]["dropped"],
        "garbage never reaches the node"
    );
    for j in [1, 2] {
        assert_eq!(
            c.view(0, j).unwrap()["swim"],
            "Alive",
            "membership unchanged"
        );
    }

    // A member (n3, genuine certificate) that claims to be n2, and one that sends garbage.
    let genuine = client::tls_with_cert(&certs, &certs.join("ca.crt"), "n3");
    let s0 = c.status(0).unwrap();
    let envelope = |sender: u16, cluster: &str, digest: u64| {
        peerfence_proto::encode(&peerfence_proto::Envelope {
            cluster: peerfence_proto::ClusterId::new(cluster).unwrap(),
            digest: peerfence_proto::ConfigDigest(digest),
            sender: peerfence_proto::MemberId(sender),
            message: peerfence_proto::Message::Contact(peerfence_proto::Contact {
                origin: peerfence_proto::MemberId(sender),
                target: peerfence_proto::MemberId(0),
                boot: peerfence_proto::BootId([7; 16]),
                nonce: 1,
            }),
        })
        .unwrap()
    };
    let digest = u64::from_str_radix(s0["config_digest"].as_str().unwrap(), 16).unwrap();
    let conn = rt.block_on(async {
        let conn = client::connect(genuine, port, "n0")
            .await
            .expect("a member's certificate is accepted");
        client::send_stream(&conn, &envelope(2, "test", digest)).await; // claims n2, is n3
        client::datagram(&conn, &[0xde, 0xad, 0xbe, 0xef]);
        client::datagram(&conn, &envelope(3, "test", digest ^ 1));
        conn
    });
    let total = |d: &serde_json::Value| -> u64 {
        d.as_object()
            .map(|o| o.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0)
    };
    let dropped = wait_for(Duration::from_secs(10), || {
        let s = c.status(0)?;
        let (now, then) = (&s["messages"]["dropped"], &s0["messages"]["dropped"]);
        // The lie about the sender and the foreign digest by name; the garbage under whatever
        // decode error it makes.
        (counter(now, &["forged_sender"]) > counter(then, &["forged_sender"])
            && counter(now, &["config_digest_mismatch"])
                > counter(then, &["config_digest_mismatch"])
            && total(now) >= total(then) + 3)
            .then_some(s)
    });
    assert!(
        dropped.is_some(),
        "forged, garbled and foreign-configuration messages are dropped and counted: {:?}",
        c.status(0).map(|s| s["messages"].clone())
    );
    conn.close(0u32.into(), b"done");
    assert_eq!(c.view(0, 2).unwrap()["swim"], "Alive");
}

#[test]
fn a_hanging_heartbeat_write_fails_that_host_only() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new("fifo", 3, "");
    for i in 0..3 {
        c.start(i);
    }
    assert!(
        wait_for(Duration::from_secs(30), || all_alive(&c, &[0, 1, 2])
            .then_some(()))
        .is_some()
    );
    assert!(
        wait_for(Duration::from_secs(20), || {
            (0..3)
                .all(|i| {
                    c.status(i)
                        .is_some_and(|s| s["node"]["verdict"] == "Healthy")
                })
                .then_some(())
        })
        .is_some()
    );
    // n0's heartbeat file becomes a FIFO with no reader: opening it for writing hangs.
    let slot = c.dir.join("shared").join("n0.hb");
    let made = wait_for(Duration::from_secs(10), || {
        let _ = std::fs::remove_file(&slot);
        Command::new("mkfifo")
            .arg(&slot)
            .status()
            .ok()?
            .success()
            .then_some(())
    });
    assert!(made.is_some(), "could not put a FIFO in place");
    let broken = Instant::now();
    // Failed after 3 consecutive timed-out writes: within 3 intervals + a write timeout, plus
    // an interval of phase.
    let bound = Duration::from_secs(3 + 2 + 1);
    let failed = wait_for(Duration::from_secs(30), || {
        let s = c.status(0)?;
        (s["node"]["verdict"] == "Unhealthy" && s["node"]["storage"][0] == "Failed")
            .then(Instant::now)
    })
    .expect("the host never noticed its hanging writes");
    let took = failed - broken;
    eprintln!("hanging writes reported Failed after {took:?}");
    assert!(took <= bound, "took {took:?}, bound {bound:?}");
    for i in [1, 2] {
        let s = c.status(i).unwrap();
        assert_eq!(s["node"]["verdict"], "Healthy", "n{i} is not affected");
    }
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                assert_eq!(
                    c.view(i, j).unwrap()["swim"],
                    "Alive",
                    "membership is not affected"
                );
            }
        }
    }
    // Its peers see the details it reports: which path failed.
    assert!(
        wait_for(Duration::from_secs(20), || {
            c.view(2, 0)
                .filter(|v| v["storage"][0] == "Failed")
                .map(|_| ())
        })
        .is_some()
    );
    // The others no longer see its heartbeat move (a FIFO in its slot cannot be read, which is
    // "unknown", never "dead"), and learn its verdict by gossip.
    assert!(
        wait_for(Duration::from_secs(20), || {
            c.view(1, 0)
                .filter(|v| v["storage_alive"] != true && v["verdict"] == "Unhealthy")
                .map(|_| ())
        })
        .is_some()
    );
}

/// Issue 10 §4: a path without this cluster's marker is not the shared storage (a mount that
/// failed leaves the bare mountpoint). Every host stops writing there and says why; the
/// explicit `peerfence storage init` restores it.
#[test]
fn a_path_without_the_cluster_marker_is_not_written() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new("marker", 3, "");
    for i in 0..3 {
        c.start(i);
    }
    let healthy = |c: &Cluster| {
        (0..3).all(|i| {
            c.status(i)
                .is_some_and(|s| s["node"]["verdict"] == "Healthy")
        })
    };
    assert!(
        wait_for(Duration::from_secs(30), || healthy(&c).then_some(())).is_some(),
        "{:?}",
        c.status(0)
    );
    let marker = c.dir.join("shared").join(".peerfence-cluster");
    std::fs::remove_file(&marker).unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || {
            (0..3)
                .all(|i| {
                    c.status(i).is_some_and(|s| {
                        s["node"]["verdict"] == "Unhealthy" && s["node"]["storage"][0] == "Failed"
                    })
                })
                .then_some(())
        })
        .is_some(),
        "{:?}",
        c.status(0)
    );
    let log = c.log(0);
    assert!(log.contains("peerfence storage init"), "{log}");
    let out = Command::new(common::bin())
        .args(["storage", "init", "--config"])
        .arg(&c.members[0].config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_for(Duration::from_secs(30), || healthy(&c).then_some(())).is_some(),
        "{:?}",
        c.status(0)
    );
}

#[test]
fn kill_9_during_durable_writes_loses_nothing_acknowledged() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!("pf-durable-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut last_acked = 0u32;
    for round in 0..25u32 {
        let mut child = Command::new(bin())
            .args(["durable-stress", "--dir"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill after a pseudo-random number of acknowledged saves, mid-stream.
        let acks_wanted = 1 + (round * 37 % 97);
        for _ in 0..acks_wanted {
            let line = lines.next().expect("the stress process runs").unwrap();
            let n: u32 = line.strip_prefix("acked ").unwrap().parse().unwrap();
            assert!(n > last_acked, "counters grow across restarts");
            last_acked = n;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let file = peerfence::daemon::store::StateFile::open(&dir).unwrap();
        let state = file
            .load()
            .expect("the state loads after kill -9")
            .expect("there is a state");
        assert!(
            state.round_counter >= last_acked,
            "round {round}: acknowledged {last_acked}, loaded {}",
            state.round_counter
        );
        last_acked = state.round_counter;
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn pid_of(c: &Cluster, i: usize) -> i32 {
    c.members[i].child.as_ref().unwrap().id() as i32
}

/// Waits (bounded) for member `i`'s process to exit; returns its exit code.
fn wait_exit(c: &mut Cluster, i: usize, limit: Duration) -> Option<i32> {
    let child = c.members[i].child.as_mut().unwrap();
    let code = wait_for(limit, || child.try_wait().ok().flatten())?;
    c.members[i].child = None;
    Some(code.code().unwrap_or(-1))
}

#[test]
fn sigterm_leaves_cleanly_and_the_agent_check_is_gossiped() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let agent_pid = std::env::temp_dir().join(format!("pf-agent-{}.pid", std::process::id()));
    std::fs::write(&agent_pid, format!("{}\n", std::process::id())).unwrap();
    let tweak = format!(
        "[health]\ninterval = \"500ms\"\nagent = {{ pid_file = \"{}\" }}\n",
        agent_pid.display()
    );
    let mut c = Cluster::new("signals", 3, &tweak);
    for i in 0..3 {
        c.start(i);
    }
    assert!(
        wait_for(Duration::from_secs(30), || all_alive(&c, &[0, 1, 2])
            .then_some(()))
        .is_some()
    );

    // The agent check: alive, then dead once its pid file names no process; peers learn it.
    assert!(
        wait_for(Duration::from_secs(20), || {
            c.view(0, 1).filter(|v| v["agent"] == "Alive").map(|_| ())
        })
        .is_some(),
        "agent reported alive"
    );
    std::fs::write(&agent_pid, "999999999\n").unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || {
            c.view(0, 1).filter(|v| v["agent"] == "Dead").map(|_| ())
        })
        .is_some(),
        "agent death reported and gossiped"
    );
    std::fs::remove_file(&agent_pid).ok();

    // SIGTERM: leave cleanly, flush durable state, exit 0.
    let generation = c.status(2).unwrap()["node"]["generation"].as_u64().unwrap();
    unsafe { libc::kill(pid_of(&c, 2), libc::SIGTERM) };
    let code =
        wait_exit(&mut c, 2, Duration::from_secs(20)).expect("the daemon exits after SIGTERM");
    assert_eq!(code, 0, "clean exit; log:\n{}", c.log(2));
    let state = peerfence::daemon::store::StateFile::open(&c.dir.join("data").join("n2"))
        .unwrap()
        .load()
        .unwrap()
        .expect("durable state on disk");
    assert_eq!(u64::from(state.generation), generation);
    // Its peers treat it as having left on purpose: Left, never fenceable.
    assert!(
        wait_for(Duration::from_secs(20), || {
            c.view(0, 2).filter(|v| v["ha"] == "Left").map(|_| ())
        })
        .is_some(),
        "a member that left is Left, not Checking: {:?}",
        c.view(0, 2)
    );
    // Its heartbeat slot says so for any later reader: the last record is a clean stop.
    let slot = std::fs::read(c.dir.join("shared").join("n2.hb")).unwrap();
    let record = peerfence_proto::decode_storage(&slot).unwrap();
    assert!(
        matches!(record.body, peerfence_proto::StorageBody::Stopped(r) if u64::from(r.generation) == generation),
        "{record:?}"
    );
    // n0 restarts (its leave record is durable) and, after its quiet period, still knows.
    c.kill(0);
    c.start(0);
    assert!(
        wait_for(Duration::from_secs(20), || {
            let s = c.status(0)?;
            (s["summary"]["ineligible"] != "initializing").then_some(())
        })
        .is_some()
    );
    let v = c.view(0, 2).unwrap();
    assert_eq!(v["ha"], "Left", "{v:?}");
    assert_eq!(v["left"][0].as_u64(), Some(generation), "{v:?}");

    // Two signals in a row: the second exits at once.
    c.start(2);
    assert!(wait_for(Duration::from_secs(20), || c.status(2).map(|_| ())).is_some());
    let pid = pid_of(&c, 2);
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        libc::kill(pid, libc::SIGTERM);
    }
    let code = wait_exit(&mut c, 2, Duration::from_secs(5)).expect("exits promptly");
    assert!(code == 130 || code == 0, "exit code {code}");
}

/// A state-file write that hangs (a FIFO no one reads in place of `DATA_DIR/state.tmp`, the
/// slowest disk there is) holds back what depends on it, not SWIM: the node keeps answering
/// probes and status requests, its peers keep seeing it alive. When the write fails at last,
/// the daemon stops with the store's error, as it always did.
#[test]
fn a_hanging_state_file_write_holds_its_dependants_but_not_swim() {
    const TOKEN: &str = "ops-0123456789abcdef0123456789abcdef";
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new_with("slowdisk", 3, "observe", |_, dir| {
        format!("token_file = \"{}/api-tokens\"\n", dir.display())
    });
    let tokens = c.dir.join("api-tokens");
    std::fs::write(&tokens, format!("ops {TOKEN}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    for i in 0..3 {
        c.start(i);
    }
    assert_cluster_forms(&c);
    let idle = |s: &serde_json::Value| s["state_file"]["writing"] == false;
    assert!(c.status(0).is_some_and(|s| idle(&s)), "{:?}", c.status(0));

    let tmp = c.dir.join("data").join("n0").join("state.tmp");
    let made = Command::new("mkfifo").arg(&tmp).status().unwrap();
    assert!(made.success(), "could not put a FIFO in place");
    // Maintenance is durable: n0 persists the flag, and the write hangs in open(2). The answer
    // waits for its events, which wait for the write: the API gives up after 2 s.
    let (code, body) = http_request(
        c.members[0].http,
        "POST",
        "/v1/hosts/n1/maintenance",
        Some(TOKEN),
        Some(r#"{"on": true}"#),
    )
    .expect("the API answers");
    assert_eq!(code, 503, "{body}");
    let stuck = wait_for(Duration::from_secs(10), || {
        let s = c.status(0)?;
        (s["state_file"]["writing"] == true && s["state_file"]["held"].as_u64()? > 0).then_some(s)
    })
    .expect("n0 answers status requests while its write hangs, and holds its dependants");
    eprintln!("held behind the write: {}", stuck["state_file"]);

    // Longer than suspect→down (3 s) plus a probe period and margin: a node task blocked on
    // the write would be Down everywhere by then.
    let window = Instant::now() + Duration::from_secs(8);
    while Instant::now() < window {
        for i in [1, 2] {
            let v = c.view(i, 0).expect("peers answer");
            assert_ne!(v["swim"], "Down", "n{i} lost n0 while its write hung: {v}");
        }
        let s = c
            .status(0)
            .expect("n0 answers status requests while its write hangs");
        assert_eq!(s["state_file"]["writing"], true, "{}", s["state_file"]);
        // Pacing of the observation only (nothing waits on it).
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        wait_for(Duration::from_secs(10), || all_alive(&c, &[0, 1, 2])
            .then_some(()))
        .is_some(),
        "SWIM flows both ways while the write hangs"
    );

    // The disk "answers": the write goes through the FIFO, and fsync(2) of a FIFO fails
    // (EINVAL). The daemon stops with the store's error naming the file.
    let reader = {
        let tmp = tmp.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let read = std::fs::File::open(&tmp)
                .and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut bytes));
            let _ = tx.send(read.map(|_| bytes.len()));
        });
        rx
    };
    let read = reader
        .recv_timeout(Duration::from_secs(10))
        .expect("the daemon had the FIFO open for writing");
    assert!(read.is_ok_and(|n| n > 0), "the state was written into it");
    let code = wait_exit(&mut c, 0, Duration::from_secs(20)).expect("the daemon stops");
    assert_eq!(code, 1);
    let log = c.log(0);
    assert!(
        log.contains("state.tmp") && log.contains("Invalid argument"),
        "{log}"
    );
}
