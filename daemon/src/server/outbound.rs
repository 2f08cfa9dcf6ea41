//! Output of one connection: what is owed to it, in order, and the bytes
//! being written.
//!
//! A reply is encoded when the core produces it, so its size is known at
//! once; it waits for durability elsewhere, then in this queue, then in the
//! write buffer. Output reads wait here as descriptions and are read from the
//! output store only when the write buffer has room, so a follow of a large
//! output costs memory as the peer takes it, not before.
//!
//! Invariant: `owed_bytes` counts every byte produced for this connection and
//! not yet written (a pending read at its largest), from the moment the core
//! produced it; the event loop stops reading a connection's requests while it
//! is over `--max-unsent-bytes`, so a peer that never reads cannot make the
//! daemon build more.

use std::collections::VecDeque;
use std::io::{self, Write};

use apiary_protocol::frame::{self, FrameEncoder, FrameError};
use apiary_protocol::{ErrorCode, ErrorReply, Reply};

use crate::core::OutputRead;
use crate::logging;

/// Frame header and reply fields around an output chunk, at most.
const READ_REPLY_OVERHEAD_BYTES: usize = 256;
/// Queued items are moved into the write buffer until it holds this much:
/// many small replies go out in one write.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// A write buffer that grew past this for one large reply is let go once empty.
const KEPT_BUFFER_BYTES: usize = 1 << 20;

pub enum Queued {
    Frame(Vec<u8>),
    Read(OutputRead),
}

#[derive(Default)]
pub struct Outbound {
    buffer: Vec<u8>,
    written: usize,
    queue: VecDeque<Queued>,
    owed_bytes: usize,
}

pub enum WriteOutcome {
    /// Everything queued is written, and the socket took it.
    Done,
    /// The socket is full; `wrote_any` says whether it took anything this time.
    Blocked {
        wrote_any: bool,
    },
    Failed,
}

/// The most a read can take once encoded.
pub fn read_bytes_at_most(read: &OutputRead) -> usize {
    read.max_bytes + READ_REPLY_OVERHEAD_BYTES
}

/// Encodes a reply into a frame. A reply over the frame limit is a bug of
/// ours, not the peer's: the peer is told so, and the log says which.
pub fn encode_reply(request_id: u64, reply: &Reply) -> Vec<u8> {
    let mut bytes = Vec::new();
    match frame::encode_reply(request_id, reply, &mut bytes) {
        Ok(()) => bytes,
        Err(error) => encode_failure(request_id, error),
    }
}

/// `encode_reply` with an encoder kept from reply to reply (the replies the
/// core makes): one allocation per frame.
pub fn encode_reply_with(encoder: &mut FrameEncoder, request_id: u64, reply: &Reply) -> Vec<u8> {
    encoder.reply(request_id, reply).unwrap_or_else(|error| encode_failure(request_id, error))
}

fn encode_failure(request_id: u64, error: FrameError) -> Vec<u8> {
    logging::error(format!("a reply to request {request_id} could not be sent: {error}"));
    let message = format!("the reply could not be sent: {error}");
    let fallback = Reply::Error(ErrorReply { code: ErrorCode::Internal, message });
    let mut bytes = Vec::new();
    frame::encode_reply(request_id, &fallback, &mut bytes).expect("a small error reply encodes");
    bytes
}

impl Outbound {
    /// Counts bytes the core produced for this connection (held until durable).
    pub fn owe(&mut self, bytes: usize) {
        self.owed_bytes += bytes;
    }

    pub fn owed_bytes(&self) -> usize {
        self.owed_bytes
    }

    /// Queues a durable reply or read (already owed).
    pub fn push(&mut self, queued: Queued) {
        self.queue.push_back(queued);
    }

    /// Queues a reply of the shell's own (the welcome, a refusal).
    pub fn push_now(&mut self, frame: Vec<u8>) {
        self.owe(frame.len());
        self.push(Queued::Frame(frame));
    }

    pub fn has_unwritten(&self) -> bool {
        self.written < self.buffer.len() || !self.queue.is_empty()
    }

    /// Writes as much as the socket takes, doing queued reads (`read_frame`)
    /// only as the write buffer has room.
    pub fn write_to(
        &mut self,
        stream: &mut impl Write,
        mut read_frame: impl FnMut(&OutputRead) -> Vec<u8>,
    ) -> WriteOutcome {
        let mut wrote_any = false;
        loop {
            self.fill(&mut read_frame);
            if self.written == self.buffer.len() {
                self.clear_buffer();
                // TLS holds records of its own until the socket takes them.
                return match stream.flush() {
                    Ok(()) => WriteOutcome::Done,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => WriteOutcome::Blocked { wrote_any },
                    Err(_) => WriteOutcome::Failed,
                };
            }
            match stream.write(&self.buffer[self.written..]) {
                Ok(0) => return WriteOutcome::Failed,
                Ok(written) => {
                    self.written += written;
                    self.owed_bytes -= written;
                    wrote_any = true;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return WriteOutcome::Blocked { wrote_any },
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return WriteOutcome::Failed,
            }
        }
    }

    /// Moves queued items into the write buffer while it is short of a batch.
    fn fill(&mut self, read_frame: &mut impl FnMut(&OutputRead) -> Vec<u8>) {
        while self.buffer.len() - self.written < WRITE_BATCH_BYTES {
            let Some(queued) = self.queue.pop_front() else { return };
            if self.written == self.buffer.len() {
                self.clear_buffer();
            }
            let frame = match queued {
                Queued::Frame(frame) => frame,
                Queued::Read(read) => {
                    let frame = read_frame(&read);
                    // The read was owed at its largest; now its size is known.
                    self.owed_bytes = self.owed_bytes - read_bytes_at_most(&read) + frame.len();
                    frame
                }
            };
            if self.buffer.is_empty() {
                self.buffer = frame;
            } else {
                self.buffer.extend_from_slice(&frame);
            }
        }
    }

    fn clear_buffer(&mut self) {
        if self.buffer.capacity() > KEPT_BUFFER_BYTES {
            self.buffer = Vec::new();
        } else {
            self.buffer.clear();
        }
        self.written = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ConnId;

    /// A peer that takes `room` bytes, then would block.
    struct SlowPeer {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for SlowPeer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let taken = bytes.len().min(self.room);
            self.taken.extend_from_slice(&bytes[..taken]);
            self.room -= taken;
            Ok(taken)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn read(offset: u64) -> OutputRead {
        OutputRead {
            conn: ConnId(1),
            request_id: 3,
            run_id: None,
            offset,
            max_bytes: 1 << 20,
            output_len: 100 << 20,
            task_ended: false,
            ends_request: false,
        }
    }

    #[test]
    fn reads_are_done_only_as_the_peer_takes_their_bytes_and_owed_bytes_add_up() {
        let mut outbound = Outbound::default();
        for index in 0..50 {
            outbound.owe(read_bytes_at_most(&read(index << 20)));
            outbound.push(Queued::Read(read(index << 20)));
        }
        outbound.push_now(vec![1; 100]);
        let mut reads_done = 0;
        let mut peer = SlowPeer { taken: Vec::new(), room: 3 << 20 };
        let chunk = |reads_done: &mut usize| {
            *reads_done += 1;
            vec![7u8; 1 << 20]
        };
        assert!(matches!(outbound.write_to(&mut peer, |_| chunk(&mut reads_done)), WriteOutcome::Blocked { .. }));
        assert!(reads_done <= 4, "{reads_done} reads for a peer that took 3 MiB");
        assert!(outbound.buffer.capacity() <= 2 << 20);
        peer.room = usize::MAX;
        assert!(matches!(outbound.write_to(&mut peer, |_| chunk(&mut reads_done)), WriteOutcome::Done));
        assert_eq!((reads_done, peer.taken.len()), (50, (50 << 20) + 100));
        assert_eq!(outbound.owed_bytes(), 0);
        assert!(!outbound.has_unwritten());
    }
}
