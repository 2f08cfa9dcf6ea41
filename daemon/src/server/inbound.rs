//! Input of one connection: bytes read from the socket and cut into frames,
//! within bounded memory.
//!
//! Bytes are read straight into the connection's buffer, after those it
//! holds: the buffer is zeroed once, when it grows, not at every read. Taking
//! a frame only moves the buffer's start past it; what is left moves to the
//! front once, before the next read, so a read of many pipelined frames is
//! not copied again for each frame taken. The buffer is 16-byte aligned: a
//! frame that starts at a multiple of 16 has its payload (after the 16-byte
//! header) aligned for rkyv and is decoded where it lies; any other payload is
//! copied into the caller's aligned scratch buffer first (one frame's bytes).
//!
//! Invariants:
//! - a connection buffers at most `SMALL_FRAME_BYTES` on its own; the bytes of
//!   a larger frame are buffered only once the shared `InputBudget` granted the
//!   whole frame, so partial frames never hold more than the budget plus
//!   `SMALL_FRAME_BYTES` per connection;
//! - the buffer grows only when the last read filled all the room it had (the
//!   socket may hold more), to twice its size and never past the frame being
//!   read (or `SMALL_FRAME_BYTES`), so what a connection holds follows what
//!   it sends;
//! - it never reads past the end of a granted frame, and the grant goes back to
//!   the budget as soon as the frame is complete (or the connection closes:
//!   `release_into`);
//! - a buffer that holds no bytes once the socket is drained keeps at most
//!   `KEPT_INPUT_BYTES`, so a busy connection reads its next requests without
//!   allocating, and an idle one costs at most that: 40 MiB at the default 20,000 connections, a
//!   thirty-second of the `SMALL_FRAME_BYTES` each may already hold in a
//!   partial frame. A connection holds none until it is first read.

use std::io::{self, Read};

use apiary_protocol::frame::{self, FrameError, FrameView, HEADER_BYTES};
use rkyv::util::AlignedVec;

use super::peer_limits::SMALL_FRAME_BYTES;

/// What an empty buffer keeps: several requests of a bot or a client.
pub const KEPT_INPUT_BYTES: usize = 2 << 10;
const _: () = assert!(HEADER_BYTES <= KEPT_INPUT_BYTES && KEPT_INPUT_BYTES <= SMALL_FRAME_BYTES);

/// Memory for partial frames larger than `SMALL_FRAME_BYTES`, shared by all connections.
#[derive(Debug)]
pub struct InputBudget {
    limit_bytes: usize,
    used_bytes: usize,
}

impl InputBudget {
    pub fn new(limit_bytes: usize) -> InputBudget {
        InputBudget { limit_bytes, used_bytes: 0 }
    }

    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    pub(super) fn try_take(&mut self, bytes: usize) -> bool {
        let fits = self.used_bytes + bytes <= self.limit_bytes;
        if fits {
            self.used_bytes += bytes;
        }
        fits
    }

    pub(super) fn give_back(&mut self, bytes: usize) {
        assert!(bytes <= self.used_bytes, "gave back {bytes} of {} bytes", self.used_bytes);
        self.used_bytes -= bytes;
    }
}

pub enum ReadOutcome {
    /// Bytes arrived (`read`, of the `asked` there was room for): look for
    /// frames, then read again.
    Read { read: usize, asked: usize },
    /// The socket has nothing more for now.
    Drained,
    /// The peer closed its side, or the socket failed.
    Closed,
    /// The peer broke the protocol under the frames (TLS): why, for the log.
    Broken(String),
    /// A frame of this many bytes waits for room in the input budget.
    NeedsMemory { frame_bytes: usize },
    /// A whole frame is buffered: take it before reading more.
    FrameReady,
}

#[derive(Default)]
pub struct Inbound {
    /// The bytes read and not yet taken are `buffer[start..filled]`; the rest
    /// is room for the next read.
    buffer: AlignedVec,
    start: usize,
    filled: usize,
    /// The last read took all the room it had: the next one gets more.
    last_read_filled: bool,
    /// Bytes of the budget held for the frame at the front of `buffer`.
    granted_bytes: usize,
}

impl Inbound {
    /// Reads what fits: up to the end of the frame at the front if it was
    /// granted, else up to `SMALL_FRAME_BYTES`. A header over `max_payload`
    /// is an error before any of its payload is read.
    pub fn read_from(
        &mut self,
        stream: &mut impl Read,
        budget: &mut InputBudget,
        max_payload: usize,
    ) -> Result<ReadOutcome, FrameError> {
        self.move_to_front();
        let target_bytes = match self.front_frame_bytes(max_payload)? {
            Some(frame_bytes) if frame_bytes > SMALL_FRAME_BYTES => {
                if self.granted_bytes < frame_bytes {
                    if !budget.try_take(frame_bytes - self.granted_bytes) {
                        return Ok(ReadOutcome::NeedsMemory { frame_bytes });
                    }
                    self.granted_bytes = frame_bytes;
                }
                frame_bytes
            }
            _ => SMALL_FRAME_BYTES,
        };
        if self.filled >= target_bytes {
            return Ok(ReadOutcome::FrameReady);
        }
        if self.filled == self.buffer.len() || self.last_read_filled {
            let grown = (2 * self.buffer.len()).max(KEPT_INPUT_BYTES).min(target_bytes);
            if grown > self.buffer.len() {
                self.resize_exact(grown);
            }
        }
        let room = self.filled..self.buffer.len().min(target_bytes);
        let asked = room.len();
        loop {
            return Ok(match stream.read(&mut self.buffer[room.clone()]) {
                Ok(0) => ReadOutcome::Closed,
                Ok(read) => {
                    self.filled += read;
                    self.last_read_filled = read == asked;
                    ReadOutcome::Read { read, asked }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.last_read_filled = false;
                    self.shrink_if_empty();
                    ReadOutcome::Drained
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == io::ErrorKind::InvalidData => ReadOutcome::Broken(error.to_string()),
                Err(_) => ReadOutcome::Closed,
            });
        }
    }

    /// Whether the bytes buffered start a TLS record: a TLS client on a plaintext port.
    pub fn starts_like_tls(&self) -> bool {
        apiary_protocol::tls::looks_like_tls(self.buffered())
    }

    /// The request line, if the bytes buffered start an HTTP request.
    pub fn http_request_line(&self) -> Option<String> {
        frame::http_request_line(self.buffered())
    }

    /// The whole frame at the front, if buffered: where it lies when its
    /// payload is aligned, else copied into `scratch`. `take_front` drops it
    /// once it is decoded.
    pub fn front_frame<'a>(
        &'a self,
        max_payload: usize,
        scratch: &'a mut AlignedVec,
    ) -> Result<Option<FrameView<'a>>, FrameError> {
        let Some(frame_bytes) = self.front_frame_bytes(max_payload)? else { return Ok(None) };
        let buffered = self.buffered();
        if buffered.len() < frame_bytes {
            return Ok(None);
        }
        let header = frame::parse_header(buffered.first_chunk().expect("a whole header"))?;
        let mut payload = &buffered[HEADER_BYTES..frame_bytes];
        if !(payload.as_ptr() as usize).is_multiple_of(16) {
            scratch.clear();
            scratch.extend_from_slice(payload);
            payload = scratch;
        }
        Ok(Some(FrameView { kind: header.kind, request_id: header.request_id, payload }))
    }

    /// Drops the whole frame at the front (`front_frame`): the start moves
    /// past it, and its grant goes back to the budget.
    pub fn take_front(&mut self, budget: &mut InputBudget) {
        let frame_bytes = self
            .front_frame_bytes(usize::MAX)
            .ok()
            .flatten()
            .filter(|&frame_bytes| frame_bytes <= self.buffered().len())
            .expect("a whole frame is at the front");
        self.start += frame_bytes;
        if self.start == self.filled {
            (self.start, self.filled) = (0, 0);
        }
        if self.granted_bytes > 0 {
            // Nothing is read past a granted frame; its room goes back with its grant.
            assert_eq!(self.filled, 0, "bytes after a granted frame");
            budget.give_back(std::mem::take(&mut self.granted_bytes));
            self.resize_exact(KEPT_INPUT_BYTES);
        } else if !self.last_read_filled {
            self.shrink_if_empty();
        }
    }

    /// Gives the grant back when the connection closes.
    pub fn release_into(&mut self, budget: &mut InputBudget) {
        budget.give_back(std::mem::take(&mut self.granted_bytes));
        *self = Inbound::default();
    }

    /// Memory this connection holds for partial input.
    #[cfg(test)]
    pub fn buffered_capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// The size of the frame at the front, once its header is here.
    fn front_frame_bytes(&self, max_payload: usize) -> Result<Option<usize>, FrameError> {
        let Some(header_bytes) = self.buffered().first_chunk::<HEADER_BYTES>() else { return Ok(None) };
        let header = frame::parse_header(header_bytes)?;
        if header.payload_len > max_payload {
            return Err(FrameError::TooLarge { len: header.payload_len, limit: max_payload });
        }
        Ok(Some(HEADER_BYTES + header.payload_len))
    }

    fn buffered(&self) -> &[u8] {
        &self.buffer[self.start..self.filled]
    }

    /// Moves the bytes not yet taken to the buffer's start, so the frame being
    /// read starts there (a granted frame's room is counted from there).
    fn move_to_front(&mut self) {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.filled, 0);
            (self.start, self.filled) = (0, self.filled - self.start);
        }
    }

    /// What a large frame or a burst made the buffer grow to goes back to the
    /// allocator once it holds nothing (and no more bytes are expected).
    fn shrink_if_empty(&mut self) {
        if self.filled == 0 && self.buffer.len() > KEPT_INPUT_BYTES {
            self.resize_exact(KEPT_INPUT_BYTES);
        }
    }

    /// Makes the buffer exactly `len` bytes long, and its allocation too (zeroing what is new).
    fn resize_exact(&mut self, len: usize) {
        assert!(self.filled <= len, "{} bytes buffered do not fit in {len}", self.filled);
        if len > self.buffer.capacity() {
            self.buffer.reserve_exact(len - self.buffer.len());
        }
        self.buffer.resize(len, 0);
        self.buffer.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use apiary_protocol::FrameKind;
    use apiary_protocol::limits::MAX_FRAME_PAYLOAD_BYTES;

    use super::*;

    /// A socket that hands out its bytes in the given pieces, then would block.
    struct Pieces(VecDeque<Vec<u8>>);

    impl Read for Pieces {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let Some(front) = self.0.front_mut() else { return Err(io::ErrorKind::WouldBlock.into()) };
            let taken = front.len().min(out.len());
            out[..taken].copy_from_slice(&front[..taken]);
            front.drain(..taken);
            if front.is_empty() {
                self.0.pop_front();
            }
            Ok(taken)
        }
    }

    fn frame_bytes(payload_len: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        frame::append_frame(FrameKind::Request, 9, &vec![7u8; payload_len], &mut bytes).unwrap();
        bytes
    }

    /// Takes the whole frames buffered, checking each payload is whole and aligned for rkyv.
    fn take_frames(inbound: &mut Inbound, budget: &mut InputBudget, frames: &mut Vec<usize>) {
        let mut scratch = AlignedVec::new();
        while let Some(frame) = inbound.front_frame(MAX_FRAME_PAYLOAD_BYTES, &mut scratch).unwrap() {
            assert_eq!(frame.payload.as_ptr() as usize % 16, 0, "a payload is 16-byte aligned");
            assert!(frame.payload.iter().all(|&byte| byte == 7), "the payload's own bytes");
            frames.push(frame.payload.len());
            inbound.take_front(budget);
        }
    }

    #[test]
    fn pipelined_frames_of_any_length_come_out_whole_from_one_read() {
        let mut budget = InputBudget::new(1 << 20);
        let lengths: Vec<usize> = (0..200).map(|index| 1 + index * 7 % 61).collect();
        let bytes: Vec<u8> = lengths.iter().flat_map(|&length| frame_bytes(length)).collect();
        let mut socket = Pieces(bytes.chunks(3000).map(<[u8]>::to_vec).collect());
        let mut inbound = Inbound::default();
        let (frames, waiting) = pump(&mut inbound, &mut socket, &mut budget);
        assert!(!waiting);
        assert_eq!(frames, lengths);
        assert_eq!(inbound.buffered().len(), 0);
    }

    /// Reads until the socket would block or memory runs out, taking frames as they come.
    fn pump(inbound: &mut Inbound, socket: &mut Pieces, budget: &mut InputBudget) -> (Vec<usize>, bool) {
        let mut frames = Vec::new();
        loop {
            take_frames(inbound, budget, &mut frames);
            match inbound.read_from(socket, budget, MAX_FRAME_PAYLOAD_BYTES).unwrap() {
                ReadOutcome::Read { .. } | ReadOutcome::FrameReady => {}
                ReadOutcome::NeedsMemory { .. } => return (frames, true),
                ReadOutcome::Drained | ReadOutcome::Closed | ReadOutcome::Broken(_) => return (frames, false),
            }
        }
    }

    #[test]
    fn small_frames_need_no_budget_and_large_ones_a_grant_given_back_when_complete() {
        let mut budget = InputBudget::new(2 << 20);
        let mut bytes = frame_bytes(10);
        bytes.extend(frame_bytes(1 << 20));
        bytes.extend(frame_bytes(3));
        let mut socket = Pieces(bytes.chunks(5000).map(<[u8]>::to_vec).collect());
        let mut inbound = Inbound::default();
        let (frames, waiting) = pump(&mut inbound, &mut socket, &mut budget);
        assert_eq!((frames, waiting), (vec![10, 1 << 20, 3], false));
        assert_eq!(budget.used_bytes(), 0);
        assert_eq!(inbound.buffered_capacity(), KEPT_INPUT_BYTES, "an idle connection keeps a small buffer");
        inbound.release_into(&mut budget);
        assert_eq!(inbound.buffered_capacity(), 0, "a closed one none");
    }

    #[test]
    fn requests_one_at_a_time_are_read_into_the_kept_buffer_and_a_burst_grows_it_for_a_while() {
        let mut budget = InputBudget::new(1 << 20);
        let mut inbound = Inbound::default();
        let mut frames = Vec::new();
        // Payloads of odd sizes, so that frames start anywhere in what was read.
        for payload_len in [301, 7, 150, 1000, 33] {
            let mut socket = Pieces(VecDeque::from([frame_bytes(payload_len)]));
            let (taken, waiting) = pump(&mut inbound, &mut socket, &mut budget);
            frames.extend(taken);
            assert!(!waiting);
            assert_eq!(inbound.buffered_capacity(), KEPT_INPUT_BYTES, "read without growing");
        }
        assert_eq!(frames, [301, 7, 150, 1000, 33]);
        // A burst of 100 frames of 500 bytes: read in pieces as large as the buffer, which doubles.
        let burst: Vec<u8> = (0..100).flat_map(|_| frame_bytes(500)).collect();
        let mut socket = Pieces(VecDeque::from([burst]));
        let mut sizes = Vec::new();
        let mut taken = Vec::new();
        loop {
            take_frames(&mut inbound, &mut budget, &mut taken);
            sizes.push(inbound.buffered_capacity());
            match inbound.read_from(&mut socket, &mut budget, MAX_FRAME_PAYLOAD_BYTES).unwrap() {
                ReadOutcome::Read { .. } | ReadOutcome::FrameReady => {}
                _ => break,
            }
        }
        assert_eq!(taken, vec![500; 100]);
        assert!(sizes.iter().all(|&size| size <= SMALL_FRAME_BYTES), "{sizes:?}");
        assert!(sizes.contains(&(16 << 10)), "the buffer doubled: {sizes:?}");
        assert_eq!(inbound.buffered_capacity(), KEPT_INPUT_BYTES, "and went back once emptied");
    }

    #[test]
    fn a_large_frame_waits_for_memory_holding_only_a_small_buffer() {
        let mut budget = InputBudget::new(1 << 20);
        let large = frame_bytes(2 << 20);
        let mut socket = Pieces(VecDeque::from([large[..large.len() - 1].to_vec()]));
        let mut inbound = Inbound::default();
        let (frames, waiting) = pump(&mut inbound, &mut socket, &mut budget);
        assert!(frames.is_empty() && waiting);
        assert!(inbound.buffered_capacity() <= SMALL_FRAME_BYTES, "{}", inbound.buffered_capacity());
        assert_eq!(budget.used_bytes(), 0);
    }

    #[test]
    fn partial_frames_hold_at_most_the_budget_and_closing_gives_it_back() {
        let mut budget = InputBudget::new(3 << 20);
        let mut connections: Vec<Inbound> = (0..5).map(|_| Inbound::default()).collect();
        let mut granted = 0;
        for inbound in &mut connections {
            let large = frame_bytes(1 << 20);
            let mut socket = Pieces(VecDeque::from([large[..large.len() - 1].to_vec()]));
            let (frames, waiting) = pump(inbound, &mut socket, &mut budget);
            assert!(frames.is_empty());
            granted += usize::from(!waiting);
            assert!(budget.used_bytes() <= budget.limit_bytes());
        }
        assert_eq!(granted, 2, "two frames of 1 MiB and a header fit in 3 MiB");
        let held: usize = connections.iter().map(Inbound::buffered_capacity).sum();
        assert!(held <= budget.limit_bytes() + 5 * SMALL_FRAME_BYTES, "{held}");
        for inbound in &mut connections {
            inbound.release_into(&mut budget);
        }
        assert_eq!(budget.used_bytes(), 0);
    }

    #[test]
    fn a_header_over_the_limit_is_refused_before_its_payload() {
        let mut budget = InputBudget::new(1 << 20);
        let mut socket = Pieces(VecDeque::from([frame_bytes(20_000)[..HEADER_BYTES].to_vec()]));
        let mut inbound = Inbound::default();
        let read = inbound.read_from(&mut socket, &mut budget, 16_384);
        assert!(matches!(read, Ok(ReadOutcome::Read { read: HEADER_BYTES, .. })));
        let refused = inbound.read_from(&mut socket, &mut budget, 16_384).err();
        assert_eq!(refused, Some(FrameError::TooLarge { len: 20_000, limit: 16_384 }));
    }
}
