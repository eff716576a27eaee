//! The driver's side of the kernel fast path (issue 24): what the core says the kernel may
//! carry goes into the program's maps ([`Worker::sync_fast_path`]), and what the kernel carried
//! comes back to the core's bandwidth meters, which grant the next period's budget
//! ([`Worker::charge_fast_path`]).
//!
//! Each allocation with a binding in the kernel holds a budget slot: the program counts there
//! what its bindings carried and forwards only up to the limit the core granted; past it,
//! datagrams come up to the user-space path, which meters them one by one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::worker::{Io, Worker};
use crate::fastpath::{Binding, Budget, FastPath};
use crate::proto::server::{ClientKey, FastBinding, FastChange};

/// How often at most what the kernel carried is read back and a new budget granted (each read
/// is a few system calls per allocation in the kernel).
const CHARGE_EVERY: Duration = Duration::from_millis(250);

/// What a worker installed in the fast path's maps.
#[derive(Debug, Default)]
pub(super) struct Installed {
    bindings: HashMap<(ClientKey, u16), Binding>,
    /// Each client's budget slot, how many of its bindings use it, and what the slot's
    /// counters read when last charged.
    slots: HashMap<ClientKey, Slot>,
    last_charge: Option<Instant>,
}

#[derive(Debug)]
struct Slot {
    slot: u32,
    bindings: usize,
    seen: Budget,
    /// What the slot's not-media-like counters read when last charged.
    other: [u64; 2],
    /// Whether the kernel carries the peer-to-client leg (not for a shaped flow, whose
    /// bindings all share the allocation's profile): the core grants that direction nothing
    /// otherwise.
    to_client: bool,
}

impl Installed {
    /// Bindings in the maps.
    pub(super) fn len(&self) -> usize {
        self.bindings.len()
    }
}

/// `used` plus `grant`, per direction, saturating (a grant of `u64::MAX` is no limit).
fn limit(used: Budget, grant: Budget) -> Budget {
    [0, 1].map(|d| {
        (
            used[d].0.saturating_add(grant[d].0),
            used[d].1.saturating_add(grant[d].1),
        )
    })
}

/// What the counters moved from `seen` to `now`, per direction.
fn since(now: Budget, seen: Budget) -> Budget {
    [0, 1].map(|d| {
        (
            now[d].0.saturating_sub(seen[d].0),
            now[d].1.saturating_sub(seen[d].1),
        )
    })
}

impl Io {
    /// A core binding with every address as the kernel sees it: the listener's and the relayed
    /// socket's bound addresses (IPv4), the deadline on the kernel's clock. A listener on the
    /// wildcard address is taken to be reached at the relay IP (the one `turn:` URIs advertise
    /// when the node has one address: the chart's daemonset, a VM).
    fn resolve_fast(&self, b: &FastBinding, mono: Instant, kernel_ns: u64) -> Option<Binding> {
        let v4 = |a: SocketAddr| match a {
            SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(a),
            _ => None,
        };
        let relayed = v4(self.peers.udp_socket(&b.relay)?.local_addr().ok()?)?;
        let listen = match self
            .listeners
            .get(usize::from(b.client.listener))?
            .socket
            .local_addr()
            .ok()?
        {
            SocketAddr::V4(l) if l.ip().is_unspecified() => {
                std::net::SocketAddrV4::new(*relayed.ip(), l.port())
            }
            l => v4(l)?,
        };
        let left = b.until.saturating_duration_since(mono);
        let policies = self.node.shaping.borrow();
        let shaped = policies
            .get(usize::from(b.profile))
            .or(policies.first())
            .is_some_and(|p| !p.is_off());
        Some(Binding {
            client: v4(b.client.addr)?,
            listen,
            channel: b.channel,
            relayed,
            peer: v4(b.peer)?,
            until_ns: kernel_ns.saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX)),
            to_client: !shaped,
            slot: 0,
        })
    }
}

impl Worker {
    /// Mirrors what the core says the kernel fast path may carry into its maps (nothing to do
    /// without a fast path, or when nothing changed).
    pub(super) fn sync_fast_path(&mut self) {
        // Every UDP round comes here: nothing but a field test unless the core has news.
        if !self.server.fast_path_pending() {
            return;
        }
        let Some(fp) = self.io.node.fast_path.clone() else {
            return;
        };
        let mut changes = Vec::new();
        let mono = Instant::now();
        self.server
            .fast_path_changes(mono, |change| changes.push(change));
        let kernel = crate::fastpath::monotonic_ns();
        for change in changes {
            match change {
                FastChange::Install(b) => self.install_fast(&fp, &b, mono, kernel),
                FastChange::Remove(b) => self.remove_fast(&fp, &b, mono),
            }
        }
    }

    fn install_fast(&mut self, fp: &FastPath, b: &FastBinding, mono: Instant, kernel: u64) {
        let Some(mut binding) = self.io.resolve_fast(b, mono, kernel) else {
            return;
        };
        let fast = &mut self.io.fast;
        let slot = match fast.slots.get(&b.client) {
            Some(s) => s.slot,
            None => {
                // The allocation's first binding in the kernel: a slot, and a first grant.
                let Some(slot) = fp.claim() else {
                    return;
                };
                let seen = fp.used(slot);
                let carries = [true, binding.to_client];
                let grant = self
                    .server
                    .fast_path_grant(mono, &b.client, [(0, 0); 2], carries);
                fp.set_limit(slot, limit(seen, grant));
                fast.slots.insert(
                    b.client,
                    Slot {
                        slot,
                        bindings: 0,
                        seen,
                        other: fp.other(slot),
                        to_client: binding.to_client,
                    },
                );
                slot
            }
        };
        binding.slot = slot;
        // A reload may change whether the flow is shaped: the next grant follows.
        if let Some(s) = fast.slots.get_mut(&b.client) {
            s.to_client = binding.to_client;
        }
        if fp.install(&binding) {
            if fast
                .bindings
                .insert((b.client, b.channel), binding)
                .is_none()
                && let Some(s) = fast.slots.get_mut(&b.client)
            {
                s.bindings += 1;
            }
            self.io.stats.fast_installs += 1;
        } else if fast.slots.get(&b.client).is_some_and(|s| s.bindings == 0) {
            self.settle_fast(fp, &b.client, mono);
        }
    }

    fn remove_fast(&mut self, fp: &FastPath, b: &FastBinding, mono: Instant) {
        let fast = &mut self.io.fast;
        let Some(binding) = fast.bindings.remove(&(b.client, b.channel)) else {
            return;
        };
        fp.remove(&binding);
        let last = fast.slots.get_mut(&b.client).is_some_and(|s| {
            s.bindings = s.bindings.saturating_sub(1);
            s.bindings == 0
        });
        if last {
            self.settle_fast(fp, &b.client, mono);
        }
    }

    /// The client's last binding left the kernel: what it carried is charged, what its grant
    /// left goes back to its meters, and the slot is free.
    fn settle_fast(&mut self, fp: &FastPath, client: &ClientKey, mono: Instant) {
        let Some(s) = self.io.fast.slots.remove(client) else {
            return;
        };
        // No binding names the slot any more: what it counts now is all it will count.
        let used = fp.used(s.slot);
        fp.set_limit(s.slot, used);
        let carried = since(used, s.seen);
        judge(&mut self.server, fp, client, &s, carried);
        self.server.fast_path_settle(mono, client, carried);
        fp.release(s.slot);
    }

    /// Reads back what each allocation's bindings carried in the kernel since the last read,
    /// charges it to the core's bandwidth meters and sets the next period's limit from what
    /// they grant (at most every [`CHARGE_EVERY`], from the timer).
    pub(super) fn charge_fast_path(&mut self) {
        let Some(fp) = self.io.node.fast_path.clone() else {
            return;
        };
        let now = Instant::now();
        let fast = &mut self.io.fast;
        if fast
            .last_charge
            .is_some_and(|t| now.saturating_duration_since(t) < CHARGE_EVERY)
        {
            return;
        }
        fast.last_charge = Some(now);
        for (client, s) in &mut fast.slots {
            let used = fp.used(s.slot);
            let carried = since(used, s.seen);
            s.other = judge(&mut self.server, &fp, client, s, carried);
            let grant = self
                .server
                .fast_path_grant(now, client, carried, [true, s.to_client]);
            s.seen = used;
            fp.set_limit(s.slot, limit(used, grant));
        }
        self.sync_fast_path();
    }
}

/// Hands the core what the program judged of the payloads it carried for `client` since the
/// slot was last read (`carried`: datagrams and bytes per direction); returns the counters now.
fn judge(
    server: &mut crate::proto::server::Server,
    fp: &FastPath,
    client: &ClientKey,
    s: &Slot,
    carried: Budget,
) -> [u64; 2] {
    let other = fp.other(s.slot);
    server.fast_path_judged(
        client,
        [carried[0].0, carried[1].0],
        [0, 1].map(|d| other[d].saturating_sub(s.other[d])),
    );
    other
}
