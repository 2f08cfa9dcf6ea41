//! One peer connection: bytes in, frames out, and a write buffer with a bound.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use apiary_protocol::frame::{self, FrameError};
use apiary_protocol::{ErrorCode, ErrorReply, Frame, FrameReader, Reply, Role};
use mio::net::TcpStream;

use crate::core::ConnId;

/// Bytes read from one connection in one turn before others get their turn.
pub const MAX_READ_BYTES_PER_TURN: usize = 1 << 20;
/// A peer that lets this much of our output pile up unread is dropped.
pub const MAX_WRITE_BUFFER_BYTES: usize = 64 << 20;

pub struct Connection {
    pub id: ConnId,
    pub peer: SocketAddr,
    pub stream: TcpStream,
    /// Set by the hello; `None` until then.
    pub role: Option<Role>,
    /// Close once the write buffer is flushed (after a fatal protocol error).
    pub closing: bool,
    reader: FrameReader,
    write_buffer: Vec<u8>,
    written: usize,
}

pub enum ReadStatus {
    /// Everything available was read.
    Drained,
    /// The per-turn budget ran out with more to read.
    MoreToRead,
    /// The peer closed its side, or the socket failed.
    Closed,
}

impl Connection {
    pub fn new(id: ConnId, peer: SocketAddr, stream: TcpStream) -> Connection {
        Connection {
            id,
            peer,
            stream,
            role: None,
            closing: false,
            reader: FrameReader::new(),
            write_buffer: Vec::new(),
            written: 0,
        }
    }

    /// Reads what the socket has, up to the per-turn budget, into the frame reader.
    pub fn read_available(&mut self) -> ReadStatus {
        let mut chunk = [0u8; 64 << 10];
        let mut total = 0;
        while total < MAX_READ_BYTES_PER_TURN {
            match self.stream.read(&mut chunk) {
                Ok(0) => return ReadStatus::Closed,
                Ok(n) => {
                    self.reader.extend(&chunk[..n]);
                    total += n;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return ReadStatus::Drained,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadStatus::Closed,
            }
        }
        ReadStatus::MoreToRead
    }

    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        self.reader.next_frame()
    }

    pub fn queue_reply(&mut self, request_id: u64, reply: &Reply) {
        if let Err(error) = frame::encode_reply(request_id, reply, &mut self.write_buffer) {
            // A reply over the frame limit is our bug, not the peer's: tell it so.
            let message = format!("the reply could not be sent: {error}");
            let fallback = Reply::Error(ErrorReply { code: ErrorCode::Internal, message });
            frame::encode_reply(request_id, &fallback, &mut self.write_buffer).expect("a small error reply encodes");
        }
    }

    /// Queues an error and closes the connection once it is written.
    pub fn refuse(&mut self, request_id: u64, code: ErrorCode, message: String) {
        self.queue_reply(request_id, &Reply::Error(ErrorReply { code, message }));
        self.closing = true;
    }

    pub fn has_unwritten(&self) -> bool {
        self.written < self.write_buffer.len()
    }

    pub fn write_buffer_overflowed(&self) -> bool {
        self.write_buffer.len() - self.written > MAX_WRITE_BUFFER_BYTES
    }

    /// Writes as much as the socket takes. Returns false when the socket failed.
    pub fn flush(&mut self) -> bool {
        while self.has_unwritten() {
            match self.stream.write(&self.write_buffer[self.written..]) {
                Ok(0) => return false,
                Ok(n) => self.written += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.write_buffer.clear();
        self.written = 0;
        true
    }
}
