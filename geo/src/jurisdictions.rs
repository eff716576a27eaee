//! Built-in jurisdiction groups for residency rules (`{match: {group: EU}, ...}`).
//!
//! Data-residency law is about jurisdictions, not continents: MaxMind's continent `EU` holds
//! Russia, Ukraine, Serbia, the United Kingdom and Switzerland, none of them in the European
//! Union. These groups are lists of ISO 3166-1 codes as geolocation databases report them, kept
//! as data with the date they were last checked. Do not trust a DB's own EU flag either: the
//! GeoLite2 build of 2019-12 still marks GB `is_in_european_union`.
//!
//! Membership by ISO code needs care where a territory has a code of its own:
//! * In the EU (and so in the EEA) although the DB gives them their own code: Åland (AX, part of
//!   Finland), and France's outermost regions French Guiana (GF), Guadeloupe (GP), Martinique
//!   (MQ), Réunion (RE), Mayotte (YT) and Saint-Martin (MF). The Canary Islands, Azores, Madeira,
//!   Ceuta and Melilla have no code of their own and are part of ES and PT.
//! * Not in the EU although tied to a member state: the Faroe Islands (FO) and Greenland (GL)
//!   (Denmark), the overseas countries and territories (BL, PM, NC, PF, WF, TF; AW, CW, SX, BQ),
//!   Svalbard and Jan Mayen (SJ; outside the EEA agreement too).
//!
//! Operators define their own groups in the policy (`groups: {dach: [DE, AT, CH]}`), e.g. for the
//! UK (GB, and GG, JE, IM if the crown dependencies are to be treated alike).

/// When the lists below were last checked against the treaties in force.
pub const LAST_CHECKED: &str = "2026-12-01";

/// The European Union's 27 member states (since 2020-02-01, when the United Kingdom left).
pub const EU_MEMBER_STATES: [&str; 27] = [
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IT",
    "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
];

/// Parts of member states that geolocation databases report under codes of their own.
pub const EU_TERRITORIES_WITH_OWN_CODES: [&str; 7] = ["AX", "GF", "GP", "MF", "MQ", "RE", "YT"];

/// The EEA adds Iceland, Liechtenstein and Norway to the EU.
pub const EEA_NON_EU: [&str; 3] = ["IS", "LI", "NO"];

/// The European Free Trade Association.
pub const EFTA: [&str; 4] = ["CH", "IS", "LI", "NO"];

/// The built-in groups by name: `EU` (member states and their territories with own codes), `EEA`
/// (the EU plus IS, LI, NO) and `EFTA`.
pub fn builtin(name: &str) -> Option<Vec<&'static str>> {
    let eu = || {
        EU_MEMBER_STATES
            .iter()
            .chain(EU_TERRITORIES_WITH_OWN_CODES.iter())
            .copied()
    };
    match name {
        "EU" => Some(eu().collect()),
        "EEA" => Some(eu().chain(EEA_NON_EU.iter().copied()).collect()),
        "EFTA" => Some(EFTA.to_vec()),
        _ => None,
    }
}

/// The names of the built-in groups.
pub const BUILTIN: [&str; 3] = ["EU", "EEA", "EFTA"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Code, countries};

    #[test]
    fn groups_hold_valid_codes_and_the_known_edges() {
        for name in BUILTIN {
            let g = builtin(name).unwrap();
            for c in &g {
                assert!(
                    countries::country(Code::parse(c).unwrap()).is_some(),
                    "{name}: {c}"
                );
            }
            let mut sorted = g.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), g.len(), "{name} has a duplicate");
        }
        let eu = builtin("EU").unwrap();
        let eea = builtin("EEA").unwrap();
        assert_eq!(eu.len(), 34);
        assert!(
            eu.iter().all(|c| eea.contains(c)),
            "the EEA contains the EU"
        );
        for out in ["GB", "CH", "NO", "RU", "UA", "RS", "TR", "FO", "GL", "SJ"] {
            assert!(!eu.contains(&out), "{out} is not in the EU");
        }
        assert!(eea.contains(&"NO") && !eea.contains(&"CH"));
        assert!(builtin("EFTA").unwrap().contains(&"CH"));
        assert!(builtin("eu").is_none(), "names are exact");
    }
}
