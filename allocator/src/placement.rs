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
//!
//! A call placed as a call ([`place_call`]) takes the zones allowed for both parties: when a relay
//! there is eligible, both get the one with the least total cost; otherwise each party is placed
//! in its own zones and the call is a cross-zone call. A party joining an earlier placement
//! ([`place_joining`]) gets the first party's relay, or its zone, when its own rule allows it.

use std::net::IpAddr;

use veil_geo::Location;
use veil_geo::policy::{DistanceModel, Policy, Verdict};

/// What the allocator knows about one relay.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayView {
    /// Its name in the registry.
    pub name: String,
    /// The zone it serves.
    pub zone: String,
    /// Its last polls succeeded.
    pub healthy: bool,
    /// It refuses new allocations.
    pub draining: bool,
    /// Allocations in use and the relay's total quota.
    pub load: u32,
    /// Allocations it may hold.
    pub capacity: u32,
    /// Where it is.
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
    /// The client's address.
    pub ip: IpAddr,
    /// What the geo DB says about it.
    pub location: Location,
    /// The call it joins, if any (parties of one call share a relay where they may).
    pub call_id: Option<&'a str>,
}

/// Indices into the relay view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The relay to use.
    pub primary: usize,
    /// The next best relay, if there is one.
    pub backup: Option<usize>,
}

/// Why no relay can be offered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    /// Relays of the allowed zones exist, but none is healthy with room.
    #[error("no relay in the allowed zones {zones:?} is healthy and has room")]
    NoRelayInAllowedZones {
        /// The zones the policy allows.
        zones: Vec<String>,
    },
    /// The policy refuses clients it cannot place.
    #[error("the geo DB cannot place this client and the policy refuses unknown clients")]
    LocationUnknown,
}

/// Where the parties of a call go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallPlacement {
    /// Both parties on one relay (`primary`), in a zone allowed for both.
    Shared(Placement),
    /// No relay is allowed and available for both: each party in its own zones.
    Split(Placement, Placement),
}

/// The earlier party of a call, as a join token carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined<'a> {
    /// The call's id.
    pub call: &'a str,
    /// Its zone.
    pub zone: &'a str,
    /// Its relay.
    pub relay: &'a str,
}

/// Tuning of the score.
#[derive(Clone, Debug)]
pub struct Scoring {
    /// How distance turns into a score.
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

/// The zones the policy allows for a client, or why none.
fn allowed<'p>(
    client: &ClientFacts<'_>,
    policy: &'p Policy,
) -> Result<&'p [String], PlacementError> {
    match policy.decide(client.ip, &client.location) {
        Verdict::Zones { zones, .. } => Ok(zones),
        Verdict::Refuse => Err(PlacementError::LocationUnknown),
    }
}

/// Relays of `zones` that may take a client now.
fn eligible(relays: &[RelayView], zones: &[String]) -> Vec<usize> {
    relays
        .iter()
        .enumerate()
        .filter(|(_, r)| zones.contains(&r.zone) && r.healthy && !r.draining && r.has_room())
        .map(|(i, _)| i)
        .collect()
}

fn load_ms(r: &RelayView, scoring: &Scoring) -> f64 {
    scoring.load_penalty_ms * (r.load as f64 / r.capacity.max(1) as f64)
}

/// `eligible` sorted by `cost` (ties broken by name, so replicas agree).
fn ranked(
    eligible: &[usize],
    relays: &[RelayView],
    cost: impl Fn(&RelayView) -> f64,
) -> Vec<usize> {
    let mut by_score: Vec<(f64, usize)> = eligible.iter().map(|&i| (cost(&relays[i]), i)).collect();
    by_score.sort_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(relays[a.1].name.cmp(&relays[b.1].name))
    });
    by_score.into_iter().map(|(_, i)| i).collect()
}

/// The eligible relay with the highest rendezvous score for `call`.
fn rendezvous_pick(call: &str, eligible: &[usize], relays: &[RelayView]) -> Option<usize> {
    eligible
        .iter()
        .map(|&i| (rendezvous(call, &relays[i]), i))
        .max_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then(relays[a.1].name.cmp(&relays[b.1].name))
        })
        .map(|(_, i)| i)
}

fn with_backup(primary: usize, by_score: &[usize]) -> Placement {
    Placement {
        primary,
        backup: by_score.iter().copied().find(|i| *i != primary),
    }
}

/// Chooses a primary and a backup relay for a client.
pub fn place(
    client: &ClientFacts<'_>,
    relays: &[RelayView],
    policy: &Policy,
    scoring: &Scoring,
) -> Result<Placement, PlacementError> {
    let zones = allowed(client, policy)?;
    place_in(client, zones, relays, scoring)
}

fn place_in(
    client: &ClientFacts<'_>,
    zones: &[String],
    relays: &[RelayView],
    scoring: &Scoring,
) -> Result<Placement, PlacementError> {
    let eligible = eligible(relays, zones);
    if eligible.is_empty() {
        return Err(PlacementError::NoRelayInAllowedZones {
            zones: zones.to_vec(),
        });
    }
    let by_score = ranked(&eligible, relays, |r| {
        scoring.distance.cost_ms(&client.location, &r.location) + load_ms(r, scoring)
    });
    let primary = client
        .call_id
        .and_then(|call| rendezvous_pick(call, &eligible, relays))
        .unwrap_or(by_score[0]);
    Ok(with_backup(primary, &by_score))
}

/// Places both parties of a call: on one relay allowed for both (least total cost) when there
/// is one, else each in its own zones. Either party refused or without a relay is an error.
/// `relays` are the same relays as each party may use them (`[a, b]`, same order: a relay may
/// serve one party's profile and not the other's); a shared relay is one both may use.
pub fn place_call(
    a: &ClientFacts<'_>,
    b: &ClientFacts<'_>,
    relays: [&[RelayView]; 2],
    policy: &Policy,
    scoring: &Scoring,
) -> Result<CallPlacement, PlacementError> {
    let (za, zb) = (allowed(a, policy)?, allowed(b, policy)?);
    let both: Vec<String> = za.iter().filter(|z| zb.contains(z)).cloned().collect();
    let in_b = eligible(relays[1], &both);
    let shared: Vec<usize> = eligible(relays[0], &both)
        .into_iter()
        .filter(|i| in_b.contains(i))
        .collect();
    if !shared.is_empty() {
        let by_score = ranked(&shared, relays[0], |r| {
            scoring.distance.cost_ms(&a.location, &r.location)
                + scoring.distance.cost_ms(&b.location, &r.location)
                + load_ms(r, scoring)
        });
        return Ok(CallPlacement::Shared(with_backup(by_score[0], &by_score)));
    }
    Ok(CallPlacement::Split(
        place_in(a, za, relays[0], scoring)?,
        place_in(b, zb, relays[1], scoring)?,
    ))
}

/// Places a party joining an earlier placement: the first party's relay when this party's rule
/// allows its zone and the relay can take it, another relay of that zone when it cannot, and
/// otherwise this party's own placement (a cross-zone call: `.1` is true).
pub fn place_joining(
    client: &ClientFacts<'_>,
    joined: &Joined<'_>,
    relays: &[RelayView],
    policy: &Policy,
    scoring: &Scoring,
) -> Result<(Placement, bool), PlacementError> {
    let zones = allowed(client, policy)?;
    if zones.iter().any(|z| z == joined.zone) {
        let zone = [joined.zone.to_string()];
        let in_zone = eligible(relays, &zone);
        if !in_zone.is_empty() {
            let by_score = ranked(&in_zone, relays, |r| {
                scoring.distance.cost_ms(&client.location, &r.location) + load_ms(r, scoring)
            });
            let primary = in_zone
                .iter()
                .copied()
                .find(|&i| relays[i].name == joined.relay)
                .or_else(|| rendezvous_pick(joined.call, &in_zone, relays))
                .unwrap_or(by_score[0]);
            return Ok((with_backup(primary, &by_score), false));
        }
    }
    let p = place_in(client, zones, relays, scoring)?;
    let cross = relays[p.primary].zone != joined.zone;
    Ok((p, cross))
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
                ..Location::default()
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

    /// A call as a call: one relay allowed for both when there is one (the least total
    /// distance), else each party in its own zones.
    #[test]
    fn calls_share_a_zone_when_the_policies_allow_one() {
        let p = policy();
        let s = Scoring::default();
        let r = relays();
        let berlin = client("DE", "EU", (52.52, 13.40));
        let nyc = client("US", "NA", (40.71, -74.01));
        let tokyo = client("JP", "AS", (35.68, 139.69));
        // DE: [eu]; US: [us, eu]: both in the EU.
        match place_call(&berlin, &nyc, [&r, &r], &p, &s).unwrap() {
            CallPlacement::Shared(pl) => {
                assert_eq!(r[pl.primary].zone, "eu");
                // Berlin–Frankfurt 424 km + Frankfurt–New York 6 200 km beats Berlin–Paris 878 km
                // + Paris–New York 5 837 km.
                assert!(
                    r[pl.primary].name.starts_with("fra"),
                    "least total distance"
                );
                assert_eq!(r[pl.backup.unwrap()].zone, "eu");
            }
            other => panic!("{other:?}"),
        }
        // DE: [eu]; JP (default): [us]: no zone for both.
        match place_call(&berlin, &tokyo, [&r, &r], &p, &s).unwrap() {
            CallPlacement::Split(a, b) => {
                assert_eq!(
                    (r[a.primary].zone.as_str(), r[b.primary].zone.as_str()),
                    ("eu", "us")
                );
            }
            other => panic!("{other:?}"),
        }
        // The shared zone down: each in its own (the US party to the US).
        let mut eu_down = relays();
        for x in eu_down.iter_mut().filter(|x| x.zone == "eu") {
            x.healthy = false;
        }
        assert!(
            matches!(
                place_call(&berlin, &nyc, [&eu_down, &eu_down], &p, &s),
                Err(PlacementError::NoRelayInAllowedZones { .. })
            ),
            "the German party has nowhere to go: an error, not a US relay"
        );
    }

    #[test]
    fn a_joining_party_gets_the_first_partys_relay_when_its_rule_allows() {
        let p = policy();
        let s = Scoring::default();
        let r = relays();
        let nyc = client("US", "NA", (40.71, -74.01));
        let tokyo = client("JP", "AS", (35.68, 139.69));
        let joined = Joined {
            call: "c1",
            zone: "eu",
            relay: "fra-2",
        };
        let (pl, cross) = place_joining(&nyc, &joined, &r, &p, &s).unwrap();
        assert_eq!((r[pl.primary].name.as_str(), cross), ("fra-2", false));
        // That relay draining: another of the same zone.
        let mut d = relays();
        d[1].draining = true;
        let (pl, cross) = place_joining(&nyc, &joined, &d, &p, &s).unwrap();
        assert_eq!((r[pl.primary].zone.as_str(), cross), ("eu", false));
        assert_ne!(r[pl.primary].name, "fra-2", "never a draining relay");
        // JP may not use the EU: its own zone, a cross-zone call.
        let (pl, cross) = place_joining(&tokyo, &joined, &r, &p, &s).unwrap();
        assert_eq!((r[pl.primary].zone.as_str(), cross), ("us", true));
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
