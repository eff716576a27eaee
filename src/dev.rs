//! `veil dev`: a local cluster in one command, on loopback, with nothing to download.
//!
//! Three relay nodes (zones `eu`, `us`, `apac` on TURN ports P, P+1, P+2), each with its admin
//! endpoint, and an allocator whose residency policy sends clients in the EU (the jurisdiction,
//! not the continent) to `eu`, Asian and Oceanian ones to `apac` and everyone else to `us`,
//! geolocating with the embedded demo DB
//! (127.0.1.0/24 is DE, 127.0.2.0/24 US, 127.0.3.0/24 JP, ...). A fresh random REST secret and
//! API key are made for the run. It prints a banner for people and `VEIL_*=` lines for scripts.
//! Loopback peers are allowed so local echo peers work.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use veil_allocator::service::{AllocatorConfig, ApiKey, App, RelayEntry};
use veil_geo::policy::{DistanceModel, Match, PolicyConfig, Rule, Zone};
use veil_relay::admin::AdminState;
use veil_relay::config::{
    AuthConfig, LogFormat, MeshPeer, MeshSettings, MeshTls, PortRange, RelayConfig, parse_secrets,
};
use veil_relay::proto::auth::{mint_username, username_with_claims};

/// One relay of the dev cluster: zone, relay name, location, relayed ports, relayed IP.
type DevRelay = (&'static str, &'static str, (f64, f64), (u16, u16), [u8; 4]);

/// Each relay relays on its own loopback IP, as relays on separate hosts do: the mesh routes by
/// relayed address, and a relay refuses other ports on its own IPs.
const ZONES: [DevRelay; 3] = [
    ("eu", "eu-1", (50.11, 8.68), (20000, 20999), [127, 0, 0, 11]),
    (
        "us",
        "us-1",
        (39.04, -77.49),
        (21000, 21999),
        [127, 0, 0, 12],
    ),
    (
        "apac",
        "apac-1",
        (35.68, 139.69),
        (22000, 22999),
        [127, 0, 0, 13],
    ),
];

#[derive(Args)]
pub struct DevArgs {
    /// TURN port of the eu relay; the us and apac relays take the next ones.
    #[arg(long, default_value_t = 3478)]
    turn_port: u16,
    /// Admin port of the eu relay; the us and apac relays take the next ones.
    #[arg(long, default_value_t = 9478)]
    admin_port: u16,
    /// The allocator's HTTP port.
    #[arg(long, default_value_t = 8480)]
    api_port: u16,
    /// Worker threads per relay.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Link (QUIC) port of the eu relay's mesh endpoint; the us and apac relays take the next
    /// ones.
    #[arg(long, default_value_t = 3579)]
    mesh_port: u16,
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    // The OS RNG; a failure leaves zeros, which the length checks still accept for a dev run.
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Where the example echo peer runs: a loopback address that is not the relays' (127.0.0.1),
/// since a relay reaches nothing but relayed ports on its own address.
const PEER_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

/// A port p on [`PEER_IP`] for the example echo peer: p and p + 1 free now for UDP and TCP
/// (coturn's uclient sends its RTCP leg to the peer's port + 1), and neither a TURN port of the
/// cluster (so that a printed command cannot be misread as naming a relay).
fn free_peer_port(turn_port: u16) -> u16 {
    let free = |p: u16| {
        std::net::UdpSocket::bind((PEER_IP, p)).is_ok()
            && std::net::TcpListener::bind((PEER_IP, p)).is_ok()
    };
    let turn = turn_port..turn_port.saturating_add(ZONES.len() as u16);
    (turn_port.saturating_add(10)..u16::MAX - 1)
        .chain(10_000..turn_port)
        .find(|p| !turn.contains(p) && !turn.contains(&(p + 1)) && free(*p) && free(p + 1))
        .unwrap_or(0)
}

pub fn run(a: DevArgs) -> Result<()> {
    crate::init_logging(LogFormat::Text);
    let dir = std::env::temp_dir().join(format!("veil-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret_file: PathBuf = dir.join("turn-secrets");
    std::fs::write(&secret_file, format!("{}\n", random_hex(24)))?;
    let api_key = format!("dev-{}", random_hex(12));
    let lo = [127, 0, 0, 1];
    // The allocator keeps an audit trail signed with a key made for this run.
    let audit_key = dir.join("audit.key");
    let (key_file, audit_public) = veil_trail::keygen()?;
    std::fs::write(&audit_key, key_file)?;

    // The mesh: a CA made for this run, and a certificate per relay.
    let ca = crate::mesh_certs::Ca::create(&dir)?;
    let mesh_peer = |j: usize| MeshPeer {
        name: ZONES[j].1.into(),
        link: format!("127.0.0.1:{}", a.mesh_port + j as u16),
        relay_ranges: vec![],
    };

    let mut nodes = Vec::new();
    let mut admins = Vec::new();
    for (i, zone, ports, relay_ip) in ZONES
        .iter()
        .enumerate()
        .map(|(i, (z, _, _, p, ip))| (i as u16, *z, *p, *ip))
    {
        let name = ZONES[usize::from(i)].1;
        let issued = ca.issue(&dir, name, 30)?;
        let cfg = RelayConfig {
            relay_ips: vec![relay_ip.into()],
            mesh: Some(MeshSettings {
                listen: SocketAddr::from((lo, a.mesh_port + i)),
                name: name.into(),
                tls: MeshTls {
                    cert: Some(issued.cert),
                    key: Some(issued.key),
                    ca: Some(ca.cert_path.clone()),
                },
                peers: (0..ZONES.len())
                    .filter(|&j| j != usize::from(i))
                    .map(mesh_peer)
                    .collect(),
                ..MeshSettings::default()
            }),
            listen: vec![SocketAddr::from((lo, a.turn_port + i))],
            listen_tcp: vec![SocketAddr::from((lo, a.turn_port + i))],
            zone: Some(zone.into()),
            port_range: PortRange {
                start: ports.0,
                end: ports.1,
            },
            auth: AuthConfig {
                secret_files: vec![secret_file.clone()],
                ..AuthConfig::default()
            },
            peers: veil_relay::config::Peers {
                allow: vec!["127.0.0.0/8".parse()?],
                ..Default::default()
            },
            workers: a.workers,
            admin: Some(SocketAddr::from((lo, a.admin_port + i))),
            ..RelayConfig::default()
        };
        let resolved = cfg.resolve()?;
        let (node, shared) = crate::start_node(&resolved)?;
        admins.push((
            resolved.admin.unwrap_or(SocketAddr::from((lo, 0))),
            AdminState::new(
                shared,
                &node.endpoints,
                Some((node.reports.clone(), node.port_range.len())),
                Some(node.health.clone()),
                node.mesh.as_ref().map(|m| m.status()),
            ),
        ));
        nodes.push(node);
    }
    let relay = |name: &str, admin: SocketAddr, lat: f64, lon: f64| RelayEntry {
        name: name.into(),
        admin: admin.to_string(),
        dns: false,
        latitude: Some(lat),
        longitude: Some(lon),
    };
    let api = SocketAddr::from((lo, a.api_port));
    let cfg = AllocatorConfig {
        connections: Default::default(),
        listen: api,
        metrics_listen: None,
        api_keys: vec![ApiKey {
            key: api_key.clone(),
            backend: true,
            requests_per_second: 100,
            client_requests_per_second: None,
            client_allocations: 64,
        }],
        secret_files: vec![secret_file.clone()],
        ttl: 600,
        geo_db: None,
        policy: PolicyConfig {
            zones: ZONES
                .iter()
                .map(|(z, r, _, _, _)| {
                    (
                        z.to_string(),
                        Zone {
                            relays: vec![r.to_string()],
                        },
                    )
                })
                .collect(),
            groups: Default::default(),
            rules: std::iter::once(Rule {
                matches: Match {
                    group: Some("EU".into()),
                    ..Match::default()
                },
                zones: vec!["eu".into()],
            })
            .chain(
                [("AS", "apac"), ("OC", "apac")]
                    .into_iter()
                    .map(|(continent, zone)| Rule {
                        matches: Match {
                            continent: Some(continent.into()),
                            ..Match::default()
                        },
                        zones: vec![zone.into()],
                    }),
            )
            .collect(),
            default: vec!["us".into()],
            unknown: None,
        },
        distance: DistanceModel::default(),
        relays: ZONES
            .iter()
            .enumerate()
            .map(|(i, (_, r, (lat, lon), _, _))| relay(r, admins[i].0, *lat, *lon))
            .collect(),
        trusted_proxies: vec![],
        poll_interval_ms: 500,
        down_after: 3,
        up_after: 1,
        audit_retention_hours: 24,
        audit: veil_trail::Settings {
            dir: Some(dir.join("trail")),
            signing_key_file: Some(audit_key.clone()),
            retention_days: 1,
        },
    };
    let app = App::new(cfg)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    app.start_trail(now)
        .context("the allocator's audit trail")?;
    let trail_dir = dir.join("trail").display().to_string();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for (addr, state) in admins {
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("admin endpoint on {addr}"))?;
            let mut rx = rx.clone();
            tasks.push(tokio::spawn(async move {
                veil_relay::admin::serve(listener, state, async move {
                    let _ = rx.wait_for(|v| *v).await;
                })
                .await
            }));
        }
        let mut rx2 = rx.clone();
        let allocator = tokio::spawn(veil_allocator::service::run(app, async move {
            let _ = rx2.wait_for(|v| *v).await;
        }));
        // Print the banner once the allocator answers, so its commands work when read.
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(api).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let t0 = a.turn_port;
        let peer = free_peer_port(t0);
        let peer_ip = PEER_IP;
        // This binary's own path, so the printed command works without `veil` on PATH.
        let exe = std::env::current_exe().map_or_else(|_| "veil".to_string(), |p| p.display().to_string());
        let secret = secret_file.display();
        let uris: Vec<String> = (0..ZONES.len() as u16).map(|i| format!("turn:127.0.0.1:{}?transport=udp", t0 + i)).collect();
        let status: Vec<String> =
            (0..ZONES.len() as u16).map(|i| format!("http://127.0.0.1:{}/status", a.admin_port + i)).collect();
        let sample = match std::fs::read_to_string(&secret_file).ok().and_then(|t| parse_secrets(&t).into_iter().next()) {
            Some(s) => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                mint_username(&s, username_with_claims(now + 3600, "sample", &[("z", "eu")]))
            }
            None => (String::new(), String::new()),
        };
        let mut banner = vec![
            String::new(),
            "veil dev: a local cluster on loopback. Demo geo DB (loopback only): 127.0.1.x DE, 127.0.2.x US,".into(),
            "127.0.3.x JP, 127.0.4.x BR, 127.0.5.x AU, 127.0.6.x ZA, 127.0.7.x FR. The EU (member states) -> eu,".into(),
            "Asia/Oceania -> apac, everyone else -> us.".into(),
            String::new(),
        ];
        for (i, (zone, name, _, _, _)) in ZONES.iter().enumerate() {
            banner.push(format!("  relay      {name:<7} zone {zone:<5} {} (and tcp)  admin {}", uris[i], status[i]));
        }
        banner.extend([
            format!("  allocator  http://{api}   API key {api_key}"),
            format!("  secret     {secret}"),
            format!("  sample eu credential (1 h): username {}  password {}", sample.0, sample.1),
            String::new(),
            "Ask for an ICE config for a German client (its username ends in ;z=eu):".into(),
            format!(
                "  curl -s -H 'Authorization: Bearer {api_key}' -d '{{\"client_ip\":\"127.0.1.5\"}}' http://{api}/v1/ice-servers"
            ),
            "Place a call between a German and a Japanese client (no zone allowed for both: crossZone):".into(),
            format!(
                "  curl -s -H 'Authorization: Bearer {api_key}' -d '{{\"parties\":[{{\"client_ip\":\"127.0.1.5\"}},{{\"client_ip\":\"127.0.3.5\"}}]}}' http://{api}/v1/calls"
            ),
            "Run that call: each party allocates on its own relay, and what crosses between eu-1 and".into(),
            "apac-1 rides their mesh link (QUIC, mutual TLS, 1 200-byte cells at a constant rate):".into(),
            format!("  {exe} call --allocator http://{api} --key {api_key} --from 127.0.1.5 --to 127.0.3.5"),
            format!(
                "  curl -s {} | grep -E 'mesh_media_datagrams_total|mesh_link_(up|cell_rate)'",
                status[0].replace("/status", "/metrics")
            ),
            "The cross-border record (counts per client country and zone, cross-zone calls), as CSV:".into(),
            format!("  {exe} audit --allocator http://{api} --key {api_key} --format csv"),
            "The allocator's audit trail (signed, hash-chained: its start, then each hour's cross-border".into(),
            "record), verified:".into(),
            format!("  {exe} audit verify --trail {trail_dir} --public-key {audit_public}"),
            String::new(),
            "Relay with coturn's client through the eu relay (apt-get install coturn), using the".into(),
            "username and credential of the ICE config above; the us relay refuses the same credential".into(),
            format!("(-p {}: \"error 403 (Forbidden)\"), as every relay takes only its own zone's:", t0 + 1),
            format!("  turnutils_peer -L {peer_ip} -p {peer} &"),
            format!("  turnutils_uclient -u '<username>' -w '<credential>' -e {peer_ip} -r {peer} -p {t0} 127.0.0.1"),
            "or mint a credential from the secret:".into(),
            format!("  turnutils_uclient -W $(cat {secret}) -u 'dev-user;z=eu' -e {peer_ip} -r {peer} -p {t0} 127.0.0.1"),
            String::new(),
            "Ctrl-C stops everything.".into(),
            String::new(),
            format!("VEIL_ALLOCATOR_URL=http://{api}"),
            format!("VEIL_API_KEY={api_key}"),
            format!("VEIL_RELAY_URIS={}", uris.join(",")),
            format!("VEIL_ADMIN_URLS={}", status.join(",")),
            format!(
                "VEIL_METRICS_URLS={},http://{api}/metrics",
                status.iter().map(|u| u.replace("/status", "/metrics")).collect::<Vec<_>>().join(",")
            ),
            format!("VEIL_PEER_PORT={peer}"),
            format!("VEIL_SECRET_FILE={secret}"),
        ]);
        println!("{}", banner.join("\n"));
        veil_relay::io::shutdown_signal().await.context("waiting for a signal")?;
        tracing::info!("shutting down");
        let _ = tx.send(true);
        for t in tasks {
            t.await.context("admin task")?.context("admin endpoint")?;
        }
        allocator.await.context("allocator task")?.context("allocator")?;
        anyhow::Ok(())
    })?;
    for n in nodes {
        n.stop().context("stopping a relay")?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
