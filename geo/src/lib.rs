//! veil's geolocation and data-residency policy.
//!
//! * [`GeoDb`] looks client addresses up in a MaxMind DB file: the GeoIP2/GeoLite2 schema
//!   (`country.iso_code`, `continent.code`, `location`) and the flat schema of the
//!   ip-location-db files (`country_code`, optional `latitude`/`longitude`). [`ReloadingGeo`]
//!   swaps in a changed file without dropping lookups.
//! * [`demo_db`] writes a small demonstration DB that maps loopback sub-ranges to countries, so
//!   `veil dev` works with no download and no licence key. It knows nothing about real addresses.
//!   A record's missing continent and coordinates are filled from the embedded ISO 3166 table
//!   ([`countries`]); the DB's own data wins where it has it. [`GeoDb::survey`] tells what a DB
//!   carries, so a policy that cannot match with it is refused at start.
//! * [`policy`] holds zones and residency rules (which zones may carry which clients: by CIDR,
//!   subdivision, country, jurisdiction group or continent), validated at load, and the distance
//!   estimate between a client and a relay. [`jurisdictions`] holds the built-in groups (EU, EEA,
//!   EFTA) as dated data.
//!
//! What this crate must never do: log or keep the addresses it is asked about.
#![warn(missing_docs, unreachable_pub)]

pub mod countries;
pub mod jurisdictions;
pub mod policy;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use maxminddb::Reader;
use serde::Deserialize;

/// A two-letter code: ISO 3166-1 alpha-2 country or MaxMind continent code (EU, NA, AS...).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub [u8; 2]);

impl Code {
    /// Parses two ASCII letters, upper-casing them.
    pub fn parse(s: &str) -> Option<Code> {
        let b = s.as_bytes();
        (b.len() == 2 && b.iter().all(u8::is_ascii_alphabetic))
            .then(|| Code([b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()]))
    }
    /// The code as text (`DE`).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// An ISO 3166-2 subdivision: the country and its 1–3 character subdivision code (`US-CA`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subdivision {
    /// The country it belongs to.
    pub country: Code,
    code: [u8; 3],
    len: u8,
}

impl Subdivision {
    /// Parses `CC-XXX` (1–3 letters or digits after the dash), upper-casing it.
    pub fn parse(s: &str) -> Option<Subdivision> {
        let (c, sub) = s.split_once('-')?;
        Self::new(Code::parse(c)?, sub)
    }

    /// A subdivision of `country` with code `sub` (`CA` for California).
    pub fn new(country: Code, sub: &str) -> Option<Subdivision> {
        let b = sub.as_bytes();
        if b.is_empty() || b.len() > 3 || !b.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        let mut code = [0u8; 3];
        for (d, s) in code.iter_mut().zip(b) {
            *d = s.to_ascii_uppercase();
        }
        Some(Subdivision {
            country,
            code,
            len: b.len() as u8,
        })
    }
}

impl fmt::Display for Subdivision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sub = std::str::from_utf8(&self.code[..self.len as usize]).unwrap_or("?");
        write!(f, "{}-{sub}", self.country)
    }
}

impl fmt::Debug for Subdivision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// What a lookup knows about an address.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Location {
    /// ISO 3166-1 country (the registered one, not the represented one).
    pub country: Option<Code>,
    /// MaxMind continent code.
    pub continent: Option<Code>,
    /// Latitude and longitude in degrees: the DB's (City DBs), else the country's representative
    /// point from the embedded table.
    pub coords: Option<(f64, f64)>,
    /// The first-level subdivision, when the DB has one (GeoIP2 City: `subdivisions[0]`).
    pub subdivision: Option<Subdivision>,
    /// Which facts came from the embedded table rather than the DB.
    pub filled: Filled,
}

/// Facts of a [`Location`] filled from the embedded ISO 3166 table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filled {
    /// The continent came from the table.
    pub continent: bool,
    /// The coordinates are the country's representative point.
    pub coords: bool,
}

impl Location {
    /// Fills a missing continent and coordinates from the country, when the country is known to
    /// the embedded table. What the DB gave stays.
    pub fn fill_from_table(mut self) -> Location {
        let Some(c) = self.country.and_then(countries::country) else {
            return self;
        };
        if self.continent.is_none() {
            self.continent = Some(c.continent);
            self.filled.continent = true;
        }
        if self.coords.is_none() {
            self.coords = Some(c.point);
            self.filled.coords = true;
        }
        self
    }
}

/// What a sample of a DB's records carries: which facts the DB itself has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Survey {
    /// Records looked at.
    pub sampled: u32,
    /// Of them, with a country.
    pub with_country: u32,
    /// With a continent.
    pub with_continent: u32,
    /// With coordinates.
    pub with_coords: u32,
    /// With a first-level subdivision.
    pub with_subdivision: u32,
}

/// Why a DB cannot be used (each variant's message says what it is).
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a MaxMind DB: {message}")]
    Format { path: String, message: String },
    #[error("cannot build the demo DB: {0}")]
    Demo(String),
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Sub<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Loc {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

/// The fields we read, from either schema; everything else is skipped.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<Named<'a>>,
    #[serde(borrow, default)]
    continent: Option<Named<'a>>,
    #[serde(default)]
    location: Option<Loc>,
    #[serde(borrow, default)]
    subdivisions: Option<Vec<Sub<'a>>>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

/// An open MaxMind DB.
pub struct GeoDb {
    reader: Reader<Vec<u8>>,
    origin: String,
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoDb")
            .field("origin", &self.origin)
            .field("type", &self.database_type())
            .finish()
    }
}

impl GeoDb {
    /// Reads a DB file into memory. (Memory-mapping would save the copy but is unsafe if the
    /// file is rewritten in place; a Country DB is a few MB, a City DB tens.)
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let bytes = std::fs::read(path).map_err(|source| GeoError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(bytes, &path.display().to_string())
    }

    /// A DB from bytes; `origin` names it in errors and logs.
    pub fn from_bytes(bytes: Vec<u8>, origin: &str) -> Result<GeoDb, GeoError> {
        let reader = Reader::from_source(bytes).map_err(|e| GeoError::Format {
            path: origin.into(),
            message: e.to_string(),
        })?;
        Ok(GeoDb {
            reader,
            origin: origin.into(),
        })
    }

    /// The embedded demonstration DB (see [`demo_db`]).
    pub fn demo() -> Result<GeoDb, GeoError> {
        Self::from_bytes(demo_db()?, "embedded demo DB (loopback ranges only)")
    }

    /// The DB's `database_type` metadata.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// Where the DB came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Looks an address up: the DB's facts, with a missing continent and coordinates filled from
    /// the embedded country table. Unknown addresses and undecodable records give an empty
    /// location (nothing is filled without a country).
    pub fn lookup(&self, ip: IpAddr) -> Location {
        self.lookup_raw(ip).fill_from_table()
    }

    /// What the DB itself says about an address, nothing filled.
    pub fn lookup_raw(&self, ip: IpAddr) -> Location {
        let Ok(result) = self.reader.lookup(ip) else {
            return Location::default();
        };
        let Ok(Some(r)) = result.decode::<Record>() else {
            return Location::default();
        };
        r.location()
    }

    /// Every network of the DB with what the DB itself says of it (nothing filled), in address
    /// order; networks without data and undecodable records are skipped. For tests and tools:
    /// a Country DB has about a million networks.
    pub fn networks(&self) -> impl Iterator<Item = (ipnet::IpNet, Location)> + '_ {
        self.reader
            .networks(Default::default())
            .into_iter()
            .flatten()
            .filter_map(|item| {
                let l = item.ok()?;
                let net = l.network().ok()?;
                let net = ipnet::IpNet::new(net.ip(), net.prefix()).ok()?;
                let r = l.decode::<Record>().ok()??;
                Some((net, r.location()))
            })
    }

    /// Samples the DB's records — the first `per_block` networks of every IPv4 /8 and of every
    /// IPv6 /12 in 2000::/3 — and counts which facts they carry. Cheap (a few thousand decodes),
    /// and enough to tell a schema: a DB that has a field has it on most records.
    pub fn survey(&self, per_block: usize) -> Survey {
        let mut s = Survey::default();
        let mut blocks: Vec<String> = (0..=255u32).map(|a| format!("{a}.0.0.0/8")).collect();
        if self.reader.metadata().ip_version == 6 {
            blocks.extend(
                (0x200..0x400u32)
                    .step_by(1)
                    .map(|b| format!("{:x}::/12", b << 4)),
            );
        }
        for b in blocks {
            let Ok(net) = b.parse() else { continue };
            let Ok(iter) = self.reader.within(net, Default::default()) else {
                continue;
            };
            for item in iter.take(per_block) {
                let Ok(Some(r)) = item.and_then(|l| l.decode::<Record>()) else {
                    continue;
                };
                let loc = r.location();
                s.sampled += 1;
                s.with_country += u32::from(loc.country.is_some());
                s.with_continent += u32::from(loc.continent.is_some());
                s.with_coords += u32::from(loc.coords.is_some());
                s.with_subdivision += u32::from(loc.subdivision.is_some());
            }
        }
        s
    }
}

impl Record<'_> {
    fn location(self) -> Location {
        let country = self
            .country
            .as_ref()
            .and_then(|c| c.iso_code)
            .or(self.country_code)
            .and_then(Code::parse);
        let continent = self
            .continent
            .as_ref()
            .and_then(|c| c.code)
            .and_then(Code::parse);
        let coords = match (self.location, self.latitude, self.longitude) {
            (
                Some(Loc {
                    latitude: Some(a),
                    longitude: Some(o),
                }),
                _,
                _,
            )
            | (_, Some(a), Some(o)) => Some((a, o)),
            _ => None,
        }
        .filter(|(a, o)| a.is_finite() && o.is_finite() && a.abs() <= 90.0 && o.abs() <= 180.0);
        let subdivision = country.zip(
            self.subdivisions
                .as_ref()
                .and_then(|v| v.first())
                .and_then(|s| s.iso_code),
        );
        Location {
            country,
            continent,
            coords,
            subdivision: subdivision.and_then(|(c, s)| Subdivision::new(c, s)),
            filled: Filled::default(),
        }
    }
}

/// The loopback ranges of the demo DB: (range, country, continent, latitude, longitude).
pub const DEMO_RANGES: &[(&str, &str, &str, f64, f64)] = &[
    ("127.0.1.0/24", "DE", "EU", 50.11, 8.68),
    ("127.0.2.0/24", "US", "NA", 39.04, -77.49),
    ("127.0.3.0/24", "JP", "AS", 35.68, 139.69),
    ("127.0.4.0/24", "BR", "SA", -23.55, -46.63),
    ("127.0.5.0/24", "AU", "OC", -33.87, 151.21),
    ("127.0.6.0/24", "ZA", "AF", -26.20, 28.05),
    ("127.0.7.0/24", "FR", "EU", 48.86, 2.35),
];

/// Writes the demonstration DB: GeoIP2-schema records for [`DEMO_RANGES`] only. A local client
/// that binds a 127.0.x.y source address is geolocated to that country, so residency rules can
/// be tried without a real DB. It knows no real address.
pub fn demo_db() -> Result<Vec<u8>, GeoError> {
    use mmdb_writer::Value;
    let mut w = mmdb_writer::Writer::new("veil-demo-loopback");
    for (net, country, continent, lat, lon) in DEMO_RANGES {
        let net: ipnet::IpNet = net
            .parse()
            .map_err(|e| GeoError::Demo(format!("{net}: {e}")))?;
        let rec = Value::map([
            ("country", Value::map([("iso_code", Value::from(*country))])),
            ("continent", Value::map([("code", Value::from(*continent))])),
            (
                "location",
                Value::map([
                    ("latitude", Value::Double(*lat)),
                    ("longitude", Value::Double(*lon)),
                ]),
            ),
        ]);
        w.insert_value(net, rec)
            .map_err(|e| GeoError::Demo(e.to_string()))?;
    }
    w.to_bytes().map_err(|e| GeoError::Demo(e.to_string()))
}

/// A DB that follows its file: [`ReloadingGeo::reload_if_changed`] swaps in a new version when the
/// file's modification time changes; lookups in flight keep the version they started with.
pub struct ReloadingGeo {
    current: RwLock<Arc<GeoDb>>,
    path: Option<PathBuf>,
    stamp: RwLock<Option<SystemTime>>,
}

impl ReloadingGeo {
    /// Follows `path`.
    pub fn open(path: &Path) -> Result<Self, GeoError> {
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(ReloadingGeo {
            current: RwLock::new(Arc::new(GeoDb::open(path)?)),
            path: Some(path.to_path_buf()),
            stamp: RwLock::new(stamp),
        })
    }

    /// A fixed DB that never reloads (the demo DB, tests).
    pub fn fixed(db: GeoDb) -> Self {
        ReloadingGeo {
            current: RwLock::new(Arc::new(db)),
            path: None,
            stamp: RwLock::new(None),
        }
    }

    /// The current DB.
    pub fn get(&self) -> Arc<GeoDb> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads if the file changed. Ok(true) if a new version is in use; a broken new file keeps
    /// the old version and returns the error.
    pub fn reload_if_changed(&self) -> Result<bool, GeoError> {
        self.reload_if_changed_checked(|_| Ok(()))
    }

    /// As [`ReloadingGeo::reload_if_changed`], but a new version is taken only if `check`
    /// accepts it (e.g. the residency policy can still match with it); a refused one keeps the
    /// old version and is retried when the file changes again.
    pub fn reload_if_changed_checked(
        &self,
        check: impl FnOnce(&GeoDb) -> Result<(), String>,
    ) -> Result<bool, GeoError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if stamp == *self.stamp.read().unwrap_or_else(|e| e.into_inner()) {
            return Ok(false);
        }
        // Whatever happens, this version of the file has been looked at.
        *self.stamp.write().unwrap_or_else(|e| e.into_inner()) = stamp;
        let db = GeoDb::open(path)?;
        check(&db).map_err(|message| GeoError::Format {
            path: path.display().to_string(),
            message,
        })?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(db);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmdb_writer::Value;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn demo_db_geolocates_loopback_ranges_and_nothing_else() {
        let db = GeoDb::demo().unwrap();
        assert_eq!(db.database_type(), "veil-demo-loopback");
        let de = db.lookup(ip("127.0.1.77"));
        assert_eq!(de.country, Code::parse("de"));
        assert_eq!(de.continent, Code::parse("EU"));
        assert_eq!(de.coords, Some((50.11, 8.68)));
        assert_eq!(db.lookup(ip("127.0.3.1")).country, Code::parse("JP"));
        for unknown in ["127.0.0.1", "8.8.8.8", "::1", "2a00:1450::1"] {
            assert_eq!(db.lookup(ip(unknown)), Location::default(), "{unknown}");
        }
    }

    /// A DB in the flat ip-location-db schema: `country_code`, optional coordinates.
    #[test]
    fn flat_schema_is_read() {
        let mut w = mmdb_writer::Writer::new("ip-location-db-test");
        w.insert_value(
            "203.0.113.0/24".parse::<ipnet::IpNet>().unwrap(),
            Value::map([("country_code", Value::from("nl"))]),
        )
        .unwrap();
        w.insert_value(
            "2001:db8::/32".parse::<ipnet::IpNet>().unwrap(),
            Value::map([
                ("country_code", Value::from("SE")),
                ("latitude", Value::Double(59.3)),
                ("longitude", Value::Double(18.1)),
            ]),
        )
        .unwrap();
        let db = GeoDb::from_bytes(w.to_bytes().unwrap(), "test").unwrap();
        let nl = db.lookup_raw(ip("203.0.113.9"));
        assert_eq!(
            (nl.country, nl.continent, nl.coords),
            (Code::parse("NL"), None, None),
            "the DB itself has neither continent nor coordinates"
        );
        let nl = db.lookup(ip("203.0.113.9"));
        assert_eq!(nl.continent, Code::parse("EU"), "filled from the table");
        assert_eq!(
            nl.coords,
            Some((52.37, 4.90)),
            "the country's representative point"
        );
        assert_eq!(
            nl.filled,
            Filled {
                continent: true,
                coords: true
            }
        );
        let se = db.lookup(ip("2001:db8::5"));
        assert_eq!(
            (se.country, se.coords, se.filled.coords),
            (Code::parse("SE"), Some((59.3, 18.1)), false),
            "the DB's own coordinates win"
        );
        let s = db.survey(10);
        assert_eq!(
            (s.sampled, s.with_country, s.with_continent, s.with_coords),
            (2, 2, 0, 1)
        );
    }

    /// GeoIP2 City records: the first subdivision, and nothing filled where the DB has it all.
    #[test]
    fn subdivisions_are_read_and_unknown_stays_unknown() {
        let mut w = mmdb_writer::Writer::new("GeoIP2-City-test");
        w.insert_value(
            "198.51.100.0/24".parse::<ipnet::IpNet>().unwrap(),
            Value::map([
                ("country", Value::map([("iso_code", Value::from("US"))])),
                ("continent", Value::map([("code", Value::from("NA"))])),
                (
                    "subdivisions",
                    Value::Array(vec![Value::map([("iso_code", Value::from("ca"))])]),
                ),
                (
                    "location",
                    Value::map([
                        ("latitude", Value::Double(37.77)),
                        ("longitude", Value::Double(-122.42)),
                    ]),
                ),
            ]),
        )
        .unwrap();
        w.insert_value(
            "192.0.2.0/24".parse::<ipnet::IpNet>().unwrap(),
            Value::map([("country_code", Value::from("ZZ"))]),
        )
        .unwrap();
        let db = GeoDb::from_bytes(w.to_bytes().unwrap(), "test").unwrap();
        let sf = db.lookup(ip("198.51.100.7"));
        assert_eq!(sf.subdivision, Subdivision::parse("US-CA"));
        assert_eq!(sf.subdivision.unwrap().to_string(), "US-CA");
        assert_eq!(sf.filled, Filled::default());
        let zz = db.lookup(ip("192.0.2.1"));
        assert_eq!(
            (zz.continent, zz.coords),
            (None, None),
            "a code the table does not know fills nothing"
        );
        assert_eq!(db.lookup(ip("10.0.0.1")), Location::default());
        assert_eq!(db.survey(5).with_subdivision, 1);
    }

    #[test]
    fn garbage_is_a_clear_error_not_a_panic() {
        let e = GeoDb::from_bytes(vec![0u8; 64], "junk.mmdb")
            .unwrap_err()
            .to_string();
        assert!(e.contains("junk.mmdb"), "{e}");
        assert!(GeoDb::open(Path::new("/nonexistent/geo.mmdb")).is_err());
    }

    #[test]
    fn reload_follows_the_file_and_survives_a_broken_one() {
        let dir = std::env::temp_dir().join(format!("veil-geo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.mmdb");
        std::fs::write(&path, demo_db().unwrap()).unwrap();
        let geo = ReloadingGeo::open(&path).unwrap();
        let held = geo.get();
        assert!(!geo.reload_if_changed().unwrap());
        let mut w = mmdb_writer::Writer::new("second");
        w.insert_value(
            "127.0.1.0/24".parse::<ipnet::IpNet>().unwrap(),
            Value::map([("country_code", Value::from("AT"))]),
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
        let t = SystemTime::now() + std::time::Duration::from_secs(1);
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(t).unwrap();
        assert!(geo.reload_if_changed().unwrap());
        assert_eq!(geo.get().lookup(ip("127.0.1.1")).country, Code::parse("AT"));
        assert_eq!(
            held.lookup(ip("127.0.1.1")).country,
            Code::parse("DE"),
            "a lookup in flight keeps its version"
        );
        std::fs::write(&path, b"broken").unwrap();
        f.set_modified(t + std::time::Duration::from_secs(1))
            .unwrap();
        assert!(geo.reload_if_changed().is_err());
        assert_eq!(
            geo.get().lookup(ip("127.0.1.1")).country,
            Code::parse("AT"),
            "the old version stays"
        );
        assert!(
            !geo.reload_if_changed().unwrap(),
            "a broken file is tried once"
        );
        std::fs::write(&path, demo_db().unwrap()).unwrap();
        f.set_modified(t + std::time::Duration::from_secs(2))
            .unwrap();
        let e = geo
            .reload_if_changed_checked(|_| Err("the policy cannot match".into()))
            .unwrap_err();
        assert!(e.to_string().contains("the policy cannot match"), "{e}");
        assert_eq!(
            geo.get().lookup(ip("127.0.1.1")).country,
            Code::parse("AT"),
            "a refused version is not taken"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
