//! The allocator API's request bodies and join tokens, as any API key holder can send them:
//! parsing never panics, a body it accepts obeys the checks (a non-backend key never names a
//! user, a call has two parties with addresses), and a join token that verifies was signed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_allocator::join;
use veil_allocator::request::{self, RequestError};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let backend = flags & 1 == 1;
    match request::ice(body, backend) {
        Ok(req) => {
            assert!(
                backend || req.user.is_none(),
                "a non-backend key named the user"
            );
            if let Some(c) = &req.call_id {
                assert!((1..=128).contains(&c.len()));
            }
        }
        Err(RequestError::BadRequest(_) | RequestError::Forbidden(_)) => {}
    }
    if let Ok((req, ips)) = request::call(body) {
        assert_eq!(req.parties.len(), 2);
        assert_eq!(
            ips[0],
            req.parties[0]
                .client_ip
                .parse::<std::net::IpAddr>()
                .unwrap()
        );
    }
    if let Ok(token) = std::str::from_utf8(body) {
        // Random input never carries a valid MAC under this secret.
        assert!(join::verify([&b"fuzz-secret"[..]], token, 0).is_err());
    }
});
