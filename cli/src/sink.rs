//! Stdout as the commands see it: raw bytes go out unchanged, and a reader that
//! went away (a closed pipe, as in `apiary run -- cmd | head`) is not an error.
//! Once the pipe is closed every later write is dropped, and `is_closed` tells
//! the commands to stop fetching output nobody reads.

use std::io::{self, Write};

use crate::error::CliError;

pub(crate) struct Sink<W: Write> {
    writer: W,
    closed: bool,
}

impl<W: Write> Sink<W> {
    pub(crate) fn new(writer: W) -> Sink<W> {
        Sink { writer, closed: false }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        if self.closed {
            return Ok(());
        }
        let result = self.writer.write_all(bytes);
        self.check(result)
    }

    pub(crate) fn flush(&mut self) -> Result<(), CliError> {
        if self.closed {
            return Ok(());
        }
        let result = self.writer.flush();
        self.check(result)
    }

    fn check(&mut self, result: io::Result<()>) -> Result<(), CliError> {
        match result {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(error) => Err(CliError::Stdout(error)),
        }
    }

    pub(crate) fn into_inner(self) -> W {
        self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts `capacity` bytes, then fails as a closed pipe or a full disk would.
    struct Failing {
        capacity: usize,
        kind: io::ErrorKind,
    }

    impl Write for Failing {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if self.capacity == 0 {
                return Err(io::Error::from(self.kind));
            }
            let written = bytes.len().min(self.capacity);
            self.capacity -= written;
            Ok(written)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_not_an_error() {
        let mut sink = Sink::new(Failing { capacity: 3, kind: io::ErrorKind::BrokenPipe });
        sink.write_all(b"ab").unwrap();
        assert!(!sink.is_closed());
        sink.write_all(b"cd").unwrap();
        assert!(sink.is_closed());
        sink.write_all(b"ef").unwrap();
        sink.flush().unwrap();
    }

    #[test]
    fn other_write_errors_are_reported() {
        let mut sink = Sink::new(Failing { capacity: 0, kind: io::ErrorKind::StorageFull });
        assert!(matches!(sink.write_all(b"x"), Err(CliError::Stdout(_))));
    }
}
