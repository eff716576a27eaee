//! RFC 8489 §9.2.4 long-term credential checks, with the allocation's stored key for requests on
//! an existing allocation.

use super::error::{Fail, Req};
use super::{Server, TurnError};
use crate::auth::{self, Key, UserError};
use crate::stun::{Integrity, Message, attr};

/// A request that authenticated.
pub(super) struct Authed<'a> {
    pub(super) key: Key,
    pub(super) integrity: Integrity,
    pub(super) username: &'a str,
    /// Which REST secret admitted a new allocation ([`auth::secret_id`]); None for a static
    /// user or a request on an existing allocation.
    pub(super) secret: Option<[u8; 8]>,
}

const UNAUTHENTICATED: TurnError = TurnError::new(401, "no integrity");
const BAD_INTEGRITY: TurnError = TurnError::new(401, "unknown user or wrong key");
const STALE_NONCE: TurnError = TurnError::new(438, "stale or foreign nonce");

/// The password algorithm a request's key is derived with (RFC 8489 §9.2.4): MD5 unless it
/// echoes our PASSWORD-ALGORITHMS (our nonces always announce the feature) and picks one.
pub(crate) fn password_algorithm(m: &Message<'_>) -> Result<u16, TurnError> {
    match (
        m.get(attr::PASSWORD_ALGORITHMS),
        m.get(attr::PASSWORD_ALGORITHM),
    ) {
        (None, None) => Ok(auth::ALG_MD5),
        (Some(list), Some(one)) if list == auth::PASSWORD_ALGORITHMS && one.len() >= 4 => {
            let alg = u16::from_be_bytes([one[0], one[1]]);
            if alg != auth::ALG_MD5 && alg != auth::ALG_SHA256 {
                return Err(TurnError::bad_request("unknown PASSWORD-ALGORITHM"));
            }
            Ok(alg)
        }
        _ => Err(TurnError::bad_request("PASSWORD-ALGORITHM(S) inconsistent")),
    }
}

impl Server {
    pub(super) fn authenticate<'a>(
        &mut self,
        r: &Req<'_, 'a>,
        existing: Option<usize>,
    ) -> Result<Authed<'a>, Fail> {
        let m = r.m;
        self.sync_live();
        if !m.has_integrity() {
            return Err(Fail::Challenge(UNAUTHENTICATED));
        }
        let (Some(user), Some(_realm), Some(nonce)) = (
            m.get(attr::USERNAME),
            m.get(attr::REALM),
            m.get(attr::NONCE),
        ) else {
            if !m.has(attr::USERNAME) && m.has(attr::USERHASH) {
                // USERHASH needs a user database to resolve; we have none by design.
                self.stats.auth_failures += 1;
                return Err(Fail::Challenge(TurnError::new(
                    401,
                    "USERHASH is not supported",
                )));
            }
            return Err(TurnError::bad_request("USERNAME, REALM or NONCE missing").into());
        };
        let alg = password_algorithm(m)?;
        let Ok(username) = std::str::from_utf8(user) else {
            return Err(TurnError::bad_request("USERNAME is not UTF-8").into());
        };
        let realm = self.shared.config.realm.as_bytes();
        let mut secret = None;
        let key = match existing {
            Some(slot) => {
                let a = &self.allocs[slot];
                if &*a.username != username {
                    return Err(
                        TurnError::new(441, "USERNAME differs from the allocation's").into(),
                    );
                }
                let want_alg = if matches!(a.key, Key::Sha256(_)) {
                    auth::ALG_SHA256
                } else {
                    auth::ALG_MD5
                };
                (want_alg == alg).then_some(a.key)
            }
            None => {
                let mut found = None;
                let mut tried = 0;
                let creds = &self.live.credentials;
                let result = creds.for_each_password(username, r.now.unix, |pw| {
                    tried += 1;
                    let k = Key::derive(alg, username.as_bytes(), realm, pw);
                    let ok = m.verify_integrity(k.as_bytes()).is_some();
                    if ok {
                        found = Some(k);
                    }
                    ok
                });
                if found.is_some() && auth::is_rest_username(username) {
                    secret = creds.secrets.get(tried - 1).map(|s| auth::secret_id(s));
                }
                match result {
                    Ok(_) => found,
                    Err(UserError::Expired) => {
                        self.stats.auth_expired += 1;
                        None
                    }
                    Err(UserError::TooFar) => {
                        self.stats.auth_expiry_too_far += 1;
                        None
                    }
                    Err(UserError::Unknown) => None,
                }
            }
        };
        let Some((key, integrity)) =
            key.and_then(|k| m.verify_integrity(k.as_bytes()).map(|i| (k, i)))
        else {
            self.stats.auth_failures += 1;
            return Err(Fail::Challenge(BAD_INTEGRITY));
        };
        // Ours for this 5-tuple (from a challenge), or the one issued with the credential
        // (the client's first request was authenticated already: issue 23 §3).
        if self
            .shared
            .nonces
            .check(nonce, r.from.listener, r.from.addr, r.now.unix)
            .is_err()
            && !self.live.credentials.issued_nonce(username, nonce)
        {
            self.stats.stale_nonces += 1;
            return Err(Fail::Challenge(STALE_NONCE));
        }
        Ok(Authed {
            key,
            integrity,
            username,
            secret,
        })
    }
}
