//! Allocations: creating one (RFC 8656 §7), answering its retransmitted Allocate, refreshing and
//! deleting it (§8).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::authn::Authed;
use super::error::{Fail, Req};
use super::permission::{Channels, Permissions};
use super::{
    AllocateRequest, ClientKey, Env, Family, PortPolicy, RefreshRequest, Refusal, RelayId, Server,
    TurnError,
};
use crate::auth::{self, Key};
use crate::limiter::Meter;
use crate::stun::{self, Class, attr};

/// A relayed address of an allocation, as the core knows it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Relayed {
    pub(super) id: RelayId,
    pub(super) advertised: SocketAddr,
}

pub(super) struct Allocation {
    pub(super) client: ClientKey,
    pub(super) generation: u32,
    pub(super) username: Box<str>,
    pub(super) quota_key: Box<str>,
    /// The client's source prefix, which holds a unit of its cap ([`Shared::acquire_source`]).
    pub(super) source: u64,
    pub(super) key: Key,
    /// Shaping profile chosen by the credential (0: the node's default).
    pub(super) profile: u8,
    /// Transaction of the Allocate that created it, to answer its retransmissions.
    pub(super) allocate_txid: [u8; 12],
    pub(super) granted: u32,
    pub(super) reservation: Option<[u8; 8]>,
    /// ADDITIONAL-ADDRESS-FAMILY asked for IPv6 and we could not give it.
    pub(super) v6_failed: bool,
    pub(super) expires: Instant,
    /// The REST credential's expiry (Unix seconds); None for a static user.
    pub(super) credential_expiry: Option<u64>,
    /// The secret that admitted it ([`auth::secret_id`]).
    pub(super) secret: Option<[u8; 8]>,
    /// Set when a reload removed that secret: the allocation ends then, whatever refreshes.
    pub(super) cut_off: Option<Instant>,
    /// The deadline of this allocation's live timer entry.
    pub(super) scheduled: Instant,
    pub(super) relays: [Option<Relayed>; 2],
    pub(super) perms: Permissions,
    pub(super) channels: Channels,
    /// Bandwidth used, per direction ([`TO_PEER`], [`TO_CLIENT`]).
    pub(super) meters: [Meter; 2],
    /// Its user's slot in [`Server`]'s user meters.
    pub(super) user: usize,
    /// Its abuse signals' counters.
    pub(super) watch: super::watch::Watch,
}

/// Index of the client-to-peer direction in meters and counters.
pub(super) const TO_PEER: usize = 0;
/// Index of the peer-to-client direction.
pub(super) const TO_CLIENT: usize = 1;

/// One user's (REST id's) bandwidth on this worker, shared by its allocations here.
pub(super) struct UserMeter {
    pub(super) key: Box<str>,
    pub(super) allocations: u32,
    pub(super) meters: [Meter; 2],
}

impl Allocation {
    /// The relayed address a peer of this family is reached from.
    #[inline]
    pub(super) fn relay_for(&self, peer: &SocketAddr) -> Option<RelayId> {
        self.relays[Family::of(peer.ip()) as usize].map(|r| r.id)
    }

    pub(super) fn next_deadline(&self) -> Instant {
        [self.perms.next_expiry(), self.channels.next_expiry()]
            .into_iter()
            .flatten()
            .fold(self.expires, Instant::min)
    }
}

impl Server {
    /// The latest an allocation may last to at `now`, whatever it asks: its credential's expiry
    /// plus `max_session`, and a removed secret's grace. None: no bound.
    pub(super) fn session_end(
        &self,
        now: super::Now,
        credential_expiry: Option<u64>,
        cut_off: Option<Instant>,
    ) -> Option<Instant> {
        let bound = match (credential_expiry, self.live.credentials.max_session) {
            (Some(exp), Some(past)) => {
                let left = exp.saturating_add(past as u64).saturating_sub(now.unix);
                Some(super::later(now.mono, left))
            }
            _ => None,
        };
        match (bound, cut_off) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The lifetime to grant for a requested one.
    fn lifetime(&self, requested: Option<u32>) -> u32 {
        let c = &self.shared.config;
        let floor = c.default_lifetime.min(c.max_lifetime);
        requested.map_or(floor, |r| r.clamp(floor, c.max_lifetime))
    }

    /// The credential's shaping profile: its index among the configured ones, plus one.
    fn profile_of(&self, username: &str) -> u8 {
        let Some(name) = auth::shaping_profile(username) else {
            return 0;
        };
        match self
            .shared
            .config
            .shaping_profiles
            .iter()
            .position(|p| p == name)
        {
            Some(i) => (i + 1).min(u8::MAX as usize) as u8,
            None => {
                tracing::warn!(
                    "a credential names an unknown shaping profile; the node default applies"
                );
                0
            }
        }
    }

    /// The bandwidth caps of a shaping profile (the node's when it has none of its own).
    #[inline]
    pub(super) fn caps(&self, profile: u8) -> crate::limiter::BandwidthCaps {
        let b = &self.live.bandwidth;
        b.get(profile as usize)
            .or_else(|| b.first())
            .copied()
            .unwrap_or_default()
    }

    /// The user meter of `quota_key` on this worker, created (full) if it has none; one more
    /// allocation holds it.
    fn user_slot(&mut self, quota_key: &str, caps: &crate::limiter::Caps, ms: u64) -> usize {
        if let Some(&slot) = self.user_slots.get(quota_key) {
            self.users[slot].allocations += 1;
            return slot;
        }
        let slot = self.users.insert(UserMeter {
            key: quota_key.into(),
            allocations: 1,
            meters: [Meter::new(caps, ms); 2],
        });
        self.user_slots.insert(quota_key.into(), slot);
        slot
    }

    /// The lifetime granted for a requested one, cut to the session's end; and the expiry.
    fn bounded_lifetime(
        &self,
        now: super::Now,
        requested: Option<u32>,
        credential_expiry: Option<u64>,
        cut_off: Option<Instant>,
    ) -> (u32, Instant) {
        let granted = self.lifetime(requested);
        let mut expires = super::later(now.mono, granted as u64);
        if let Some(end) = self.session_end(now, credential_expiry, cut_off)
            && end < expires
        {
            expires = end;
        }
        let granted = expires.saturating_duration_since(now.mono).as_secs() as u32;
        (granted, expires)
    }

    fn refuse(&mut self, why: Refusal) -> Fail {
        self.stats.allocations_refused[why as usize] += 1;
        why.error().into()
    }

    pub(super) fn allocate(
        &mut self,
        r: &Req,
        req: AllocateRequest,
        who: &Authed,
        out: &mut [u8],
        env: &mut impl Env,
    ) -> Result<usize, Fail> {
        let cfg = &self.shared.config;
        if req.reservation.is_none() && cfg.relays[req.family as usize].is_empty() {
            return Err(TurnError::new(440, "address family not offered").into());
        }
        if let Some(zone) = &cfg.zone
            && auth::is_rest_username(who.username)
            && auth::zone_claim(who.username) != Some(zone.as_str())
        {
            return Err(self.refuse(Refusal::Zone));
        }
        let profile = self.profile_of(who.username);
        if profile > 0
            && cfg.tls_only_profiles.get(profile as usize - 1) == Some(&true)
            && r.from.transport != super::Transport::Tls
        {
            return Err(self.refuse(Refusal::TlsRequired));
        }
        if self
            .live
            .credentials
            .revoked_users
            .contains(auth::quota_key(who.username))
        {
            return Err(self.refuse(Refusal::Revoked));
        }
        if self.shared.draining() {
            return Err(self.refuse(Refusal::Draining));
        }
        let source = crate::limiter::source_prefix(r.from.addr.ip());
        if let Err(why) = self.shared.acquire_source(source) {
            return Err(self.refuse(why));
        }
        match self.create(r, req, who, (source, profile), env) {
            Ok(slot) => self.allocate_success(r, out, slot),
            Err(e) => {
                self.shared.release_source(source);
                Err(e)
            }
        }
    }

    /// Creates the allocation once the source prefix's unit is held: the user's and the node's
    /// quota units, the relayed addresses, the state; its slot.
    fn create(
        &mut self,
        r: &Req,
        req: AllocateRequest,
        who: &Authed,
        (source, profile): (u64, u8),
        env: &mut impl Env,
    ) -> Result<usize, Fail> {
        let quota_key: Box<str> = auth::quota_key(who.username).into();
        // A claimed quota (an id that stands for a network) up to the node's; else the node's
        // per-user quota.
        let quota = auth::quota_claim(who.username).map_or(self.shared.config.user_quota, |q| {
            q.min(self.shared.config.total_quota)
        });
        // A claimed reservation's quota unit passes to the allocation that claims it.
        let claimed = match req.reservation {
            Some(t) => match self.shared.claim(r.now.mono, &t, env) {
                Some(c) => Some(c),
                None => return Err(self.refuse(Refusal::Ports)),
            },
            None => None,
        };
        let units = match &claimed {
            Some((_, owner)) if **owner == *quota_key => Ok(()),
            Some((parked, owner)) => {
                self.shared.release(owner);
                self.shared.acquire(&quota_key, quota).inspect_err(|_| {
                    env.release_reserved(*parked);
                })
            }
            None => self.shared.acquire(&quota_key, quota),
        };
        if let Err(why) = units {
            return Err(self.refuse(why));
        }
        // The port an EVEN-PORT R bit holds counts like an allocation (in the user's quota
        // and the node's), so quota 1 cannot hold two ports.
        let reserving = matches!(req.port, PortPolicy::Even { reserve_next: true });
        if reserving && let Err(why) = self.shared.acquire(&quota_key, quota) {
            self.shared.release(&quota_key);
            return Err(self.refuse(why));
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let slot = self.allocs.vacant_key();
        let opened = self.open_relays(
            r,
            &req,
            claimed.map(|c| c.0),
            &quota_key,
            slot,
            generation,
            env,
        );
        let Some((relays, reservation, v6_failed)) = opened else {
            self.shared.release(&quota_key);
            if reserving {
                self.shared.release(&quota_key);
            }
            return Err(self.refuse(Refusal::Ports));
        };
        if reserving && reservation.is_none() {
            self.shared.release(&quota_key);
        }
        let credential_expiry = auth::rest_expiry(who.username);
        let ms = self.millis(r.now.mono);
        let caps = self.caps(profile);
        let user = self.user_slot(&quota_key, &caps.user, ms);
        let (granted, expires) =
            self.bounded_lifetime(r.now, req.lifetime, credential_expiry, None);
        let a = Allocation {
            client: r.from,
            generation,
            username: who.username.into(),
            quota_key,
            source,
            key: who.key,
            profile,
            allocate_txid: *r.m.transaction_id(),
            granted,
            reservation,
            v6_failed,
            expires,
            credential_expiry,
            secret: who.secret,
            cut_off: None,
            scheduled: expires,
            relays,
            perms: Permissions::default(),
            channels: Channels::default(),
            meters: [Meter::new(&caps.allocation, ms); 2],
            user,
            watch: super::watch::Watch::new(ms),
        };
        let s = self.allocs.insert(a);
        debug_assert_eq!(s, slot);
        self.by_client.insert(r.from, slot);
        self.timers
            .push(std::cmp::Reverse((expires, slot, generation)));
        self.stats.allocations_created += 1;
        self.shared
            .note_spread(&self.allocs[slot].quota_key, r.from.addr.ip(), r.now.unix);
        let red = &self.shared.redactor;
        tracing::debug!(
            client = %red.client(r.now.unix, &r.from.addr),
            user = %red.user(r.now.unix, who.username),
            lifetime = granted,
            "allocation created"
        );
        Ok(slot)
    }

    /// Opens the allocation's relayed addresses: the reserved one, or the requested family's
    /// (and IPv6 too when asked). None when the primary cannot be opened.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn open_relays(
        &self,
        r: &Req,
        req: &AllocateRequest,
        claimed: Option<SocketAddr>,
        quota_key: &str,
        slot: usize,
        generation: u32,
        env: &mut impl Env,
    ) -> Option<([Option<Relayed>; 2], Option<[u8; 8]>, bool)> {
        let cfg = &self.shared.config;
        let advertise = |bound: SocketAddr| {
            let ip: IpAddr = cfg.relays[Family::of(bound.ip()) as usize]
                .iter()
                .find(|r| r.bind == bound.ip())
                .map_or(bound.ip(), |r| r.advertise);
            SocketAddr::new(ip, bound.port())
        };
        let df = req.dont_fragment;
        let mut relays: [Option<Relayed>; 2] = [None, None];
        if let Some(parked) = claimed {
            // The reserved address's family is the allocation's.
            let f = Family::of(parked.ip());
            let id = RelayId::new(slot, generation, f);
            if !env.adopt_reserved(id, parked, df) {
                return None;
            }
            relays[f as usize] = Some(Relayed {
                id,
                advertised: advertise(parked),
            });
            return Some((relays, None, false));
        }
        let id = RelayId::new(slot, generation, req.family);
        let o = env.open_relay(id, &cfg.relays[req.family as usize], req.port, df)?;
        relays[req.family as usize] = Some(Relayed {
            id,
            advertised: advertise(o.bound),
        });
        let mut reservation = None;
        if let Some(parked) = o.reserved {
            reservation = self.shared.reserve(r.now.mono, parked, quota_key, env);
            if reservation.is_none() {
                env.close_relay(id);
                return None;
            }
        }
        let mut v6_failed = false;
        if req.additional_v6 {
            let id = RelayId::new(slot, generation, Family::V6);
            match env.open_relay(
                id,
                &cfg.relays[Family::V6 as usize],
                super::PortPolicy::Any,
                df,
            ) {
                Some(o) => {
                    relays[1] = Some(Relayed {
                        id,
                        advertised: advertise(o.bound),
                    })
                }
                None => v6_failed = true,
            }
        }
        Some((relays, reservation, v6_failed))
    }

    pub(super) fn allocate_success(
        &self,
        r: &Req,
        out: &mut [u8],
        slot: usize,
    ) -> Result<usize, Fail> {
        let a = &self.allocs[slot];
        let remaining = a.expires.saturating_duration_since(r.now.mono).as_secs() as u32;
        let mut w = self.begin(out, r.m, Class::Success)?;
        for relayed in a.relays.iter().flatten() {
            w.xor_address(attr::XOR_RELAYED_ADDRESS, relayed.advertised)?;
        }
        w.u32(attr::LIFETIME, remaining.min(a.granted))?;
        if let Some(t) = &a.reservation {
            w.attr(attr::RESERVATION_TOKEN, t)?;
        }
        w.xor_address(attr::XOR_MAPPED_ADDRESS, a.client.addr)?;
        if a.v6_failed {
            let reason = stun::reason_phrase(440).as_bytes();
            let v = w.attr_slot(attr::ADDRESS_ERROR_CODE, 4 + reason.len())?;
            v[0] = Family::V6.wire();
            v[1] = 0;
            v[2] = 4;
            v[3] = 40;
            v[4..].copy_from_slice(reason);
        }
        Ok(Self::seal(w, r.seal)?)
    }

    pub(super) fn refresh(
        &mut self,
        r: &Req,
        req: RefreshRequest,
        slot: usize,
        out: &mut [u8],
        env: &mut impl Env,
    ) -> Result<usize, Fail> {
        if let Some(fam) = req.family
            && self.allocs[slot].relays[fam as usize].is_none()
        {
            return Err(TurnError::new(443, "the allocation has no address of this family").into());
        }
        let granted = if req.lifetime == Some(0) {
            self.stats.allocations_deleted += 1;
            self.delete(slot, r.now, env, "refresh with lifetime 0");
            0
        } else {
            let a = &self.allocs[slot];
            let (granted, expires) =
                self.bounded_lifetime(r.now, req.lifetime, a.credential_expiry, a.cut_off);
            let a = &mut self.allocs[slot];
            a.expires = expires;
            a.granted = granted;
            // A later expiry needs no new timer entry: the current one fires first and
            // reschedules; an earlier one (a shorter lifetime) does.
            self.schedule(slot);
            granted
        };
        let mut w = self.begin(out, r.m, Class::Success)?;
        w.u32(attr::LIFETIME, granted)?;
        Ok(Self::seal(w, r.seal)?)
    }
}
