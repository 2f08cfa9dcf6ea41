//! One record: its byte layout, its encoder, and the decoder that checks it.
//!
//! Invariants: a record starts at a 16-byte-aligned offset of its segment; its payload
//! follows its 32-byte header, so the payload is 16-byte aligned too; the record occupies
//! `RECORD_HEADER_BYTES + payload_len` rounded up to 16 bytes. A header of all zeros is not a
//! record (a real record has `seq >= 1`): it marks the end of the log.

/// Records and their payloads start at multiples of this many bytes in a segment file, so a
/// payload can be accessed in place by `rkyv`.
pub const RECORD_ALIGNMENT: usize = 16;
pub(crate) const RECORD_HEADER_BYTES: usize = 32;
const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(RECORD_ALIGNMENT));

/// A record as stored in the log; `payload` points into the mapped segment and is
/// 16-byte aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub kind: u16,
    pub payload: &'a [u8],
}

/// The bytes a record with a payload of `payload_len` bytes occupies, padding included.
pub(crate) fn record_bytes(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + payload_len.next_multiple_of(RECORD_ALIGNMENT)
}

/// Encodes the header of record `seq`.
///
/// Layout (all integers little-endian), 32 bytes:
///
/// ```text
/// offset  size  field
///      0     4  payload_len   u32, bytes of payload (padding not counted)
///      4     2  kind          u16, chosen by the caller
///      6     2  reserved      zero
///      8     8  seq           u64, >= 1, consecutive across the whole log
///     16    12  reserved      zero
///     28     4  crc           CRC-32 (crc32fast) of header bytes 0..28, then the payload
///     32     n  payload       payload_len bytes, 16-byte aligned in the file
///   32+n     p  padding       zero, up to the next multiple of 16; not covered by the CRC
/// ```
pub(crate) fn encode_header(kind: u16, seq: u64, payload: &[u8]) -> [u8; RECORD_HEADER_BYTES] {
    assert!(seq >= 1, "sequence numbers start at 1");
    let payload_len = u32::try_from(payload.len()).expect("payload length checked against the segment size");
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[0..4].copy_from_slice(&payload_len.to_le_bytes());
    header[4..6].copy_from_slice(&kind.to_le_bytes());
    header[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = record_crc(&header, payload);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    debug_assert!(matches!(decode(&concat(&header, payload), 0), Decoded::Record(record) if record.seq == seq));
    header
}

fn record_crc(header: &[u8; RECORD_HEADER_BYTES], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[0..28]);
    hasher.update(payload);
    hasher.finalize()
}

/// The record as it lies in the file (for the read-back check in debug builds).
fn concat(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(payload);
    bytes.resize(record_bytes(payload.len()), 0);
    bytes
}

/// What the bytes at an offset of a segment hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A header of zeros, or no room left for a header: nothing more in this segment.
    End,
    /// A record whose length fits and whose CRC matches. Its `seq` is not checked here.
    Record(RecordRef<'a>),
    /// Something that is neither: a torn write or corruption.
    Invalid(String),
}

/// Decodes and verifies the record at `offset` of `segment` (the segment's bytes up to its
/// usable end, a multiple of 16).
pub(crate) fn decode(segment: &[u8], offset: usize) -> Decoded<'_> {
    debug_assert_eq!(offset % RECORD_ALIGNMENT, 0);
    debug_assert_eq!(segment.len() % RECORD_ALIGNMENT, 0, "padding must fit wherever a payload fits");
    let Some(header) = segment.get(offset..offset + RECORD_HEADER_BYTES) else {
        return Decoded::End;
    };
    let header: &[u8; RECORD_HEADER_BYTES] = header.try_into().expect("slice of header length");
    if header.iter().all(|&byte| byte == 0) {
        return Decoded::End;
    }
    let fields = HeaderFields::parse(header);
    let payload_start = offset + RECORD_HEADER_BYTES;
    let room = segment.len() - payload_start;
    if fields.payload_len > room {
        return Decoded::Invalid(format!("record length {} runs past the segment end", fields.payload_len));
    }
    let payload = &segment[payload_start..payload_start + fields.payload_len];
    if record_crc(header, payload) != fields.crc {
        return Decoded::Invalid("record CRC mismatch".to_string());
    }
    if header[6..8] != [0, 0] || header[16..28].iter().any(|&byte| byte != 0) {
        return Decoded::Invalid("reserved header bytes are not zero".to_string());
    }
    if fields.seq == 0 {
        return Decoded::Invalid("record sequence number 0".to_string());
    }
    Decoded::Record(RecordRef { seq: fields.seq, kind: fields.kind, payload })
}

/// Decodes a record that was verified when the log was opened or that this process wrote,
/// without checking its CRC again (replay would otherwise checksum everything twice).
pub(crate) fn decode_trusted(segment: &[u8], offset: usize) -> RecordRef<'_> {
    let header: &[u8; RECORD_HEADER_BYTES] =
        segment[offset..offset + RECORD_HEADER_BYTES].try_into().expect("slice of header length");
    let fields = HeaderFields::parse(header);
    let payload_start = offset + RECORD_HEADER_BYTES;
    RecordRef {
        seq: fields.seq,
        kind: fields.kind,
        payload: &segment[payload_start..payload_start + fields.payload_len],
    }
}

/// Reads just the sequence number of the header at `offset`, if there is room for one.
pub(crate) fn peek_seq(segment: &[u8], offset: usize) -> Option<u64> {
    let header = segment.get(offset..offset + RECORD_HEADER_BYTES)?;
    Some(u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")))
}

struct HeaderFields {
    payload_len: usize,
    kind: u16,
    seq: u64,
    crc: u32,
}

impl HeaderFields {
    fn parse(header: &[u8; RECORD_HEADER_BYTES]) -> HeaderFields {
        let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        HeaderFields {
            payload_len: u32_at(0) as usize,
            kind: u16::from_le_bytes([header[4], header[5]]),
            seq: u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")),
            crc: u32_at(28),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(kind: u16, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut bytes = encode_header(kind, seq, payload).to_vec();
        bytes.extend_from_slice(payload);
        bytes.resize(record_bytes(payload.len()), 0);
        bytes
    }

    #[test]
    fn round_trip_and_padding() {
        for len in [0, 1, 15, 16, 17, 100] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            let bytes = encode(7, 42, &payload);
            assert_eq!(bytes.len() % RECORD_ALIGNMENT, 0);
            let Decoded::Record(record) = decode(&bytes, 0) else { panic!("record of {len} bytes does not decode") };
            assert_eq!(record, RecordRef { seq: 42, kind: 7, payload: &payload });
            assert_eq!(decode_trusted(&bytes, 0), record);
        }
    }

    #[test]
    fn zero_header_is_end_and_damage_is_invalid() {
        assert_eq!(decode(&[0u8; 64], 0), Decoded::End);
        assert_eq!(decode(&[0u8; 16], 0), Decoded::End);
        let mut bytes = encode(1, 1, b"payload");
        bytes[33] ^= 1;
        assert!(matches!(decode(&bytes, 0), Decoded::Invalid(_)));
        let mut bytes = encode(1, 1, b"payload");
        bytes[0] = 200;
        assert!(matches!(decode(&bytes, 0), Decoded::Invalid(reason) if reason.contains("runs past")));
    }
}
