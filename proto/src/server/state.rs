//! What every worker of a node shares: configuration, credentials and peer filter (reloadable),
//! the quota counters, and the RESERVATION-TOKEN table (a token minted by one worker may be
//! presented to another).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::{Env, Refusal, RelayAddr};
use crate::auth::{Credentials, NonceKey};
use crate::limiter::BandwidthCaps;
use crate::peer_filter::PeerFilter;
use crate::privacy::Redactor;

/// How long an RTP/RTCP port pair reservation (EVEN-PORT R bit) is held (RFC 8656 §7.2).
pub const RESERVATION_SECS: u64 = 30;

/// The default of [`ServerConfig::heavy_bytes_per_second`]: 8 Mbit/s both ways together,
/// averaged over an allocation's life; a 1080p call with simulcast peaks near that and
/// averages far below.
pub const HEAVY_BYTES_PER_SECOND: u64 = 1_000_000;

/// What the protocol core needs from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// REALM of challenges and long-term keys.
    pub realm: String,
    /// SOFTWARE attribute value; none by default (it tells attackers the version).
    pub software: Option<String>,
    /// Relay addresses per family (indexed by [`super::Family`]). A family without any is not
    /// offered (440); with several, allocations spread across them, so a node relays more
    /// allocations than one address has ports.
    pub relays: [Vec<RelayAddr>; 2],
    /// Lifetime granted when the client asks for none (RFC 8656: 600 s).
    pub default_lifetime: u32,
    /// Longest lifetime granted (default 3600 s).
    pub max_lifetime: u32,
    /// Permission lifetime (RFC 8656: 300 s).
    pub permission_lifetime: u32,
    /// Channel binding lifetime (RFC 8656: 600 s).
    pub channel_lifetime: u32,
    /// How long a nonce stays valid.
    pub nonce_lifetime: u32,
    /// Peer IPs one allocation may hold permissions for (508 beyond).
    pub max_permissions: u32,
    /// Channel bindings one allocation may hold (508 beyond).
    pub max_channels: u32,
    /// Replies to unauthenticated UDP requests (challenges, errors before authentication,
    /// Binding) per source prefix (/32, /64) per second and worker; 0 turns the limit off.
    pub unauthenticated_rate: u32,
    /// The burst of those replies a prefix may draw at once.
    pub unauthenticated_burst: u32,
    /// Binding responses per source prefix per second and worker, a budget of their own (a
    /// Binding answer is at most 1.6× its request, 2.2× on IPv6, and many phones share one
    /// carrier-grade NAT address); 0 turns the limit off.
    pub binding_rate: u32,
    /// The burst of Binding responses a prefix may draw at once.
    pub binding_burst: u32,
    /// Bandwidth caps per shaping profile (`[0]` the node's, then `shaping_profiles` in
    /// order), in force at start; a reload replaces them ([`Live::bandwidth`]).
    pub bandwidth: Vec<BandwidthCaps>,
    /// Allocations one user may hold at once (486 beyond), unless its credential claims another
    /// quota (`q=<n>`, [`crate::auth::quota_claim`]).
    pub user_quota: u32,
    /// Allocations one source prefix (an IPv4 address, an IPv6 /64) may hold at once over any
    /// transport, whatever credentials it presents (486 beyond); 0: no cap.
    pub source_quota: u32,
    /// Allocations the node holds at once (508 beyond).
    pub total_quota: u32,
    /// Names of the shaping profiles a credential may select; profile `i + 1` is
    /// `shaping_profiles[i]`, 0 the node's default.
    pub shaping_profiles: Vec<String>,
    /// Whether `shaping_profiles[i]` may only be used over TLS (403 over UDP and TCP).
    pub tls_only_profiles: Vec<bool>,
    /// The residency zone this node serves. When set, a REST credential must carry the claim
    /// `z=<zone>` (the allocator mints it); others get 403. Static development users are exempt.
    pub zone: Option<String>,
    /// An allocation that relayed (both ways together) more than this many bytes per second of
    /// its life, past its first minute, counts as heavy (an abuse signal; 0: never).
    pub heavy_bytes_per_second: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            realm: "veil".into(),
            software: None,
            relays: [Vec::new(), Vec::new()],
            default_lifetime: 600,
            max_lifetime: 3600,
            permission_lifetime: 300,
            channel_lifetime: 600,
            nonce_lifetime: 3600,
            unauthenticated_rate: 20,
            unauthenticated_burst: 40,
            binding_rate: 200,
            binding_burst: 400,
            max_permissions: 64,
            max_channels: 64,
            bandwidth: vec![BandwidthCaps::default()],
            user_quota: 10,
            source_quota: 0,
            total_quota: 100_000,
            shaping_profiles: Vec::new(),
            tls_only_profiles: Vec::new(),
            zone: None,
            heavy_bytes_per_second: HEAVY_BYTES_PER_SECOND,
        }
    }
}

/// What a reload (SIGHUP, file change) replaces while allocations go on.
#[derive(Clone, Debug)]
pub struct Live {
    /// Secrets and static users in force.
    pub credentials: Credentials,
    /// The peer filter in force for new permissions.
    pub filter: PeerFilter,
    /// Bandwidth caps per shaping profile (see [`ServerConfig::bandwidth`]).
    pub bandwidth: Vec<BandwidthCaps>,
}

/// State shared by every worker of a node. The quota counters change when an allocation is
/// created or deleted; [`Live`] when the operator reloads; `draining` once, at shutdown.
pub struct Shared {
    /// The protocol configuration.
    pub config: ServerConfig,
    /// The key of stateless nonces.
    pub nonces: NonceKey,
    /// What logs may say about callers.
    pub redactor: Redactor,
    live: RwLock<Arc<Live>>,
    /// Bumped by every [`Shared::replace_live`]: a worker compares it (one relaxed load) to
    /// pick up a reload without taking the lock on the relay path.
    live_version: AtomicU64,
    draining: AtomicBool,
    total: AtomicU32,
    per_user: Mutex<HashMap<Box<str>, u32>>,
    /// Allocations per source prefix ([`crate::limiter::source_prefix`]), while
    /// `config.source_quota` is on.
    per_source: Mutex<HashMap<u64, u32>>,
    reservations: Mutex<Reservations>,
    /// How many networks each credential allocates from ([`crate::spread`]).
    spread: Mutex<crate::spread::Spread>,
}

/// The window of [`Shared::spread_counts`]: networks a credential allocated from within it.
pub(super) const SPREAD_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

impl Shared {
    /// Node state with these settings and no allocations.
    pub fn new(
        config: ServerConfig,
        credentials: Credentials,
        nonces: NonceKey,
        filter: PeerFilter,
        redactor: Redactor,
    ) -> Self {
        let bandwidth = config.bandwidth.clone();
        Shared {
            config,
            nonces,
            redactor,
            live: RwLock::new(Arc::new(Live {
                credentials,
                filter,
                bandwidth,
            })),
            live_version: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            total: AtomicU32::new(0),
            per_user: Mutex::new(HashMap::new()),
            per_source: Mutex::new(HashMap::new()),
            reservations: Mutex::default(),
            spread: Mutex::new(crate::spread::Spread::new(SPREAD_WINDOW.as_millis() as u64)),
        }
    }

    /// Notes that credential `id` (a REST id) allocated from `ip` at `unix` seconds.
    pub(super) fn note_spread(&self, id: &str, ip: std::net::IpAddr, unix: u64) {
        let mut s = self.spread.lock().unwrap_or_else(|e| e.into_inner());
        s.note(id, ip, unix.saturating_mul(1000));
    }

    /// How many credentials allocated from at least 2, 4 and 8 networks in the last 10
    /// minutes as of `unix` seconds; never which.
    pub fn spread_counts(&self, unix: u64) -> crate::spread::SpreadCounts {
        let s = self.spread.lock().unwrap_or_else(|e| e.into_inner());
        s.counts(unix.saturating_mul(1000))
    }

    /// The credentials and peer filter in force.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts new credentials and a new peer filter in force. New requests see them at once;
    /// each worker's server, at its next relayed packet or timer, drops the permissions and
    /// channel bindings the new filter refuses.
    pub fn replace_live(&self, live: Live) {
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
        self.live_version.fetch_add(1, Ordering::Release);
    }

    /// How many times [`Shared::replace_live`] ran.
    #[inline]
    pub(super) fn live_version(&self) -> u64 {
        self.live_version.load(Ordering::Relaxed)
    }

    /// From now on, new allocations are refused (508) while existing ones go on.
    pub fn set_draining(&self, v: bool) {
        self.draining.store(v, Ordering::Relaxed);
    }

    /// Whether the node refuses new allocations.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Allocations alive on this node.
    pub fn allocations(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes one allocation from the source prefix's cap, if one is set.
    pub(super) fn acquire_source(&self, prefix: u64) -> Result<(), Refusal> {
        if self.config.source_quota == 0 {
            return Ok(());
        }
        let mut sources = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let held = sources.entry(prefix).or_insert(0);
        if *held >= self.config.source_quota {
            return Err(Refusal::SourceQuota);
        }
        *held += 1;
        Ok(())
    }

    /// Gives back what [`Shared::acquire_source`] took.
    pub(super) fn release_source(&self, prefix: u64) {
        if self.config.source_quota == 0 {
            return;
        }
        let mut sources = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = sources.get_mut(&prefix) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                sources.remove(&prefix);
            }
        }
    }

    /// Takes one allocation from the user's quota (`quota`, see [`ServerConfig::user_quota`])
    /// and the node's.
    pub(super) fn acquire(&self, quota_key: &str, quota: u32) -> Result<(), Refusal> {
        let mut users = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let held = users.get(quota_key).copied().unwrap_or(0);
        if held >= quota {
            return Err(Refusal::UserQuota);
        }
        let total = self.total.load(Ordering::Relaxed);
        if total >= self.config.total_quota {
            return Err(Refusal::NodeCapacity);
        }
        self.total.store(total + 1, Ordering::Relaxed);
        *users.entry(quota_key.into()).or_insert(0) += 1;
        Ok(())
    }

    pub(super) fn release(&self, quota_key: &str) {
        let mut users = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = users.get_mut(quota_key) {
            *n -= 1;
            if *n == 0 {
                users.remove(quota_key);
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }

    fn reservations(&self) -> std::sync::MutexGuard<'_, Reservations> {
        self.reservations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `parked` for [`RESERVATION_SECS`] under a fresh token, on one unit of
    /// `quota_key`'s quota that the caller took ([`Shared::acquire`]): a reservation counts
    /// like an allocation. None (and `parked` is released, the unit not) if the OS random
    /// source fails.
    pub(super) fn reserve(
        &self,
        now: Instant,
        parked: SocketAddr,
        quota_key: &str,
        env: &mut impl Env,
    ) -> Option<[u8; 8]> {
        let mut token = [0u8; 8];
        if getrandom::fill(&mut token).is_err() {
            env.release_reserved(parked);
            return None;
        }
        let expires = super::later(now, RESERVATION_SECS);
        let mut r = self.reservations();
        r.by_token.insert(
            token,
            Reserved {
                parked,
                expires,
                quota_key: quota_key.into(),
            },
        );
        r.timers.push(Reverse((expires, token)));
        Some(token)
    }

    /// Takes the address reserved under `token`, if it is still held at `now`, with the quota
    /// key whose unit it holds: that unit is now the caller's (to keep or release).
    pub(super) fn claim(
        &self,
        now: Instant,
        token: &[u8; 8],
        env: &mut impl Env,
    ) -> Option<(SocketAddr, Box<str>)> {
        let r = self.reservations().by_token.remove(token)?;
        if r.expires <= now {
            env.release_reserved(r.parked);
            self.release(&r.quota_key);
            return None;
        }
        Some((r.parked, r.quota_key))
    }

    /// Ends the reservation under `token` if nobody claimed it yet (its allocation is gone):
    /// the parked port and the quota unit are free at once.
    pub(super) fn cancel_reservation(&self, token: &[u8; 8], env: &mut impl Env) {
        let gone = self.reservations().by_token.remove(token);
        if let Some(r) = gone {
            env.release_reserved(r.parked);
            self.release(&r.quota_key);
        }
    }

    /// Releases reservations nobody claimed in time.
    pub(super) fn expire_reservations(&self, now: Instant, env: &mut impl Env) {
        let mut expired = Vec::new();
        {
            let mut r = self.reservations();
            while let Some(&Reverse((t, token))) = r.timers.peek() {
                if t > now {
                    break;
                }
                r.timers.pop();
                if r.by_token.get(&token).is_some_and(|e| e.expires <= now)
                    && let Some(e) = r.by_token.remove(&token)
                {
                    expired.push(e);
                }
            }
        }
        for e in expired {
            env.release_reserved(e.parked);
            self.release(&e.quota_key);
        }
    }

    /// When the earliest reservation expires.
    pub(super) fn next_reservation_expiry(&self) -> Option<Instant> {
        self.reservations().timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Reservations held now (for tests and metrics).
    pub fn reservations_held(&self) -> usize {
        self.reservations().by_token.len()
    }
}

/// An address held for a RESERVATION-TOKEN, on a unit of its owner's quota.
struct Reserved {
    parked: SocketAddr,
    expires: Instant,
    quota_key: Box<str>,
}

/// Addresses held for RESERVATION-TOKENs, with their expiry heap.
#[derive(Default)]
struct Reservations {
    by_token: HashMap<[u8; 8], Reserved>,
    timers: BinaryHeap<Reverse<(Instant, [u8; 8])>>,
}
