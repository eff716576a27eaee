//! Faults injected on purpose, for the tests of the node's supervision ([`super::health`]); in
//! debug builds only (the test suites run those), and only when the process was started with
//! `VEIL_TEST_FAULTS=1`. A release build has no such path.

use std::sync::LazyLock;
use std::time::Duration;

static ARMED: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("VEIL_TEST_FAULTS").is_some_and(|v| v == "1"));

/// A datagram a client sent to a UDP listener: `veil-test-fault:panic` panics the worker,
/// `veil-test-fault:stall` blocks its thread for good (an endless loop's effect).
pub(super) fn inject(datagram: &[u8]) {
    if !*ARMED {
        return;
    }
    match datagram {
        b"veil-test-fault:panic" => panic!("a fault injected on purpose (VEIL_TEST_FAULTS)"),
        b"veil-test-fault:stall" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        _ => {}
    }
}
