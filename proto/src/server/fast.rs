//! What the kernel fast path may carry (issue 24), decided here, where every binding is made
//! and ended: the core stays the one authority, the driver only mirrors its answer into the
//! kernel's maps.
//!
//! A binding is eligible when its client speaks UDP over IPv4, its channel is bound and live,
//! and the peer (IPv4) holds a live permission. Each carries the instant it stops being valid
//! (the earliest of the channel's, the permission's and the allocation's expiry), so the kernel
//! stops at that instant without waiting for a timer. The bandwidth caps hold on both paths
//! together: the kernel carries only what [`Server::fast_path_grant`] reserved for it from the
//! client's meters, period by period, and passes the rest up. Whatever changes an allocation's
//! bindings (a ChannelBind, a CreatePermission or Refresh, an expiry, a reload's filter, a
//! deletion for any reason) marks its client, and [`Server::fast_path_changes`] hands the
//! driver what to install and what to remove.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::{ClientKey, RelayId, Server, Transport};
use crate::limiter::Grant;

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

/// Which clients' bindings changed, what the driver was last told of each, and what each
/// client's kernel bindings were granted of its bandwidth meters.
#[derive(Debug, Default)]
pub(super) struct FastTrack {
    on: bool,
    dirty: Vec<ClientKey>,
    installed: HashMap<ClientKey, Vec<FastBinding>>,
    /// Per client, per direction (client to peer first): reserved from its meters for the
    /// kernel and not yet accounted for.
    grants: HashMap<ClientKey, [Grant; 2]>,
    /// The abuse watchers of allocations that ended with bindings in the kernel, until the
    /// driver settles what the kernel carried for them last.
    pub(super) ended: HashMap<ClientKey, super::watch::Watch>,
}

/// The least a grant asks of the meters (datagrams, payload bytes): a call's second or more of
/// audio and video at the start, before the kernel has carried anything.
pub const GRANT_FLOOR: Grant = (64, 64 * 1024);

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
        !self.fast.dirty.is_empty()
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
        if client.transport != Transport::Udp || !client.addr.is_ipv4() {
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

    /// Accounts for what the kernel carried for `client` since the last call (`used`, per
    /// direction: datagrams, payload bytes; client to peer first) against what it was granted,
    /// and grants what it may carry until the next call, reserved from the allocation's and its
    /// user's bandwidth meters: the kernel forwards within the grant and passes the rest up to
    /// the user-space path, which meters datagram by datagram what the grant left. So the caps
    /// hold on both paths together. The grant is twice what the kernel carried in the last
    /// period, at least [`GRANT_FLOOR`], at most what the meters hold (so that one allocation
    /// does not hoard what its user's other allocations need); `u64::MAX` where uncapped.
    ///
    /// `carries` says which directions the kernel carries for this client (the driver keeps
    /// the client leg of shaped flows): a direction it does not carry is granted nothing, so
    /// that the user-space path keeps the whole of its meter.
    pub fn fast_path_grant(
        &mut self,
        now: Instant,
        client: &ClientKey,
        used: [Grant; 2],
        carries: [bool; 2],
    ) -> [Grant; 2] {
        self.fast_account(now, client, used, carries)
    }

    /// Accounts for what the kernel carried for `client` since the last call, as
    /// [`Server::fast_path_grant`], and gives back what its grant did not use: its last binding
    /// left the kernel.
    pub fn fast_path_settle(&mut self, now: Instant, client: &ClientKey, used: [Grant; 2]) {
        self.fast_account(now, client, used, [false; 2]);
        if let Some(mut w) = self.fast.ended.remove(client) {
            w.bytes = w.bytes.saturating_add(used[0].1).saturating_add(used[1].1);
            self.watch_end(w.bytes);
        }
    }

    /// An allocation ends: its watcher is done, unless the kernel may have carried for it since
    /// the driver last read (then [`Server::fast_path_settle`] finishes it).
    pub(super) fn fast_ended(&mut self, client: ClientKey, watch: super::watch::Watch) {
        if self.fast.on && self.fast.installed.contains_key(&client) {
            self.fast.ended.insert(client, watch);
        } else {
            self.watch_end(watch.bytes);
        }
    }

    fn fast_account(
        &mut self,
        now: Instant,
        client: &ClientKey,
        used: [Grant; 2],
        renew: [bool; 2],
    ) -> [Grant; 2] {
        let mut g = self.fast.grants.remove(client).unwrap_or_default();
        let Some(&slot) = self.by_client.get(client) else {
            return [(0, 0); 2];
        };
        let ms = self.millis(now);
        let caps = self.caps(self.allocs[slot].profile);
        let a = &mut self.allocs[slot];
        let mut user = self.users.get_mut(a.user);
        for dir in 0..2 {
            let (open, used) = (g[dir], used[dir]);
            let unused = (open.0.saturating_sub(used.0), open.1.saturating_sub(used.1));
            let over = (used.0.saturating_sub(open.0), used.1.saturating_sub(open.1));
            a.meters[dir].release(&caps.allocation, unused);
            a.meters[dir].charge(&caps.allocation, ms, over);
            if let Some(u) = user.as_deref_mut() {
                u.meters[dir].release(&caps.user, unused);
                u.meters[dir].charge(&caps.user, ms, over);
            }
            g[dir] = (0, 0);
            if !renew[dir] {
                continue;
            }
            let all = a.meters[dir].reserve(&caps.allocation, ms, (u64::MAX, u64::MAX));
            let share = |all: u64, used: u64, floor: u64| {
                if all == u64::MAX {
                    all
                } else {
                    all.min(used.saturating_mul(2).max(floor))
                }
            };
            let want = (
                share(all.0, used.0, GRANT_FLOOR.0),
                share(all.1, used.1, GRANT_FLOOR.1),
            );
            a.meters[dir].release(&caps.allocation, (all.0 - want.0, all.1 - want.1));
            let got = match user.as_deref_mut() {
                Some(u) => u.meters[dir].reserve(&caps.user, ms, want),
                None => want,
            };
            a.meters[dir].release(&caps.allocation, (want.0 - got.0, want.1 - got.1));
            g[dir] = got;
        }
        if renew.contains(&true) {
            self.fast.grants.insert(*client, g);
        }
        self.watch_bytes(slot, ms, used[0].1.saturating_add(used[1].1));
        g
    }
}
