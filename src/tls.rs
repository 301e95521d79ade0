//! rustls configurations from PEM files: the listener's (ALPN h2 + http/1.1, TLS 1.2/1.3,
//! optional client certificates; built again on every config reload) and the client's (upstreams and key
//! servers: platform roots plus an optional CA file, optional client certificate).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Whether the listener asks for client certificates, and which it trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A certificate chaining to `client_ca` on every connection.
    Required,
    /// A certificate chaining to `client_ca`, or none.
    Optional,
    /// Any certificate, self-signed included, or none: only its thumbprint matters, for tokens
    /// bound to it (RFC 8705 §2.2). The handshake still proves the client holds its key.
    Any,
}

/// An extra certificate served to clients that ask for one of `names` by SNI.
#[derive(Debug, Clone)]
pub struct SniCert {
    /// Lowercase DNS names; `*.example.com` matches one label.
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The listener's certificates and client-certificate rule.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    /// The default certificate: for clients without SNI or with a name no `sni` entry has.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sni: Vec<SniCert>,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

#[derive(Debug, Clone)]
pub struct ServerTlsConfig {
    pub files: ServerTlsFiles,
    pub handshake_timeout: Duration,
    /// Built from `files` when the config was loaded (a reload loads them again), so a bad
    /// certificate fails `check` and a reload, never a handshake.
    pub built: Arc<ServerConfig>,
}

/// A client certificate and key offered to a peer.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // The process-wide provider when installed (app::start does), else aws-lc-rs: the same
    // library jsonwebtoken verifies signatures with.
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Why a TLS config could not be built; every variant names its file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}", path.display())]
    Read { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{}: no CERTIFICATE in the file", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no usable private key", path.display())]
    Key { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("{}: bad CA certificate", path.display())]
    Ca { path: PathBuf, source: rustls::Error },
    #[error("{}: cannot check client certificates against it", path.display())]
    ClientCa { path: PathBuf, source: rustls::server::VerifierBuilderError },
    #[error("{} and {} do not make a certificate and its key", cert.display(), key.display())]
    Pair { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("TLS versions")]
    Versions(#[source] rustls::Error),
}

pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read { path: path.to_path_buf(), source };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path).map_err(read)?.collect::<Result<_, _>>().map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

/// PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Key { path: path.to_path_buf(), source })
}

/// `roots` plus every certificate of the CA file at `path`.
fn add_roots(mut roots: RootCertStore, path: &Path) -> Result<RootCertStore, TlsError> {
    for c in load_certs(path)? {
        roots.add(c).map_err(|source| TlsError::Ca { path: path.to_path_buf(), source })?;
    }
    Ok(roots)
}

fn certified(cert: &Path, key: &Path) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let k = rustls::sign::CertifiedKey::from_der(load_certs(cert)?, load_key(key)?, &provider())
        .map_err(|source| TlsError::Pair { cert: cert.to_path_buf(), key: key.to_path_buf(), source })?;
    Ok(Arc::new(k))
}

/// Picks the certificate by SNI: exact name, then a one-label wildcard, then the default.
#[derive(Debug)]
struct BySni {
    default: Arc<rustls::sign::CertifiedKey>,
    named: Vec<(String, Arc<rustls::sign::CertifiedKey>)>,
}

impl BySni {
    fn pick(&self, sni: Option<&str>) -> Arc<rustls::sign::CertifiedKey> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else { return self.default.clone() };
        let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        let find = |n: &str| self.named.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        find(&name).or_else(|| wildcard.as_deref().and_then(find)).unwrap_or_else(|| self.default.clone())
    }
}

impl rustls::server::ResolvesServerCert for BySni {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// `client_auth = "any"`: asks every client for a certificate and takes whichever it sends, or
/// none. Nothing is trusted by it; a token bound to the certificate's thumbprint is what it
/// serves. The handshake's signature is still checked, so the client holds the private key.
#[derive(Debug)]
struct AnyClientCert {
    schemes: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.schemes)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.schemes)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.supported_schemes()
    }
}

/// Builds the listener's config; every failure names the file.
pub(crate) fn server_config(c: &ServerTlsFiles) -> Result<ServerConfig, TlsError> {
    let mut named = Vec::new();
    for s in &c.sni {
        let k = certified(&s.cert, &s.key)?;
        named.extend(s.names.iter().map(|n| (n.clone(), k.clone())));
    }
    let resolver = Arc::new(BySni { default: certified(&c.cert, &c.key)?, named });
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Versions)?;
    let builder = match &c.client_ca {
        None if c.client_auth == ClientAuth::Any => {
            let schemes = provider().signature_verification_algorithms;
            builder.with_client_cert_verifier(Arc::new(AnyClientCert { schemes }))
        }
        Some(ca) => {
            let roots = add_roots(RootCertStore::empty(), ca)?;
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let v = match c.client_auth {
                ClientAuth::Required => v.build(),
                ClientAuth::Optional | ClientAuth::Any => v.allow_unauthenticated().build(),
            };
            builder
                .with_client_cert_verifier(v.map_err(|source| TlsError::ClientCa { path: ca.to_path_buf(), source })?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A client TLS config, built from files the config names. It compares equal to any other, so
/// the settings around it can derive `PartialEq`: whether it must be built again is decided by
/// those files, which a reload compares by their stamps (`Config::changed`).
#[derive(Clone)]
pub struct ClientTls(pub ClientConfig);

impl PartialEq for ClientTls {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls(..)")
    }
}

/// Client config: platform roots plus `ca_file`, and an optional client certificate.
pub(crate) fn client_config(ca_file: Option<&Path>, identity: Option<&Identity>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if let Some(ca) = ca_file {
        roots = add_roots(roots, ca)?;
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Versions)?
        .with_root_certificates(roots);
    match identity {
        Some(id) => builder
            .with_client_auth_cert(load_certs(&id.cert)?, load_key(&id.key)?)
            .map_err(|source| TlsError::Pair { cert: id.cert.clone(), key: id.key.clone(), source }),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// A client config with no roots, for connectors that only ever speak plain http (a plain-http
/// upstream, the probe): it satisfies the connector's type and trusts nothing.
pub(crate) fn unused_client_config() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

/// An HTTPS-or-HTTP connector for hyper-util's client.
pub(crate) fn https_connector(
    tls: ClientConfig,
    http2: bool,
    connect_timeout: Option<Duration>,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(connect_timeout);
    let b = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    if http2 {
        b.enable_all_versions().wrap_connector(http)
    } else {
        b.enable_http1().wrap_connector(http)
    }
}
