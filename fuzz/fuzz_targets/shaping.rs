//! Padding on arbitrary frames: never panics, never changes the frame's own bytes, never writes
//! outside the buffer, and what it adds is zeros or a well-formed filler.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_proto::shaping::{Padding, pad_frame_to, pad_stream_frame};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let padding = match data[0] % 4 {
        0 => Padding::Buckets(vec![64, 128, 256, 1200]),
        1 => Padding::Multiple(((data[1] as u16 % 16) + 2) * 4),
        2 => Padding::Flow(vec![64, 128, 132, 256, 1200]),
        _ => Padding::Off,
    };
    // A flow's size under per-flow padding (or none): frames are padded to at least it.
    let floor = [0, 64, 128, 132, 256, 1200][(data[0] as usize / 4) % 6];
    let frame = &data[2..];
    let room = frame.len() + (data[1] as usize) * 4;
    for stream in [false, true] {
        let mut buf = vec![0xAAu8; room + 8];
        buf[8..8 + frame.len()].copy_from_slice(frame);
        let range = 8..8 + frame.len();
        // The size it should reach: on a stream the frame aligned to 4 plus a filler of at least
        // a STUN header, so sizes a filler cannot fill are skipped.
        let target = if stream {
            padding.stream_target((frame.len() + 3) & !3, floor)
        } else {
            padding.target_at_least(frame.len(), floor)
        };
        let out = if stream {
            pad_stream_frame(&padding, &mut buf, range.clone(), floor, &[1; 12])
        } else {
            pad_frame_to(&mut buf, range.clone(), target)
        };
        let fits = out.start + target <= buf.len();
        if padding != Padding::Off && fits && (stream || out.end > range.end) {
            assert_eq!(out.len(), target, "padded to its target when it fits");
            assert!(out.len() >= floor, "at least the flow's size");
        }
        assert_eq!(out.start, 8);
        assert!(out.end <= buf.len());
        assert!(out.end >= range.end);
        // A STUN frame (top bits 00) grows inside its own length field; nothing else changes.
        let grown_stun = !stream && out.end > range.end && frame[0] >> 6 == 0;
        if grown_stun {
            assert_eq!(&buf[8..10], &frame[..2]);
            assert_eq!(
                &buf[12..range.end],
                &frame[4..],
                "the message after its length is untouched"
            );
            assert_eq!(
                u16::from_be_bytes([buf[10], buf[11]]) as usize,
                out.len() - 20,
                "length covers the padding"
            );
        } else {
            assert_eq!(&buf[range.clone()], frame, "the frame itself is untouched");
        }
        if !stream && out.end > range.end && frame.first().is_some_and(|b| b >> 6 == 1) {
            assert!(
                buf[range.end..out.end].iter().all(|b| *b == 0),
                "ChannelData padding is zeros"
            );
        }
    }
});
