//! The operator's commands against a running daemon's HTTP API: `peerfence status`, `fences`,
//! `maintenance HOST on|off`, `arm`, `disarm` and `fence HOST`.
//!
//! They print what a person reads at a glance (colours only on a terminal), or the API's JSON
//! with `--json`. Every failure says what went wrong and what to do: the daemon cannot be
//! reached (is it running, which address), the token was refused (which file to pass), the
//! host does not exist (the daemon's message lists the members).

use super::http::Tokens;
use serde_json::Value;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

/// Default API address (the daemon's default `http.listen`).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7947";
/// Environment variable for `--endpoint`.
pub const ENDPOINT_ENV: &str = "PEERFENCE_ENDPOINT";
/// Environment variable for `--token-file`.
pub const TOKEN_FILE_ENV: &str = "PEERFENCE_TOKEN_FILE";
/// Default token file.
pub const DEFAULT_TOKEN_FILE: &str = "/etc/peerfence/api-tokens";

/// Options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The daemon's HTTP API (default: $PEERFENCE_ENDPOINT, else http://127.0.0.1:7947).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of the commands that change something.
#[derive(Debug, Clone, clap::Args)]
pub struct Auth {
    /// A file of `NAME TOKEN` lines, like the daemon's http.token_file (default:
    /// $PEERFENCE_TOKEN_FILE, else /etc/peerfence/api-tokens). The first line is used unless
    /// --as names another.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Which token of the file to use (its NAME; the audit log shows it).
    #[arg(long = "as")]
    pub as_name: Option<String>,
}

/// What an operator command does.
#[derive(Debug, Clone)]
pub enum Request {
    /// `status`.
    Status,
    /// `fences`.
    Fences,
    /// `maintenance HOST on|off`.
    Maintenance(String, bool),
    /// `arm`.
    Arm,
    /// `disarm`.
    Disarm,
    /// `fence HOST`.
    Fence(String),
}

/// Runs one command; the exit code is 0 on success, 1 when the daemon could not be reached or
/// refused, 2 for a mistake on the command line.
pub fn run(req: Request, common: &Common, auth: Option<&Auth>) -> u8 {
    match execute(req, common, auth) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err((code, msg)) => {
            eprintln!("error: {msg}");
            code
        }
    }
}

fn endpoint(common: &Common) -> String {
    common
        .endpoint
        .clone()
        .or_else(|| std::env::var(ENDPOINT_ENV).ok())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

type Failure = (u8, String);

fn agent() -> ureq::Agent {
    let t = Some(Duration::from_secs(5));
    ureq::Agent::config_builder()
        // The API is this cluster's own; never through a proxy from the environment.
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_connect(t)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent()
}

/// Reads the token to present from the operator's file.
#[allow(clippy::disallowed_methods)] // reading the file the operator named is this command's job
fn token(auth: Option<&Auth>) -> Result<(String, String), Failure> {
    let path = auth
        .and_then(|a| a.token_file.clone())
        .or_else(|| std::env::var_os(TOKEN_FILE_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        (
            2,
            format!(
                "this command needs an API token, but {} cannot be read ({e}); pass --token-file FILE (or set ${TOKEN_FILE_ENV}) with a `NAME TOKEN` line from the daemon's http.token_file",
                path.display()
            ),
        )
    })?;
    let tokens = Tokens::parse(&text)
        .map_err(|(line, rule)| (2, format!("{}, line {line}: {rule}", path.display())))?;
    let want = auth.and_then(|a| a.as_name.as_deref());
    tokens
        .pick(want)
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .ok_or_else(|| {
            (
                2,
                match want {
                    Some(n) => format!("{} has no token named {n:?}", path.display()),
                    None => format!("{} holds no token", path.display()),
                },
            )
        })
}

fn call(
    url: &str,
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, Failure> {
    let unreachable = |e: &dyn std::fmt::Display| {
        (
            1,
            format!(
                "cannot reach the peerfence daemon at {url}: {e}. Is it running on that host? Check http.listen in its configuration, and --endpoint or ${ENDPOINT_ENV} here"
            ),
        )
    };
    let mut resp = resp.map_err(|e| unreachable(&e))?;
    let status = resp.status();
    let text = resp
        .body_mut()
        .with_config()
        .limit(16 * 1024 * 1024)
        .read_to_string()
        .map_err(|e| unreachable(&e))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    let message = body["error"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| text.lines().next().unwrap_or("").to_owned());
    match status.as_u16() {
        200..=299 => Ok(body),
        401 => Err((
            1,
            format!(
                "the daemon refused the credential ({message}). Use a token from the daemon's http.token_file: --token-file FILE [--as NAME]"
            ),
        )),
        404 if message.is_empty() => Err((
            1,
            format!("{url} does not exist on this daemon (an older version?)"),
        )),
        code => Err((1, format!("{url} answered {code}: {message}"))),
    }
}

fn execute(req: Request, common: &Common, auth: Option<&Auth>) -> Result<String, Failure> {
    let base = endpoint(common);
    let get = |path: &str| {
        let url = format!("{base}{path}");
        call(&url, agent().get(&url).call())
    };
    let post = |path: &str, body: Value| -> Result<Value, Failure> {
        let (_, tok) = token(auth)?;
        let url = format!("{base}{path}");
        call(
            &url,
            agent()
                .post(&url)
                .header("Authorization", &format!("Bearer {tok}"))
                .header("Content-Type", "application/json")
                .send(body.to_string()),
        )
    };
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let v = match &req {
        Request::Status => get("/v1/cluster")?,
        Request::Fences => get("/v1/fences")?,
        Request::Arm => post("/v1/arm", Value::Null)?,
        Request::Disarm => post("/v1/disarm", Value::Null)?,
        Request::Maintenance(host, on) => post(
            &format!("/v1/hosts/{}/maintenance", path_segment(host)?),
            serde_json::json!({ "on": on }),
        )?,
        Request::Fence(host) => post(
            &format!("/v1/hosts/{}/fence", path_segment(host)?),
            Value::Null,
        )?,
    };
    if common.json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        ));
    }
    Ok(match req {
        Request::Status => status_table(&v, colour),
        Request::Fences => fences_table(&v),
        _ => action_lines(&v),
    })
}

/// A member name as a URL path segment; names are DNS names, anything else is refused here.
fn path_segment(host: &str) -> Result<&str, Failure> {
    if !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        Ok(host)
    } else {
        Err((
            2,
            format!("{host:?} is not a member name (letters, digits, '-', '.', '_')"),
        ))
    }
}

fn paint(colour: bool, code: &str, text: &str) -> String {
    if colour {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

fn ha_colour(ha: &str) -> &'static str {
    match ha {
        "available" => "32",
        "fenced" | "fencing" | "failed" | "fence_failed" | "unhealthy" => "1;31",
        "disabled" | "ineligible" | "initializing" => "2",
        _ => "33",
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The `peerfence status` table.
pub fn status_table(v: &Value, colour: bool) -> String {
    let sum = &v["summary"];
    let mut out = String::new();
    let flag = |on: bool, yes: &str, no: &str, bad: bool| {
        let text = if on { yes } else { no };
        if bad {
            paint(colour, "1;31", text)
        } else {
            text.to_owned()
        }
    };
    let armed = sum["armed"] == true;
    let storm = sum["storm"] == true;
    let inflight: Vec<String> = sum["fences_in_flight"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    out.push_str(&format!(
        "cluster {} as seen by {}: {}, {} mode, quorum {} of {} ({} visible, {}), storm {}, budget {}/{} used per {} s, in flight: {}\n\n",
        s(&v["cluster"]),
        s(&sum["node"]),
        flag(armed, "armed", "DISARMED", !armed),
        s(&sum["mode"]),
        s(&sum["quorum"]),
        s(&sum["members"]),
        s(&sum["visible"]),
        if sum["eligible"] == true {
            "eligible".to_owned()
        } else {
            format!("not eligible: {}", s(&sum["ineligible"]))
        },
        flag(storm, "ON (nobody is fenced)", "off", storm),
        s(&sum["budget_used"]),
        s(&sum["budget"]),
        s(&sum["budget_window_s"]),
        if inflight.is_empty() {
            "none".to_owned()
        } else {
            inflight.join(", ")
        },
    ));
    let rows: Vec<[String; 6]> = v["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    let mut name = s(&m["name"]);
                    if m["self"] == true {
                        name.push('*');
                    }
                    if m["maintenance"] == true {
                        name.push_str(" (maint)");
                    }
                    let age = m["heartbeat_age_ms"]
                        .as_f64()
                        .map(|ms| format!("{:.1}s", ms / 1000.0))
                        .unwrap_or_else(|| "-".into());
                    [
                        name,
                        s(&m["ha"]),
                        s(&m["swim"]),
                        s(&m["power"]),
                        age,
                        s(&m["why"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let head = ["HOST", "HA", "GOSSIP", "POWER", "HEARTBEAT", "WHY"];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 6], ha_code: Option<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = if i == 5 {
                c.to_string()
            } else {
                format!("{c:<w$}  ", w = width[i])
            };
            match (i, ha_code) {
                (1, Some(code)) => l.push_str(&paint(colour, code, &pad)),
                _ => l.push_str(&pad),
            }
        }
        l.trim_end().to_owned() + "\n"
    };
    out.push_str(&line(head, None));
    for r in &rows {
        let cells = [
            r[0].as_str(),
            r[1].as_str(),
            r[2].as_str(),
            r[3].as_str(),
            r[4].as_str(),
            r[5].as_str(),
        ];
        out.push_str(&line(cells, Some(ha_colour(&r[1]))));
    }
    out
}

/// The `peerfence fences` list.
pub fn fences_table(v: &Value) -> String {
    let list = v["fences"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return format!("no fences known to {}\n", s(&v["node"]));
    }
    let mut out = String::new();
    for f in &list {
        let voters: Vec<String> = f["certificate"]["votes"]
            .as_array()
            .map(|a| a.iter().map(|v| s(&v["voter"])).collect())
            .unwrap_or_default();
        let confirmation = match &f["confirmation"] {
            Value::Null => String::new(),
            c => format!(
                ", confirmed by {}{}",
                s(&c["type"]),
                c["level"]
                    .as_str()
                    .map(|l| format!(" (level {l})"))
                    .unwrap_or_default()
            ),
        };
        let failed: Vec<String> = f["levels_failed"]
            .as_array()
            .map(|a| a.iter().map(|l| s(&l["level"])).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "{}  {} (boot {})  {}{}{}\n    proposed by {}{}, votes: {}{}{}\n",
            s(&f["first_seen"]),
            s(&f["target"]),
            s(&f["target_boot"]),
            s(&f["state"]),
            confirmation,
            f["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            s(&f["proposer"]),
            if f["executed_here"] == true {
                " (executed here)"
            } else {
                ""
            },
            if voters.is_empty() {
                "not seen by this host".to_owned()
            } else {
                voters.join(", ")
            },
            if failed.is_empty() {
                String::new()
            } else {
                format!(", levels failed: {}", failed.join(", "))
            },
            if f["safe_to_recover"] == true {
                ", safe to recover"
            } else {
                ""
            },
        ));
    }
    out
}

fn action_lines(v: &Value) -> String {
    let mut out = String::new();
    for e in v["events"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!("{}\n", s(&e["message"])));
    }
    if v["accepted"] == false {
        out.push_str("the daemon did not accept this request (see above)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_table_reads_at_a_glance() {
        let v = json!({
            "cluster": "prod",
            "summary": {"node": "n0", "members": 3, "quorum": 2, "visible": 2, "eligible": true,
                        "armed": false, "mode": "enforce", "storm": true, "budget": 3, "budget_used": 1,
                        "budget_window_s": 3600, "fences_in_flight": ["n2"]},
            "members": [
                {"name": "n0", "self": true, "ha": "available", "swim": "alive", "power": "on", "heartbeat_age_ms": 0, "why": "this host"},
                {"name": "n2", "self": false, "ha": "fencing", "swim": "down", "power": "unknown", "heartbeat_age_ms": 12400, "why": "a fence is in flight", "maintenance": true},
            ]
        });
        let t = status_table(&v, false);
        assert!(t.contains("DISARMED"), "{t}");
        assert!(t.contains("storm ON"), "{t}");
        assert!(t.contains("in flight: n2"), "{t}");
        assert!(t.contains("n0*"), "{t}");
        assert!(t.contains("n2 (maint)  fencing"), "{t}");
        assert!(t.contains("12.4s"), "{t}");
        assert!(!t.contains('\x1b'), "no colour off a terminal: {t}");
        assert!(status_table(&v, true).contains("\x1b[1;31m"));
    }

    #[test]
    fn host_names_are_checked_before_they_reach_a_url() {
        assert!(path_segment("n1.example").is_ok());
        assert!(path_segment("../v1/arm").is_err());
        assert!(path_segment("").is_err());
    }
}
