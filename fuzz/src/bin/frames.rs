//! The frame tracker: any byte stream, cut anywhere, never a panic, and the
//! same answers whether fed whole or in two pieces.
use portcullis::proxy::frames::FrameTracker;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if data.is_empty() {
            return;
        }
        let cut = usize::from(data[0]) % data.len();
        let stream = &data[1..];
        let mut whole = FrameTracker::new();
        whole.observe(stream);
        let mut split = FrameTracker::new();
        let cut = cut.min(stream.len());
        split.observe(&stream[..cut]);
        split.observe(&stream[cut..]);
        assert_eq!(whole.at_boundary(), split.at_boundary());
    });
}
