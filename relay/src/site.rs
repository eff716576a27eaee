//! The website behind a shared TLS port (`tls.site`): veil terminates TLS with the site's own
//! certificate chain and ALPN list, and every connection whose first plaintext is not a STUN
//! message is handed, bytes and all, to the site's upstream, which learns the client's address
//! from a PROXY protocol v2 header. The upstream is connected as soon as the client connects,
//! so its own timers (a silent client, a slow one) run from the moment they would without veil;
//! a TURN client's connection to it is closed unused. In strict mode only a first request
//! signed with a credential and the nonce issued with it is TURN's.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::proto::server::Shared;
use crate::proto::site::{
    FirstBytes, STRICT_MAX_MESSAGE, classify, proxy_v2, strict_admits, stun_len,
};
use crate::tls::TlsState;

/// Where the site is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteConfig {
    /// The site's own server, `host:port`.
    pub upstream: String,
    /// Whether it speaks TLS there (its certificate must be the one veil serves).
    pub tls: bool,
    /// Whether a PROXY protocol v2 header precedes each connection.
    pub proxy_v2: bool,
    /// ALPN protocols offered to clients, in the site's order of preference.
    pub alpn: Vec<Vec<u8>>,
    /// Strict mode: only a first request signed with a credential and its issued nonce is
    /// TURN's.
    pub strict: bool,
    /// Server names (lower case) whose connections go to the site untouched: veil never
    /// decrypts them (it holds no key for them).
    pub passthrough: Vec<String>,
}

/// A byte stream either way.
pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// The site of a node.
pub struct Site {
    cfg: SiteConfig,
    /// The TLS client toward the upstream (`tls: true`), trusting exactly the certificate veil
    /// serves.
    client: Option<Arc<rustls::ClientConfig>>,
    /// veil's own TLS on the port: which handshakes it can complete.
    tls: Arc<TlsState>,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site").field("cfg", &self.cfg).finish()
    }
}

impl Site {
    /// The site, with its upstream's certificate pinned to the one `tls` serves.
    pub fn new(cfg: SiteConfig, tls: &Arc<TlsState>) -> Result<Site, String> {
        let client = if cfg.tls {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(Pinned {
                tls: tls.clone(),
                provider: provider.clone(),
            });
            let c = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            Some(Arc::new(c))
        } else {
            None
        };
        Ok(Site {
            cfg,
            client,
            tls: tls.clone(),
        })
    }

    /// The ALPN list clients are offered.
    pub fn alpn(&self) -> &[Vec<u8>] {
        &self.cfg.alpn
    }

    /// A TCP connection to the upstream, with the PROXY header if configured.
    async fn connect_raw(&self, client: SocketAddr, local: SocketAddr) -> io::Result<TcpStream> {
        let mut tcp = TcpStream::connect(self.cfg.upstream.as_str()).await?;
        let _ = tcp.set_nodelay(true);
        if self.cfg.proxy_v2 {
            tcp.write_all(&proxy_v2(client, local)).await?;
        }
        Ok(tcp)
    }

    /// Continues a connection to the upstream (`raw`, opened when the client connected) with
    /// TLS, offering the server name and ALPN protocol the client's handshake settled on.
    pub async fn connect(
        &self,
        raw: TcpStream,
        sni: Option<&str>,
        alpn: Option<&[u8]>,
    ) -> io::Result<Box<dyn Io>> {
        let Some(base) = &self.client else {
            return Ok(Box::new(raw));
        };
        let mut cfg = (**base).clone();
        cfg.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
        let name = match sni {
            Some(n) => ServerName::try_from(n.to_owned()),
            None => ServerName::try_from(
                self.cfg
                    .upstream
                    .rsplit_once(':')
                    .map_or(self.cfg.upstream.as_str(), |h| h.0)
                    .trim_matches(['[', ']'])
                    .to_owned(),
            ),
        }
        .map_err(|e| io::Error::other(e.to_string()))?;
        let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, raw)
            .await?;
        Ok(Box::new(s))
    }

    /// Whether veil terminates a handshake with this ALPN offer: none, or one that shares a
    /// protocol with the site (negotiated as the site would), or in compat mode `stun.turn`.
    /// Any other offer goes to the site's own TLS server, which refuses it as it does (OpenSSL
    /// alerts before its ServerHello; rustls would send a ServerHello first).
    fn takes_alpn(&self, offer: Option<&[&[u8]]>) -> bool {
        let Some(offer) = offer else { return true };
        self.cfg.alpn.is_empty()
            || offer.iter().any(|p| self.cfg.alpn.iter().any(|s| s == p))
            || (!self.cfg.strict && offer.contains(&crate::tls::ALPN_STUN_TURN))
    }

    /// Whether the first STUN message in `read` is TURN's: always in compat mode; in strict
    /// mode once it is whole, if it is signed with a credential and its issued nonce. None:
    /// more bytes are needed to tell.
    fn admits(&self, core: &Shared, read: &[u8]) -> Option<bool> {
        if !self.cfg.strict {
            return Some(true);
        }
        let n = stun_len(read)?;
        if n > STRICT_MAX_MESSAGE {
            return Some(false);
        }
        if read.len() < n {
            return None;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Some(strict_admits(
            &read[..n],
            &core.live().credentials,
            &core.config.realm,
            now,
        ))
    }
}

/// Hands a connection to the upstream untouched, the bytes read so far first.
async fn pass(mut tcp: TcpStream, read: &[u8], up: Option<TcpStream>) -> Opened {
    let Some(mut up) = up else {
        return Opened::Done(false);
    };
    if up.write_all(read).await.is_err() {
        return Opened::Done(false);
    }
    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut up).await;
    Opened::Done(true)
}

/// Trusts exactly the leaf certificate veil serves: the upstream is the same site.
#[derive(Debug)]
struct Pinned {
    tls: Arc<TlsState>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.tls.leaf().as_ref() == end_entity.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the site's upstream presents another certificate than tls.cert".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a connection on the shared port is, before any TLS.
pub enum Opened {
    /// A ClientHello for a name veil serves: the handshake goes on over this stream, and the
    /// connection to the site opened meanwhile (none if it cannot be reached).
    Tls(Prefixed<TcpStream>, Option<TcpStream>),
    /// STUN without TLS, admitted: TURN over TCP.
    Turn(Prefixed<TcpStream>),
    /// Handed to the site untouched (true: a passthrough name, neither TLS nor STUN, STUN that
    /// strict mode does not admit, silence), or closed (false: before a byte, or the site
    /// unreachable).
    Done(bool),
}

/// Largest ClientHello read before the connection is left to the site.
const MAX_HELLO: usize = 16 * 1024;

/// What the first bytes say, as far as they go.
enum Verdict {
    More,
    Turn,
    Site,
    Tls,
}

/// Reads a connection's first bytes (all of a ClientHello, if it is TLS) and decides: STUN
/// (in strict mode, signed with an issued nonce) is TURN over TCP, a ClientHello for a
/// passthrough name or anything else goes to the site untouched (so the site answers it as it
/// would), and the rest is TLS for veil. The site is connected at once, so its own timers (a
/// silent client, a slow one) run from the moment they would without veil, and its close ends
/// the client's connection as it would; a TURN client's connection to it is closed unused.
/// With the site unreachable a silent client is closed at `first_by`.
pub async fn open(
    site: &Site,
    core: &Shared,
    mut tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    first_by: tokio::time::Instant,
) -> Opened {
    let mut read = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let mut hello = rustls::server::Acceptor::default();
    let mut fed = 0;
    let upstream = site.connect_raw(peer, local);
    tokio::pin!(upstream);
    let mut up: Option<TcpStream> = None;
    let mut unreachable = false;
    // The client closed after some bytes, before they said what they are.
    let mut closed = false;
    loop {
        let verdict = match classify(&read) {
            _ if closed => Verdict::Site,
            FirstBytes::Unknown => Verdict::More,
            FirstBytes::Stun => match site.admits(core, &read) {
                None => Verdict::More,
                Some(true) => Verdict::Turn,
                Some(false) => Verdict::Site,
            },
            FirstBytes::Other => Verdict::Site,
            FirstBytes::TlsHandshake => {
                let v = hello_verdict(site, &mut hello, &read[fed..]);
                fed = read.len();
                v
            }
        };
        match verdict {
            Verdict::Turn => return Opened::Turn(Prefixed::new(read, tcp)),
            Verdict::More if read.len() <= MAX_HELLO => {}
            v => {
                // The site's connection, if it is still being opened.
                if up.is_none() && !unreachable {
                    up = tokio::time::timeout_at(first_by, &mut upstream)
                        .await
                        .ok()
                        .and_then(Result::ok);
                }
                return match v {
                    Verdict::Tls => Opened::Tls(Prefixed::new(read, tcp), up),
                    _ => pass(tcp, &read, up).await,
                };
            }
        }
        tokio::select! {
            r = tcp.read(&mut buf) => match r {
                Ok(n) if n > 0 => read.extend_from_slice(&buf[..n]),
                // Closed before a byte: nothing to hand over (the site sees its connection
                // close, as it would).
                _ if read.is_empty() => return Opened::Done(false),
                // A close mid-hello: whatever the site does with it.
                _ => closed = true,
            },
            u = &mut upstream, if up.is_none() && !unreachable => match u {
                Ok(u) => up = Some(u),
                Err(e) => {
                    tracing::debug!(error = %e, "the site's upstream cannot be reached");
                    unreachable = true;
                }
            },
            // The site gave up on a client that did not finish its first bytes (its own
            // timeout): the client's connection closes with it, as it would; or the site spoke
            // first, and the connection is the site's.
            r = async { up.as_ref().expect("guarded").peek(&mut [0u8; 1]).await }, if up.is_some() => {
                return match r {
                    Ok(n) if n > 0 => pass(tcp, &read, up).await,
                    _ => Opened::Done(true),
                };
            }
            // Silence with no site to time it out.
            _ = tokio::time::sleep_until(first_by), if up.is_none() => {
                return pass(tcp, &read, None).await;
            }
        }
    }
}

/// What a TLS client's first bytes are, `fresh` being those not yet fed to `hello`: more is
/// needed; veil's to terminate; or the site's own TLS server's (a passthrough name, an ALPN offer
/// veil would refuse, no cipher suite in common such as a legacy TLS 1.2 CBC client, or
/// anything rustls does not take as a ClientHello), which answers it as it does.
fn hello_verdict(site: &Site, hello: &mut rustls::server::Acceptor, mut fresh: &[u8]) -> Verdict {
    while !fresh.is_empty() {
        match hello.read_tls(&mut fresh) {
            Ok(n) if n > 0 => {}
            _ => return Verdict::Site,
        }
    }
    match hello.accept() {
        Ok(Some(h)) => {
            let hello = h.client_hello();
            let name = hello.server_name().map(str::to_ascii_lowercase);
            let alpn: Option<Vec<&[u8]>> = hello.alpn().map(Iterator::collect);
            if name.is_some_and(|n| site.cfg.passthrough.contains(&n))
                || !site.takes_alpn(alpn.as_deref())
                || !site.tls.takes_suites(hello.cipher_suites())
            {
                Verdict::Site
            } else {
                Verdict::Tls
            }
        }
        Ok(None) => Verdict::More,
        Err(_) => Verdict::Site,
    }
}

/// Where a connection on the shared port goes.
pub enum Route<S> {
    /// TURN: the stream with the bytes already read in front.
    Turn(Prefixed<S>),
    /// Handed to the site (and finished there).
    Site,
    /// Closed before it was either (the site closed it, or it could not be reached).
    Closed,
}

/// Reads the client's first bytes while the connection to the site (`raw`, opened when the
/// client connected) does its TLS handshake: STUN (in strict mode, signed with an issued
/// nonce) stays with veil; anything else goes to the site. Whatever ALPN protocol was
/// negotiated: coturn's clients offer `http/1.1` before `stun.turn`, get `http/1.1` (as the
/// site would choose) and speak STUN. Anything the site sends first (or its close) reaches the
/// client at once, as it would without veil. With the site unreachable, TURN clients are still
/// served and the rest is closed (at `first_by` if silent).
pub async fn route<S: Io>(
    site: &Site,
    core: &Shared,
    mut client: S,
    raw: Option<TcpStream>,
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
    first_by: tokio::time::Instant,
) -> Route<S> {
    let upstream = async {
        match raw {
            Some(raw) => site.connect(raw, sni.as_deref(), alpn.as_deref()).await,
            None => Err(io::Error::other("the site was not reached")),
        }
    };
    let mut prefix = Vec::new();
    {
        tokio::pin!(upstream);
        let mut up: Option<Box<dyn Io>> = None;
        let mut unreachable = false;
        let mut buf = [0u8; 512];
        let mut ubuf = [0u8; 4096];
        let turn = loop {
            tokio::select! {
                r = client.read(&mut buf) => match r {
                    // Closed before a byte: the site sees its connection close too.
                    Ok(0) | Err(_) if prefix.is_empty() => return Route::Closed,
                    Ok(0) | Err(_) => break false,
                    Ok(n) => {
                        prefix.extend_from_slice(&buf[..n]);
                        match classify(&prefix) {
                            FirstBytes::Unknown if prefix.len() < 8 => continue,
                            FirstBytes::Stun => match site.admits(core, &prefix) {
                                None if prefix.len() <= STRICT_MAX_MESSAGE => continue,
                                Some(true) => break true,
                                _ => break false,
                            },
                            _ => break false,
                        }
                    }
                },
                u = &mut upstream, if up.is_none() && !unreachable => match u {
                    Ok(u) => up = Some(u),
                    Err(e) => {
                        tracing::debug!(error = %e, "the site's upstream cannot be reached");
                        unreachable = true;
                    }
                },
                _ = tokio::time::sleep_until(first_by), if up.is_none() => return Route::Closed,
                r = async { up.as_mut().expect("guarded").read(&mut ubuf).await }, if up.is_some() => {
                    match r {
                        Ok(n) if n > 0 => {
                            // The site spoke first: the connection is the site's.
                            if client.write_all(&ubuf[..n]).await.is_err() {
                                return Route::Closed;
                            }
                            break false;
                        }
                        // The site closed: with a close_notify if it sent one (nginx does
                        // not when its timer ends a connection), so the client sees the close
                        // the site would have given it.
                        Ok(_) => {
                            let _ = client.shutdown().await;
                            return Route::Closed;
                        }
                        Err(_) => return Route::Closed,
                    }
                }
            }
        };
        if turn {
            return Route::Turn(Prefixed::new(prefix, client));
        }
        let up = match up {
            Some(u) => u,
            None if unreachable => return Route::Closed,
            None => match upstream.await {
                Ok(u) => u,
                Err(_) => return Route::Closed,
            },
        };
        splice(client, up, &prefix).await;
        Route::Site
    }
}

/// Moves bytes both ways until both sides are done.
async fn splice<S: Io>(mut client: S, mut up: Box<dyn Io>, prefix: &[u8]) {
    if !prefix.is_empty() && up.write_all(prefix).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
}

/// A stream with bytes already read from it put back in front.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
