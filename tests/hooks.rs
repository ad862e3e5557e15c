//! Event hooks with real daemons on loopback: a hung host is fenced through the simulated agent
//! (as in tests/fencing.rs), and every surviving member runs its exec hook and posts its
//! webhook for `fenced` and `safe_to_recover`, with the event in the environment and as JSON.
//! The webhook receiver (a tiny HTTP server in this test) answers 500 to the first POST: the
//! same document must come again. A second exec hook hangs on its first event: it is killed at
//! its timeout, with its child, and the events after it still arrive.
//!
//! Then the hooks on their own (an event log in this process, real programs and servers): the
//! exact environment and document of an exec hook, webhooks that give up, a token file others
//! may read, and `https://` verified against the hook's CA.

#![allow(clippy::disallowed_methods)]

mod common;
use common::*;
use peerfence::daemon::events::EventLog;
use peerfence::daemon::hooks::{self, ExecHook, Hooks, HooksConfig, Webhook};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the receiver saw: the status it answered, the head and the body.
#[derive(Debug, Clone)]
struct Post {
    status: u16,
    head: String,
    body: String,
}

/// Reads one HTTP/1.1 request with a Content-Length body; `None` on a broken connection.
fn read_request(s: &mut impl Read) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).ok()? == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((head, String::from_utf8_lossy(&body).into_owned()))
}

type Seen = Arc<Mutex<Vec<Post>>>;

/// Answers one request on `s` with `statuses[number of requests seen]` (the last status from
/// then on) and records it.
fn answer(s: &mut (impl Read + Write), statuses: &[u16], seen: &Seen) {
    let Some((head, body)) = read_request(s) else {
        return;
    };
    let mut seen = seen.lock().unwrap();
    let status = statuses[seen.len().min(statuses.len() - 1)];
    let _ = write!(
        s,
        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = s.flush();
    seen.push(Post { status, head, body });
}

/// A webhook receiver on loopback answering `statuses` in turn, over TLS with `tls`.
fn receiver_with(statuses: Vec<u16>, tls: Option<Arc<rustls::ServerConfig>>) -> (u16, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            match &tls {
                None => answer(&mut c, &statuses, &s2),
                Some(cfg) => {
                    if let Ok(conn) = rustls::ServerConnection::new(cfg.clone()) {
                        answer(&mut rustls::StreamOwned::new(conn, c), &statuses, &s2);
                    }
                }
            }
        }
    });
    (port, seen)
}

/// The cluster's webhook receiver: 500 to the first POST, 200 to every later one.
fn receiver() -> (u16, Seen) {
    receiver_with(vec![500, 200], None)
}

const TOKEN: &str = "hook-token-5f3a9c";

/// The member's tail: the simulated agent level, and three hooks.
fn tail(i: usize, dir: &Path, n: usize, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"[fencing]
levels = [{{ name = "sim", kind = "agent", timeout = "10s" }}]
startup_quiet_period = "5s"

[[hooks.exec]]
name = "record"
command = ["/bin/sh", "{d}/record.sh", "{d}/exec-n{i}.log"]
events = ["fenced", "safe_to_recover"]

[[hooks.exec]]
name = "hang-first"
command = ["/bin/sh", "{d}/hang.sh", "{d}/hang-n{i}"]
events = ["suspect", "fencing", "fenced", "safe_to_recover"]
timeout = "1s"

[[hooks.webhook]]
name = "ops"
url = "http://127.0.0.1:{port}/peerfence"
events = ["fenced", "safe_to_recover"]
timeout = "2s"
retries = 3
bearer_token_file = "{d}/token"

{}"#,
        sim_agent("sim", dir, n, "")
    )
}

fn write_scripts(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // Appends the environment and stdin of each run to the file named by $1.
    std::fs::write(
        dir.join("record.sh"),
        "#!/bin/sh\n{ echo '--- event'; env | grep '^PEERFENCE_' | sort; cat; } >> \"$1\"\necho recorded \"$PEERFENCE_EVENT\"\n",
    )
    .unwrap();
    // Hangs on its first event, with a child of its own; records the later ones.
    std::fs::write(
        dir.join("hang.sh"),
        "#!/bin/sh\np=$1\nif [ ! -e \"$p.hung\" ]; then\n  echo \"$PEERFENCE_EVENT $PEERFENCE_SEQ\" > \"$p.hung\"\n  sleep 300 &\n  echo $! > \"$p.child\"\n  wait\nfi\necho \"$PEERFENCE_EVENT $PEERFENCE_SEQ $PEERFENCE_MEMBER\" >> \"$p.after\"\n",
    )
    .unwrap();
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The runs recorded by `record.sh`: (PEERFENCE_* variables, the stdin document).
fn exec_runs(path: &Path) -> Vec<(Vec<(String, String)>, Value)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split("--- event\n")
        .filter(|r| !r.is_empty())
        .filter_map(|r| {
            let mut env = Vec::new();
            let mut doc = None;
            for line in r.lines() {
                if line.starts_with('{') {
                    doc = serde_json::from_str(line).ok();
                } else if let Some((k, v)) = line.split_once('=') {
                    env.push((k.to_owned(), v.to_owned()));
                }
            }
            Some((env, doc?))
        })
        .collect()
}

fn var<'a>(env: &'a [(String, String)], k: &str) -> &'a str {
    env.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// Whether `pid` is a live, non-zombie process.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Whether (kind, boot) pairs hold `fenced` and then `safe_to_recover`, for the same boot.
fn has_both(kinds_boots: &[(String, String)]) -> bool {
    let fenced = kinds_boots.iter().position(|(k, _)| k == "fenced");
    let safe = kinds_boots.iter().position(|(k, _)| k == "safe_to_recover");
    match (fenced, safe) {
        (Some(f), Some(s)) => f < s && kinds_boots[f].1 == kinds_boots[s].1,
        _ => false,
    }
}

#[test]
fn hooks_fire_on_every_survivor_when_a_hung_host_is_fenced() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let n = 3;
    let (port, posts) = receiver();
    let mut c = Cluster::new_with("hooks", n, "enforce", |i, dir| tail(i, dir, n, port));
    prepare_hosts(&c);
    write_scripts(&c.dir);
    let pids: Vec<u32> = (0..n).map(|i| start_host(&mut c, i)).collect();
    assert_cluster_forms(&c);
    // Host n2 hangs: the other two fence it through the simulated agent.
    let hung_at = std::time::Instant::now();
    signal(pids[2], "-STOP");
    let survivors = [0usize, 1];
    let dir = c.dir.clone();
    let exec_done = |i: usize| {
        let runs = exec_runs(&dir.join(format!("exec-n{i}.log")));
        let kb: Vec<(String, String)> = runs
            .iter()
            .filter(|(env, _)| var(env, "PEERFENCE_MEMBER") == "n2")
            .map(|(env, _)| {
                (
                    var(env, "PEERFENCE_EVENT").to_owned(),
                    var(env, "PEERFENCE_BOOT").to_owned(),
                )
            })
            .collect();
        has_both(&kb)
    };
    let posted_done = |i: usize| {
        let posts = posts.lock().unwrap();
        let kb: Vec<(String, String)> = posts
            .iter()
            .filter(|p| p.status == 200)
            .filter_map(|p| serde_json::from_str::<Value>(&p.body).ok())
            .filter(|d| d["node"] == format!("n{i}").as_str() && d["member"] == "n2")
            .map(|d| {
                (
                    d["kind"].as_str().unwrap_or("").to_owned(),
                    d["details"]["boot"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        has_both(&kb)
    };
    let done = wait_for(Duration::from_secs(90), || {
        survivors
            .iter()
            .all(|&i| exec_done(i) && posted_done(i))
            .then_some(())
    });
    let logs: String = survivors.iter().map(|&i| c.log(i)).collect();
    eprintln!(
        "every survivor's hooks had fenced and safe_to_recover {:?} after the hang",
        hung_at.elapsed()
    );
    assert!(
        done.is_some(),
        "hooks did not see n2 fenced and safe to recover:\nposts: {:?}\n{logs}",
        posts.lock().unwrap()
    );

    // Exec hook: the environment and the JSON on stdin agree and say the right things.
    for &i in &survivors {
        let runs = exec_runs(&c.dir.join(format!("exec-n{i}.log")));
        for (env, doc) in runs
            .iter()
            .filter(|(e, _)| var(e, "PEERFENCE_MEMBER") == "n2")
        {
            let kind = var(env, "PEERFENCE_EVENT");
            assert!(kind == "fenced" || kind == "safe_to_recover", "{env:?}");
            assert_eq!(var(env, "PEERFENCE_NODE"), format!("n{i}"));
            assert_eq!(var(env, "PEERFENCE_CLUSTER"), "test");
            assert!(!var(env, "PEERFENCE_TIME").is_empty());
            assert!(!var(env, "PEERFENCE_MESSAGE").is_empty());
            assert_eq!(doc["kind"], kind);
            assert_eq!(doc["member"], "n2");
            assert_eq!(doc["node"], format!("n{i}").as_str());
            assert_eq!(doc["cluster"], "test");
            assert_eq!(doc["seq"].to_string(), var(env, "PEERFENCE_SEQ"));
            assert_eq!(doc["details"]["boot"], var(env, "PEERFENCE_BOOT"));
            assert_eq!(doc["message"], var(env, "PEERFENCE_MESSAGE"));
        }
    }

    // Webhook: JSON with the bearer token; the first POST got a 500 and the same document
    // came again (retried), answered 200.
    let posts = posts.lock().unwrap().clone();
    let first = &posts[0];
    assert_eq!(first.status, 500);
    assert!(
        posts[1..]
            .iter()
            .any(|p| p.body == first.body && p.status == 200),
        "the document refused with 500 was not retried: {posts:?}"
    );
    for p in &posts {
        let head = p.head.to_ascii_lowercase();
        assert!(
            head.starts_with("post /peerfence http/1.1\r\n"),
            "{}",
            p.head
        );
        assert!(
            head.contains("content-type: application/json\r\n"),
            "{}",
            p.head
        );
        assert!(
            p.head.contains(&format!("Bearer {TOKEN}\r\n")),
            "{}",
            p.head
        );
    }
    assert!(logs.contains("webhook failed, will retry"), "{logs}");
    // The token is never logged.
    for i in 0..n {
        assert!(!c.log(i).contains(TOKEN), "token in n{i}'s log");
    }

    // The hook that hung was killed at its timeout (with its child) and got the later events.
    for &i in &survivors {
        let p = c.dir.join(format!("hang-n{i}"));
        let hung = std::fs::read_to_string(p.with_extension("hung")).unwrap();
        let hung_seq: u64 = hung.split_whitespace().nth(1).unwrap().parse().unwrap();
        let child: i32 = std::fs::read_to_string(p.with_extension("child"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || (!alive(child)).then_some(())).is_some(),
            "the hung hook's child {child} lives on"
        );
        let after = wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(p.with_extension("after"))
                .ok()
                .filter(|t| t.contains("safe_to_recover"))
        })
        .unwrap_or_default();
        let later = after.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some("safe_to_recover")
                && w.next().and_then(|s| s.parse::<u64>().ok()) > Some(hung_seq)
                && w.next() == Some("n2")
        });
        assert!(later, "n{i}: hung on {hung:?}, then only {after:?}");
        assert!(
            c.log(i)
                .contains("killed (with its process group) at its timeout of 1s"),
            "{}",
            c.log(i)
        );
        // The counters are in the status view and the metrics.
        let st = c.status(i).unwrap();
        assert!(
            st["hooks"]["record"]["delivered"].as_u64() >= Some(2),
            "{}",
            st["hooks"]
        );
        let (code, metrics) =
            http_request(c.members[i].http, "GET", "/metrics", None, None).unwrap();
        assert_eq!(code, 200);
        assert!(
            metrics.contains("peerfence_hook_events_total{hook=\"record\",result=\"delivered\"}"),
            "{metrics}"
        );
    }
}

// ---- The hooks on their own: an event log in this process, real programs and servers. ----

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pf-hooks-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts `cfg`'s hooks on an event log of member n1 in cluster `cluster`, on a runtime of
/// their own (kept alive by the caller); the test thread only publishes and polls.
fn start(cfg: &HooksConfig, cluster: &str) -> (tokio::runtime::Runtime, Arc<EventLog>, Hooks) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let log = EventLog::new("n1");
    let hooks = {
        let _in = rt.enter();
        hooks::spawn(cfg, &log, cluster)
    };
    (rt, log, hooks)
}

/// Webhooks only, and one `safe_to_recover` about n2 published.
fn post_one(webhook: Vec<Webhook>) -> (tokio::runtime::Runtime, Hooks) {
    let cfg = HooksConfig {
        exec: vec![],
        webhook,
    };
    let (rt, log, hooks) = start(&cfg, "c");
    log.publish(
        "safe_to_recover",
        Some("n2".into()),
        String::new(),
        json!({}),
    );
    (rt, hooks)
}

fn stat(h: &Hooks, name: &str, field: &str) -> u64 {
    h.stats()[name][field].as_u64().unwrap_or(0)
}

fn only_exec(h: ExecHook) -> HooksConfig {
    HooksConfig {
        exec: vec![h],
        webhook: vec![],
    }
}

#[test]
fn an_exec_hook_gets_env_and_json_and_a_hung_run_is_killed_with_its_group() {
    let d = scratch("exec");
    // Hangs on its first event (with a child, which must die too), then records every later
    // one: environment and stdin.
    std::fs::write(
        d.join("hook.sh"),
        format!(
            "d={}\nif [ ! -e $d/hung ]; then\n  echo \"$PEERFENCE_EVENT $PEERFENCE_SEQ\" > $d/hung\n  sleep 60 &\n  echo $! > $d/child.pid\n  wait\nfi\n{{ echo \"--- $PEERFENCE_EVENT\"; env | sort; cat; }} >> $d/events.log\n",
            d.display()
        ),
    )
    .unwrap();
    let cfg = only_exec(ExecHook {
        name: "rec".into(),
        command: vec!["/bin/sh".into(), d.join("hook.sh").display().to_string()],
        events: vec!["fenced", "safe_to_recover"],
        timeout: Duration::from_millis(800),
        env: BTreeMap::from([("OS_CLOUD".to_owned(), "admin".to_owned())]),
        queue: 64,
    });
    let (_rt, log, hooks) = start(&cfg, "prod-kvm");
    let boot = json!({"boot": "b-1"});
    log.publish(
        "fenced",
        Some("n2".into()),
        "n2 is fenced".into(),
        boot.clone(),
    );
    log.publish(
        "swim_changed",
        Some("n2".into()),
        "not for hooks".into(),
        json!({}),
    );
    let msg = "n2's VMs may be restarted elsewhere";
    log.publish("safe_to_recover", Some("n2".into()), msg.into(), boot);
    let done = wait_for(Duration::from_secs(20), || {
        (stat(&hooks, "rec", "delivered") == 1 && stat(&hooks, "rec", "failed") == 1).then_some(())
    });
    assert!(done.is_some(), "{}", hooks.stats());
    let hung = std::fs::read_to_string(d.join("hung")).unwrap();
    assert_eq!(hung.trim(), "fenced 1");
    let text = std::fs::read_to_string(d.join("events.log")).unwrap();
    assert!(text.starts_with("--- safe_to_recover\n"), "{text}");
    for want in [
        "PEERFENCE_EVENT=safe_to_recover\n",
        "PEERFENCE_SEQ=3\n",
        "PEERFENCE_NODE=n1\n",
        "PEERFENCE_MEMBER=n2\n",
        "PEERFENCE_MESSAGE=n2's VMs may be restarted elsewhere\n",
        "PEERFENCE_CLUSTER=prod-kvm\n",
        "PEERFENCE_BOOT=b-1\n",
        "PEERFENCE_TIME=",
        "OS_CLOUD=admin\n",
    ] {
        assert!(text.contains(want), "{want:?} missing in {text}");
    }
    // The daemon's own environment is not passed on (it may hold agent secrets).
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    assert!(!text.contains("CARGO_"), "{text}");
    let line = text.lines().find(|l| l.starts_with('{')).unwrap();
    let doc: Value = serde_json::from_str(line).unwrap();
    assert_eq!(doc["kind"], "safe_to_recover");
    assert_eq!(doc["seq"], 3);
    assert_eq!(doc["member"], "n2");
    assert_eq!(doc["node"], "n1");
    assert_eq!(doc["cluster"], "prod-kvm");
    assert_eq!(doc["message"], msg);
    assert_eq!(doc["details"]["boot"], "b-1");
    assert!(doc["unix_ms"].as_u64().is_some() && doc["time"].is_string());
    // The hung run was killed at its timeout, and its child with it.
    let child: i32 = std::fs::read_to_string(d.join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(wait_for(Duration::from_secs(5), || (!alive(child)).then_some(())).is_some());
    let err = hooks.stats()["rec"]["last_error"].to_string();
    assert!(
        err.contains("fenced #1") && err.contains("timeout of 800ms"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).ok();
}

fn webhook(name: &str, url: String, retries: u32) -> Webhook {
    Webhook {
        name: name.into(),
        url,
        events: vec!["safe_to_recover"],
        timeout: Duration::from_secs(5),
        retries,
        bearer_token_file: None,
        ca_file: None,
        queue: 64,
    }
}

#[test]
fn webhooks_give_up_after_their_retries_and_never_send_a_token_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let d = scratch("webhook");
    let loose = d.join("loose-token");
    std::fs::write(&loose, "s3cr3t-t0ken\n").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (bad_port, bad_seen) = receiver_with(vec![503], None);
    let (ok_port, ok_seen) = receiver_with(vec![200], None);
    let bad = webhook("bad", format!("http://127.0.0.1:{bad_port}/hook"), 1);
    let mut leaky = webhook("leaky", format!("http://127.0.0.1:{ok_port}/hook"), 3);
    leaky.bearer_token_file = Some(loose);
    let (_rt, hooks) = post_one(vec![bad, leaky]);
    let done = wait_for(Duration::from_secs(20), || {
        (stat(&hooks, "bad", "failed") == 1 && stat(&hooks, "leaky", "failed") == 1).then_some(())
    });
    let stats = hooks.stats();
    assert!(done.is_some(), "{stats}");
    // One try and one retry, then given up.
    assert_eq!(bad_seen.lock().unwrap().len(), 2);
    let bad_err = stats["bad"]["last_error"].as_str().unwrap_or_default();
    assert!(
        bad_err.contains("HTTP 503") && bad_err.contains("after 2 tries"),
        "{bad_err}"
    );
    // A token others may read is not sent at all, and not shown.
    assert!(ok_seen.lock().unwrap().is_empty());
    let leaky_err = stats["leaky"]["last_error"].as_str().unwrap_or_default();
    assert!(leaky_err.contains("chmod 600"), "{leaky_err}");
    assert!(!stats.to_string().contains("s3cr3t"), "{stats}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn https_webhooks_verify_the_server_against_their_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let d = scratch("https");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(d.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap(),
    );
    let (port, seen) = receiver_with(vec![200], Some(server));
    let url = format!("https://127.0.0.1:{port}/hook");
    let mut good = webhook("good", url.clone(), 0);
    good.ca_file = Some(d.join("ca.pem"));
    // The system's CA bundle does not know this CA.
    let strange = webhook("strange", url, 0);
    let (_rt, hooks) = post_one(vec![good, strange]);
    let done = wait_for(Duration::from_secs(20), || {
        (stat(&hooks, "good", "delivered") == 1 && stat(&hooks, "strange", "failed") == 1)
            .then_some(())
    });
    assert!(done.is_some(), "{}", hooks.stats());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&seen[0].body).unwrap()["kind"],
        "safe_to_recover"
    );
    // (Or, on a machine without a system CA bundle, refused for that.)
    let why = hooks.stats()["strange"]["last_error"].to_string();
    assert!(
        why.contains("UnknownIssuer") || why.contains("no system CA bundle"),
        "{why}"
    );
    std::fs::remove_dir_all(&d).ok();
}
