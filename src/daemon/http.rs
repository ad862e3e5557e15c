//! The status endpoint: `GET /v1/cluster` returns this node's view of the cluster as JSON.
//! Read-only; the handler asks the node's task for a snapshot and never touches the node.

use super::Msg;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Serves until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, tx: mpsc::Sender<Msg>) {
    let app = Router::new()
        .route("/v1/cluster", get(cluster))
        .with_state(tx);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "status endpoint stopped");
    }
}

async fn cluster(State(tx): State<mpsc::Sender<Msg>>) -> Response {
    let (reply, answer) = oneshot::channel();
    let asked = tokio::time::timeout(Duration::from_secs(2), tx.send(Msg::Status(reply))).await;
    if !matches!(asked, Ok(Ok(()))) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is busy or stopping; try again",
        )
            .into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), answer).await {
        Ok(Ok(v)) => Json(v).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the node did not answer in time; try again",
        )
            .into_response(),
    }
}
