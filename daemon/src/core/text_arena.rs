//! Request texts of tasks created since the last snapshot, packed into large
//! blocks (docs/state.md, section 4).
//!
//! A task's text stays in memory only until the next snapshot writes it to a
//! text file. Held as a `String` each, the texts a snapshot lets go would be
//! freed one by one among allocations that stay (queue and index nodes), and
//! the allocator could give back almost none of it: a daemon that had held a
//! million names kept their memory. Packed in blocks of 1 MiB, with a count of
//! the texts each block still holds, a block is freed whole when its last text
//! goes, and a large allocation goes back to the system at once.
//!
//! A packed text, little-endian, at its offset in its block:
//!
//! ```text
//! u32 len (of what follows)
//! u16 name_len, name, u16 user_len, user, u16 tag_count, then per tag: u16 len, tag
//! ```
//!
//! Invariants: a block's `live` counts the packed texts in it not yet released;
//! a block other than the current one with `live == 0` is freed; every
//! `PackedText` handed out is released exactly once.

use super::model::{RequestText, RequestTextRef};

const BLOCK_BYTES: usize = 1 << 20;

/// Where a packed text lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedText {
    block: u32,
    offset: u32,
}

struct Block {
    bytes: Vec<u8>,
    live: u32,
}

#[derive(Default)]
pub struct TextArena {
    blocks: Vec<Option<Block>>,
    free: Vec<u32>,
    /// The block new texts go to.
    current: Option<u32>,
}

impl TextArena {
    /// Copies a text into the current block (written there directly).
    pub fn pack(&mut self, text: RequestTextRef<'_>) -> PackedText {
        let len = packed_len(text);
        let block = self.block_with_room(len);
        let held = self.blocks[block as usize].as_mut().expect("a current block is held");
        let offset = u32::try_from(held.bytes.len()).expect("blocks are under 4 GiB");
        write_packed(text, len, &mut held.bytes);
        assert_eq!(held.bytes.len() - offset as usize, len, "a packed text takes the length it was given");
        held.live += 1;
        PackedText { block, offset }
    }

    pub fn unpack(&self, packed: PackedText) -> RequestText {
        decode(self.bytes_of(packed))
    }

    /// The name alone: a bot's assignment reads nothing else, and unpacking
    /// every tag for it cost a string each on every dispatch.
    pub fn name(&self, packed: PackedText) -> String {
        Reader { bytes: self.bytes_of(packed), at: 4 }.string()
    }

    fn bytes_of(&self, packed: PackedText) -> &[u8] {
        let block = self.blocks[packed.block as usize].as_ref().expect("a packed text's block is held");
        &block.bytes[packed.offset as usize..]
    }

    /// The text is no longer needed; its block goes once it holds no other.
    pub fn release(&mut self, packed: PackedText) {
        let block = self.blocks[packed.block as usize].as_mut().expect("a packed text's block is held");
        block.live -= 1;
        if block.live == 0 && self.current != Some(packed.block) {
            self.free_block(packed.block);
        }
    }

    /// Bytes held in blocks (for tests and figures).
    pub fn held_bytes(&self) -> usize {
        self.blocks.iter().flatten().map(|block| block.bytes.capacity()).sum()
    }

    fn block_with_room(&mut self, len: usize) -> u32 {
        if let Some(current) = self.current {
            let block = self.blocks[current as usize].as_ref().expect("a current block is held");
            if block.bytes.capacity() - block.bytes.len() >= len {
                return current;
            }
            if block.live == 0 {
                self.free_block(current);
            }
        }
        let block = Block { bytes: Vec::with_capacity(BLOCK_BYTES.max(len)), live: 0 };
        let index = match self.free.pop() {
            Some(index) => {
                self.blocks[index as usize] = Some(block);
                index
            }
            None => {
                self.blocks.push(Some(block));
                u32::try_from(self.blocks.len() - 1).expect("fewer than 4 billion blocks")
            }
        };
        self.current = Some(index);
        index
    }

    fn free_block(&mut self, index: u32) {
        self.blocks[index as usize] = None;
        self.free.push(index);
        if self.current == Some(index) {
            self.current = None;
        }
    }
}

/// The bytes a text takes packed, its length prefix included.
fn packed_len(text: RequestTextRef<'_>) -> usize {
    let fields = [text.name, text.user].into_iter().chain(text.tags.iter().map(String::as_str));
    4 + 2 + fields.map(|field| 2 + field.len()).sum::<usize>()
}

/// Appends a text of `len` packed bytes (`packed_len`) to `out`.
fn write_packed(text: RequestTextRef<'_>, len: usize, out: &mut Vec<u8>) {
    // Validation bounds every field far below 64 KiB, and a text far below 4 GiB.
    let u16_of = |count: usize| u16::try_from(count).expect("a validated field fits 16 bits").to_le_bytes();
    out.extend_from_slice(&u32::try_from(len - 4).expect("a text is small").to_le_bytes());
    for field in [text.name, text.user] {
        out.extend_from_slice(&u16_of(field.len()));
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(&u16_of(text.tags.len()));
    for tag in text.tags {
        out.extend_from_slice(&u16_of(tag.len()));
        out.extend_from_slice(tag.as_bytes());
    }
}

fn decode(bytes: &[u8]) -> RequestText {
    let mut reader = Reader { bytes, at: 4 };
    let name = reader.string();
    let user = reader.string();
    let tags = (0..reader.u16()).map(|_| reader.string()).collect();
    RequestText { name, tags, user }
}

/// Reads a packed text, which only `encode` wrote.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u16(&mut self) -> u16 {
        let value = u16::from_le_bytes([self.bytes[self.at], self.bytes[self.at + 1]]);
        self.at += 2;
        value
    }

    fn string(&mut self) -> String {
        let len = usize::from(self.u16());
        let bytes = &self.bytes[self.at..self.at + len];
        self.at += len;
        // Written from a `String`: UTF-8.
        String::from_utf8(bytes.to_vec()).expect("a packed text is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> RequestText {
        RequestText {
            name: format!("task-{n}-{}", "x".repeat(200)),
            tags: vec![format!("n:{n}"), "pool:ci".into()],
            user: "ci".into(),
        }
    }

    #[test]
    fn texts_read_back_and_blocks_go_when_their_last_text_does() {
        let mut arena = TextArena::default();
        let packed: Vec<PackedText> = (0..20_000).map(|n| arena.pack((&text(n)).into())).collect();
        for (n, packed) in packed.iter().enumerate().step_by(997) {
            assert_eq!(arena.unpack(*packed), text(n));
            assert_eq!(arena.name(*packed), text(n).name);
        }
        assert!(arena.held_bytes() >= 4 * BLOCK_BYTES, "20,000 texts of ~240 bytes fill several blocks");
        let empty = RequestText::default();
        let last = arena.pack((&empty).into());
        for packed in &packed {
            arena.release(*packed);
        }
        assert_eq!(arena.held_bytes(), BLOCK_BYTES, "only the current block is left");
        assert_eq!(arena.unpack(last), empty);
        arena.release(last);
        let again = arena.pack((&text(1)).into());
        assert_eq!(arena.unpack(again), text(1));
        assert_eq!(arena.held_bytes(), BLOCK_BYTES, "the block is reused");
    }
}
