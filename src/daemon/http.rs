//! The status endpoint: `GET /v1/cluster` returns this node's view of the cluster as JSON.
//! Read-only; the handler asks the node's task for a snapshot and never touches the node.
//!
//! `POST /v1/local/self-fence-request` is CloudStack's heartbeat script asking for a
//! self-fence (`kvmheartbeat.sh -c`). It is taken only from this host (a loopback peer), and it
//! can only shorten the wait before the quorum is asked: the core still decides.

use super::Msg;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Serves until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, tx: mpsc::Sender<Msg>) {
    let app = Router::new()
        .route("/v1/cluster", get(cluster))
        .route("/v1/local/self-fence-request", post(self_fence_request))
        .with_state(tx);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "status endpoint stopped");
    }
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
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is busy or stopping; try again",
        )
            .into_response());
    }
    match tokio::time::timeout(Duration::from_secs(2), answer).await {
        Ok(Ok(v)) => Ok(v),
        _ => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the node did not answer in time; try again",
        )
            .into_response()),
    }
}

async fn cluster(State(tx): State<mpsc::Sender<Msg>>) -> Response {
    match ask(&tx, Msg::Status).await {
        Ok(v) => Json(v).into_response(),
        Err(unavailable) => unavailable,
    }
}

async fn self_fence_request(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(tx): State<mpsc::Sender<Msg>>,
) -> Response {
    if !peer.ip().is_loopback() {
        tracing::warn!(%peer, "self-fence request from another host refused");
        return (
            StatusCode::FORBIDDEN,
            "a self-fence request is only taken from this host (loopback)",
        )
            .into_response();
    }
    match ask(&tx, Msg::SelfFenceRequest).await {
        Ok(a) => {
            tracing::warn!(accepted = a.accepted(), answer = ?a, "local self-fence request (CloudStack heartbeat -c)");
            Json(serde_json::json!({
                "accepted": a.accepted(),
                "answer": a,
                "reason": a.explain(),
            }))
            .into_response()
        }
        Err(unavailable) => unavailable,
    }
}
