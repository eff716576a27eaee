//! The stream framer on arbitrary bytes cut at arbitrary points: it never panics, every frame
//! it returns is exactly what `frame_len` says at that offset, frames tile the stream in order,
//! a read always has room, and after an error nothing more is read (the driver closes).

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_proto::framing::{StreamBuf, frame_len};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let chunk = (cut as usize % 97) + 1;
    let mut sb = StreamBuf::default();
    let mut consumed = 0;
    let mut rest = stream;
    while !rest.is_empty() {
        let spare = sb.spare();
        assert!(!spare.is_empty(), "a read always has room");
        let n = spare.len().min(chunk).min(rest.len());
        spare[..n].copy_from_slice(&rest[..n]);
        sb.filled(n);
        rest = &rest[n..];
        loop {
            match sb.next_frame() {
                Ok(Some(f)) => {
                    let expect = frame_len(&stream[consumed..]).unwrap().unwrap();
                    assert_eq!(f.len(), expect);
                    assert_eq!(f, &stream[consumed..consumed + expect]);
                    consumed += expect;
                }
                Ok(None) => break,
                Err(_) => {
                    assert!(frame_len(&stream[consumed..]).is_err());
                    return;
                }
            }
        }
    }
    assert_eq!(sb.pending(), stream.len() - consumed);
});
