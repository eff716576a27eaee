//! veil's geolocation and data-residency policy.
//!
//! * [`GeoDb`] looks client addresses up in a MaxMind DB file: the GeoIP2/GeoLite2 schema
//!   (`country.iso_code`, `continent.code`, `location`) and the flat schema of the
//!   ip-location-db files (`country_code`, optional `latitude`/`longitude`). [`ReloadingGeo`]
//!   swaps in a changed file without dropping lookups.
//! * [`demo_db`] writes a small demonstration DB that maps loopback sub-ranges to countries, so
//!   `veil dev` works with no download and no licence key. It knows nothing about real addresses.
//! * [`policy`] holds zones and residency rules (which zones may carry which clients), validated at
//!   load, and the distance estimate between a client and a relay.
//!
//! What this crate must never do: log or keep the addresses it is asked about.

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

/// What a lookup knows about an address.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Location {
    pub country: Option<Code>,
    pub continent: Option<Code>,
    /// Latitude and longitude in degrees, when the DB has them (City DBs).
    pub coords: Option<(f64, f64)>,
}

/// Why a DB cannot be used.
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

    /// Looks an address up. Unknown addresses and undecodable records give an empty location.
    pub fn lookup(&self, ip: IpAddr) -> Location {
        let Ok(result) = self.reader.lookup(ip) else {
            return Location::default();
        };
        let Ok(Some(r)) = result.decode::<Record>() else {
            return Location::default();
        };
        let country = r
            .country
            .as_ref()
            .and_then(|c| c.iso_code)
            .or(r.country_code)
            .and_then(Code::parse);
        let continent = r
            .continent
            .as_ref()
            .and_then(|c| c.code)
            .and_then(Code::parse);
        let coords = match (r.location, r.latitude, r.longitude) {
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
        Location {
            country,
            continent,
            coords,
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
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if stamp == *self.stamp.read().unwrap_or_else(|e| e.into_inner()) {
            return Ok(false);
        }
        let db = GeoDb::open(path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(db);
        *self.stamp.write().unwrap_or_else(|e| e.into_inner()) = stamp;
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
        let nl = db.lookup(ip("203.0.113.9"));
        assert_eq!(
            (nl.country, nl.continent, nl.coords),
            (Code::parse("NL"), None, None)
        );
        let se = db.lookup(ip("2001:db8::5"));
        assert_eq!(
            (se.country, se.coords),
            (Code::parse("SE"), Some((59.3, 18.1)))
        );
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
