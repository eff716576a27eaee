//! Data-residency zones and rules, and the distance estimate between a client and a relay.
//!
//! A zone is a named set of relays. A rule maps clients — by CIDR (private networks), country or
//! continent — to the zones allowed to carry them; a default rule covers everyone else. The most
//! specific rule wins: CIDR (longest prefix), then country, then continent, then the default.
//! The policy is checked at load: unknown or empty zones and overlapping rules are errors.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Code, Location};

/// A zone: the relays (by name) that may carry its clients' media, and where they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub relays: Vec<String>,
}

/// Which clients a rule covers. Exactly one field is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Match {
    pub country: Option<String>,
    pub continent: Option<String>,
    pub cidr: Option<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(rename = "match")]
    pub matches: Match,
    /// Zones allowed to carry the matched clients, in order of preference-free equality.
    pub zones: Vec<String>,
}

/// The policy file's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub zones: BTreeMap<String, Zone>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Zones for clients no rule matches (and clients the DB does not know).
    pub default: Vec<String>,
}

/// What is wrong with a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("zone `{0}` has no relays")]
    EmptyZone(String),
    #[error("{rule}: unknown zone `{zone}`")]
    UnknownZone { rule: String, zone: String },
    #[error("{0}: allows no zone")]
    NoZones(String),
    #[error("{0}: must match exactly one of country, continent or cidr")]
    BadMatch(String),
    #[error("{0}: not a two-letter code")]
    BadCode(String),
    #[error("{a} and {b} overlap")]
    Overlap { a: String, b: String },
    #[error("relay `{0}` is in more than one zone")]
    RelayInTwoZones(String),
}

enum Key {
    Cidr(IpNet),
    Country(Code),
    Continent(Code),
}

/// A checked policy, ready for lookups.
#[derive(Clone, Debug)]
pub struct Policy {
    zones: BTreeMap<String, Zone>,
    cidrs: Vec<(IpNet, Vec<String>)>,
    countries: BTreeMap<Code, Vec<String>>,
    continents: BTreeMap<Code, Vec<String>>,
    default: Vec<String>,
}

fn describe(i: usize, m: &Match) -> String {
    let what = m
        .cidr
        .map(|c| format!("cidr {c}"))
        .or(m.country.as_ref().map(|c| format!("country {c}")))
        .or(m.continent.as_ref().map(|c| format!("continent {c}")))
        .unwrap_or_else(|| "empty match".into());
    format!("rules[{i}] ({what})")
}

impl Policy {
    /// Checks a policy.
    pub fn new(cfg: PolicyConfig) -> Result<Policy, PolicyError> {
        let mut seen_relays = BTreeSet::new();
        for (name, z) in &cfg.zones {
            if z.relays.is_empty() {
                return Err(PolicyError::EmptyZone(name.clone()));
            }
            for r in &z.relays {
                if !seen_relays.insert(r.clone()) {
                    return Err(PolicyError::RelayInTwoZones(r.clone()));
                }
            }
        }
        let check_zones = |rule: &str, zones: &[String]| -> Result<(), PolicyError> {
            if zones.is_empty() {
                return Err(PolicyError::NoZones(rule.into()));
            }
            match zones.iter().find(|z| !cfg.zones.contains_key(*z)) {
                Some(z) => Err(PolicyError::UnknownZone {
                    rule: rule.into(),
                    zone: z.clone(),
                }),
                None => Ok(()),
            }
        };
        check_zones("default", &cfg.default)?;
        let mut p = Policy {
            zones: cfg.zones.clone(),
            cidrs: Vec::new(),
            countries: BTreeMap::new(),
            continents: BTreeMap::new(),
            default: cfg.default.clone(),
        };
        let mut owner: BTreeMap<String, String> = BTreeMap::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            let name = describe(i, &r.matches);
            check_zones(&name, &r.zones)?;
            let m = &r.matches;
            let set = [m.cidr.is_some(), m.country.is_some(), m.continent.is_some()];
            if set.iter().filter(|b| **b).count() != 1 {
                return Err(PolicyError::BadMatch(name));
            }
            let code =
                |s: &String| Code::parse(s).ok_or_else(|| PolicyError::BadCode(name.clone()));
            let key = match (m.cidr, &m.country, &m.continent) {
                (Some(c), _, _) => Key::Cidr(c.trunc()),
                (_, Some(c), _) => Key::Country(code(c)?),
                (_, _, Some(c)) => Key::Continent(code(c)?),
                _ => return Err(PolicyError::BadMatch(name)),
            };
            let zones = r.zones.clone();
            match key {
                Key::Cidr(net) => {
                    if let Some((other, _)) = p
                        .cidrs
                        .iter()
                        .find(|(o, _)| o.contains(&net) || net.contains(o))
                    {
                        return Err(PolicyError::Overlap {
                            a: owner[&other.to_string()].clone(),
                            b: name,
                        });
                    }
                    owner.insert(net.to_string(), name);
                    p.cidrs.push((net, zones));
                }
                Key::Country(c) => {
                    if p.countries.insert(c, zones).is_some() {
                        return Err(PolicyError::Overlap {
                            a: owner[&format!("country {c}")].clone(),
                            b: name,
                        });
                    }
                    owner.insert(format!("country {c}"), name);
                }
                Key::Continent(c) => {
                    if p.continents.insert(c, zones).is_some() {
                        return Err(PolicyError::Overlap {
                            a: owner[&format!("continent {c}")].clone(),
                            b: name,
                        });
                    }
                    owner.insert(format!("continent {c}"), name);
                }
            }
        }
        Ok(p)
    }

    /// The zones allowed to carry a client at `ip` located at `loc`.
    pub fn allowed_zones(&self, ip: IpAddr, loc: &Location) -> &[String] {
        if let Some((_, z)) = self
            .cidrs
            .iter()
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len())
        {
            return z;
        }
        if let Some(z) = loc.country.and_then(|c| self.countries.get(&c)) {
            return z;
        }
        if let Some(z) = loc.continent.and_then(|c| self.continents.get(&c)) {
            return z;
        }
        &self.default
    }

    /// The zone a relay belongs to.
    pub fn zone_of(&self, relay: &str) -> Option<&str> {
        self.zones
            .iter()
            .find(|(_, z)| z.relays.iter().any(|r| r == relay))
            .map(|(n, _)| n.as_str())
    }

    pub fn zones(&self) -> &BTreeMap<String, Zone> {
        &self.zones
    }
}

/// Great-circle distance in km between two (latitude, longitude) points in degrees.
pub fn great_circle_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (la1, lo1, la2, lo2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Estimates the cost (milliseconds of round trip, roughly) of relaying a client through a relay:
/// great-circle distance × cost per km, unless a region pair has a measured override.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistanceModel {
    /// Milliseconds per km; light in fibre gives about 0.01 ms of round trip per km.
    pub ms_per_km: f64,
    /// Cost when either side has no coordinates.
    pub unknown_ms: f64,
    /// Measured costs between regions (`"EU-NA": 90.0`, country or continent codes, either order).
    pub overrides: BTreeMap<String, f64>,
}

impl Default for DistanceModel {
    fn default() -> Self {
        DistanceModel {
            ms_per_km: 0.01,
            unknown_ms: 150.0,
            overrides: BTreeMap::new(),
        }
    }
}

impl DistanceModel {
    fn override_for(&self, a: Option<Code>, b: Option<Code>) -> Option<f64> {
        let (a, b) = (a?, b?);
        self.overrides
            .get(&format!("{a}-{b}"))
            .or_else(|| self.overrides.get(&format!("{b}-{a}")))
            .copied()
    }

    /// The estimated cost between a client and a relay location.
    pub fn cost_ms(&self, client: &Location, relay: &Location) -> f64 {
        if let Some(v) = self
            .override_for(client.country, relay.country)
            .or_else(|| self.override_for(client.continent, relay.continent))
        {
            return v;
        }
        match (client.coords, relay.coords) {
            (Some(a), Some(b)) => great_circle_km(a, b) * self.ms_per_km,
            _ => self.unknown_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "
zones:
  eu: {relays: [fra-1, par-1]}
  us: {relays: [iad-1]}
  jp: {relays: [nrt-1]}
  office: {relays: [lan-1]}
rules:
  - {match: {continent: EU}, zones: [eu]}
  - {match: {country: JP}, zones: [jp, us]}
  - {match: {cidr: 10.20.0.0/16}, zones: [office]}
default: [us, eu]
";

    fn policy(yaml: &str) -> Result<Policy, PolicyError> {
        Policy::new(serde_saphyr::from_str::<PolicyConfig>(yaml).expect("yaml"))
    }

    fn loc(country: &str, continent: &str) -> Location {
        Location {
            country: Code::parse(country),
            continent: Code::parse(continent),
            coords: None,
        }
    }

    #[test]
    fn most_specific_rule_wins() {
        let p = policy(POLICY).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(p.allowed_zones(ip, &loc("DE", "EU")), ["eu"]);
        assert_eq!(p.allowed_zones(ip, &loc("JP", "AS")), ["jp", "us"]);
        assert_eq!(
            p.allowed_zones(ip, &loc("BR", "SA")),
            ["us", "eu"],
            "default"
        );
        assert_eq!(
            p.allowed_zones(ip, &Location::default()),
            ["us", "eu"],
            "unknown location: default"
        );
        // A CIDR rule beats the country of the address.
        assert_eq!(
            p.allowed_zones("10.20.3.4".parse().unwrap(), &loc("DE", "EU")),
            ["office"]
        );
        assert_eq!(p.zone_of("par-1"), Some("eu"));
        assert_eq!(p.zone_of("nowhere"), None);
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        let cases = [
            (
                "zones: {eu: {relays: []}}\ndefault: [eu]\n",
                "zone `eu` has no relays",
            ),
            (
                "zones: {eu: {relays: [a]}}\ndefault: [us]\n",
                "unknown zone `us`",
            ),
            (
                "zones: {eu: {relays: [a]}}\ndefault: []\n",
                "default: allows no zone",
            ),
            (
                "zones: {eu: {relays: [a]}}\nrules: [{match: {country: DE}, zones: [mars]}]\ndefault: [eu]\n",
                "rules[0] (country DE): unknown zone `mars`",
            ),
            (
                "zones: {eu: {relays: [a]}}\nrules: [{match: {country: DE}, zones: [eu]}, {match: {country: de}, zones: [eu]}]\ndefault: [eu]\n",
                "overlap",
            ),
            (
                "zones: {eu: {relays: [a]}}\nrules: [{match: {cidr: 10.0.0.0/8}, zones: [eu]}, {match: {cidr: 10.1.0.0/16}, zones: [eu]}]\ndefault: [eu]\n",
                "rules[0] (cidr 10.0.0.0/8) and rules[1] (cidr 10.1.0.0/16) overlap",
            ),
            (
                "zones: {eu: {relays: [a]}}\nrules: [{match: {country: DE, continent: EU}, zones: [eu]}]\ndefault: [eu]\n",
                "exactly one",
            ),
            (
                "zones: {eu: {relays: [a]}}\nrules: [{match: {country: DEU}, zones: [eu]}]\ndefault: [eu]\n",
                "two-letter",
            ),
            (
                "zones: {eu: {relays: [a]}, us: {relays: [a]}}\ndefault: [eu]\n",
                "more than one zone",
            ),
        ];
        for (yaml, want) in cases {
            let e = policy(yaml).unwrap_err().to_string();
            assert!(e.contains(want), "{yaml:?}: {e}");
        }
    }

    #[test]
    fn distance_and_overrides() {
        let fra = (50.11, 8.68);
        let nyc = (40.71, -74.01);
        let km = great_circle_km(fra, nyc);
        assert!((km - 6200.0).abs() < 60.0, "{km}");
        assert_eq!(great_circle_km(fra, fra), 0.0);
        let mut m = DistanceModel::default();
        let de = Location {
            coords: Some(fra),
            ..loc("DE", "EU")
        };
        let us = Location {
            coords: Some(nyc),
            ..loc("US", "NA")
        };
        assert!((m.cost_ms(&de, &us) - km * 0.01).abs() < 1e-9);
        assert_eq!(
            m.cost_ms(&de, &Location::default()),
            150.0,
            "unknown: the configured cost"
        );
        m.overrides.insert("NA-EU".into(), 85.0);
        assert_eq!(
            m.cost_ms(&de, &us),
            85.0,
            "a continent pair override, either order"
        );
        m.overrides.insert("DE-US".into(), 80.0);
        assert_eq!(
            m.cost_ms(&us, &de),
            80.0,
            "a country pair override beats the continent one"
        );
    }
}
