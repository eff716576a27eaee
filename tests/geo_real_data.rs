//! Residency with real geolocation databases that the project did not write (npm packages, see
//! tests/geodata/package.json; `.ci/run` installs them with `npm ci --prefix tests/geodata`):
//!
//! * GeoLite2-Country in the flat `country_code` schema (ip-location-db, 2026-06 build): no
//!   continent, no coordinates;
//! * GeoLite2-Country and GeoLite2-City in MaxMind's GeoIP2 schema (the `geoip-database` package,
//!   2019-12 build);
//! * geo-whois-asn-country (ip-location-db, from RIR whois and ASN data): an independent
//!   database, used only to confirm the country of each test address.
//!
//! Test addresses are taken from each DB's own networks (the middle address of networks spread
//! over the DB), IPv4 and IPv6, for countries on every continent, and kept only when the
//! independent DB agrees on the country. Every placement must then match the policy's
//! expectation, which is written below by hand, not computed by the code under test.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use veil_allocator::placement::{ClientFacts, RelayView, Scoring, place};
use veil_geo::policy::{Policy, PolicyConfig, Verdict};
use veil_geo::{Code, GeoDb, Location, countries};

fn data(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/geodata/node_modules")
        .join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `npm ci --prefix tests/geodata` (.ci/run does). These tests use real \
         geo databases and must not pass without them.",
        p.display()
    );
    p
}

fn open(rel: &str) -> GeoDb {
    GeoDb::open(&data(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const FLAT: &str = "@ip-location-db/geolite2-country-mmdb/geolite2-country.mmdb";
const GEOIP2: &str = "geoip-database/GeoLite2-Country.mmdb";
const GEOIP2_CITY: &str = "geoip-database/GeoLite2-City.mmdb";
const INDEPENDENT: &str = "@ip-location-db/geo-whois-asn-country-mmdb/geo-whois-asn-country.mmdb";

/// A residency policy an operator might write: GDPR (the EEA; the UK and Switzerland with
/// adequacy may also use the EU), PIPL (China stays in China), Asia and Oceania to APAC, South
/// America to São Paulo or the US, North America to the US; everyone else to the US, and
/// clients the DB cannot place refused.
const POLICY: &str = "
zones:
  eu: {relays: [eu-fra, eu-par]}
  nordic: {relays: [no-osl]}
  uk: {relays: [uk-lon]}
  ch: {relays: [ch-zrh]}
  cn: {relays: [cn-sha]}
  apac: {relays: [ap-sin, ap-nrt, ap-syd]}
  sa: {relays: [sa-gru]}
  us: {relays: [us-iad, us-sfo]}
groups:
  britain: [GB, GG, JE, IM]
rules:
  - {match: {group: EU}, zones: [eu]}
  - {match: {group: EEA}, zones: [nordic, eu]}
  - {match: {group: britain}, zones: [uk, eu]}
  - {match: {country: CH}, zones: [ch, eu]}
  - {match: {country: CN}, zones: [cn]}
  - {match: {continent: AS}, zones: [apac]}
  - {match: {continent: OC}, zones: [apac]}
  - {match: {continent: SA}, zones: [sa, us]}
  - {match: {continent: NA}, zones: [us]}
default: [us]
unknown: refuse
";

/// The policy's expectation per country, by hand: the allowed zones, and where distance must
/// take the client when several relays are allowed (None: any allowed relay).
const EXPECT: &[(&str, &[&str], Option<&str>)] = &[
    // EU member states: the EU zone only.
    ("DE", &["eu"], Some("eu-fra")),
    ("FR", &["eu"], Some("eu-par")),
    ("IT", &["eu"], None),
    ("ES", &["eu"], Some("eu-par")),
    ("PL", &["eu"], Some("eu-fra")),
    ("NL", &["eu"], None),
    ("SE", &["eu"], None),
    ("IE", &["eu"], None),
    ("AT", &["eu"], Some("eu-fra")),
    ("PT", &["eu"], Some("eu-par")),
    ("FI", &["eu"], None),
    ("GR", &["eu"], None),
    ("RO", &["eu"], None),
    // EEA, not EU.
    ("NO", &["nordic", "eu"], Some("no-osl")),
    ("IS", &["nordic", "eu"], None),
    // Not the EU although continent EU.
    ("GB", &["uk", "eu"], Some("uk-lon")),
    ("CH", &["ch", "eu"], Some("ch-zrh")),
    ("RU", &["us"], None),
    ("UA", &["us"], None),
    ("RS", &["us"], None),
    // Asia (Turkey is AS in MaxMind's data), China apart.
    ("CN", &["cn"], Some("cn-sha")),
    ("JP", &["apac"], Some("ap-nrt")),
    ("KR", &["apac"], Some("ap-nrt")),
    ("SG", &["apac"], Some("ap-sin")),
    ("IN", &["apac"], Some("ap-sin")),
    ("ID", &["apac"], Some("ap-sin")),
    ("TR", &["apac"], None),
    ("IL", &["apac"], None),
    ("AE", &["apac"], None),
    // Oceania.
    ("AU", &["apac"], Some("ap-syd")),
    ("NZ", &["apac"], Some("ap-syd")),
    // The Americas.
    ("US", &["us"], None),
    ("CA", &["us"], None),
    ("MX", &["us"], None),
    ("BR", &["sa", "us"], Some("sa-gru")),
    ("AR", &["sa", "us"], Some("sa-gru")),
    ("CL", &["sa", "us"], Some("sa-gru")),
    ("CO", &["sa", "us"], None),
    // Africa: no rule, the default.
    ("ZA", &["us"], None),
    ("NG", &["us"], None),
    ("EG", &["us"], None),
    ("KE", &["us"], None),
];

const RELAYS: &[(&str, &str, (f64, f64))] = &[
    ("eu-fra", "eu", (50.11, 8.68)),
    ("eu-par", "eu", (48.86, 2.35)),
    ("no-osl", "nordic", (59.91, 10.75)),
    ("uk-lon", "uk", (51.51, -0.13)),
    ("ch-zrh", "ch", (47.37, 8.54)),
    ("cn-sha", "cn", (31.23, 121.47)),
    ("ap-sin", "apac", (1.35, 103.82)),
    ("ap-nrt", "apac", (35.68, 139.69)),
    ("ap-syd", "apac", (-33.87, 151.21)),
    ("sa-gru", "sa", (-23.55, -46.63)),
    ("us-iad", "us", (39.04, -77.49)),
    ("us-sfo", "us", (37.77, -122.42)),
];

fn relays() -> Vec<RelayView> {
    RELAYS
        .iter()
        .map(|(name, zone, coords)| RelayView {
            name: name.to_string(),
            zone: zone.to_string(),
            healthy: true,
            draining: false,
            load: 0,
            capacity: 1000,
            location: Location {
                coords: Some(*coords),
                ..Location::default()
            },
        })
        .collect()
}

fn policy(yaml: &str) -> Policy {
    Policy::new(serde_saphyr::from_str::<PolicyConfig>(yaml).expect("yaml")).expect("policy")
}

/// The middle address of a network.
fn middle(net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let size = 1u64 << (32 - n.prefix_len());
            IpAddr::from(std::net::Ipv4Addr::from(
                (u32::from(n.network()) as u64 + size / 2) as u32,
            ))
        }
        IpNet::V6(n) => {
            let bits = 128 - n.prefix_len() as u32;
            let half = if bits == 0 { 0 } else { 1u128 << (bits - 1) };
            IpAddr::from(std::net::Ipv6Addr::from(u128::from(n.network()) + half))
        }
    }
}

/// Up to `per_family` addresses per expected country and family, from networks spread over
/// the DB (every k-th matching network), confirmed by the independent DB.
fn sample(
    db: &GeoDb,
    independent: &GeoDb,
    per_family: usize,
) -> BTreeMap<(Code, bool), Vec<IpAddr>> {
    let wanted: Vec<Code> = EXPECT
        .iter()
        .map(|(c, _, _)| Code::parse(c).unwrap())
        .collect();
    let mut nets: BTreeMap<(Code, bool), Vec<IpNet>> = BTreeMap::new();
    for (net, loc) in db.networks() {
        if let Some(c) = loc.country.filter(|c| wanted.contains(c)) {
            nets.entry((c, net.addr().is_ipv6())).or_default().push(net);
        }
    }
    let mut out = BTreeMap::new();
    for (key, list) in nets {
        let stride = (list.len() / (per_family * 4)).max(1);
        let picked: Vec<IpAddr> = list
            .iter()
            .step_by(stride)
            .map(middle)
            .filter(|ip| independent.lookup_raw(*ip).country == Some(key.0))
            .take(per_family)
            .collect();
        out.insert(key, picked);
    }
    out
}

struct Row {
    country: &'static str,
    addresses: usize,
    wrong: usize,
    placed: BTreeMap<String, usize>,
}

/// Places every sampled address; one row per country.
fn place_all(
    db: &GeoDb,
    addresses: &BTreeMap<(Code, bool), Vec<IpAddr>>,
    policy: &Policy,
    fill: bool,
) -> Vec<Row> {
    let r = relays();
    let s = Scoring::default();
    EXPECT
        .iter()
        .map(|(country, allowed, nearest)| {
            let c = Code::parse(country).unwrap();
            let mut row = Row {
                country,
                addresses: 0,
                wrong: 0,
                placed: BTreeMap::new(),
            };
            for v6 in [false, true] {
                for ip in addresses.get(&(c, v6)).into_iter().flatten() {
                    let location = if fill {
                        db.lookup(*ip)
                    } else {
                        db.lookup_raw(*ip)
                    };
                    let facts = ClientFacts {
                        ip: *ip,
                        location,
                        call_id: None,
                    };
                    row.addresses += 1;
                    let relay = match place(&facts, &r, policy, &s) {
                        Ok(p) => r[p.primary].clone(),
                        Err(_) => {
                            row.wrong += 1;
                            *row.placed.entry("refused".into()).or_insert(0) += 1;
                            continue;
                        }
                    };
                    let ok = allowed.contains(&relay.zone.as_str())
                        && nearest.is_none_or(|n| n == relay.name);
                    row.wrong += usize::from(!ok);
                    *row.placed.entry(relay.name).or_insert(0) += 1;
                }
            }
            row
        })
        .collect()
}

fn print_table(title: &str, rows: &[Row]) -> (usize, usize) {
    println!("\n{title}\ncountry  addrs  expected zones     placed on                 wrong");
    let (mut n, mut wrong) = (0, 0);
    for (row, (_, allowed, nearest)) in rows.iter().zip(EXPECT) {
        let want = format!(
            "{}{}",
            allowed.join(","),
            nearest.map_or(String::new(), |x| format!(" ({x})"))
        );
        let got: Vec<String> = row.placed.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        println!(
            "{:<8} {:>5}  {:<18} {:<25} {}",
            row.country,
            row.addresses,
            want,
            got.join(" "),
            row.wrong
        );
        n += row.addresses;
        wrong += row.wrong;
    }
    println!("total {n} addresses, {wrong} placed against the policy");
    (n, wrong)
}

fn check_db(rel: &str, per_family: usize) {
    let db = open(rel);
    let independent = open(INDEPENDENT);
    let addresses = sample(&db, &independent, per_family);
    let p = policy(POLICY);
    let notes = p
        .check_db(&db.survey(8), db.origin())
        .expect("the policy can match this DB");
    println!("{rel}: {notes:?}");
    let rows = place_all(&db, &addresses, &p, true);
    let (n, wrong) = print_table(&format!("{rel}: policy above"), &rows);
    for row in &rows {
        assert!(
            row.addresses >= 2,
            "{}: only {} confirmed addresses",
            row.country,
            row.addresses
        );
    }
    let v6 = addresses
        .iter()
        .filter(|((_, v6), l)| *v6 && !l.is_empty())
        .count();
    assert!(v6 >= 30, "IPv6 addresses for {v6} countries only");
    assert!(n >= 150, "{n} addresses");
    assert_eq!(wrong, 0, "every placement matches the policy");
}

/// The flat schema has neither continent nor coordinates: without the country table every
/// continent rule misses and distance is unknown. With it, every placement matches.
#[test]
fn flat_country_db_places_every_sampled_client_by_the_policy() {
    check_db(FLAT, 3);
}

#[test]
fn geoip2_country_db_places_every_sampled_client_by_the_policy() {
    check_db(GEOIP2, 3);
}

/// What the issue saw, on the same data: the continent-style policy of the example config
/// with the DB's facts alone (what the allocator used before the country table) puts most
/// European and Asian callers in the US; with the table, none.
#[test]
fn continent_rules_on_the_flat_db_before_and_after_the_country_table() {
    let db = open(FLAT);
    let addresses = sample(&db, &open(INDEPENDENT), 2);
    let continent_policy = policy(
        "zones: {eu: {relays: [eu-fra, eu-par, no-osl, uk-lon, ch-zrh]}, apac: {relays: [ap-sin, ap-nrt, ap-syd, cn-sha]}, us: {relays: [us-iad, us-sfo, sa-gru]}}\n\
         rules:\n  - {match: {continent: EU}, zones: [eu]}\n  - {match: {continent: AS}, zones: [apac]}\n  \
         - {match: {continent: OC}, zones: [apac]}\n  - {match: {country: US}, zones: [us]}\n  - {match: {country: CA}, zones: [us]}\n\
         default: [us]\n",
    );
    let zone_of = |name: &str| RELAYS.iter().find(|r| r.0 == name).unwrap().1;
    let misplaced = |fill: bool| {
        let mut wrong = 0;
        let mut total = 0;
        for ((c, _), ips) in &addresses {
            let continent = countries::country(*c).unwrap().continent;
            let want = match continent.as_str() {
                "EU" => "eu",
                "AS" | "OC" => "apac",
                _ => "us",
            };
            for ip in ips {
                let loc = if fill {
                    db.lookup(*ip)
                } else {
                    db.lookup_raw(*ip)
                };
                let zones = match continent_policy.decide(*ip, &loc) {
                    Verdict::Zones { zones, .. } => zones,
                    Verdict::Refuse => &[][..],
                };
                total += 1;
                let r = relays();
                let p = place(
                    &ClientFacts {
                        ip: *ip,
                        location: loc,
                        call_id: None,
                    },
                    &r,
                    &continent_policy,
                    &Scoring::default(),
                )
                .unwrap();
                wrong += usize::from(
                    zone_of(&r[p.primary].name) != want || !zones.contains(&want.to_string()),
                );
            }
        }
        (wrong, total)
    };
    let (before, total) = misplaced(false);
    let (after, _) = misplaced(true);
    println!(
        "continent rules, flat DB: {before}/{total} misplaced on the DB's facts alone, {after}/{total} with the country table"
    );
    assert!(
        before * 2 > total,
        "the DB alone misplaces most callers ({before}/{total}): the test can fail"
    );
    assert_eq!(after, 0);
}

/// The embedded table agrees with MaxMind's continents for every country MaxMind's DB has, and
/// its representative points lie near where the DB puts the country's addresses.
#[test]
fn the_country_table_agrees_with_maxmind() {
    let country_db = open(GEOIP2);
    let mut continents: BTreeMap<Code, Code> = BTreeMap::new();
    for (_, loc) in country_db.networks() {
        if let (Some(c), Some(k)) = (loc.country, loc.continent) {
            let prev = continents.insert(c, k);
            assert!(prev.is_none_or(|p| p == k), "{c}: two continents in the DB");
        }
    }
    assert!(continents.len() > 240, "{} countries", continents.len());
    for (c, k) in &continents {
        let t = countries::country(*c).unwrap_or_else(|| panic!("{c} is not in the table"));
        assert_eq!(t.continent, *k, "{c}: table {} vs MaxMind {k}", t.continent);
    }
    // Coordinates: the median of a sample of City records per country.
    let city = open(GEOIP2_CITY);
    let mut points: BTreeMap<Code, Vec<(f64, f64)>> = BTreeMap::new();
    for (_, loc) in city.networks().step_by(13) {
        if let (Some(c), Some(p)) = (loc.country, loc.coords) {
            points.entry(c).or_default().push(p);
        }
    }
    let mut checked = 0;
    for (c, mut p) in points.into_iter().filter(|(_, p)| p.len() >= 30) {
        let n = p.len();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        let lat = p[n / 2].0;
        p.sort_by(|a, b| a.1.total_cmp(&b.1));
        let lon = p[n / 2].1;
        let t = countries::country(c).unwrap();
        let km = veil_geo::policy::great_circle_km(t.point, (lat, lon));
        assert!(
            km < 1500.0,
            "{c}: the table's point is {km:.0} km from the DB's median ({lat}, {lon})"
        );
        checked += 1;
    }
    println!(
        "{} continents and {checked} representative points checked",
        continents.len()
    );
    assert!(
        checked > 100,
        "{checked} countries with enough City records"
    );
}

/// US states are not countries: a subdivision rule works with a City DB (GeoIP2 schema, which
/// has ISO 3166-2 subdivisions) and is refused at start, naming the rule, with country-only DBs
/// where it could never match.
#[test]
fn subdivision_rules_need_a_city_db_and_say_so() {
    let p = policy(
        "zones: {ca: {relays: [us-sfo]}, us: {relays: [us-iad]}}\n\
         rules:\n  - {match: {subdivision: US-CA}, zones: [ca]}\n  - {match: {country: US}, zones: [us]}\n\
         default: [us]\n",
    );
    let city = open(GEOIP2_CITY);
    p.check_db(&city.survey(8), city.origin())
        .expect("a City DB has subdivisions");
    for rel in [FLAT, GEOIP2] {
        let db = open(rel);
        let e = p
            .check_db(&db.survey(8), db.origin())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("rules[0] (subdivision US-CA) can never match with"),
            "{rel}: {e}"
        );
    }
    // Californian and other US addresses from the City DB's own networks.
    let (mut ca, mut other) = (Vec::new(), Vec::new());
    for (net, loc) in city.networks().take(400_000) {
        match (
            loc.country.map(|c| c.to_string()),
            loc.subdivision.map(|s| s.to_string()),
        ) {
            (Some(c), Some(s)) if c == "US" && s == "US-CA" && ca.len() < 20 => {
                ca.push(middle(&net))
            }
            (Some(c), Some(s)) if c == "US" && s != "US-CA" && other.len() < 20 => {
                other.push(middle(&net))
            }
            _ => {}
        }
        if ca.len() == 20 && other.len() == 20 {
            break;
        }
    }
    assert!(
        ca.len() >= 5 && other.len() >= 5,
        "{} / {}",
        ca.len(),
        other.len()
    );
    for ip in &ca {
        assert_eq!(p.decide(*ip, &city.lookup(*ip)).zones(), ["ca"], "{ip}");
    }
    for ip in &other {
        assert_eq!(p.decide(*ip, &city.lookup(*ip)).zones(), ["us"], "{ip}");
    }
}
