//! Credentials with no user database, and stateless nonces.
//!
//! * TURN REST API / coturn `use-auth-secret` credentials: the username is `<unix-expiry>` or
//!   `<unix-expiry>:<opaque-id>`, the password `base64(HMAC-SHA1(secret, username))`. Any of
//!   several secrets may have minted it (rotation).
//! * A fixed user list, for local development only.
//! * Nonces carry their own expiry and a MAC over the client's 5-tuple under a node key, so the
//!   server keeps no per-request state: unauthenticated traffic cannot grow memory.

use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use md5::{Digest, Md5};
use ring::{digest, hmac};

/// RFC 8489 §9.2: the nonce cookie that announces the security feature set.
pub const NONCE_COOKIE: &[u8] = b"obMatJos2";
/// The feature set we announce, base64 of 24 bits: bit 0 (MSB) "Password algorithms".
const FEATURES: &[u8] = b"gAAA";
/// PASSWORD-ALGORITHM numbers (RFC 8489 §18.5).
pub const ALG_MD5: u16 = 0x0001;
/// PASSWORD-ALGORITHM SHA-256 (RFC 8489 §18.5).
pub const ALG_SHA256: u16 = 0x0002;
/// The PASSWORD-ALGORITHMS value we send: SHA-256 then MD5, each with zero-length parameters.
pub const PASSWORD_ALGORITHMS: [u8; 8] = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];

/// MD5(username ":" realm ":" password), the RFC 8489 §9.2.2 key for HMAC with MD5 passwords.
pub fn long_term_key_md5(user: &[u8], realm: &[u8], pass: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(user);
    h.update(b":");
    h.update(realm);
    h.update(b":");
    h.update(pass);
    h.finalize().into()
}

/// SHA-256(username ":" realm ":" password), the key when PASSWORD-ALGORITHM is SHA-256.
pub fn long_term_key_sha256(user: &[u8], realm: &[u8], pass: &[u8]) -> [u8; 32] {
    let mut c = digest::Context::new(&digest::SHA256);
    c.update(user);
    c.update(b":");
    c.update(realm);
    c.update(b":");
    c.update(pass);
    c.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// A long-term key for either password algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// The MD5 long-term key (RFC 8489 §9.2.2).
    Md5([u8; 16]),
    /// The SHA-256 long-term key (RFC 8489 §9.2.2).
    Sha256([u8; 32]),
}

impl Key {
    /// Derives the long-term key of `user` in `realm` for algorithm `alg`.
    pub fn derive(alg: u16, user: &[u8], realm: &[u8], pass: &[u8]) -> Key {
        if alg == ALG_SHA256 {
            Key::Sha256(long_term_key_sha256(user, realm, pass))
        } else {
            Key::Md5(long_term_key_md5(user, realm, pass))
        }
    }

    /// The key bytes, for MESSAGE-INTEGRITY(-SHA256).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Md5(k) => k,
            Key::Sha256(k) => k,
        }
    }
}

/// The REST API password for a username under one secret: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &[u8]) -> [u8; 28] {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, username);
    let mut out = [0u8; 28];
    let n = STANDARD
        .encode_slice(tag.as_ref(), &mut out)
        .expect("20 bytes encode to 28");
    debug_assert_eq!(n, 28);
    out
}

/// Mints a REST username/password pair that expires at `expiry` (unix seconds).
pub fn mint(secret: &[u8], expiry: u64, id: Option<&str>) -> (String, String) {
    let username = match id {
        Some(id) => format!("{expiry}:{id}"),
        None => expiry.to_string(),
    };
    mint_username(secret, username)
}

/// The password for a REST username written by the caller (e.g. with a shaping profile).
pub fn mint_username(secret: &[u8], username: String) -> (String, String) {
    let pw = rest_password(secret, username.as_bytes());
    let pw = String::from_utf8(pw.to_vec()).expect("base64 is ASCII");
    (username, pw)
}

/// Why a username cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserError {
    /// No secret-style timestamp and not a configured static user.
    Unknown,
    /// A REST username whose timestamp has passed.
    Expired,
    /// A REST username whose timestamp lies further ahead than [`Credentials::max_validity`]:
    /// a minter writing "never expires" (`9999999999`, `u64::MAX`) or a clock far off.
    TooFar,
}

/// Splits a REST username `<expiry>:<id>` into (expiry digits, id); None for other usernames.
/// The id may carry claims after the user: `alice;z=eu;s=voice`.
fn rest_parts(username: &str) -> Option<(&str, &str)> {
    let (ts, id) = username.split_once(':')?;
    (!ts.is_empty() && ts.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty()).then_some((ts, id))
}

/// The expiry of a username in the TURN REST API form (`<expiry>`, `<expiry>:`,
/// `<expiry>:<id>`): the one rule both the credential check and the claim checks use, so no
/// username the MAC accepts as a REST credential escapes its claims.
pub fn rest_expiry(username: &str) -> Option<u64> {
    let ts = username.split_once(':').map_or(username, |(ts, _)| ts);
    (!ts.is_empty() && ts.len() <= 20 && ts.bytes().all(|b| b.is_ascii_digit()))
        .then(|| ts.parse::<u64>().ok())
        .flatten()
}

/// True if the username has the TURN REST API form (see [`rest_expiry`]).
pub fn is_rest_username(username: &str) -> bool {
    rest_expiry(username).is_some()
}

/// What identifies a user for quotas: the user part of a REST username's id when it has one (so
/// that minting new credentials does not reset a user's quota), else the whole username.
pub fn quota_key(username: &str) -> &str {
    match rest_parts(username) {
        Some((_, id)) => match id.split_once(';') {
            Some((user, _)) if !user.is_empty() => user,
            _ => id,
        },
        None => username,
    }
}

/// A claim `key=value` in a REST username's id (`<expiry>:<user>;z=eu;s=voice`). The username is
/// covered by the credential's HMAC, so only the holder of the secret (the allocator) sets claims.
/// Claims used: `z` the zone the credential is valid in, `s` the shaping profile, `q` the user
/// id's allocation quota.
pub fn claim<'a>(username: &'a str, key: &str) -> Option<&'a str> {
    let (_, id) = rest_parts(username)?;
    id.split(';').skip(1).find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, v)| *k == key && !v.is_empty())
            .map(|(_, v)| v)
    })
}

/// The shaping profile a credential selects, if any.
pub fn shaping_profile(username: &str) -> Option<&str> {
    claim(username, "s")
}

/// The quota of allocations a credential's user id may hold on a node, if it says (`q=<n>`):
/// the allocator sets it for ids that stand for a whole network (a browser key's callers behind
/// one address share one id), which needs more than one person's quota. Not a number: none.
pub fn quota_claim(username: &str) -> Option<u32> {
    claim(username, "q").and_then(|v| v.parse().ok())
}

/// The zone a credential is valid in, if it says.
pub fn zone_claim(username: &str) -> Option<&str> {
    claim(username, "z")
}

/// The user id of every caller of one network (an IPv4 address, an IPv6 /64, as
/// [`crate::limiter::source_prefix`] reduces them) on one UTC `day` (unix days): `n-` and 16 hex
/// digits of HMAC-SHA256(secret, label ‖ day ‖ prefix). The allocator mints a browser key's
/// credentials with it, so the relays' per-user quota follows the caller's network, not the
/// credential (minting more adds nothing). Without the secret it tells nothing of the address;
/// it changes every day and with the secret.
pub fn network_id(secret: &[u8], day: u64, ip: std::net::IpAddr) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(b"veil network id v1");
    ctx.update(&day.to_be_bytes());
    ctx.update(&crate::limiter::source_prefix(ip).to_be_bytes());
    let tag = ctx.sign();
    let mut id = String::with_capacity(18);
    id.push_str("n-");
    for b in &tag.as_ref()[..8] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// Writes a REST username with claims: `<expiry>:<user>;k=v;...`.
pub fn username_with_claims(expiry: u64, user: &str, claims: &[(&str, &str)]) -> String {
    let mut u = format!("{expiry}:{user}");
    for (k, v) in claims {
        u.push(';');
        u.push_str(k);
        u.push('=');
        u.push_str(v);
    }
    u
}

/// The credential sources of a node and how long what they admit may last. Replaced as a
/// whole on reload.
#[derive(Clone, Default)]
pub struct Credentials {
    /// REST API secrets, newest first. Any of them validates.
    pub secrets: Vec<Vec<u8>>,
    /// Development-only static users (username, password).
    pub static_users: Vec<(String, String)>,
    /// User ids (the id of a REST username, [`quota_key`]) refused from now on; their
    /// allocations end at the reload that lists them.
    pub revoked_users: std::collections::HashSet<Box<str>>,
    /// How long an allocation may live past its REST credential's expiry (refreshes are
    /// granted up to that point, then it expires). `None`: no bound.
    pub max_session: Option<u32>,
    /// When a reload removes a secret, the allocations made under it end this many seconds
    /// later. `None`: they go on (a routine rotation removes the old secret).
    pub removed_secret_grace: Option<u32>,
    /// The furthest ahead of now a REST credential's expiry may be, in seconds; a later one is
    /// refused as a bad credential ([`UserError::TooFar`]). `None`: no bound (the core's time
    /// arithmetic saturates whatever the expiry).
    pub max_validity: Option<u32>,
}

/// A short fingerprint of a secret, so that an allocation remembers which one admitted it
/// without keeping the secret (SHA-256, first 8 bytes).
pub fn secret_id(secret: &[u8]) -> [u8; 8] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    d.as_ref()[..8].try_into().expect("SHA-256 is longer")
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets or passwords.
        f.debug_struct("Credentials")
            .field("secrets", &self.secrets.len())
            .field("static_users", &self.static_users.len())
            .field("revoked_users", &self.revoked_users.len())
            .field("max_session", &self.max_session)
            .field("removed_secret_grace", &self.removed_secret_grace)
            .field("max_validity", &self.max_validity)
            .finish()
    }
}

impl Credentials {
    /// Calls `try_password` with each password that could belong to `username` until it returns
    /// true. Returns Ok(true) if one matched.
    pub fn for_each_password(
        &self,
        username: &str,
        unix_now: u64,
        mut try_password: impl FnMut(&[u8]) -> bool,
    ) -> Result<bool, UserError> {
        if let Some(expiry) = rest_expiry(username)
            && !self.secrets.is_empty()
        {
            if expiry < unix_now {
                return Err(UserError::Expired);
            }
            if let Some(max) = self.max_validity
                && expiry - unix_now > max as u64
            {
                return Err(UserError::TooFar);
            }
            for s in &self.secrets {
                if try_password(&rest_password(s, username.as_bytes())) {
                    return Ok(true);
                }
            }
            return Ok(false);
        }
        match self.static_users.iter().find(|(u, _)| u == username) {
            Some((_, p)) => Ok(try_password(p.as_bytes())),
            None => Err(UserError::Unknown),
        }
    }
}

/// Mints and checks stateless nonces: cookie, features, then base64url(expiry ‖ MAC) where the
/// MAC covers the expiry and the client's 5-tuple under a node key.
pub struct NonceKey {
    key: hmac::Key,
}

/// What is wrong with a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceError {
    /// Not one of our nonces, or altered.
    Malformed,
    /// Past its expiry.
    Expired,
}

/// 64 bits of HMAC: a nonce only proves that its client received our challenge at that
/// 5-tuple before its expiry; forging one takes ~2^63 requests, each answered with a 438. Short,
/// because every challenge carries one to whoever a spoofed source names (issue 14 §2).
const NONCE_MAC_LEN: usize = 8;
const NONCE_RAW_LEN: usize = 4 + NONCE_MAC_LEN;
/// Characters of the base64url form of the expiry and the MAC.
const NONCE_B64_LEN: usize = NONCE_RAW_LEN.div_ceil(3) * 4;
/// Length of every nonce we mint (29 bytes, 32 on the wire).
pub const NONCE_LEN: usize = NONCE_COOKIE.len() + FEATURES.len() + NONCE_B64_LEN;

impl NonceKey {
    /// A nonce key from a node secret.
    pub fn new(secret: &[u8]) -> Self {
        NonceKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A key from the OS random source; nonces die with the process, which clients handle by
    /// retrying after 438.
    pub fn random() -> Self {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).expect("the OS random source works");
        Self::new(&k)
    }

    fn mac(&self, expiry: u32, listener: u16, client: SocketAddr) -> [u8; NONCE_MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&expiry.to_be_bytes());
        ctx.update(&listener.to_be_bytes());
        match client.ip() {
            IpAddr::V4(ip) => ctx.update(&ip.octets()),
            IpAddr::V6(ip) => ctx.update(&ip.octets()),
        }
        ctx.update(&client.port().to_be_bytes());
        let tag = ctx.sign();
        tag.as_ref()[..NONCE_MAC_LEN]
            .try_into()
            .expect("HMAC-SHA256 is longer")
    }

    /// Writes a nonce valid until `expiry` for this client into `out`.
    pub fn mint(&self, expiry: u32, listener: u16, client: SocketAddr) -> [u8; NONCE_LEN] {
        let mut raw = [0u8; NONCE_RAW_LEN];
        raw[..4].copy_from_slice(&expiry.to_be_bytes());
        raw[4..].copy_from_slice(&self.mac(expiry, listener, client));
        let mut out = [0u8; NONCE_LEN];
        let c = NONCE_COOKIE.len();
        out[..c].copy_from_slice(NONCE_COOKIE);
        out[c..c + FEATURES.len()].copy_from_slice(FEATURES);
        let n = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut out[c + FEATURES.len()..])
            .expect("12 bytes encode to 16");
        debug_assert_eq!(n, NONCE_B64_LEN);
        out
    }

    /// Checks a nonce for this client at `unix_now`.
    pub fn check(
        &self,
        nonce: &[u8],
        listener: u16,
        client: SocketAddr,
        unix_now: u64,
    ) -> Result<(), NonceError> {
        let prefix = NONCE_COOKIE.len() + FEATURES.len();
        if nonce.len() != NONCE_LEN || &nonce[..NONCE_COOKIE.len()] != NONCE_COOKIE {
            return Err(NonceError::Malformed);
        }
        let mut raw = [0u8; NONCE_RAW_LEN + 3];
        let n = URL_SAFE_NO_PAD
            .decode_slice(&nonce[prefix..], &mut raw)
            .map_err(|_| NonceError::Malformed)?;
        if n != NONCE_RAW_LEN {
            return Err(NonceError::Malformed);
        }
        let expiry = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let mac = self.mac(expiry, listener, client);
        if !crate::stun::ct_eq(&mac, &raw[4..NONCE_RAW_LEN]) {
            return Err(NonceError::Malformed);
        }
        if (expiry as u64) < unix_now {
            return Err(NonceError::Expired);
        }
        Ok(())
    }
}

/// Marks a [credential nonce](credential_nonce) after the cookie and features.
const CREDENTIAL_NONCE_MARK: u8 = b'c';
/// Bytes of HMAC in a credential nonce.
const CREDENTIAL_NONCE_MAC_LEN: usize = 16;
/// Length of a credential nonce (36 bytes, 36 on the wire).
pub const CREDENTIAL_NONCE_LEN: usize =
    NONCE_COOKIE.len() + FEATURES.len() + 1 + (CREDENTIAL_NONCE_MAC_LEN * 4).div_ceil(3);

fn credential_nonce_mac(secret: &[u8], username: &str) -> [u8; CREDENTIAL_NONCE_MAC_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(b"veil credential nonce\0");
    ctx.update(username.as_bytes());
    ctx.sign().as_ref()[..CREDENTIAL_NONCE_MAC_LEN]
        .try_into()
        .expect("HMAC-SHA256 is longer")
}

/// The nonce issued with a REST credential (by the allocator, which holds the signing secret):
/// a client given it sends its first Allocate already authenticated, with no 401 round trip,
/// which is what lets a shared port in `strict` mode hand every unauthenticated request to the
/// website. It is bound to the username (so to its expiry) under the secret, not to a 5-tuple:
/// the client's address and port are unknown when it is issued. Valid wherever the credential
/// is, until the credential expires or its secret is removed.
pub fn credential_nonce(secret: &[u8], username: &str) -> String {
    let mut out = Vec::with_capacity(CREDENTIAL_NONCE_LEN);
    out.extend_from_slice(NONCE_COOKIE);
    out.extend_from_slice(FEATURES);
    out.push(CREDENTIAL_NONCE_MARK);
    let mac = URL_SAFE_NO_PAD.encode(credential_nonce_mac(secret, username));
    out.extend_from_slice(mac.as_bytes());
    debug_assert_eq!(out.len(), CREDENTIAL_NONCE_LEN);
    String::from_utf8(out).expect("ASCII")
}

impl Credentials {
    /// Whether `nonce` is the [credential nonce](credential_nonce) of `username` under one of
    /// the secrets in force (REST usernames only; expiry is the credential check's business).
    pub fn issued_nonce(&self, username: &str, nonce: &[u8]) -> bool {
        let prefix = NONCE_COOKIE.len() + FEATURES.len();
        if nonce.len() != CREDENTIAL_NONCE_LEN
            || &nonce[..NONCE_COOKIE.len()] != NONCE_COOKIE
            || &nonce[NONCE_COOKIE.len()..prefix] != FEATURES
            || nonce[prefix] != CREDENTIAL_NONCE_MARK
            || !is_rest_username(username)
        {
            return false;
        }
        let mut raw = [0u8; CREDENTIAL_NONCE_MAC_LEN + 2];
        let Ok(CREDENTIAL_NONCE_MAC_LEN) =
            URL_SAFE_NO_PAD.decode_slice(&nonce[prefix + 1..], &mut raw)
        else {
            return false;
        };
        self.secrets.iter().any(|s| {
            crate::stun::ct_eq(
                &credential_nonce_mac(s, username),
                &raw[..CREDENTIAL_NONCE_MAC_LEN],
            )
        })
    }
}

/// True if a nonce we minted announces the password-algorithms feature (all of ours do).
pub fn nonce_announces_algorithms(nonce: &[u8]) -> bool {
    nonce.starts_with(NONCE_COOKIE)
        && nonce.len() >= NONCE_COOKIE.len() + 4
        && STANDARD
            .decode(&nonce[NONCE_COOKIE.len()..NONCE_COOKIE.len() + 4])
            .is_ok_and(|b| b.first().is_some_and(|f| f & 0x80 != 0))
}

/// Secrets in a secret file: one per line, blank lines and `#` comments ignored.
pub fn parse_secrets(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_coturn_scheme() {
        // base64(HMAC-SHA1("secret", "1700000000:alice")), computed independently with
        // `printf 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64`.
        let pw = rest_password(b"secret", b"1700000000:alice");
        assert_eq!(&pw, b"d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }

    /// Issue 23 §3: the nonce issued with a credential holds for that username under any
    /// secret in force, and for nothing else: another user, a removed secret, an altered byte,
    /// a node nonce, a static user.
    #[test]
    fn credential_nonces_hold_for_their_username_only() {
        let creds = Credentials {
            secrets: vec![b"new".to_vec(), b"old".to_vec()],
            static_users: vec![("dev".into(), "dev".into())],
            ..Default::default()
        };
        let (user, _) = mint(b"old", 2_000, Some("bob"));
        let nonce = credential_nonce(b"old", &user);
        assert_eq!(nonce.len(), CREDENTIAL_NONCE_LEN);
        assert!(nonce.starts_with("obMatJos2"), "{nonce}");
        assert!(nonce_announces_algorithms(nonce.as_bytes()));
        assert!(creds.issued_nonce(&user, nonce.as_bytes()));
        assert!(creds.issued_nonce(&user, credential_nonce(b"new", &user).as_bytes()));
        let (other, _) = mint(b"old", 2_000, Some("eve"));
        assert!(
            !creds.issued_nonce(&other, nonce.as_bytes()),
            "another user"
        );
        assert!(
            !creds.issued_nonce(&user, credential_nonce(b"gone", &user).as_bytes()),
            "a secret not in force"
        );
        for at in 0..nonce.len() {
            let mut bad = nonce.clone().into_bytes();
            bad[at] ^= 0x01;
            assert!(!creds.issued_nonce(&user, &bad), "byte {at} altered");
        }
        assert!(!creds.issued_nonce(&user, &nonce.as_bytes()[..30]));
        let node = NonceKey::new(b"k").mint(2_000, 3478, "192.0.2.1:5000".parse().unwrap());
        assert!(!creds.issued_nonce(&user, &node));
        assert!(!creds.issued_nonce("dev", credential_nonce(b"new", "dev").as_bytes()));
    }

    #[test]
    fn rest_credentials_rotation_and_expiry() {
        let creds = Credentials {
            secrets: vec![b"new".to_vec(), b"old".to_vec()],
            ..Default::default()
        };
        let (user, pw) = mint(b"old", 2_000, Some("bob"));
        let ok = creds.for_each_password(&user, 1_000, |p| p == pw.as_bytes());
        assert_eq!(ok, Ok(true));
        let wrong = creds.for_each_password(&user, 1_000, |p| p == b"nope");
        assert_eq!(wrong, Ok(false));
        assert_eq!(
            creds.for_each_password(&user, 2_001, |_| true),
            Err(UserError::Expired)
        );
        assert_eq!(
            creds.for_each_password("alice", 0, |_| true),
            Err(UserError::Unknown)
        );
    }

    #[test]
    fn an_expiry_beyond_the_validity_bound_is_refused_whatever_its_size() {
        let creds = Credentials {
            secrets: vec![b"s".to_vec()],
            max_validity: Some(86_400),
            ..Default::default()
        };
        let now = 1_000_000;
        for expiry in [now + 86_401, 9_999_999_999_999_999_999, u64::MAX] {
            let (user, pw) = mint(b"s", expiry, Some("mallory"));
            assert_eq!(
                creds.for_each_password(&user, now, |p| p == pw.as_bytes()),
                Err(UserError::TooFar),
                "{expiry}"
            );
        }
        let (user, pw) = mint(b"s", now + 86_400, Some("alice"));
        assert_eq!(
            creds.for_each_password(&user, now, |p| p == pw.as_bytes()),
            Ok(true)
        );
        let unbounded = Credentials {
            max_validity: None,
            ..creds
        };
        let (user, pw) = mint(b"s", u64::MAX, Some("mallory"));
        assert_eq!(
            unbounded.for_each_password(&user, now, |p| p == pw.as_bytes()),
            Ok(true)
        );
    }

    #[test]
    fn static_users_only_match_their_password() {
        let creds = Credentials {
            static_users: vec![("dev".into(), "devpass".into())],
            ..Default::default()
        };
        assert_eq!(
            creds.for_each_password("dev", 0, |p| p == b"devpass"),
            Ok(true)
        );
        assert_eq!(creds.for_each_password("dev", 0, |p| p == b"x"), Ok(false));
    }

    #[test]
    fn quota_key_uses_opaque_id() {
        assert_eq!(quota_key("1700000000:alice"), "alice");
        assert_eq!(quota_key("1700000000"), "1700000000");
        assert_eq!(quota_key("alice"), "alice");
        assert_eq!(quota_key("x:y"), "x:y");
        let u = username_with_claims(1700000000, "alice", &[("z", "eu"), ("s", "voice")]);
        assert_eq!(u, "1700000000:alice;z=eu;s=voice");
        assert_eq!(quota_key(&u), "alice");
        assert_eq!(shaping_profile(&u), Some("voice"));
        assert_eq!(zone_claim(&u), Some("eu"));
        assert_eq!(shaping_profile("1700000000:alice"), None);
        assert_eq!(
            zone_claim("alice;z=eu"),
            None,
            "claims only in REST usernames"
        );
        assert_eq!(zone_claim("1700000000:alice;z="), None);
        assert!(is_rest_username("1700000000") && is_rest_username(&u) && !is_rest_username("dev"));
    }

    #[test]
    fn nonce_is_bound_to_client_and_expires() {
        let k = NonceKey::new(b"node key");
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        let n = k.mint(1_000, 0, a);
        assert!(nonce_announces_algorithms(&n));
        assert_eq!(k.check(&n, 0, a, 999), Ok(()));
        assert_eq!(k.check(&n, 0, a, 1_001), Err(NonceError::Expired));
        assert_eq!(k.check(&n, 0, b, 999), Err(NonceError::Malformed));
        assert_eq!(k.check(&n, 1, a, 999), Err(NonceError::Malformed));
        let mut forged = n;
        forged[NONCE_LEN - 1] ^= 1;
        assert!(k.check(&forged, 0, a, 999).is_err());
        assert_eq!(
            NonceKey::new(b"other").check(&n, 0, a, 999),
            Err(NonceError::Malformed)
        );
    }
}
