//! The kernel fast path (issue 24): the XDP program of `relay/ebpf/veil_xdp.c`, loaded with aya
//! and attached to the interfaces clients and peers reach the relay on (`fast_path`). It moves
//! a call's datagrams for the bindings installed in its maps and passes everything else to the
//! kernel's stack, where the user-space path handles it as before.
//!
//! Attached through a BPF link, so the program leaves the interface when the relay exits, even
//! when it is killed. `mode: xdp` refuses to start when it cannot attach (a build without clang,
//! no privilege, no such interface, a kernel without XDP); `mode: auto` runs without it, says
//! why in a warning and in `veil_relay_fast_path_up 0`.

use crate::config::{FastPathMode, FastPathSettings};

/// Datagrams the program handled, summed over the CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastPathCounts {
    /// ChannelData from clients sent on to peers.
    pub to_peer: u64,
    /// Peers' datagrams sent on to clients as ChannelData.
    pub to_client: u64,
    /// Datagrams left to the kernel's stack (everything the maps do not hold).
    pub passed: u64,
}

/// The program attached to the node's interfaces; dropping it detaches it.
pub struct FastPath {
    #[cfg(veil_xdp)]
    ebpf: aya::Ebpf,
    /// Each interface with the mode it was attached in (`driver`, `generic`).
    attached: Vec<(String, &'static str)>,
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
    Ok(FastPath { ebpf, attached })
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
            let sum = |index: u32| -> u64 {
                let Some(map) = self.ebpf.map("VEIL_STATS") else {
                    return 0;
                };
                let Ok(stats) = aya::maps::PerCpuArray::<_, u64>::try_from(map) else {
                    return 0;
                };
                stats
                    .get(&index, 0)
                    .map_or(0, |v| v.iter().fold(0u64, |a, b| a.saturating_add(*b)))
            };
            FastPathCounts {
                to_peer: sum(0),
                to_client: sum(1),
                passed: sum(2),
            }
        }
        #[cfg(not(veil_xdp))]
        FastPathCounts::default()
    }
}
