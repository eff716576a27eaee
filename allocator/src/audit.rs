//! The cross-border record: how many clients of each country were placed in each zone, and how
//! many calls had parties placed in different zones, per hour. Counts only: never an address,
//! a user or a call id.
//!
//! Two views of the same events:
//! * running totals, exported as Prometheus counters (`veil_allocator_placements_by_country_total`,
//!   `veil_allocator_cross_zone_calls_total`), so they add up across allocator replicas and outlive
//!   restarts in the operator's Prometheus, for any period it keeps;
//! * hourly buckets kept for `retention_hours` in this process, read by `GET /v1/audit` and
//!   `veil audit` as JSON or CSV.
//!
//! Label and bucket cardinality is bounded: a country label is an ISO 3166-1 code of the embedded
//! table or `unknown` (251 values), zones come from the policy, and a zone pair is stored once in
//! sorted order.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;
use veil_geo::{Location, countries};

/// One counter family in the Prometheus text format: `series` are (labels without braces, or
/// empty for none; value).
pub(crate) fn counter<L: std::fmt::Display>(
    o: &mut String,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, v) in series {
        let labels = labels.to_string();
        if labels.is_empty() {
            let _ = writeln!(o, "{name} {v}");
        } else {
            let _ = writeln!(o, "{name}{{{labels}}} {v}");
        }
    }
}

/// The label for a client's country: an ISO code the table knows, else `unknown`.
pub fn country_label(loc: &Location) -> String {
    loc.country
        .filter(|c| countries::country(*c).is_some())
        .map_or_else(|| "unknown".to_string(), |c| c.to_string())
}

/// The record.
#[derive(Debug, Default)]
pub struct AuditLog {
    retention_hours: u64,
    placements: BTreeMap<(u64, String, String), u64>,
    cross_zone: BTreeMap<(u64, String, String), u64>,
    placement_totals: BTreeMap<(String, String), u64>,
    cross_zone_totals: BTreeMap<(String, String), u64>,
}

/// One row of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlacementRow {
    /// Start of the hour, unix seconds.
    pub hour: u64,
    /// ISO country code of the client (`unknown` when the DB has none).
    pub country: String,
    /// The zone it was placed in.
    pub zone: String,
    /// Placements.
    pub count: u64,
}

/// Calls whose parties were placed in two zones, per hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrossZoneRow {
    /// Start of the hour, unix seconds.
    pub hour: u64,
    /// One zone (the two in name order).
    pub zone_a: String,
    /// The other zone.
    pub zone_b: String,
    /// Calls.
    pub count: u64,
}

/// A report for a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// First hour covered, unix seconds.
    pub from: u64,
    /// End of the period, unix seconds.
    pub to: u64,
    /// How many hours of buckets are kept.
    pub retention_hours: u64,
    /// Placements per hour, country and zone.
    pub placements: Vec<PlacementRow>,
    /// Cross-zone calls per hour and zone pair.
    pub cross_zone_calls: Vec<CrossZoneRow>,
}

fn hour(now: u64) -> u64 {
    now / 3600 * 3600
}

fn ordered(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl AuditLog {
    /// A record keeping hourly buckets for `retention_hours` (at least 1).
    pub fn new(retention_hours: u64) -> AuditLog {
        AuditLog {
            retention_hours: retention_hours.max(1),
            ..AuditLog::default()
        }
    }

    fn prune(&mut self, now: u64) {
        let oldest = hour(now).saturating_sub((self.retention_hours - 1) * 3600);
        if self
            .placements
            .first_key_value()
            .is_some_and(|(k, _)| k.0 < oldest)
        {
            self.placements.retain(|k, _| k.0 >= oldest);
        }
        if self
            .cross_zone
            .first_key_value()
            .is_some_and(|(k, _)| k.0 < oldest)
        {
            self.cross_zone.retain(|k, _| k.0 >= oldest);
        }
    }

    /// A client of `country` (a [`country_label`]) placed in `zone` at `now` (unix seconds).
    pub fn placed(&mut self, now: u64, country: &str, zone: &str) {
        self.prune(now);
        *self
            .placements
            .entry((hour(now), country.to_string(), zone.to_string()))
            .or_insert(0) += 1;
        *self
            .placement_totals
            .entry((country.to_string(), zone.to_string()))
            .or_insert(0) += 1;
    }

    /// A call whose parties were placed in zones `a` and `b` (different).
    pub fn cross_zone_call(&mut self, now: u64, a: &str, b: &str) {
        self.prune(now);
        let (a, b) = ordered(a, b);
        *self
            .cross_zone
            .entry((hour(now), a.clone(), b.clone()))
            .or_insert(0) += 1;
        *self.cross_zone_totals.entry((a, b)).or_insert(0) += 1;
    }

    /// The hourly rows whose hour overlaps `[from, to]`.
    pub fn report(&self, from: u64, to: u64) -> Report {
        let within = |h: u64| h + 3600 > from && h <= to;
        Report {
            from,
            to,
            retention_hours: self.retention_hours,
            placements: self
                .placements
                .iter()
                .filter(|(k, _)| within(k.0))
                .map(|((h, c, z), n)| PlacementRow {
                    hour: *h,
                    country: c.clone(),
                    zone: z.clone(),
                    count: *n,
                })
                .collect(),
            cross_zone_calls: self
                .cross_zone
                .iter()
                .filter(|(k, _)| within(k.0))
                .map(|((h, a, b), n)| CrossZoneRow {
                    hour: *h,
                    zone_a: a.clone(),
                    zone_b: b.clone(),
                    count: *n,
                })
                .collect(),
        }
    }

    /// The running totals in the Prometheus text format.
    pub fn render(&self, o: &mut String) {
        counter(
            o,
            "veil_allocator_placements_by_country_total",
            "Clients placed, by client country (ISO 3166-1, or unknown) and zone.",
            self.placement_totals
                .iter()
                .map(|((c, z), n)| (format!("country=\"{c}\",zone=\"{z}\""), *n)),
        );
        counter(
            o,
            "veil_allocator_cross_zone_calls_total",
            "Calls whose parties were placed in different zones, by zone pair (sorted).",
            self.cross_zone_totals
                .iter()
                .map(|((a, b), n)| (format!("zone_a=\"{a}\",zone_b=\"{b}\""), *n)),
        );
    }
}

pub use veil_ops::time::rfc3339;

impl Report {
    /// The report as CSV: `hour_start,kind,country,zone,other_zone,count`, one row per hourly
    /// bucket; `kind` is `placement` (country, zone) or `cross_zone_call` (zone, other_zone).
    pub fn to_csv(&self) -> String {
        let mut o = String::from("hour_start,kind,country,zone,other_zone,count\n");
        for r in &self.placements {
            let _ = writeln!(
                o,
                "{},placement,{},{},,{}",
                rfc3339(r.hour),
                r.country,
                r.zone,
                r.count
            );
        }
        for r in &self.cross_zone_calls {
            let _ = writeln!(
                o,
                "{},cross_zone_call,,{},{},{}",
                rfc3339(r.hour),
                r.zone_a,
                r.zone_b,
                r.count
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_geo::Code;

    #[test]
    fn hourly_buckets_totals_and_retention() {
        let mut a = AuditLog::new(2);
        let t0 = 1_764_600_000; // 2025-12-01T14:40:00Z
        a.placed(t0, "DE", "eu");
        a.placed(t0 + 10, "DE", "eu");
        a.placed(t0 + 3600, "US", "us");
        a.cross_zone_call(t0 + 3600, "us", "eu");
        a.cross_zone_call(t0 + 3601, "eu", "us");
        let r = a.report(0, u64::MAX);
        assert_eq!(r.placements.len(), 2);
        assert_eq!(r.placements[0].count, 2);
        assert_eq!(r.placements[0].hour, t0 / 3600 * 3600);
        assert_eq!(
            r.cross_zone_calls,
            vec![CrossZoneRow {
                hour: (t0 + 3600) / 3600 * 3600,
                zone_a: "eu".into(),
                zone_b: "us".into(),
                count: 2
            }],
            "a pair is one row whatever the order"
        );
        // A period: only the first hour.
        let r = a.report(t0, t0 + 60);
        assert_eq!(r.placements.len(), 1);
        assert!(r.cross_zone_calls.is_empty());
        // Two hours later the first bucket is gone; totals stay.
        a.placed(t0 + 2 * 3600, "FR", "eu");
        let r = a.report(0, u64::MAX);
        assert!(r.placements.iter().all(|p| p.country != "DE"), "{r:?}");
        let mut m = String::new();
        a.render(&mut m);
        assert!(
            m.contains(
                "veil_allocator_placements_by_country_total{country=\"DE\",zone=\"eu\"} 2\n"
            ),
            "{m}"
        );
        assert!(
            m.contains("veil_allocator_cross_zone_calls_total{zone_a=\"eu\",zone_b=\"us\"} 2\n"),
            "{m}"
        );
    }

    #[test]
    fn csv_and_labels() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_083_200), "2026-12-01T00:00:00Z");
        let mut a = AuditLog::new(24);
        a.placed(1_796_083_200, "DE", "eu");
        a.cross_zone_call(1_796_083_200, "us", "eu");
        assert_eq!(
            a.report(0, u64::MAX).to_csv(),
            "hour_start,kind,country,zone,other_zone,count\n\
             2026-12-01T00:00:00Z,placement,DE,eu,,1\n\
             2026-12-01T00:00:00Z,cross_zone_call,,eu,us,1\n"
        );
        let loc = |c: &str| Location {
            country: Code::parse(c),
            ..Location::default()
        };
        assert_eq!(country_label(&loc("de")), "DE");
        assert_eq!(
            country_label(&loc("ZZ")),
            "unknown",
            "not a country: no new label"
        );
        assert_eq!(country_label(&Location::default()), "unknown");
    }
}
