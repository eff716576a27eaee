//! The allocator API's request bodies, parsed and checked apart from the HTTP layer: what a
//! caller holding any API key controls, so it is fuzzed (`fuzz/fuzz_targets/allocator_request.rs`)
//! and never panics. The service maps a [`RequestError`] to its HTTP status.

use std::net::IpAddr;

use serde::Deserialize;

/// Why a request body is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// 400: not the body the endpoint takes.
    #[error("{0}")]
    BadRequest(String),
    /// 403: a field this key may not set.
    #[error("{0}")]
    Forbidden(&'static str),
}

/// `POST /v1/ice-servers`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceRequest {
    /// The call the client joins (parties of one call share a relay where they may).
    pub call_id: Option<String>,
    /// Credential lifetime asked for, seconds.
    pub ttl: Option<u64>,
    /// The user id in the credential (backend keys only).
    pub user: Option<String>,
    /// The end user's address (backend keys only).
    pub client_ip: Option<String>,
    /// Accepted for forward compatibility; only UDP exists today.
    pub transports: Option<Vec<String>>,
    /// Another party's `joinToken`: place this party with that one where its rule allows.
    pub join: Option<String>,
    /// The relays' shaping profile for this credential (backend keys only): the claim
    /// `s=<profile>`; a profile the relays admit only over TLS gets `turns:` URIs only.
    pub profile: Option<String>,
}

/// `POST /v1/calls`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    /// The call's id.
    pub call_id: Option<String>,
    /// Credential lifetime asked for, seconds.
    pub ttl: Option<u64>,
    /// The two parties.
    pub parties: Vec<Party>,
}

/// One party of a call.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Party {
    /// Its address.
    pub client_ip: String,
    /// The user id in its credential.
    pub user: Option<String>,
    /// Its shaping profile, as [`IceRequest::profile`].
    pub profile: Option<String>,
}

/// `POST /v1/ice-servers`: an empty body is a request with every field unset. `backend`: the
/// key may name the user.
pub fn ice(body: &[u8], backend: bool) -> Result<IceRequest, RequestError> {
    let req: IceRequest = if body.is_empty() {
        IceRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| RequestError::BadRequest(e.to_string()))?
    };
    check_call_id(req.call_id.as_deref())?;
    check_user(backend, req.user.as_deref())?;
    check_profile(backend, req.profile.as_deref())?;
    Ok(req)
}

/// `POST /v1/calls` (backend keys only, checked by the caller): exactly two parties, each
/// with an IP address.
pub fn call(body: &[u8]) -> Result<(CallRequest, [IpAddr; 2]), RequestError> {
    let req: CallRequest =
        serde_json::from_slice(body).map_err(|e| RequestError::BadRequest(e.to_string()))?;
    let [a, b] = req.parties.as_slice() else {
        return Err(RequestError::BadRequest("parties: exactly two".into()));
    };
    let parse = |p: &Party| {
        p.client_ip.parse::<IpAddr>().map_err(|_| {
            RequestError::BadRequest("parties[].client_ip is not an IP address".into())
        })
    };
    let ips = [parse(a)?, parse(b)?];
    check_call_id(req.call_id.as_deref())?;
    for p in &req.parties {
        check_profile(true, p.profile.as_deref())?;
    }
    Ok((req, ips))
}

/// `user` names whose quota a credential counts against: only a backend may choose it.
pub fn check_user(backend: bool, user: Option<&str>) -> Result<(), RequestError> {
    if user.is_some() && !backend {
        return Err(RequestError::Forbidden(
            "only backend keys may name the user (it picks whose relay quota is used)",
        ));
    }
    Ok(())
}

/// A shaping profile chooses how a caller's media is protected and what bandwidth it may use:
/// only a backend may choose it, and it is a relay profile name (1-32 of `[A-Za-z0-9_-]`).
pub fn check_profile(backend: bool, profile: Option<&str>) -> Result<(), RequestError> {
    let Some(p) = profile else { return Ok(()) };
    if !backend {
        return Err(RequestError::Forbidden(
            "only backend keys may choose the shaping profile",
        ));
    }
    let ok = !p.is_empty()
        && p.len() <= 32
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(RequestError::BadRequest(
            "profile: 1-32 of [A-Za-z0-9_-]".into(),
        ));
    }
    Ok(())
}

/// A call id travels in join tokens: bounded, so a token always fits their size limit.
fn check_call_id(id: Option<&str>) -> Result<(), RequestError> {
    match id {
        Some(c) if c.is_empty() || c.len() > 128 => {
            Err(RequestError::BadRequest("call_id: 1-128 characters".into()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_field_by_field() {
        assert_eq!(ice(b"", false).unwrap().user, None);
        assert!(matches!(
            ice(b"{\"user\":\"bob\"}", false),
            Err(RequestError::Forbidden(_))
        ));
        assert_eq!(
            ice(b"{\"user\":\"bob\"}", true).unwrap().user.as_deref(),
            Some("bob")
        );
        assert!(matches!(
            ice(b"{\"call_id\":\"\"}", true),
            Err(RequestError::BadRequest(_))
        ));
        assert!(matches!(
            ice(b"{\"nope\":1}", true),
            Err(RequestError::BadRequest(_))
        ));
        assert!(matches!(ice(b"[", true), Err(RequestError::BadRequest(_))));
        let two = br#"{"parties":[{"client_ip":"192.0.2.1"},{"client_ip":"2001:db8::1"}]}"#;
        assert_eq!(
            call(two).unwrap().1[0],
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        let one = br#"{"parties":[{"client_ip":"192.0.2.1"}]}"#;
        assert!(matches!(call(one), Err(RequestError::BadRequest(_))));
        let bad = br#"{"parties":[{"client_ip":"x"},{"client_ip":"192.0.2.1"}]}"#;
        assert!(matches!(call(bad), Err(RequestError::BadRequest(_))));
    }
}
