//! A client connection that keeps up to `depth` requests in flight.
//!
//! One thread, blocking socket: send as many requests as there are free slots in one
//! write, then block on one read and take every whole reply it brought. Replies echo
//! request ids, so they are matched by id, in whatever order they come. With depth 1
//! this is the one-request-at-a-time client.
//!
//! Why blocking writes cannot deadlock: the daemon reads whatever arrives without
//! waiting for us to read, and buffers its replies up to its bound on unsent replies
//! (`--max-unsent-bytes`, 8 MiB by default), so a write of at most `MAX_DEPTH` requests
//! always drains while their replies fit that bound.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use apiary_protocol::frame::{self, FrameError, FrameKind};
use apiary_protocol::tls::{Security, Transport};
use apiary_protocol::{ErrorCode, ErrorReply, FrameReader, Hello, Reply, Request, Role};

/// The deepest pipeline: its acknowledgements of new tasks (64 bytes each, 1 MiB in
/// all) stay far below the daemon's default bound on unsent replies per connection
/// (8 MiB), which holds 16,384 replies of up to 512 bytes.
pub const MAX_DEPTH: usize = 16384;
/// How long to wait for any reply before calling the daemon stuck.
pub const REPLY_PATIENCE: Duration = Duration::from_secs(60);
const READ_BUFFER_BYTES: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("connection to the daemon failed: {0}")]
    Io(#[from] io::Error),
    #[error("the daemon closed the connection with {in_flight} requests unanswered")]
    Closed { in_flight: usize },
    #[error("bad frame from the daemon: {0}")]
    Frame(#[from] FrameError),
    #[error("the daemon refused the request ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the daemon answered request {0}, which is not in flight")]
    UnknownRequestId(u64),
    #[error("the daemon sent a {0:?} frame where a reply belongs")]
    NotAReply(FrameKind),
    #[error("the daemon answered {what} with {reply}")]
    UnexpectedReply { what: &'static str, reply: String },
}

/// A reply and when its request was sent (the caller's clock).
#[derive(Debug)]
pub struct Answered {
    pub reply: Reply,
    pub sent_ns: u64,
}

pub struct Pipeline {
    stream: Transport<TcpStream>,
    reader: FrameReader,
    /// Request id to when it was sent, for requests not answered yet; at most `depth`.
    in_flight: HashMap<u64, u64>,
    depth: usize,
    next_request_id: u64,
    write_buffer: Vec<u8>,
    read_buffer: Vec<u8>,
}

impl Pipeline {
    /// Connects, says hello as a client (with `token`, empty for none) and
    /// waits for the welcome. `depth` must be in `1..=MAX_DEPTH`.
    pub fn connect(
        addr: &str,
        security: &Security,
        software: &str,
        token: &str,
        depth: usize,
    ) -> Result<Pipeline, PipelineError> {
        assert!((1..=MAX_DEPTH).contains(&depth), "pipeline depth {depth} is not in 1..={MAX_DEPTH}");
        let stream = connect_any(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(REPLY_PATIENCE))?;
        let tls_error = |reason: String| PipelineError::Tls { addr: addr.to_string(), reason };
        let mut stream = Transport::new(addr, stream, security).map_err(|error| tls_error(error.to_string()))?;
        stream.handshake().map_err(tls_error)?;
        let mut pipeline = Pipeline {
            stream,
            reader: FrameReader::new(),
            in_flight: HashMap::with_capacity(depth),
            depth,
            next_request_id: 1,
            write_buffer: Vec::new(),
            read_buffer: vec![0; READ_BUFFER_BYTES],
        };
        pipeline.greet(software, token)?;
        Ok(pipeline)
    }

    fn greet(&mut self, software: &str, token: &str) -> Result<(), PipelineError> {
        frame::encode_hello(&Hello::with_token(Role::Client, software, token), &mut self.write_buffer)?;
        self.flush()?;
        let frame = loop {
            if let Some(frame) = self.reader.next_frame()? {
                break frame;
            }
            self.read_some()?;
        };
        match frame.decode_reply()? {
            Reply::Welcome { .. } => Ok(()),
            Reply::Error(ErrorReply { code, message }) => Err(PipelineError::Refused { code, message }),
            other => Err(PipelineError::UnexpectedReply { what: "the hello", reply: format!("{other:?}") }),
        }
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn free_slots(&self) -> usize {
        self.depth - self.in_flight.len()
    }

    /// Sends `count` requests made by `make` in one write, all noted as sent at
    /// `sent_ns`. `count` must not exceed `free_slots()`.
    pub fn send(&mut self, count: usize, sent_ns: u64, mut make: impl FnMut() -> Request) -> Result<(), PipelineError> {
        assert!(count <= self.free_slots(), "{count} requests, {} free slots", self.free_slots());
        for _ in 0..count {
            let request_id = self.next_request_id;
            self.next_request_id += 1;
            frame::encode_request(request_id, &make(), &mut self.write_buffer)?;
            self.in_flight.insert(request_id, sent_ns);
        }
        self.flush()
    }

    /// Blocks until at least one reply came (there must be a request in flight), then
    /// appends every whole reply received to `answered`. An error reply is an error.
    pub fn receive(&mut self, answered: &mut Vec<Answered>) -> Result<(), PipelineError> {
        assert!(!self.in_flight.is_empty(), "waiting for a reply with nothing in flight");
        let before = answered.len();
        while answered.len() == before {
            self.read_some()?;
            while let Some(frame) = self.reader.next_frame()? {
                if frame.kind != FrameKind::Reply {
                    return Err(PipelineError::NotAReply(frame.kind));
                }
                let sent_ns = self
                    .in_flight
                    .remove(&frame.request_id)
                    .ok_or(PipelineError::UnknownRequestId(frame.request_id))?;
                match frame.decode_reply()? {
                    Reply::Error(ErrorReply { code, message }) => return Err(PipelineError::Refused { code, message }),
                    reply => answered.push(Answered { reply, sent_ns }),
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PipelineError> {
        self.stream.write_all(&self.write_buffer)?;
        self.write_buffer.clear();
        Ok(())
    }

    /// One blocking read of whatever has arrived.
    fn read_some(&mut self) -> Result<(), PipelineError> {
        loop {
            match self.stream.read(&mut self.read_buffer) {
                Ok(0) => return Err(PipelineError::Closed { in_flight: self.in_flight.len() }),
                Ok(count) => {
                    self.reader.extend(&self.read_buffer[..count]);
                    return Ok(());
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
}

fn connect_any(addr: &str) -> Result<TcpStream, PipelineError> {
    let connect_error = |source| PipelineError::Connect { addr: addr.to_string(), source };
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
    for socket_addr in addr.to_socket_addrs().map_err(connect_error)? {
        match TcpStream::connect(socket_addr) {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = error,
        }
    }
    Err(connect_error(last_error))
}

#[cfg(test)]
mod tests {
    //! Against a fake daemon on loopback that answers each batch of requests in
    //! reverse order, so matching by id is what makes the answers right.

    use std::net::TcpListener;
    use std::thread;

    use apiary_protocol::{NewTaskAck, NewTaskRequest, TaskState};

    use super::*;

    /// Welcomes one client, then answers every `NewTask` with `Reply::Created` whose task
    /// id is the request's name parsed as a number; whole reads are answered backwards.
    fn fake_daemon() -> (String, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = FrameReader::new();
            let mut buffer = vec![0u8; 64 << 10];
            loop {
                let count = stream.read(&mut buffer).unwrap();
                if count == 0 {
                    return;
                }
                reader.extend(&buffer[..count]);
                let mut replies = Vec::new();
                while let Some(frame) = reader.next_frame().unwrap() {
                    replies.push(answer(&frame));
                }
                let mut out = Vec::new();
                for (request_id, reply) in replies.iter().rev() {
                    frame::encode_reply(*request_id, reply, &mut out).unwrap();
                }
                stream.write_all(&out).unwrap();
            }
        });
        (addr, handle)
    }

    fn answer(frame: &apiary_protocol::Frame) -> (u64, Reply) {
        if frame.kind == FrameKind::Hello {
            return (0, Reply::Welcome { server_software: "fake".into() });
        }
        let Request::NewTask(request) = frame.decode_request().unwrap() else { panic!("not a NewTask") };
        let task_id = request.name.parse().unwrap();
        (frame.request_id, Reply::Created(NewTaskAck { task_id, state: TaskState::Pending, deduped_from: None }))
    }

    #[test]
    fn replies_in_any_order_are_matched_to_their_requests() {
        let (addr, daemon) = fake_daemon();
        let mut pipeline = Pipeline::connect(&addr, &Security::Plaintext, "test", "", 8).unwrap();
        let mut next_name = 100u64;
        pipeline
            .send(8, 7, || {
                next_name += 1;
                Request::NewTask(NewTaskRequest { name: next_name.to_string(), ..NewTaskRequest::default() })
            })
            .unwrap();
        assert_eq!(pipeline.free_slots(), 0);
        let mut answered = Vec::new();
        while pipeline.in_flight() > 0 {
            pipeline.receive(&mut answered).unwrap();
        }
        let mut task_ids: Vec<u64> = answered
            .iter()
            .map(|answer| match &answer.reply {
                Reply::Created(ack) => ack.task_id,
                other => panic!("{other:?}"),
            })
            .collect();
        task_ids.sort_unstable();
        assert_eq!(task_ids, (101..=108).collect::<Vec<_>>());
        assert!(answered.iter().all(|answer| answer.sent_ns == 7));
        assert_eq!(pipeline.free_slots(), 8);
        drop(pipeline);
        daemon.join().unwrap();
    }
}
