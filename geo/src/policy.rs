//! Data-residency zones and rules, and the distance estimate between a client and a relay.
//!
//! A zone is a named set of relays. A rule maps clients — by CIDR (private networks),
//! subdivision (`US-CA`, from City DBs), country, jurisdiction group (built-in `EU`, `EEA`,
//! `EFTA`, or the operator's own `groups`) or continent — to the zones allowed to carry them.
//!
//! The most specific rule wins, in this order:
//! 1. `cidr` (the longest prefix),
//! 2. `subdivision`,
//! 3. `country`,
//! 4. `group` (the group with the fewest members; two matching groups of the same size with
//!    different zones are refused at load as ambiguous),
//! 5. `continent`,
//! 6. clients whose country the DB does not know: `unknown` (a zone list, or `refuse`), when set,
//! 7. `default`.
//!
//! The policy is checked at load: unknown or empty zones, codes that are not ISO 3166-1 (with a
//! hint: `UK` is `GB`), unknown groups and overlapping rules are errors; [`Policy::check_db`]
//! refuses a policy whose rules cannot match with the loaded DB.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Code, Location, Subdivision, Survey, countries, jurisdictions};

/// A zone: the relays (by name) that may carry its clients' media, and where they are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    /// Relay names, as the allocator's registry knows them.
    pub relays: Vec<String>,
}

/// Which clients a rule covers. Exactly one field is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Match {
    /// An ISO 3166-1 alpha-2 country (`DE`).
    pub country: Option<String>,
    /// A MaxMind continent code (`EU`).
    pub continent: Option<String>,
    /// An address range (the most specific rule: it wins over every other kind).
    pub cidr: Option<IpNet>,
    /// A built-in jurisdiction group (`EU`, `EEA`, `EFTA`) or one of the policy's `groups`.
    pub group: Option<String>,
    /// An ISO 3166-2 subdivision, `US-CA`; needs a DB with subdivisions (GeoIP2 City).
    pub subdivision: Option<String>,
}

/// A residency rule: whom it covers and which zones may carry them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Whom it covers.
    #[serde(rename = "match")]
    pub matches: Match,
    /// Zones allowed to carry the matched clients, in order of preference-free equality.
    pub zones: Vec<String>,
}

/// What to do with a client whose country the DB does not know (and no CIDR rule covers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Unknown {
    /// Place it in these zones.
    Zones(Vec<String>),
    /// `refuse`: answer 451 rather than guess (fail closed).
    Word(String),
}

/// The policy file's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Zones by name.
    pub zones: BTreeMap<String, Zone>,
    /// Operator-defined country groups (`dach: [DE, AT, CH]`), matched by `group:`.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// The rules (their order does not matter: the most specific match decides).
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Zones for clients no rule matches (and, unless `unknown` is set, clients the DB cannot
    /// place).
    pub default: Vec<String>,
    /// Clients the DB cannot place: a zone list, or `refuse`. Unset: `default`.
    #[serde(default)]
    pub unknown: Option<Unknown>,
}

/// What is wrong with a policy (each variant's message says what it is).
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("zone `{0}` has no relays")]
    EmptyZone(String),
    #[error("{rule}: unknown zone `{zone}`")]
    UnknownZone { rule: String, zone: String },
    #[error("{0}: allows no zone")]
    NoZones(String),
    #[error("{0}: must match exactly one of cidr, subdivision, country, group or continent")]
    BadMatch(String),
    #[error("{rule}: `{code}` is not {what}{hint}")]
    BadCode {
        rule: String,
        code: String,
        what: &'static str,
        hint: String,
    },
    #[error("{rule}: no group `{group}` (built-in: EU, EEA, EFTA; or define it under `groups`)")]
    UnknownGroup { rule: String, group: String },
    #[error("groups.{0}: {1}")]
    BadGroup(String, String),
    #[error("{a} and {b} overlap")]
    Overlap { a: String, b: String },
    #[error("{a} and {b} both match {country} with groups of the same size: ambiguous")]
    AmbiguousGroups {
        a: String,
        b: String,
        country: String,
    },
    #[error("relay `{0}` is in more than one zone")]
    RelayInTwoZones(String),
    #[error("unknown: expected a zone list or `refuse`, got `{0}`")]
    BadUnknown(String),
    #[error("{rule} can never match with {db}: {why}")]
    CannotMatch {
        rule: String,
        db: String,
        why: String,
    },
}

/// What the policy decided for a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// These zones may carry the client; `rule` names the rule that decided.
    Zones {
        /// The zones.
        zones: &'a [String],
        /// The rule that decided (`default` when none matched).
        rule: &'a str,
    },
    /// The DB cannot place the client and the policy says `unknown: refuse`.
    Refuse,
}

impl<'a> Verdict<'a> {
    /// The allowed zones; none when refused.
    pub fn zones(&self) -> &'a [String] {
        match self {
            Verdict::Zones { zones, .. } => zones,
            Verdict::Refuse => &[],
        }
    }
}

/// A rule's zones and its description for messages.
#[derive(Clone, Debug)]
struct Target {
    zones: Vec<String>,
    rule: String,
}

/// A checked policy, ready for lookups.
#[derive(Clone, Debug)]
pub struct Policy {
    zones: BTreeMap<String, Zone>,
    cidrs: Vec<(IpNet, Target)>,
    subdivisions: BTreeMap<Subdivision, Target>,
    countries: BTreeMap<Code, Target>,
    /// Every member of a group rule: the most specific (smallest) group holding the country.
    grouped: BTreeMap<Code, Target>,
    continents: BTreeMap<Code, Target>,
    default: Target,
    /// Where clients the DB cannot place go (`default` unless the policy says otherwise);
    /// `None`: refused.
    unknown: Option<Target>,
}

fn describe(i: usize, m: &Match) -> String {
    let what = m
        .cidr
        .map(|c| format!("cidr {c}"))
        .or(m.subdivision.as_ref().map(|c| format!("subdivision {c}")))
        .or(m.country.as_ref().map(|c| format!("country {c}")))
        .or(m.group.as_ref().map(|c| format!("group {c}")))
        .or(m.continent.as_ref().map(|c| format!("continent {c}")))
        .unwrap_or_else(|| "empty match".into());
    format!("rules[{i}] ({what})")
}

/// An ISO 3166-1 country of the embedded table, or an error naming the rule.
fn iso_country(rule: &str, s: &str) -> Result<Code, PolicyError> {
    Code::parse(s)
        .filter(|c| countries::country(*c).is_some())
        .ok_or_else(|| PolicyError::BadCode {
            rule: rule.into(),
            code: s.into(),
            what: "an ISO 3166-1 alpha-2 country code",
            hint: countries::hint(s).map_or(String::new(), |h| format!(" ({h})")),
        })
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
        let default = Target {
            zones: cfg.default.clone(),
            rule: "default".into(),
        };
        let unknown = match &cfg.unknown {
            None => Some(default.clone()),
            Some(Unknown::Word(w)) if w == "refuse" => None,
            Some(Unknown::Word(w)) => return Err(PolicyError::BadUnknown(w.clone())),
            Some(Unknown::Zones(z)) => {
                check_zones("unknown", z)?;
                Some(Target {
                    zones: z.clone(),
                    rule: "unknown".into(),
                })
            }
        };
        // Groups: the operator's, checked, and the built-in ones.
        let mut groups: BTreeMap<String, BTreeSet<Code>> = BTreeMap::new();
        for (name, members) in &cfg.groups {
            if jurisdictions::builtin(name).is_some() {
                return Err(PolicyError::BadGroup(
                    name.clone(),
                    "is a built-in group's name".into(),
                ));
            }
            if members.is_empty() {
                return Err(PolicyError::BadGroup(name.clone(), "has no members".into()));
            }
            let mut set = BTreeSet::new();
            for m in members {
                set.insert(iso_country(&format!("groups.{name}"), m)?);
            }
            groups.insert(name.clone(), set);
        }
        let mut p = Policy {
            zones: cfg.zones.clone(),
            cidrs: Vec::new(),
            subdivisions: BTreeMap::new(),
            countries: BTreeMap::new(),
            grouped: BTreeMap::new(),
            continents: BTreeMap::new(),
            default,
            unknown,
        };
        let mut group_rules: Vec<(String, BTreeSet<Code>, Vec<String>)> = Vec::new();
        let mut seen_groups: BTreeMap<String, String> = BTreeMap::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            let name = describe(i, &r.matches);
            check_zones(&name, &r.zones)?;
            let m = &r.matches;
            let set = [
                m.cidr.is_some(),
                m.subdivision.is_some(),
                m.country.is_some(),
                m.group.is_some(),
                m.continent.is_some(),
            ];
            if set.iter().filter(|b| **b).count() != 1 {
                return Err(PolicyError::BadMatch(name));
            }
            let target = Target {
                zones: r.zones.clone(),
                rule: name.clone(),
            };
            let overlap = |a: &Target, b: String| PolicyError::Overlap {
                a: a.rule.clone(),
                b,
            };
            if let Some(net) = m.cidr.map(|c| c.trunc()) {
                if let Some((_, other)) = p
                    .cidrs
                    .iter()
                    .find(|(o, _)| o.contains(&net) || net.contains(o))
                {
                    return Err(overlap(other, name));
                }
                p.cidrs.push((net, target));
            } else if let Some(s) = &m.subdivision {
                let sub = Subdivision::parse(s)
                    .filter(|sub| countries::country(sub.country).is_some())
                    .ok_or_else(|| PolicyError::BadCode {
                        rule: name.clone(),
                        code: s.clone(),
                        what: "an ISO 3166-2 subdivision code",
                        hint: " (country-subdivision, e.g. US-CA)".into(),
                    })?;
                if let Some(other) = p.subdivisions.get(&sub) {
                    return Err(overlap(other, name));
                }
                p.subdivisions.insert(sub, target);
            } else if let Some(c) = &m.country {
                let c = iso_country(&name, c)?;
                if let Some(other) = p.countries.get(&c) {
                    return Err(overlap(other, name));
                }
                p.countries.insert(c, target);
            } else if let Some(g) = &m.group {
                let members: BTreeSet<Code> = match (groups.get(g), jurisdictions::builtin(g)) {
                    (Some(set), _) => set.clone(),
                    (None, Some(list)) => list.iter().filter_map(|c| Code::parse(c)).collect(),
                    (None, None) => {
                        return Err(PolicyError::UnknownGroup {
                            rule: name,
                            group: g.clone(),
                        });
                    }
                };
                if let Some(other) = seen_groups.insert(g.clone(), name.clone()) {
                    return Err(PolicyError::Overlap { a: other, b: name });
                }
                group_rules.push((name, members, r.zones.clone()));
            } else if let Some(c) = &m.continent {
                let c = Code::parse(c)
                    .filter(|c| countries::is_continent(*c))
                    .ok_or_else(|| PolicyError::BadCode {
                        rule: name.clone(),
                        code: c.clone(),
                        what: "a continent code",
                        hint: " (AF, AN, AS, EU, NA, OC, SA)".into(),
                    })?;
                if let Some(other) = p.continents.get(&c) {
                    return Err(overlap(other, name));
                }
                p.continents.insert(c, target);
            }
        }
        // Per country, the smallest group rule that holds it.
        let mut smallest: BTreeMap<Code, usize> = BTreeMap::new();
        for (gi, (name, members, zones)) in group_rules.iter().enumerate() {
            for c in members {
                match smallest.get(c).map(|&o| (o, group_rules[o].1.len())) {
                    Some((o, size)) if size == members.len() && group_rules[o].2 != *zones => {
                        return Err(PolicyError::AmbiguousGroups {
                            a: group_rules[o].0.clone(),
                            b: name.clone(),
                            country: c.to_string(),
                        });
                    }
                    Some((_, size)) if size <= members.len() => {}
                    _ => {
                        smallest.insert(*c, gi);
                    }
                }
            }
        }
        p.grouped = smallest
            .into_iter()
            .map(|(c, gi)| {
                let (rule, _, zones) = &group_rules[gi];
                (
                    c,
                    Target {
                        zones: zones.clone(),
                        rule: rule.clone(),
                    },
                )
            })
            .collect();
        Ok(p)
    }

    /// What the policy allows for a client at `ip` located at `loc`.
    pub fn decide(&self, ip: IpAddr, loc: &Location) -> Verdict<'_> {
        fn found(t: &Target) -> Verdict<'_> {
            Verdict::Zones {
                zones: &t.zones,
                rule: &t.rule,
            }
        }
        if let Some((_, t)) = self
            .cidrs
            .iter()
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len())
        {
            return found(t);
        }
        if let Some(t) = loc.subdivision.and_then(|s| self.subdivisions.get(&s)) {
            return found(t);
        }
        if let Some(t) = loc.country.and_then(|c| self.countries.get(&c)) {
            return found(t);
        }
        if let Some(t) = loc.country.and_then(|c| self.grouped.get(&c)) {
            return found(t);
        }
        if let Some(t) = loc.continent.and_then(|c| self.continents.get(&c)) {
            return found(t);
        }
        if loc.country.is_none() {
            return self.unknown.as_ref().map_or(Verdict::Refuse, found);
        }
        found(&self.default)
    }

    /// The zones allowed to carry a client; empty when the policy refuses it.
    pub fn allowed_zones(&self, ip: IpAddr, loc: &Location) -> &[String] {
        self.decide(ip, loc).zones()
    }

    /// Checks the policy against what a DB carries ([`crate::GeoDb::survey`]): a rule that can
    /// never match with it is an error naming the rule. Returns notes worth logging (facts
    /// filled from the embedded table).
    pub fn check_db(&self, survey: &Survey, db: &str) -> Result<Vec<String>, PolicyError> {
        let cannot = |rule: &str, why: &str| PolicyError::CannotMatch {
            rule: rule.into(),
            db: db.into(),
            why: why.into(),
        };
        let mut notes = Vec::new();
        if survey.sampled == 0 {
            return Err(cannot("every rule", "no record could be read"));
        }
        let mut needs_country = self
            .subdivisions
            .values()
            .chain(self.countries.values())
            .chain(self.grouped.values());
        if survey.with_country == 0 {
            let (blocked, why) = if survey.with_continent == 0 {
                let first = needs_country.next().or(self.continents.values().next());
                (first, "no sampled record has a country or continent")
            } else {
                (needs_country.next(), "no sampled record has a country")
            };
            if let Some(t) = blocked {
                return Err(cannot(&t.rule, why));
            }
        }
        if survey.with_subdivision == 0
            && let Some(t) = self.subdivisions.values().next()
        {
            return Err(cannot(
                &t.rule,
                "its records have no subdivisions (a GeoIP2 City DB has them)",
            ));
        }
        if survey.with_continent == 0 && !self.continents.is_empty() {
            notes.push(format!(
                "{db} has no continents: continent rules use the embedded ISO 3166 table"
            ));
        }
        if survey.with_coords == 0 {
            notes.push(format!(
                "{db} has no coordinates: distances use each country's representative point"
            ));
        }
        match &self.unknown {
            None => notes.push("clients the DB cannot place are refused".into()),
            Some(t) if t.rule == "default" => notes.push(format!(
                "clients the DB cannot place get the default zones {:?} (set policy.unknown to \
                 a zone list or `refuse` to decide otherwise)",
                t.zones
            )),
            Some(_) => {}
        }
        Ok(notes)
    }

    /// The zone a relay belongs to.
    pub fn zone_of(&self, relay: &str) -> Option<&str> {
        self.zones
            .iter()
            .find(|(_, z)| z.relays.iter().any(|r| r == relay))
            .map(|(n, _)| n.as_str())
    }

    /// The zones by name.
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
            ..Location::default()
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
                "`DEU` is not an ISO 3166-1 alpha-2 country code",
            ),
            (
                "zones: {eu: {relays: [a]}}\nrules: [{match: {country: UK}, zones: [eu]}]\ndefault: [eu]\n",
                "rules[0] (country UK): `UK` is not an ISO 3166-1 alpha-2 country code (the United Kingdom is GB)",
            ),
            (
                "zones: {eu: {relays: [a]}}\nrules: [{match: {continent: XX}, zones: [eu]}]\ndefault: [eu]\n",
                "not a continent code",
            ),
            (
                "zones: {eu: {relays: [a]}}\nrules: [{match: {group: EUROPE}, zones: [eu]}]\ndefault: [eu]\n",
                "rules[0] (group EUROPE): no group `EUROPE`",
            ),
            (
                "zones: {eu: {relays: [a]}}\ngroups: {EU: [DE]}\ndefault: [eu]\n",
                "groups.EU: is a built-in group's name",
            ),
            (
                "zones: {eu: {relays: [a]}}\ngroups: {uk: [UK]}\ndefault: [eu]\n",
                "groups.uk: `UK` is not an ISO",
            ),
            (
                "zones: {eu: {relays: [a]}, x: {relays: [b]}}\ngroups: {ab: [DE, FR], cd: [DE, IT]}\nrules: [{match: {group: ab}, zones: [eu]}, {match: {group: cd}, zones: [x]}]\ndefault: [eu]\n",
                "rules[0] (group ab) and rules[1] (group cd) both match DE with groups of the same size: ambiguous",
            ),
            (
                "zones: {eu: {relays: [a]}}\nrules: [{match: {subdivision: US-CALIF}, zones: [eu]}]\ndefault: [eu]\n",
                "ISO 3166-2",
            ),
            (
                "zones: {eu: {relays: [a]}}\ndefault: [eu]\nunknown: reject\n",
                "expected a zone list or `refuse`",
            ),
            (
                "zones: {eu: {relays: [a]}}\ndefault: [eu]\nunknown: [mars]\n",
                "unknown: unknown zone `mars`",
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

    /// Jurisdictions are not continents: the EU group separates Germany from Switzerland,
    /// Norway (EEA, not EU), the UK and Russia, whatever continent the DB says.
    #[test]
    fn jurisdiction_groups_beat_continents_and_the_smallest_group_wins() {
        let p = policy(
            "zones:\n  eu: {relays: [fra-1]}\n  eea: {relays: [osl-1]}\n  ch: {relays: [zrh-1]}\n  \
             uk: {relays: [lon-1]}\n  dach: {relays: [muc-1]}\n  other: {relays: [iad-1]}\n\
             groups: {dach: [DE, AT, CH], britain: [GB, GG, JE, IM]}\n\
             rules:\n  - {match: {group: EU}, zones: [eu]}\n  - {match: {group: EEA}, zones: [eea, eu]}\n  \
             - {match: {country: CH}, zones: [ch]}\n  - {match: {group: britain}, zones: [uk]}\n  \
             - {match: {group: dach}, zones: [dach]}\n  - {match: {continent: EU}, zones: [other]}\n\
             default: [other]\n",
        )
        .unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let decide = |c: &str| p.decide(ip, &loc(c, "EU"));
        assert_eq!(
            decide("DE"),
            Verdict::Zones {
                zones: &["dach".to_string()],
                rule: "rules[4] (group dach)"
            },
            "dach (3 members) is more specific than the EU (34)"
        );
        assert_eq!(decide("FR").zones(), ["eu"]);
        assert_eq!(decide("GF").zones(), ["eu"], "French Guiana is in the EU");
        assert_eq!(decide("NO").zones(), ["eea", "eu"], "Norway: EEA, not EU");
        assert_eq!(decide("CH").zones(), ["ch"], "a country rule beats a group");
        assert_eq!(decide("AT").zones(), ["dach"]);
        assert_eq!(decide("GB").zones(), ["uk"]);
        assert_eq!(decide("RU").zones(), ["other"], "continent EU, not the EU");
        assert_eq!(decide("UA").zones(), ["other"]);
        assert_eq!(
            p.decide(ip, &loc("JP", "AS")),
            Verdict::Zones {
                zones: &["other".to_string()],
                rule: "default"
            }
        );
    }

    #[test]
    fn subdivision_beats_country_and_unknown_can_refuse() {
        let p = policy(
            "zones: {ca: {relays: [sfo-1]}, us: {relays: [iad-1]}, any: {relays: [x-1]}}\n\
             rules:\n  - {match: {subdivision: us-ca}, zones: [ca]}\n  - {match: {country: US}, zones: [us]}\n\
             default: [any]\nunknown: refuse\n",
        )
        .unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut sf = loc("US", "NA");
        sf.subdivision = crate::Subdivision::parse("US-CA");
        assert_eq!(p.decide(ip, &sf).zones(), ["ca"]);
        assert_eq!(p.decide(ip, &loc("US", "NA")).zones(), ["us"]);
        assert_eq!(
            p.decide(ip, &loc("BR", "SA")).zones(),
            ["any"],
            "known: default"
        );
        assert_eq!(p.decide(ip, &Location::default()), Verdict::Refuse);
        assert!(p.allowed_zones(ip, &Location::default()).is_empty());
        // A CIDR rule still places a client the DB does not know.
        let p = policy(
            "zones: {lan: {relays: [l-1]}, any: {relays: [x-1]}}\n\
             rules: [{match: {cidr: 10.0.0.0/8}, zones: [lan]}]\ndefault: [any]\nunknown: [lan]\n",
        )
        .unwrap();
        assert_eq!(
            p.decide("10.1.2.3".parse().unwrap(), &Location::default())
                .zones(),
            ["lan"]
        );
        assert_eq!(
            p.decide(ip, &Location::default()),
            Verdict::Zones {
                zones: &["lan".to_string()],
                rule: "unknown"
            }
        );
    }

    #[test]
    fn a_policy_that_cannot_match_the_db_is_refused() {
        let flat = Survey {
            sampled: 100,
            with_country: 98,
            ..Survey::default()
        };
        let p = policy(POLICY).unwrap();
        let notes = p.check_db(&flat, "flat.mmdb").unwrap();
        assert!(
            notes
                .iter()
                .any(|n| n.contains("continent rules use the embedded")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("representative point")),
            "{notes:?}"
        );
        let sub = policy(
            "zones: {ca: {relays: [a]}}\nrules: [{match: {subdivision: US-CA}, zones: [ca]}]\ndefault: [ca]\n",
        )
        .unwrap();
        let e = sub.check_db(&flat, "flat.mmdb").unwrap_err().to_string();
        assert_eq!(
            e,
            "rules[0] (subdivision US-CA) can never match with flat.mmdb: its records have no \
             subdivisions (a GeoIP2 City DB has them)"
        );
        let asn_only = Survey {
            sampled: 100,
            ..Survey::default()
        };
        let e = p.check_db(&asn_only, "asn.mmdb").unwrap_err().to_string();
        assert!(
            e.contains("no sampled record has a country or continent"),
            "{e}"
        );
        assert!(p.check_db(&Survey::default(), "empty").is_err());
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
