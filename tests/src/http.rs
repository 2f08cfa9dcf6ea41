//! A small blocking HTTP/1.1 client for the tests of the daemon's HTTP
//! listener: requests written as the test says (so that malformed and
//! oversized ones can be sent too), responses read whole or chunk by chunk.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use apiary_protocol::tls::{TlsArgs, Transport};

use crate::{Daemon, PATIENCE};

impl Daemon {
    /// The address of the daemon's HTTP listener, as its log says.
    pub fn http_addr(&self) -> String {
        self.log.wait_for("the HTTP listener", |line| {
            let rest = crate::message(line)?.strip_prefix("serving HTTP on ")?;
            Some(rest.split_whitespace().next()?.to_string())
        })
    }
}

/// One connection to the daemon's HTTP listener.
pub struct HttpClient {
    stream: Transport<TcpStream>,
    /// Bytes read and not yet taken.
    buffered: Vec<u8>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON of a pRPC answer, after its `)]}'` line.
    pub fn json(&self) -> serde_json::Value {
        let text = self.text();
        let json = text.strip_prefix(")]}'\n").unwrap_or_else(|| panic!("no XSSI prefix: {text:?}"));
        serde_json::from_str(json).expect("a JSON answer")
    }

    /// The gRPC code of a pRPC reply.
    pub fn grpc_code(&self) -> Option<u32> {
        self.header("X-Prpc-Grpc-Code").map(|code| code.parse().expect("a number"))
    }
}

impl HttpClient {
    pub fn connect(addr: &str) -> HttpClient {
        HttpClient::connect_with(addr, None)
    }

    /// Over TLS, trusting the authority in `ca_file`, when given.
    pub fn connect_with(addr: &str, ca_file: Option<&Path>) -> HttpClient {
        let socket = TcpStream::connect(addr).expect("connect to the HTTP listener");
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        let tls = TlsArgs { ca_file: ca_file.map(Path::to_path_buf), tls: false, plaintext: ca_file.is_none() };
        let security = tls.security(addr).expect("TLS set up");
        let mut stream = Transport::new(addr, socket, &security).expect("a transport");
        stream.handshake().expect("the TLS handshake");
        HttpClient { stream, buffered: Vec::new() }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
        self.stream.flush().expect("send");
    }

    /// Sends a request with `headers` (Host and Content-Length are added).
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: apiary\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes);
    }

    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        self.send(method, path, headers, body);
        self.read_response()
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    /// A pRPC call with a JSON body, and the token when given.
    pub fn call(&mut self, service_method: &str, body: &str, token: Option<&str>) -> Response {
        let bearer = token.map(|token| format!("Bearer {token}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer));
        }
        self.request("POST", &format!("/prpc/{service_method}"), &headers, body.as_bytes())
    }

    /// Reads a response's head, then its whole body (by length, or all its chunks).
    pub fn read_response(&mut self) -> Response {
        let mut response = self.read_head();
        if response.header("Transfer-Encoding").is_some_and(|value| value.eq_ignore_ascii_case("chunked")) {
            while let Some(chunk) = self.read_chunk() {
                response.body.extend_from_slice(&chunk);
            }
        } else {
            let length: usize = response.header("Content-Length").map_or(0, |value| value.parse().unwrap());
            response.body = self.take(length);
        }
        response
    }

    /// Reads a response's status line and headers (the body is left to read).
    pub fn read_head(&mut self) -> Response {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_bytes) = parsed.parse(&self.buffered).expect("a response head") {
                let status = parsed.code.expect("a status");
                let headers = parsed
                    .headers
                    .iter()
                    .map(|header| (header.name.to_string(), String::from_utf8_lossy(header.value).into_owned()))
                    .collect();
                self.buffered.drain(..head_bytes);
                return Response { status, headers, body: Vec::new() };
            }
            assert!(self.fill(), "the connection closed before a whole response head: {:?}", self.buffered);
        }
    }

    /// The next chunk of a chunked body; `None` at its end.
    pub fn read_chunk(&mut self) -> Option<Vec<u8>> {
        let line = self.take_line();
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).expect("a chunk size");
        if size == 0 {
            assert_eq!(self.take_line(), "", "no trailers");
            return None;
        }
        let chunk = self.take(size);
        assert_eq!(self.take_line(), "", "a chunk ends with CRLF");
        Some(chunk)
    }

    /// Whether the daemon closed the connection (read until it did, or until patience ran out).
    pub fn closed_by_daemon(&mut self) -> bool {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return true,
                Ok(_) => self.buffered.push(byte[0]),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    fn take_line(&mut self) -> String {
        loop {
            if let Some(end) = self.buffered.windows(2).position(|window| window == b"\r\n") {
                let line = String::from_utf8(self.buffered[..end].to_vec()).expect("a text line");
                self.buffered.drain(..end + 2);
                return line;
            }
            assert!(self.fill(), "the connection closed in the middle of a line");
        }
    }

    fn take(&mut self, length: usize) -> Vec<u8> {
        while self.buffered.len() < length {
            assert!(self.fill(), "the connection closed {} bytes short", length - self.buffered.len());
        }
        self.buffered.drain(..length).collect()
    }

    /// Reads more; false when the connection closed.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 << 10];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(read) => {
                self.buffered.extend_from_slice(&chunk[..read]);
                true
            }
            Err(error) => panic!("reading a response failed: {error}"),
        }
    }
}
