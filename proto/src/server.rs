//! The TURN server state machine (RFC 8656 over RFC 8489), for every client transport.
//!
//! One [`Server`] belongs to one worker and owns the allocations of the clients that worker's
//! sockets receive from; nothing on the forwarding path is shared between workers. What is
//! shared ([`Shared`]: config, credentials, nonce key, peer filter, quota counters,
//! reservations) is read-only except the counters and the reservation table, touched only when
//! an allocation is created or deleted, and the reloadable part ([`Live`]: credentials and peer
//! filter), read when a request is authenticated or a peer is vetted, never per relayed packet.
//!
//! The server never opens sockets or reads clocks: the driver passes the time in ([`Now`]), hands
//! it what clients and peers sent, executes what it returns ([`Action`], [`Delivery`]) and calls
//! [`Server::handle_timeout`] by [`Server::poll_timeout`]; relayed addresses are opened and
//! closed through the [`Env`] trait. Where a file's concern is:
//!
//! * this file: the timers (allocations, permissions, channels, reservations) and the dispatch
//!   of requests;
//! * `types`: the vocabulary shared with the driver; `env`: what the core asks of it;
//! * `request`: typed requests, parsed once with RFC 8656's attribute rules;
//! * `error`: [`TurnError`] and the one place that writes, signs and logs a response;
//! * `state`: what workers share (configuration, quotas, reservations);
//! * `authn`: long-term credential checks; `allocation`: Allocate, Refresh;
//!   `permission`: CreatePermission, ChannelBind; `relay`: where everything a client or a peer
//!   sends arrives ([`Server::handle_client`], [`Server::handle_peer`]) and the data path both
//!   ways, so a relayed packet crosses this one file of the core;
//! * `watch`: the abuse signals each allocation feeds (permission bursts, payloads that are
//!   not media, heavy allocations); `fast`: what the kernel fast path may carry.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;

use crate::auth;
use crate::stun::{Class, Message, method};

mod allocation;
mod authn;
mod fast;
pub(crate) use authn::password_algorithm;
mod env;
mod error;
mod permission;
mod relay;
mod request;
mod state;
mod types;
mod watch;

use allocation::Allocation;
use error::{Fail, Req, Seal};

pub use env::{Env, Opened, PortPolicy};
pub use error::TurnError;
pub use fast::{FastBinding, FastChange, GRANT_FLOOR};
pub use request::{
    AllocateRequest, ChannelBindRequest, MAX_PEERS_PER_REQUEST, PermissionRequest, RefreshRequest,
    SendIndication,
};
pub use state::{HEAVY_BYTES_PER_SECOND, Live, RESERVATION_SECS, ServerConfig, Shared};
pub use types::{
    Action, ClientKey, Delivery, Family, MAX_HORIZON, Now, Occupancy, Refusal, RelayAddr, RelayId,
    Stats, Transport, later,
};
pub use watch::{BURST_PEERS, BURST_WINDOW_MS, BYTES_BUCKETS, INSPECT_MIN, media_like};

/// Bytes the driver must leave free in front of a peer's payload so that the server can write
/// the ChannelData (4) or Data indication (20 + 24 + 4) header in place.
pub const HEADROOM: usize = 48;
/// Bytes the driver must leave free after a peer's payload (Data indication padding).
pub const TAILROOM: usize = 4;

/// One worker's TURN server.
pub struct Server {
    shared: Arc<Shared>,
    /// This worker's copy of the reloadable state, and the [`Shared`] version it is.
    live: Arc<Live>,
    live_version: u64,
    /// A reload happened whose session policy (revocations, removed secrets, max_session)
    /// the next [`Server::handle_timeout`] applies to every allocation.
    sweep: bool,
    allocs: Slab<Allocation>,
    /// Bandwidth meters of the users with allocations on this worker.
    users: Slab<allocation::UserMeter>,
    user_slots: HashMap<Box<str>, usize>,
    by_client: HashMap<ClientKey, usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    next_generation: u32,
    /// Transaction ids of Data indications: a keyed PRF, so that a client cannot count what
    /// this worker sends to others.
    txids: crate::rng::TxidPrf,
    /// Replies to unauthenticated UDP requests but Bindings, per source prefix.
    unauthenticated: crate::limiter::PrefixLimiter,
    /// Binding responses over UDP, per source prefix.
    bindings: crate::limiter::PrefixLimiter,
    /// The driver's time of the first call, origin of the limiters' milliseconds.
    epoch: Option<Instant>,
    stats: Stats,
    /// What the kernel fast path may carry, when the driver has one.
    fast: fast::FastTrack,
}

impl Server {
    /// A worker's server over the node's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        let live_version = shared.live_version();
        let unauthenticated = crate::limiter::PrefixLimiter::new(
            shared.config.unauthenticated_rate,
            shared.config.unauthenticated_burst,
        );
        let bindings = crate::limiter::PrefixLimiter::new(
            shared.config.binding_rate,
            shared.config.binding_burst,
        );
        Server {
            live: shared.live(),
            live_version,
            sweep: false,
            shared,
            allocs: Slab::new(),
            users: Slab::new(),
            user_slots: HashMap::new(),
            by_client: HashMap::new(),
            timers: BinaryHeap::new(),
            next_generation: 1,
            txids: crate::rng::TxidPrf::new(),
            unauthenticated,
            bindings,
            epoch: None,
            stats: Stats::default(),
            fast: fast::FastTrack::default(),
        }
    }

    /// The node's shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// What this worker's server did so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Allocations this worker holds.
    pub fn allocation_count(&self) -> usize {
        self.allocs.len()
    }

    /// Counts what this worker holds (for gauges; O(allocations), run once per timer tick).
    pub fn occupancy(&self) -> Occupancy {
        let mut o = Occupancy::default();
        for (_, a) in &self.allocs {
            let t = a.client.transport as usize;
            for r in a.relays.iter().flatten() {
                o.relayed[t][Family::of(r.advertised.ip()) as usize] += 1;
            }
            for ip in a.perms.ips() {
                o.permissions[t][Family::of(ip) as usize] += 1;
            }
            for peer in a.channels.peers() {
                o.channels[t][Family::of(peer.ip()) as usize] += 1;
            }
        }
        o
    }

    /// True if this client 5-tuple has an allocation here.
    pub fn has_allocation(&self, client: &ClientKey) -> bool {
        self.by_client.contains_key(client)
    }

    /// When [`Server::handle_timeout`] should next run, if anything is scheduled.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let own = self.timers.peek().map(|Reverse((t, _, _))| *t);
        match (own, self.shared.next_reservation_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes whatever expired by `now`: allocations (with their relayed addresses),
    /// permissions, channel bindings, and reservations nobody claimed.
    pub fn handle_timeout(&mut self, now: Now, env: &mut impl Env) {
        self.sync_live();
        if std::mem::take(&mut self.sweep) {
            self.apply_session_policy(now, env);
        }
        self.shared.expire_reservations(now.mono, env);
        while let Some(&Reverse((t, slot, generation))) = self.timers.peek() {
            if t > now.mono {
                break;
            }
            self.timers.pop();
            let Some(a) = self.allocs.get_mut(slot) else {
                continue;
            };
            if a.generation != generation || a.scheduled != t {
                continue; // superseded entry
            }
            if a.expires <= now.mono {
                if a.cut_off.is_some_and(|c| c <= now.mono) {
                    self.stats.allocations_revoked += 1;
                    self.delete(slot, now, env, "its secret was removed");
                } else {
                    self.stats.allocations_expired += 1;
                    self.delete(slot, now, env, "expired");
                }
                continue;
            }
            a.perms.expire(now.mono);
            a.channels.retain(|c| c.expires > now.mono);
            let next = a.next_deadline();
            a.scheduled = next;
            let client = a.client;
            self.timers.push(Reverse((next, slot, generation)));
            self.fast_dirty(client);
        }
    }

    /// A stream client's connection closed: its allocation ends with it (RFC 8656 §3.1).
    pub fn client_closed(&mut self, now: Now, client: &ClientKey, env: &mut impl Env) {
        if let Some(&slot) = self.by_client.get(client) {
            self.stats.allocations_deleted += 1;
            self.delete(slot, now, env, "connection closed");
        }
    }

    /// Deletes every allocation (shutdown).
    pub fn clear(&mut self, now: Now, env: &mut impl Env) {
        let slots: Vec<usize> = self.allocs.iter().map(|(s, _)| s).collect();
        for s in slots {
            self.delete(s, now, env, "shutdown");
        }
    }

    /// Picks up a reload: one relaxed load when nothing changed. After one, the permissions
    /// and channel bindings the new filter refuses are dropped, so that a `deny` added by a
    /// reload cuts the peers it names off at once.
    #[inline]
    fn sync_live(&mut self) {
        let v = self.shared.live_version();
        if v != self.live_version {
            self.reload_live(v);
        }
    }

    #[cold]
    fn reload_live(&mut self, version: u64) {
        self.live = self.shared.live();
        self.live_version = version;
        self.sweep = true;
        let filter = &self.live.filter;
        let mut dropped = 0u64;
        for (_, a) in &mut self.allocs {
            dropped += a.perms.revoke(|ip| filter.check_ip(ip).is_ok());
            dropped += a.channels.retain(|c| filter.check(c.peer).is_ok());
        }
        self.fast_dirty_all();
        if dropped > 0 {
            tracing::info!(
                dropped,
                "a reload's peer filter removed permissions and channels"
            );
        }
    }

    /// Applies a reloaded session policy: a revoked user's allocations end now; those a
    /// removed secret admitted end after `removed_secret_grace`; a shorter `max_session`
    /// brings expiries forward.
    fn apply_session_policy(&mut self, now: Now, env: &mut impl Env) {
        let creds = self.live.credentials.clone();
        let kept: Vec<[u8; 8]> = creds.secrets.iter().map(|s| auth::secret_id(s)).collect();
        let slots: Vec<usize> = self.allocs.iter().map(|(s, _)| s).collect();
        for slot in slots {
            let a = &self.allocs[slot];
            if creds.revoked_users.contains(&*a.quota_key) {
                self.stats.allocations_revoked += 1;
                self.delete(slot, now, env, "user revoked");
                continue;
            }
            let mut cut_off = a.cut_off;
            if let (Some(id), Some(grace)) = (a.secret, creds.removed_secret_grace)
                && cut_off.is_none()
                && !kept.contains(&id)
            {
                cut_off = Some(later(now.mono, grace as u64));
            }
            let end = self.session_end(now, a.credential_expiry, cut_off);
            let a = &mut self.allocs[slot];
            a.cut_off = cut_off;
            if let Some(end) = end
                && end < a.expires
            {
                a.expires = end;
                self.schedule(slot);
            }
        }
    }

    /// Charges a packet of `len` bytes in direction `dir` to the allocation in `slot` and to its
    /// user: false (and counted) if either is over its cap. No clock read: `now` is the
    /// driver's, once per round.
    #[inline]
    fn meter(&mut self, slot: usize, dir: usize, now: Instant, len: usize) -> bool {
        let ms = self.millis(now);
        let caps = self.caps(self.allocs[slot].profile);
        let a = &mut self.allocs[slot];
        let ok = a.meters[dir].admit(&caps.allocation, ms, len)
            && self
                .users
                .get_mut(a.user)
                .is_none_or(|u| u.meters[dir].admit(&caps.user, ms, len));
        if ok {
            self.watch_bytes(slot, ms, len as u64);
        } else {
            self.stats.bandwidth_dropped[dir] += 1;
        }
        ok
    }

    /// Milliseconds since the first time the driver passed in (the limiters' clock).
    #[inline]
    pub(super) fn millis(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_millis() as u64
    }

    /// Makes sure a timer entry fires no later than the allocation's next deadline.
    fn schedule(&mut self, slot: usize) {
        // Whatever moves a deadline changed what the fast path may carry.
        self.fast_dirty(self.allocs[slot].client);
        let a = &mut self.allocs[slot];
        let next = a.next_deadline();
        if next < a.scheduled {
            a.scheduled = next;
            self.timers.push(Reverse((next, slot, a.generation)));
        }
    }

    fn delete(&mut self, slot: usize, now: Now, env: &mut impl Env, why: &'static str) {
        let mut a = self.allocs.remove(slot);
        self.fast_ended(a.client, std::mem::take(&mut a.watch));
        self.by_client.remove(&a.client);
        self.fast_dirty(a.client);
        for r in a.relays.iter().flatten() {
            env.close_relay(r.id);
        }
        self.shared.release(&a.quota_key);
        self.shared.release_source(a.source);
        if let Some(u) = self.users.get_mut(a.user) {
            u.allocations -= 1;
            if u.allocations == 0 {
                let u = self.users.remove(a.user);
                self.user_slots.remove(&u.key);
            }
        }
        // A reservation dies with the allocation that made it, unless claimed already.
        if let Some(token) = &a.reservation {
            self.shared.cancel_reservation(token, env);
        }
        let red = &self.shared.redactor;
        tracing::debug!(
            client = %red.client(now.unix, &a.client.addr),
            user = %red.user(now.unix, &a.username),
            reason = why,
            "allocation deleted"
        );
    }

    pub(super) fn request(
        &mut self,
        now: Now,
        from: ClientKey,
        m: &Message,
        out: &mut [u8],
        env: &mut impl Env,
    ) -> Option<usize> {
        let mut r = Req {
            now,
            from,
            m,
            seal: Seal::unsigned(m),
        };
        let outcome = self.answer(&mut r, out, env);
        self.respond(&r, out, outcome)
    }

    /// Answers a request; `r.seal` turns signed once it authenticates.
    fn answer(&mut self, r: &mut Req, out: &mut [u8], env: &mut impl Env) -> Result<usize, Fail> {
        let m = r.m;
        request::check_bounds(m)?;
        if m.method == method::BINDING {
            if !m.unknown_required().is_empty() {
                return Err(Fail::UnknownAttributes);
            }
            let mut w = Self::begin_unsigned(out, m, Class::Success)?;
            w.xor_address(crate::stun::attr::XOR_MAPPED_ADDRESS, r.from.addr)?;
            return Ok(Self::seal(w, r.seal)?);
        }
        if !matches!(
            m.method,
            method::ALLOCATE | method::REFRESH | method::CREATE_PERMISSION | method::CHANNEL_BIND
        ) {
            return Err(TurnError::bad_request("unknown method").into());
        }
        let existing = self.by_client.get(&r.from).copied();
        // What cannot succeed is answered before authentication, in 28 bytes instead of an
        // 84-byte challenge: a request on a 5-tuple without an allocation (437 tells a client
        // whose allocation is gone to allocate again), an Allocate without a transport.
        if existing.is_none() {
            if m.method != method::ALLOCATE {
                return Err(TurnError::new(437, "no allocation on this 5-tuple").into());
            }
            if !matches!(
                m.get(crate::stun::attr::REQUESTED_TRANSPORT),
                Some(&[_, _, _, _])
            ) {
                return Err(
                    TurnError::bad_request("REQUESTED-TRANSPORT missing or malformed").into(),
                );
            }
        }
        let who = self.authenticate(r, existing)?;
        r.seal.integrity = Some((who.integrity, who.key));
        if !m.unknown_required().is_empty() {
            return Err(Fail::UnknownAttributes);
        }
        if m.method == method::ALLOCATE {
            return match existing {
                Some(slot) if self.allocs[slot].allocate_txid == *m.transaction_id() => {
                    self.allocate_success(r, out, slot)
                }
                Some(_) => Err(TurnError::new(437, "the 5-tuple holds an allocation").into()),
                None => {
                    let req = AllocateRequest::parse(m)?;
                    self.allocate(r, req, &who, out, env)
                }
            };
        }
        let Some(slot) = existing else {
            return Err(TurnError::new(437, "no allocation on this 5-tuple").into());
        };
        match m.method {
            method::REFRESH => self.refresh(r, RefreshRequest::parse(m)?, slot, out, env),
            method::CREATE_PERMISSION => {
                self.create_permission(r, PermissionRequest::parse(m)?, slot, out)
            }
            _ => self.channel_bind(r, ChannelBindRequest::parse(m)?, slot, out),
        }
    }
}

#[cfg(test)]
mod tests;
