//! The STUN/TURN decoder and ChannelData framing on arbitrary bytes: never panics, and what it
//! accepts is self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_proto::stun::{Message, attr, channel_data};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        assert_eq!(m.bytes().len(), data.len());
        for typ in [
            attr::USERNAME,
            attr::REALM,
            attr::NONCE,
            attr::LIFETIME,
            attr::DATA,
            attr::XOR_PEER_ADDRESS,
            attr::CHANNEL_NUMBER,
            attr::ADDITIONAL_ADDRESS_FAMILY_DRAFT,
        ] {
            if let Some(v) = m.get(typ) {
                assert!(v.len() <= data.len());
                let r = m.range_of(typ).unwrap();
                assert_eq!(&data[r], v);
            }
        }
        let _ = m.verify_integrity(b"key");
        let n = m.peer_addresses().count();
        assert!(n >= usize::from(m.has(attr::XOR_PEER_ADDRESS)));
        assert_eq!(n, m.peer_address_count());
        let _ = m.get_u32(attr::LIFETIME);
        let _ = veil_proto::server::AllocateRequest::parse(&m);
        let _ = veil_proto::server::RefreshRequest::parse(&m);
        let _ = veil_proto::server::PermissionRequest::parse(&m);
        let _ = veil_proto::server::ChannelBindRequest::parse(&m);
        let _ = veil_proto::server::SendIndication::parse(&m);
    }
    if let Some((ch, payload)) = channel_data::decode(data) {
        assert!(ch >= 0x4000 && ch <= 0x7FFF);
        assert_eq!(
            payload.len(),
            u16::from_be_bytes([data[2], data[3]]) as usize
        );
    }
});
