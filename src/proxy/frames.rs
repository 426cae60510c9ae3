//! WebSocket framing, just enough for two jobs: on the upstream→client byte
//! stream, knowing whether the stream sits between two frames, so that a
//! close frame of our own can be appended without corrupting a frame the
//! upstream was sending; on the client→upstream stream, noticing the client's
//! data frames, which count as session activity (pings and pongs do not).
//! Pingora hands the upgraded body over in arbitrary chunks, so headers may
//! be split across calls.

use bytes::{BufMut, Bytes, BytesMut};

/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;
/// RFC 6455 §5.5: a control frame's payload is at most 125 bytes, of which
/// 2 carry the close code.
const MAX_CLOSE_REASON: usize = 123;

#[derive(Debug, Default, Clone)]
pub struct FrameTracker {
    header: [u8; MAX_HEADER],
    header_len: usize,
    payload_remaining: u64,
}

impl FrameTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Follows the frame structure through the next chunk of bytes; true
    /// when a data frame (text, binary or continuation) began in it.
    pub fn observe(&mut self, mut data: &[u8]) -> bool {
        let mut data_frame = false;
        while !data.is_empty() {
            if self.payload_remaining > 0 {
                let skip = usize::try_from(self.payload_remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.payload_remaining -= skip as u64;
                data = &data[skip..];
                continue;
            }
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if let Some(payload) = self.complete_header_payload_len() {
                // Opcodes 0x0-0x2 carry data; 0x8-0xA are control frames.
                data_frame |= self.header[0] & 0x0f <= 0x2;
                self.payload_remaining = payload;
                self.header_len = 0;
            }
        }
        data_frame
    }

    /// The payload length once the header buffered so far is complete.
    fn complete_header_payload_len(&self) -> Option<u64> {
        if self.header_len < 2 {
            return None;
        }
        let masked = self.header[1] & 0x80 != 0;
        let len7 = self.header[1] & 0x7f;
        let extended = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let needed = 2 + extended + if masked { 4 } else { 0 };
        if self.header_len < needed {
            return None;
        }
        Some(match len7 {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().unwrap_or([0xff; 8])),
            n => u64::from(n),
        })
    }

    /// True when the bytes seen so far end exactly at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_remaining == 0
    }
}

/// An unmasked (server→client) close frame with `code` and `reason`; the
/// reason is cut at a character boundary to fit a control frame.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut frame = BytesMut::with_capacity(4 + reason.len());
    frame.put_u8(0x88); // FIN + opcode 8 (close)
    frame.put_u8((2 + reason.len()) as u8);
    frame.put_u16(code);
    frame.put_slice(reason);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x81];
        let mask_bit = if masked { 0x80 } else { 0 };
        if payload_len < 126 {
            f.push(mask_bit | payload_len as u8);
        } else if payload_len <= 0xffff {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(payload_len as u16).to_be_bytes());
        } else {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'a', payload_len));
        f
    }

    #[test]
    fn whole_frames_end_at_a_boundary() {
        for len in [0, 1, 125, 126, 300, 65535, 65536, 70000] {
            let mut t = FrameTracker::new();
            t.observe(&frame(len, false));
            assert!(t.at_boundary(), "len {len}");
        }
    }

    #[test]
    fn every_split_point_inside_a_frame_is_not_a_boundary() {
        for len in [0, 5, 200, 70000] {
            for masked in [false, true] {
                let bytes = frame(len, masked);
                for cut in 1..bytes.len().min(40) {
                    let mut t = FrameTracker::new();
                    t.observe(&bytes[..cut]);
                    assert!(!t.at_boundary(), "len {len} cut {cut}");
                    t.observe(&bytes[cut..]);
                    assert!(t.at_boundary(), "len {len} cut {cut} then rest");
                }
            }
        }
    }

    #[test]
    fn byte_by_byte_feeding_tracks_several_frames() {
        let mut stream = frame(3, false);
        stream.extend(frame(130, false));
        stream.extend(frame(0, false));
        let mut t = FrameTracker::new();
        let mut boundaries = 0;
        for b in &stream {
            t.observe(std::slice::from_ref(b));
            if t.at_boundary() {
                boundaries += 1;
            }
        }
        // The boundaries are the ends of the three frames.
        assert_eq!(boundaries, 3);
    }

    #[test]
    fn client_data_frames_are_noticed_and_control_frames_are_not() {
        let with_opcode = |opcode: u8, len: usize| {
            let mut f = frame(len, true);
            f[0] = 0x80 | opcode;
            f
        };
        for (opcode, is_data) in [
            (0x1, true),  // text
            (0x2, true),  // binary
            (0x0, true),  // continuation
            (0x8, false), // close
            (0x9, false), // ping
            (0xA, false), // pong
        ] {
            let bytes = with_opcode(opcode, 7);
            let mut t = FrameTracker::new();
            assert_eq!(t.observe(&bytes), is_data, "opcode {opcode:#x}");
            // Split inside the header: noticed by the chunk that completes it.
            let mut t = FrameTracker::new();
            assert!(
                !t.observe(&bytes[..3]),
                "opcode {opcode:#x}, header incomplete"
            );
            assert_eq!(t.observe(&bytes[3..]), is_data, "opcode {opcode:#x}, split");
        }
        // A pong followed by payload bytes that look like a text header is
        // still only a pong: payload is skipped, never read as a header.
        let mut pong = with_opcode(0xA, 2);
        let n = pong.len();
        pong[n - 2] = 0x81;
        pong[n - 1] = 0x80;
        assert!(!FrameTracker::new().observe(&pong));
        // A ping then a text frame in one chunk: the text frame counts.
        let mut both = with_opcode(0x9, 0);
        both.extend(with_opcode(0x1, 300));
        assert!(FrameTracker::new().observe(&both));
    }

    #[test]
    fn close_frame_layout_and_reason_cap() {
        let f = close_frame(4002, "session revoked");
        assert_eq!(&f[..4], &[0x88, 17, 0x0f, 0xa2]);
        assert_eq!(&f[4..], b"session revoked");
        let long = "é".repeat(100);
        let f = close_frame(4001, &long);
        assert!(f.len() - 2 <= 125);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}

/// Property tests (issue 13 item 10): the tracker on arbitrary streams.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// One frame header (any opcode, masked or not, every length form) and
    /// a short payload.
    fn frame() -> impl Strategy<Value = (Vec<u8>, bool)> {
        (
            0u8..16,
            any::<bool>(),
            prop_oneof![0usize..126, 126usize..300, Just(65536usize)],
        )
            .prop_map(|(opcode, masked, len)| {
                let mut f = vec![0x80 | opcode];
                let m = if masked { 0x80 } else { 0 };
                if len < 126 {
                    f.push(m | len as u8);
                } else if len <= 0xffff {
                    f.push(m | 126);
                    f.extend_from_slice(&(len as u16).to_be_bytes());
                } else {
                    f.push(m | 127);
                    f.extend_from_slice(&(len as u64).to_be_bytes());
                }
                if masked {
                    f.extend_from_slice(&[9, 8, 7, 6]);
                }
                f.extend(std::iter::repeat_n(0x81, len));
                (f, opcode <= 2)
            })
    }

    fn chunks(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut start = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            out.push(data[start..c].to_vec());
            start = c;
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Split anywhere, the tracker decides as it does on the whole
        /// stream: after each chunk, as on that prefix fed at once, and
        /// the data frames noticed are the same.
        #[test]
        fn splitting_never_changes_decisions(
            data in prop::collection::vec(any::<u8>(), 0..200),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut whole = FrameTracker::new();
            let whole_data = whole.observe(&data);
            let mut split = FrameTracker::new();
            let mut fed = 0;
            let mut split_data = false;
            for chunk in chunks(&data, &cuts) {
                split_data |= split.observe(&chunk);
                fed += chunk.len();
                let mut prefix = FrameTracker::new();
                prefix.observe(&data[..fed]);
                prop_assert_eq!(split.at_boundary(), prefix.at_boundary(), "after {} bytes", fed);
            }
            prop_assert_eq!(split.at_boundary(), whole.at_boundary());
            prop_assert_eq!(split_data, whole_data);
        }

        /// On well-formed streams fed byte by byte, the boundaries are
        /// exactly the frame ends and the data frames are the ones noticed.
        #[test]
        fn boundaries_are_exactly_frame_ends(frames in prop::collection::vec(frame(), 0..6)) {
            let mut stream = Vec::new();
            let mut ends = vec![0];
            for (f, _) in &frames {
                stream.extend_from_slice(f);
                ends.push(stream.len());
            }
            let mut t = FrameTracker::new();
            let mut boundaries = vec![0];
            for (i, b) in stream.iter().enumerate() {
                t.observe(std::slice::from_ref(b));
                if t.at_boundary() {
                    boundaries.push(i + 1);
                }
            }
            prop_assert_eq!(boundaries, ends);
            let any_data = frames.iter().any(|(_, d)| *d);
            prop_assert_eq!(FrameTracker::new().observe(&stream), any_data);
        }
    }
}
