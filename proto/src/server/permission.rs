//! Permissions (RFC 8656 §9, §10) and channel bindings (§11): vetting a peer, installing and
//! refreshing what a client may reach.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::error::{Fail, Req};
use super::{ChannelBindRequest, PermissionRequest, Server, TurnError};

#[derive(Clone, Copy, Debug)]
struct Permission {
    ip: IpAddr,
    expires: Instant,
}

/// An allocation's permissions: which peer IPs may send to it and be sent to, until when.
#[derive(Debug, Default)]
pub(super) struct Permissions {
    list: Vec<Permission>,
}

impl Permissions {
    /// Whether `ip` holds a live permission at `now` (checked on every relayed packet).
    #[inline]
    pub(super) fn permits(&self, ip: IpAddr, now: Instant) -> bool {
        self.list.iter().any(|p| p.ip == ip && p.expires > now)
    }

    /// Installs or refreshes a permission.
    pub(super) fn grant(&mut self, ip: IpAddr, expires: Instant) {
        match self.list.iter_mut().find(|p| p.ip == ip) {
            Some(p) => p.expires = expires,
            None => self.list.push(Permission { ip, expires }),
        }
    }

    /// Drops what expired by `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        self.list.retain(|p| p.expires > now);
    }

    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.list.iter().map(|p| p.expires).min()
    }

    /// The permitted IPs (expired ones included until housekeeping).
    pub(super) fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.list.iter().map(|p| p.ip)
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Channel {
    pub(super) number: u16,
    pub(super) peer: SocketAddr,
    pub(super) expires: Instant,
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
        if let Err(why) = self.shared.live().filter.check(peer) {
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
        let lifetime = Duration::from_secs(self.shared.config.permission_lifetime as u64);
        let expires = r.now.mono + lifetime;
        let a = &mut self.allocs[slot];
        for p in req.peers() {
            a.perms.grant(p.ip(), expires);
        }
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
        // RFC 8656 §11.2: a number bound to another peer, or a peer bound to another number,
        // is an error; rebinding the same pair refreshes it. Expired bindings still count:
        // housekeeping removes them.
        let conflict = a.channels.iter().any(|c| {
            (c.number == number && c.peer != peer) || (c.peer == peer && c.number != number)
        });
        if conflict {
            return Err(TurnError::bad_request("channel or peer bound otherwise").into());
        }
        let cfg = &self.shared.config;
        let ch_exp = r.now.mono + Duration::from_secs(cfg.channel_lifetime as u64);
        let perm_exp = r.now.mono + Duration::from_secs(cfg.permission_lifetime as u64);
        let a = &mut self.allocs[slot];
        match a.channels.iter_mut().find(|c| c.number == number) {
            Some(c) => c.expires = ch_exp,
            None => a.channels.push(Channel {
                number,
                peer,
                expires: ch_exp,
            }),
        }
        a.perms.grant(peer.ip(), perm_exp);
        self.schedule(slot);
        self.success(r, out)
    }
}
