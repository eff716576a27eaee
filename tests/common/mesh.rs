//! Relays of a mesh for the cross-process tests: certificates made by `veil mesh-certs` (and
//! hostile ones made here with rcgen), config files, the real binary; and the shape of a call
//! across two relays driven by [`super::RawTurn`] clients. Loopback only; every wait bounded.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::wire::Packet;
use super::{
    RawTurn, Relay, SECRET, TempDir, free_tcp_addr, free_udp_port, http_get, metric, wait_ready,
};

/// Makes a CA and certificates for `names` in `dir` with the binary's own command.
pub fn certs(dir: &Path, names: &[&str]) {
    let st = Command::new(env!("CARGO_BIN_EXE_veil"))
        .arg("mesh-certs")
        .arg("--dir")
        .arg(dir)
        .arg("--names")
        .arg(names.join(","))
        .stdout(Stdio::null())
        .status()
        .expect("veil mesh-certs runs");
    assert!(st.success());
}

/// A relay of a test mesh.
pub struct NodeSpec<'a> {
    pub name: &'a str,
    /// The IP its relayed sockets bind to (each node its own, as on separate hosts).
    pub relay_ip: &'a str,
    pub ports: &'a str,
    /// Other nodes: (name, link address).
    pub peers: Vec<(&'a str, String)>,
    /// Its mesh endpoint: IP and port.
    pub mesh_ip: &'a str,
    pub mesh_port: u16,
    /// Certificate directory and the file stem of its certificate (normally its name).
    pub cert_dir: &'a Path,
    pub cert_stem: &'a str,
    /// Extra lines under `mesh:` (indented by two spaces), e.g. `  fallback: refuse`.
    pub mesh_extra: &'a str,
    /// Runs the binary through `ip netns exec NS`.
    pub netns: Option<&'a str>,
    /// No `mesh:` section: a relay of the same cluster that is not linked (a baseline).
    pub no_mesh: bool,
    /// `peers.allow` of the relay (the peers clients may reach).
    pub allow: &'a str,
    /// More top-level YAML (e.g. `limits:` for a load).
    pub top_extra: &'a str,
}

impl<'a> NodeSpec<'a> {
    pub fn new(name: &'a str, relay_ip: &'a str, ports: &'a str, cert_dir: &'a Path) -> Self {
        NodeSpec {
            name,
            relay_ip,
            ports,
            peers: vec![],
            mesh_ip: "127.0.0.1",
            mesh_port: free_udp_port(),
            cert_dir,
            cert_stem: name,
            mesh_extra: "",
            netns: None,
            no_mesh: false,
            allow: "127.0.0.0/8",
            top_extra: "",
        }
    }
}

/// A running mesh node.
pub struct MeshNode {
    pub relay: Relay,
    pub admin: SocketAddr,
    pub mesh_port: u16,
    pub config: PathBuf,
}

impl MeshNode {
    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").1
    }

    pub fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics(), series).unwrap_or_else(|| panic!("no series {series}"))
    }

    /// Waits up to `secs` for `series` to satisfy `ok`; returns its last value.
    pub fn wait_for(&self, series: &str, secs: u64, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let v = metric(&self.metrics(), series).unwrap_or(f64::NAN);
            if ok(v) || std::time::Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn link_up(&self, peer: &str) -> bool {
        self.metric(&format!("veil_relay_mesh_link_up{{link=\"{peer}\"}}")) == 1.0
    }
}

/// Writes a node's config file: its path, the directory holding it (and the secret file), the
/// TURN address and the admin address it names.
pub fn write_config(spec: &NodeSpec<'_>) -> (PathBuf, TempDir, SocketAddr, SocketAddr) {
    let dir = std::env::temp_dir().join(format!(
        "veil-mesh-{}-{}-{}",
        std::process::id(),
        spec.name,
        spec.mesh_port
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let secrets = dir.join("secrets");
    std::fs::write(&secrets, format!("{SECRET}\n")).unwrap();
    let port = free_udp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin = free_tcp_addr();
    let c = spec.cert_dir;
    let peers: Vec<String> = spec
        .peers
        .iter()
        .map(|(n, l)| format!("    - {{name: {n}, link: \"{l}\"}}"))
        .collect();
    let mut yaml = format!(
        "listen: [\"{addr}\"]\nrelay_ips: [\"{ip}\"]\nport_range: \"{ports}\"\nworkers: 2\n\
         admin: \"{admin}\"\nzone: {name}-zone\nauth: {{secret_files: [\"{secrets}\"]}}\n\
         peers: {{allow: [{allow}]}}\n",
        allow = spec.allow,
        ip = spec.relay_ip,
        ports = spec.ports,
        name = spec.name,
        secrets = secrets.display(),
    );
    yaml += spec.top_extra;
    if !spec.no_mesh {
        yaml += &format!(
            "mesh:\n  listen: \"{mesh_ip}:{mesh}\"\n  name: {name}\n  tls:\n    cert: \"{cert}\"\n    \
             key: \"{key}\"\n    ca: \"{ca}\"\n  peers:\n{peers}\n{extra}\n",
            name = spec.name,
            mesh_ip = spec.mesh_ip,
            mesh = spec.mesh_port,
            cert = c.join(format!("{}.crt", spec.cert_stem)).display(),
            key = c.join(format!("{}.key", spec.cert_stem)).display(),
            ca = c.join("mesh-ca.crt").display(),
            peers = if peers.is_empty() {
                "    []".to_string()
            } else {
                peers.join("\n")
            },
            extra = spec.mesh_extra,
        );
    }
    let config = dir.join("relay.yaml");
    std::fs::write(&config, yaml).unwrap();
    (config, TempDir(dir), addr, admin)
}

/// Writes the node's config and starts it; waits until it answers STUN.
pub fn start_node(spec: &NodeSpec<'_>) -> MeshNode {
    let (config, dir, addr, admin) = write_config(spec);
    let mut cmd = match spec.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_veil")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_veil")),
    };
    cmd.arg("relay")
        .arg("--config")
        .arg(&config)
        // VEIL_TEST_LOG=info shows what the relays say when a test fails.
        .env(
            "RUST_LOG",
            std::env::var("VEIL_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null());
    let child = cmd.spawn().expect("veil binary runs");
    let relay = Relay { child, addr, dir };
    if spec.netns.is_none() {
        wait_ready(addr);
    }
    MeshNode {
        relay,
        admin,
        mesh_port: spec.mesh_port,
        config,
    }
}

/// Starts two linked nodes, `a` dialling `b`, and waits until the link is up both ways.
pub fn start_pair(
    certs_dir: &Path,
    a: (&str, &str),
    b: (&str, &str),
    extra: &str,
) -> (MeshNode, MeshNode) {
    let (sa, sb) = pair_specs(
        certs_dir,
        (a.0, a.1, "127.0.0.1"),
        (b.0, b.1, "127.0.0.1"),
        extra,
    );
    start_specs(&sa, &sb)
}

/// The specs of two linked nodes: (relay IP, port range, mesh IP) each.
pub fn pair_specs<'a>(
    certs_dir: &'a Path,
    a: (&'a str, &'a str, &'a str),
    b: (&'a str, &'a str, &'a str),
    extra: &'a str,
) -> (NodeSpec<'a>, NodeSpec<'a>) {
    let mut sa = NodeSpec::new("relay-a", a.0, a.1, certs_dir);
    let mut sb = NodeSpec::new("relay-b", b.0, b.1, certs_dir);
    sa.mesh_ip = a.2;
    sb.mesh_ip = b.2;
    sa.peers = vec![("relay-b", format!("{}:{}", sb.mesh_ip, sb.mesh_port))];
    sb.peers = vec![("relay-a", format!("{}:{}", sa.mesh_ip, sa.mesh_port))];
    sa.mesh_extra = extra;
    sb.mesh_extra = extra;
    (sa, sb)
}

/// Starts both and waits until their link is up both ways.
pub fn start_specs(sa: &NodeSpec<'_>, sb: &NodeSpec<'_>) -> (MeshNode, MeshNode) {
    let na = start_node(sa);
    let nb = start_node(sb);
    let up = |n: &MeshNode, p: &str| {
        n.wait_for(
            &format!("veil_relay_mesh_link_up{{link=\"{p}\"}}"),
            10,
            |v| v == 1.0,
        ) == 1.0
    };
    assert!(
        up(&na, "relay-b") && up(&nb, "relay-a"),
        "the link comes up"
    );
    (na, nb)
}

/// A network namespace of the test's own, with `lo` up, deleted on drop. Code run in it
/// ([`Netns::run`]) and the processes and threads it starts see only its loopback.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("veil-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add needs root");
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n NS args…`, asserting success.
    pub fn ip(&self, args: &[&str]) {
        let ok = Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "ip {args:?}");
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                use std::os::fd::AsRawFd;
                let f_ns = std::fs::File::open(&path).unwrap();
                // SAFETY: setns on a namespace fd this thread opened; it moves only this thread.
                let r = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// Makes every packet to `ip` fail (a route rule that prohibits it), or lets it through
    /// again: a cut that leaves every other address of the loopback working.
    pub fn cut(&self, ip: &str, cut: bool) {
        let to = format!("{ip}/32");
        let verb = if cut { "add" } else { "del" };
        self.ip(&["rule", verb, "pref", "10", "to", &to, "prohibit"]);
    }

    /// Moves the local table's rule behind room for [`Netns::cut`] rules.
    pub fn allow_cuts(&self) {
        self.ip(&["rule", "add", "pref", "100", "lookup", "local"]);
        self.ip(&["rule", "del", "pref", "0"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A hostile relay: a QUIC client speaking the link protocol with whatever certificate the test
/// gives it (or none).
pub mod rogue {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use veil_relay::proto::mesh::Endpoint;
    use veil_relay::proto::mesh::announce::Announce;
    use veil_relay::proto::mesh::cell::CELL_SIZE;
    use veil_relay::proto::mesh::sched::{LinkConfig, LinkScheduler};

    /// Connects from `bind` to a relay's link endpoint as `server_name` expects, presenting
    /// `identity` (certificate and key files) or no certificate; trusts `ca`.
    pub async fn connect(
        bind: &str,
        to: SocketAddr,
        server_name: &str,
        ca: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<(quinn::Endpoint, quinn::Connection), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
        let mut tls = match identity {
            Some((cert, key)) => {
                let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect();
                b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                    .unwrap()
            }
            None => b.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![b"veil-mesh/1".to_vec()];
        let mut t = quinn::TransportConfig::default();
        t.initial_mtu(1280).min_mtu(1280).mtu_discovery_config(None);
        let mut cfg = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        ));
        cfg.transport_config(Arc::new(t));
        let ep = quinn::Endpoint::client(bind.parse().unwrap()).map_err(|e| e.to_string())?;
        let connecting = ep
            .connect_with(cfg, to, server_name)
            .map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(Duration::from_secs(4), connecting)
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok((ep, conn))
    }

    /// Sends our announcement and reads the relay's. Fails when the relay closes instead.
    pub async fn announce(conn: &quinn::Connection, ours: &Announce) -> Result<Announce, String> {
        let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
        s.write_all(&ours.encode().unwrap())
            .await
            .map_err(|e| e.to_string())?;
        s.finish().map_err(|e| e.to_string())?;
        let mut r = tokio::time::timeout(Duration::from_secs(4), conn.accept_uni())
            .await
            .map_err(|_| "no announcement".to_string())?
            .map_err(|e| e.to_string())?;
        let b = r.read_to_end(4096).await.map_err(|e| e.to_string())?;
        Announce::decode(&b).map_err(|e| e.to_string())
    }

    /// Sends datagrams (source endpoint, destination endpoint, payload) in cells.
    pub fn send(conn: &quinn::Connection, datagrams: &[(Endpoint, Endpoint, Vec<u8>)]) {
        let t0 = Instant::now();
        let mut s = LinkScheduler::new(
            LinkConfig {
                rates: vec![1000],
                max_delay: Duration::from_secs(10),
                ..LinkConfig::default()
            },
            t0,
        );
        for (src, dst, p) in datagrams {
            s.push(t0, *src, *dst, p).unwrap();
        }
        let mut cell = vec![0u8; CELL_SIZE];
        let mut now = t0;
        while s.queued() > 0 {
            while s.poll_cell(now, &mut cell) {
                conn.send_datagram(bytes::Bytes::copy_from_slice(&cell))
                    .unwrap();
            }
            now += Duration::from_millis(1);
        }
    }
}

/// A client allocated on `node` with a credential for the node's zone (each test node serves
/// `<name>-zone`, which credentials must name): the client and its relayed address.
pub fn party(node: &MeshNode, id: &str) -> (RawTurn, SocketAddr) {
    let zone = http_get(node.admin, "/status").1;
    let zone: serde_json::Value = serde_json::from_str(&zone).unwrap();
    let id = format!("{id};z={}", zone["zone"].as_str().unwrap());
    let mut c = RawTurn::rest("127.0.0.1:0", node.relay.addr, &id);
    let relayed = c.allocate();
    (c, relayed)
}

/// UDP datagrams captured between IPs `a` and `b`, either way.
pub fn udp_between(packets: &[Packet], a: &str, b: &str) -> usize {
    packets
        .iter()
        .filter(|p| !p.tcp)
        .filter(|p| {
            let (s, d) = (p.src.ip().to_string(), p.dst.ip().to_string());
            (s == a && d == b) || (s == b && d == a)
        })
        .count()
}
