//! An embedded ISO 3166-1 table: for every country code, its continent (in the seven-code scheme
//! MaxMind's databases use: AF, AN, AS, EU, NA, OC, SA) and a representative point.
//!
//! It fills what a database record lacks: the flat `country_code` schema of the ip-location-db
//! files has neither continent nor coordinates, so without this table a continent rule never
//! matches and "nearest relay" knows no distance. The database's own data wins where it has it.
//!
//! The representative point is the capital, except for a few large countries whose people (and
//! so their addresses) sit far from it, where it is a point near the population centre
//! (US, CA, BR, AU, CN, IN, RU). It is a distance estimate for relay choice, accurate to a few
//! hundred kilometres, not a location of anyone.
//!
//! Continents follow the GeoNames convention MaxMind uses (Russia and Cyprus in Europe; Turkey,
//! Armenia, Azerbaijan and Georgia in Asia; Central America and the Caribbean in North America).
//! `XK` (Kosovo) is included because MaxMind uses it. The test `continents_agree_with_maxmind`
//! checks every entry against a real GeoLite2 database where one is installed (tests/geodata).
//!
//! Last checked: 2026-12-01.

use crate::Code;

/// One country of the table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Country {
    /// ISO 3166-1 alpha-2 code.
    pub code: Code,
    /// MaxMind's continent code (AF AN AS EU NA OC SA).
    pub continent: Code,
    /// Representative point, (latitude, longitude) in degrees.
    pub point: (f64, f64),
    /// English short name.
    pub name: &'static str,
}

/// The seven continent codes, with names.
pub const CONTINENTS: [(&str, &str); 7] = [
    ("AF", "Africa"),
    ("AN", "Antarctica"),
    ("AS", "Asia"),
    ("EU", "Europe"),
    ("NA", "North America"),
    ("OC", "Oceania"),
    ("SA", "South America"),
];

/// Whether `c` is one of the seven continent codes.
pub fn is_continent(c: Code) -> bool {
    CONTINENTS.iter().any(|(k, _)| k.as_bytes() == c.0)
}

// code continent latitude longitude name — sorted by code.
const TABLE: &str = "\
AD EU 42.51 1.52 Andorra
AE AS 24.45 54.38 United Arab Emirates
AF AS 34.53 69.17 Afghanistan
AG NA 17.12 -61.85 Antigua and Barbuda
AI NA 18.22 -63.05 Anguilla
AL EU 41.33 19.82 Albania
AM AS 40.18 44.51 Armenia
AO AF -8.84 13.23 Angola
AQ AN -77.85 166.67 Antarctica
AR SA -34.60 -58.38 Argentina
AS OC -14.28 -170.70 American Samoa
AT EU 48.21 16.37 Austria
AU OC -33.87 151.21 Australia
AW NA 12.52 -70.03 Aruba
AX EU 60.10 19.94 Aland Islands
AZ AS 40.41 49.87 Azerbaijan
BA EU 43.86 18.41 Bosnia and Herzegovina
BB NA 13.10 -59.62 Barbados
BD AS 23.81 90.41 Bangladesh
BE EU 50.85 4.35 Belgium
BF AF 12.37 -1.52 Burkina Faso
BG EU 42.70 23.32 Bulgaria
BH AS 26.23 50.59 Bahrain
BI AF -3.38 29.36 Burundi
BJ AF 6.50 2.60 Benin
BL NA 17.90 -62.85 Saint Barthelemy
BM NA 32.29 -64.78 Bermuda
BN AS 4.90 114.94 Brunei
BO SA -16.50 -68.15 Bolivia
BQ NA 12.15 -68.27 Bonaire, Sint Eustatius and Saba
BR SA -23.55 -46.63 Brazil
BS NA 25.05 -77.35 Bahamas
BT AS 27.47 89.64 Bhutan
BV AN -54.42 3.36 Bouvet Island
BW AF -24.65 25.91 Botswana
BY EU 53.90 27.57 Belarus
BZ NA 17.25 -88.77 Belize
CA NA 43.65 -79.38 Canada
CC AS -12.19 96.83 Cocos (Keeling) Islands
CD AF -4.32 15.31 DR Congo
CF AF 4.39 18.56 Central African Republic
CG AF -4.27 15.28 Congo
CH EU 46.95 7.45 Switzerland
CI AF 5.36 -4.01 Cote d'Ivoire
CK OC -21.21 -159.78 Cook Islands
CL SA -33.45 -70.67 Chile
CM AF 3.85 11.50 Cameroon
CN AS 31.23 121.47 China
CO SA 4.71 -74.07 Colombia
CR NA 9.93 -84.09 Costa Rica
CU NA 23.11 -82.37 Cuba
CV AF 14.93 -23.51 Cabo Verde
CW NA 12.11 -68.93 Curacao
CX OC -10.42 105.68 Christmas Island
CY EU 35.17 33.36 Cyprus
CZ EU 50.08 14.44 Czechia
DE EU 52.52 13.40 Germany
DJ AF 11.59 43.15 Djibouti
DK EU 55.68 12.57 Denmark
DM NA 15.30 -61.39 Dominica
DO NA 18.49 -69.93 Dominican Republic
DZ AF 36.75 3.06 Algeria
EC SA -0.18 -78.47 Ecuador
EE EU 59.44 24.75 Estonia
EG AF 30.04 31.24 Egypt
EH AF 27.15 -13.20 Western Sahara
ER AF 15.32 38.93 Eritrea
ES EU 40.42 -3.70 Spain
ET AF 9.03 38.74 Ethiopia
FI EU 60.17 24.94 Finland
FJ OC -18.14 178.44 Fiji
FK SA -51.70 -57.85 Falkland Islands
FM OC 6.92 158.16 Micronesia
FO EU 62.01 -6.77 Faroe Islands
FR EU 48.86 2.35 France
GA AF 0.39 9.45 Gabon
GB EU 51.51 -0.13 United Kingdom
GD NA 12.06 -61.75 Grenada
GE AS 41.72 44.79 Georgia
GF SA 4.92 -52.33 French Guiana
GG EU 49.45 -2.54 Guernsey
GH AF 5.60 -0.19 Ghana
GI EU 36.14 -5.35 Gibraltar
GL NA 64.18 -51.72 Greenland
GM AF 13.45 -16.58 Gambia
GN AF 9.64 -13.58 Guinea
GP NA 16.24 -61.53 Guadeloupe
GQ AF 3.75 8.78 Equatorial Guinea
GR EU 37.98 23.73 Greece
GS AN -54.28 -36.51 South Georgia and the South Sandwich Islands
GT NA 14.63 -90.51 Guatemala
GU OC 13.48 144.75 Guam
GW AF 11.86 -15.60 Guinea-Bissau
GY SA 6.80 -58.16 Guyana
HK AS 22.32 114.17 Hong Kong
HM AN -53.10 73.52 Heard Island and McDonald Islands
HN NA 14.07 -87.19 Honduras
HR EU 45.81 15.98 Croatia
HT NA 18.54 -72.34 Haiti
HU EU 47.50 19.04 Hungary
ID AS -6.21 106.85 Indonesia
IE EU 53.35 -6.26 Ireland
IL AS 32.09 34.78 Israel
IM EU 54.15 -4.48 Isle of Man
IN AS 21.15 79.09 India
IO AS -7.31 72.41 British Indian Ocean Territory
IQ AS 33.31 44.37 Iraq
IR AS 35.69 51.39 Iran
IS EU 64.15 -21.94 Iceland
IT EU 41.90 12.50 Italy
JE EU 49.19 -2.11 Jersey
JM NA 18.02 -76.80 Jamaica
JO AS 31.95 35.93 Jordan
JP AS 35.68 139.69 Japan
KE AF -1.29 36.82 Kenya
KG AS 42.87 74.59 Kyrgyzstan
KH AS 11.56 104.92 Cambodia
KI OC 1.45 173.03 Kiribati
KM AF -11.70 43.26 Comoros
KN NA 17.30 -62.73 Saint Kitts and Nevis
KP AS 39.04 125.76 North Korea
KR AS 37.57 126.98 South Korea
KW AS 29.38 47.99 Kuwait
KY NA 19.29 -81.37 Cayman Islands
KZ AS 43.24 76.89 Kazakhstan
LA AS 17.97 102.63 Laos
LB AS 33.89 35.50 Lebanon
LC NA 14.01 -60.99 Saint Lucia
LI EU 47.14 9.52 Liechtenstein
LK AS 6.93 79.86 Sri Lanka
LR AF 6.30 -10.80 Liberia
LS AF -29.31 27.48 Lesotho
LT EU 54.69 25.28 Lithuania
LU EU 49.61 6.13 Luxembourg
LV EU 56.95 24.11 Latvia
LY AF 32.89 13.19 Libya
MA AF 33.97 -6.85 Morocco
MC EU 43.74 7.42 Monaco
MD EU 47.01 28.86 Moldova
ME EU 42.44 19.26 Montenegro
MF NA 18.07 -63.08 Saint Martin
MG AF -18.88 47.51 Madagascar
MH OC 7.09 171.38 Marshall Islands
MK EU 42.00 21.43 North Macedonia
ML AF 12.64 -8.00 Mali
MM AS 16.87 96.20 Myanmar
MN AS 47.89 106.91 Mongolia
MO AS 22.20 113.54 Macao
MP OC 15.18 145.75 Northern Mariana Islands
MQ NA 14.62 -61.06 Martinique
MR AF 18.09 -15.98 Mauritania
MS NA 16.79 -62.21 Montserrat
MT EU 35.90 14.51 Malta
MU AF -20.16 57.50 Mauritius
MV AS 4.18 73.51 Maldives
MW AF -13.96 33.79 Malawi
MX NA 19.43 -99.13 Mexico
MY AS 3.14 101.69 Malaysia
MZ AF -25.97 32.57 Mozambique
NA AF -22.56 17.08 Namibia
NC OC -22.27 166.46 New Caledonia
NE AF 13.51 2.11 Niger
NF OC -29.05 167.96 Norfolk Island
NG AF 6.52 3.38 Nigeria
NI NA 12.11 -86.24 Nicaragua
NL EU 52.37 4.90 Netherlands
NO EU 59.91 10.75 Norway
NP AS 27.72 85.32 Nepal
NR OC -0.55 166.92 Nauru
NU OC -19.06 -169.92 Niue
NZ OC -36.85 174.76 New Zealand
OM AS 23.59 58.41 Oman
PA NA 8.98 -79.52 Panama
PE SA -12.05 -77.04 Peru
PF OC -17.54 -149.57 French Polynesia
PG OC -9.44 147.18 Papua New Guinea
PH AS 14.60 120.98 Philippines
PK AS 24.86 67.01 Pakistan
PL EU 52.23 21.01 Poland
PM NA 46.78 -56.18 Saint Pierre and Miquelon
PN OC -25.07 -130.10 Pitcairn
PR NA 18.47 -66.11 Puerto Rico
PS AS 31.90 35.20 Palestine
PT EU 38.72 -9.14 Portugal
PW OC 7.50 134.62 Palau
PY SA -25.26 -57.58 Paraguay
QA AS 25.29 51.53 Qatar
RE AF -20.88 55.45 Reunion
RO EU 44.43 26.10 Romania
RS EU 44.79 20.45 Serbia
RU EU 55.76 37.62 Russia
RW AF -1.95 30.06 Rwanda
SA AS 24.71 46.68 Saudi Arabia
SB OC -9.43 159.95 Solomon Islands
SC AF -4.62 55.45 Seychelles
SD AF 15.50 32.56 Sudan
SE EU 59.33 18.07 Sweden
SG AS 1.35 103.82 Singapore
SH AF -15.93 -5.72 Saint Helena
SI EU 46.06 14.51 Slovenia
SJ EU 78.22 15.65 Svalbard and Jan Mayen
SK EU 48.15 17.11 Slovakia
SL AF 8.48 -13.23 Sierra Leone
SM EU 43.94 12.45 San Marino
SN AF 14.72 -17.47 Senegal
SO AF 2.05 45.32 Somalia
SR SA 5.85 -55.20 Suriname
SS AF 4.85 31.58 South Sudan
ST AF 0.34 6.73 Sao Tome and Principe
SV NA 13.69 -89.22 El Salvador
SX NA 18.04 -63.05 Sint Maarten
SY AS 33.51 36.29 Syria
SZ AF -26.31 31.14 Eswatini
TC NA 21.46 -71.14 Turks and Caicos Islands
TD AF 12.13 15.06 Chad
TF AN -49.35 70.22 French Southern Territories
TG AF 6.13 1.22 Togo
TH AS 13.76 100.50 Thailand
TJ AS 38.56 68.79 Tajikistan
TK OC -9.20 -171.85 Tokelau
TL OC -8.56 125.57 Timor-Leste
TM AS 37.96 58.33 Turkmenistan
TN AF 36.81 10.18 Tunisia
TO OC -21.14 -175.20 Tonga
TR AS 41.01 28.98 Turkey
TT NA 10.65 -61.52 Trinidad and Tobago
TV OC -8.52 179.20 Tuvalu
TW AS 25.03 121.57 Taiwan
TZ AF -6.79 39.21 Tanzania
UA EU 50.45 30.52 Ukraine
UG AF 0.35 32.58 Uganda
UM OC 19.28 166.65 United States Minor Outlying Islands
US NA 38.50 -92.00 United States
UY SA -34.90 -56.16 Uruguay
UZ AS 41.30 69.24 Uzbekistan
VA EU 41.90 12.45 Vatican City
VC NA 13.16 -61.23 Saint Vincent and the Grenadines
VE SA 10.48 -66.90 Venezuela
VG NA 18.43 -64.62 British Virgin Islands
VI NA 18.34 -64.93 U.S. Virgin Islands
VN AS 21.03 105.85 Vietnam
VU OC -17.73 168.32 Vanuatu
WF OC -13.28 -176.17 Wallis and Futuna
WS OC -13.83 -171.76 Samoa
XK EU 42.66 21.17 Kosovo
YE AS 15.37 44.19 Yemen
YT AF -12.78 45.23 Mayotte
ZA AF -26.20 28.05 South Africa
ZM AF -15.39 28.32 Zambia
ZW AF -17.83 31.05 Zimbabwe
";

fn parse_line(line: &'static str) -> Option<Country> {
    let mut it = line.splitn(5, ' ');
    let code = Code::parse(it.next()?)?;
    let continent = Code::parse(it.next()?)?;
    let lat = it.next()?.parse().ok()?;
    let lon = it.next()?.parse().ok()?;
    let name = it.next()?;
    Some(Country {
        code,
        continent,
        point: (lat, lon),
        name,
    })
}

fn table() -> &'static [Country] {
    static PARSED: std::sync::OnceLock<Vec<Country>> = std::sync::OnceLock::new();
    PARSED.get_or_init(|| TABLE.lines().filter_map(parse_line).collect())
}

/// The country with ISO 3166-1 alpha-2 code `code`, if it is one.
pub fn country(code: Code) -> Option<&'static Country> {
    let t = table();
    t.binary_search_by(|c| c.code.cmp(&code))
        .ok()
        .map(|i| &t[i])
}

/// Every country of the table, sorted by code.
pub fn all() -> &'static [Country] {
    table()
}

/// A hint for a common wrong code, for error messages (`UK` is not ISO 3166-1: GB is).
pub fn hint(code: &str) -> Option<&'static str> {
    match code.to_ascii_uppercase().as_str() {
        "UK" => Some("the United Kingdom is GB"),
        "EL" => Some("Greece is GR (EL is the EU's own abbreviation)"),
        "EU" => Some("EU is not a country: use `group: EU` for the member states"),
        "AP" => Some("AP is not a country"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_parses_is_sorted_and_valid() {
        let lines = TABLE.lines().count();
        let t = all();
        assert_eq!(t.len(), lines, "a line failed to parse");
        assert_eq!(t.len(), 250, "249 ISO 3166-1 codes and XK");
        for w in t.windows(2) {
            assert!(
                w[0].code < w[1].code,
                "{:?} before {:?}",
                w[0].code,
                w[1].code
            );
        }
        for c in t {
            assert!(is_continent(c.continent), "{}: {}", c.code, c.continent);
            assert!(
                c.point.0.abs() <= 90.0 && c.point.1.abs() <= 180.0,
                "{}",
                c.code
            );
            assert!(!c.name.is_empty());
        }
    }

    #[test]
    fn lookups_and_hints() {
        let de = country(Code::parse("de").unwrap()).unwrap();
        assert_eq!((de.continent.as_str(), de.name), ("EU", "Germany"));
        assert_eq!(
            country(Code::parse("TR").unwrap())
                .unwrap()
                .continent
                .as_str(),
            "AS"
        );
        assert!(country(Code::parse("UK").unwrap()).is_none());
        assert!(hint("uk").unwrap().contains("GB"));
        assert!(is_continent(Code::parse("OC").unwrap()));
        assert!(!is_continent(Code::parse("DE").unwrap()));
    }
}
