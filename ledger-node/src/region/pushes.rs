//! Journal pushes a region took together: the frames an edge pushed while the region was
//! busy, consecutive ones joined into one (one signature check, one durable commit, one
//! ack for all of them). It only groups frames; verifying them is `replicas::prepare`'s.

use bridge::{Frame, MAX_FRAME_ENTRIES};

/// Pushes taken together, in the order they came: each one that continues the frame before
/// it (its first entry right after that one's last) joins it, up to `MAX_FRAME_ENTRIES`
/// entries, and the joined frame keeps the later trailer, whose signed head vouches for
/// every entry before it that links up to it (`replicas::prepare` keeps none of a signed
/// frame that does not link whole). Anything else starts a frame of its own;
/// `apply` skips what the replica has and stops at a gap, as for single pushes.
#[derive(Default)]
pub struct Coalesced {
    frames: Vec<Frame>,
    pushes: usize,
}

impl Coalesced {
    pub fn add(&mut self, decoded: Result<Frame, String>) {
        self.pushes += 1;
        let frame = match decoded {
            Ok(frame) => frame,
            // The range fetch makes up for it.
            Err(e) => return tracing::warn!("journal push dropped: {e}"),
        };
        let Some(first) = frame.first_seq() else { return };
        if let Some(last) = self.frames.last_mut() {
            let continues = last.last_seq().and_then(|seq| seq.checked_add(1)) == Some(first);
            let signed_alike = last.trailer().is_some() == frame.trailer().is_some();
            if continues && signed_alike && last.len() + frame.len() <= MAX_FRAME_ENTRIES {
                last.join(frame);
                return;
            }
        }
        self.frames.push(frame);
    }

    pub fn queued(&self) -> usize {
        self.pushes
    }

    pub fn into_frames(self) -> Vec<Frame> {
        self.frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge::{encode_frame, PROOF_SEQ};

    fn push(seqs: std::ops::RangeInclusive<u64>, trailer: Option<&[u8]>) -> Result<Frame, String> {
        let bodies: Vec<(u64, Vec<u8>)> =
            seqs.map(|seq| (seq, seq.to_be_bytes().to_vec())).chain(trailer.map(|t| (PROOF_SEQ, t.to_vec()))).collect();
        Frame::decode(encode_frame(bodies.iter().map(|(seq, b)| (*seq, &b[..]))))
    }

    fn shape(frames: &[Frame]) -> Vec<(u64, u64, Option<Vec<u8>>)> {
        frames.iter().map(|f| (f.first_seq().expect("entries"), f.last_seq().expect("entries"), f.trailer().map(<[u8]>::to_vec))).collect()
    }

    #[test]
    fn consecutive_pushes_join_under_the_later_signature_and_the_rest_stay_apart() {
        let mut c = Coalesced::default();
        c.add(push(1..=3, Some(b"head-3")));
        c.add(push(4..=4, Some(b"head-4")));
        // A gap (5 was dropped from the ring): its own frame, for apply to stop at.
        c.add(push(6..=7, Some(b"head-7")));
        // An overlap (a push repeating 7): its own frame too.
        c.add(push(7..=8, Some(b"head-8")));
        // Unsigned after signed never joins (the signature would be lost).
        c.add(push(9..=9, None));
        c.add(Err("bad frame".to_string()));
        assert_eq!(c.queued(), 6);
        assert_eq!(
            shape(&c.into_frames()),
            vec![(1, 4, Some(b"head-4".to_vec())), (6, 7, Some(b"head-7".to_vec())), (7, 8, Some(b"head-8".to_vec())), (9, 9, None)]
        );
    }

    #[test]
    fn a_joined_frame_stays_within_the_frame_limit() {
        let mut c = Coalesced::default();
        let half = MAX_FRAME_ENTRIES as u64 / 2;
        c.add(push(1..=half, None));
        c.add(push(half + 1..=2 * half, None));
        c.add(push(2 * half + 1..=2 * half + 1, None));
        let frames = c.into_frames();
        assert_eq!(frames.iter().map(Frame::len).collect::<Vec<_>>(), vec![2 * half as usize, 1]);
    }
}
