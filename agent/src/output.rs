//! The output of one task between the pipe and the daemon.
//!
//! The buffer holds every byte the daemon has not acknowledged yet, starting at
//! `base_offset`, the daemon's offset of the first held byte. An update sends a
//! prefix of the held bytes at `base_offset`; the daemon answers with how many bytes
//! it holds (`output_len`), and the acknowledged prefix is dropped. A reply that
//! holds less than was sent just means those bytes go again: nothing is lost or sent
//! twice at a different offset, whatever happens to the connection in between.
//!
//! The buffer is bounded: while the daemon is unreachable, a command can write far
//! more than the bot should keep in memory. Past `capacity_bytes` new output is
//! dropped (the first part is kept, because that is where errors usually start), and
//! once the buffer has drained below half its capacity a marker line saying how many
//! bytes were lost is inserted where they were, so a reader of the log sees the gap.

use std::collections::VecDeque;

/// What an acknowledgement meant, for the session to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Acknowledged {
    /// The daemon holds a prefix of what was sent (possibly all, possibly nothing new).
    InOrder,
    /// The daemon claims more bytes than were ever sent; the buffer follows it.
    DaemonAhead { extra_bytes: u64 },
    /// The daemon holds fewer bytes than it acknowledged before; those bytes are
    /// gone from the bot too, so a marker takes their place.
    DaemonBehind { lost_bytes: u64 },
}

#[derive(Debug)]
pub(crate) struct OutputBuffer {
    /// The daemon's offset of `held[0]`.
    base_offset: u64,
    held: VecDeque<u8>,
    capacity_bytes: usize,
    /// Bytes dropped since the last marker; nonzero means "dropping".
    dropped_bytes: u64,
}

pub(crate) fn lost_output_marker(lost_bytes: u64) -> String {
    format!("\n[apiary-bot: {lost_bytes} bytes of output lost while the daemon was unreachable]\n")
}

impl OutputBuffer {
    pub(crate) fn new(capacity_bytes: usize) -> OutputBuffer {
        assert!(capacity_bytes >= 2, "output buffer capacity {capacity_bytes} too small");
        OutputBuffer { base_offset: 0, held: VecDeque::new(), capacity_bytes, dropped_bytes: 0 }
    }

    /// Bytes waiting for the daemon's acknowledgement.
    pub(crate) fn held_len(&self) -> usize {
        self.held.len()
    }

    #[cfg(test)]
    pub(crate) fn base_offset(&self) -> u64 {
        self.base_offset
    }

    /// Takes in bytes read from the command.
    pub(crate) fn append(&mut self, bytes: &[u8]) {
        // The marker does not count against the capacity.
        let room = self.capacity_bytes.saturating_sub(self.held.len());
        if self.dropped_bytes > 0 {
            if self.held.len() >= self.capacity_bytes / 2 {
                self.dropped_bytes += bytes.len() as u64;
                return;
            }
            self.insert_marker();
        }
        let kept = bytes.len().min(room);
        self.held.extend(&bytes[..kept]);
        self.dropped_bytes += (bytes.len() - kept) as u64;
        self.check_invariants();
    }

    /// The command's output is complete: note any bytes still being dropped.
    pub(crate) fn close(&mut self) {
        if self.dropped_bytes > 0 {
            self.insert_marker();
        }
        self.check_invariants();
    }

    fn insert_marker(&mut self) {
        self.held.extend(lost_output_marker(self.dropped_bytes).as_bytes());
        self.dropped_bytes = 0;
    }

    /// The next update's content: the offset and up to `max_bytes` held bytes.
    pub(crate) fn peek(&self, max_bytes: usize) -> (u64, Vec<u8>) {
        let len = self.held.len().min(max_bytes);
        (self.base_offset, self.held.range(..len).copied().collect())
    }

    /// Applies the daemon's `output_len`.
    pub(crate) fn acknowledge(&mut self, output_len: u64) -> Acknowledged {
        let held_end = self.base_offset + self.held.len() as u64;
        let result = if output_len < self.base_offset {
            let lost_bytes = self.base_offset - output_len;
            let marker = format!("\n[apiary-bot: the daemon lost {lost_bytes} bytes of output it had acknowledged]\n");
            for &byte in marker.as_bytes().iter().rev() {
                self.held.push_front(byte);
            }
            Acknowledged::DaemonBehind { lost_bytes }
        } else if output_len > held_end {
            self.held.clear();
            Acknowledged::DaemonAhead { extra_bytes: output_len - held_end }
        } else {
            let acknowledged = usize::try_from(output_len - self.base_offset).expect("bounded by the held length");
            self.held.drain(..acknowledged);
            Acknowledged::InOrder
        };
        self.base_offset = output_len;
        self.check_invariants();
        result
    }

    pub(crate) fn check_invariants(&self) {
        // The marker may push the buffer a little past its capacity, never further.
        let marker_bytes = lost_output_marker(u64::MAX).len() * 2;
        assert!(
            self.held.len() <= self.capacity_bytes + marker_bytes,
            "output buffer holds {} bytes, capacity {}",
            self.held.len(),
            self.capacity_bytes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon that stores output by offset, like the real output store.
    fn deliver(buffer: &mut OutputBuffer, store: &mut Vec<u8>, max_bytes: usize) {
        let (offset, bytes) = buffer.peek(max_bytes);
        assert_eq!(offset, store.len() as u64, "updates are contiguous");
        store.extend_from_slice(&bytes);
        buffer.acknowledge(store.len() as u64);
    }

    #[test]
    fn acknowledged_bytes_are_dropped_and_unacknowledged_resent() {
        let mut buffer = OutputBuffer::new(1024);
        buffer.append(b"hello ");
        buffer.append(b"world");
        assert_eq!(buffer.peek(100), (0, b"hello world".to_vec()));
        // The daemon kept only 3 bytes: resend from there.
        assert_eq!(buffer.acknowledge(3), Acknowledged::InOrder);
        assert_eq!(buffer.peek(4), (3, b"lo w".to_vec()));
        // A lost reply: the same bytes go again at the same offset.
        assert_eq!(buffer.peek(4), (3, b"lo w".to_vec()));
        assert_eq!(buffer.acknowledge(11), Acknowledged::InOrder);
        assert_eq!(buffer.held_len(), 0);
        assert_eq!(buffer.base_offset(), 11);
    }

    #[test]
    fn overflow_keeps_the_first_part_and_marks_the_gap() {
        let mut buffer = OutputBuffer::new(10);
        let mut store = Vec::new();
        buffer.append(b"0123456789abcdef");
        assert_eq!(buffer.held_len(), 10);
        buffer.append(b"gh");
        deliver(&mut buffer, &mut store, 100);
        buffer.append(b"tail");
        buffer.close();
        deliver(&mut buffer, &mut store, 100);
        let expected = format!("0123456789{}tail", lost_output_marker(8));
        assert_eq!(String::from_utf8(store).unwrap(), expected);
    }

    #[test]
    fn overflow_at_the_end_is_marked_on_close() {
        let mut buffer = OutputBuffer::new(4);
        let mut store = Vec::new();
        buffer.append(b"abcdef");
        buffer.close();
        deliver(&mut buffer, &mut store, 3);
        deliver(&mut buffer, &mut store, 1000);
        assert_eq!(String::from_utf8(store).unwrap(), format!("abcd{}", lost_output_marker(2)));
    }

    #[test]
    fn a_daemon_behind_or_ahead_is_followed() {
        let mut buffer = OutputBuffer::new(1024);
        buffer.append(b"abc");
        buffer.acknowledge(3);
        buffer.append(b"def");
        assert!(matches!(buffer.acknowledge(1), Acknowledged::DaemonBehind { lost_bytes: 2 }));
        let (offset, bytes) = buffer.peek(1000);
        assert_eq!(offset, 1);
        assert!(bytes.ends_with(b"]\ndef"));
        assert_eq!(buffer.acknowledge(100), Acknowledged::DaemonAhead { extra_bytes: 100 - 1 - bytes.len() as u64 });
        assert_eq!(buffer.held_len(), 0);
        assert_eq!(buffer.peek(10), (100, Vec::new()));
    }
}
