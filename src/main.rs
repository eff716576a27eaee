//! `veil`: the command line of the veil TURN/STUN relay cluster.
//!
//! * `veil relay` runs a relay node (config file and/or flags; flags win).
//! * `veil credentials` mints TURN REST API credentials from a secret file.

mod audit;
mod call;
mod check;
mod dev;
mod forwarder;
mod lifecycle;
mod load;
mod mesh_certs;
mod trail;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use veil_relay::config::{LogFormat, PortRange, RelayConfig, StaticUser, parse_secrets};
use veil_relay::io::Node;
use veil_relay::privacy::Redactor;
use veil_relay::proto::auth::{NonceKey, mint, mint_username, username_with_claims};
use veil_relay::proto::peer_filter::Cidr;
use veil_relay::proto::server::Shared;
use veil_relay::shaping::{Cover, Padding, Timing};

#[derive(Parser)]
#[command(
    name = "veil",
    version,
    about = "A privacy-preserving TURN/STUN relay cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a relay node: STUN and TURN over UDP.
    Relay(Box<RelayArgs>),
    /// Print a TURN REST API username and password minted from a secret.
    Credentials(CredentialArgs),
    /// Run a local cluster on loopback: three relays in zones eu, us and apac and an allocator with the
    /// embedded demo geo DB. For trying veil; not for production.
    Dev(dev::DevArgs),
    /// Run the geo-aware allocator: places clients on relays of their residency zones and hands
    /// out ICE server configs with short-lived credentials.
    Allocator(AllocatorArgs),
    /// Check relay or allocator config files as the binary would at start; exit 1 if any is
    /// invalid (for CI, and for rendered Helm values).
    CheckConfig(check::CheckArgs),
    /// Drive a TURN server (veil or any other) with N clients exchanging packets with a local
    /// echo peer; prints one summary line (offered/delivered packets/s, loss, RTT percentiles).
    Load(load::LoadArgs),
    /// Print the allocator's cross-border record for a period (placements per client country and
    /// zone, cross-zone calls per zone pair, per hour) as CSV or JSON.
    Audit(audit::AuditArgs),
    /// Place a call between two client addresses through the allocator and exchange datagrams
    /// both ways through their relays (a demonstration client; `veil dev` prints an example).
    Call(call::CallArgs),
    /// Make a cluster CA and a certificate per relay for the mesh's mutual TLS (mesh.tls).
    MeshCerts(mesh_certs::MeshCertsArgs),
    /// A plain UDP forwarder (no TURN), the ceiling benches/load_vs_coturn.sh compares to.
    #[command(hide = true)]
    BenchForwarder(forwarder::ForwarderArgs),
}

/// Every setting of the config file, as flags; a flag overrides the file. Defaults are those of
/// relay/relay.example.yaml.
#[derive(Args)]
struct RelayArgs {
    /// YAML config file (default: none; every field has a default).
    #[arg(long, env = "VEIL_CONFIG")]
    config: Option<PathBuf>,
    /// Sets any setting of the file by its path, repeatable: `--set streams.idle_timeout=30`,
    /// `--set peers.allow=[10.0.0.0/8]`. Applied after the file, before the flags below.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
    /// UDP address to listen on, repeatable (default: 127.0.0.1:3478).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// TCP address for TURN over TCP, repeatable (default: none).
    #[arg(long = "listen-tcp", value_name = "ADDR")]
    listen_tcp: Vec<SocketAddr>,
    /// TLS address for TURN over TLS (turns:), e.g. 0.0.0.0:5349 or 0.0.0.0:443, repeatable;
    /// needs --tls-cert and --tls-key (default: none).
    #[arg(long = "listen-tls", value_name = "ADDR")]
    listen_tls: Vec<SocketAddr>,
    /// PEM certificate chain for --listen-tls; reloaded when it changes.
    #[arg(long = "tls-cert", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --listen-tls; reloaded when it changes.
    #[arg(long = "tls-key", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Accept TLS 1.2 too (default: TLS 1.3 only).
    #[arg(long = "tls12")]
    tls12: bool,
    /// Host name for advertised turns: URIs, matching the certificate (default: the IP).
    #[arg(long = "tls-name", value_name = "NAME")]
    tls_name: Option<String>,
    /// IP relayed sockets bind to, repeatable (default: the listen IPs). Each IP has the whole
    /// port range: several of a family let the node hold more allocations.
    #[arg(long = "relay-ip", value_name = "IP")]
    relay_ip: Vec<IpAddr>,
    /// IP advertised to clients instead of the relay IP of its family, for 1:1 NAT (default:
    /// none).
    #[arg(long = "external-ip", value_name = "IP")]
    external_ip: Vec<IpAddr>,
    /// Relayed port range (default: 49152-65535).
    #[arg(long = "port-range", value_name = "START-END")]
    port_range: Option<PortRange>,
    /// Authentication realm (default: veil).
    #[arg(long)]
    realm: Option<String>,
    /// Residency zone this node serves; REST credentials must then carry the claim z=ZONE
    /// (default: none).
    #[arg(long)]
    zone: Option<String>,
    /// File of TURN REST API secrets, one per line, repeatable (default: none).
    #[arg(
        long = "auth-secret-file",
        value_name = "FILE",
        env = "VEIL_AUTH_SECRET_FILE"
    )]
    auth_secret_file: Vec<PathBuf>,
    /// A fixed user `name:password`, for local development only, repeatable (default: none).
    #[arg(long = "static-user", value_name = "NAME:PASSWORD")]
    static_user: Vec<String>,
    /// Peer range to allow despite the built-in deny list, repeatable (default: none).
    #[arg(long = "allow-peer", value_name = "CIDR")]
    allow_peer: Vec<Cidr>,
    /// Extra peer range to deny, e.g. the cluster's other relays, repeatable; wins over
    /// --allow-peer (default: none).
    #[arg(long = "deny-peer", value_name = "CIDR")]
    deny_peer: Vec<Cidr>,
    /// Lifetime granted when a client asks for none, seconds (default: 600).
    #[arg(long = "default-lifetime", value_name = "SECS")]
    default_lifetime: Option<u32>,
    /// Longest allocation lifetime granted, seconds (default: 3600).
    #[arg(long = "max-lifetime", value_name = "SECS")]
    max_lifetime: Option<u32>,
    /// Allocations one user may hold at once (default: 10).
    #[arg(long = "user-quota", value_name = "N")]
    user_quota: Option<u32>,
    /// Allocations one source IPv4 address or IPv6 /64 may hold at once, whatever credentials
    /// it presents; 0 for no cap (default: 200; load tests from one address need 0).
    #[arg(long = "source-quota", value_name = "N")]
    source_quota: Option<u32>,
    /// Allocations this node may hold at once (default: 100000).
    #[arg(long = "total-quota", value_name = "N")]
    total_quota: Option<u32>,
    /// Worker threads; 0 means one per CPU (default: 0).
    #[arg(long, value_name = "N", env = "VEIL_WORKERS")]
    workers: Option<usize>,
    /// Admin HTTP endpoint (/healthz, /readyz, /status) on this address (default: off).
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// SOFTWARE attribute for responses (default: none).
    #[arg(long)]
    software: Option<String>,
    /// Turn traffic shaping of the relay → client leg on (default: off). Its defaults, measured
    /// on the wire by benches/shaping_wire.rs: padding flow:128,256,512,1200 (one size per
    /// flow), timing slots:20ms, cover 50 (fillers at the flow's size). Against an observer of
    /// flow records or of the TLS leg, 20 voice flows then matched at chance by packet counts
    /// and by bytes; on plain UDP a TURN-aware observer still tells cover from media and reads
    /// ChannelData lengths (matched 20 of 20: require TLS in a profile for callers who need
    /// that). Costs about 103 kbit/s per voice flow and under two slots (40 ms) of added delay,
    /// p50 10-25 ms on the wire. Cover ends 15 s after a flow's last real frame.
    #[arg(long)]
    shaping: bool,
    /// Padding: flow:SIZES (one size per flow, the largest bucket it needed recently; the
    /// default), SIZES (each frame to the smallest that fits: leaks talk spurts in the byte
    /// volume) or off; sizes are multiples of 4; implies --shaping.
    #[arg(
        long = "pad-buckets",
        value_name = "SIZES",
        conflicts_with = "pad_multiple"
    )]
    pad_buckets: Option<String>,
    /// Pad frames to the next multiple of N (a multiple of 4); implies --shaping.
    #[arg(long = "pad-multiple", value_name = "N")]
    pad_multiple: Option<u16>,
    /// Release times: off, slots:INTERVAL (node-wide grid, one frame per flow per slot, at most two intervals of delay) or
    /// jitter:MAX (random, weaker); implies --shaping (default when shaping: slots:20ms).
    #[arg(long, value_name = "MODE", value_parser = parse_timing)]
    timing: Option<Timing>,
    /// Cover traffic RATE (fillers at the flow's size), RATE:SIZE (fixed size) or off: once a
    /// flow carries media, keep at least RATE frames/s going to its client, filling silences
    /// with filler frames clients discard, until 15 s after its last real frame; implies
    /// --shaping (default when shaping: 50).
    #[arg(long, value_name = "RATE[:SIZE]|off", value_parser = parse_cover)]
    cover: Option<CoverArg>,
    /// Frames a worker holds for re-clocking at most (default: 4096).
    #[arg(long = "shaping-queue", value_name = "N")]
    shaping_queue: Option<usize>,
    /// Log format: text or json (default: text).
    #[arg(long = "log-format", value_name = "FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
    /// Log client IPs, peer addresses and usernames in the clear (default: off; logs carry
    /// daily-rotating keyed hashes instead).
    #[arg(long = "log-personal-data")]
    log_personal_data: bool,
    /// Seconds to keep relaying for existing allocations after SIGTERM (default: 300).
    #[arg(long = "drain-timeout", value_name = "SECS")]
    drain_timeout: Option<u32>,
    /// Seconds between checks of the config and secret files for changes; 0: SIGHUP only
    /// (default: 5).
    #[arg(long = "watch-interval", value_name = "SECS")]
    watch_interval: Option<u32>,
}

fn parse_timing(s: &str) -> Result<Timing, String> {
    s.parse()
}

/// `--cover`: a cover policy or `off`.
#[derive(Clone, Debug)]
struct CoverArg(Option<Cover>);

fn parse_cover(s: &str) -> Result<CoverArg, String> {
    if s.trim() == "off" {
        return Ok(CoverArg(None));
    }
    s.parse().map(|c| CoverArg(Some(c)))
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("`{s}`: expected text or json")),
    }
}

#[derive(Args)]
struct AllocatorArgs {
    /// YAML config file (listen, api_keys, secret_files, policy, relays...).
    #[arg(long, env = "VEIL_ALLOCATOR_CONFIG")]
    config: PathBuf,
    /// Log format: text or json (default: text).
    #[arg(long = "log-format", value_name = "FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
}

#[derive(Args)]
struct CredentialArgs {
    /// Secret file (one secret per line; the first one signs).
    #[arg(long = "secret-file", value_name = "FILE")]
    secret_file: PathBuf,
    /// How long the credential is valid: 3600, 90s, 30m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
    /// Opaque user id appended to the username (`expiry:id`); quotas count per id.
    #[arg(long)]
    id: Option<String>,
    /// Shaping profile (configured under shaping.profiles) the relay applies to this credential's
    /// allocations: the claim `s=NAME` in the username (needs --id).
    #[arg(long, value_name = "NAME", requires = "id")]
    profile: Option<String>,
    /// Residency zone the credential is valid in: the claim `z=ZONE`, which a relay started
    /// with --zone requires (needs --id).
    #[arg(long, value_name = "ZONE", requires = "id")]
    zone: Option<String>,
    /// Print JSON instead of `username: …` / `password: …` lines.
    #[arg(long)]
    json: bool,
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 3600, 30m, 1h"))?;
    match n.checked_mul(mult) {
        Some(v) if v > 0 && v <= 366 * 86_400 => Ok(v),
        _ => Err(format!("`{s}`: between 1 second and 366 days")),
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Relay(args) => relay(*args),
        Command::Credentials(args) => credentials(args),
        Command::Allocator(args) => allocator(args),
        Command::Dev(args) => dev::run(args),
        Command::CheckConfig(args) => check::run(args),
        Command::Load(args) => load::run(args),
        Command::BenchForwarder(args) => forwarder::run(args),
        Command::Audit(args) => audit::run(args),
        Command::MeshCerts(args) => mesh_certs::run(args),
        Command::Call(args) => call::run(args),
    };
    if let Err(e) = result {
        eprintln!("veil: {e:#}");
        std::process::exit(1);
    }
}

fn apply_flags(cfg: &mut RelayConfig, a: &RelayArgs) -> Result<()> {
    for assignment in &a.set {
        cfg.set(assignment)?;
    }
    if !a.listen.is_empty() {
        cfg.listen = a.listen.clone();
    }
    if !a.relay_ip.is_empty() {
        cfg.relay_ips = a.relay_ip.clone();
    }
    if !a.listen_tcp.is_empty() {
        cfg.listen_tcp = a.listen_tcp.clone();
    }
    if !a.listen_tls.is_empty() {
        cfg.listen_tls = a.listen_tls.clone();
    }
    if let Some(p) = &a.tls_cert {
        cfg.tls.cert = Some(p.clone());
    }
    if let Some(p) = &a.tls_key {
        cfg.tls.key = Some(p.clone());
    }
    if a.tls12 {
        cfg.tls.allow_tls12 = true;
    }
    if let Some(n) = &a.tls_name {
        cfg.tls.name = Some(n.clone());
    }
    if !a.external_ip.is_empty() {
        cfg.external_ips = a.external_ip.clone();
    }
    if let Some(r) = a.port_range {
        cfg.port_range = r;
    }
    if let Some(r) = &a.realm {
        cfg.realm = r.clone();
    }
    if let Some(z) = &a.zone {
        cfg.zone = Some(z.clone());
    }
    if !a.auth_secret_file.is_empty() {
        cfg.auth.secret_files = a.auth_secret_file.clone();
    }
    for u in &a.static_user {
        let Some((username, password)) = u.split_once(':') else {
            bail!("--static-user `{u}`: expected NAME:PASSWORD");
        };
        cfg.auth.static_users.push(StaticUser {
            username: username.into(),
            password: password.into(),
        });
    }
    cfg.peers.allow.extend_from_slice(&a.allow_peer);
    cfg.peers.deny.extend_from_slice(&a.deny_peer);
    if let Some(v) = a.default_lifetime {
        cfg.lifetimes.default_allocation = v;
    }
    if let Some(v) = a.max_lifetime {
        cfg.lifetimes.max_allocation = v;
    }
    if let Some(v) = a.user_quota {
        cfg.quotas.per_user = v;
    }
    if let Some(v) = a.source_quota {
        cfg.quotas.per_source = v;
    }
    if let Some(v) = a.total_quota {
        cfg.quotas.total = v;
    }
    if let Some(v) = a.workers {
        cfg.workers = v;
    }
    if let Some(v) = a.admin {
        cfg.admin = Some(v);
    }
    if let Some(v) = &a.software {
        cfg.software = Some(v.clone());
    }
    if let Some(v) = a.log_format {
        cfg.log.format = v;
    }
    if a.log_personal_data {
        cfg.log.personal_data = true;
    }
    if let Some(v) = a.drain_timeout {
        cfg.lifecycle.drain_timeout = v;
    }
    if let Some(v) = a.watch_interval {
        cfg.lifecycle.watch_interval = v;
    }
    let sh = &mut cfg.shaping;
    if let Some(b) = &a.pad_buckets {
        sh.padding = b
            .parse::<Padding>()
            .map_err(|e| anyhow::anyhow!("--pad-buckets {e}"))?;
        sh.enabled = true;
    }
    if let Some(n) = a.pad_multiple {
        let p = Padding::Multiple(n);
        p.validate()
            .map_err(|e| anyhow::anyhow!("--pad-multiple {e}"))?;
        sh.padding = p;
        sh.enabled = true;
    }
    if let Some(t) = a.timing {
        sh.timing = t;
        sh.enabled = true;
    }
    if let Some(CoverArg(c)) = a.cover {
        sh.cover = c;
        sh.enabled = true;
    }
    if let Some(q) = a.shaping_queue {
        sh.queue_limit = q;
    }
    if a.shaping {
        sh.enabled = true;
    }
    Ok(())
}

pub(crate) fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The relay configuration: the file (if any), then the flags on top, resolved.
fn relay_config(args: &RelayArgs) -> Result<veil_relay::config::Resolved> {
    let mut cfg = match &args.config {
        Some(p) => RelayConfig::load(p)?,
        None => RelayConfig::default(),
    };
    apply_flags(&mut cfg, args)?;
    Ok(cfg.resolve()?)
}

fn relay(args: RelayArgs) -> Result<()> {
    let resolved = relay_config(&args)?;
    // One relayed socket per allocation (a dual-stack one holds two) and one per TCP/TLS
    // connection: the soft descriptor limit (often 1024) is not enough.
    let streams = if resolved.listen_tcp.is_empty() && resolved.listen_tls.is_empty() {
        0
    } else {
        resolved.streams.max_connections as u64
    };
    // What the node can hold: its quota, its relay ports (per IP), its descriptors.
    let ips = resolved
        .server
        .relays
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0) as u64;
    let ports = resolved.port_range.len() as u64 * ips;
    let wanted = (resolved.server.total_quota as u64).min(ports) + streams + 1024;
    let fds = veil_relay::sys::raise_fd_limit(wanted);
    // Relayed sockets and connections share the descriptors (1024 kept for the rest).
    let capacity = (resolved.server.total_quota as u64)
        .min(ports)
        .min(fds.saturating_sub(1024));
    init_logging(resolved.log.format);
    for w in &resolved.warnings {
        tracing::warn!("{w}");
    }
    if fds < wanted {
        tracing::warn!(
            "the open-file limit ({fds}) is below what the quota, the relay ports and the \
             connection cap could use ({wanted}): past about {} relayed sockets and TCP/TLS \
             connections together, allocations get 508 and connections are refused. Raise it \
             (systemd LimitNOFILE, ulimit -n, the container runtime) or run with \
             CAP_SYS_RESOURCE",
            fds.saturating_sub(1024)
        );
    }
    let admin = resolved
        .admin
        .map(|addr| {
            std::net::TcpListener::bind(addr).with_context(|| format!("admin endpoint on {addr}"))
        })
        .transpose()?;
    let (node, shared_for_admin) = start_node(&resolved)?;
    let relays: Vec<String> = resolved
        .server
        .relays
        .iter()
        .flatten()
        .map(|r| {
            if r.bind == r.advertise {
                r.bind.to_string()
            } else {
                format!("{} as {}", r.bind, r.advertise)
            }
        })
        .collect();
    tracing::info!(
        listen = ?node.endpoints.udp,
        tcp = ?resolved.listen_tcp,
        tls = ?resolved.listen_tls,
        relay = ?relays,
        ports = %resolved.port_range,
        workers = resolved.workers,
        max_fds = fds,
        capacity,
        secrets = resolved.credentials.secrets.len(),
        padding = %resolved.shaping[0].padding,
        timing = %resolved.shaping[0].timing,
        cover = %resolved.shaping[0].cover.map_or("none".to_string(), |c| c.to_string()),
        profiles = ?resolved.server.shaping_profiles,
        "relay ready"
    );
    let reports = node.reports.clone();
    let audit = trail::Recorder::open(&resolved.audit, "relay", move |seq| {
        reports.count_audit(seq)
    })
    .context("the audit trail (audit.dir, audit.signing_key_file)")?;
    audit.record(
        "start",
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "zone": resolved.server.zone,
            "workers": resolved.workers,
            "secrets": resolved.credentials.secrets.len(),
            "revoked_users": resolved.credentials.revoked_users.len(),
        }),
    );
    let config_file = args.config.clone();
    lifecycle::Running {
        node,
        shared: shared_for_admin,
        current: resolved,
        reload: Box::new(move || relay_config(&args)),
        config_file,
        admin,
        audit,
    }
    .run()
}

/// Starts a relay node's workers from a resolved configuration.
pub(crate) fn start_node(resolved: &veil_relay::config::Resolved) -> Result<(Node, Arc<Shared>)> {
    let shared = Arc::new(Shared::new(
        resolved.server.clone(),
        resolved.credentials.clone(),
        NonceKey::random(),
        resolved.filter.clone(),
        Redactor::new(resolved.log.personal_data),
    ));
    let node = Node::start(resolved, shared.clone()).context("starting the relay")?;
    Ok((node, shared))
}

fn allocator(args: AllocatorArgs) -> Result<()> {
    use veil_allocator::service::{AllocatorConfig, App, FD_RESERVE, run};
    let mut cfg = AllocatorConfig::load(&args.config)?;
    init_logging(args.log_format.unwrap_or_default());
    // Each API connection holds a descriptor: the soft limit (systemd's 1024) up to the hard
    // one, and the connection cap follows what the limit allows.
    let fds = veil_relay::sys::raise_fd_limit(65_536);
    let fit = u32::try_from(fds.saturating_sub(FD_RESERVE)).unwrap_or(u32::MAX);
    let limits = &mut cfg.connections;
    if limits.max_total == 0 || limits.max_total > fit {
        if limits.max_total > fit {
            tracing::warn!(
                max_total = limits.max_total,
                open_files = fds,
                "connections.max_total is above what the open-file limit allows; lowered"
            );
        }
        limits.max_total = fit.max(1);
    }
    if cfg.geo_db.is_none() {
        tracing::warn!("no geo_db: using the embedded demo DB, which only knows loopback ranges");
    }
    let app = App::new(cfg)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    app.start_trail(now)
        .context("the audit trail (audit.dir, audit.signing_key_file)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(app, async {
        let _ = veil_relay::io::shutdown_signal().await;
        tracing::info!("shutting down");
    }))
    .context("allocator")?;
    Ok(())
}

fn credentials(args: CredentialArgs) -> Result<()> {
    let text = read(&args.secret_file)?;
    let secrets = parse_secrets(&text);
    let Some(secret) = secrets.first() else {
        bail!("{} holds no secret", args.secret_file.display());
    };
    if let Some(id) = &args.id
        && (id.is_empty() || id.contains([':', ';']))
    {
        bail!("--id must be non-empty and contain no ':' or ';'");
    }
    for (flag, v) in [("--profile", &args.profile), ("--zone", &args.zone)] {
        if let Some(v) = v
            && (v.is_empty() || v.contains([':', ';', '=']))
        {
            bail!("{flag} must be non-empty and contain no ':', ';' or '='");
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = Vec::new();
    if let Some(z) = &args.zone {
        claims.push(("z", z.as_str()));
    }
    if let Some(p) = &args.profile {
        claims.push(("s", p.as_str()));
    }
    let (username, password) = match &args.id {
        Some(id) if !claims.is_empty() => {
            mint_username(secret, username_with_claims(now + args.ttl, id, &claims))
        }
        _ => mint(secret, now + args.ttl, args.id.as_deref()),
    };
    if args.json {
        println!(
            "{{\"username\":\"{}\",\"password\":\"{}\",\"ttl\":{}}}",
            json_escape(&username),
            password,
            args.ttl
        );
    } else {
        println!("username: {username}");
        println!("password: {password}");
    }
    Ok(())
}

fn json_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect()
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("3600"), Ok(3600));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        for bad in ["", "h", "0", "-1h", "1y", "400d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let mut cfg = RelayConfig::from_yaml("realm: file\nworkers: 3\n", "t").unwrap();
        let args = RelayArgs::try_parse_from_relay(&[
            "--realm",
            "flag",
            "--allow-peer",
            "127.0.0.0/8",
            "--set",
            "realm=set",
            "--set",
            "streams.send_buffer=65536",
        ]);
        apply_flags(&mut cfg, &args).unwrap();
        assert_eq!(cfg.realm, "flag", "a named flag wins over --set");
        assert_eq!(cfg.streams.send_buffer, 65536);
        assert_eq!(cfg.workers, 3, "unset flags keep the file's value");
        assert_eq!(cfg.peers.allow, vec!["127.0.0.0/8".parse().unwrap()]);
    }

    impl RelayArgs {
        fn try_parse_from_relay(args: &[&str]) -> RelayArgs {
            let mut v = vec!["veil", "relay"];
            v.extend_from_slice(args);
            match Cli::try_parse_from(v).unwrap().command {
                Command::Relay(a) => *a,
                _ => unreachable!(),
            }
        }
    }
}
