//! HTTPS for the API (`http.tls = true`): the member's own certificate, TLS 1.3, and client
//! certificates from the cluster CA as the second way to authenticate actions (besides bearer
//! tokens). A client certificate is optional for reads; an action presented with one is
//! audited as `cert:NAME`, NAME being the certificate's DNS name (`peerfence certs issue --id
//! alice` makes one for a person).
//!
//! axum's own `serve` has no TLS (nor a connection cap or header timeout), so connections are
//! accepted here, for HTTPS and plain HTTP alike ([`serve_plain`]): at most [`MAX_CONNECTIONS`]
//! run at once (more wait in the kernel's accept queue, costing the daemon no descriptor), a TLS
//! handshake is bounded by [`HANDSHAKE_TIMEOUT`], a request's headers by
//! [`HEADER_READ_TIMEOUT`], and a connection serves one request (no keep-alive), so no client
//! can hold descriptors by sitting idle or dripping headers: without these, about 1,100 idle
//! connections at a limit of 1,024 descriptors made the daemon's own heartbeat writes fail.

use super::certs::{CertError, load_certs, load_key, load_roots};
use axum::Router;
use axum::extract::ConnectInfo;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Time a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// API connections (HTTP or HTTPS) served at once; more wait in the kernel's backlog. Event
/// streams ([`super::http::MAX_EVENT_STREAMS`]) count among them.
pub const MAX_CONNECTIONS: usize = 128;
/// Time a client has to send a request's headers; a connection that sends none is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Who presented a verified client certificate on this connection (a request extension).
#[derive(Debug, Clone)]
pub struct ClientCert(pub Option<String>);

/// The server side: this member's certificate; client certificates verified against the
/// cluster CA when presented.
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = load_roots(ca)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    // Reads need no credential, so a browser without a certificate may connect.
    .allow_unauthenticated()
    .build()
    .map_err(|e| CertError::Tls(e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CertError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| CertError::Tls(e.to_string()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// The DNS name of a verified client certificate (for the audit log only: the chain was
/// already verified against the cluster CA by the handshake).
fn cert_name(conn: &rustls::ServerConnection) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let name = cert.valid_dns_names().next()?.to_owned();
    Some(name)
}

/// One accepted connection, TLS or not: a single request, headers within
/// [`HEADER_READ_TIMEOUT`].
async fn serve_connection<I>(io: I, app: Router, remote: std::net::SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let io = hyper_util::rt::TokioIo::new(io);
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false)
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(%remote, error = %e, "API connection ended");
    }
}

/// Serves plain HTTP until the process ends, with the limits of the module docs.
pub async fn serve_plain(listener: tokio::net::TcpListener, app: Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone().layer(axum::Extension(ConnectInfo(remote)));
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(tcp, app, remote).await;
        });
    }
}

/// Serves HTTPS until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, app: Router) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "HTTPS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "HTTPS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let who = ClientCert(cert_name(tls.get_ref().1));
            let app = app
                .layer(axum::Extension(who))
                .layer(axum::Extension(ConnectInfo(remote)));
            serve_connection(tls, app, remote).await;
        });
    }
}
