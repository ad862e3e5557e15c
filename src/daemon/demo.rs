//! `peerfence demo`: five real daemons on loopback, and a story told from their own status.
//!
//! The demo is what a newcomer runs first, so it runs the product itself, not a model of it: it
//! makes a cluster CA, certificates and vote keys ([`super::certs`]), writes one configuration
//! per host (mode enforce, the simulated fence agent of [`super::simagent`] standing in for each
//! host's BMC, self-fence actions only recorded, timings shortened to seconds), starts five
//! `peerfence run` processes and then plays four acts:
//!
//! 1. the five hosts join;
//! 2. one host crashes (SIGKILL): the others agree, fence it through its agent, confirm it Off;
//!    it is then powered on through the same agent and rejoins with a new boot id;
//! 3. the shared storage disappears for every host at once (the directory is moved away): every
//!    host reports a storm, asks its peers to let it fence itself, is refused, and nobody is
//!    fenced;
//! 4. the storage comes back and the cluster heals.
//!
//! Every step waits by polling `GET /v1/cluster` of the hosts still running, with generous
//! deadlines; what it prints is what the daemons report (and, for the events the status view
//! does not keep, what they logged). An act whose outcome does not show within its deadline
//! ends the demo with a non-zero exit naming that act, and the directory with the logs is kept.
//!
//! Cleanup: every daemon runs in a process group of its own (so a Ctrl-C at the terminal
//! reaches only the demo, which then stops them in order) and dies with the demo if the demo is
//! killed outright. The one daemon that the simulated agent starts again is not our child; it
//! is found through its pid file. [`Cluster`]'s `Drop` stops them all, on success, error, Ctrl-C
//! and panic alike.
#![allow(clippy::disallowed_methods)]

use super::certs;
use super::config::{DaemonConfig, RawDaemonConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Hosts in the demo cluster.
const HOSTS: usize = 5;
/// The host that crashes in act 2 (index into the roster: "n3").
const VICTIM: usize = 2;
/// How often the status endpoints are polled.
const POLL: Duration = Duration::from_millis(200);
/// Deadlines: several times what each step takes on a loaded two-core machine, so that a slow
/// machine still finishes and a broken product still fails in bounded time.
const JOIN_LIMIT: Duration = Duration::from_secs(60);
const FENCE_LIMIT: Duration = Duration::from_secs(90);
const REJOIN_LIMIT: Duration = Duration::from_secs(60);
const OUTAGE_LIMIT: Duration = Duration::from_secs(60);
const HEAL_LIMIT: Duration = Duration::from_secs(90);
/// Time a stopped daemon gets to leave cleanly before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The timings the demo shortens, as written into every configuration. Everything else keeps
/// its default (docs/ARCHITECTURE.md lists them).
const STARTUP_QUIET: &str = "5s";
const STORM_COOLDOWN: &str = "10s";
const SELF_FENCE_GRACE: &str = "5s";

/// `peerfence demo` flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// After the story, keep the cluster running (dashboard and API stay up) until Ctrl-C.
    #[arg(long)]
    pub interactive: bool,
    /// Work in DIR (new or empty) instead of a fresh temporary directory; like that one, it is
    /// removed at the end unless --keep (or the story failed).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the directory (configurations, certificates, logs) at the end.
    #[arg(long)]
    pub keep: bool,
    /// HTTP port of the first host (its dashboard and API); a free port when not given.
    #[arg(long, value_name = "N")]
    pub http_port: Option<u16>,
}

/// Why the demo stopped before the end.
#[derive(Debug)]
enum Failure {
    /// Nothing was started: the machine or the arguments are not fit.
    Setup(String),
    /// An act's outcome did not show.
    Act { act: &'static str, what: String },
    /// Ctrl-C (SIGINT) or SIGTERM.
    Interrupted,
}

fn setup(what: impl Into<String>) -> Failure {
    Failure::Setup(what.into())
}

/// Runs the demo; returns the exit code.
pub fn run(args: &Args) -> i32 {
    let stop = match watch_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot watch for Ctrl-C: {e}");
            return 2;
        }
    };
    let mut cluster = match Cluster::create(args) {
        Ok(c) => c,
        Err(Failure::Setup(why)) => {
            eprintln!("error: {why}");
            return 2;
        }
        Err(other) => {
            eprintln!("error: {other:?}");
            return 2;
        }
    };
    let mut story = Story {
        cluster: &mut cluster,
        t0: Instant::now(),
        stop: stop.clone(),
        pause: if args.interactive {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(2)
        },
    };
    let outcome = story.play();
    let code = match outcome {
        Ok(summary) => {
            println!();
            println!("The story held: every act happened as told.");
            for line in summary {
                println!("  ok  {line}");
            }
            if args.interactive {
                story.linger();
            }
            cluster.succeeded = true;
            0
        }
        Err(Failure::Interrupted) => {
            println!();
            println!("Interrupted: stopping the daemons.");
            cluster.succeeded = true;
            130
        }
        Err(Failure::Act { act, what }) => {
            println!();
            eprintln!("FAILED — {act} did not happen: {what}");
            eprintln!(
                "The daemons' logs are in {} (n1.log … n{HOSTS}.log); their configurations next to them.",
                cluster.logs_dir().display()
            );
            1
        }
        Err(Failure::Setup(why)) => {
            eprintln!("error: {why}");
            2
        }
    };
    drop(cluster);
    code
}

/// Ctrl-C and SIGTERM set the returned flag; every wait of the demo looks at it. A thread with a
/// small tokio runtime listens, as the daemon does, so no signal handler of our own is needed.
fn watch_signals() -> std::io::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let flag = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered here, before the story starts, so that an early Ctrl-C is not lost.
    let (mut int, mut term) = {
        let _in_runtime = runtime.enter();
        (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        )
    };
    let set = flag.clone();
    std::thread::Builder::new()
        .name("pf-demo-signals".into())
        .spawn(move || {
            runtime.block_on(async {
                loop {
                    tokio::select! {
                        _ = int.recv() => {},
                        _ = term.recv() => {},
                    }
                    set.store(true, Ordering::SeqCst);
                }
            })
        })?;
    Ok(flag)
}

/// One simulated host: a daemon process and its files.
struct Host {
    name: String,
    quic: u16,
    http: u16,
    config: PathBuf,
    log: PathBuf,
    /// The "host" the simulated agent powers: the file naming the daemon's pid.
    pid_file: PathBuf,
    /// Where the `record` executor writes the self-fence actions this host would have taken.
    record: PathBuf,
    /// The daemon, when we started it (the agent's power-on starts it outside our children).
    child: Option<Child>,
    /// Whether it should be running now (a daemon that exits unexpectedly fails the act).
    expected_up: bool,
    /// Powered on through the agent, but its start command may not have recorded its pid yet.
    starting: bool,
}

/// The demo's directory and daemons. Dropping it stops every daemon and removes the directory
/// unless it must be kept.
struct Cluster {
    dir: PathBuf,
    exe: PathBuf,
    hosts: Vec<Host>,
    vote_keys: Vec<String>,
    /// The validated configuration of the first host (timings and thresholds for the story).
    config: Option<DaemonConfig>,
    fixed_http: Option<u16>,
    keep: bool,
    /// Set when the story ended as planned (or was interrupted): the directory may go.
    succeeded: bool,
    /// Whether any daemon was started (before that, the directory holds nothing to look at).
    started_any: bool,
    http: ureq::Agent,
}

impl Cluster {
    fn create(args: &Args) -> Result<Self, Failure> {
        let exe = std::env::current_exe()
            .map_err(|e| setup(format!("cannot find this program's own path: {e}")))?;
        let dir = match &args.dir {
            Some(d) => {
                if d.exists()
                    && std::fs::read_dir(d)
                        .map_err(|e| setup(format!("--dir {}: {e}", d.display())))?
                        .next()
                        .is_some()
                {
                    return Err(setup(format!(
                        "--dir {} is not empty; the demo writes certificates, state and logs there \
                         and removes them at the end: name a new or empty directory",
                        d.display()
                    )));
                }
                std::fs::create_dir_all(d)
                    .map_err(|e| setup(format!("cannot create --dir {}: {e}", d.display())))?;
                std::path::absolute(d).map_err(|e| setup(format!("--dir {}: {e}", d.display())))?
            }
            None => {
                let mut suffix = [0u8; 4];
                getrandom::fill(&mut suffix)
                    .map_err(|e| setup(format!("no randomness for a directory name: {e}")))?;
                let name = format!(
                    "peerfence-demo-{}-{}",
                    std::process::id(),
                    suffix
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                );
                let d = std::env::temp_dir().join(name);
                std::fs::create_dir(&d).map_err(|e| {
                    setup(format!(
                        "cannot create {}: {e}; set TMPDIR to a writable directory or pass --dir",
                        d.display()
                    ))
                })?;
                d
            }
        };
        let http = ureq::Agent::config_builder()
            // Loopback only: never through a proxy from the environment.
            .proxy(None)
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(3)))
            .build()
            .new_agent();
        let mut cluster = Self {
            dir,
            exe,
            hosts: Vec::new(),
            vote_keys: Vec::new(),
            config: None,
            fixed_http: args.http_port,
            keep: args.keep,
            succeeded: false,
            started_any: false,
            http,
        };
        // From here on, a failure drops `cluster`, which cleans up what exists so far.
        cluster.prepare()?;
        Ok(cluster)
    }

    fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs")
    }
    fn shared(&self) -> PathBuf {
        self.dir.join("shared")
    }
    /// Where the shared directory goes while it is "unreachable".
    fn shared_away(&self) -> PathBuf {
        self.dir.join("shared.unreachable")
    }
    fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Certificates, vote keys, directories, ports and configurations.
    fn prepare(&mut self) -> Result<(), Failure> {
        for sub in [
            "certs", "shared", "logs", "config", "data", "power", "actions",
        ] {
            std::fs::create_dir_all(self.dir.join(sub))
                .map_err(|e| setup(format!("cannot create {}/{sub}: {e}", self.dir.display())))?;
        }
        // What `peerfence storage init` does once on a real cluster's shared storage.
        super::storage::init_marker(&self.shared(), "demo")
            .map_err(|e| setup(format!("cluster marker: {e}")))?;
        let certs = self.certs_dir();
        certs::init_ca(&certs, "demo").map_err(|e| setup(format!("cluster CA: {e}")))?;
        for i in 0..HOSTS {
            let name = format!("n{}", i + 1);
            let issued = certs::issue(&certs, &name)
                .map_err(|e| setup(format!("certificate for {name}: {e}")))?;
            self.vote_keys.push(issued.vote_public);
            self.hosts.push(Host {
                config: self.dir.join("config").join(format!("{name}.toml")),
                log: self.logs_dir().join(format!("{name}.log")),
                pid_file: self.dir.join("power").join(format!("{name}.pid")),
                record: self.dir.join("actions").join(format!("{name}.txt")),
                name,
                quic: 0,
                http: 0,
                child: None,
                expected_up: false,
                starting: false,
            });
        }
        self.assign_ports()?;
        // What `peerfence init` does once on each host before its first start.
        for i in 0..HOSTS {
            let cfg = RawDaemonConfig::from_toml(&self.config_text(i))
                .and_then(|raw| raw.validate())
                .map_err(|e| setup(format!("{}: {e}", self.hosts[i].name)))?;
            super::store::init(&cfg, false)
                .map_err(|e| setup(format!("peerfence init of {}: {e}", self.hosts[i].name)))?;
        }
        Ok(())
    }

    /// Picks ports by binding every one of them at once (so they are distinct and free right
    /// now), writes the configurations, and validates them as `check-config` would.
    fn assign_ports(&mut self) -> Result<(), Failure> {
        let mut held_udp = Vec::new();
        let mut held_tcp = Vec::new();
        for i in 0..HOSTS {
            let udp = UdpSocket::bind("127.0.0.1:0")
                .map_err(|e| setup(format!("cannot bind a UDP port on 127.0.0.1: {e}")))?;
            let want = if i == 0 {
                self.fixed_http.unwrap_or(0)
            } else {
                0
            };
            let tcp = TcpListener::bind(("127.0.0.1", want)).map_err(|e| {
                setup(if want != 0 {
                    format!(
                        "127.0.0.1:{want} cannot be used ({e}); choose another --http-port or leave it out"
                    )
                } else {
                    format!("cannot bind a TCP port on 127.0.0.1: {e}")
                })
            })?;
            let port = |a: std::io::Result<std::net::SocketAddr>| {
                a.map(|a| a.port())
                    .map_err(|e| setup(format!("local address: {e}")))
            };
            self.hosts[i].quic = port(udp.local_addr())?;
            self.hosts[i].http = port(tcp.local_addr())?;
            held_udp.push(udp);
            held_tcp.push(tcp);
        }
        // Released just before the daemons start; a port taken in between shows as a failed
        // start, and the cluster is started again on new ports (see `start_all`).
        drop((held_udp, held_tcp));
        for i in 0..HOSTS {
            let text = self.config_text(i);
            let cfg = RawDaemonConfig::from_toml(&text)
                .and_then(|raw| raw.validate())
                .map_err(|e| {
                    setup(format!(
                        "the demo wrote a configuration the daemon refuses (a bug in the demo):\n{e}"
                    ))
                })?;
            if i == 0 {
                self.config = Some(cfg);
            }
            std::fs::write(&self.hosts[i].config, text).map_err(|e| {
                setup(format!(
                    "cannot write {}: {e}",
                    self.hosts[i].config.display()
                ))
            })?;
        }
        Ok(())
    }

    /// The shell command the simulated agent's `on` runs for host `i`: it records the new pid
    /// where the agent looks for "the host", then becomes that host's daemon.
    fn start_command(&self, i: usize) -> String {
        let h = &self.hosts[i];
        format!(
            "echo $$ > {} && exec {} run --config {} >> {} 2>&1",
            shell_quote(&h.pid_file),
            shell_quote(&self.exe),
            shell_quote(&h.config),
            shell_quote(&h.log)
        )
    }

    fn config_text(&self, i: usize) -> String {
        let d = &self.dir;
        let h = &self.hosts[i];
        let p = |path: &Path| toml_str(&path.display().to_string());
        let members: Vec<String> = self
            .hosts
            .iter()
            .zip(&self.vote_keys)
            .map(|(m, key)| {
                format!(
                    "  {{ name = \"{}\", vote_key = \"{key}\", address = \"127.0.0.1:{}\" }},",
                    m.name, m.quic
                )
            })
            .collect();
        let mut agent_hosts = String::new();
        for (j, m) in self.hosts.iter().enumerate() {
            agent_hosts.push_str(&format!(
                "\n[agents.bmc.hosts.{}]\npid_file = {}\nstart = {}\n",
                m.name,
                p(&m.pid_file),
                toml_str(&self.start_command(j)),
            ));
        }
        format!(
            r#"# Written by `peerfence demo`: host {name} of a five-host cluster on this machine.
# Timings are shortened so that the story takes a minute; deploy/peerfence.example.toml
# documents every setting and its default.

[node]
name = "{name}"
data_dir = {data}
boot_id = "per-start"   # the hosts share one machine: every daemon start is a new "boot"
vote_key = {vote}

[tls]
ca = {ca}
cert = {cert}
key = {key}

[cluster]
name = "demo"
mode = "enforce"
members = [
{members}
]

[storage]
paths = [{shared}]

[fencing]
# The simulated agent stands in for each host's BMC: "off" kills the process named in the
# host's pid file, "status" says whether it lives, "on" runs the host's start command.
levels = [{{ name = "bmc", kind = "agent", timeout = "10s" }}]
after_off = "off"                       # a fenced host stays off until someone powers it on
startup_quiet_period = "{quiet}"        # default 10s
storm_cooldown = "{cooldown}"           # default 60s

[self_fence]
action = "reboot"                       # the default; the record executor only writes it down
grace = "{grace}"                       # default 10s

[watchdog]
enabled = false

[agents.bmc]
command = [{exe}, "agent", "sim"]
action_timeout = "5s"
monitor_interval = "10s"
power_status_interval = "5s"            # every host polls every BMC: the power column
{agent_hosts}
[local_actions]
executor = "record"                     # never reboot this machine: write the action down
record_file = {record}

[http]
listen = "127.0.0.1:{http}"

[testing]
# This cluster is a test rig: per-start boot ids and the record executor above are refused in
# enforce mode without it (every member must say so: it is in the configuration digest).
allow_test_settings = true
"#,
            name = h.name,
            data = p(&d.join("data").join(&h.name)),
            vote = p(&certs::CertDir(self.certs_dir()).vote_key(&h.name)),
            ca = p(&certs::CertDir(self.certs_dir()).ca_cert()),
            cert = p(&certs::CertDir(self.certs_dir()).node_cert(&h.name)),
            key = p(&certs::CertDir(self.certs_dir()).node_key(&h.name)),
            members = members.join("\n"),
            shared = p(&self.shared()),
            quiet = STARTUP_QUIET,
            cooldown = STORM_COOLDOWN,
            grace = SELF_FENCE_GRACE,
            exe = p(&self.exe),
            record = p(&h.record),
            http = h.http,
        )
    }

    /// Starts host `i`'s daemon as our child, in a process group of its own, and writes its pid
    /// where the simulated agent looks for "the host".
    fn start(&mut self, i: usize) -> Result<(), Failure> {
        let h = &self.hosts[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&h.log)
            .map_err(|e| setup(format!("cannot open {}: {e}", h.log.display())))?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(["run", "--config"])
            .arg(&h.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env_remove("RUST_LOG");
        spawn_options(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| setup(format!("cannot start {}: {e}", self.exe.display())))?;
        std::fs::write(&h.pid_file, format!("{}\n", child.id()))
            .map_err(|e| setup(format!("cannot write {}: {e}", h.pid_file.display())))?;
        self.started_any = true;
        let h = &mut self.hosts[i];
        h.child = Some(child);
        h.expected_up = true;
        Ok(())
    }

    /// Starts every daemon and waits until each answers on its status endpoint. A port taken
    /// by another program between choosing and binding makes that daemon exit at once; then
    /// everything is stopped and started again on new ports (three tries).
    fn start_all(&mut self, stop: &AtomicBool, say: &dyn Fn(&str)) -> Result<(), Failure> {
        for attempt in 1..=3 {
            // Logs grow across attempts: only what this attempt wrote tells why it failed.
            let before: Vec<usize> = self
                .hosts
                .iter()
                .map(|h| std::fs::metadata(&h.log).map_or(0, |m| m.len() as usize))
                .collect();
            for i in 0..HOSTS {
                self.start(i)?;
            }
            let end = Instant::now() + JOIN_LIMIT;
            let who = loop {
                if stop.load(Ordering::SeqCst) {
                    return Err(Failure::Interrupted);
                }
                if let Some((i, how, log)) = self.exited() {
                    let log = log.get(before[i].min(log.len())..).unwrap_or_default();
                    if log.contains("cannot listen") {
                        break self.hosts[i].name.clone();
                    }
                    return Err(setup(format!(
                        "{} exited at start ({how}); the end of its log:\n{}",
                        self.hosts[i].name,
                        tail(log, 15)
                    )));
                }
                if (0..HOSTS).all(|i| self.status(i).is_some()) {
                    return Ok(());
                }
                if Instant::now() >= end {
                    return Err(setup(format!(
                        "the daemons did not answer on their status endpoints within {}s; see {}",
                        JOIN_LIMIT.as_secs(),
                        self.logs_dir().display()
                    )));
                }
                std::thread::sleep(POLL);
            };
            self.stop_all();
            if attempt == 3 || self.fixed_http.is_some() && who == self.hosts[0].name {
                return Err(setup(format!(
                    "{who} could not bind its port (another program took it); see {}",
                    self.logs_dir().display()
                )));
            }
            say(&format!(
                "{who} found its port taken by another program; starting again on new ports"
            ));
            self.assign_ports()?;
        }
        Ok(())
    }

    /// A daemon that should run but has exited: its index, how it ended, and its log.
    fn exited(&mut self) -> Option<(usize, String, String)> {
        for i in 0..HOSTS {
            let h = &mut self.hosts[i];
            if !h.expected_up {
                continue;
            }
            let how = match h.child.as_mut() {
                Some(c) => c.try_wait().ok().flatten().map(|s| s.to_string()),
                None => running_pid(&h.pid_file, &h.config)
                    .is_none()
                    .then(|| "gone".to_owned()),
            };
            if let Some(how) = how {
                h.expected_up = false;
                let log = std::fs::read_to_string(&h.log).unwrap_or_default();
                return Some((i, how, log));
            }
        }
        None
    }

    /// Host `i`'s `GET /v1/cluster`, if it answers.
    fn status(&self, i: usize) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/v1/cluster", self.hosts[i].http);
        let mut response = self.http.get(&url).call().ok()?;
        if !response.status().is_success() {
            return None;
        }
        let text = response.body_mut().read_to_string().ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Kills host `i`'s daemon with SIGKILL (a crash: no goodbye to its peers) and reaps it.
    fn crash(&mut self, i: usize) -> Result<(), Failure> {
        let h = &mut self.hosts[i];
        h.expected_up = false;
        match h.child.take() {
            Some(mut c) => {
                c.kill()
                    .map_err(|e| setup(format!("cannot kill {}: {e}", h.name)))?;
                let _ = c.wait();
                Ok(())
            }
            None => Err(setup(format!("{} is not our child", h.name))),
        }
    }

    /// Powers host `i` on through the simulated agent, exactly as a fencer's `on` would: the
    /// agent runs the host's start command detached, which records the new pid.
    fn power_on(&mut self, i: usize) -> Result<(), String> {
        let h = &self.hosts[i];
        let params: BTreeMap<String, String> = [
            ("action", "on".to_owned()),
            ("pid_file", h.pid_file.display().to_string()),
            ("start", self.start_command(i)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        self.hosts[i].starting = true;
        match super::simagent::run(&params) {
            0 => Ok(()),
            rc => Err(format!("the simulated agent's `on` failed (exit {rc})")),
        }
    }

    /// Stops every daemon: SIGTERM to each one's process group (they leave the cluster cleanly),
    /// SIGKILL to whatever still runs after [`STOP_GRACE`], then reaps our children.
    fn stop_all(&mut self) {
        // A host the agent is powering on records its pid a moment later: wait for it (briefly),
        // or it would be left running.
        let end = Instant::now() + STOP_GRACE;
        for h in &mut self.hosts {
            if h.starting {
                while Instant::now() < end && running_pid(&h.pid_file, &h.config).is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                h.starting = false;
            }
        }
        let mut pids: Vec<i32> = Vec::new();
        for h in &mut self.hosts {
            h.expected_up = false;
            if let Some(c) = &h.child {
                pids.push(c.id() as i32);
            }
            if let Some(pid) = running_pid(&h.pid_file, &h.config) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        pids.dedup();
        for &pid in &pids {
            signal_group(pid, libc::SIGTERM);
        }
        let end = Instant::now() + STOP_GRACE;
        loop {
            for h in &mut self.hosts {
                if let Some(c) = h.child.as_mut()
                    && c.try_wait().ok().flatten().is_some()
                {
                    h.child = None;
                }
            }
            let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= end {
                for pid in left {
                    signal_group(pid, libc::SIGKILL);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for h in &mut self.hosts {
            if let Some(mut c) = h.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
        // Put the shared directory back if the story stopped during the outage.
        if !self.shared().exists() && self.shared_away().exists() {
            let _ = std::fs::rename(self.shared_away(), self.shared());
        }
        if self.started_any && (std::thread::panicking() || !self.succeeded) {
            eprintln!("Kept {} for a look at what happened.", self.dir.display());
        } else if self.keep {
            println!("Kept {} (--keep).", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        } else if self.started_any {
            println!("Stopped every daemon and removed {}.", self.dir.display());
        }
    }
}

/// Options for every daemon the demo starts itself: a process group of its own, so that a
/// Ctrl-C at the terminal reaches only the demo (which then stops the daemons in order), and
/// death with the demo if the demo itself is killed outright.
#[allow(unsafe_code)]
fn spawn_options(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent; it runs in the
    // child between fork and exec. The signal is sent when the thread that spawned the child
    // ends: the demo spawns daemons only from its main thread, which lives until the end.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `sig` to the process group led by `pid` (every daemon leads its own), and to `pid`.
#[allow(unsafe_code)]
fn signal_group(pid: i32, sig: i32) {
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a pid of a daemon this demo started (checked against its command
    // line by `running_pid`, or our own child); no memory is involved.
    unsafe {
        libc::kill(-pid, sig);
        libc::kill(pid, sig);
    }
}

/// Whether `pid` is a live, non-zombie process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The pid in `pid_file` if it is alive and runs this host's daemon (its command line names
/// `config`): a pid reused by an unrelated process is never signalled.
fn running_pid(pid_file: &Path, config: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let want = config.as_os_str().as_encoded_bytes();
    // A substring, not an argument: between writing the pid file and `exec`, the process is
    // still the start command's shell, whose one argument holds the path among other words.
    let ours = cmdline.windows(want.len()).any(|w| w == want);
    (ours && alive(pid)).then_some(pid)
}

/// `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `path` as one shell word.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// The last `n` lines of `text`, indented.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every host's status (`None` where a host is down or did not answer).
struct Views(Vec<Option<Value>>);

impl Views {
    fn node(&self, i: usize) -> Option<&Value> {
        self.0.get(i)?.as_ref().map(|s| &s["node"])
    }

    /// What host `i` reports about host `j`.
    fn peer(&self, i: usize, j: usize) -> Option<&Value> {
        let name = format!("n{}", j + 1);
        self.node(i)?["peers"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name.as_str())
    }

    fn peer_field(&self, i: usize, j: usize, field: &str) -> Option<&Value> {
        self.peer(i, j).map(|p| &p[field])
    }

    /// Whether every host in `viewers` reports `field` of host `j` as `want`.
    fn all_see(&self, viewers: &[usize], j: usize, field: &str, want: &str) -> bool {
        viewers
            .iter()
            .all(|&i| self.peer_field(i, j, field).is_some_and(|v| v == want))
    }

    /// Whether every host in `hosts` reports its own `field` as `want`.
    fn all_report(&self, hosts: &[usize], field: &str, want: &Value) -> bool {
        hosts
            .iter()
            .all(|&i| self.node(i).is_some_and(|n| &n[field] == want))
    }
}

fn all_hosts() -> Vec<usize> {
    (0..HOSTS).collect()
}

fn name(i: usize) -> String {
    format!("n{}", i + 1)
}

/// HA states that mean a fence was decided or is under way.
const FENCE_STATES: &[&str] = &["Fencing", "Fenced", "FenceFailed", "Failed"];

/// The demo's narrator: polls, prints, checks.
struct Story<'a> {
    cluster: &'a mut Cluster,
    t0: Instant,
    stop: Arc<AtomicBool>,
    pause: Duration,
}

impl Story<'_> {
    /// Prints a timestamped line; the lines after a '\n' are indented under the first.
    fn say(&self, text: &str) {
        let t = self.t0.elapsed().as_secs_f64();
        for (k, line) in text.lines().enumerate() {
            if k == 0 {
                println!("[{t:5.1}s] {line}");
            } else {
                println!("         {line}");
            }
        }
        let _ = std::io::stdout().flush();
    }

    fn heading(&self, line: &str) {
        println!();
        println!("{line}");
    }

    /// Statuses of the hosts that should be running.
    fn views(&self) -> Views {
        Views(
            (0..HOSTS)
                .map(|i| {
                    self.cluster.hosts[i]
                        .expected_up
                        .then(|| self.cluster.status(i))
                        .flatten()
                })
                .collect(),
        )
    }

    /// Polls every [`POLL`] until `step` returns `Ok(Some(_))`, for at most `limit`. `step` may
    /// print progress and may fail the act (`Err`). A daemon that exits unexpectedly, Ctrl-C,
    /// or the deadline end the wait; `late` says what did not happen, for the message.
    fn wait<T>(
        &mut self,
        act: &'static str,
        limit: Duration,
        late: impl Fn(&Views) -> String,
        mut step: impl FnMut(&Self, &Views) -> Result<Option<T>, String>,
    ) -> Result<T, Failure> {
        let end = Instant::now() + limit;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Err(Failure::Interrupted);
            }
            if let Some((i, how, log)) = self.cluster.exited() {
                return Err(Failure::Act {
                    act,
                    what: format!(
                        "{} exited unexpectedly ({how}); the end of its log:\n{}",
                        name(i),
                        tail(&log, 15)
                    ),
                });
            }
            let views = self.views();
            match step(self, &views) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(what) => return Err(Failure::Act { act, what }),
            }
            if Instant::now() >= end {
                return Err(Failure::Act {
                    act,
                    what: format!("after {} s, {}", limit.as_secs(), late(&views)),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// A pause between acts for the person watching; Ctrl-C still ends it at once.
    fn breathe(&self) -> Result<(), Failure> {
        let end = Instant::now() + self.pause;
        while Instant::now() < end {
            if self.stop.load(Ordering::SeqCst) {
                return Err(Failure::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Log text host `i` wrote from byte `from` on.
    fn log_since(&self, i: usize, from: u64) -> String {
        let text = std::fs::read(&self.cluster.hosts[i].log).unwrap_or_default();
        let from = (from as usize).min(text.len());
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    fn log_sizes(&self) -> Vec<u64> {
        self.cluster
            .hosts
            .iter()
            .map(|h| std::fs::metadata(&h.log).map(|m| m.len()).unwrap_or(0))
            .collect()
    }

    fn play(&mut self) -> Result<Vec<String>, Failure> {
        let c = &self.cluster;
        let first = &c.hosts[0];
        let cfg = c.config.as_ref().map(|d| d.core.clone());
        println!(
            "peerfence demo: a five-host cluster of real daemons on this machine (loopback only)."
        );
        println!();
        println!(
            "  dashboard  http://127.0.0.1:{}/       (JSON: http://127.0.0.1:{}/v1/cluster)",
            first.http, first.http
        );
        println!(
            "  logs       {}/n1.log … n{HOSTS}.log",
            c.logs_dir().display()
        );
        println!(
            "  configs    {}/n1.toml … (timings shortened for the demo)",
            c.dir.join("config").display()
        );
        if let Some(cfg) = &cfg {
            println!(
                "  timings    defaults: SWIM probe every {}, Suspect → Down after {}; heartbeat every {}, stalled after {}",
                crate::config::fmt_duration(cfg.swim.probe_period),
                crate::config::fmt_duration(cfg.swim.suspect_to_down_after),
                crate::config::fmt_duration(cfg.storage.heartbeat_interval),
                crate::config::fmt_duration(cfg.storage.activity_timeout),
            );
            println!(
                "             shortened: start-up quiet period {STARTUP_QUIET} (10s), storm cooldown {STORM_COOLDOWN} (60s), \
                 self-fence grace {SELF_FENCE_GRACE} (10s)"
            );
        }
        let mut summary = Vec::new();
        summary.push(self.act_join()?);
        self.breathe()?;
        summary.push(self.act_crash()?);
        self.breathe()?;
        summary.push(self.act_outage()?);
        self.breathe()?;
        summary.push(self.act_return()?);
        Ok(summary)
    }

    fn act_join(&mut self) -> Result<String, Failure> {
        const ACT: &str = "act 1 (five hosts join)";
        self.heading("Act 1 — five hosts join");
        self.say("certificates and vote keys made for n1 … n5 under one cluster CA; starting five daemons …");
        let t0 = self.t0;
        let started = Instant::now();
        {
            let say = |line: &str| {
                let t = t0.elapsed().as_secs_f64();
                println!("[{t:5.1}s] {line}");
            };
            match self.cluster.start_all(&self.stop, &say) {
                Ok(()) => {}
                Err(Failure::Setup(why)) => {
                    return Err(Failure::Act {
                        act: ACT,
                        what: why,
                    });
                }
                Err(other) => return Err(other),
            }
        }
        let pids: Vec<String> = self
            .cluster
            .hosts
            .iter()
            .map(|h| {
                format!(
                    "{} {}",
                    h.name,
                    h.child.as_ref().map(|c| c.id()).unwrap_or_default()
                )
            })
            .collect();
        self.say(&format!(
            "all five answer on their status endpoints (pids: {})",
            pids.join(", ")
        ));
        let all = all_hosts();
        self.wait(
            ACT,
            JOIN_LIMIT,
            |_| "not every host saw every other Alive".into(),
            |_, v| {
                Ok(all
                    .iter()
                    .all(|&i| {
                        all.iter().all(|&j| {
                            i == j || v.peer_field(i, j, "swim").is_some_and(|s| s == "Alive")
                        })
                    })
                    .then_some(()))
            },
        )?;
        self.say(&format!(
            "every host sees the other four Alive (SWIM over QUIC with mutual TLS) {:.1}s after they were started",
            started.elapsed().as_secs_f64()
        ));
        self.say(&format!(
            "start-up quiet period ({STARTUP_QUIET}): watching heartbeats before judging anyone …"
        ));
        let summary = self.wait(
            ACT,
            JOIN_LIMIT,
            |v| {
                format!(
                    "not every host became eligible with every peer Available; n1 reports {}",
                    v.node(0).map(brief).unwrap_or_else(|| "nothing".into())
                )
            },
            |_, v| {
                let ready = all.iter().all(|&i| {
                    v.node(i).is_some_and(|n| {
                        n["verdict"] == "Healthy"
                            && n["ineligible"].is_null()
                            && n["storm"] == false
                    }) && all.iter().all(|&j| {
                        i == j
                            || v.peer(i, j).is_some_and(|p| {
                                p["ha"] == "Available" && p["storage_alive"] == true
                            })
                    })
                });
                Ok(ready.then(|| {
                    let n = v.node(0).cloned().unwrap_or_default();
                    format!(
                        "quorum {} of {HOSTS}, {}, mode {}",
                        n["quorum"],
                        if n["armed"] == true {
                            "armed"
                        } else {
                            "DISARMED"
                        },
                        n["mode"].as_str().unwrap_or("?").to_lowercase()
                    )
                }))
            },
        )?;
        self.say(&format!(
            "cluster ready: {summary}; every host Healthy and eligible,\nevery peer Available with its storage heartbeat moving"
        ));
        Ok(format!("five hosts joined: {summary}"))
    }

    fn act_crash(&mut self) -> Result<String, Failure> {
        const ACT: &str = "act 2 (a host crashes and is fenced)";
        let victim = VICTIM;
        let vname = name(victim);
        let survivors: Vec<usize> = all_hosts().into_iter().filter(|&i| i != victim).collect();
        self.heading(&format!("Act 2 — {vname} crashes"));
        let logs = self.log_sizes();
        let boot_before = self
            .views()
            .peer_field(0, victim, "boot")
            .cloned()
            .unwrap_or(Value::Null);
        self.cluster.crash(victim).map_err(|f| match f {
            Failure::Setup(what) => Failure::Act { act: ACT, what },
            other => other,
        })?;
        let crashed = Instant::now();
        self.say(&format!(
            "{vname} crashed (its daemon got SIGKILL) — waiting for the others to agree to fence it …"
        ));
        // Milestones are said once a quorum of survivors sees them: that is what a fence needs.
        let quorum = self
            .cluster
            .config
            .as_ref()
            .map(|c| c.core.quorum())
            .unwrap_or(3);
        let mut seen_down = false;
        let mut seen_dead = false;
        let mut seen_fencing = false;
        let fenced_after = self.wait(
            ACT,
            FENCE_LIMIT,
            |v| {
                format!(
                    "{vname} was not Fenced in every survivor's view; they report HA states {}",
                    survivors
                        .iter()
                        .map(|&i| format!(
                            "{}: {}",
                            name(i),
                            v.peer_field(i, victim, "ha").map(|s| s.to_string()).unwrap_or("?".into())
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            |story, v| {
                let who = |f: &dyn Fn(&Value) -> bool| -> Vec<String> {
                    survivors
                        .iter()
                        .filter(|&&i| v.peer(i, victim).is_some_and(f))
                        .map(|&i| name(i))
                        .collect()
                };
                let down = who(&|p| p["swim"] == "Down");
                if !seen_down && down.len() >= quorum {
                    seen_down = true;
                    story.say(&format!(
                        "{} see {vname} Down in SWIM ({:.1}s after the crash)",
                        down.join(", "),
                        crashed.elapsed().as_secs_f64()
                    ));
                }
                let dead = who(&|p| p["swim"] == "Down" && p["storage_alive"] == false);
                if !seen_dead && dead.len() >= quorum {
                    seen_dead = true;
                    story.say(&format!(
                        "{} see its storage heartbeat stalled too: {vname} is dead by two independent signals\n\
                         in the views of a quorum ({quorum} of {HOSTS})",
                        dead.join(", ")
                    ));
                }
                if !seen_fencing
                    && survivors
                        .iter()
                        .any(|&i| v.peer_field(i, victim, "ha").is_some_and(|s| s == "Fencing"))
                {
                    seen_fencing = true;
                    story.say(&format!(
                        "a quorum signed the certificate: {vname} is Fencing (its agent runs `off`, then `status` until Off)"
                    ));
                }
                Ok(v.all_see(&survivors, victim, "ha", "Fenced")
                    .then(|| crashed.elapsed()))
            },
        )?;
        // Who ran it and what the agent answered: the executor's own view and its log.
        let views = self.views();
        let executor = survivors
            .iter()
            .copied()
            .find(|&i| self.log_since(i, logs[i]).contains("FenceStarted"));
        let power_off = survivors
            .iter()
            .filter(|&&i| {
                views
                    .peer_field(i, victim, "power")
                    .is_some_and(|p| p == "Off")
            })
            .map(|&i| name(i))
            .collect::<Vec<_>>();
        let Some(executor) = executor else {
            return Err(Failure::Act {
                act: ACT,
                what: format!(
                    "{vname} shows Fenced, but no survivor logged starting the fence (FenceStarted)"
                ),
            });
        };
        let elog = self.log_since(executor, logs[executor]);
        let evidence_ok = elog.contains("FenceConfirmed")
            && elog.contains("PowerOff")
            && elog.contains("SafeToRecover");
        if !evidence_ok || power_off.is_empty() {
            return Err(Failure::Act {
                act: ACT,
                what: format!(
                    "{} ran the fence of {vname}, but no confirmation by the agent's `status` = Off shows \
                     (its log: FenceConfirmed with PowerOff, then SafeToRecover; its status: power Off)",
                    name(executor)
                ),
            });
        }
        self.say(&format!(
            "{} fenced {vname} through its simulated BMC: `off`, then `status` answered Off (evidence PowerOff)",
            name(executor)
        ));
        self.say(&format!(
            "{vname} Fenced and confirmed in every survivor's view, {:.1}s after the crash;\n\
             {} announced {vname}'s VMs safe to recover elsewhere",
            fenced_after.as_secs_f64(),
            name(executor)
        ));
        self.breathe()?;

        self.say(&format!(
            "{vname} stays off (after_off = \"off\"); powering it on through its simulated BMC (agent sim, action=on) …"
        ));
        self.cluster
            .power_on(victim)
            .map_err(|what| Failure::Act { act: ACT, what })?;
        let powered = Instant::now();
        // The agent starts the host detached and returns; the host's start command then records
        // its pid. Only from then on is an exit of that daemon a failure.
        let (pid_file, config) = (
            self.cluster.hosts[victim].pid_file.clone(),
            self.cluster.hosts[victim].config.clone(),
        );
        let pid = self.wait(
            ACT,
            REJOIN_LIMIT,
            |_| {
                format!(
                    "{vname}'s start command never recorded a running daemon in {}",
                    pid_file.display()
                )
            },
            |_, _| Ok(running_pid(&pid_file, &config)),
        )?;
        self.cluster.hosts[victim].expected_up = true;
        self.cluster.hosts[victim].starting = false;
        self.say(&format!(
            "{vname} powered on: its daemon runs again (pid {pid})"
        ));
        let all = all_hosts();
        self.wait(
            ACT,
            REJOIN_LIMIT,
            |v| {
                format!(
                    "{vname} did not rejoin with a new boot id, Available to all and past its quiet period; n1 sees it as {}",
                    v.peer(0, victim).map(|p| format!("swim {} ha {}", p["swim"], p["ha"])).unwrap_or("?".into())
                )
            },
            |_, v| {
                let back = survivors.iter().all(|&i| {
                    v.peer(i, victim).is_some_and(|p| {
                        p["swim"] == "Alive"
                            && p["ha"] == "Available"
                            && !p["boot"].is_null()
                            && p["boot"] != boot_before
                    })
                });
                // The newcomer must be past its own quiet period, or it could not report the
                // storm of the next act.
                let settled = v.node(victim).is_some_and(|n| {
                    n["ineligible"].is_null() && n["verdict"] == "Healthy"
                }) && all.iter().all(|&j| {
                    j == victim || v.peer_field(victim, j, "ha").is_some_and(|s| s == "Available")
                });
                Ok((back && settled).then_some(()))
            },
        )?;
        self.say(&format!(
            "{vname} rejoined with a new boot id {:.1}s after power-on; all five Available again",
            powered.elapsed().as_secs_f64()
        ));
        Ok(format!(
            "{vname} crashed and was fenced and confirmed Off in {:.1}s, then powered on and rejoined",
            fenced_after.as_secs_f64()
        ))
    }

    fn act_outage(&mut self) -> Result<String, Failure> {
        const ACT: &str = "act 3 (shared storage lost everywhere: no fence)";
        let all = all_hosts();
        let threshold = self
            .cluster
            .config
            .as_ref()
            .map(|c| c.core.fencing.max_unhealthy)
            .unwrap_or(1);
        self.heading("Act 3 — the shared storage disappears for every host at once");
        let logs = self.log_sizes();
        let (shared, away) = (self.cluster.shared(), self.cluster.shared_away());
        std::fs::rename(&shared, &away).map_err(|e| Failure::Act {
            act: ACT,
            what: format!("cannot move {} away: {e}", shared.display()),
        })?;
        let lost = Instant::now();
        self.say(&format!(
            "{} moved away, as if the NFS export vanished:\n\
             every heartbeat write and read now fails — does anyone fence anyone?",
            shared.display()
        ));
        let no_fence = |v: &Views| -> Result<(), String> {
            for &i in &all {
                let Some(n) = v.node(i) else { continue };
                if n["fences_in_flight"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
                {
                    return Err(format!(
                        "{} reports a fence in flight during the storage outage: {}",
                        name(i),
                        n["fences_in_flight"]
                    ));
                }
                for &j in &all {
                    if let Some(ha) = v.peer_field(i, j, "ha").and_then(Value::as_str)
                        && FENCE_STATES.contains(&ha)
                    {
                        return Err(format!(
                            "{} reports {} {ha} during the storage outage",
                            name(i),
                            name(j)
                        ));
                    }
                }
            }
            Ok(())
        };
        let mut seen_failed = None;
        let mut seen_storm = None;
        let mut asked = [false; HOSTS];
        // Read by the deadline message too, hence shared.
        let refused = std::cell::RefCell::new(vec![false; HOSTS]);
        let story_logs = logs.clone();
        let result = self.wait(
            ACT,
            OUTAGE_LIMIT,
            |v| {
                let missing: Vec<String> = all
                    .iter()
                    .filter(|&&i| !v.node(i).is_some_and(|n| n["storm"] == true))
                    .map(|&i| name(i))
                    .collect();
                format!(
                    "the outage did not play out: storm not reported by [{}]; self-fence refused for [{}] of five",
                    missing.join(", "),
                    all.iter().filter(|&&i| refused.borrow()[i]).map(|&i| name(i)).collect::<Vec<_>>().join(", ")
                )
            },
            |story, v| {
                no_fence(v)?;
                if seen_failed.is_none()
                    && all.iter().all(|&i| {
                        v.node(i).is_some_and(|n| {
                            n["verdict"] == "Unhealthy" && n["storage"][0] == "Failed"
                        })
                    })
                {
                    seen_failed = Some(lost.elapsed());
                    story.say(&format!(
                        "every host reports its storage Failed and itself Unhealthy after {:.1}s: by rule 1 none may vote for a fence",
                        lost.elapsed().as_secs_f64()
                    ));
                }
                if seen_storm.is_none() && v.all_report(&all, "storm", &Value::Bool(true)) {
                    seen_storm = Some(lost.elapsed());
                    story.say(&format!(
                        "STORM on all five: more than {threshold} of {HOSTS} members in trouble at once (fencing.max_unhealthy)\n\
                         is a common-mode failure, not dead hosts — all fencing stops and the alarm is raised"
                    ));
                }
                for &i in &all {
                    let log = story.log_since(i, story_logs[i]);
                    if !asked[i] && log.contains("SelfFenceRequested") {
                        asked[i] = true;
                    }
                    if log.contains("SelfFenceBlocked") {
                        refused.borrow_mut()[i] = true;
                    }
                    if log.contains("SelfFenceExecuted") || log.contains("FenceStarted") {
                        return Err(format!(
                            "{} started a fence or fenced itself during the storage outage (see its log)",
                            name(i)
                        ));
                    }
                }
                Ok((seen_failed.is_some()
                    && seen_storm.is_some()
                    && refused.borrow().iter().all(|r| *r))
                .then(|| lost.elapsed()))
            },
        );
        let refused_after = result?;
        // Why the peers said no, as the requesters logged it (narration only: the checks above
        // decide).
        let mut reasons: Vec<String> = Vec::new();
        for i in all_hosts() {
            for line in self.log_since(i, logs[i]).lines() {
                if line.contains("RoundAbandoned") && line.contains("SelfFence") {
                    let reason = line
                        .split_once("refusal: Some(")
                        .and_then(|(_, r)| r.split_once(')'))
                        .map(|(r, _)| r.to_owned());
                    if let Some(r) = reason
                        && !reasons.contains(&r)
                    {
                        reasons.push(r);
                    }
                }
            }
        }
        let why = if reasons.is_empty() {
            String::new()
        } else {
            format!(" (refusals: {})", reasons.join(", "))
        };
        let asked = asked.iter().filter(|a| **a).count();
        self.say(&format!(
            "after {SELF_FENCE_GRACE} of failed storage, {} asked its peers to agree to a self-fence (action \"reboot\");\n\
             every request was refused{why}: the peers lost their storage too, so nobody reboots",
            if asked == HOSTS { "every host".to_owned() } else { format!("{asked} hosts") }
        ));
        let records: Vec<String> = self
            .cluster
            .hosts
            .iter()
            .filter(|h| std::fs::metadata(&h.record).is_ok_and(|m| m.len() > 0))
            .map(|h| h.name.clone())
            .collect();
        if !records.is_empty() {
            return Err(Failure::Act {
                act: ACT,
                what: format!(
                    "self-fence actions were recorded for {} during the outage (see {})",
                    records.join(", "),
                    self.cluster.dir.join("actions").display()
                ),
            });
        }
        let views = self.views();
        no_fence(&views).map_err(|what| Failure::Act { act: ACT, what })?;
        self.say(&format!(
            "{:.1}s without storage: no fence in flight on any host, nobody Fencing or Fenced,\n\
             no self-fence action recorded",
            lost.elapsed().as_secs_f64()
        ));
        Ok(format!(
            "storage lost everywhere: storm reported by all five after {:.1}s, every self-fence request refused by {:.1}s, nobody fenced",
            seen_storm.unwrap_or_default().as_secs_f64(),
            refused_after.as_secs_f64()
        ))
    }

    fn act_return(&mut self) -> Result<String, Failure> {
        const ACT: &str = "act 4 (storage returns, the cluster heals)";
        let all = all_hosts();
        self.heading("Act 4 — the storage comes back");
        let (shared, away) = (self.cluster.shared(), self.cluster.shared_away());
        std::fs::rename(&away, &shared).map_err(|e| Failure::Act {
            act: ACT,
            what: format!("cannot move {} back: {e}", away.display()),
        })?;
        let back = Instant::now();
        self.say(&format!(
            "{} is back — waiting for the cluster to heal …",
            shared.display()
        ));
        let mut seen_healthy = None;
        let healed = self.wait(
            ACT,
            HEAL_LIMIT,
            |v| {
                format!(
                    "the cluster did not heal; n1 reports {}",
                    v.node(0).map(brief).unwrap_or_else(|| "nothing".into())
                )
            },
            |story, v| {
                for &i in &all {
                    let Some(n) = v.node(i) else { continue };
                    if n["fences_in_flight"].as_array().is_some_and(|a| !a.is_empty()) {
                        return Err(format!("{} started a fence while storage came back", name(i)));
                    }
                }
                let healthy = all.iter().all(|&i| {
                    v.node(i).is_some_and(|n| n["verdict"] == "Healthy")
                        && all.iter().all(|&j| {
                            i == j || v.peer_field(i, j, "storage_alive").is_some_and(|s| s == true)
                        })
                });
                if healthy && seen_healthy.is_none() {
                    seen_healthy = Some(back.elapsed());
                    story.say(&format!(
                        "every host writes its heartbeat again and sees everyone else's move ({:.1}s);\n\
                         storm mode holds for its cooldown ({STORM_COOLDOWN} of calm) before fencing is allowed again …",
                        back.elapsed().as_secs_f64()
                    ));
                }
                let calm = healthy
                    && v.all_report(&all, "storm", &Value::Bool(false))
                    && all.iter().all(|&i| {
                        v.node(i).is_some_and(|n| n["ineligible"].is_null())
                            && all.iter().all(|&j| {
                                i == j || v.peer_field(i, j, "ha").is_some_and(|s| s == "Available")
                            })
                    });
                Ok(calm.then(|| back.elapsed()))
            },
        )?;
        let records: Vec<String> = self
            .cluster
            .hosts
            .iter()
            .filter(|h| std::fs::metadata(&h.record).is_ok_and(|m| m.len() > 0))
            .map(|h| h.name.clone())
            .collect();
        if !records.is_empty() {
            return Err(Failure::Act {
                act: ACT,
                what: format!(
                    "self-fence actions were recorded for {}",
                    records.join(", ")
                ),
            });
        }
        self.say(&format!(
            "storm over after {:.1}s: all five Healthy, eligible and Available — nobody was fenced, nobody rebooted",
            healed.as_secs_f64()
        ));
        Ok(format!(
            "storage back: healthy after {:.1}s, storm over after {:.1}s, all Available",
            seen_healthy.unwrap_or_default().as_secs_f64(),
            healed.as_secs_f64()
        ))
    }

    /// `--interactive`: keep the cluster up until Ctrl-C.
    fn linger(&self) {
        let h = &self.cluster.hosts[0];
        println!();
        println!(
            "The cluster keeps running: dashboard http://127.0.0.1:{}/ (JSON: /v1/cluster on ports {}).",
            h.http,
            self.cluster
                .hosts
                .iter()
                .map(|h| h.http.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "Try `kill -9` on a daemon (pids in {}), then watch. Ctrl-C stops everything.",
            self.cluster.dir.join("power").display()
        );
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A one-line summary of a node's own status, for failure messages.
fn brief(n: &Value) -> String {
    format!(
        "verdict {}, storage {}, ineligible {}, storm {}, peers {}",
        n["verdict"],
        n["storage"],
        n["ineligible"],
        n["storm"],
        n["peers"]
            .as_array()
            .map(|ps| ps
                .iter()
                .map(|p| format!(
                    "{} {}/{}",
                    p["name"].as_str().unwrap_or("?"),
                    p["swim"].as_str().unwrap_or("?"),
                    p["ha"].as_str().unwrap_or("?")
                ))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_odd_paths() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(
            shell_quote(Path::new("/tmp/it's here")),
            r"'/tmp/it'\''s here'"
        );
        let text = format!("x = {}\n", toml_str("tab\there \u{1}"));
        let parsed: BTreeMap<String, String> = toml::from_str(&text).unwrap();
        assert_eq!(parsed["x"], "tab\there \u{1}");
    }
}
