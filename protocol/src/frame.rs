//! Framing: a fixed 16-byte little-endian header, then an rkyv payload.
//!
//! ```text
//! offset size field
//!      0    4 payload_len   bytes after the header, at most MAX_FRAME_PAYLOAD_BYTES
//!      4    2 kind          1 hello, 2 request, 3 reply
//!      6    2 reserved      0
//!      8    8 request_id    echoed by the reply; 0 for the hello
//! ```
//! Payloads are validated (bytecheck) before use: bytes from the network are
//! never trusted, and a bad frame is a typed error, never a panic.

use rkyv::api::high::HighSerializer;
use rkyv::rancor;
use rkyv::ser::Serializer;
use rkyv::ser::allocator::{Arena, ArenaHandle};
use rkyv::ser::sharing::Share;
use rkyv::util::AlignedVec;

use crate::limits::MAX_FRAME_PAYLOAD_BYTES;
use crate::messages::{Hello, Reply, Request};

pub const HEADER_BYTES: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Hello = 1,
    Request = 2,
    Reply = 3,
}

impl FrameKind {
    fn from_u16(raw: u16) -> Option<FrameKind> {
        match raw {
            1 => Some(FrameKind::Hello),
            2 => Some(FrameKind::Request),
            3 => Some(FrameKind::Reply),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame payload of {len} bytes is over the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u16),
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("invalid {what} payload: {reason}")]
    InvalidPayload { what: &'static str, reason: String },
    #[error("could not encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
}

/// One whole frame, its payload copied into aligned memory for rkyv.
#[derive(Debug)]
pub struct Frame {
    pub kind: FrameKind,
    pub request_id: u64,
    pub payload: AlignedVec,
}

impl Frame {
    pub fn view(&self) -> FrameView<'_> {
        FrameView { kind: self.kind, request_id: self.request_id, payload: &self.payload }
    }
    pub fn decode_hello(&self) -> Result<Hello, FrameError> {
        self.view().decode_hello()
    }
    pub fn decode_request(&self) -> Result<Request, FrameError> {
        self.view().decode_request()
    }
    pub fn decode_reply(&self) -> Result<Reply, FrameError> {
        self.view().decode_reply()
    }
}

/// One whole frame where it lies in a reader's buffer, decoded from there
/// without a copy. rkyv needs the payload 16-byte aligned: one that is not
/// fails to decode (a typed error, as any bad payload).
#[derive(Clone, Copy, Debug)]
pub struct FrameView<'a> {
    pub kind: FrameKind,
    pub request_id: u64,
    pub payload: &'a [u8],
}

impl FrameView<'_> {
    pub fn decode_hello(&self) -> Result<Hello, FrameError> {
        rkyv::from_bytes::<Hello, rancor::Error>(self.payload).map_err(|e| invalid("hello", e))
    }
    pub fn decode_request(&self) -> Result<Request, FrameError> {
        rkyv::from_bytes::<Request, rancor::Error>(self.payload).map_err(|e| invalid("request", e))
    }
    pub fn decode_reply(&self) -> Result<Reply, FrameError> {
        rkyv::from_bytes::<Reply, rancor::Error>(self.payload).map_err(|e| invalid("reply", e))
    }
}

fn invalid(what: &'static str, error: rancor::Error) -> FrameError {
    FrameError::InvalidPayload { what, reason: error.to_string() }
}

fn encode_error(what: &'static str, error: rancor::Error) -> FrameError {
    FrameError::Encode { what, reason: error.to_string() }
}

pub fn encode_hello(hello: &Hello, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let payload = rkyv::to_bytes::<rancor::Error>(hello).map_err(|e| encode_error("hello", e))?;
    append_frame(FrameKind::Hello, 0, &payload, out)
}

pub fn encode_request(request_id: u64, request: &Request, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let payload = rkyv::to_bytes::<rancor::Error>(request).map_err(|e| encode_error("request", e))?;
    append_frame(FrameKind::Request, request_id, &payload, out)
}

pub fn encode_reply(request_id: u64, reply: &Reply, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let payload = rkyv::to_bytes::<rancor::Error>(reply).map_err(|e| encode_error("reply", e))?;
    append_frame(FrameKind::Reply, request_id, &payload, out)
}

/// Encodes reply frames with memory it keeps from one frame to the next: the
/// payload buffer, the serializer's scratch space and its map of shared
/// pointers. A frame then costs one allocation, the frame itself, where
/// `encode_reply` grows a fresh payload buffer step by step and copies it.
/// What one large reply made it grow to is let go past `KEPT_ENCODER_BYTES`.
pub struct FrameEncoder {
    payload: AlignedVec,
    arena: Arena,
    share: Share,
}

/// Memory an encoder keeps for its payload buffer and its scratch space each.
pub const KEPT_ENCODER_BYTES: usize = 64 << 10;

impl Default for FrameEncoder {
    fn default() -> FrameEncoder {
        FrameEncoder { payload: AlignedVec::new(), arena: Arena::new(), share: Share::new() }
    }
}

impl FrameEncoder {
    /// The frame of a reply, in a buffer of its own size.
    pub fn reply(&mut self, request_id: u64, reply: &Reply) -> Result<Vec<u8>, FrameError> {
        self.serialize(reply).map_err(|e| encode_error("reply", e))?;
        let mut frame = Vec::with_capacity(HEADER_BYTES + self.payload.len());
        let appended = append_frame(FrameKind::Reply, request_id, &self.payload, &mut frame);
        self.let_go_of_large_buffers();
        appended.map(|()| frame)
    }

    fn serialize<T>(&mut self, value: &T) -> Result<(), rancor::Error>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<&'a mut AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        self.payload.clear();
        let share = std::mem::take(&mut self.share);
        let mut serializer = Serializer::new(&mut self.payload, self.arena.acquire(), share);
        let serialized = rkyv::api::serialize_using(value, &mut serializer).map(|_| ());
        self.share = serializer.sharing;
        self.share.clear();
        serialized
    }

    fn let_go_of_large_buffers(&mut self) {
        if self.payload.capacity() > KEPT_ENCODER_BYTES {
            self.payload = AlignedVec::new();
        }
        if self.arena.capacity() > KEPT_ENCODER_BYTES {
            self.arena = Arena::new();
        }
    }
}

/// Appends header and payload; refuses payloads over the limit.
pub fn append_frame(kind: FrameKind, request_id: u64, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if payload.len() > MAX_FRAME_PAYLOAD_BYTES {
        return Err(FrameError::TooLarge { len: payload.len(), limit: MAX_FRAME_PAYLOAD_BYTES });
    }
    out.reserve(HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&(kind as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// A parsed header; checked before any payload byte is awaited, so an
/// oversized or unknown frame is refused at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub payload_len: usize,
    pub kind: FrameKind,
    pub request_id: u64,
}

/// The request line, if `bytes` start like an HTTP request (`GET / HTTP/1.1`): a
/// peer that is no Apiary program, whose first bytes would read as a huge frame.
pub fn http_request_line(bytes: &[u8]) -> Option<String> {
    let method_len = bytes.iter().position(|&byte| byte == b' ')?;
    let method = &bytes[..method_len];
    if !(3..=7).contains(&method_len) || !method.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    let line_len = bytes.iter().position(|&byte| byte == b'\r' || byte == b'\n').unwrap_or(bytes.len());
    const SHOWN_BYTES: usize = 100;
    let line = String::from_utf8_lossy(&bytes[..line_len.min(SHOWN_BYTES)]);
    Some(line.chars().map(|c| if c.is_control() { ' ' } else { c }).collect())
}

pub fn parse_header(bytes: &[u8; HEADER_BYTES]) -> Result<Header, FrameError> {
    let payload_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let kind_raw = u16::from_le_bytes(bytes[4..6].try_into().expect("2 bytes"));
    let reserved = u16::from_le_bytes(bytes[6..8].try_into().expect("2 bytes"));
    let request_id = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if payload_len > MAX_FRAME_PAYLOAD_BYTES {
        return Err(FrameError::TooLarge { len: payload_len, limit: MAX_FRAME_PAYLOAD_BYTES });
    }
    let kind = FrameKind::from_u16(kind_raw).ok_or(FrameError::UnknownKind(kind_raw))?;
    if reserved != 0 {
        return Err(FrameError::ReservedNotZero);
    }
    Ok(Header { payload_len, kind, request_id })
}

/// Collects bytes as they arrive and cuts them into frames. Bytes may be split
/// anywhere; after an error the connection is to be closed.
#[derive(Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
    /// Where the unparsed bytes start in `buffer`.
    start: usize,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len() - self.start
    }

    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let pending = &self.buffer[self.start..];
        let Some(header_bytes) = pending.first_chunk::<HEADER_BYTES>() else {
            return Ok(None);
        };
        let header = parse_header(header_bytes)?;
        let frame_len = HEADER_BYTES + header.payload_len;
        if pending.len() < frame_len {
            return Ok(None);
        }
        let mut payload = AlignedVec::with_capacity(header.payload_len);
        payload.extend_from_slice(&pending[HEADER_BYTES..frame_len]);
        self.start += frame_len;
        self.compact_if_worthwhile();
        Ok(Some(Frame { kind: header.kind, request_id: header.request_id, payload }))
    }

    /// Moves unparsed bytes to the front once the consumed part dominates, so the
    /// buffer does not grow without bound on a busy connection.
    fn compact_if_worthwhile(&mut self) {
        if self.start >= 64 << 10 && self.start * 2 >= self.buffer.len() {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::messages::{NewTaskAck, NewTaskRequest, Role, TaskSlice, TaskState};
    use proptest::prelude::*;

    fn sample_request() -> Request {
        let mut request = NewTaskRequest { name: "hello".into(), ..NewTaskRequest::default() };
        request.task_slices.push(TaskSlice::default());
        Arc::make_mut(&mut request.task_slices[0].properties).command = vec!["echo".into(), "hi".into()];
        Request::NewTask(request)
    }

    #[test]
    fn frames_round_trip_when_split_anywhere() {
        let mut bytes = Vec::new();
        encode_hello(&Hello::new(Role::Client, "test"), &mut bytes).unwrap();
        encode_request(7, &sample_request(), &mut bytes).unwrap();
        for split in 0..=bytes.len() {
            let mut reader = FrameReader::new();
            let mut frames = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                reader.extend(part);
                while let Some(frame) = reader.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames.len(), 2, "split at {split}");
            assert_eq!(frames[0].decode_hello().unwrap(), Hello::new(Role::Client, "test"));
            assert_eq!(frames[1].request_id, 7);
            assert_eq!(frames[1].decode_request().unwrap(), sample_request());
        }
    }

    #[test]
    fn a_new_tasks_acknowledgement_is_small_on_the_wire() {
        // A reply is archived as large as `Reply`'s largest variant: a large
        // payload added unboxed would make every acknowledgement carry it.
        let ack = Reply::Created(NewTaskAck { task_id: 10, state: TaskState::Pending, deduped_from: Some(20) });
        let mut bytes = Vec::new();
        encode_reply(3, &ack, &mut bytes).unwrap();
        assert!(bytes.len() <= 64, "{} bytes", bytes.len());
    }

    #[test]
    fn a_reused_encoder_makes_the_frames_a_fresh_one_makes() {
        let mut encoder = FrameEncoder::default();
        let mut large = NewTaskRequest { name: "x".repeat(200 << 10), ..NewTaskRequest::default() };
        large.task_slices.push(TaskSlice::default());
        // Two slices share their properties: each frame holds them once, on its own.
        let Request::NewTask(mut shared) = sample_request() else { unreachable!() };
        shared.task_slices.push(TaskSlice { expiration_secs: 1, ..shared.task_slices[0].clone() });
        let replies = [
            Reply::ValidRequest(Box::new(large)),
            Reply::ValidRequest(Box::new(shared.clone())),
            Reply::Welcome { server_software: "test".into() },
            Reply::ValidRequest(Box::new(shared)),
            Reply::NoWork,
        ];
        for (request_id, reply) in replies.iter().enumerate() {
            let mut fresh = Vec::new();
            encode_reply(request_id as u64, reply, &mut fresh).unwrap();
            assert_eq!(encoder.reply(request_id as u64, reply).unwrap(), fresh, "reply {request_id}");
            assert!(encoder.payload.capacity() <= KEPT_ENCODER_BYTES && encoder.arena.capacity() <= KEPT_ENCODER_BYTES);
        }
    }

    #[test]
    fn oversized_header_is_refused_before_the_payload_arrives() {
        let mut header = [0u8; HEADER_BYTES];
        header[0..4].copy_from_slice(&(MAX_FRAME_PAYLOAD_BYTES as u32 + 1).to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes());
        let mut reader = FrameReader::new();
        reader.extend(&header);
        assert!(matches!(reader.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn unknown_kind_and_reserved_bits_are_refused() {
        let mut header = [0u8; HEADER_BYTES];
        header[4..6].copy_from_slice(&9u16.to_le_bytes());
        assert_eq!(parse_header(&header), Err(FrameError::UnknownKind(9)));
        header[4..6].copy_from_slice(&2u16.to_le_bytes());
        header[6] = 1;
        assert_eq!(parse_header(&header), Err(FrameError::ReservedNotZero));
    }

    #[test]
    fn truncated_payloads_are_errors_not_panics() {
        let mut bytes = Vec::new();
        encode_request(1, &sample_request(), &mut bytes).unwrap();
        let payload = &bytes[HEADER_BYTES..];
        for cut in 0..payload.len() {
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(&payload[..cut]);
            let frame = Frame { kind: FrameKind::Request, request_id: 1, payload: aligned };
            assert!(frame.decode_request().is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn a_view_decodes_in_place_and_a_misaligned_payload_is_an_error() {
        let mut bytes = Vec::new();
        encode_request(4, &sample_request(), &mut bytes).unwrap();
        let payload = &bytes[HEADER_BYTES..];
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&[0]);
        aligned.extend_from_slice(payload);
        let view = |payload| FrameView { kind: FrameKind::Request, request_id: 4, payload };
        assert_eq!(
            view(&aligned[1..]).decode_request().err().map(|e| matches!(e, FrameError::InvalidPayload { .. })),
            Some(true)
        );
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(payload);
        assert_eq!(view(&aligned).decode_request().unwrap(), sample_request());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut reader = FrameReader::new();
            reader.extend(&bytes);
            while let Ok(Some(frame)) = reader.next_frame() {
                let _ = frame.decode_hello();
                let _ = frame.decode_request();
                let _ = frame.decode_reply();
            }
        }

        #[test]
        fn random_payloads_behind_valid_headers_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let mut bytes = Vec::new();
            append_frame(FrameKind::Request, 3, &payload, &mut bytes).unwrap();
            let mut reader = FrameReader::new();
            reader.extend(&bytes);
            let frame = reader.next_frame().unwrap().unwrap();
            let _ = frame.decode_request();
            let _ = frame.decode_reply();
            let _ = frame.decode_hello();
        }
    }

    #[test]
    fn an_http_request_is_told_from_a_frame() {
        let line = http_request_line(b"GET /api/swarming/v1/server/details HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(line.as_deref(), Some("GET /api/swarming/v1/server/details HTTP/1.1"));
        assert_eq!(http_request_line(b"POST /prpc HTTP/1.1").as_deref(), Some("POST /prpc HTTP/1.1"));
        assert_eq!(http_request_line(b"GET "), Some("GET ".to_string()));
        let mut frame = Vec::new();
        frame.extend_from_slice(&40u32.to_le_bytes());
        frame.extend_from_slice(&1u16.to_le_bytes());
        frame.extend_from_slice(&[0; 10]);
        assert_eq!(http_request_line(&frame), None);
        assert_eq!(http_request_line(b"get / HTTP/1.1"), None);
        assert_eq!(http_request_line(b"GET"), None);
    }
}
