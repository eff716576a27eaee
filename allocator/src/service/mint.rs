//! Minting: the credential, join token and ICE answer handed to one placed party.

use std::net::IpAddr;
use std::path::PathBuf;

use axum::http::StatusCode;
use serde::Serialize;
use veil_geo::Location;

use crate::audit::country_label;
use crate::join::{self, JoinClaims};
use veil_proto::auth;

use super::App;
use super::api::ApiError;
use super::config::{ConfigError, MIN_TTL};
use super::registry::Tracked;
use crate::placement::Placement;

/// The first secret of the first file that holds one.
pub(super) fn signing_secret(files: &[PathBuf]) -> Result<Vec<u8>, ConfigError> {
    for p in files {
        let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
            path: p.display().to_string(),
            source,
        })?;
        if let Some(s) = auth::parse_secrets(&text).into_iter().next() {
            return Ok(s);
        }
    }
    Err(ConfigError::Invalid {
        field: "secret_files",
        message: "no secret found".into(),
    })
}

impl App {
    /// Mints the credential and the answer for one placed party, and records the placement.
    pub(super) fn answer(
        &self,
        relays: &[Tracked],
        placement: Placement,
        location: &Location,
        mint: Mint,
        call: &str,
        now: u64,
    ) -> Result<IceAnswer, ApiError> {
        let Mint {
            ttl,
            user,
            profile,
            network,
        } = mint;
        let primary = &relays[placement.primary];
        let zone = primary.view.zone.clone();
        let ttl = ttl
            .unwrap_or(self.cfg.ttl)
            .clamp(MIN_TTL.min(self.cfg.ttl), self.cfg.ttl);
        let user = match user {
            Some(u)
                if !u.is_empty()
                    && u.len() <= 64
                    && u.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                u.to_string()
            }
            Some(_) => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "user: 1-64 of [A-Za-z0-9_-]".into(),
                ));
            }
            None => match network {
                Some((ip, _)) => {
                    let secret = self.secret.read().unwrap_or_else(|e| e.into_inner());
                    auth::network_id(&secret, now / 86_400, ip)
                }
                None => random_id(),
            },
        };
        let quota = network.map(|(_, q)| q.to_string());
        let mut claims = vec![("z", zone.as_str())];
        if let Some(p) = profile {
            claims.push(("s", p));
        }
        if let Some(q) = &quota {
            claims.push(("q", q));
        }
        let username = auth::username_with_claims(now + ttl, &user, &claims);
        let secret = self
            .secret
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (username, password) = auth::mint_username(&secret, username);
        let join_token = join::issue(
            &secret,
            &JoinClaims {
                exp: now + ttl,
                call: call.to_string(),
                zone: zone.clone(),
                relay: primary.view.name.clone(),
            },
        );
        // A profile the relay admits only over TLS: its `turns:` URIs only (the others would
        // draw 403, or worse, a client's fallback onto a leg the profile cannot protect).
        let uris_of = |t: &Tracked| -> Vec<String> {
            let tls_only = profile.is_some_and(|p| t.tls_only.iter().any(|x| x == p));
            t.uris
                .iter()
                .filter(|u| !tls_only || u.starts_with("turns:"))
                .cloned()
                .collect()
        };
        let mut urls = uris_of(primary);
        if let Some(b) = placement.backup
            && relays[b].view.zone == zone
        {
            // A backup in the same zone accepts the same credential.
            urls.extend(uris_of(&relays[b]));
        }
        if urls.is_empty() {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_tls",
                "the profile requires TLS and the placed relay offers no turns: URI".into(),
            ));
        }
        self.audit.lock().unwrap_or_else(|e| e.into_inner()).placed(
            now,
            &country_label(location),
            &zone,
        );
        let mut m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        *m.placed.entry(zone.clone()).or_insert(0) += 1;
        m.minted += 1;
        drop(m);
        let native_auth = primary.realm.clone().map(|realm| NativeAuth {
            nonce: auth::credential_nonce(&secret, &username),
            realm,
        });
        Ok(IceAnswer {
            ice_servers: vec![IceServer {
                urls,
                username,
                credential: password,
            }],
            native_auth,
            ice_transport_policy: "relay",
            expires_at: now + ttl,
            zone,
            join_token,
            cross_zone: None,
        })
    }
}

pub(super) fn random_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a credential is minted with besides its zone.
#[derive(Clone, Copy)]
pub(super) struct Mint<'a> {
    pub(super) ttl: Option<u64>,
    pub(super) user: Option<&'a str>,
    pub(super) profile: Option<&'a str>,
    /// A browser key's caller: the user id is its network's ([`auth::network_id`]) and the
    /// credential claims this quota for it.
    pub(super) network: Option<(IpAddr, u32)>,
}

/// The answer to `POST /v1/calls`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallAnswer {
    /// The parties were placed in different zones (no relay allowed for both was available).
    pub cross_zone: bool,
    /// The zone of each party.
    pub zones: [String; 2],
    /// Each party's ICE configuration.
    pub parties: Vec<IceAnswer>,
}

/// One `RTCIceServer`.
#[derive(Debug, Serialize)]
pub struct IceServer {
    /// `turn:`/`turns:` URIs.
    pub urls: Vec<String>,
    /// The REST username.
    pub username: String,
    /// Its password.
    pub credential: String,
}

/// What a native client needs to send a signed first request (RFC 8489 §9.2.3 with the
/// realm and nonce known in advance).
#[derive(Debug, Serialize)]
pub struct NativeAuth {
    /// REALM.
    pub realm: String,
    /// NONCE ([`auth::credential_nonce`]).
    pub nonce: String,
}

/// The answer to `POST /v1/ice-servers`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IceAnswer {
    /// For `RTCPeerConnection`'s `iceServers`.
    pub ice_servers: Vec<IceServer>,
    /// `relay`: media only through the relays.
    pub ice_transport_policy: &'static str,
    /// When the credential expires, unix seconds.
    pub expires_at: u64,
    /// The zone the client was placed in.
    pub zone: String,
    /// Pass as `join` with another party's request to place it with this one.
    pub join_token: String,
    /// For native clients (not `RTCPeerConnection`, which cannot use it): the REALM and the
    /// NONCE issued with the credential, so the first Allocate is signed already, with no 401
    /// round trip. A shared TLS port in strict mode admits nothing else.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_auth: Option<NativeAuth>,
    /// With `join`: whether this party had to be placed in another zone than the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_zone: Option<bool>,
}
