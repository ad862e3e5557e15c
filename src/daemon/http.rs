//! The HTTP API of every daemon (docs/API.md has every route and field).
//!
//! Reads — `GET /v1/cluster`, `/v1/fences`, `/v1/events` (Server-Sent Events), `/metrics`,
//! `/healthz`, `/readyz` and the dashboard at `/` — need no credential: they show what this
//! node believes and never a secret. Actions — arm, disarm, maintenance, manual fence — need a
//! bearer token from `http.token_file`; anything else gets 401 and changes nothing. An
//! accepted action is published as an `audit` event naming the token's name before the node
//! acts, so every change can be traced to a person.
//!
//! Handlers never touch the node: they send the node's task a [`Msg`] and wait (bounded) for
//! its answer, so a slow client can never delay the node, and a busy node answers 503.
//!
//! `POST /v1/local/self-fence-request` is CloudStack's heartbeat script asking for a
//! self-fence (`kvmheartbeat.sh -c`). It is taken only from this host (a loopback peer), and it
//! can only shorten the wait before the quorum is asked: the core still decides.

use super::events::{ApiEvent, EventLog};
use super::history::History;
use super::https::ClientCert;
use super::metrics::{Metrics, label};
use super::{Action, Msg};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

/// The dashboard: one self-contained page (no CDN, nothing fetched but this API).
const DASHBOARD: &str = include_str!("dashboard.html");

/// Largest request body accepted (actions carry a few bytes of JSON).
const BODY_LIMIT: usize = 4096;

/// Concurrent SSE streams per daemon; more get 503 (each holds a broadcast receiver).
pub const MAX_EVENT_STREAMS: usize = 64;

/// Bearer tokens that may act, by name.
#[derive(Default)]
pub struct Tokens(Vec<(String, String)>);

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Unreadable.
    #[error("http.token_file = {path:?}: cannot read it: {source}")]
    Read {
        /// File.
        path: String,
        /// Error.
        source: std::io::Error,
    },
    /// Readable by others.
    #[error("http.token_file = {0:?} can be read by other users (mode {1:o}); run `chmod 600 {0}`")]
    Mode(String, u32),
    /// Bad content.
    #[error("http.token_file = {path:?}, line {line}: {rule}")]
    Line {
        /// File.
        path: String,
        /// Line number (from 1).
        line: usize,
        /// What is wrong (never the token itself).
        rule: String,
    },
}

/// Shortest token accepted: guessing one must be hopeless.
pub const MIN_TOKEN_LEN: usize = 32;

impl Tokens {
    /// Reads `NAME TOKEN` lines (blank lines and `#` comments skipped). The file must not be
    /// readable by group or others, like every other secret of peerfence.
    pub fn load(path: &FsPath) -> Result<Self, TokenError> {
        use std::os::unix::fs::PermissionsExt;
        let p = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| TokenError::Read {
            path: p.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Mode(p, mode));
        }
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, rule)| TokenError::Line {
            path: p,
            line,
            rule,
        })
    }

    /// Parses the file's text; errors are `(line, rule)`.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut out = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(name), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err((
                    i + 1,
                    "must be `NAME TOKEN` (a name for the audit log, a space, the token)".into(),
                ));
            };
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
                || name.len() > 64
            {
                return Err((
                    i + 1,
                    format!(
                        "the name {name:?} may only use letters, digits and - _ . @ (at most 64)"
                    ),
                ));
            }
            if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err((
                    i + 1,
                    format!(
                        "the token of {name:?} must be at least {MIN_TOKEN_LEN} printable characters (e.g. `openssl rand -hex 32`)"
                    ),
                ));
            }
            out.push((name.to_owned(), token.to_owned()));
        }
        Ok(Self(out))
    }

    /// The token named `name`, or the first one: `(name, token)`.
    pub fn pick(&self, name: Option<&str>) -> Option<(&str, &str)> {
        self.0
            .iter()
            .find(|(n, _)| name.is_none_or(|want| want == n))
            .map(|(n, t)| (n.as_str(), t.as_str()))
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of the token presented, compared in constant time against every token.
    fn check(&self, presented: &str) -> Option<&str> {
        let mut found = None;
        for (name, token) in &self.0 {
            if ct_eq(token.as_bytes(), presented.as_bytes()) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// Constant-time comparison (for equal lengths; lengths are not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct Api {
    /// The node's task.
    pub tx: mpsc::Sender<Msg>,
    /// The event log.
    pub events: Arc<EventLog>,
    /// Fence history.
    pub history: Arc<Mutex<History>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Who may act.
    pub tokens: Arc<Tokens>,
    /// Open SSE streams.
    pub streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// The routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster))
        .route("/v1/fences", get(fences))
        .route("/v1/events", get(events))
        .route("/v1/arm", post(arm))
        .route("/v1/disarm", post(disarm))
        .route("/v1/hosts/{host}/maintenance", post(maintenance))
        .route("/v1/hosts/{host}/fence", post(manual_fence))
        .route("/v1/local/self-fence-request", post(self_fence_request))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(api)
}

/// Serves until the process ends: HTTPS when `tls` is given (docs/API.md), else plain HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    if let Some(tls) = tls {
        return super::https::serve(listener, tls, router(api)).await;
    }
    super::https::serve_plain(listener, router(api)).await;
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({"error": message.into()}))).into_response()
}

/// Asks the node's task a question and waits for its answer, 2 s at most each way. `Err` is the
/// 503 to give when the node is busy, stopping or slow.
async fn ask<T>(
    tx: &mpsc::Sender<Msg>,
    msg: impl FnOnce(oneshot::Sender<T>) -> Msg,
) -> Result<T, Response> {
    let (reply, answer) = oneshot::channel();
    let asked = tokio::time::timeout(Duration::from_secs(2), tx.send(msg(reply))).await;
    if !matches!(asked, Ok(Ok(()))) {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is busy or stopping; try again",
        ));
    }
    match tokio::time::timeout(Duration::from_secs(2), answer).await {
        Ok(Ok(v)) => Ok(v),
        _ => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node did not answer in time; try again",
        )),
    }
}

async fn dashboard() -> Response {
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            // The page loads nothing from anywhere else; this says so to the browser.
            "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src 'self' data:",
        )],
        Html(DASHBOARD),
    )
        .into_response()
}

async fn healthz(State(api): State<Api>) -> Response {
    // Alive means the node's task answers, not only that the HTTP thread runs.
    match ask(&api.tx, Msg::Status).await {
        Ok(_) => Json(json!({"ok": true})).into_response(),
        Err(e) => e,
    }
}

async fn readyz(State(api): State<Api>) -> Response {
    let s = match ask(&api.tx, Msg::Status).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let visible = s["summary"]["visible"].as_u64().unwrap_or(0);
    let size = s["summary"]["members"].as_u64().unwrap_or(0);
    // State is loaded before the endpoint opens; joined means someone else is seen.
    let joined = visible >= 2 || size == 1;
    let body = json!({"ready": joined, "state_loaded": true, "joined": joined, "visible": visible});
    if joined {
        Json(body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    match ask(&api.tx, Msg::Status).await {
        Ok(s) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            api.metrics.encode(s),
        )
            .into_response(),
        Err(e) => e,
    }
}

async fn cluster(State(api): State<Api>) -> Response {
    match ask(&api.tx, Msg::Status).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e,
    }
}

async fn fences(State(api): State<Api>) -> Response {
    let list = api.history.lock().unwrap_or_else(|p| p.into_inner()).list();
    Json(json!({"node": api.events.node(), "fences": list})).into_response()
}

fn sse_event(e: &ApiEvent) -> SseEvent {
    SseEvent::default()
        .id(e.seq.to_string())
        .event(e.kind)
        .json_data(e)
        .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"))
}

/// Decrements the stream count when a stream ends.
struct StreamSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn events(
    State(api): State<Api>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let since = match q.get("since").map(|s| s.parse::<u64>()) {
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "since must be an event seq number (an integer, 0 for everything buffered)",
            );
        }
        // A reconnecting EventSource sends the last id it saw.
        None => headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    };
    use std::sync::atomic::Ordering;
    if api.streams.fetch_add(1, Ordering::SeqCst) >= MAX_EVENT_STREAMS {
        api.streams.fetch_sub(1, Ordering::SeqCst);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_EVENT_STREAMS} event streams are open already; close one"),
        );
    }
    let slot = StreamSlot(api.streams.clone());
    let (old, rx) = api.events.replay_and_subscribe(since);
    let (first, _) = api.events.bounds();
    let mut head: Vec<SseEvent> = Vec::new();
    if let Some(s) = since
        && s + 1 < first
    {
        head.push(SseEvent::default().event("gap").data(format!(
            "events {} to {} are no longer buffered",
            s + 1,
            first - 1
        )));
    }
    head.extend(old.iter().map(|e| sse_event(e)));
    let state = (head.into_iter(), rx, slot);
    let stream = futures_util::stream::unfold(state, |(mut head, mut rx, slot)| async move {
        if let Some(e) = head.next() {
            return Some((Ok::<_, Infallible>(e), (head, rx, slot)));
        }
        let e = match rx.recv().await {
            Ok(e) => sse_event(&e),
            Err(broadcast::error::RecvError::Lagged(n)) => SseEvent::default().event("gap").data(
                format!("{n} events were skipped: this client read too slowly"),
            ),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(e), (head, rx, slot)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Who is asking, from the `Authorization: Bearer` header; `Err` is the 401 to give.
// The error is the response handed straight back to axum; boxing it would only add a move.
#[allow(clippy::result_large_err)]
fn authenticate(
    api: &Api,
    headers: &HeaderMap,
    peer: SocketAddr,
    cert: &Cert,
) -> Result<String, Response> {
    // A client certificate from the cluster CA, verified by the TLS handshake, is enough.
    if let Some(Extension(ClientCert(Some(name)))) = cert {
        return Ok(format!("cert:{name}"));
    }
    let refuse = |why: &str| {
        api.metrics.api_auth_failures.inc();
        tracing::warn!(%peer, "API action refused: {why}");
        let mut r = error(StatusCode::UNAUTHORIZED, why);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"peerfence\""),
        );
        r
    };
    if api.tokens.is_empty() {
        return Err(refuse(
            "actions are turned off on this host: no http.token_file is configured and no client certificate was presented (see docs/API.md)",
        ));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(refuse(
            "this action needs `Authorization: Bearer TOKEN` with a token from http.token_file",
        ));
    };
    match api.tokens.check(presented) {
        Some(name) => Ok(format!("token:{name}")),
        None => Err(refuse("the bearer token is not one of http.token_file's")),
    }
}

/// The client certificate of an HTTPS connection, if any.
type Cert = Option<Extension<ClientCert>>;

async fn act(
    api: Api,
    headers: HeaderMap,
    peer: SocketAddr,
    cert: Cert,
    action: Action,
) -> Response {
    let by = match authenticate(&api, &headers, peer, &cert) {
        Ok(by) => by,
        Err(r) => return r,
    };
    let name = action.name();
    match ask(&api.tx, |reply| Msg::Action {
        action,
        by: by.clone(),
        remote: peer,
        reply,
    })
    .await
    {
        Ok(Ok(events)) => {
            api.metrics
                .api_actions
                .get_or_create(&label("action", name))
                .inc();
            let accepted = !events.iter().any(|e| {
                (e.kind == "manual_fence" && e.details["accepted"] == false)
                    || e.kind == "flag_refused"
            });
            let events: Vec<&ApiEvent> = events.iter().map(|e| e.as_ref()).collect();
            Json(json!({"accepted": accepted, "action": name, "by": by, "events": events}))
                .into_response()
        }
        Ok(Err((code, message))) => error(code, message),
        Err(e) => e,
    }
}

async fn arm(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    cert: Cert,
    headers: HeaderMap,
) -> Response {
    act(api, headers, peer, cert, Action::Arm).await
}

async fn disarm(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    cert: Cert,
    headers: HeaderMap,
) -> Response {
    act(api, headers, peer, cert, Action::Disarm).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    on: bool,
}

async fn maintenance(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(host): Path<String>,
    cert: Cert,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // Authenticate before looking at the body: a stranger learns nothing from its errors.
    if let Err(r) = authenticate(&api, &headers, peer, &cert) {
        return r;
    }
    let on = match serde_json::from_slice::<MaintenanceBody>(&body) {
        Ok(b) => b.on,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"on\": true}} or {{\"on\": false}} ({e})"),
            );
        }
    };
    act(api, headers, peer, cert, Action::Maintenance { host, on }).await
}

async fn manual_fence(
    State(api): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(host): Path<String>,
    cert: Cert,
    headers: HeaderMap,
) -> Response {
    act(api, headers, peer, cert, Action::Fence { host }).await
}

async fn self_fence_request(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(api): State<Api>,
) -> Response {
    if !peer.ip().is_loopback() {
        tracing::warn!(%peer, "self-fence request from another host refused");
        return (
            StatusCode::FORBIDDEN,
            "a self-fence request is only taken from this host (loopback)",
        )
            .into_response();
    }
    match ask(&api.tx, Msg::SelfFenceRequest).await {
        Ok(a) => {
            tracing::warn!(accepted = a.accepted(), answer = ?a, "local self-fence request (CloudStack heartbeat -c)");
            Json(json!({
                "accepted": a.accepted(),
                "answer": a,
                "reason": a.explain(),
            }))
            .into_response()
        }
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_rules() {
        let good = format!(
            "# ops\nalice {}\n\nbob {}\n",
            "a".repeat(32),
            "b".repeat(40)
        );
        let t = Tokens::parse(&good).unwrap();
        assert_eq!(t.check(&"a".repeat(32)), Some("alice"));
        assert_eq!(t.check(&"b".repeat(40)), Some("bob"));
        assert_eq!(t.check(&"a".repeat(31)), None);
        assert_eq!(t.check(""), None);
        let (line, rule) = Tokens::parse("alice short").err().unwrap();
        assert_eq!(line, 1);
        assert!(rule.contains("at least 32"), "{rule}");
        assert!(
            !rule.contains("short"),
            "the token never appears in errors: {rule}"
        );
        assert!(Tokens::parse(&format!("onlytoken{}", "x".repeat(40))).is_err());
        assert!(Tokens::parse(&format!("bad/name {}", "x".repeat(40))).is_err());
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a real file, to check its mode
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pf-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tokens");
        std::fs::write(&f, format!("alice {}\n", "a".repeat(32))).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Tokens::load(&f).err().unwrap().to_string();
        assert!(e.contains("chmod 600") && e.contains("644"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Tokens::load(&f).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
