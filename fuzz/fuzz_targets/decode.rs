//! The STUN/TURN decoder and ChannelData framing on arbitrary bytes: never panics, and what it
//! accepts is self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_proto::stun::{Message, channel_data};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        assert_eq!(m.bytes().len(), data.len());
        for span in [
            m.username,
            m.realm,
            m.nonce,
            m.lifetime,
            m.data,
            m.peer_address,
            m.channel_number,
        ] {
            if let Some(v) = m.value_of(span) {
                assert!(v.len() <= data.len());
            }
        }
        let _ = m.verify_integrity(b"key");
        let n = m.peer_addresses().count();
        assert!(n >= usize::from(m.peer_address.is_some()));
        let _ = m.u32_of(m.lifetime);
    }
    if let Some((ch, payload)) = channel_data::decode(data) {
        assert!(ch >= 0x4000 && ch <= 0x7FFF);
        assert_eq!(
            payload.len(),
            u16::from_be_bytes([data[2], data[3]]) as usize
        );
    }
});
