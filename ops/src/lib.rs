//! What every veil daemon shares to be operated: the configuration error type, Prometheus text
//! format helpers with the standard `process_*` metrics, and the relay's `/status` document (the
//! contract between relays and the allocator).
//!
//! What this crate must never do: open a socket, run an async runtime, or hold state. It reads
//! `/proc` for the process metrics and nothing else.
#![warn(missing_docs, unreachable_pub)]

pub mod prometheus;
pub mod time;

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not parse.
    #[error("{path}: {message}")]
    Yaml {
        /// The file.
        path: String,
        /// The parser's message (with the line).
        message: String,
    },
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A setting has a value it may not have.
    #[error("invalid `{field}`: {message}")]
    Invalid {
        /// The setting, as written in the file.
        field: &'static str,
        /// What is wrong and what would be right.
        message: String,
    },
}

impl ConfigError {
    /// A YAML error of the configuration `origin` (a file, or `--set PATH`): where it is (line
    /// and column) and what, never the source text. The parser's snippet of the lines around
    /// the fault is left out, and so is every value it quotes from the input (see
    /// [`without_values`]): a config holds secrets, and this message goes to logs.
    pub fn yaml(origin: impl Into<String>, err: &serde_saphyr::Error) -> Self {
        let text = err.without_snippet().to_string();
        let text = text.strip_prefix("error: ").unwrap_or(&text);
        ConfigError::Yaml {
            path: origin.into(),
            message: without_values(text),
        }
    }

    /// A message of another parser (a `--set` value checked as JSON) about `origin`, without
    /// the values it quotes.
    pub fn parse(origin: impl Into<String>, message: &str) -> Self {
        ConfigError::Yaml {
            path: origin.into(),
            message: without_values(message),
        }
    }
}

/// A parser's message with what it quotes of the input left out: every `"…"` and `` `…` ``
/// span but the setting names of `missing field` and `duplicate field`, which are the schema's.
/// Even an unknown key is left out (a secret pasted one line off becomes a key): for an unknown
/// field or variant the message suggests the nearest name the parser expected instead, and the
/// line and column point at it.
pub fn without_values(message: &str) -> String {
    const KEEP_AFTER: [&str; 2] = ["missing field ", "duplicate field "];
    const SUGGEST_AFTER: [&str; 2] = ["unknown field ", "unknown variant "];
    const HIDDEN: &str = "(value not shown)";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(['"', '`']) {
        let quote = rest.as_bytes()[at] as char;
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let Some(len) = from[1..].find(quote) else {
            // An unpaired quote: whatever follows may be input.
            out.push_str(HIDDEN);
            return out;
        };
        let (span, inner) = (&from[..len + 2], &from[1..len + 1]);
        if quote == '`' && KEEP_AFTER.iter().any(|k| out.ends_with(k)) {
            out.push_str(span);
        } else if quote == '`' && SUGGEST_AFTER.iter().any(|k| out.ends_with(k)) {
            match nearest(inner, expected_names(message)) {
                Some(name) => {
                    out.push_str("(not shown; did you mean `");
                    out.push_str(name);
                    out.push_str("`?)");
                }
                None => out.push_str(HIDDEN),
            }
        } else {
            out.push_str(HIDDEN);
        }
        rest = &from[len + 2..];
    }
    out.push_str(rest);
    out
}

/// The names after `expected one of ` (bare or in backticks), up to ` at line`.
fn expected_names(message: &str) -> impl Iterator<Item = &str> {
    let list = message
        .split_once("expected one of ")
        .map_or("", |(_, l)| l.split(" at line").next().unwrap_or(""));
    list.split(", ")
        .map(|n| n.trim().trim_matches('`'))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// The candidate nearest to `typed` by edit distance, if it is a likely typo of it (at most 2
/// edits, and fewer than half its length).
fn nearest<'a>(typed: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let max = 2.min(typed.chars().count().saturating_sub(1) / 2);
    candidates
        .map(|c| (edit_distance(typed, c), c))
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != *cb)).min(up + 1).min(row[j] + 1);
            diag = up;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_left_out_and_field_names_kept() {
        assert_eq!(
            without_values(r#"invalid type: string "hunter2", expected u32"#),
            "invalid type: string (value not shown), expected u32"
        );
        assert_eq!(
            without_values("unknown variant `hunter2`, expected one of text, json"),
            "unknown variant (value not shown), expected one of text, json"
        );
        assert_eq!(
            without_values("unknown variant `jsonn`, expected one of text, json at line 2"),
            "unknown variant (not shown; did you mean `json`?), expected one of text, json at line 2"
        );
        assert_eq!(
            without_values("unknown field `secerts`, expected one of `secrets`, `a`"),
            "unknown field (not shown; did you mean `secrets`?), expected one of (value not \
             shown), (value not shown)"
        );
        assert_eq!(
            without_values("missing field `api_keys`"),
            "missing field `api_keys`"
        );
        assert_eq!(without_values("open \"hunter2"), "open (value not shown)");
        assert_eq!(without_values("no quotes: line 3"), "no quotes: line 3");
    }

    #[test]
    fn a_yaml_error_has_its_line_and_column_and_no_source_text() {
        let text = "auth:\n  secrets: [hunter2-inline]\n  max_session: hunter3\n";
        let err =
            serde_saphyr::from_str::<std::collections::BTreeMap<String, Inner>>(text).unwrap_err();
        let e = ConfigError::yaml("relay.yaml", &err).to_string();
        assert_eq!(e, "relay.yaml: invalid u32 at line 3, column 16");
        assert!(!e.contains("hunter"), "{e}");
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        secrets: Vec<String>,
        max_session: u32,
    }
}

/// What `/status` reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// The residency zone the node serves.
    pub zone: Option<String>,
    /// Whether it takes new allocations.
    pub ready: bool,
    /// Whether it is draining for shutdown.
    pub draining: bool,
    /// Allocations held now.
    pub allocations: u32,
    /// Allocations it may hold.
    pub capacity: u32,
    /// TURN URIs clients use to reach this node (`turn:IP:PORT?transport=udp`).
    pub uris: Vec<String>,
    /// Shaping profiles this node admits only over TLS: the allocator hands their credentials
    /// out with `turns:` URIs only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_only_profiles: Vec<String>,
    /// The node's links to other relays (the mesh), when it has any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<MeshLink>,
    /// The TURN realm (REALM) the node signs in: a native client that sends its first request
    /// already authenticated needs it with the issued nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

/// One link of a relay's mesh, as `/status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MeshLink {
    /// The linked relay's name.
    pub name: String,
    /// `up` or `down`.
    pub state: String,
    /// The zone it announced (empty until it first linked).
    pub remote_zone: String,
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u64,
    /// Cells per second the link sends now.
    pub cell_rate: u32,
    /// Why it last went down, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
