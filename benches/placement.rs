//! Cost of one placement decision (geo lookup excluded) for 3 and 200 relays, with and without a
//! call id. Run: `cargo bench -p veil-allocator --bench placement`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use veil_allocator::placement::{ClientFacts, RelayView, Scoring, place};
use veil_geo::policy::{Policy, PolicyConfig, Zone};
use veil_geo::{Code, Location};

fn setup(n: usize) -> (Policy, Vec<RelayView>) {
    let mut zones = std::collections::BTreeMap::new();
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
        zones.insert(z.to_string(), Zone { relays: names });
    }
    let cfg = PolicyConfig {
        zones,
        rules: vec![veil_geo::policy::Rule {
            matches: veil_geo::policy::Match {
                continent: Some("EU".into()),
                ..Default::default()
            },
            zones: vec!["eu".into()],
        }],
        default: vec!["us".into(), "eu".into()],
    };
    (Policy::new(cfg).unwrap(), relays)
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
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
