//! What every veil daemon shares to be operated: the configuration error type, Prometheus text
//! format helpers with the standard `process_*` metrics, and the relay's `/status` document (the
//! contract between relays and the allocator).
//!
//! What this crate must never do: open a socket, run an async runtime, or hold state. It reads
//! `/proc` for the process metrics and nothing else.
#![warn(missing_docs, unreachable_pub)]

pub mod prometheus;

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
}
