//! A run's output as a list of extents: which bytes of which pack hold which part of it.
//!
//! Invariant of a [`RunExtents`]: its extents are sorted by run offset, each starts where
//! the previous one ends (the first at 0), and `len` is where the last one ends. Chunks that
//! overlap (a chunk written again after a crash) are cut so each byte of the run comes from
//! the first copy that was written.

use super::format::IndexEntry;

/// Bytes `run_offset..run_offset + len` of a run's output, at `data_offset` of pack `pack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub run_offset: u64,
    pub pack: u64,
    pub data_offset: u64,
    pub len: u32,
}

impl Extent {
    pub(crate) fn from_entry(pack: u64, entry: &IndexEntry) -> Extent {
        Extent { run_offset: entry.run_offset, pack, data_offset: entry.data_offset(), len: entry.data_len }
    }

    pub(crate) fn end(&self) -> u64 {
        self.run_offset + u64::from(self.len)
    }
}

/// A run's output: contiguous extents from offset 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RunExtents {
    pub extents: Vec<Extent>,
    pub len: u64,
}

impl RunExtents {
    /// The run's output from every chunk found for it, in any order: the bytes from 0 up to
    /// the first byte no chunk holds, each taken from the chunk written first (lowest pack,
    /// then lowest position in it). Chunks past a hole are not part of the output.
    pub(crate) fn from_chunks(mut chunks: Vec<Extent>) -> RunExtents {
        chunks.sort_unstable_by_key(|extent| (extent.run_offset, extent.pack, extent.data_offset));
        let mut run = RunExtents::default();
        for chunk in chunks {
            if chunk.run_offset > run.len {
                break;
            }
            if chunk.end() <= run.len {
                continue;
            }
            let skip = run.len - chunk.run_offset;
            run.push(Extent {
                run_offset: run.len,
                pack: chunk.pack,
                data_offset: chunk.data_offset + skip,
                len: chunk.len - u32::try_from(skip).expect("skip is within the chunk"),
            });
        }
        run
    }

    /// Appends an extent that starts at the current end.
    pub(crate) fn push(&mut self, extent: Extent) {
        assert_eq!(extent.run_offset, self.len, "extents are contiguous");
        assert!(extent.len > 0);
        self.len = extent.end();
        self.extents.push(extent);
    }

    /// The pieces that hold `offset..offset + count`, each as (pack, data offset, bytes);
    /// the range must lie within the output.
    pub(crate) fn pieces(&self, offset: u64, count: usize) -> Vec<(u64, u64, usize)> {
        assert!(offset + count as u64 <= self.len);
        let first = self.extents.partition_point(|extent| extent.end() <= offset);
        let mut pieces = Vec::new();
        let mut at = offset;
        let end = offset + count as u64;
        for extent in &self.extents[first..] {
            if at >= end {
                break;
            }
            let skip = at - extent.run_offset;
            let take = (extent.end().min(end) - at) as usize;
            pieces.push((extent.pack, extent.data_offset + skip, take));
            at += take as u64;
        }
        pieces
    }

    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut end = 0;
        for extent in &self.extents {
            assert_eq!(extent.run_offset, end);
            assert!(extent.len > 0);
            end = extent.end();
        }
        assert_eq!(end, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(run_offset: u64, pack: u64, data_offset: u64, len: u32) -> Extent {
        Extent { run_offset, pack, data_offset, len }
    }

    #[test]
    fn duplicated_and_overlapping_chunks_count_once_from_the_first_copy() {
        let run = RunExtents::from_chunks(vec![
            chunk(0, 2, 500, 10),
            chunk(0, 1, 100, 10),
            chunk(5, 1, 300, 10),
            chunk(15, 3, 0, 5),
        ]);
        run.check_invariants();
        assert_eq!(run.len, 20);
        assert_eq!(run.extents, vec![chunk(0, 1, 100, 10), chunk(10, 1, 305, 5), chunk(15, 3, 0, 5)]);
    }

    #[test]
    fn chunks_past_a_hole_are_not_output() {
        let run = RunExtents::from_chunks(vec![chunk(0, 1, 0, 4), chunk(8, 1, 40, 4)]);
        assert_eq!(run.len, 4);
        assert_eq!(RunExtents::from_chunks(vec![chunk(3, 1, 0, 4)]).len, 0);
    }

    #[test]
    fn pieces_cross_extents() {
        let run = RunExtents::from_chunks(vec![chunk(0, 1, 100, 10), chunk(10, 2, 200, 10)]);
        assert_eq!(run.pieces(8, 4), vec![(1, 108, 2), (2, 200, 2)]);
        assert_eq!(run.pieces(10, 10), vec![(2, 200, 10)]);
        assert_eq!(run.pieces(0, 0), vec![]);
    }
}
