//! A small blocking client: one connection, one request at a time. Used by the
//! CLI, the agent, the tests and the load client.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use rkyv::util::AlignedVec;

use crate::frame::{self, Frame, FrameError, FrameKind, HEADER_BYTES};
use crate::messages::{ErrorCode, ErrorReply, Hello, Reply, Request, Role};
use crate::tls::{self, Security, Transport};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error(
        "the daemon at {0} speaks TLS: pass --ca-file with the authority that signed its certificate (or --tls to \
         trust the system's roots)"
    )]
    DaemonSpeaksTls(String),
    #[error(
        "{0} answers in HTTP: it is a web server, not an Apiary daemon (a Swarming server's address?); give the \
         HOST:PORT apiaryd listens on"
    )]
    PeerSpeaksHttp(String),
    #[error("connection to the daemon failed: {}", describe_io_error(.0))]
    Io(#[from] io::Error),
    #[error("bad frame from the daemon: {0}")]
    Frame(#[from] FrameError),
    #[error("the daemon refused the request ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the daemon sent an unexpected {0}")]
    Unexpected(&'static str),
}

/// An I/O error in words about the daemon: the bare "failed to fill whole buffer"
/// of a closed connection says nothing to the person reading it.
fn describe_io_error(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::UnexpectedEof => "the daemon closed the connection".to_string(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "the daemon did not answer in time".to_string(),
        _ => error.to_string(),
    }
}

impl ClientError {
    /// True when the connection itself failed, so reconnecting may help.
    pub fn is_connection_failure(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::Io(_) | ClientError::Frame(_))
    }
}

pub struct Client {
    stream: Transport<TcpStream>,
    next_request_id: u64,
    server_software: String,
    /// A plaintext hello was answered by a TLS record: the daemon speaks TLS.
    answered_in_tls: bool,
    /// The hello was answered by an HTTP response: the peer is a web server.
    answered_in_http: bool,
}

impl Client {
    /// Connects without a token, sends the hello and waits for the welcome.
    pub fn connect(addr: &str, role: Role, software: &str) -> Result<Client, ClientError> {
        Client::connect_with_token(addr, role, software, "")
    }

    /// Connects in plaintext, sends the hello with `token` (empty: none) and waits for the welcome.
    pub fn connect_with_token(addr: &str, role: Role, software: &str, token: &str) -> Result<Client, ClientError> {
        Client::connect_secure(addr, role, software, token, &Security::Plaintext)
    }

    /// Connects as `security` says (over TLS: the handshake ends before the
    /// hello, so an untrusted certificate fails here), sends the hello with
    /// `token` (empty: none) and waits for the welcome.
    pub fn connect_secure(
        addr: &str,
        role: Role,
        software: &str,
        token: &str,
        security: &Security,
    ) -> Result<Client, ClientError> {
        let connect_error = |source| ClientError::Connect { addr: addr.to_string(), source };
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        let mut connected = None;
        for socket_addr in addr.to_socket_addrs().map_err(connect_error)? {
            match TcpStream::connect(socket_addr) {
                Ok(stream) => {
                    connected = Some(stream);
                    break;
                }
                Err(error) => last_error = error,
            }
        }
        let stream = connected.ok_or_else(|| connect_error(last_error))?;
        stream.set_nodelay(true)?;
        let tls_error = |reason: String| ClientError::Tls { addr: addr.to_string(), reason };
        let mut stream = Transport::new(addr, stream, security).map_err(|error| tls_error(error.to_string()))?;
        stream.handshake().map_err(tls_error)?;
        let mut client = Client {
            stream,
            next_request_id: 1,
            server_software: String::new(),
            answered_in_tls: false,
            answered_in_http: false,
        };
        let mut bytes = Vec::new();
        frame::encode_hello(&Hello::with_token(role, software, token), &mut bytes)?;
        client.stream.write_all(&bytes)?;
        let welcome = match client.read_reply(0) {
            Err(ClientError::Io(_) | ClientError::Frame(_)) if client.answered_in_tls => {
                return Err(ClientError::DaemonSpeaksTls(addr.to_string()));
            }
            Err(ClientError::Io(_) | ClientError::Frame(_)) if client.answered_in_http => {
                return Err(ClientError::PeerSpeaksHttp(addr.to_string()));
            }
            welcome => welcome?,
        };
        match welcome {
            Reply::Welcome { server_software } => client.server_software = server_software,
            Reply::Error(ErrorReply { code, message }) => return Err(ClientError::Refused { code, message }),
            _ => return Err(ClientError::Unexpected("reply to hello")),
        }
        Ok(client)
    }

    pub fn server_software(&self) -> &str {
        &self.server_software
    }

    /// A read timeout for every later reply; `None` waits forever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.socket().set_read_timeout(timeout)
    }

    /// Sends one request and waits for its reply. An error reply becomes
    /// `ClientError::Refused`.
    pub fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut bytes = Vec::new();
        frame::encode_request(request_id, request, &mut bytes)?;
        self.stream.write_all(&bytes)?;
        match self.read_reply(request_id)? {
            Reply::Error(ErrorReply { code, message }) => Err(ClientError::Refused { code, message }),
            reply => Ok(reply),
        }
    }

    /// Sends a request whose answer is a stream of replies (`FollowOutput`), and
    /// hands each to `each` until it returns `Ok(false)`.
    pub fn call_stream(
        &mut self,
        request: &Request,
        mut each: impl FnMut(Reply) -> Result<bool, ClientError>,
    ) -> Result<(), ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let mut bytes = Vec::new();
        frame::encode_request(request_id, request, &mut bytes)?;
        self.stream.write_all(&bytes)?;
        loop {
            let reply = match self.read_reply(request_id)? {
                Reply::Error(ErrorReply { code, message }) => return Err(ClientError::Refused { code, message }),
                reply => reply,
            };
            if !each(reply)? {
                return Ok(());
            }
        }
    }

    fn read_reply(&mut self, request_id: u64) -> Result<Reply, ClientError> {
        let frame = self.read_frame()?;
        if frame.kind != FrameKind::Reply {
            return Err(ClientError::Unexpected("frame out of order"));
        }
        if frame.request_id != request_id {
            // Request id 0 is the connection's: the daemon says why it closes it.
            return match frame.request_id {
                0 => match frame.decode_reply()? {
                    Reply::Error(ErrorReply { code, message }) => Err(ClientError::Refused { code, message }),
                    _ => Err(ClientError::Unexpected("frame out of order")),
                },
                _ => Err(ClientError::Unexpected("frame out of order")),
            };
        }
        Ok(frame.decode_reply()?)
    }

    fn read_frame(&mut self) -> Result<Frame, ClientError> {
        let mut header_bytes = [0u8; HEADER_BYTES];
        if let Err(error) = self.stream.read_exact(&mut header_bytes) {
            // A TLS alert is shorter than a header: what came is in the buffer.
            self.answered_in_tls = tls::looks_like_tls(&header_bytes);
            return Err(error.into());
        }
        self.answered_in_tls = tls::looks_like_tls(&header_bytes);
        self.answered_in_http = header_bytes.starts_with(b"HTTP/");
        let header = frame::parse_header(&header_bytes)?;
        let mut payload = AlignedVec::with_capacity(header.payload_len);
        payload.resize(header.payload_len, 0);
        self.stream.read_exact(&mut payload)?;
        Ok(Frame { kind: header.kind, request_id: header.request_id, payload })
    }
}

/// The port of a daemon when nothing else is said.
pub const DEFAULT_PORT: u16 = 7420;

/// Checks a daemon address as `--server` takes it: `HOST:PORT`, without a scheme
/// (Swarming users write `https://host`), a path, or a missing port. The refusal says
/// what to write instead.
pub fn parse_server_address(text: &str) -> Result<String, String> {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, text),
    };
    let host_port = rest.split('/').next().unwrap_or_default();
    let has_port = host_port.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && (!host.contains(':') || host.ends_with(']')) && port.parse::<u16>().is_ok()
    });
    let suggestion = if has_port { host_port.to_string() } else { format!("{host_port}:{DEFAULT_PORT}") };
    if host_port.is_empty() {
        return Err(format!("expected HOST:PORT, e.g. apiary.example:{DEFAULT_PORT}"));
    }
    if let Some(scheme) = scheme {
        return Err(format!(
            "{text:?} has a scheme ({scheme}://); Apiary speaks its own protocol: write HOST:PORT, e.g. {suggestion} \
             (and --tls for TLS)"
        ));
    }
    if host_port != rest {
        return Err(format!("{text:?} has a path; write HOST:PORT, e.g. {suggestion}"));
    }
    if !has_port {
        return Err(format!("{text:?} has no port; write HOST:PORT, e.g. {suggestion}"));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_web_server_is_named_as_such() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _ = stream.read(&mut [0u8; 1024]);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        });
        let error = Client::connect(&addr, Role::Client, "test").err().expect("no daemon there");
        assert!(matches!(&error, ClientError::PeerSpeaksHttp(named) if *named == addr), "{error}");
        assert!(error.to_string().contains("answers in HTTP"), "{error}");
        server.join().unwrap();
    }

    #[test]
    fn server_addresses_are_host_and_port() {
        for good in ["127.0.0.1:7420", "apiary.example:1", "[::1]:7420", "localhost:65535"] {
            assert_eq!(parse_server_address(good).as_deref(), Ok(good));
        }
        let refused = |text: &str| parse_server_address(text).unwrap_err();
        let scheme = refused("https://swarm.example.com");
        assert!(scheme.contains("has a scheme") && scheme.contains("e.g. swarm.example.com:7420"), "{scheme}");
        assert!(refused("http://h:80/path").contains("e.g. h:80"));
        assert!(refused("apiary.example").contains("has no port; write HOST:PORT, e.g. apiary.example:7420"));
        assert!(refused("h:port").contains("has no port"));
        assert!(refused("::1").contains("has no port"));
        assert!(refused("h:1/x").contains("has a path"));
        assert!(refused("").contains("expected HOST:PORT"));
    }
}
