//! The cluster CA, member certificates, vote keys, and the TLS configurations built from them.
//!
//! One CA per cluster signs every member's certificate; the certificate's DNS name is the
//! member's name. Both ends of every QUIC connection present a certificate and verify the other
//! against the CA (mutual TLS, TLS 1.3 only, no 0-RTT). A connection's member identity is the
//! configured member whose name the verified certificate is valid for; the core then drops any
//! message whose claimed sender differs from it.
//!
//! Secrets (the CA key, member keys, vote keys) are written with mode 0600 and never logged.

use crate::crypto::VoteKey;
use peerfence_proto::MemberId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// ALPN of peerfence's QUIC connections.
pub const ALPN: &[u8] = b"peerfence/1";

/// A certificate or key problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file exists where a new one would be written.
    #[error(
        "{0} already exists; refusing to overwrite it (remove it first if you mean to replace it)"
    )]
    Exists(PathBuf),
    /// A file does not hold what it should.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Generating or signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to a new file (never overwriting) with `mode`.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    if path.exists() {
        return Err(CertError::Exists(path.to_owned()));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn gen_err(e: rcgen::Error) -> CertError {
    CertError::Generate(e.to_string())
}

/// File layout of a certificate directory.
pub struct CertDir(pub PathBuf);

impl CertDir {
    /// `ca.crt`.
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.crt")
    }
    /// `ca.key` (0600).
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    /// `cluster` (the cluster name the CA was made for).
    pub fn cluster(&self) -> PathBuf {
        self.0.join("cluster")
    }
    /// `ID.crt`.
    pub fn node_cert(&self, id: &str) -> PathBuf {
        self.0.join(format!("{id}.crt"))
    }
    /// `ID.key` (0600).
    pub fn node_key(&self, id: &str) -> PathBuf {
        self.0.join(format!("{id}.key"))
    }
    /// `ID.vote.key` (0600).
    pub fn vote_key(&self, id: &str) -> PathBuf {
        self.0.join(format!("{id}.vote.key"))
    }
}

fn ca_params(cluster: &str) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("peerfence CA {cluster}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// `peerfence certs init`: creates the cluster CA in `dir`. Returns the files written.
pub fn init_ca(dir: &Path, cluster: &str) -> Result<Vec<PathBuf>, CertError> {
    peerfence_proto::ClusterId::new(cluster).map_err(|e| CertError::Invalid {
        path: dir.to_owned(),
        what: e.to_string(),
    })?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let d = CertDir(dir.to_owned());
    for p in [d.ca_cert(), d.ca_key(), d.cluster()] {
        if p.exists() {
            return Err(CertError::Exists(p));
        }
    }
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = ca_params(cluster)?.self_signed(&key).map_err(gen_err)?;
    write_new(&d.ca_key(), key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&d.ca_cert(), cert.pem().as_bytes(), 0o644)?;
    write_new(&d.cluster(), format!("{cluster}\n").as_bytes(), 0o644)?;
    Ok(vec![d.ca_cert(), d.ca_key(), d.cluster()])
}

/// What `certs issue` produced.
pub struct Issued {
    /// Files written.
    pub files: Vec<PathBuf>,
    /// The member's public vote key, hex, for `cluster.members[].vote_key`.
    pub vote_public: String,
}

/// `peerfence certs issue`: a certificate and key for member `id`, signed by the CA in `dir`,
/// and the member's vote key.
pub fn issue(dir: &Path, id: &str) -> Result<Issued, CertError> {
    if !crate::config::valid_member_name(id) {
        return Err(CertError::Invalid {
            path: dir.to_owned(),
            what: format!(
                "member name {id:?} must be a DNS name: 1 to 63 bytes of letters, digits, '-' and '.'"
            ),
        });
    }
    let d = CertDir(dir.to_owned());
    for p in [d.node_cert(id), d.node_key(id), d.vote_key(id)] {
        if p.exists() {
            return Err(CertError::Exists(p));
        }
    }
    let cluster = read(&d.cluster())?.trim().to_owned();
    let ca_key = KeyPair::from_pem(&read(&d.ca_key())?).map_err(|e| CertError::Invalid {
        path: d.ca_key(),
        what: format!("not a private key: {e}"),
    })?;
    let issuer = Issuer::new(ca_params(&cluster)?, ca_key);
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::new(vec![id.to_owned()]).map_err(gen_err)?;
    params.distinguished_name.push(DnType::CommonName, id);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| CertError::Generate(e.to_string()))?;
    let vote = VoteKey::from_secret(secret);
    let vote_hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    write_new(&d.node_key(id), key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&d.node_cert(id), cert.pem().as_bytes(), 0o644)?;
    write_new(&d.vote_key(id), format!("{vote_hex}\n").as_bytes(), 0o600)?;
    Ok(Issued {
        files: vec![d.node_cert(id), d.node_key(id), d.vote_key(id)],
        vote_public: vote.public().0.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// Refuses a secret file that others can read.
pub fn check_private(path: &Path) -> Result<(), CertError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(CertError::Invalid {
            path: path.to_owned(),
            what: format!(
                "holds a secret but has mode {:o}; run `chmod 600 {}`",
                mode & 0o777,
                path.display()
            ),
        });
    }
    Ok(())
}

/// Loads a vote key file (hex secret, mode 0600).
pub fn load_vote_key(path: &Path) -> Result<VoteKey, CertError> {
    check_private(path)?;
    let text = read(path)?;
    let hex = text.trim();
    let mut secret = [0u8; 32];
    let ok = hex.len() == 64
        && hex
            .as_bytes()
            .chunks(2)
            .zip(secret.iter_mut())
            .all(|(pair, out)| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
                    .map(|b| *out = b)
                    .is_some()
            });
    if !ok {
        return Err(CertError::Invalid {
            path: path.to_owned(),
            what:
                "must hold 64 hex digits (an ed25519 secret, as written by `peerfence certs issue`)"
                    .into(),
        });
    }
    Ok(VoteKey::from_secret(secret))
}

pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let text = read(path)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut text.as_bytes()).collect();
    let certs = certs.map_err(|e| CertError::Invalid {
        path: path.to_owned(),
        what: format!("not a PEM certificate: {e}"),
    })?;
    if certs.is_empty() {
        return Err(CertError::Invalid {
            path: path.to_owned(),
            what: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    check_private(path)?;
    let text = read(path)?;
    rustls_pemfile::private_key(&mut text.as_bytes())
        .map_err(|e| CertError::Invalid {
            path: path.to_owned(),
            what: format!("not a PEM private key: {e}"),
        })?
        .ok_or_else(|| CertError::Invalid {
            path: path.to_owned(),
            what: "holds no private key".into(),
        })
}

/// The cluster CA as a trust store.
pub(crate) fn load_roots(ca: &Path) -> Result<rustls::RootCertStore, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| CertError::Invalid {
            path: ca.to_owned(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// TLS material of one member, ready for QUIC.
#[derive(Clone)]
pub struct Tls {
    /// Server side (accepts members of this CA only).
    pub server: Arc<rustls::ServerConfig>,
    /// Client side (presents our certificate, trusts this CA only).
    pub client: Arc<rustls::ClientConfig>,
    /// Member names by id, to identify peers from their certificates.
    names: Arc<Vec<String>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tls({} members)", self.names.len())
    }
}

impl Tls {
    /// Builds both configurations from PEM files. `names` are the member names in id order.
    pub fn load(ca: &Path, cert: &Path, key: &Path, names: Vec<String>) -> Result<Self, CertError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(load_roots(ca)?);
        let chain = load_certs(cert)?;
        let key = load_key(key)?;
        let tls = |e: rustls::Error| CertError::Tls(e.to_string());
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| CertError::Tls(e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(tls)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        // No 0-RTT: replayable early data has no place in a fencing protocol.
        server.max_early_data_size = 0;
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(tls)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.enable_early_data = false;
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
            names: Arc::new(names),
        })
    }

    /// The member a peer's (already verified) certificate names, if any.
    pub fn identify(&self, chain: &[CertificateDer<'_>]) -> Option<MemberId> {
        let leaf = chain.first()?;
        let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
        self.names.iter().enumerate().find_map(|(i, name)| {
            let server_name = ServerName::try_from(name.as_str()).ok()?;
            cert.verify_is_valid_for_subject_name(&server_name)
                .ok()
                .map(|_| MemberId(i as u16))
        })
    }

    /// Member name by id (for connecting to it).
    pub fn name(&self, id: MemberId) -> Option<&str> {
        self.names.get(id.index()).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pf-certs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn init_issue_load_identify() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmp("ok");
        init_ca(&dir, "test").unwrap();
        assert!(
            matches!(init_ca(&dir, "test"), Err(CertError::Exists(_))),
            "never overwrites"
        );
        let a = issue(&dir, "kvm01").unwrap();
        issue(&dir, "kvm02").unwrap();
        assert_eq!(a.vote_public.len(), 64);
        let d = CertDir(dir.clone());
        for secret in [d.ca_key(), d.node_key("kvm01"), d.vote_key("kvm01")] {
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", secret.display());
        }
        let vote = load_vote_key(&d.vote_key("kvm01")).unwrap();
        assert_eq!(
            vote.public()
                .0
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            a.vote_public
        );
        let names = vec!["kvm01".to_string(), "kvm02".to_string()];
        let tls = Tls::load(
            &d.ca_cert(),
            &d.node_cert("kvm01"),
            &d.node_key("kvm01"),
            names.clone(),
        )
        .unwrap();
        let chain = load_certs(&d.node_cert("kvm02")).unwrap();
        assert_eq!(tls.identify(&chain), Some(MemberId(1)));
        let own = load_certs(&d.node_cert("kvm01")).unwrap();
        assert_eq!(tls.identify(&own), Some(MemberId(0)));
        // A key others can read is refused, naming the fix.
        std::fs::set_permissions(d.node_key("kvm01"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let err = Tls::load(
            &d.ca_cert(),
            &d.node_cert("kvm01"),
            &d.node_key("kvm01"),
            names,
        )
        .unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn names_must_be_dns_names() {
        let dir = tmp("names");
        init_ca(&dir, "test").unwrap();
        assert!(issue(&dir, "bad_name").is_err());
        assert!(issue(&dir, "-x").is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
