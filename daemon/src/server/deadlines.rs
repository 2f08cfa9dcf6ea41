//! When connections are due to be looked at for the hello and idle timeouts,
//! without a walk over all connections: a min-heap of (due time, token,
//! connection id), in milliseconds of a monotonic clock.
//!
//! Each connection records the earliest time it is armed for. An entry that
//! comes due is checked against the connection as it is now: the connection
//! may be gone, busy (no deadline), or due later (armed again). A connection
//! is armed anew only when its deadline moves earlier than what it is armed
//! for, so there are about as many entries as connections.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use mio::Token;

use crate::core::ConnId;

#[derive(Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(u64, usize, ConnId)>>,
}

impl Deadlines {
    /// Arms `(token, id)` for `due_ms` when `armed_ms` (the connection's
    /// record) is later or unset; updates the record.
    pub fn arm(&mut self, token: Token, id: ConnId, due_ms: u64, armed_ms: &mut Option<u64>) {
        if armed_ms.is_none_or(|armed| due_ms < armed) {
            self.heap.push(Reverse((due_ms, token.0, id)));
            *armed_ms = Some(due_ms);
        }
    }

    /// The next entry due at `now_ms` or before.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, Token, ConnId)> {
        let Reverse((due_ms, _, _)) = self.heap.peek()?;
        if *due_ms > now_ms {
            return None;
        }
        let Reverse((due_ms, token, id)) = self.heap.pop().expect("peeked");
        Some((due_ms, Token(token), id))
    }

    pub fn next_due_ms(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((due_ms, _, _))| *due_ms)
    }
}
