//! Join tokens: how a second party of a call finds the first party's relay without shared state.
//!
//! Every ICE answer carries a `joinToken`. A backend that passes it with the other party's request
//! (`{"join": "<token>"}`) gets that party placed on the same relay when its own residency rule
//! allows the zone, and the call recorded as cross-zone when it does not. Any allocator replica
//! can check a token: it is MACed (HMAC-SHA256, truncated to 128 bits) under a key derived from
//! the TURN REST signing secret the replicas share, and expires with the credential it came with.
//!
//! A token carries the call's random id, the first party's zone and relay name, and its expiry:
//! no address, no user. It does not prove who holds it; it only lets a party ask for a relay
//! its own rule already allows.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinClaims {
    /// Expiry, unix seconds.
    pub exp: u64,
    /// The call's id (random unless the backend gave a `call_id`).
    pub call: String,
    /// The zone the earlier party was placed in.
    pub zone: String,
    /// The relay it was given.
    pub relay: String,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// Not a token of ours.
    #[error("join token is malformed")]
    Malformed,
    /// The MAC does not verify.
    #[error("join token was not issued by this cluster")]
    BadMac,
    /// Past `exp`.
    #[error("join token has expired")]
    Expired,
}

const MAC_LEN: usize = 16;
/// A token longer than this is refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 512;

fn key(secret: &[u8]) -> hmac::Key {
    let derived = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret),
        b"veil join token v1",
    );
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

/// Signs claims with the signing secret.
pub fn issue(secret: &[u8], claims: &JoinClaims) -> String {
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let tag = hmac::sign(&key(secret), &payload);
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(&tag.as_ref()[..MAC_LEN])
    )
}

/// Checks a token against any of `secrets` (the current signing secret and the one before it, so
/// a rotation does not break calls being set up) and its expiry.
pub fn verify<'a>(
    secrets: impl IntoIterator<Item = &'a [u8]>,
    token: &str,
    now: u64,
) -> Result<JoinClaims, JoinError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JoinError::Malformed);
    }
    let (p, t) = token.split_once('.').ok_or(JoinError::Malformed)?;
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| JoinError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(t)
        .map_err(|_| JoinError::Malformed)?;
    if tag.len() != MAC_LEN {
        return Err(JoinError::Malformed);
    }
    let ok = secrets.into_iter().any(|s| {
        let want = hmac::sign(&key(s), &payload);
        veil_proto::stun::ct_eq(&want.as_ref()[..MAC_LEN], &tag)
    });
    if !ok {
        return Err(JoinError::BadMac);
    }
    let claims: JoinClaims = serde_json::from_slice(&payload).map_err(|_| JoinError::Malformed)?;
    if claims.exp < now {
        return Err(JoinError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> JoinClaims {
        JoinClaims {
            exp: 1000,
            call: "c0ffee".into(),
            zone: "eu".into(),
            relay: "eu-1".into(),
        }
    }

    #[test]
    fn round_trip_rotation_expiry_and_forgery() {
        let t = issue(b"old-secret", &claims());
        assert_eq!(verify([b"old-secret".as_slice()], &t, 999), Ok(claims()));
        assert_eq!(
            verify(
                [b"new-secret".as_slice(), b"old-secret".as_slice()],
                &t,
                999
            ),
            Ok(claims()),
            "still good after a rotation"
        );
        assert_eq!(
            verify([b"other".as_slice()], &t, 999),
            Err(JoinError::BadMac)
        );
        assert_eq!(
            verify([b"old-secret".as_slice()], &t, 1001),
            Err(JoinError::Expired)
        );
        // A changed zone with the old MAC.
        let (_, mac) = t.split_once('.').unwrap();
        let forged = JoinClaims {
            zone: "us".into(),
            ..claims()
        };
        let forged = format!(
            "{}.{mac}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap())
        );
        assert_eq!(
            verify([b"old-secret".as_slice()], &forged, 999),
            Err(JoinError::BadMac)
        );
        for junk in ["", ".", "abc", "a.b", &"x".repeat(600), "!!.??"] {
            assert!(
                verify([b"old-secret".as_slice()], junk, 0).is_err(),
                "{junk}"
            );
        }
        assert!(!t.contains("127.0."), "no address in a token");
    }
}
