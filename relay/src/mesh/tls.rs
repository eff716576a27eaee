//! The link's TLS and QUIC settings: TLS 1.3 with the ring provider, each side's certificate
//! checked against the cluster CA (a relay without one, or with another CA's, never links), the
//! peer's name checked in its certificate both ways; QUIC with its packet size pinned, path-MTU
//! probing, connection migration and the spin bit off, and QUIC's congestion response replaced
//! by a fixed window (the link's own scheduler sets the rate; its breaker stops a path that
//! cannot carry it).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::{Controller, ControllerFactory};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::MeshConfig;
use crate::proto::mesh::QUIC_PACKET;
use crate::proto::mesh::cell::CELL_SIZE;

/// The link's ALPN.
const ALPN: &[u8] = b"veil-mesh/1";

/// The QUIC configurations built from the certificate files.
pub(super) struct Creds {
    pub(super) server: quinn::ServerConfig,
    pub(super) client: quinn::ClientConfig,
    /// The CA's trust anchors, to name inbound peers.
    roots: Arc<rustls::RootCertStore>,
}

fn read_pem_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn transport(cfg: &MeshConfig) -> Result<Arc<quinn::TransportConfig>, String> {
    let mut t = quinn::TransportConfig::default();
    t.initial_mtu(QUIC_PACKET)
        .min_mtu(QUIC_PACKET)
        .mtu_discovery_config(None)
        .pad_to_mtu(true)
        .allow_spin(false)
        .max_idle_timeout(Some(
            cfg.idle_timeout
                .try_into()
                .map_err(|_| "mesh.idle_timeout is too long".to_string())?,
        ))
        .keep_alive_interval(Some(cfg.idle_timeout / 3))
        // Announcements only: one unidirectional stream each way.
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(1u32.into())
        .datagram_receive_buffer_size(Some(1024 * CELL_SIZE))
        // Acknowledgements ride on the cells (one leaves every few ms) instead of leaving as
        // packets of their own every other packet received (RFC 9000's default), which would
        // add packets to the link at a rate of QUIC's choosing. The peer is asked to wait for
        // 64 packets or 25 ms, by which time a cell carried them.
        .ack_frequency_config(Some({
            let mut a = quinn::AckFrequencyConfig::default();
            a.ack_eliciting_threshold(64u32.into())
                .max_ack_delay(Some(Duration::from_millis(25)));
            a
        }))
        // One cell per send: with segmentation offload, cells owed at one timer tick leave as
        // one super-packet that loopback (and a capture on a GSO-capable interface) shows at
        // twice the size; on the wire they are the same 1 280 bytes either way.
        .enable_segmentation_offload(false);
    if cfg.congestion == super::Congestion::Fixed {
        // A cell waits for the wire no longer than a few cells: never seconds in a buffer.
        t.datagram_send_buffer_size(8 * CELL_SIZE)
            .congestion_controller_factory(Arc::new(FixedWindow));
    }
    Ok(Arc::new(t))
}

impl Creds {
    /// Reads the files and builds both sides' configurations; checks that this relay's own
    /// certificate is valid for its name under the CA, so that a mistake shows at start.
    pub(super) fn load(cfg: &MeshConfig) -> Result<Creds, String> {
        let chain = read_pem_certs(&cfg.cert, "mesh.tls.cert")?;
        let key = PrivateKeyDer::from_pem_file(&cfg.key)
            .map_err(|_| format!("mesh.tls.key {}: no usable private key", cfg.key.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in read_pem_certs(&cfg.ca, "mesh.tls.ca")? {
            roots
                .add(c)
                .map_err(|e| format!("mesh.tls.ca {}: {e}", cfg.ca.display()))?;
        }
        let roots = Arc::new(roots);
        verify_named(&roots, &chain, &cfg.name).map_err(|e| {
            format!(
                "mesh.tls.cert {} is not valid for mesh.name `{}` under mesh.tls.ca: {e}",
                cfg.cert.display(),
                cfg.name
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("mesh.tls.ca: {e}"))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("mesh.tls.key: {e}"))?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.send_tls13_tickets = 0;
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("mesh.tls.key: {e}"))?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.resumption = rustls::client::Resumption::disabled();
        let transport = transport(cfg)?;
        let server_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(|e| e.to_string())?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone()).migration(false);
        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(|e| e.to_string())?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);
        Ok(Creds {
            server,
            client,
            roots,
        })
    }

    /// Which of `names` the peer's certificate (already checked against the CA by the
    /// handshake) is valid for.
    pub(super) fn peer_name<'a>(
        &self,
        conn: &quinn::Connection,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Option<&'a str> {
        let identity = conn.peer_identity()?;
        let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
        names
            .into_iter()
            .find(|n| verify_named(&self.roots, &chain, n).is_ok())
    }
}

/// Checks a chain against the CA and a DNS name, now.
fn verify_named(
    roots: &rustls::RootCertStore,
    chain: &[CertificateDer<'_>],
    name: &str,
) -> Result<(), String> {
    let (leaf, rest) = chain.split_first().ok_or("an empty chain")?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| e.to_string())?;
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let now = UnixTime::now();
    // Valid as a client certificate (inbound) or a server one (our own, dialled).
    let usages = [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ];
    let mut last = String::new();
    let ok = usages.iter().any(|u| {
        match ee.verify_for_usage(algs.all, &roots.roots, rest, now, *u, None, None) {
            Ok(_) => true,
            Err(e) => {
                last = e.to_string();
                false
            }
        }
    });
    if !ok {
        return Err(last);
    }
    let name = ServerName::try_from(name).map_err(|e| e.to_string())?;
    ee.verify_is_valid_for_subject_name(&name)
        .map_err(|e| e.to_string())
}

/// QUIC's congestion window held fixed and large: quinn never holds a cell back for
/// congestion, so the rate an observer sees is the scheduler's, not a controller's reaction to
/// the calls. What protects the path instead is the link's breaker.
struct FixedWindow;

/// The window: 16 MiB, what 12 800 cells per second fill in about 1 s.
const WINDOW: u64 = 16 << 20;

impl ControllerFactory for FixedWindow {
    fn build(self: Arc<Self>, _now: std::time::Instant, _mtu: u16) -> Box<dyn Controller> {
        Box::new(Fixed)
    }
}

#[derive(Clone)]
struct Fixed;

impl Controller for Fixed {
    fn on_congestion_event(
        &mut self,
        _now: std::time::Instant,
        _sent: std::time::Instant,
        _persistent: bool,
        _lost_bytes: u64,
    ) {
    }
    fn on_mtu_update(&mut self, _mtu: u16) {}
    fn window(&self) -> u64 {
        WINDOW
    }
    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }
    fn initial_window(&self) -> u64 {
        WINDOW
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

/// How long a dial may take.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
