//! TLS (rustls with the ring provider) for every Apiary connection: a stream
//! that speaks TLS over a socket, blocking or not, and how a client chooses
//! between TLS and plaintext and whom it trusts.
//!
//! A client speaks TLS when given `--ca-file FILE` (trust that authority) or
//! `--tls` (trust the system's roots), plaintext when given `--plaintext`,
//! and without any of them TLS with the system's roots unless the daemon's
//! address is loopback, where traffic never leaves the host.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read the certificate authority file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error(
        "no root certificates were found on this system ({0}); pass --ca-file with the authority that signed the \
         daemon's certificate"
    )]
    NoSystemRoots(String),
    #[error("{0} is not a host name or address a certificate can name")]
    ServerName(String),
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How a client talks to the daemon.
#[derive(Clone, Debug)]
pub enum Security {
    Plaintext,
    Tls(Arc<ClientConfig>),
}

/// The TLS flags of `apiary`, `apiary-bot` and `apiary-load`.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct TlsArgs {
    /// Speak TLS and trust the daemon's certificate only if this authority (a PEM file) signed it.
    #[arg(long, global = true, value_name = "FILE", env = CA_FILE_ENV, conflicts_with = "plaintext")]
    pub ca_file: Option<PathBuf>,
    /// Speak TLS and trust the system's root certificates (the default unless the daemon's
    /// address is loopback).
    #[arg(long, global = true, conflicts_with = "plaintext")]
    pub tls: bool,
    /// Speak plaintext, even to a daemon that is not on a loopback address.
    #[arg(long, global = true)]
    pub plaintext: bool,
}

/// The environment variable that names a CA file when `--ca-file` is not given.
pub const CA_FILE_ENV: &str = "APIARY_CA_FILE";

impl TlsArgs {
    /// How to reach the daemon at `addr` (`host:port`).
    pub fn security(&self, addr: &str) -> Result<Security, TlsSetupError> {
        if self.plaintext || (self.ca_file.is_none() && !self.tls && is_loopback(host_of(addr))) {
            return Ok(Security::Plaintext);
        }
        let roots = match &self.ca_file {
            Some(path) => roots_from_file(path)?,
            None => system_roots()?,
        };
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Security::Tls(Arc::new(config)))
    }
}

/// A client connection to `addr` whose certificate must name its host.
pub fn client_connection(config: &Arc<ClientConfig>, addr: &str) -> Result<ClientConnection, TlsSetupError> {
    let host = host_of(addr);
    let name = ServerName::try_from(host.to_string()).map_err(|_| TlsSetupError::ServerName(host.to_string()))?;
    Ok(ClientConnection::new(Arc::clone(config), name)?)
}

/// The host part of `host:port` or `[v6]:port`.
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[').and_then(|host| host.strip_suffix(']')).unwrap_or(host)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let error = |reason: String| TlsSetupError::CaFile { path: path.display().to_string(), reason };
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path).map_err(|e| error(e.to_string()))? {
        roots.add(certificate.map_err(|e| error(e.to_string()))?).map_err(|e| error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(error("it holds no PEM certificate".to_string()));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsSetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found.errors.first().map_or("none are installed".to_string(), |error| error.to_string());
        return Err(TlsSetupError::NoSystemRoots(why));
    }
    Ok(roots)
}

/// Whether bytes that came where a frame header belongs start a TLS record
/// (a handshake or an alert): the peer speaks TLS to a plaintext end.
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, ..])
}

/// A socket, with or without TLS. Reads and writes behave as the socket's
/// do: on a non-blocking socket they return `WouldBlock` when it does.
pub enum Transport<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
}

impl<S: Read + Write> Transport<S> {
    /// `socket`, connected to `addr`, as `security` says; over TLS the
    /// handshake starts with the first write (or `handshake`).
    pub fn new(addr: &str, socket: S, security: &Security) -> Result<Transport<S>, TlsSetupError> {
        Ok(match security {
            Security::Plaintext => Transport::Plain(socket),
            Security::Tls(config) => Transport::Tls(Box::new(TlsStream::new(client_connection(config, addr)?, socket))),
        })
    }

    /// On a blocking socket, runs the TLS handshake to its end, so that a
    /// certificate that is not trusted fails here, saying why.
    pub fn handshake(&mut self) -> Result<(), String> {
        let Transport::Tls(tls) = self else { return Ok(()) };
        tls.handshake().map_err(|error| match error.kind() {
            io::ErrorKind::InvalidData if error.to_string().contains("InvalidContentType") => {
                format!("{error}; the daemon does not seem to speak TLS (if it serves plaintext, pass --plaintext)")
            }
            _ => error.to_string(),
        })
    }

    pub fn socket(&self) -> &S {
        match self {
            Transport::Plain(socket) => socket,
            Transport::Tls(tls) => &tls.socket,
        }
    }

    pub fn socket_mut(&mut self) -> &mut S {
        match self {
            Transport::Plain(socket) => socket,
            Transport::Tls(tls) => &mut tls.socket,
        }
    }

    /// Says goodbye at the TLS level (close_notify), as far as the socket takes it now.
    pub fn close(&mut self) {
        if let Transport::Tls(tls) = self {
            tls.connection.send_close_notify();
            let _ = tls.write_pending();
        }
    }
}

impl<S: Read + Write> Read for Transport<S> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.read(buffer),
            Transport::Tls(tls) => tls.read(buffer),
        }
    }
}

impl<S: Read + Write> Write for Transport<S> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => socket.write(bytes),
            Transport::Tls(tls) => tls.write(bytes),
        }
    }

    /// On TLS, writes the records the connection still holds.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(socket) => socket.flush(),
            Transport::Tls(tls) => tls.write_pending(),
        }
    }
}

/// TLS over a socket. Encrypted bytes are read from the socket only when no
/// decrypted ones are left, and rustls holds at most its buffer limit (64 KiB)
/// of unsent ones, so a connection's memory stays bounded.
pub struct TlsStream<S> {
    connection: rustls::Connection,
    socket: S,
}

impl<S: Read + Write> TlsStream<S> {
    pub fn new(connection: impl Into<rustls::Connection>, socket: S) -> TlsStream<S> {
        TlsStream { connection: connection.into(), socket }
    }

    /// Runs the handshake to its end on a blocking socket, so that a
    /// certificate the client does not trust fails the connect, by name.
    pub fn handshake(&mut self) -> io::Result<()> {
        while self.connection.is_handshaking() {
            self.write_pending()?;
            if !self.connection.is_handshaking() {
                break;
            }
            if self.read_records()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the daemon closed during the TLS handshake"));
            }
        }
        self.write_pending()
    }

    /// Writes the records rustls holds until the socket would block.
    fn write_pending(&mut self) -> io::Result<()> {
        while self.connection.wants_write() {
            match self.connection.write_tls(&mut self.socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Reads records from the socket and decrypts them; 0 at the end of the stream.
    fn read_records(&mut self) -> io::Result<usize> {
        let read = loop {
            match self.connection.read_tls(&mut self.socket) {
                Ok(read) => break read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        };
        let processed = self.connection.process_new_packets();
        // Handshake messages, or the alert that tells the peer why we give up.
        match self.write_pending() {
            Err(error) if processed.is_ok() && error.kind() != io::ErrorKind::WouldBlock => return Err(error),
            _ => {}
        }
        processed.map_err(|error| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {error}")))?;
        Ok(read)
    }
}

impl<S: Read + Write> Read for TlsStream<S> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.connection.reader().read(buffer) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                decrypted => return decrypted,
            }
            if self.read_records()? == 0 {
                // The end of the stream: rustls says whether it was a clean one.
                return match self.connection.reader().read(buffer) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    decrypted => decrypted,
                };
            }
        }
    }
}

impl<S: Read + Write> Write for TlsStream<S> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_pending()?;
        let accepted = self.connection.writer().write(bytes)?;
        match self.write_pending() {
            Err(error) if error.kind() != io::ErrorKind::WouldBlock => return Err(error),
            _ => {}
        }
        if accepted == 0 && !bytes.is_empty() {
            // rustls holds its limit of unsent bytes already.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(accepted)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_cut_from_addresses_and_loopback_needs_no_flag() {
        assert_eq!(host_of("ci.example.com:7420"), "ci.example.com");
        assert_eq!(host_of("[::1]:7420"), "::1");
        assert_eq!(host_of("10.0.0.1:7420"), "10.0.0.1");
        for loopback in ["127.0.0.1:7420", "localhost:1", "[::1]:7420", "127.3.2.1:9"] {
            let chosen = TlsArgs::default().security(loopback).unwrap();
            assert!(matches!(chosen, Security::Plaintext), "{loopback}");
        }
        let told = TlsArgs { plaintext: true, ..TlsArgs::default() };
        assert!(matches!(told.security("ci.example.com:7420").unwrap(), Security::Plaintext));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("apiary-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let flags = TlsArgs { ca_file: Some(path.clone()), ..TlsArgs::default() };
        let error = flags.security("127.0.0.1:7420").unwrap_err().to_string();
        assert!(error.contains("empty.pem") && error.contains("no PEM certificate"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A server and a client of one certificate authority, over a pair of
    /// non-blocking sockets.
    fn tls_pair() -> (TlsStream<std::os::unix::net::UnixStream>, TlsStream<std::os::unix::net::UnixStream>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_cert =
            CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&server_key, &issuer);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![server_cert.unwrap().der().clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (client_socket, server_socket) = std::os::unix::net::UnixStream::pair().unwrap();
        client_socket.set_nonblocking(true).unwrap();
        server_socket.set_nonblocking(true).unwrap();
        let server = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        let client = client_connection(&Arc::new(client), "localhost:7420").unwrap();
        (TlsStream::new(server, server_socket), TlsStream::new(client, client_socket))
    }

    /// Reads what is there; `WouldBlock` is no error.
    fn read_available(stream: &mut impl Read, into: &mut Vec<u8>) {
        let mut buffer = [0u8; 8192];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => return,
                Ok(read) => into.extend_from_slice(&buffer[..read]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => panic!("read: {error}"),
            }
        }
    }

    #[test]
    fn a_peer_that_does_not_read_gets_would_block_and_then_every_byte_in_order() {
        let (mut server, mut client) = tls_pair();
        client.write_all(b"hello").unwrap();
        let mut received = Vec::new();
        while received.len() < 5 {
            read_available(&mut server, &mut received);
            read_available(&mut client, &mut Vec::new());
        }
        assert_eq!(received, b"hello");

        let sent: Vec<u8> = (0..8u32 << 20).map(|index| (index % 251) as u8).collect();
        let mut accepted = 0;
        loop {
            match server.write(&sent[accepted..]) {
                Ok(written) => accepted += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => panic!("write: {error}"),
            }
        }
        // What a peer that never reads makes the writer hold: the socket's buffers and rustls's 64 KiB.
        assert!(accepted > 0 && accepted < 1 << 20, "{accepted} bytes taken while the peer read nothing");
        let mut taken = Vec::new();
        while taken.len() < sent.len() {
            read_available(&mut client, &mut taken);
            match server.write(&sent[accepted..]) {
                Ok(written) => accepted += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => panic!("write: {error}"),
            }
            match server.flush() {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => panic!("flush: {error}"),
            }
        }
        assert!(taken == sent, "the bytes arrived changed or out of order");
    }

    #[test]
    fn tls_records_are_told_from_frame_headers() {
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02]));
        assert!(looks_like_tls(&[0x15, 0x03, 0x03, 0x00]));
        assert!(!looks_like_tls(&[0x40, 0x00, 0x00, 0x00, 0x03, 0x00]));
    }
}
