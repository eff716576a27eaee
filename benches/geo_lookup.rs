//! Cost of a geolocation lookup and of the residency decision that follows it.
//! Run: `cargo bench -p veil-geo --bench geo_lookup`.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use veil_geo::GeoDb;
use veil_geo::policy::{Policy, PolicyConfig};

fn bench(c: &mut Criterion) {
    let db = GeoDb::demo().expect("demo DB");
    let hit: IpAddr = "127.0.3.9".parse().unwrap();
    let miss: IpAddr = "198.51.100.7".parse().unwrap();
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    c.bench_function("geo/lookup_hit", |b| {
        b.iter(|| black_box(db.lookup(black_box(hit))))
    });
    c.bench_function("geo/lookup_miss_v4", |b| {
        b.iter(|| black_box(db.lookup(black_box(miss))))
    });
    c.bench_function("geo/lookup_miss_v6", |b| {
        b.iter(|| black_box(db.lookup(black_box(v6))))
    });
    let cfg: PolicyConfig = serde_saphyr::from_str(
        "zones: {eu: {relays: [a]}, us: {relays: [b]}, jp: {relays: [c]}}\n\
         rules: [{match: {continent: EU}, zones: [eu]}, {match: {country: JP}, zones: [jp]}, {match: {cidr: 10.0.0.0/8}, zones: [us]}]\n\
         default: [us]\n",
    )
    .unwrap();
    let policy = Policy::new(cfg).unwrap();
    c.bench_function("geo/lookup_and_allowed_zones", |b| {
        b.iter(|| {
            let loc = db.lookup(black_box(hit));
            black_box(policy.allowed_zones(hit, &loc).len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
