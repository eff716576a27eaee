//! What the kernel fast path may carry (issue 24), decided here, where every binding is made
//! and ended: the core stays the one authority, the driver only mirrors its answer into the
//! kernel's maps.
//!
//! A binding is eligible when its client speaks UDP over IPv4, its channel is bound and live,
//! and the peer (IPv4) holds a live permission; what the kernel carried is read back and charged
//! to the bandwidth caps, and an allocation over a cap leaves the fast path for a while. Each
//! carries the instant it stops being valid (the
//! earliest of the channel's, the permission's and the allocation's expiry), so the kernel
//! stops at that instant without waiting for a timer. Whatever changes an allocation's
//! bindings (a ChannelBind, a CreatePermission or Refresh, an expiry, a reload's filter, a
//! deletion for any reason) marks its client, and [`Server::fast_path_changes`] hands the
//! driver what to install and what to remove.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::{ClientKey, RelayId, Server, Transport};

/// A binding the fast path may carry: ChannelData on `channel` from `client` goes to `peer`
/// from the relayed address `relay`, and `peer`'s datagrams to that address come back to the
/// client on `channel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastBinding {
    /// The client's 5-tuple.
    pub client: ClientKey,
    /// The channel number.
    pub channel: u16,
    /// The relayed address (the driver knows where it is bound).
    pub relay: RelayId,
    /// The peer.
    pub peer: SocketAddr,
    /// The allocation's shaping profile (the driver keeps shaped flows' client leg).
    pub profile: u8,
    /// When it stops being valid, whatever happens before.
    pub until: Instant,
}

/// What the driver does to its maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastChange {
    /// Install the binding, or update it (a later `until`).
    Install(FastBinding),
    /// Remove it.
    Remove(FastBinding),
}

/// Which clients' bindings changed, and what the driver was last told of each.
#[derive(Debug, Default)]
pub(super) struct FastTrack {
    on: bool,
    dirty: Vec<ClientKey>,
    installed: HashMap<ClientKey, Vec<FastBinding>>,
    /// Allocations that went over a bandwidth cap, kept off the fast path until then.
    cooling: Vec<(Instant, ClientKey)>,
}

/// How long an allocation over its bandwidth cap stays on the user-space path, which drops
/// what exceeds the cap datagram by datagram.
pub const FAST_PATH_COOLING: std::time::Duration = std::time::Duration::from_secs(2);

impl Server {
    /// Tells the core the driver has a fast path: from now on it tracks what the path may
    /// carry (nothing is tracked otherwise).
    pub fn track_fast_path(&mut self) {
        self.fast.on = true;
        let clients: Vec<ClientKey> = self.allocs.iter().map(|(_, a)| a.client).collect();
        self.fast.dirty.extend(clients);
    }

    /// Hands every binding to the driver again at the next [`Server::fast_path_changes`] (the
    /// driver's own conditions changed, e.g. which profiles are shaped).
    pub fn fast_path_resync(&mut self) {
        if self.fast.on {
            self.fast.installed.clear();
            self.fast_dirty_all();
        }
    }

    /// Whether [`Server::fast_path_changes`] may have anything to hand over (no clock read,
    /// for the driver's rounds).
    #[inline]
    pub fn fast_path_pending(&self) -> bool {
        !self.fast.dirty.is_empty() || !self.fast.cooling.is_empty()
    }

    /// Notes that `client`'s bindings may have changed.
    #[inline]
    pub(super) fn fast_dirty(&mut self, client: ClientKey) {
        if self.fast.on {
            self.fast.dirty.push(client);
        }
    }

    /// Notes that every allocation's bindings may have changed (a reload).
    pub(super) fn fast_dirty_all(&mut self) {
        if self.fast.on {
            let clients: Vec<ClientKey> = self.allocs.iter().map(|(_, a)| a.client).collect();
            self.fast.dirty.extend(clients);
        }
    }

    /// What the fast path may carry for `client` at `now`.
    fn fast_eligible(&self, client: &ClientKey, now: Instant) -> Vec<FastBinding> {
        let Some(&slot) = self.by_client.get(client) else {
            return Vec::new();
        };
        let a = &self.allocs[slot];
        let cooling = self.fast.cooling.iter().any(|(_, c)| c == client);
        if client.transport != Transport::Udp || !client.addr.is_ipv4() || cooling {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (channel, c) in a.channels.bound() {
            let Some(perm) = a.perms.expiry(c.peer.ip()) else {
                continue;
            };
            let until = c.expires.min(perm).min(a.expires);
            if !c.peer.is_ipv4() || until <= now {
                continue;
            }
            let Some(relay) = a.relay_for(&c.peer) else {
                continue;
            };
            out.push(FastBinding {
                client: *client,
                channel,
                relay,
                peer: c.peer,
                profile: a.profile,
                until,
            });
        }
        out.sort_unstable_by_key(|b| b.channel);
        out
    }

    /// Hands `f` what changed since the last call for the fast path: removals first, then
    /// installs (a binding whose `until` moved is installed again). Nothing when it is not
    /// tracked.
    pub fn fast_path_changes(&mut self, now: Instant, mut f: impl FnMut(FastChange)) {
        if self.fast.cooling.iter().any(|(t, _)| *t <= now) {
            let (done, cooling): (Vec<_>, Vec<_>) =
                self.fast.cooling.drain(..).partition(|(t, _)| *t <= now);
            self.fast.cooling = cooling;
            self.fast.dirty.extend(done.into_iter().map(|(_, c)| c));
        }
        if self.fast.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.fast.dirty);
        dirty.sort_unstable_by_key(|k| (k.listener, k.addr));
        dirty.dedup();
        for client in dirty {
            let now_eligible = self.fast_eligible(&client, now);
            let before = self.fast.installed.remove(&client).unwrap_or_default();
            for b in &before {
                if !now_eligible
                    .iter()
                    .any(|n| n.channel == b.channel && n.peer == b.peer && n.relay == b.relay)
                {
                    f(FastChange::Remove(*b));
                }
            }
            for n in &now_eligible {
                if !before.contains(n) {
                    f(FastChange::Install(*n));
                }
            }
            if !now_eligible.is_empty() {
                self.fast.installed.insert(client, now_eligible);
            }
        }
    }

    /// What the fast path carried for `client` since the last call, per direction (datagrams,
    /// payload bytes; client to peer first): charged to the allocation's and its user's
    /// bandwidth meters as the user-space path charges each datagram. Over a cap, the
    /// allocation leaves the fast path for [`FAST_PATH_COOLING`], so the cap is enforced
    /// datagram by datagram again (what the kernel carried in the meantime, at most one read-back
    /// period's worth, is not taken back). True if it fit.
    pub fn fast_path_used(
        &mut self,
        now: Instant,
        client: &ClientKey,
        used: [(u64, u64); 2],
    ) -> bool {
        let Some(&slot) = self.by_client.get(client) else {
            return true;
        };
        let ms = self.millis(now);
        let caps = self.caps(self.allocs[slot].profile);
        let a = &mut self.allocs[slot];
        let mut fit = true;
        for (dir, (packets, bytes)) in used.into_iter().enumerate() {
            if packets == 0 {
                continue;
            }
            let ok = a.meters[dir].admit_bulk(&caps.allocation, ms, packets, bytes)
                && self
                    .users
                    .get_mut(a.user)
                    .is_none_or(|u| u.meters[dir].admit_bulk(&caps.user, ms, packets, bytes));
            if !ok {
                fit = false;
            }
        }
        if !fit {
            self.fast.cooling.push((now + FAST_PATH_COOLING, *client));
            self.fast_dirty(*client);
        }
        fit
    }
}
