//! The HTTP API on real daemons: reads, authenticated and audited actions that propagate and
//! persist, the SSE event stream with replay, Prometheus metrics, and the fence history with
//! its quorum certificate.
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const ALICE: &str = "alice-0123456789abcdef0123456789abcdef";

fn get(c: &Cluster, i: usize, path: &str) -> Option<(u16, String)> {
    http_request(c.members[i].http, "GET", path, None, None)
}

fn post(
    c: &Cluster,
    i: usize,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    http_request(c.members[i].http, "POST", path, token, body)
        .unwrap_or_else(|| panic!("POST {path} on member {i} got no answer"))
}

fn summary(c: &Cluster, i: usize) -> Option<serde_json::Value> {
    Some(c.status(i)?["summary"].clone())
}

fn member(c: &Cluster, i: usize, name: &str) -> Option<serde_json::Value> {
    c.status(i)?["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

/// Runs the `peerfence` command: `(exit code, stdout, stderr)`.
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .env_remove("PEERFENCE_ENDPOINT")
        .env_remove("PEERFENCE_TOKEN_FILE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads an SSE stream until `want` appears in it (or the deadline passes).
fn sse_until(port: u16, path: &str, want: &[&str], limit: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let end = Instant::now() + limit;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end && !want.iter().all(|w| text.contains(w)) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
    text
}

#[test]
fn api_reads_actions_events_metrics_and_fence_history() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let n = 4;
    let mut c = Cluster::new_with("api", n, "enforce", |_, dir| {
        format!(
            "token_file = \"{}/api-tokens\"\n\n[health.agent]\nexec = [\"true\"]\n\n[[health.exec]]\nname = \"always\"\ncommand = [\"true\"]\n\n[fencing]\nlevels = [{{ name = \"sim\", kind = \"agent\", timeout = \"10s\" }}]\nstartup_quiet_period = \"5s\"\n\n{}",
            dir.display(),
            sim_agent("sim", dir, n, "")
        )
    });
    prepare_hosts(&c);
    let tokens = c.dir.join("api-tokens");
    std::fs::write(&tokens, format!("# operators\nalice {ALICE}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    for i in 0..n {
        start_host(&mut c, i);
    }
    assert_cluster_forms(&c);

    // Reads.
    assert_eq!(get(&c, 0, "/healthz").map(|r| r.0), Some(200));
    assert!(
        wait_for(Duration::from_secs(20), || (get(&c, 0, "/readyz")?.0
            == 200)
            .then_some(()))
        .is_some()
    );
    let s = summary(&c, 0).unwrap();
    assert_eq!(s["members"], 4);
    assert_eq!(s["quorum"], 3);
    assert_eq!(s["armed"], true);
    assert_eq!(s["mode"], "enforce");
    assert_eq!(s["budget_left"], s["budget"]);
    let st = c.status(0).unwrap();
    let members = st["members"].as_array().unwrap();
    assert_eq!(members.len(), 4);
    assert!(
        members
            .iter()
            .all(|m| m["why"].is_string() && m["ha"].is_string()),
        "{members:?}"
    );
    let (code, page) = get(&c, 0, "/").unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("<html"), "{page}");

    // Actions: no token, a wrong token, or no token file at all change nothing.
    let (code, body) = post(&c, 0, "/v1/disarm", None, None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let (code, body) = post(&c, 0, "/v1/disarm", Some(&"x".repeat(40)), None);
    assert_eq!(code, 401, "{body}");
    assert_eq!(summary(&c, 0).unwrap()["armed"], true);

    // Disarm with the token: audited (naming who), propagated to every member, persisted.
    let (code, body) = post(&c, 0, "/v1/disarm", Some(ALICE), None);
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["by"], "token:alice");
    assert_eq!(answer["events"][0]["kind"], "audit");
    assert!(
        answer["events"][0]["message"]
            .as_str()
            .unwrap()
            .contains("token:alice")
    );
    assert!(
        answer["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "disarmed"),
        "{body}"
    );
    assert!(
        wait_for(Duration::from_secs(20), || {
            (0..n)
                .all(|i| summary(&c, i).is_some_and(|s| s["armed"] == false))
                .then_some(())
        })
        .is_some(),
        "disarm did not reach every member"
    );
    // Member 1 learnt it by gossip; after a restart it still knows (persisted).
    c.kill(1);
    start_host(&mut c, 1);
    let after = wait_for(Duration::from_secs(20), || summary(&c, 1));
    assert_eq!(after.unwrap()["armed"], false);
    assert_cluster_forms(&c);
    let (code, _) = post(&c, 1, "/v1/arm", Some(ALICE), None);
    assert_eq!(code, 200);
    assert!(
        wait_for(Duration::from_secs(20), || {
            (0..n)
                .all(|i| summary(&c, i).is_some_and(|s| s["armed"] == true))
                .then_some(())
        })
        .is_some()
    );

    // Maintenance on and off, seen by another member.
    let (code, body) = post(
        &c,
        0,
        "/v1/hosts/n2/maintenance",
        Some(ALICE),
        Some(r#"{"on": true}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        wait_for(Duration::from_secs(20), || {
            let m = member(&c, 3, "n2")?;
            (m["maintenance"] == true && m["ha"] == "ineligible").then_some(())
        })
        .is_some(),
        "{:?}",
        member(&c, 3, "n2")
    );
    let (code, _) = post(
        &c,
        0,
        "/v1/hosts/n2/maintenance",
        Some(ALICE),
        Some(r#"{"on": false}"#),
    );
    assert_eq!(code, 200);
    assert!(
        wait_for(Duration::from_secs(20), || {
            (member(&c, 3, "n2")?["maintenance"] == false).then_some(())
        })
        .is_some()
    );

    // Mistakes are explained and change nothing.
    let (code, body) = post(
        &c,
        0,
        "/v1/hosts/nope/maintenance",
        Some(ALICE),
        Some(r#"{"on": true}"#),
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("n0, n1, n2, n3"), "{body}");
    let (code, body) = post(
        &c,
        0,
        "/v1/hosts/n2/maintenance",
        Some(ALICE),
        Some(r#"{"on": "yes"}"#),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = post(&c, 0, "/v1/hosts/n0/fence", Some(ALICE), None);
    assert_eq!(code, 409, "{body}");
    let (code, body) = post(&c, 0, "/v1/hosts/n2/fence", None, None);
    assert_eq!(code, 401, "{body}");

    // The event stream replays the buffered events (with their ids) and goes on live.
    let replay = sse_until(
        c.members[0].http,
        "/v1/events?since=0",
        &["event: disarmed", "event: audit", "event: maintenance"],
        Duration::from_secs(10),
    );
    assert!(
        replay.contains("event: disarmed") && replay.contains("id: 1\n"),
        "{replay}"
    );
    assert!(replay.contains("\"by\":\"token:alice\""), "{replay}");

    // A crashed host is fenced; the history names the voters, the evidence and the level.
    let crashed = Instant::now();
    c.kill(3);
    let fenced = wait_for(Duration::from_secs(60), || {
        (0..3)
            .all(|i| member(&c, i, "n3").is_some_and(|m| m["ha"] == "fenced"))
            .then(|| crashed.elapsed())
    });
    assert!(fenced.is_some(), "{:?}", member(&c, 0, "n3"));
    eprintln!("crashed host fenced after {:?}", fenced.unwrap());
    let mut executors = 0;
    for i in 0..3 {
        let (code, body) = get(&c, i, "/v1/fences").unwrap();
        assert_eq!(code, 200);
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        let e = h["fences"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["target"] == "n3")
            .unwrap_or_else(|| panic!("member {i} has no fence of n3: {body}"))
            .clone();
        let ok = wait_for(Duration::from_secs(10), || {
            let (_, body) = get(&c, i, "/v1/fences")?;
            let h: serde_json::Value = serde_json::from_str(&body).ok()?;
            let e = h["fences"]
                .as_array()?
                .iter()
                .find(|e| e["target"] == "n3")?
                .clone();
            (e["state"] == "confirmed").then_some(e)
        });
        let e = ok.unwrap_or(e);
        assert_eq!(e["state"], "confirmed", "{e}");
        let votes = e["certificate"]["votes"]
            .as_array()
            .unwrap_or_else(|| panic!("{e}"));
        assert!(votes.len() >= 3, "{e}");
        assert!(
            votes
                .iter()
                .all(|v| v["voter_healthy"] == true && v["voter"].is_string())
        );
        assert_eq!(e["confirmation"]["type"], "power_off", "{e}");
        assert_eq!(e["confirmation"]["level"], "sim", "{e}");
        if e["executed_here"] == true {
            executors += 1;
        }
    }
    assert_eq!(executors, 1);

    // Metrics in the Prometheus text format.
    let (code, text) = get(&c, 0, "/metrics").unwrap();
    assert_eq!(code, 200);
    for want in [
        "peerfence_member_ha_state{member=\"n3\",state=\"fenced\"} 1",
        "peerfence_api_auth_failures_total 3",
        "peerfence_events_total{kind=\"audit\"}",
        "peerfence_gossip_bytes_total{direction=\"out\"}",
        "peerfence_votes_total{result=\"granted\"}",
        "peerfence_storage_write_duration_seconds_bucket",
        "peerfence_health_check_duration_seconds_count{check=\"agent\",result=\"ok\"}",
        "peerfence_health_check_duration_seconds_count{check=\"exec:always\",result=\"ok\"}",
        "peerfence_quorum_size 3",
        "# EOF",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }

    // The command line, against the same daemons.
    let ep = format!("http://127.0.0.1:{}", c.members[0].http);
    let (code, out, err) = cli(&["status", "--endpoint", &ep]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("armed, enforce mode, quorum 3 of 4"), "{out}");
    let n3 = out
        .lines()
        .find(|l| l.starts_with("n3 "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        n3.contains("fenced") && n3.contains("fenced and confirmed"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "no colours off a terminal: {out}");
    let (code, out, _) = cli(&["status", "--endpoint", &ep, "--json"]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["summary"]["quorum"] == 3);
    let (code, out, err) = cli(&["fences", "--endpoint", &ep]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("n3") && out.contains("confirmed by power_off (level sim)"),
        "{out}"
    );
    let tokens = c.dir.join("api-tokens").display().to_string();
    let (code, out, err) = cli(&[
        "maintenance",
        "n2",
        "on",
        "--endpoint",
        &ep,
        "--token-file",
        &tokens,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("requested by token:alice") && out.contains("n2 maintenance on"),
        "{out}"
    );
    let (code, _, err) = cli(&[
        "maintenance",
        "n2",
        "off",
        "--endpoint",
        &ep,
        "--token-file",
        &tokens,
    ]);
    assert_eq!(code, 0, "{err}");
    let wrong = c.dir.join("wrong-token");
    std::fs::write(&wrong, format!("mallory {}\n", "m".repeat(40))).unwrap();
    let (code, _, err) = cli(&[
        "disarm",
        "--endpoint",
        &ep,
        "--token-file",
        &wrong.display().to_string(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("refused the credential") && err.contains("--token-file"),
        "{err}"
    );
    assert_eq!(summary(&c, 0).unwrap()["armed"], true);
    let (code, _, err) = cli(&[
        "arm",
        "--endpoint",
        &ep,
        "--token-file",
        "/nonexistent/tokens",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/tokens") && err.contains("--token-file"),
        "{err}"
    );
    let dead = format!("http://127.0.0.1:{}", free_tcp_port());
    let (code, _, err) = cli(&["status", "--endpoint", &dead]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the peerfence daemon") && err.contains("http.listen"),
        "{err}"
    );
}

/// `curl` against an HTTPS endpoint whose certificate names `n0`: `(exit code, body)`.
fn curl(dir: &std::path::Path, port: u16, args: &[&str], path: &str) -> (i32, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(dir.join("certs/ca.crt"))
        .args(["--resolve", &format!("n0:{port}:127.0.0.1")])
        .args(args)
        .arg(format!("https://n0:{port}{path}"))
        .output()
        .expect("curl is needed by this test (Debian package curl)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn https_api_accepts_client_certificates_from_the_cluster_ca_only() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::new_with("api-tls", 3, "observe", |i, _| {
        if i == 0 {
            "tls = true\n".into()
        } else {
            String::new()
        }
    });
    for i in 0..3 {
        c.start(i);
    }
    assert!(
        wait_for(Duration::from_secs(30), || all_alive(&c, &[1, 2])
            .then_some(()))
        .is_some(),
        "{}",
        c.log(0)
    );
    let port = c.members[0].http;
    let dir = c.dir.clone();
    // Reads need no client certificate.
    let read = wait_for(Duration::from_secs(20), || {
        let (code, body) = curl(&dir, port, &[], "/v1/cluster");
        (code == 0 && body.contains("\"summary\"")).then_some(body)
    });
    assert!(
        read.is_some(),
        "{:?}\n{}",
        curl(&dir, port, &[], "/v1/cluster"),
        c.log(0)
    );
    // An action without a credential: 401, nothing changes.
    let (code, body) = curl(
        &dir,
        port,
        &["-X", "POST", "-w", "%{http_code}"],
        "/v1/disarm",
    );
    assert_eq!(code, 0, "{body}");
    assert!(
        body.ends_with("401") && body.contains("client certificate"),
        "{body}"
    );
    // With a certificate of the cluster CA: accepted, audited with the certificate's name.
    let cert = dir.join("certs/n1.crt").display().to_string();
    let key = dir.join("certs/n1.key").display().to_string();
    let (code, body) = curl(
        &dir,
        port,
        &["-X", "POST", "--cert", &cert, "--key", &key],
        "/v1/disarm",
    );
    assert_eq!(code, 0, "{body}");
    let answer: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(answer["by"], "cert:n1", "{body}");
    assert!(
        wait_for(Duration::from_secs(20), || {
            (c.status(1)?["summary"]["armed"] == false).then_some(())
        })
        .is_some()
    );
    // A certificate from another CA does not even get a connection.
    let other = dir.join("other-ca");
    let ok = std::process::Command::new(bin())
        .args(["certs", "init", "--dir"])
        .arg(&other)
        .args(["--cluster", "evil"])
        .status()
        .unwrap();
    assert!(ok.success());
    let ok = std::process::Command::new(bin())
        .args(["certs", "issue", "--dir"])
        .arg(&other)
        .args(["--id", "n1"])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let cert = other.join("n1.crt").display().to_string();
    let key = other.join("n1.key").display().to_string();
    let (code, body) = curl(
        &dir,
        port,
        &["-X", "POST", "--cert", &cert, "--key", &key],
        "/v1/arm",
    );
    assert_ne!(code, 0, "a foreign certificate was accepted: {body}");
    assert_eq!(c.status(1).unwrap()["summary"]["armed"], false);
}
