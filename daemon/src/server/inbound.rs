//! Input of one connection: bytes read from the socket and cut into frames,
//! within bounded memory.
//!
//! Invariants:
//! - a connection buffers at most `SMALL_FRAME_BYTES` on its own; the bytes of
//!   a larger frame are buffered only once the shared `InputBudget` granted the
//!   whole frame, so partial frames never hold more than the budget plus
//!   `SMALL_FRAME_BYTES` per connection;
//! - it never reads past the end of a granted frame, and the grant goes back to
//!   the budget as soon as the frame is complete (or the connection closes:
//!   `release_into`);
//! - an empty buffer holds no memory, so an idle connection costs none.

use std::io::{self, Read};

use apiary_protocol::Frame;
use apiary_protocol::frame::{self, FrameError, HEADER_BYTES};
use rkyv::util::AlignedVec;

use super::peer_limits::SMALL_FRAME_BYTES;

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

    fn try_take(&mut self, bytes: usize) -> bool {
        let fits = self.used_bytes + bytes <= self.limit_bytes;
        if fits {
            self.used_bytes += bytes;
        }
        fits
    }

    fn give_back(&mut self, bytes: usize) {
        assert!(bytes <= self.used_bytes, "gave back {bytes} of {} bytes", self.used_bytes);
        self.used_bytes -= bytes;
    }
}

pub enum ReadOutcome {
    /// Bytes arrived: look for frames, then read again.
    Read(usize),
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
    buffer: Vec<u8>,
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
        let target_bytes = match self.front_frame_bytes(max_payload)? {
            Some(frame_bytes) if frame_bytes > SMALL_FRAME_BYTES => {
                if self.granted_bytes < frame_bytes {
                    if !budget.try_take(frame_bytes - self.granted_bytes) {
                        return Ok(ReadOutcome::NeedsMemory { frame_bytes });
                    }
                    self.granted_bytes = frame_bytes;
                    self.buffer.reserve_exact(frame_bytes - self.buffer.len());
                }
                frame_bytes
            }
            _ => SMALL_FRAME_BYTES,
        };
        let room = target_bytes.saturating_sub(self.buffer.len());
        if room == 0 {
            return Ok(ReadOutcome::FrameReady);
        }
        let mut chunk = [0u8; SMALL_FRAME_BYTES];
        let want = room.min(chunk.len());
        loop {
            return Ok(match stream.read(&mut chunk[..want]) {
                Ok(0) => ReadOutcome::Closed,
                Ok(read) => {
                    self.buffer.extend_from_slice(&chunk[..read]);
                    ReadOutcome::Read(read)
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => ReadOutcome::Drained,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if error.kind() == io::ErrorKind::InvalidData => ReadOutcome::Broken(error.to_string()),
                Err(_) => ReadOutcome::Closed,
            });
        }
    }

    /// Whether the bytes buffered start a TLS record: a TLS client on a plaintext port.
    pub fn starts_like_tls(&self) -> bool {
        apiary_protocol::tls::looks_like_tls(&self.buffer)
    }

    /// The next whole frame, if buffered; its grant goes back to the budget.
    pub fn next_frame(&mut self, budget: &mut InputBudget, max_payload: usize) -> Result<Option<Frame>, FrameError> {
        let Some(frame_bytes) = self.front_frame_bytes(max_payload)? else { return Ok(None) };
        if self.buffer.len() < frame_bytes {
            return Ok(None);
        }
        let header = frame::parse_header(self.buffer.first_chunk().expect("a whole header"))?;
        let mut payload = AlignedVec::with_capacity(header.payload_len);
        payload.extend_from_slice(&self.buffer[HEADER_BYTES..frame_bytes]);
        self.buffer.drain(..frame_bytes);
        if self.granted_bytes > 0 {
            budget.give_back(self.granted_bytes);
            self.granted_bytes = 0;
            // The large frame's room goes back to the allocator too.
            self.buffer.shrink_to(SMALL_FRAME_BYTES);
        }
        if self.buffer.is_empty() {
            self.buffer = Vec::new();
        }
        Ok(Some(Frame { kind: header.kind, request_id: header.request_id, payload }))
    }

    /// Gives the grant back when the connection closes.
    pub fn release_into(&mut self, budget: &mut InputBudget) {
        budget.give_back(std::mem::take(&mut self.granted_bytes));
        self.buffer = Vec::new();
    }

    /// Memory this connection holds for partial input.
    #[cfg(test)]
    pub fn buffered_capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// The size of the frame at the front, once its header is here.
    fn front_frame_bytes(&self, max_payload: usize) -> Result<Option<usize>, FrameError> {
        let Some(header_bytes) = self.buffer.first_chunk::<HEADER_BYTES>() else { return Ok(None) };
        let header = frame::parse_header(header_bytes)?;
        if header.payload_len > max_payload {
            return Err(FrameError::TooLarge { len: header.payload_len, limit: max_payload });
        }
        Ok(Some(HEADER_BYTES + header.payload_len))
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

    /// Reads until the socket would block or memory runs out, taking frames as they come.
    fn pump(inbound: &mut Inbound, socket: &mut Pieces, budget: &mut InputBudget) -> (Vec<usize>, bool) {
        let mut frames = Vec::new();
        loop {
            while let Some(frame) = inbound.next_frame(budget, MAX_FRAME_PAYLOAD_BYTES).unwrap() {
                frames.push(frame.payload.len());
            }
            match inbound.read_from(socket, budget, MAX_FRAME_PAYLOAD_BYTES).unwrap() {
                ReadOutcome::Read(_) | ReadOutcome::FrameReady => {}
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
        assert_eq!(inbound.buffered_capacity(), 0, "an idle connection holds no input memory");
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
        assert!(matches!(inbound.read_from(&mut socket, &mut budget, 16_384), Ok(ReadOutcome::Read(HEADER_BYTES))));
        let refused = inbound.read_from(&mut socket, &mut budget, 16_384).err();
        assert_eq!(refused, Some(FrameError::TooLarge { len: 20_000, limit: 16_384 }));
    }
}
