//! The dashboard (`GET /`) in a real browser: headless Chromium loads it from a member of a
//! real 4-member cluster in which one member crashed and was fenced, and the page's own
//! JavaScript must show the fenced host, the quorum, the armed state and the events it got
//! over SSE. Then that member's daemon is killed (the page must say it is disconnected and
//! retrying) and started again (the page must come back live on its own).
//!
//! Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`), not
//! with `--dump-dom`/`--screenshot`: those act at the load event, before any event has come
//! over SSE, and `--virtual-time-budget` never runs out while an SSE stream is open. The pipe
//! lets the test poll the live DOM until it shows what it must (bounded), then take the DOM
//! and a screenshot from the same page.
//!
//! Chromium must be installed (`.ci/install-deps` does it); without it this test fails.
#![allow(clippy::disallowed_methods)]

mod common;
use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The page's JavaScript, as served.
const PAGE: &str = include_str!("../src/daemon/dashboard.html");

/// What the test reads from the live page: the stable ids and data- attributes of the
/// dashboard (docs/DASHBOARD.md).
const PROBE: &str = r#"(() => {
  const q = (s) => document.querySelector(s);
  if (!q('#conn') || !q('#banner-conn')) return null;
  const attr = (s, n) => { const e = q(s); return e ? e.getAttribute(n) : null; };
  const text = (s) => { const e = q(s); return e ? e.textContent : null; };
  const all = (s) => Array.from(document.querySelectorAll(s));
  return {
    ready: document.body.getAttribute('data-ready') === 'true',
    conn: attr('#conn', 'data-state'),
    api: attr('#conn', 'data-api'),
    stale: q('#main').classList.contains('stale'),
    conn_text: text('#conn'),
    conn_banner: q('#banner-conn').hidden ? null : text('#banner-conn'),
    cluster: text('#cluster-name'),
    node: text('#node-name'),
    quorum: {visible: attr('#quorum', 'data-visible'), needed: attr('#quorum', 'data-needed'),
             met: attr('#quorum', 'data-met'), eligible: attr('#quorum', 'data-eligible'),
             text: text('#quorum')},
    armed: attr('#armed', 'data-armed'),
    armed_text: text('#armed .value'),
    mode: attr('#mode', 'data-mode'),
    storm: attr('#storm', 'data-storm'),
    storm_banner: !q('#banner-storm').hidden,
    budget: {used: attr('#budget', 'data-used'), total: attr('#budget', 'data-total'),
             text: text('#budget')},
    in_flight: attr('#in-flight', 'data-count'),
    hosts: all('#hosts tbody tr').map((r) => ({host: r.getAttribute('data-host'),
      ha: r.getAttribute('data-ha'), swim: r.getAttribute('data-swim'),
      power: r.getAttribute('data-power'), self: r.getAttribute('data-self'),
      shown_ha: (r.querySelector('[data-field="ha"]') || {}).textContent,
      why: (r.querySelector('.why') || {}).textContent})),
    fences: all('#fences tr[data-target]').map((r) => ({target: r.getAttribute('data-target'),
      state: r.getAttribute('data-state'), text: r.textContent})),
    events: all('#events li').map((l) => ({kind: l.getAttribute('data-kind'),
      seq: l.getAttribute('data-seq'), member: l.getAttribute('data-member'),
      text: l.textContent})),
  };
})()"#;

/// Where the screenshots, the DOM and Chromium's log go.
fn output_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The `chromium` on `PATH`; the test fails (it does not skip) when there is none.
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed, and this test drives the dashboard in it: run \
                 .ci/install-deps (it installs the Debian package `chromium`), then run the \
                 test again"
            )
        })
}

/// One headless Chromium, spoken to over the DevTools protocol on a pipe (messages are JSON
/// separated by NUL bytes; commands go to its fd 3, answers come from its fd 4).
struct Browser {
    child: Child,
    to: ChildStdin,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    profile: PathBuf,
    log: PathBuf,
}

impl Browser {
    /// Starts Chromium with an empty tab of 1280×900 CSS pixels and attaches to that tab.
    fn start(out: &Path) -> Self {
        let exe = chromium();
        let profile = out.join("profile");
        let _ = std::fs::remove_dir_all(&profile);
        let log = out.join("chromium.log");
        // The shell only moves the pipes to fds 3 and 4, where Chromium wants them, and execs.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg("sh")
            .arg(&exe)
            .args([
                "--headless=new",
                // As root (CI) Chromium refuses to start with its sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1280,900",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-extensions",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            // Its own process group, so that everything it started can be ended with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let to = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 65536];
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice(&msg[..msg.len() - 1])
                        && tx.send(v).is_err()
                    {
                        return;
                    }
                }
            }
        });
        let mut b = Self {
            child,
            to,
            from,
            next_id: 1,
            session: String::new(),
            profile,
            log,
        };
        // The first tab appears shortly after start.
        let target = wait_for(Duration::from_secs(20), || {
            let targets = b.call("Target.getTargets", json!({}));
            targets["targetInfos"]
                .as_array()?
                .iter()
                .find(|t| t["type"] == "page")?["targetId"]
                .as_str()
                .map(str::to_owned)
        })
        .expect("Chromium opened no tab");
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// Sends one command (to the attached tab once there is one) and waits, 20 s at most, for
    /// its answer; panics on an error answer or no answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("Chromium refused {method}: {e}"))
    }

    /// Like [`Browser::call`], with an error answer returned (no answer still panics).
    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("Chromium stopped reading ({e}); see {:?}", self.log));
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.from.recv_timeout(left) {
                // Events (no id) and answers to nobody are not waited for.
                Ok(v) if v["id"] == id => {
                    return match v.get("error") {
                        Some(e) => Err(e.clone()),
                        None => Ok(v["result"].clone()),
                    };
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "Chromium did not answer {method} within 20 s; see {:?}",
                        self.log
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("Chromium exited during {method}; see {:?}", self.log)
                }
            }
        }
    }

    fn open(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        assert!(r.get("errorText").is_none(), "cannot open {url}: {r}");
    }

    /// Evaluates a JavaScript expression in the tab and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("the page's JavaScript failed: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls the page with [`PROBE`] until `done` holds, for at most `limit`. Returns the
    /// last view either way. While the tab is between documents the view is `null`.
    fn wait_until(&mut self, limit: Duration, done: impl Fn(&Value) -> bool) -> (bool, Value) {
        let mut last = Value::Null;
        let ok = wait_for(limit, || {
            let r = self.try_call(
                "Runtime.evaluate",
                json!({"expression": PROBE, "returnByValue": true}),
            );
            last = match r {
                Ok(r) if r.get("exceptionDetails").is_none() => r["result"]["value"].clone(),
                _ => Value::Null,
            };
            done(&last).then_some(())
        })
        .is_some();
        (ok, last)
    }

    /// Saves a PNG of the tab as it is now and returns its path.
    fn screenshot(&mut self, path: &Path) -> PathBuf {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64_decode(r["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
        path.to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Politely first, then the whole process group: Chromium never outlives the test.
        let id = self.next_id;
        let _ = self
            .to
            .write_all(format!("{{\"id\":{id},\"method\":\"Browser.close\"}}\0").as_bytes());
        let closed = wait_for(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten().map(|_| ())
        });
        if closed.is_none() {
            // Chromium leads its own process group (`process_group(0)`): its id is the
            // group's, and the group holds only Chromium and its helpers.
            let group = i32::try_from(self.child.id()).expect("pid fits in pid_t");
            // SAFETY: kill(2) with a negative pid signals that group; no memory is involved.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Standard base64 (the screenshot), padding allowed.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c:?}"),
        }
    };
    let digits: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | (val(c) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn host<'a>(view: &'a Value, name: &str) -> Option<&'a Value> {
    view["hosts"].as_array()?.iter().find(|h| h["host"] == name)
}

fn has_event(view: &Value, kind: &str, member: &str) -> bool {
    view["events"]
        .as_array()
        .is_some_and(|e| e.iter().any(|e| e["kind"] == kind && e["member"] == member))
}

/// The page shows everything a fence of n3 should have left: n3 fenced, its fence confirmed,
/// and the `fenced` event received over SSE.
fn shows_fence(v: &Value) -> bool {
    v["ready"] == true
        && v["conn"] == "live"
        && host(v, "n3").is_some_and(|h| h["ha"] == "fenced")
        && has_event(v, "fenced", "n3")
        && v["fences"].as_array().is_some_and(|f| {
            f.iter()
                .any(|f| f["target"] == "n3" && f["state"] == "confirmed")
        })
}

#[test]
fn dashboard_in_headless_chromium_shows_a_fence_live_and_a_lost_endpoint() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let out = output_dir();
    // Before the cluster: a missing browser fails at once, with what to do.
    let _ = chromium();
    let n = 4;
    let mut c = Cluster::new_with("dashboard", n, "enforce", |_, dir| {
        format!(
            "\n[fencing]\nlevels = [{{ name = \"sim\", kind = \"agent\", timeout = \"10s\" }}]\nstartup_quiet_period = \"5s\"\n\n{}",
            sim_agent("sim", dir, n, "")
        )
    });
    std::fs::create_dir_all(c.dir.join("hosts")).unwrap();
    for i in 0..n {
        start_host(&mut c, i);
    }
    assert_cluster_forms(&c);

    // n3 crashes; the others fence it (the simulated agent powers it off).
    c.kill(3);
    let fenced = wait_for(Duration::from_secs(60), || {
        let s = c.status(0)?;
        let n3 = s["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == "n3")?;
        (n3["ha"] == "fenced").then_some(())
    });
    assert!(fenced.is_some(), "n3 was not fenced:\n{}", c.log(0));
    eprintln!("cluster formed and n3 fenced after {:?}", started.elapsed());

    // The dashboard of n0, in the browser.
    let url = format!("http://127.0.0.1:{}/", c.members[0].http);
    let mut b = Browser::start(&out);
    let shown = Instant::now();
    b.open(&url);
    let (ok, v) = b.wait_until(Duration::from_secs(30), shows_fence);
    let png = b.screenshot(&out.join("dashboard.png"));
    let dom = b.eval("document.documentElement.outerHTML");
    let dom = dom.as_str().unwrap_or_default();
    std::fs::write(out.join("dashboard.html"), dom).unwrap();
    eprintln!("dashboard screenshot: {}", png.display());
    eprintln!(
        "its DOM after the page's JavaScript ran: {}",
        out.join("dashboard.html").display()
    );
    assert!(
        ok,
        "the dashboard did not show n3 fenced (with its event and confirmed fence) within 30 s; it showed:\n{v:#}"
    );
    eprintln!("the page showed the fence after {:?}", shown.elapsed());

    // Header, quorum, armed state, mode, storm, budget.
    assert_eq!(v["cluster"], "test", "{v:#}");
    assert_eq!(v["node"], "n0", "{v:#}");
    assert_eq!(v["quorum"]["visible"], "3", "{v:#}");
    assert_eq!(v["quorum"]["needed"], "3", "{v:#}");
    assert_eq!(v["quorum"]["met"], "true", "{v:#}");
    assert_eq!(v["quorum"]["eligible"], "true", "{v:#}");
    assert_eq!(v["armed"], "true", "{v:#}");
    assert_eq!(v["armed_text"], "armed", "{v:#}");
    assert_eq!(v["mode"], "enforce", "{v:#}");
    assert_eq!(v["storm"], "off", "{v:#}");
    assert_eq!(v["storm_banner"], false, "{v:#}");
    assert_ne!(v["budget"]["used"], "0", "a fence uses the budget: {v:#}");
    assert_eq!(v["in_flight"], "0", "{v:#}");
    assert!(v["conn_banner"].is_null(), "{v:#}");

    // Hosts: every member, with its state and why.
    let hosts = v["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 4, "{v:#}");
    let n3 = host(&v, "n3").unwrap();
    assert_eq!(n3["shown_ha"], "fenced", "{v:#}");
    assert_eq!(n3["swim"], "down", "{v:#}");
    assert_eq!(
        n3["power"], "off",
        "the simulated agent powered it off: {v:#}"
    );
    assert!(
        n3["why"].as_str().unwrap().contains("fenced and confirmed"),
        "{v:#}"
    );
    assert_eq!(host(&v, "n0").unwrap()["self"], "true", "{v:#}");
    for h in ["n1", "n2"] {
        assert_eq!(host(&v, h).unwrap()["ha"], "available", "{v:#}");
    }

    // The fence, with its voters, and the event log fed over SSE (replayed from seq 1).
    let fence = v["fences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["target"] == "n3")
        .unwrap();
    let text = fence["text"].as_str().unwrap();
    assert!(
        text.contains("power off (level sim)") && text.contains("down "),
        "{fence:#}"
    );
    let events = v["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["seq"] == "1"),
        "the log starts with the replay: {v:#}"
    );
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|e| e["seq"].as_str()?.parse().ok())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first, no duplicate: {seqs:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "fenced" && e["text"].as_str().unwrap().contains("n3 is fenced")),
        "{v:#}"
    );
    for placeholder in ["…", "waiting for this daemon…"] {
        assert!(
            !dom.contains(&format!(">{placeholder}<")),
            "the page still shows {placeholder:?}"
        );
    }

    // The endpoint goes away: the page says so and keeps trying.
    c.kill(0);
    let (ok, v) = b.wait_until(Duration::from_secs(20), |v| {
        v["conn"] == "disconnected" && v["api"] == "error" && v["conn_banner"].is_string()
    });
    let png_down = b.screenshot(&out.join("dashboard-disconnected.png"));
    eprintln!("screenshot while disconnected: {}", png_down.display());
    assert!(ok, "the page did not show that n0 is gone: {v:#}");
    assert!(
        v["conn_text"]
            .as_str()
            .unwrap()
            .contains("disconnected — retrying"),
        "{v:#}"
    );
    assert_eq!(v["stale"], true, "the last known state is greyed: {v:#}");
    // What it still shows is the last it knew.
    assert!(host(&v, "n3").is_some_and(|h| h["ha"] == "fenced"), "{v:#}");

    // It comes back: the page reconnects on its own and replays the new daemon's events.
    start_host(&mut c, 0);
    let (ok, v) = b.wait_until(Duration::from_secs(30), |v| {
        v["conn"] == "live"
            && v["conn_banner"].is_null()
            && v["events"].as_array().is_some_and(|e| !e.is_empty())
    });
    assert!(ok, "the page did not reconnect after n0 came back: {v:#}");
    drop(b);
    eprintln!("dashboard test took {:?}", started.elapsed());
}

/// EventSource has no catch-all listener: the page must list every event kind the daemon
/// sends, or those events never reach the log.
#[test]
fn dashboard_listens_to_every_event_kind() {
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/daemon/events.rs"))
            .unwrap();
    let body = src
        .split("pub fn kind_of(")
        .nth(1)
        .and_then(|s| s.split("\n}\n").next())
        .expect("kind_of in src/daemon/events.rs");
    let mut kinds: Vec<&str> = body.split('"').skip(1).step_by(2).collect();
    assert!(kinds.len() > 20, "{kinds:?}");
    kinds.push("audit");
    let list = PAGE
        .split("const KINDS = [")
        .nth(1)
        .and_then(|s| s.split("];").next())
        .expect("const KINDS in dashboard.html");
    let missing: Vec<&&str> = kinds
        .iter()
        .filter(|k| !list.contains(&format!("'{k}'")))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard.html's KINDS lacks {missing:?}: add them"
    );
}
