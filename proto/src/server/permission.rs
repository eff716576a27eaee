//! Permissions (RFC 8656 §9, §10) and channel bindings (§11): vetting a peer, installing and
//! refreshing what a client may reach.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::error::{Fail, Req};
use super::{ChannelBindRequest, PermissionRequest, Server, TurnError};

/// A hasher for the relay path's small per-allocation tables (peer IPs, channel numbers, peer
/// addresses): a multiply-rotate fold, a few cycles per key. Not keyed: the keys are chosen by
/// a client holding a credential, but each table is capped
/// ([`ServerConfig::max_permissions`](super::ServerConfig::max_permissions)), so colliding
/// keys cost at most a cap's worth of probes in that client's own allocation.
#[derive(Default, Clone, Copy)]
pub(super) struct FoldHasher(u64);

impl std::hash::Hasher for FoldHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64)
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.write_u64(i as u64)
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64)
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64)
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // hashbrown takes its control bits from the top: fold the low bits up.
        self.0 ^ (self.0 >> 29)
    }
}

type Fold = std::hash::BuildHasherDefault<FoldHasher>;

/// An allocation's permissions: which peer IPs may send to it and be sent to, until when.
/// Lookups are O(1); the number is capped by the caller.
#[derive(Debug, Default)]
pub(super) struct Permissions {
    by_ip: HashMap<IpAddr, Instant, Fold>,
}

impl Permissions {
    /// Whether `ip` holds a live permission at `now` (checked on every relayed packet).
    #[inline]
    pub(super) fn permits(&self, ip: IpAddr, now: Instant) -> bool {
        self.by_ip.get(&ip).is_some_and(|e| *e > now)
    }

    /// Whether `ip` has an entry (live or not yet swept): a grant to it adds nothing.
    pub(super) fn holds(&self, ip: IpAddr) -> bool {
        self.by_ip.contains_key(&ip)
    }

    /// Installs or refreshes a permission.
    pub(super) fn grant(&mut self, ip: IpAddr, expires: Instant) {
        self.by_ip.insert(ip, expires);
    }

    /// When `ip`'s permission ends, if it has one.
    pub(super) fn expiry(&self, ip: IpAddr) -> Option<Instant> {
        self.by_ip.get(&ip).copied()
    }

    /// Drops the permissions whose IP `keep` refuses; returns how many.
    pub(super) fn revoke(&mut self, keep: impl Fn(IpAddr) -> bool) -> u64 {
        let before = self.by_ip.len();
        self.by_ip.retain(|ip, _| keep(*ip));
        (before - self.by_ip.len()) as u64
    }

    /// Drops what expired by `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        self.by_ip.retain(|_, e| *e > now);
    }

    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.by_ip.values().copied().min()
    }

    /// How many entries (expired ones included until housekeeping).
    pub(super) fn len(&self) -> usize {
        self.by_ip.len()
    }

    /// The permitted IPs (expired ones included until housekeeping).
    pub(super) fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.by_ip.keys().copied()
    }
}

/// A channel binding's peer and expiry.
#[derive(Clone, Copy, Debug)]
pub(super) struct Channel {
    pub(super) peer: SocketAddr,
    pub(super) expires: Instant,
}

/// An allocation's channel bindings, by number (client to peer) and by peer (peer to client),
/// both O(1); the number is capped by the caller.
#[derive(Debug, Default)]
pub(super) struct Channels {
    by_number: HashMap<u16, Channel, Fold>,
    by_peer: HashMap<SocketAddr, u16, Fold>,
}

impl Channels {
    /// The live binding of `number` at `now`.
    #[inline]
    pub(super) fn peer_of(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.by_number
            .get(&number)
            .filter(|c| c.expires > now)
            .map(|c| c.peer)
    }

    /// The live channel number bound to `peer` at `now`.
    #[inline]
    pub(super) fn number_of(&self, peer: &SocketAddr, now: Instant) -> Option<u16> {
        let n = *self.by_peer.get(peer)?;
        self.by_number
            .get(&n)
            .is_some_and(|c| c.expires > now)
            .then_some(n)
    }

    /// RFC 8656 §11.2: a number bound to another peer, or a peer bound to another number.
    /// Expired bindings still count until housekeeping removes them.
    pub(super) fn conflicts(&self, number: u16, peer: &SocketAddr) -> bool {
        self.by_number.get(&number).is_some_and(|c| c.peer != *peer)
            || self.by_peer.get(peer).is_some_and(|n| *n != number)
    }

    /// Whether `number` is bound (a bind of it refreshes, adds nothing).
    pub(super) fn holds(&self, number: u16) -> bool {
        self.by_number.contains_key(&number)
    }

    /// Binds or refreshes; the caller checked [`Channels::conflicts`].
    pub(super) fn bind(&mut self, number: u16, peer: SocketAddr, expires: Instant) {
        self.by_number.insert(number, Channel { peer, expires });
        self.by_peer.insert(peer, number);
    }

    /// Keeps the bindings `keep` accepts; returns how many went.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Channel) -> bool) -> u64 {
        let before = self.by_number.len();
        let by_peer = &mut self.by_peer;
        self.by_number.retain(|_, c| {
            let k = keep(c);
            if !k {
                by_peer.remove(&c.peer);
            }
            k
        });
        (before - self.by_number.len()) as u64
    }

    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.by_number.values().map(|c| c.expires).min()
    }

    /// How many bindings (expired ones included until housekeeping).
    pub(super) fn len(&self) -> usize {
        self.by_number.len()
    }

    /// Every binding with its number (expired ones included until housekeeping).
    pub(super) fn bound(&self) -> impl Iterator<Item = (u16, Channel)> + '_ {
        self.by_number.iter().map(|(n, c)| (*n, *c))
    }

    /// The bound peers.
    pub(super) fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.by_number.values().map(|c| c.peer)
    }
}

impl Server {
    /// Checks a peer for CreatePermission/ChannelBind: family of the allocation (443) and the
    /// peer filter (403).
    fn vet_peer(&mut self, slot: usize, peer: SocketAddr) -> Result<(), TurnError> {
        if self.allocs[slot].relay_for(&peer).is_none() {
            return Err(TurnError::new(
                443,
                "no relayed address of the peer's family",
            ));
        }
        self.sync_live();
        if let Err(why) = self.live.filter.check(peer) {
            self.stats.peers_denied += 1;
            tracing::debug!(reason = ?why, "peer refused");
            return Err(TurnError::new(403, "peer refused by the filter"));
        }
        Ok(())
    }

    pub(super) fn create_permission(
        &mut self,
        r: &Req,
        req: PermissionRequest,
        slot: usize,
        out: &mut [u8],
    ) -> Result<usize, Fail> {
        // All or nothing: vet every address before installing any.
        for p in req.peers() {
            self.vet_peer(slot, *p)?;
        }
        let cfg = &self.shared.config;
        let expires = super::later(r.now.mono, cfg.permission_lifetime as u64);
        let a = &mut self.allocs[slot];
        let new = req
            .peers()
            .iter()
            .filter(|p| !a.perms.holds(p.ip()))
            .count();
        if a.perms.len() + new > cfg.max_permissions as usize {
            self.stats.permissions_refused += 1;
            return Err(TurnError::new(508, "permission quota reached").into());
        }
        for p in req.peers() {
            a.perms.grant(p.ip(), expires);
        }
        self.watch_peers(slot, new, r.now.mono);
        self.schedule(slot);
        self.success(r, out)
    }

    pub(super) fn channel_bind(
        &mut self,
        r: &Req,
        req: ChannelBindRequest,
        slot: usize,
        out: &mut [u8],
    ) -> Result<usize, Fail> {
        let ChannelBindRequest { number, peer } = req;
        self.vet_peer(slot, peer)?;
        let a = &self.allocs[slot];
        if a.channels.conflicts(number, &peer) {
            return Err(TurnError::bad_request("channel or peer bound otherwise").into());
        }
        let cfg = &self.shared.config;
        let grows_channels = !a.channels.holds(number);
        let grows_perms = !a.perms.holds(peer.ip());
        if (grows_channels && a.channels.len() >= cfg.max_channels as usize)
            || (grows_perms && a.perms.len() >= cfg.max_permissions as usize)
        {
            self.stats.permissions_refused += 1;
            return Err(TurnError::new(508, "channel or permission quota reached").into());
        }
        let ch_exp = super::later(r.now.mono, cfg.channel_lifetime as u64);
        let perm_exp = super::later(r.now.mono, cfg.permission_lifetime as u64);
        let a = &mut self.allocs[slot];
        a.channels.bind(number, peer, ch_exp);
        a.perms.grant(peer.ip(), perm_exp);
        self.watch_peers(slot, usize::from(grows_perms), r.now.mono);
        self.schedule(slot);
        self.success(r, out)
    }
}
