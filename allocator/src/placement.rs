//! Placement: a pure function of the client, the allocator's view of the relays and the policy.
//!
//! 1. Filter: the relay's zone is allowed for the client, it is healthy, not draining, and below
//!    capacity. Nothing outside the allowed zones is ever considered, whatever else is down.
//! 2. Score: estimated network cost (distance model) plus a load penalty that grows with the
//!    relay's share of its capacity in use, so placements spread in proportion to capacity among
//!    relays at similar distance.
//! 3. Calls: when a `call_id` is given, the relay is chosen by rendezvous hashing (highest
//!    `hash(call_id, relay)` weighted by capacity) among the eligible relays, so every allocator
//!    replica puts both parties of a call on the same relay whenever that relay is eligible for
//!    both, without shared state.
//! 4. Backup: the next best eligible relay other than the primary.

use std::net::IpAddr;

use veil_geo::Location;
use veil_geo::policy::{DistanceModel, Policy};

/// What the allocator knows about one relay.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayView {
    pub name: String,
    pub zone: String,
    pub healthy: bool,
    pub draining: bool,
    /// Allocations in use and the relay's total quota.
    pub load: u32,
    pub capacity: u32,
    pub location: Location,
}

impl RelayView {
    fn has_room(&self) -> bool {
        self.capacity > 0 && self.load < self.capacity
    }
}

/// What placement knows about the client.
#[derive(Clone, Debug)]
pub struct ClientFacts<'a> {
    pub ip: IpAddr,
    pub location: Location,
    pub call_id: Option<&'a str>,
}

/// Indices into the relay view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub primary: usize,
    pub backup: Option<usize>,
}

/// Why no relay can be offered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no relay in the allowed zones {zones:?} is healthy and has room")]
    NoRelayInAllowedZones { zones: Vec<String> },
}

/// Tuning of the score.
#[derive(Clone, Debug)]
pub struct Scoring {
    pub distance: DistanceModel,
    /// Milliseconds added at full load (linear in load / capacity).
    pub load_penalty_ms: f64,
}

impl Default for Scoring {
    fn default() -> Self {
        Scoring {
            distance: DistanceModel::default(),
            load_penalty_ms: 100.0,
        }
    }
}

/// 64-bit FNV-1a, then a finaliser: stable across processes and versions (unlike std's hasher),
/// which rendezvous hashing across allocator replicas needs.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        h ^= 0xFF;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// Weighted rendezvous score: -w / ln(u) with u uniform in (0, 1) from the hash.
fn rendezvous(call_id: &str, relay: &RelayView) -> f64 {
    let h = stable_hash(&[call_id.as_bytes(), relay.name.as_bytes()]);
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    relay.capacity.max(1) as f64 / -u.ln()
}

/// Chooses a primary and a backup relay for a client.
pub fn place(
    client: &ClientFacts<'_>,
    relays: &[RelayView],
    policy: &Policy,
    scoring: &Scoring,
) -> Result<Placement, PlacementError> {
    let allowed = policy.allowed_zones(client.ip, &client.location);
    let eligible: Vec<usize> = relays
        .iter()
        .enumerate()
        .filter(|(_, r)| allowed.contains(&r.zone) && r.healthy && !r.draining && r.has_room())
        .map(|(i, _)| i)
        .collect();
    if eligible.is_empty() {
        return Err(PlacementError::NoRelayInAllowedZones {
            zones: allowed.to_vec(),
        });
    }
    let score = |i: usize| {
        let r = &relays[i];
        let load = r.load as f64 / r.capacity.max(1) as f64;
        scoring.distance.cost_ms(&client.location, &r.location) + scoring.load_penalty_ms * load
    };
    // Score each relay once, then sort (ties broken by name, so replicas agree).
    let mut by_score: Vec<(f64, usize)> = eligible.iter().map(|&i| (score(i), i)).collect();
    by_score.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(relays[a.1].name.cmp(&relays[b.1].name))
    });
    let by_score: Vec<usize> = by_score.into_iter().map(|(_, i)| i).collect();
    let primary = match client.call_id {
        Some(call) => eligible
            .iter()
            .map(|&i| (rendezvous(call, &relays[i]), i))
            .max_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then(relays[a.1].name.cmp(&relays[b.1].name))
            })
            .map_or(by_score[0], |(_, i)| i),
        None => by_score[0],
    };
    let backup = by_score.iter().copied().find(|i| *i != primary);
    Ok(Placement { primary, backup })
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_geo::Code;
    use veil_geo::policy::PolicyConfig;

    fn policy() -> Policy {
        let cfg: PolicyConfig = serde_saphyr::from_str(
            "zones:\n  eu: {relays: [fra-1, fra-2, par-1]}\n  us: {relays: [iad-1, iad-2]}\n\
             rules:\n  - {match: {continent: EU}, zones: [eu]}\n  - {match: {country: US}, zones: [us, eu]}\n\
             default: [us]\n",
        )
        .unwrap();
        Policy::new(cfg).unwrap()
    }

    fn relay(name: &str, zone: &str, coords: (f64, f64)) -> RelayView {
        RelayView {
            name: name.into(),
            zone: zone.into(),
            healthy: true,
            draining: false,
            load: 0,
            capacity: 1000,
            location: Location {
                coords: Some(coords),
                ..Location::default()
            },
        }
    }

    fn relays() -> Vec<RelayView> {
        vec![
            relay("fra-1", "eu", (50.11, 8.68)),
            relay("fra-2", "eu", (50.11, 8.68)),
            relay("par-1", "eu", (48.86, 2.35)),
            relay("iad-1", "us", (39.04, -77.49)),
            relay("iad-2", "us", (39.04, -77.49)),
        ]
    }

    fn client(country: &str, continent: &str, coords: (f64, f64)) -> ClientFacts<'static> {
        ClientFacts {
            ip: "192.0.2.1".parse().unwrap(),
            location: Location {
                country: Code::parse(country),
                continent: Code::parse(continent),
                coords: Some(coords),
            },
            call_id: None,
        }
    }

    #[test]
    fn table() {
        let p = policy();
        let s = Scoring::default();
        let berlin = client("DE", "EU", (52.52, 13.40));
        let nyc = client("US", "NA", (40.71, -74.01));
        let tokyo = client("JP", "AS", (35.68, 139.69));
        let r = relays();
        let zone = |c: &ClientFacts, r: &[RelayView]| {
            place(c, r, &p, &s).map(|pl| r[pl.primary].zone.clone())
        };
        // EU client: only EU relays, nearest first.
        let pl = place(&berlin, &r, &p, &s).unwrap();
        assert!(r[pl.primary].name.starts_with("fra"));
        assert_eq!(
            r[pl.backup.unwrap()].zone,
            "eu",
            "backup also in an allowed zone"
        );
        assert_ne!(pl.backup, Some(pl.primary));
        // US client may use the US or EU; nearest is the US.
        assert_eq!(zone(&nyc, &r).unwrap(), "us");
        // Default rule for others.
        assert_eq!(zone(&tokyo, &r).unwrap(), "us");
        // Every EU relay down: an error naming the zones, never a fallback to the US.
        let mut down = relays();
        for x in down.iter_mut().filter(|x| x.zone == "eu") {
            x.healthy = false;
        }
        assert_eq!(
            place(&berlin, &down, &p, &s),
            Err(PlacementError::NoRelayInAllowedZones {
                zones: vec!["eu".into()]
            })
        );
        // ... while the US client falls back within its own allowed zones.
        let mut us_down = relays();
        for x in us_down.iter_mut().filter(|x| x.zone == "us") {
            x.draining = true;
        }
        assert_eq!(zone(&nyc, &us_down).unwrap(), "eu");
        // Full relays are skipped.
        let mut full = relays();
        full[0].load = 1000;
        full[1].load = 1000;
        assert_eq!(
            full[place(&berlin, &full, &p, &s).unwrap().primary].name,
            "par-1"
        );
        // One relay left: no backup.
        let one = vec![relay("fra-1", "eu", (50.11, 8.68))];
        assert_eq!(
            place(&berlin, &one, &p, &s).unwrap(),
            Placement {
                primary: 0,
                backup: None
            }
        );
    }

    #[test]
    fn parties_of_a_call_share_a_relay_and_calls_spread() {
        let p = policy();
        let s = Scoring::default();
        let r = relays();
        let mut used = std::collections::HashMap::new();
        for i in 0..300 {
            let call = format!("call-{i}");
            let mut a = client("DE", "EU", (52.52, 13.40));
            a.call_id = Some(&call);
            let mut b = client("FR", "EU", (48.86, 2.35));
            b.call_id = Some(&call);
            let pa = place(&a, &r, &p, &s).unwrap().primary;
            let pb = place(&b, &r, &p, &s).unwrap().primary;
            assert_eq!(pa, pb, "{call}: both parties on one relay");
            *used.entry(pa).or_insert(0) += 1;
        }
        assert_eq!(used.len(), 3, "calls spread over the EU relays: {used:?}");
        assert!(used.values().all(|n| *n > 60), "{used:?}");
    }

    /// With load reported back, placements share out in proportion to capacity (±10 %).
    #[test]
    fn load_balances_by_capacity_share() {
        let p = policy();
        let s = Scoring::default();
        let mut r = vec![
            relay("fra-1", "eu", (50.11, 8.68)),
            relay("fra-2", "eu", (50.11, 8.68)),
        ];
        r[0].capacity = 3000;
        r[1].capacity = 1000;
        let c = client("DE", "EU", (52.52, 13.40));
        for _ in 0..2000 {
            let pl = place(&c, &r, &p, &s).unwrap();
            r[pl.primary].load += 1;
        }
        let share = r[0].load as f64 / 2000.0;
        assert!(
            (share - 0.75).abs() <= 0.075,
            "fra-1 took {share:.3} of placements, capacity share 0.75"
        );
    }

    #[test]
    fn rendezvous_hash_is_stable() {
        // A golden value: replicas built from other versions or platforms must agree, so a
        // change to the hash is a breaking change and must fail here.
        assert_eq!(stable_hash(&[b"call-1", b"fra-1"]), 0x6d31_c1dc_d065_682f);
        assert_ne!(
            stable_hash(&[b"call-1", b"fra-1"]),
            stable_hash(&[b"call-1f", b"ra-1"]),
            "parts are delimited"
        );
    }
}
