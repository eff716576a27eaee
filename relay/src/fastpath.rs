//! The kernel fast path (issue 24): the XDP program of `relay/ebpf/veil_xdp.c`, loaded with aya
//! and attached to the interfaces clients and peers reach the relay on (`fast_path`). It moves
//! a call's datagrams for the bindings installed in its maps and passes everything else to the
//! kernel's stack, where the user-space path handles it as before.
//!
//! Attached through a BPF link, so the program leaves the interface when the relay exits, even
//! when it is killed. `mode: xdp` refuses to start when it cannot attach (a build without clang,
//! no privilege, no such interface, a kernel without XDP); `mode: auto` runs without it, says
//! why in a warning and in `veil_relay_fast_path_up 0`.

use std::net::SocketAddrV4;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{FastPathMode, FastPathSettings};

/// One binding as the driver installs it: every address resolved (the listener and the
/// relayed socket as bound), the core's instant as the kernel's clock reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The client.
    pub client: SocketAddrV4,
    /// The listener it reached.
    pub listen: SocketAddrV4,
    /// The channel number.
    pub channel: u16,
    /// The relayed socket's bound address.
    pub relayed: SocketAddrV4,
    /// The peer.
    pub peer: SocketAddrV4,
    /// CLOCK_MONOTONIC nanoseconds after which the kernel leaves it to the core.
    pub until_ns: u64,
    /// Whether the peer-to-client leg may take the fast path (its flow is not shaped).
    pub to_client: bool,
    /// The allocation's budget slot ([`FastPath::claim`]).
    pub slot: u32,
}

/// Datagrams and payload bytes per direction (client to peer first): what an allocation's
/// bindings carried, or may carry, in the kernel.
pub type Budget = [(u64, u64); 2];

/// Budget slots: one per allocation with a binding in the kernel (VEIL_USED and VEIL_LIMIT hold
/// two entries, a direction each, per slot).
const SLOTS: u32 = 65536;

/// The kernel's clock (`bpf_ktime_get_ns`), in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

// The maps' layouts (relay/ebpf/veil_xdp.c): addresses and ports in network order, as on the
// wire; `until` in the host's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ChannelKey {
    client_ip: [u8; 4],
    listen_ip: [u8; 4],
    client_port: [u8; 2],
    listen_port: [u8; 2],
    channel: [u8; 2],
    pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ToPeer {
    relay_ip: [u8; 4],
    peer_ip: [u8; 4],
    relay_port: [u8; 2],
    peer_port: [u8; 2],
    slot: u32,
    until: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PeerKey {
    relay_ip: [u8; 4],
    peer_ip: [u8; 4],
    relay_port: [u8; 2],
    peer_port: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ToClient {
    listen_ip: [u8; 4],
    client_ip: [u8; 4],
    listen_port: [u8; 2],
    client_port: [u8; 2],
    channel: [u8; 2],
    pad: [u8; 2],
    slot: u32,
    pad2: u32,
    until: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Count {
    packets: u64,
    bytes: u64,
    /// Of the datagrams counted, those not media-like (VEIL_USED only).
    other: u64,
}

// SAFETY: plain `repr(C)` structs of byte arrays and a u64, without padding bytes.
#[cfg(veil_xdp)]
unsafe impl aya::Pod for ChannelKey {}
// SAFETY: as above (the u32 sits at offset 12, the u64 at 16).
#[cfg(veil_xdp)]
unsafe impl aya::Pod for ToPeer {}
// SAFETY: as above.
#[cfg(veil_xdp)]
unsafe impl aya::Pod for PeerKey {}
// SAFETY: as above (the u32s sit at offsets 16 and 20, the u64 at 24).
#[cfg(veil_xdp)]
unsafe impl aya::Pod for ToClient {}
// SAFETY: two u64s.
#[cfg(veil_xdp)]
unsafe impl aya::Pod for Count {}

impl Binding {
    fn channel_key(&self) -> ChannelKey {
        ChannelKey {
            client_ip: self.client.ip().octets(),
            listen_ip: self.listen.ip().octets(),
            client_port: self.client.port().to_be_bytes(),
            listen_port: self.listen.port().to_be_bytes(),
            channel: self.channel.to_be_bytes(),
            pad: [0; 2],
        }
    }

    fn peer_key(&self) -> PeerKey {
        PeerKey {
            relay_ip: self.relayed.ip().octets(),
            peer_ip: self.peer.ip().octets(),
            relay_port: self.relayed.port().to_be_bytes(),
            peer_port: self.peer.port().to_be_bytes(),
        }
    }

    fn peer_value(&self) -> ToPeer {
        ToPeer {
            relay_ip: self.relayed.ip().octets(),
            peer_ip: self.peer.ip().octets(),
            relay_port: self.relayed.port().to_be_bytes(),
            peer_port: self.peer.port().to_be_bytes(),
            slot: self.slot,
            until: self.until_ns,
        }
    }

    fn client_value(&self) -> ToClient {
        ToClient {
            listen_ip: self.listen.ip().octets(),
            client_ip: self.client.ip().octets(),
            listen_port: self.listen.port().to_be_bytes(),
            client_port: self.client.port().to_be_bytes(),
            channel: self.channel.to_be_bytes(),
            pad: [0; 2],
            slot: self.slot,
            pad2: 0,
            until: self.until_ns,
        }
    }
}

/// Datagrams the program handled, summed over the CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastPathCounts {
    /// ChannelData from clients sent on to peers.
    pub to_peer: u64,
    /// Peers' datagrams sent on to clients as ChannelData.
    pub to_client: u64,
    /// Datagrams left to the kernel's stack (everything the maps do not hold).
    pub passed: u64,
    /// Payload bytes sent on to peers.
    pub to_peer_bytes: u64,
    /// Payload bytes sent on to clients.
    pub to_client_bytes: u64,
}

/// The program attached to the node's interfaces, and its maps; dropping it detaches it.
pub struct FastPath {
    #[cfg(veil_xdp)]
    maps: Mutex<Maps>,
    /// Set when the node drains: the maps are emptied and nothing is installed again.
    withdrawn: AtomicBool,
    /// Each interface with the mode it was attached in (`driver`, `generic`).
    attached: Vec<(String, &'static str)>,
}

#[cfg(veil_xdp)]
struct Maps {
    /// The program and its links (kept: dropped, the program leaves the interfaces).
    _ebpf: aya::Ebpf,
    to_peer: aya::maps::HashMap<aya::maps::MapData, ChannelKey, ToPeer>,
    to_client: aya::maps::HashMap<aya::maps::MapData, PeerKey, ToClient>,
    used: aya::maps::Array<aya::maps::MapData, Count>,
    limit: aya::maps::Array<aya::maps::MapData, Count>,
    stats: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    /// Budget slots given back, and the first never given.
    free: Vec<u32>,
    next: u32,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("attached", &self.attached)
            .finish()
    }
}

/// Attaches the fast path as `settings` ask: None when it is off, or when `auto` could not
/// attach it (a warning says why). An error (`xdp` that could not attach) stops the start.
pub fn start(settings: &FastPathSettings) -> Result<Option<FastPath>, String> {
    if settings.mode == FastPathMode::Off {
        return Ok(None);
    }
    match attach(&settings.interfaces) {
        Ok(fp) => {
            for (i, mode) in &fp.attached {
                tracing::info!(interface = %i, mode, "XDP fast path attached");
            }
            Ok(Some(fp))
        }
        Err(why) if settings.mode == FastPathMode::Auto => {
            tracing::warn!(
                reason = %why,
                "XDP fast path not attached (fast_path.mode: auto): relayed media takes the \
                 user-space path"
            );
            Ok(None)
        }
        Err(why) => Err(format!("fast_path.mode xdp: {why}")),
    }
}

#[cfg(not(veil_xdp))]
fn attach(_interfaces: &[String]) -> Result<FastPath, String> {
    Err("this build has no fast path (built without clang; Debian: clang-19 libbpf-dev)".into())
}

#[cfg(veil_xdp)]
fn attach(interfaces: &[String]) -> Result<FastPath, String> {
    use aya::programs::{Xdp, XdpMode};
    let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/veil_xdp.o"));
    let mut ebpf = aya::Ebpf::load(object).map_err(|e| format!("loading the XDP program: {e}"))?;
    let prog: &mut Xdp = ebpf
        .program_mut("veil_xdp")
        .ok_or("the XDP object has no program veil_xdp")?
        .try_into()
        .map_err(|e| format!("veil_xdp is not an XDP program: {e}"))?;
    prog.load()
        .map_err(|e| format!("the kernel refused the XDP program: {e}"))?;
    let mut attached = Vec::new();
    for i in interfaces {
        // Native (driver) XDP where the driver has it (veth, most NICs), else generic (lo).
        let mode = match prog.attach(i, XdpMode::Driver) {
            Ok(_) => "driver",
            Err(native) => match prog.attach(i, XdpMode::Skb) {
                Ok(_) => "generic",
                Err(generic) => {
                    return Err(format!(
                        "attaching to {i}: {native} (driver mode); {generic} (generic mode)"
                    ));
                }
            },
        };
        attached.push((i.clone(), mode));
    }
    let mut map = |name: &str| {
        ebpf.take_map(name)
            .ok_or_else(|| format!("the XDP object has no map {name}"))
    };
    let to_peer = aya::maps::HashMap::try_from(map("VEIL_TO_PEER")?)
        .map_err(|e| format!("VEIL_TO_PEER: {e}"))?;
    let to_client = aya::maps::HashMap::try_from(map("VEIL_TO_CLIENT")?)
        .map_err(|e| format!("VEIL_TO_CLIENT: {e}"))?;
    let used =
        aya::maps::Array::try_from(map("VEIL_USED")?).map_err(|e| format!("VEIL_USED: {e}"))?;
    let limit =
        aya::maps::Array::try_from(map("VEIL_LIMIT")?).map_err(|e| format!("VEIL_LIMIT: {e}"))?;
    let stats = aya::maps::PerCpuArray::try_from(map("VEIL_STATS")?)
        .map_err(|e| format!("VEIL_STATS: {e}"))?;
    Ok(FastPath {
        maps: Mutex::new(Maps {
            _ebpf: ebpf,
            to_peer,
            to_client,
            used,
            limit,
            stats,
            free: Vec::new(),
            next: 0,
        }),
        withdrawn: AtomicBool::new(false),
        attached,
    })
}

impl FastPath {
    /// The interfaces it is attached to, each with its mode.
    pub fn attached(&self) -> &[(String, &'static str)] {
        &self.attached
    }

    /// What the program handled so far.
    pub fn counts(&self) -> FastPathCounts {
        #[cfg(veil_xdp)]
        {
            let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            let sum = |index: u32| -> u64 {
                maps.stats
                    .get(&index, 0)
                    .map_or(0, |v| v.iter().fold(0u64, |a, b| a.saturating_add(*b)))
            };
            FastPathCounts {
                to_peer: sum(0),
                to_client: sum(1),
                passed: sum(2),
                to_peer_bytes: sum(3),
                to_client_bytes: sum(4),
            }
        }
        #[cfg(not(veil_xdp))]
        FastPathCounts::default()
    }

    /// Installs (or updates) a binding: the client's ChannelData to the peer, and the peer's
    /// datagrams back when `to_client`; a binding whose client leg became shaped loses that
    /// half. False if the kernel refused (a full map): the binding stays on the user-space path.
    /// Only the core writes these entries (the kernel counts in the budget slots), so an update
    /// loses nothing the kernel counted.
    pub fn install(&self, b: &Binding) -> bool {
        if self.withdrawn.load(Ordering::Acquire) {
            return false;
        }
        #[cfg(veil_xdp)]
        {
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            if maps
                .to_peer
                .insert(b.channel_key(), b.peer_value(), 0)
                .is_err()
            {
                return false;
            }
            if b.to_client {
                if maps
                    .to_client
                    .insert(b.peer_key(), b.client_value(), 0)
                    .is_err()
                {
                    let _ = maps.to_peer.remove(&b.channel_key());
                    return false;
                }
            } else {
                let _ = maps.to_client.remove(&b.peer_key());
            }
            true
        }
        #[cfg(not(veil_xdp))]
        {
            let _ = (
                b.channel_key(),
                b.peer_value(),
                b.peer_key(),
                b.client_value(),
            );
            false
        }
    }

    /// A budget slot for an allocation's bindings, with its limit at what it carried so far
    /// (nothing more until [`FastPath::set_limit`]); None when all are taken.
    pub fn claim(&self) -> Option<u32> {
        #[cfg(veil_xdp)]
        {
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            let slot = match maps.free.pop() {
                Some(s) => s,
                None if maps.next < SLOTS => {
                    maps.next += 1;
                    maps.next - 1
                }
                None => return None,
            };
            for i in [slot * 2, slot * 2 + 1] {
                let used = maps.used.get(&i, 0).unwrap_or_default();
                if maps.limit.set(i, used, 0).is_err() {
                    maps.free.push(slot);
                    return None;
                }
            }
            Some(slot)
        }
        #[cfg(not(veil_xdp))]
        {
            let _ = (SLOTS, Count::default());
            None
        }
    }

    /// Gives a slot back (no binding of the node names it any more).
    pub fn release(&self, slot: u32) {
        #[cfg(veil_xdp)]
        {
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            maps.free.push(slot);
        }
        #[cfg(not(veil_xdp))]
        let _ = slot;
    }

    /// What the bindings of `slot` carried, ever (the counters only grow; a reused slot's
    /// start is read at [`FastPath::claim`] time by the caller).
    pub fn used(&self, slot: u32) -> Budget {
        #[cfg(veil_xdp)]
        {
            let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            let get = |i: u32| {
                maps.used
                    .get(&i, 0)
                    .map_or((0, 0), |c| (c.packets, c.bytes))
            };
            [get(slot * 2), get(slot * 2 + 1)]
        }
        #[cfg(not(veil_xdp))]
        {
            let _ = slot;
            [(0, 0); 2]
        }
    }

    /// Of what the bindings of `slot` carried, ever, how many datagrams did not look like
    /// media, per direction (the program judges each as the core does what it relays).
    pub fn other(&self, slot: u32) -> [u64; 2] {
        #[cfg(veil_xdp)]
        {
            let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            let get = |i: u32| maps.used.get(&i, 0).map_or(0, |c| c.other);
            [get(slot * 2), get(slot * 2 + 1)]
        }
        #[cfg(not(veil_xdp))]
        {
            let _ = slot;
            [0; 2]
        }
    }

    /// Lets the bindings of `slot` carry up to `limit` in all (what they carried, ever, plus
    /// what the core granted).
    pub fn set_limit(&self, slot: u32, limit: Budget) {
        #[cfg(veil_xdp)]
        {
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            for (i, (packets, bytes)) in [slot * 2, slot * 2 + 1].into_iter().zip(limit) {
                let count = Count {
                    packets,
                    bytes,
                    other: 0,
                };
                let _ = maps.limit.set(i, count, 0);
            }
        }
        #[cfg(not(veil_xdp))]
        let _ = (slot, limit);
    }

    /// Removes a binding (whatever of it is installed).
    pub fn remove(&self, b: &Binding) {
        #[cfg(veil_xdp)]
        {
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            let _ = maps.to_peer.remove(&b.channel_key());
            let _ = maps.to_client.remove(&b.peer_key());
        }
        #[cfg(not(veil_xdp))]
        let _ = b;
    }

    /// The node drains: every binding leaves the kernel and none is installed again, so what
    /// is still relayed is counted and ended by the user-space path.
    pub fn withdraw(&self) {
        self.withdrawn.store(true, Ordering::Release);
        #[cfg(veil_xdp)]
        {
            let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<ChannelKey> = maps.to_peer.keys().filter_map(Result::ok).collect();
            for k in keys {
                let _ = maps.to_peer.remove(&k);
            }
            let keys: Vec<PeerKey> = maps.to_client.keys().filter_map(Result::ok).collect();
            for k in keys {
                let _ = maps.to_client.remove(&k);
            }
        }
    }
}
