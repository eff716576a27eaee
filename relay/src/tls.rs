//! TLS for TURN over TLS (`turns:`, RFC 8656 §3.1): rustls with the ring provider, TLS 1.3 by
//! default (1.2 only when configured), ALPN `stun.turn` (RFC 7443) selected when the client
//! offers it and ignored otherwise, and a certificate that can be replaced while connections
//! go on (new handshakes use the new one).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

/// The ALPN protocol id of STUN/TURN over TLS (RFC 7443).
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";

/// Reads a PEM certificate chain and its private key.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match()
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(ck)
}

/// The certificate in force, swapped by [`TlsState::reload`].
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// How a node's TLS is set up.
#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    /// Also TLS 1.2.
    pub tls12: bool,
    /// The ALPN list of a site sharing the port (empty: none).
    pub site_alpn: &'a [Vec<u8>],
    /// Whether `stun.turn` is selected for a client that offers it and nothing of the site's.
    pub turn_alpn: bool,
    /// TLS 1.3 tickets sent after a handshake (0: no resumption).
    pub tickets: usize,
}

/// A node's TLS setup.
pub struct TlsState {
    cert: PathBuf,
    key: PathBuf,
    resolver: Arc<Resolver>,
    /// For clients that offer `stun.turn` (and nothing the site speaks): it is selected; none
    /// on a strict shared port, which answers such an offer as the site does (an alert).
    with_alpn: Option<Arc<rustls::ServerConfig>>,
    /// For clients that offer no ALPN or others (a browser's `turns:` on 443 may offer none):
    /// nothing is selected, the handshake goes on. With a site (`tls.site`), the site's ALPN
    /// list, selected as the site would.
    without_alpn: Arc<rustls::ServerConfig>,
    /// The site's ALPN list: a client offering any of it never gets `stun.turn`.
    site_alpn: Vec<Vec<u8>>,
    /// The cipher suites a handshake can use (TLS 1.2 ones only when 1.2 is on).
    suites: Vec<rustls::CipherSuite>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl TlsState {
    /// Loads the certificate and builds the configs.
    pub fn new(cert: &Path, key: &Path, o: Options<'_>) -> Result<Arc<TlsState>, String> {
        let ck = load_certified_key(cert, key)?;
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(ck))));
        let versions: &[&'static rustls::SupportedProtocolVersion] = if o.tls12 {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let build = |alpn: bool| -> Result<Arc<rustls::ServerConfig>, String> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut c = rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            if alpn {
                c.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
            } else {
                c.alpn_protocols = o.site_alpn.to_vec();
            }
            // No resumption by default: a ticket or session id would link a client's
            // connections across networks, and a TURN connection lives long enough that a full
            // handshake is cheap. A site that sends tickets is matched when configured.
            c.send_tls13_tickets = o.tickets;
            c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            if o.tickets > 0 {
                c.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
            }
            Ok(Arc::new(c))
        };
        Ok(Arc::new(TlsState {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            with_alpn: o.turn_alpn.then(|| build(true)).transpose()?,
            without_alpn: build(false)?,
            site_alpn: o.site_alpn.to_vec(),
            suites: rustls::crypto::ring::default_provider()
                .cipher_suites
                .iter()
                .filter(|s| o.tls12 || s.version() == &rustls::version::TLS13)
                .map(|s| s.suite())
                .collect(),
            resolver,
        }))
    }

    /// Whether a client offering `offered` can complete a handshake here (one suite in
    /// common).
    pub fn takes_suites(&self, offered: &[rustls::CipherSuite]) -> bool {
        offered.iter().any(|s| self.suites.contains(s))
    }

    /// The leaf certificate served now.
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.resolver
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cert[0]
            .clone()
    }

    /// The files to watch for changes.
    pub fn files(&self) -> [&Path; 2] {
        [&self.cert, &self.key]
    }

    /// Reads the certificate and key again; on error the current ones stay.
    pub fn reload(&self) -> Result<(), String> {
        let ck = load_certified_key(&self.cert, &self.key)?;
        *self.resolver.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        Ok(())
    }

    /// Runs the server handshake on an accepted connection.
    pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        tcp: IO,
    ) -> io::Result<TlsStream<IO>> {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        let hello = start.client_hello();
        let offers = |want: &dyn Fn(&[u8]) -> bool| hello.alpn().is_some_and(|mut p| p.any(want));
        // Never `stun.turn` when the client also offers what the site speaks.
        let offers_site = offers(&|p| self.site_alpn.iter().any(|s| s == p));
        let offers_turn = offers(&|p| p == ALPN_STUN_TURN);
        let config = match &self.with_alpn {
            Some(turn) if offers_turn && !offers_site => turn.clone(),
            _ => self.without_alpn.clone(),
        };
        start.into_stream(config).await
    }
}
