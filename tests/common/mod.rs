//! Shared support for the tests that run real daemon processes on loopback: certificates,
//! configurations, starting and killing members, and bounded polling of the status endpoint.
#![allow(dead_code)]
// Tests write files and wait on processes; the sans-IO rule of clippy.toml is about the library.
#![allow(clippy::disallowed_methods)]

pub mod bmc;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_peerfence")
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn http_get(port: u16, path: &str) -> Option<serde_json::Value> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| serde_json::from_str(body).ok())?
}

pub struct Member {
    pub name: String,
    pub quic: u16,
    pub http: u16,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub started: Option<Instant>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub members: Vec<Member>,
}

impl Cluster {
    /// Writes certificates and configurations for `n` members and initialises their data
    /// directories (`peerfence init`; none started). Every member allows test settings (per-start
    /// boot ids, the record executor, plain-file watchdogs): this is a test rig.
    pub fn new(tag: &str, n: usize, tweak: &str) -> Self {
        Self::new_with(tag, n, "observe", |_, _| tweak.to_owned())
    }

    /// Like [`Cluster::new`], in `mode`, with a configuration tail per member
    /// (`tweak(index, dir)`). The default `[self_fence]` (log-only) is left out when the tail
    /// has its own.
    pub fn new_with(
        tag: &str,
        n: usize,
        mode: &str,
        tweak: impl Fn(usize, &Path) -> String,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("pf-daemon-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("shared")).unwrap();
        let certs = dir.join("certs");
        let ok = Command::new(bin())
            .args(["certs", "init", "--dir"])
            .arg(&certs)
            .args(["--cluster", "test"])
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let mut keys = Vec::new();
        let mut members = Vec::new();
        for i in 0..n {
            let name = format!("n{i}");
            let out = Command::new(bin())
                .args(["certs", "issue", "--dir"])
                .arg(&certs)
                .args(["--id", &name])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("vote_key = \""))
                .and_then(|l| l.strip_suffix('"'))
                .unwrap()
                .to_owned();
            keys.push(key);
            // The kernel may hand out a port it just released again: each member's ports are
            // distinct from the ones already taken (two members on one address is a refused
            // configuration, and was a rare flake here).
            let taken = |p: u16, ms: &[Member]| ms.iter().any(|m| m.quic == p || m.http == p);
            let quic = std::iter::repeat_with(free_udp_port)
                .find(|&p| !taken(p, &members))
                .unwrap();
            let http = std::iter::repeat_with(free_tcp_port)
                .find(|&p| p != quic && !taken(p, &members))
                .unwrap();
            members.push(Member {
                config: dir.join(format!("{name}.toml")),
                name,
                quic,
                http,
                child: None,
                started: None,
            });
        }
        let roster: Vec<String> = members
            .iter()
            .zip(&keys)
            .map(|(m, k)| {
                format!(
                    "  {{ name = \"{}\", vote_key = \"{k}\", address = \"127.0.0.1:{}\" }},",
                    m.name, m.quic
                )
            })
            .collect();
        for (i, m) in members.iter().enumerate() {
            let tweak = tweak(i, &dir);
            let d = dir.display();
            let text = format!(
                r#"[node]
name = "{name}"
data_dir = "{d}/data/{name}"
boot_id = "per-start"
vote_key = "{d}/certs/{name}.vote.key"

[tls]
ca = "{d}/certs/ca.crt"
cert = "{d}/certs/{name}.crt"
key = "{d}/certs/{name}.key"

[cluster]
name = "test"
mode = "{mode}"
members = [
{roster}
]

[storage]
paths = ["{d}/shared"]

{self_fence}
{fencing}
[testing]
allow_test_settings = true

[http]
listen = "127.0.0.1:{http}"
{tweak}
"#,
                name = m.name,
                http = m.http,
                roster = roster.join("\n"),
                // Agent levels need their agent: unless the tail sets its own levels, one level
                // run by the simulated agent (no host processes: it only ever fails).
                fencing = if tweak.contains("[fencing]") {
                    String::new()
                } else {
                    format!(
                        "[fencing]\nlevels = [{{ name = \"sim\", kind = \"agent\", timeout = \"10s\" }}]\n\n[agents.sim]\ncommand = [\"{}\", \"agent\", \"sim\"]\nmonitor_interval = \"off\"\npower_status_interval = \"off\"\n",
                        bin()
                    )
                },
                self_fence = if tweak.contains("[self_fence]") {
                    ""
                } else {
                    "[self_fence]\naction = \"log-only\"\n"
                },
            );
            std::fs::write(&m.config, text).unwrap();
        }
        // The cluster marker on the shared path, as an operator makes it once.
        if let Some(m) = members.first() {
            let out = Command::new(bin())
                .args(["storage", "init", "--config"])
                .arg(&m.config)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "storage init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let c = Self { dir, members };
        // Every member's data directory, as an operator makes it once before the first start.
        for i in 0..n {
            c.init(i);
        }
        c
    }

    /// `peerfence init` for member `i`; panics with its output unless it succeeds. Returns its
    /// standard output.
    pub fn init(&self, i: usize) -> String {
        let out = Command::new(bin())
            .args(["init", "--config"])
            .arg(&self.members[i].config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init of {}: {}{}",
            self.members[i].name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn start(&mut self, i: usize) {
        self.start_with_nofile(i, None);
    }

    /// Starts member `i` with at most `nofile` open descriptors (soft and hard), when given.
    pub fn start_with_nofile(&mut self, i: usize, nofile: Option<u32>) {
        let m = &mut self.members[i];
        let log = std::fs::File::create(self.dir.join(format!("{}.log", m.name))).unwrap();
        let mut cmd = match nofile {
            None => Command::new(bin()),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin());
                c
            }
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(&m.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        m.child = Some(child);
        m.started = Some(Instant::now());
    }

    /// Waits (bounded) until member `i`'s process exits; its exit status, `None` if it still
    /// runs (then it is left running).
    pub fn wait_exit(&mut self, i: usize, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.members[i].child.as_mut()?;
        let status = wait_for(limit, || child.try_wait().ok().flatten())?;
        self.members[i].child = None;
        Some(status)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        http_get(self.members[i].http, "/v1/cluster")
    }

    /// The view member `i` has of member `j` (`peers[]` entry).
    pub fn view(&self, i: usize, j: usize) -> Option<serde_json::Value> {
        let s = self.status(i)?;
        s["node"]["peers"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == self.members[j].name.as_str())
            .cloned()
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.members[i].name)))
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("daemon logs kept in {}", self.dir.display());
        }
    }
}

pub fn all_alive(c: &Cluster, running: &[usize]) -> bool {
    running.iter().all(|&i| {
        running
            .iter()
            .filter(|&&j| j != i)
            .all(|&j| c.view(i, j).is_some_and(|v| v["swim"] == "Alive"))
    })
}

/// Waits (up to 40 s) until every member sees every other Alive; panics with member 0's log.
pub fn assert_cluster_forms(c: &Cluster) {
    let all: Vec<usize> = (0..c.members.len()).collect();
    assert!(
        wait_for(Duration::from_secs(40), || all_alive(c, &all).then_some(())).is_some(),
        "cluster did not form:\n{}",
        c.log(0)
    );
}

/// `[watchdog]` (enabled, short timings) and `[local_actions]` for member `i`: a fake watchdog
/// device `DIR/wd-nI` (a plain file, see [`make_fake_watchdogs`]) and the `record` executor
/// writing to `DIR/actions-nI`, so that nothing on the test machine is rebooted.
pub fn fake_watchdog_sections(i: usize, dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
[watchdog]
enabled = true
timeout = "4s"
feed_interval = "1s"
contact_timeout = "3s"
contact_interval = "1s"

[local_actions]
executor = "record"
record_file = "{d}/actions-n{i}"
watchdog_device = "{d}/wd-n{i}"
"#
    )
}

/// Creates the fake watchdog devices of [`fake_watchdog_sections`] (the daemon opens, not
/// creates, its device).
pub fn make_fake_watchdogs(c: &Cluster) {
    for i in 0..c.members.len() {
        std::fs::write(c.dir.join(format!("wd-n{i}")), "").unwrap();
    }
}

/// Sends `sig` (e.g. `-STOP`, `-CONT`) to `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

/// Creates `DIR/hosts`, where [`start_host`] writes the pid files [`sim_agent`] powers.
pub fn prepare_hosts(c: &Cluster) {
    std::fs::create_dir_all(c.dir.join("hosts")).unwrap();
}

/// Starts member `i` and writes its pid where the simulated agent looks for "the host".
pub fn start_host(c: &mut Cluster, i: usize) -> u32 {
    c.start(i);
    let pid = c.members[i].child.as_ref().unwrap().id();
    std::fs::write(
        c.dir.join(format!("hosts/{}.pid", c.members[i].name)),
        pid.to_string(),
    )
    .unwrap();
    pid
}

/// The `[agents.NAME]` section for the simulated agent, one pid file per host.
pub fn sim_agent(name: &str, dir: &Path, n: usize, extra: &str) -> String {
    let bin = bin();
    let d = dir.display();
    let mut s = format!(
        "[agents.{name}]\ncommand = [\"{bin}\", \"agent\", \"sim\"]\naction_timeout = \"3s\"\nmonitor_interval = \"1s\"\npower_status_interval = \"1s\"\n{extra}\n"
    );
    for i in 0..n {
        s.push_str(&format!(
            "[agents.{name}.hosts.n{i}]\npid_file = \"{d}/hosts/n{i}.pid\"\ndown_file = \"{d}/hosts/n{i}.down\"\n"
        ));
    }
    s
}

/// One HTTP/1.1 request with an optional bearer token and JSON body: `(status, body)`.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}
