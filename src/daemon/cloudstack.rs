//! `peerfence cloudstack-heartbeat`: a drop-in replacement for CloudStack's `kvmheartbeat.sh`.
//!
//! The CloudStack KVM agent runs `kvmheartbeat.sh` for every NFS primary storage pool, in three
//! modes: *write* (`-i -p -m -h`: write this host's heartbeat file), *read* (`-r -h HOST -t N`:
//! is HOST's heartbeat file fresh? the agent of a neighbour asks this while investigating HOST)
//! and *fence* (`-c`: the write failed, so the script reboots the host through
//! `/proc/sysrq-trigger`). That last step is the failure the design brief starts from: one slow
//! NFS write reboots a healthy host, and an NFS outage reboots every host at once.
//!
//! This command keeps the flags and the output the agent parses, but takes every answer from the
//! local peerfence daemon's view (`GET /v1/cluster`), and turns `-c` into a *request*
//! (`POST /v1/local/self-fence-request`) that the daemon carries out only with a quorum's
//! agreement. It never reboots, kills or mounts anything itself. The decisions are pure functions
//! of the daemon's JSON ([`read_verdict`], [`write_check`], [`fence_answer`]); [`run`] does the IO.
//!
//! What the agent makes of the answers (CloudStack's `LibvirtStoragePool.checkingHeartBeat`): the
//! script's stdout and stderr are read as one stream, and a host counts as dead only when the
//! script exits 0 *and* its first output line contains `DEAD`. Any failure (non-zero exit) counts
//! as alive. So the verdict line is always printed first, and every error exits non-zero.
//!
//! This module is exempt from the core's sans-IO lints (`clippy.toml`): doing IO is its job.
#![cfg(feature = "cli")]
#![allow(clippy::disallowed_methods)]

use serde_json::Value;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The line `kvmheartbeat.sh -r` prints for a live host (five `=` on each side).
pub const ALIVE_LINE: &str = "=====> ALIVE <=====";
/// The line `kvmheartbeat.sh -r` prints for a dead host (five `=` before, six after: the
/// original script's exact text).
pub const DEAD_LINE: &str = "=====> DEAD <======";

/// Exit code: done (read mode: a verdict was printed, ALIVE or DEAD alike, as the original).
pub const EXIT_OK: i32 = 0;
/// Exit code: write mode found the local storage heartbeat unhealthy, or `-c` was refused.
pub const EXIT_NO: i32 = 1;
/// Exit code: bad arguments, or a HOST that matches no member (or several).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: the daemon could not be reached, or its answer could not be used.
pub const EXIT_DAEMON: i32 = 3;

/// The daemon's status endpoint when neither `--endpoint` nor `PEERFENCE_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7947";
/// Environment variable naming the endpoint.
pub const ENDPOINT_ENV: &str = "PEERFENCE_ENDPOINT";

/// Connect, send and receive bounds for each request: the command never hangs (the agent kills
/// the script after `heartbeat.update.timeout`, 60 s by default, and would log only that).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one whole request.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(12);

const AFTER_HELP: &str = "\
Modes (as kvmheartbeat.sh):
  -r -h HOST   print '=====> ALIVE <=====' or '=====> DEAD <======' for HOST, from this host's
               peerfence view. DEAD only when peerfence fenced HOST and confirmed the fence in
               HOST's current boot; anything else (a stopped heartbeat included) is ALIVE, with
               the reason on stderr.
  -c           ask the local daemon to self-fence this host. It acts only if a quorum of the
               cluster agrees the fault is local; this command never reboots anything itself.
  (neither)    write mode: exit 0 while the local daemon's own storage heartbeat is healthy,
               1 otherwise. The daemon writes the heartbeat; -i, -p, -m and -t are accepted and
               ignored.

Exit codes: 0 done, 1 unhealthy or refused, 2 bad arguments or unknown host, 3 the daemon could
not be reached. The endpoint is --endpoint, else $PEERFENCE_ENDPOINT, else http://127.0.0.1:7947.
Note: -h is the host, as in kvmheartbeat.sh; help is --help only.";

/// The flags of `kvmheartbeat.sh`, plus `--endpoint`. `-h` is CloudStack's host flag, so the
/// automatic `-h` help is off (`--help` stays).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(disable_help_flag = true, after_help = AFTER_HELP)]
pub struct Args {
    /// NFS server (ignored: the peerfence daemon writes its own heartbeat).
    #[arg(short = 'i', value_name = "NFS_SERVER")]
    pub nfs_server: Option<String>,
    /// NFS export path (ignored).
    #[arg(short = 'p', value_name = "NFS_PATH")]
    pub nfs_path: Option<String>,
    /// Mount point (ignored).
    #[arg(short = 'm', value_name = "MOUNT_POINT")]
    pub mount_point: Option<String>,
    /// Host: with -r, the host to report on (a member name, or the IP of a member's address);
    /// ignored otherwise.
    #[arg(short = 'h', value_name = "HOST")]
    pub host: Option<String>,
    /// Read mode: report whether HOST is alive.
    #[arg(short = 'r')]
    pub read: bool,
    /// Fence ("cleanup") mode: ask the local daemon to self-fence this host, under quorum.
    #[arg(short = 'c')]
    pub fence: bool,
    /// Interval in seconds (ignored: peerfence's own activity_timeout decides).
    #[arg(short = 't', value_name = "SECONDS")]
    pub interval: Option<String>,
    /// The local daemon's HTTP endpoint (its http.listen) [env: PEERFENCE_ENDPOINT]
    /// [default: http://127.0.0.1:7947].
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// What the agent asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode<'a> {
    /// `-r -h HOST`.
    Read(&'a str),
    /// `-c`.
    Fence,
    /// Neither: the heartbeat write.
    Write,
}

/// The mode the flags select. `-r` wins over `-c`, as in the original script.
pub fn mode(args: &Args) -> Result<Mode<'_>, Failure> {
    if args.read {
        return match args.host.as_deref() {
            Some(h) if !h.trim().is_empty() => Ok(Mode::Read(h.trim())),
            _ => Err(Failure::Usage(
                "-r needs -h HOST (the host to report on)".into(),
            )),
        };
    }
    if args.fence {
        return Ok(Mode::Fence);
    }
    Ok(Mode::Write)
}

/// Why the command did not do what was asked; each maps to an exit code ([`Failure::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// HOST matches no member.
    #[error("unknown host '{host}': it is neither a member name nor the IP of a member's address; members: {}", .known.join(", "))]
    UnknownHost {
        /// What was asked for.
        host: String,
        /// Every member, as `name (address)`.
        known: Vec<String>,
    },
    /// HOST matches several members by address.
    #[error("host '{host}' is the address of several members ({}); pass a member name", .matches.join(", "))]
    Ambiguous {
        /// What was asked for.
        host: String,
        /// The members whose address matched.
        matches: Vec<String>,
    },
    /// Write mode: this host's storage heartbeat is not healthy.
    #[error("{0}")]
    Unhealthy(String),
    /// `-c`: the daemon refused the self-fence request.
    #[error("self-fence request refused: {0}")]
    Refused(String),
    /// The daemon could not be reached, or its answer could not be used.
    #[error("{0}")]
    Daemon(String),
}

impl Failure {
    /// The exit code.
    pub fn code(&self) -> i32 {
        match self {
            Failure::Unhealthy(_) | Failure::Refused(_) => EXIT_NO,
            Failure::Usage(_) | Failure::UnknownHost { .. } | Failure::Ambiguous { .. } => {
                EXIT_USAGE
            }
            Failure::Daemon(_) => EXIT_DAEMON,
        }
    }
}

/// The endpoint: `--endpoint`, else the environment variable, else [`DEFAULT_ENDPOINT`]; without
/// a trailing `/`. Only `http://` is accepted: the status endpoint is plain HTTP on loopback.
pub fn resolve_endpoint(arg: Option<&str>, env: Option<&str>) -> Result<String, Failure> {
    let chosen = [arg, env]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or(DEFAULT_ENDPOINT);
    if !chosen.starts_with("http://") || chosen.len() == "http://".len() {
        return Err(Failure::Usage(format!(
            "the endpoint must be an http:// URL such as {DEFAULT_ENDPOINT} (the daemon's \
             http.listen; plain HTTP, no TLS), got '{chosen}'"
        )));
    }
    Ok(chosen.trim_end_matches('/').to_owned())
}

/// A read-mode answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// ALIVE (false) or DEAD (true).
    pub dead: bool,
    /// The member HOST was matched to.
    pub member: String,
    /// Why, in one line, for the operator (printed on stderr after the verdict line).
    pub why: String,
}

impl Verdict {
    /// The line the agent parses.
    pub fn line(&self) -> &'static str {
        if self.dead { DEAD_LINE } else { ALIVE_LINE }
    }
}

/// One member as the cluster view lists it.
#[derive(Debug, Clone, Copy)]
struct Member<'a> {
    name: &'a str,
    address: Option<&'a str>,
    /// Its `peers[]` entry; `None` for the local node (which `peers` leaves out).
    peer: Option<&'a Value>,
}

impl Member<'_> {
    fn label(&self) -> String {
        match self.address {
            Some(a) => format!("{} ({a})", self.name),
            None => self.name.to_owned(),
        }
    }
}

fn malformed(what: &str) -> Failure {
    Failure::Daemon(format!(
        "the daemon's cluster view has no usable {what}; is it an older or newer peerfence?"
    ))
}

/// Every member: the `addresses` map (which includes the local node) and `node.peers`. The local
/// node is the one in `addresses` that `peers` leaves out.
fn members(cluster: &Value) -> Result<Vec<Member<'_>>, Failure> {
    let peers = cluster["node"]["peers"]
        .as_array()
        .ok_or_else(|| malformed("node.peers"))?;
    let mut out = Vec::new();
    for p in peers {
        let name = p["name"]
            .as_str()
            .ok_or_else(|| malformed("node.peers[].name"))?;
        out.push(Member {
            name,
            address: cluster["addresses"][name].as_str(),
            peer: Some(p),
        });
    }
    if let Some(addresses) = cluster["addresses"].as_object() {
        for (name, address) in addresses {
            if !out.iter().any(|m| m.name == name) {
                out.push(Member {
                    name,
                    address: address.as_str(),
                    peer: None,
                });
            }
        }
    }
    Ok(out)
}

/// Whether `host` (an IP, possibly in brackets, or a host name) is the host part of `address`
/// (`ip:port`, `[ipv6]:port` or `name:port`).
fn address_is(address: &str, host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(sa) = address.parse::<SocketAddr>() {
        return host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical() == sa.ip().to_canonical());
    }
    let part = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let part = part.trim_start_matches('[').trim_end_matches(']');
    part.eq_ignore_ascii_case(host)
}

/// The member HOST names: by member name first (names are DNS names: case-insensitive), then by
/// the IP of its address (CloudStack passes the host's private IP).
fn find<'a>(all: &[Member<'a>], host: &str) -> Result<Member<'a>, Failure> {
    if let Some(m) = all.iter().find(|m| m.name.eq_ignore_ascii_case(host)) {
        return Ok(*m);
    }
    let by_address: Vec<&Member<'a>> = all
        .iter()
        .filter(|m| m.address.is_some_and(|a| address_is(a, host)))
        .collect();
    match by_address.as_slice() {
        [m] => Ok(**m),
        [] => Err(Failure::UnknownHost {
            host: host.to_owned(),
            known: all.iter().map(Member::label).collect(),
        }),
        several => Err(Failure::Ambiguous {
            host: host.to_owned(),
            matches: several.iter().map(|m| m.label()).collect(),
        }),
    }
}

/// Read mode: is HOST alive in this node's view?
///
/// DEAD means exactly one thing: this node knows HOST fenced and confirmed in its current boot
/// (`dead`, see `Node::cloud_dead`). In CloudStack's KVM HA a DEAD from the investigator *is*
/// the fence: the management server restarts HOST's VMs elsewhere at once. So a stopped
/// heartbeat, a dead daemon, a dead BMC, or a host that lost only its storage all answer ALIVE
/// (with the reason on stderr): their VMs may well run, and a second copy would write the same
/// disks. peerfence itself fences such a host when a quorum agrees, and answers DEAD once that
/// fence is confirmed. A wrong ALIVE only delays HA; a wrong DEAD corrupts.
///
/// The local host is always ALIVE: it is the host answering, so it is running.
pub fn read_verdict(cluster: &Value, host: &str) -> Result<Verdict, Failure> {
    let all = members(cluster)?;
    let m = find(&all, host)?;
    let member = m.name.to_owned();
    let Some(p) = m.peer else {
        return Ok(Verdict {
            dead: false,
            member,
            why: format!("{} is this host, which is running", m.name),
        });
    };
    let ha = p["ha"].as_str().ok_or_else(|| malformed("peers[].ha"))?;
    let dead = p["dead"]
        .as_bool()
        .ok_or_else(|| malformed("peers[].dead"))?;
    let swim = p["swim"].as_str().unwrap_or("?");
    let heartbeat = match &p["storage_alive"] {
        Value::Bool(true) => "advancing".to_owned(),
        Value::Bool(false) => format!(
            "stopped for {} ms",
            p["heartbeat_age_ms"]
                .as_u64()
                .map_or_else(|| "?".to_owned(), |a| a.to_string())
        ),
        _ => "not known yet".to_owned(),
    };
    let why = if dead {
        format!("{member} is fenced and confirmed in its current boot in this host's view")
    } else {
        format!(
            "{member} is not fenced and confirmed in its current boot (HA {ha}, SWIM {swim}, \
             storage heartbeat {heartbeat}): only a confirmed fence answers DEAD, because on DEAD \
             CloudStack restarts its VMs elsewhere at once"
        )
    };
    Ok(Verdict { dead, member, why })
}

/// Write mode: `Ok` while every entry of the local `node.storage` is `Ok` or `Slow` (slow is not
/// failed), with a one-line description; `Err(Unhealthy)` otherwise.
pub fn write_check(cluster: &Value) -> Result<String, Failure> {
    let paths = cluster["node"]["storage"]
        .as_array()
        .ok_or_else(|| malformed("node.storage"))?;
    if paths.is_empty() {
        return Err(Failure::Unhealthy(
            "the daemon reports no storage paths, so no heartbeat is being written".into(),
        ));
    }
    let n = paths.len();
    let bad: Vec<String> = paths
        .iter()
        .enumerate()
        .filter(|(_, h)| !matches!(h.as_str(), Some("Ok" | "Slow")))
        .map(|(i, h)| {
            let state = h.as_str().map_or_else(|| h.to_string(), str::to_owned);
            format!("path {} of {n} {state}", i + 1)
        })
        .collect();
    if bad.is_empty() {
        Ok(format!("storage heartbeat healthy on all {n} path(s)"))
    } else {
        Err(Failure::Unhealthy(format!(
            "this host's storage heartbeat is not healthy: {}",
            bad.join(", ")
        )))
    }
}

/// `-c`: the daemon's answer to the self-fence request, `{"accepted": bool, "reason": string}`.
/// `Ok(reason)` when accepted, `Err(Refused(reason))` when refused.
pub fn fence_answer(body: &Value) -> Result<String, Failure> {
    let accepted = body["accepted"]
        .as_bool()
        .ok_or_else(|| Failure::Daemon("the self-fence answer has no 'accepted' field".into()))?;
    let reason = body["reason"].as_str().unwrap_or("(no reason given)");
    let reason = if reason.trim().is_empty() {
        "(no reason given)"
    } else {
        reason
    };
    if accepted {
        Ok(reason.to_owned())
    } else {
        Err(Failure::Refused(reason.to_owned()))
    }
}

/// What to print on success.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Stdout line (printed first: the agent reads the first line of stdout and stderr merged).
    pub stdout: Option<String>,
    /// Stderr line, for the operator.
    pub stderr: Option<String>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        // Loopback only: never through a proxy from the environment.
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_connect(Some(IO_TIMEOUT))
        .timeout_send_request(Some(IO_TIMEOUT))
        .timeout_send_body(Some(IO_TIMEOUT))
        .timeout_recv_response(Some(IO_TIMEOUT))
        .timeout_recv_body(Some(IO_TIMEOUT))
        .timeout_global(Some(TOTAL_TIMEOUT))
        .build()
        .new_agent()
}

fn unreachable(url: &str, e: &ureq::Error) -> Failure {
    Failure::Daemon(format!(
        "cannot reach the peerfence daemon at {url}: {e}. Is peerfence running? Check http.listen \
         in its config (and --endpoint or ${ENDPOINT_ENV} here)"
    ))
}

fn answer(
    url: &str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, Failure> {
    let mut response = response.map_err(|e| unreachable(url, &e))?;
    let status = response.status();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| unreachable(url, &e))?;
    if status == ureq::http::StatusCode::NOT_FOUND {
        return Err(Failure::Daemon(format!(
            "{url} answered 404 Not Found: this peerfence daemon does not offer that endpoint \
             (an older version?)"
        )));
    }
    if !status.is_success() {
        let first = text.lines().next().unwrap_or("").trim();
        return Err(Failure::Daemon(format!("{url} answered {status}: {first}")));
    }
    serde_json::from_str(&text)
        .map_err(|e| Failure::Daemon(format!("{url} answered something that is not JSON: {e}")))
}

fn get_cluster(endpoint: &str) -> Result<Value, Failure> {
    let url = format!("{endpoint}/v1/cluster");
    answer(&url, agent().get(&url).call())
}

/// Carries out the command against the daemon at `endpoint`.
pub fn execute(args: &Args, endpoint: &str) -> Result<Report, Failure> {
    match mode(args)? {
        Mode::Read(host) => {
            let v = read_verdict(&get_cluster(endpoint)?, host)?;
            Ok(Report {
                stdout: Some(v.line().to_owned()),
                stderr: Some(v.why),
            })
        }
        Mode::Write => {
            write_check(&get_cluster(endpoint)?)?;
            Ok(Report::default())
        }
        Mode::Fence => {
            let url = format!("{endpoint}/v1/local/self-fence-request");
            let body = serde_json::json!({ "source": "cloudstack-heartbeat" }).to_string();
            let response = agent()
                .post(&url)
                .header("content-type", "application/json")
                .send(body.as_str());
            let reason = fence_answer(&answer(&url, response)?)?;
            Ok(Report {
                stdout: Some(format!("peerfence: {reason}")),
                stderr: None,
            })
        }
    }
}

/// Runs the command; returns the exit code.
pub fn run(args: &Args) -> i32 {
    let env = std::env::var(ENDPOINT_ENV).ok();
    let result =
        resolve_endpoint(args.endpoint.as_deref(), env.as_deref()).and_then(|e| execute(args, &e));
    match result {
        Ok(report) => {
            // The verdict line goes out (and is flushed) before anything on stderr: the agent
            // merges the two streams and reads only the first line.
            if let Some(line) = report.stdout {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}").and_then(|_| out.flush());
            }
            if let Some(line) = report.stderr {
                eprintln!("peerfence: {line}");
            }
            EXIT_OK
        }
        Err(f) => {
            eprintln!("peerfence cloudstack-heartbeat: {f}");
            f.code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::{BufRead, BufReader, Read};

    fn peer(name: &str, member: u16, ha: &str, storage_alive: Value) -> Value {
        json!({"member": member, "name": name, "swim": "Alive", "ha": ha,
               "storage_alive": storage_alive, "heartbeat_age_ms": 120,
               "dead": ha == "Fenced"})
    }

    /// n0 is the local node; n1..n3 are peers, each on its own IP.
    fn cluster(peers: Vec<Value>) -> Value {
        json!({
            "cluster": "test",
            "addresses": {
                "n0": "10.0.0.10:7946", "n1": "10.0.0.11:7946",
                "n2": "10.0.0.12:7946", "n3": "[fd00::13]:7946"
            },
            "node": {"me": 0, "verdict": "Healthy", "storage": ["Ok"], "peers": peers}
        })
    }

    fn three(n1_alive: Value, n1_ha: &str) -> Value {
        cluster(vec![
            peer("n1", 1, n1_ha, n1_alive),
            peer("n2", 2, "Available", json!(true)),
            peer("n3", 3, "Available", json!(true)),
        ])
    }

    #[test]
    fn the_lines_are_the_original_scripts() {
        assert_eq!(ALIVE_LINE, "=====> ALIVE <=====");
        assert_eq!(DEAD_LINE, "=====> DEAD <======");
    }

    /// A stopped heartbeat is a dead daemon, a dead BMC or a host without storage as often as a
    /// dead host: its VMs may run, so it is never DEAD by itself.
    #[test]
    fn a_stopped_heartbeat_is_alive_until_the_fence_is_confirmed() {
        for ha in [
            "Checking",
            "Fencing",
            "FenceFailed",
            "Failed",
            "Partitioned",
            "Ineligible",
        ] {
            let v = read_verdict(&three(json!(false), ha), "n1").unwrap();
            assert!(!v.dead, "{ha}: {v:?}");
            assert_eq!(v.line(), ALIVE_LINE);
            assert!(v.why.contains("stopped for 120 ms"), "{}", v.why);
            assert!(v.why.contains("only a confirmed fence"), "{}", v.why);
        }
        let v = read_verdict(&three(json!(true), "Available"), "n1").unwrap();
        assert!(!v.dead);
        assert_eq!(v.line(), ALIVE_LINE);
    }

    #[test]
    fn unknown_heartbeat_is_alive_whatever_else_is_said() {
        for ha in [
            "Initializing",
            "Checking",
            "Suspect",
            "Partitioned",
            "Failed",
        ] {
            let v = read_verdict(&three(Value::Null, ha), "n1").unwrap();
            assert!(!v.dead, "{ha}: {v:?}");
            assert!(v.why.contains("not known"), "{}", v.why);
        }
    }

    #[test]
    fn fenced_and_confirmed_is_dead_whatever_the_heartbeat() {
        for alive in [Value::Null, json!(true), json!(false)] {
            let v = read_verdict(&three(alive.clone(), "Fenced"), "n1").unwrap();
            assert!(v.dead, "{alive}: {v:?}");
            assert_eq!(v.line(), DEAD_LINE);
            assert!(v.why.contains("fenced and confirmed"), "{}", v.why);
        }
    }

    #[test]
    fn a_status_without_the_dead_field_is_refused_not_guessed() {
        let mut c = three(json!(false), "Checking");
        c["node"]["peers"][0]
            .as_object_mut()
            .unwrap()
            .remove("dead");
        let err = read_verdict(&c, "n1").unwrap_err();
        assert!(err.to_string().contains("dead"), "{err}");
        assert!(!err.to_string().contains("DEAD"), "{err}");
    }

    #[test]
    fn the_local_host_is_alive() {
        let c = three(json!(false), "Checking");
        for host in ["n0", "10.0.0.10"] {
            let v = read_verdict(&c, host).unwrap();
            assert!(!v.dead);
            assert_eq!(v.member, "n0");
            assert!(v.why.contains("this host"), "{}", v.why);
        }
    }

    #[test]
    fn host_matches_by_ip_of_the_address() {
        let c = three(json!(false), "Fenced");
        assert_eq!(read_verdict(&c, "10.0.0.11").unwrap().member, "n1");
        assert!(read_verdict(&c, "10.0.0.11").unwrap().dead);
        assert_eq!(read_verdict(&c, "10.0.0.12").unwrap().member, "n2");
        assert!(!read_verdict(&c, "10.0.0.12").unwrap().dead);
        // IPv6, with or without brackets, in any spelling of the same address.
        for h in ["fd00::13", "[fd00::13]", "fd00:0:0:0:0:0:0:13"] {
            assert_eq!(read_verdict(&c, h).unwrap().member, "n3", "{h}");
        }
        // A prefix of an address is not a match.
        assert!(matches!(
            read_verdict(&c, "10.0.0.1"),
            Err(Failure::UnknownHost { .. })
        ));
    }

    #[test]
    fn ipv4_mapped_ipv6_matches_the_ipv4_address() {
        let c = three(json!(true), "Available");
        assert_eq!(read_verdict(&c, "::ffff:10.0.0.11").unwrap().member, "n1");
    }

    #[test]
    fn host_names_in_addresses_match_too() {
        let mut c = three(json!(true), "Available");
        c["addresses"]["n2"] = json!("kvm2.example.net:7946");
        assert_eq!(read_verdict(&c, "KVM2.example.net").unwrap().member, "n2");
    }

    #[test]
    fn names_match_case_insensitively_and_before_addresses() {
        let c = three(json!(false), "Checking");
        assert_eq!(read_verdict(&c, "N1").unwrap().member, "n1");
        // A member named like another member's IP is found by name.
        let mut c = cluster(vec![
            peer("10.0.0.12", 1, "Available", json!(true)),
            peer("n2", 2, "Available", json!(false)),
        ]);
        c["addresses"] =
            json!({"n0": "10.0.0.10:1", "10.0.0.12": "10.0.0.11:1", "n2": "10.0.0.12:1"});
        assert_eq!(read_verdict(&c, "10.0.0.12").unwrap().member, "10.0.0.12");
    }

    #[test]
    fn unknown_host_lists_the_members() {
        let err = read_verdict(&three(json!(true), "Available"), "kvm9").unwrap_err();
        assert_eq!(err.code(), EXIT_USAGE);
        let msg = err.to_string();
        for m in ["kvm9", "n0 (10.0.0.10:7946)", "n1 (10.0.0.11:7946)", "n3"] {
            assert!(msg.contains(m), "{msg}");
        }
    }

    #[test]
    fn an_ip_shared_by_several_members_is_ambiguous() {
        let mut c = three(json!(true), "Available");
        c["addresses"] = json!({"n0": "127.0.0.1:1", "n1": "127.0.0.1:2", "n2": "127.0.0.1:3",
                                "n3": "127.0.0.1:4"});
        let err = read_verdict(&c, "127.0.0.1").unwrap_err();
        assert!(matches!(err, Failure::Ambiguous { .. }), "{err:?}");
        assert_eq!(err.code(), EXIT_USAGE);
        assert!(err.to_string().contains("member name"), "{err}");
        // Names still work.
        assert_eq!(read_verdict(&c, "n2").unwrap().member, "n2");
    }

    #[test]
    fn without_addresses_names_still_match() {
        let mut c = three(json!(false), "Fenced");
        c.as_object_mut().unwrap().remove("addresses");
        assert!(read_verdict(&c, "n1").unwrap().dead);
        assert!(matches!(
            read_verdict(&c, "10.0.0.11"),
            Err(Failure::UnknownHost { .. })
        ));
    }

    #[test]
    fn a_view_without_the_expected_fields_is_a_daemon_error_never_dead() {
        let mut c = three(json!(false), "Checking");
        c["node"]["peers"][0].as_object_mut().unwrap().remove("ha");
        let err = read_verdict(&c, "n1").unwrap_err();
        assert_eq!(err.code(), EXIT_DAEMON, "{err}");
        assert!(!err.to_string().contains("DEAD"));
        let err = read_verdict(&json!({"cluster": "x"}), "n1").unwrap_err();
        assert_eq!(err.code(), EXIT_DAEMON, "{err}");
    }

    #[test]
    fn write_mode_is_healthy_only_when_every_path_is_ok_or_slow() {
        let with = |s: Value| json!({"node": {"storage": s, "peers": []}});
        assert!(write_check(&with(json!(["Ok"]))).is_ok());
        assert!(write_check(&with(json!(["Ok", "Slow"]))).is_ok());
        for bad in [
            json!(["Ok", "Failed"]),
            json!(["Unknown"]),
            json!(["Slow", "Unknown"]),
            json!([]),
        ] {
            let err = write_check(&with(bad.clone())).unwrap_err();
            assert_eq!(err.code(), EXIT_NO, "{bad}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
        let err = write_check(&with(json!(["Ok", "Failed"]))).unwrap_err();
        assert!(err.to_string().contains("path 2 of 2 Failed"), "{err}");
        let err = write_check(&json!({"node": {}})).unwrap_err();
        assert_eq!(err.code(), EXIT_DAEMON);
    }

    #[test]
    fn fence_answers() {
        assert_eq!(
            fence_answer(&json!({"accepted": true, "reason": "quorum agreed"})).unwrap(),
            "quorum agreed"
        );
        let err = fence_answer(
            &json!({"accepted": false, "reason": "shared storage is down everywhere"}),
        )
        .unwrap_err();
        assert_eq!(
            err,
            Failure::Refused("shared storage is down everywhere".into())
        );
        assert_eq!(err.code(), EXIT_NO);
        assert!(
            err.to_string()
                .contains("shared storage is down everywhere")
        );
        let err = fence_answer(&json!({"reason": "?"})).unwrap_err();
        assert_eq!(err.code(), EXIT_DAEMON);
        assert_eq!(
            fence_answer(&json!({"accepted": true})).unwrap(),
            "(no reason given)"
        );
    }

    #[test]
    fn endpoint_resolution() {
        assert_eq!(resolve_endpoint(None, None).unwrap(), DEFAULT_ENDPOINT);
        assert_eq!(
            resolve_endpoint(None, Some("http://127.0.0.1:9/")).unwrap(),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            resolve_endpoint(Some("http://[::1]:8"), Some("http://127.0.0.1:9")).unwrap(),
            "http://[::1]:8"
        );
        assert_eq!(
            resolve_endpoint(None, Some("  ")).unwrap(),
            DEFAULT_ENDPOINT
        );
        for bad in ["https://127.0.0.1:7947", "127.0.0.1:7947", "http://"] {
            let err = resolve_endpoint(Some(bad), None).unwrap_err();
            assert_eq!(err.code(), EXIT_USAGE, "{bad}");
        }
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        CloudstackHeartbeat(Args),
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        use clap::Parser;
        let argv = ["peerfence", "cloudstack-heartbeat"].iter().chain(argv);
        Cli::try_parse_from(argv).map(|c| match c.command {
            Sub::CloudstackHeartbeat(a) => a,
        })
    }

    #[test]
    fn parses_the_agents_command_lines() {
        // Write, as KVMHAMonitor runs it.
        let a = parse(&[
            "-i",
            "10.1.1.1",
            "-p",
            "/export/primary",
            "-m",
            "/mnt/abc",
            "-h",
            "10.0.0.11",
        ])
        .unwrap();
        assert_eq!(mode(&a).unwrap(), Mode::Write);
        assert_eq!(a.host.as_deref(), Some("10.0.0.11"));
        // Read, as KVMHAChecker runs it.
        let a = parse(&[
            "-i",
            "10.1.1.1",
            "-p",
            "/x",
            "-m",
            "/mnt/abc",
            "-h",
            "10.0.0.11",
            "-r",
            "-t",
            "60",
        ])
        .unwrap();
        assert_eq!(mode(&a).unwrap(), Mode::Read("10.0.0.11"));
        // Fence: no -h.
        let a = parse(&["-i", "10.1.1.1", "-p", "/x", "-m", "/mnt/abc", "-c"]).unwrap();
        assert_eq!(mode(&a).unwrap(), Mode::Fence);
        // getopts-style clusters and attached values; -r wins over -c as in the script.
        let a = parse(&["-rc", "-h10.0.0.12"]).unwrap();
        assert_eq!(mode(&a).unwrap(), Mode::Read("10.0.0.12"));
        let a = parse(&["--endpoint", "http://127.0.0.1:1", "-r", "-h", "n1"]).unwrap();
        assert_eq!(a.endpoint.as_deref(), Some("http://127.0.0.1:1"));
    }

    #[test]
    fn dash_h_is_the_host_and_help_is_long_only() {
        // -h without a value is an error, not help.
        let err = parse(&["-h"]).unwrap_err();
        assert_ne!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        let err = parse(&["--help"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = err.to_string();
        assert!(help.contains("ignored"), "{help}");
        assert!(help.contains("PEERFENCE_ENDPOINT"), "{help}");
    }

    #[test]
    fn read_without_host_is_a_usage_error() {
        let a = parse(&["-r"]).unwrap();
        assert_eq!(mode(&a).unwrap_err().code(), EXIT_USAGE);
    }

    /// Serves one request with `status` and `body`; returns the port and a handle yielding the
    /// request's head and body.
    fn one_shot(
        status: &'static str,
        body: &'static str,
    ) -> (u16, std::thread::JoinHandle<(String, String)>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let mut req_body = vec![0u8; length];
            reader.read_exact(&mut req_body).unwrap();
            let mut stream = reader.into_inner();
            write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            (head, String::from_utf8(req_body).unwrap())
        });
        (port, handle)
    }

    fn fence_args() -> Args {
        Args {
            fence: true,
            ..Args::default()
        }
    }

    #[test]
    fn fence_posts_the_request_and_reports_acceptance() {
        let (port, server) = one_shot("200 OK", r#"{"accepted":true,"reason":"a quorum agreed"}"#);
        let report = execute(&fence_args(), &format!("http://127.0.0.1:{port}")).unwrap();
        assert_eq!(report.stdout.as_deref(), Some("peerfence: a quorum agreed"));
        let (head, body) = server.join().unwrap();
        assert!(
            head.starts_with("POST /v1/local/self-fence-request HTTP/1.1\r\n"),
            "{head}"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body, json!({"source": "cloudstack-heartbeat"}));
    }

    #[test]
    fn fence_refused_exits_1_and_missing_endpoint_exits_3() {
        let (port, server) = one_shot(
            "200 OK",
            r#"{"accepted":false,"reason":"storage is down for every host"}"#,
        );
        let err = execute(&fence_args(), &format!("http://127.0.0.1:{port}")).unwrap_err();
        assert_eq!(err.code(), EXIT_NO);
        assert!(
            err.to_string().contains("storage is down for every host"),
            "{err}"
        );
        server.join().unwrap();

        let (port, server) = one_shot("404 Not Found", "");
        let err = execute(&fence_args(), &format!("http://127.0.0.1:{port}")).unwrap_err();
        assert_eq!(err.code(), EXIT_DAEMON);
        assert!(err.to_string().contains("404"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn busy_daemon_is_exit_3() {
        let (port, server) = one_shot(
            "503 Service Unavailable",
            "the node is busy or stopping; try again",
        );
        let args = Args {
            read: true,
            host: Some("n1".into()),
            ..Args::default()
        };
        let err = execute(&args, &format!("http://127.0.0.1:{port}")).unwrap_err();
        assert_eq!(err.code(), EXIT_DAEMON);
        assert!(err.to_string().contains("busy"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn nothing_listening_is_exit_3_with_the_fix() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = execute(&Args::default(), &format!("http://127.0.0.1:{port}")).unwrap_err();
        assert_eq!(err.code(), EXIT_DAEMON);
        let msg = err.to_string();
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        assert!(
            msg.contains("is peerfence running") || msg.contains("Is peerfence running"),
            "{msg}"
        );
        assert!(msg.contains("http.listen"), "{msg}");
    }
}
