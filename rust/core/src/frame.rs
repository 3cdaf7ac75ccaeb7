//! Server-to-client WebSocket framing (RFC 6455 §5.2): unmasked, final frames only; a
//! text frame's payload may be compressed (RSV1 set, RFC 7692 §6).

use std::fmt;
use std::rc::Rc;

const FIN_TEXT: u8 = 0x81;
/// FIN, RSV1 ("per-message compressed"), text.
const FIN_RSV1_TEXT: u8 = 0xc1;
const FIN_PING: u8 = 0x89;

/// Length of the header of a text frame carrying `payload_len` bytes.
pub fn text_header_len(payload_len: usize) -> usize {
    if payload_len < 126 {
        2
    } else if payload_len <= usize::from(u16::MAX) {
        4
    } else {
        10
    }
}

/// Total length of a text frame carrying `payload_len` bytes.
pub fn text_frame_len(payload_len: usize) -> usize {
    text_header_len(payload_len) + payload_len
}

/// Writes a text frame carrying `payload` into `out`, which must be exactly
/// [`text_frame_len`]`(payload.len())` bytes long.
pub fn encode_text(payload: &[u8], out: &mut [u8]) {
    encode(FIN_TEXT, payload, out);
}

fn encode(first: u8, payload: &[u8], out: &mut [u8]) {
    let len = payload.len();
    let header = text_header_len(len);
    debug_assert_eq!(out.len(), header + len);
    out[0] = first;
    match header {
        2 => out[1] = len as u8,
        4 => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out[header..].copy_from_slice(payload);
}

/// A text frame carrying `payload`, as an owned buffer.
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0; text_frame_len(payload.len())];
    encode_text(payload, &mut out);
    out
}

/// A framed message, shared by reference between every connection it is queued for.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Rc<[u8]>);

impl Frame {
    /// Frames `payload` as one text frame (one allocation).
    pub fn text(payload: &[u8]) -> Frame {
        Frame::build(FIN_TEXT, payload)
    }

    /// Frames `deflated`, a message's RFC 7692 compressed payload, as one text frame with
    /// RSV1 set.
    pub fn deflated_text(deflated: &[u8]) -> Frame {
        Frame::build(FIN_RSV1_TEXT, deflated)
    }

    fn build(first: u8, payload: &[u8]) -> Frame {
        let mut bytes: Rc<[u8]> = std::iter::repeat_n(0, text_frame_len(payload.len())).collect();
        // A freshly collected Rc is unique, so this always succeeds.
        if let Some(buf) = Rc::get_mut(&mut bytes) {
            encode(first, payload, buf);
        }
        Frame(bytes)
    }

    /// True for a frame whose payload is compressed (RSV1).
    pub fn is_deflated(&self) -> bool {
        self.0.first().is_some_and(|b| b & 0x40 != 0)
    }

    /// An empty ping frame.
    pub fn ping() -> Frame {
        Frame(Rc::from(&[FIN_PING, 0][..]))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The payload of a text frame (the bytes after its header).
    pub fn text_payload(&self) -> &[u8] {
        let header = match self.0.get(1).map(|b| b & 0x7f) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        self.0.get(header..).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True while another connection (or the caller) still holds this frame.
    pub fn is_shared(&self) -> bool {
        Rc::strong_count(&self.0) > 1
    }

    /// True if both are the same allocation (the same message), not merely equal bytes.
    pub fn same(&self, other: &Frame) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    /// Address of the shared allocation; a cache key while the frame is alive.
    pub fn addr(&self) -> usize {
        self.0.as_ptr() as usize
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_payload_has_seven_bit_length() {
        assert_eq!(text_frame(b"hi"), vec![0x81, 2, b'h', b'i']);
        assert_eq!(text_frame(b""), vec![0x81, 0]);
        assert_eq!(text_frame(&[7; 125])[..2], [0x81, 125]);
    }

    #[test]
    fn medium_payload_has_sixteen_bit_length() {
        let frame = text_frame(&[1; 126]);
        assert_eq!(frame[..4], [0x81, 126, 0, 126]);
        assert_eq!(frame.len(), 130);
        let frame = text_frame(&[1; 65535]);
        assert_eq!(frame[..4], [0x81, 126, 0xff, 0xff]);
    }

    #[test]
    fn large_payload_has_sixty_four_bit_length() {
        let frame = text_frame(&[1; 65536]);
        assert_eq!(frame[..10], [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(frame.len(), 65546);
    }

    #[test]
    fn shared_frame_matches_owned_frame() {
        for len in [0, 1, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(Frame::text(&payload).as_bytes(), &text_frame(&payload)[..]);
        }
    }

    #[test]
    fn text_payload_is_what_was_framed() {
        for len in [0, 1, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(Frame::text(&payload).text_payload(), &payload[..]);
        }
    }

    #[test]
    fn deflated_frame_sets_rsv1_only() {
        let frame = Frame::deflated_text(&[9; 200]);
        assert_eq!(frame.as_bytes()[..4], [0xc1, 126, 0, 200]);
        assert_eq!(frame.text_payload(), &[9; 200][..]);
        assert!(frame.is_deflated() && !Frame::text(b"x").is_deflated());
    }

    #[test]
    fn ping_is_empty_control_frame() {
        assert_eq!(Frame::ping().as_bytes(), &[0x89, 0]);
    }

    #[test]
    fn clones_are_the_same_message() {
        let a = Frame::text(b"x");
        let b = a.clone();
        assert!(a.same(&b) && a.is_shared());
        assert!(!a.same(&Frame::text(b"x")));
        drop(b);
        assert!(!a.is_shared());
    }
}
