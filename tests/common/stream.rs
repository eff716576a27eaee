//! A TCP or TLS connection to the relay that the webrtc-rs `turn` client uses as its socket,
//! with a tap of every byte it reads (what an observer between client and relay sees).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use veil_relay::proto::framing::frame_len;
use webrtc_util::Conn;

/// Every byte the client reads off the wire, as an observer between client and relay sees it.
#[derive(Default, Clone)]
pub struct Wire(pub Arc<Mutex<Vec<u8>>>);

/// A TCP stream that copies what it reads into a [`Wire`].
pub struct Tapped {
    inner: TcpStream,
    wire: Wire,
}

impl AsyncRead for Tapped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let new = buf.filled()[before..].to_vec();
        self.wire.0.lock().unwrap().extend_from_slice(&new);
        r
    }
}

impl AsyncWrite for Tapped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Gives the webrtc-rs client a stream as if it were a datagram socket: each `send_to` writes
/// one frame (ChannelData padded to 4, RFC 8656 §12.5), each `recv_from` returns one frame.
pub struct StreamConn {
    reader: tokio::sync::Mutex<(Reader, Vec<u8>)>,
    writer: tokio::sync::Mutex<Writer>,
    server: SocketAddr,
    pub local: SocketAddr,
    /// Kinds of what arrived: (first two bytes, frame length).
    pub received: Arc<Mutex<Vec<(u16, usize)>>>,
    /// While set, nothing is read from the stream (a client that stopped reading).
    pub paused: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl Conn for StreamConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        while self.paused.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut guard = self.reader.lock().await;
        let (rd, pending) = &mut *guard;
        loop {
            let n = frame_len(pending).map_err(|e| {
                webrtc_util::Error::Other(format!("bad stream from the relay: {e}"))
            })?;
            if let Some(n) = n {
                let frame: Vec<u8> = pending.drain(..n).collect();
                self.received
                    .lock()
                    .unwrap()
                    .push((u16::from_be_bytes([frame[0], frame[1]]), n));
                buf[..n].copy_from_slice(&frame);
                return Ok((n, self.server));
            }
            let mut chunk = [0u8; 4096];
            let got = rd.read(&mut chunk).await?;
            if got == 0 {
                return Err(webrtc_util::Error::Other("relay closed the stream".into()));
            }
            pending.extend_from_slice(&chunk[..got]);
        }
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.send_to(buf, self.server).await
    }
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        let mut frame = buf.to_vec();
        if buf[0] >> 6 == 1 {
            frame.resize((buf.len() + 3) & !3, 0);
        }
        let mut w = self.writer.lock().await;
        w.write_all(&frame).await?;
        w.flush().await?;
        Ok(buf.len())
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.server)
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Connects over TCP, or TLS trusting `cert` and offering ALPN `stun.turn`; returns the
/// connection, what the observer sees, the frames' kinds and the negotiated ALPN.
pub async fn connect(
    server: SocketAddr,
    tls_cert: Option<&std::path::Path>,
) -> (
    StreamConn,
    Wire,
    Arc<Mutex<Vec<(u16, usize)>>>,
    Option<Vec<u8>>,
) {
    connect_with(server, tls_cert, false).await
}

/// Connects over TCP (with a small receive buffer when `small_window`, so that a client that
/// stops reading stalls the relay quickly), or TLS trusting `cert` and offering ALPN
/// `stun.turn`; returns the connection, what the observer sees, the frames' kinds and the
/// negotiated ALPN.
pub async fn connect_with(
    server: SocketAddr,
    tls_cert: Option<&std::path::Path>,
    small_window: bool,
) -> (
    StreamConn,
    Wire,
    Arc<Mutex<Vec<(u16, usize)>>>,
    Option<Vec<u8>>,
) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if small_window {
        sock.set_recv_buffer_size(4096).unwrap();
    }
    let tcp = sock.connect(server).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let wire = Wire::default();
    let tapped = Tapped {
        inner: tcp,
        wire: wire.clone(),
    };
    let (reader, writer, alpn): (Reader, Writer, _) = match tls_cert {
        None => {
            let (r, w) = tokio::io::split(tapped);
            (Box::new(r), Box::new(w), None)
        }
        Some(cert) => {
            use tokio_rustls::rustls;
            let cfg = tls_client_config(cert, &[b"stun.turn"]);
            let conn = tokio_rustls::TlsConnector::from(cfg);
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let s = conn.connect(name, tapped).await.expect("TLS handshake");
            let alpn = s.get_ref().1.alpn_protocol().map(|p| p.to_vec());
            let version = s.get_ref().1.protocol_version();
            assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
            let (r, w) = tokio::io::split(s);
            (Box::new(r), Box::new(w), alpn)
        }
    };
    let received = Arc::new(Mutex::new(Vec::new()));
    (
        StreamConn {
            reader: tokio::sync::Mutex::new((reader, Vec::new())),
            writer: tokio::sync::Mutex::new(writer),
            server,
            local,
            received: received.clone(),
            paused: Arc::default(),
        },
        wire,
        received,
        alpn,
    )
}

/// A TLS client (TLS 1.3 and 1.2) that trusts exactly `cert` (PEM) and offers `alpn`.
pub fn tls_client_config(
    cert: &std::path::Path,
    alpn: &[&[u8]],
) -> Arc<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(cert).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}
