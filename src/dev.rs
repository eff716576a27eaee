//! `veil dev`: a local cluster in one command, on loopback, with nothing to download.
//!
//! Two relay nodes (zone `eu` on TURN port P, zone `us` on P+1), each with its admin endpoint,
//! and an allocator whose residency policy sends European clients to `eu` and everyone else to
//! `us`, geolocating with the embedded demo DB (127.0.1.0/24 is DE, 127.0.2.0/24 US, ...). A
//! fresh random REST secret and API key are made for the run and printed. Loopback peers are
//! allowed so local echo peers work.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use veil_allocator::service::{AllocatorConfig, ApiKey, App, RelayEntry};
use veil_geo::policy::{DistanceModel, Match, PolicyConfig, Rule, Zone};
use veil_relay::admin::AdminState;
use veil_relay::config::{AuthConfig, LogFormat, PortRange, RelayConfig};

#[derive(Args)]
pub struct DevArgs {
    /// TURN port of the eu relay; the us relay takes the next one.
    #[arg(long, default_value_t = 3478)]
    turn_port: u16,
    /// Admin port of the eu relay; the us relay takes the next one.
    #[arg(long, default_value_t = 9478)]
    admin_port: u16,
    /// The allocator's HTTP port.
    #[arg(long, default_value_t = 8480)]
    api_port: u16,
    /// Worker threads per relay.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    // The OS RNG; a failure leaves zeros, which the length checks still accept for a dev run.
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn run(a: DevArgs) -> Result<()> {
    crate::init_logging(LogFormat::Text);
    let dir = std::env::temp_dir().join(format!("veil-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let secret_file: PathBuf = dir.join("turn-secrets");
    std::fs::write(&secret_file, format!("{}\n", random_hex(24)))?;
    let api_key = format!("dev-{}", random_hex(12));
    let lo = [127, 0, 0, 1];

    let mut nodes = Vec::new();
    let mut admins = Vec::new();
    for (i, zone, ports) in [(0u16, "eu", (20000, 20999)), (1, "us", (21000, 21999))] {
        let cfg = RelayConfig {
            listen: vec![SocketAddr::from((lo, a.turn_port + i))],
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
                deny: vec![],
            },
            workers: a.workers,
            admin: Some(SocketAddr::from((lo, a.admin_port + i))),
            ..RelayConfig::default()
        };
        let resolved = cfg.resolve()?;
        let (node, shared) = crate::start_node(&resolved)?;
        admins.push((
            resolved.admin.unwrap_or(SocketAddr::from((lo, 0))),
            AdminState::new(shared, &node.listen),
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
        listen: api,
        api_keys: vec![ApiKey {
            key: api_key.clone(),
            backend: true,
        }],
        secret_files: vec![secret_file.clone()],
        ttl: 600,
        geo_db: None,
        policy: PolicyConfig {
            zones: [("eu", "eu-1"), ("us", "us-1")]
                .into_iter()
                .map(|(z, r)| {
                    (
                        z.to_string(),
                        Zone {
                            relays: vec![r.to_string()],
                        },
                    )
                })
                .collect(),
            rules: vec![Rule {
                matches: Match {
                    continent: Some("EU".into()),
                    ..Match::default()
                },
                zones: vec!["eu".into()],
            }],
            default: vec!["us".into()],
        },
        distance: DistanceModel::default(),
        relays: vec![
            relay("eu-1", admins[0].0, 50.11, 8.68),
            relay("us-1", admins[1].0, 39.04, -77.49),
        ],
        trusted_proxies: vec![],
        poll_interval_ms: 500,
        down_after: 3,
        up_after: 1,
    };
    let app = App::new(cfg)?;

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
        let (t0, t1, a0, a1) = (a.turn_port, a.turn_port + 1, a.admin_port, a.admin_port + 1);
        let secret = secret_file.display();
        let banner = [
            String::new(),
            "veil dev: a local cluster on loopback (demo geo DB: 127.0.1.x is DE, 127.0.2.x is US)".into(),
            String::new(),
            format!("  relays     eu-1  turn:127.0.0.1:{t0}  admin http://127.0.0.1:{a0}/status"),
            format!("             us-1  turn:127.0.0.1:{t1}  admin http://127.0.0.1:{a1}/status"),
            format!("  allocator  http://{api}   API key {api_key}"),
            format!("  secret     {secret}"),
            String::new(),
            "Ask for an ICE config for a German client:".into(),
            format!(
                "  curl -s -H 'Authorization: Bearer {api_key}' -d '{{\"client_ip\":\"127.0.1.5\"}}' http://{api}/v1/ice-servers"
            ),
            String::new(),
            "Relay with coturn's client through the eu relay (apt-get install coturn); the eu relay".into(),
            "only takes credentials whose username carries the claim ;z=eu:".into(),
            "  turnutils_peer -L 127.0.0.1 -p 3480 &".into(),
            format!("  turnutils_uclient -W $(cat {secret}) -u 'dev-user;z=eu' -e 127.0.0.1 -r 3480 -p {t0} 127.0.0.1"),
            String::new(),
            "Ctrl-C stops everything.".into(),
        ];
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
