//! The paged filter of table format 3: the cache-local bloom filter's lines
//! cut into fixed-size pages, each stored as its own block, so that a
//! lookup reads (and caches) one page instead of the whole filter.
//!
//! A key's line is chosen over the whole filter exactly as in format 2
//! ([`filter_line`]); its page is `line / lines_per_page`. Pages lie back to
//! back, each followed by a block trailer, so page `i` starts at
//! `pages_offset + i * (lines_per_page * 64 + 5)`: no per-page index. Every
//! page holds `lines_per_page` lines but the last, which holds the rest. A
//! small header block after the pages ([`FilterGeometry`], 32 bytes, behind
//! its own trailer) records the probe count, the line count and the
//! geometry. The byte layout is in `docs/storage-format.md`, "Paged filter".

use super::bloom::{
    filter_line, in_line_positions, FILTER_LINES_MAX, FILTER_LINE_BITS, FILTER_LINE_BYTES, PROBES_MAX, PROBES_MIN,
};
use super::{BlockHandle, BLOCK_TRAILER_BYTES};
use crate::coding::{u32_le_at, u64_le_at};

/// Lines per filter page written by default: 64 lines of 64 bytes, 4 KiB,
/// the size of a data block, so a negative lookup reads one such page.
pub(crate) const FILTER_PAGE_LINES_DEFAULT: usize = 64;

/// Most lines per page a reader accepts (a 4 MiB page): bounds what one
/// lookup may read however the header was written.
pub(crate) const FILTER_PAGE_LINES_MAX: usize = 1 << 16;

/// Bytes of the filter header block's contents.
pub(crate) const FILTER_HEADER_BYTES: usize = 32;

/// The version of the filter header's own layout.
const FILTER_HEADER_VERSION: u32 = 1;

const _: () = assert!(FILTER_PAGE_LINES_DEFAULT >= 1 && FILTER_PAGE_LINES_DEFAULT <= FILTER_PAGE_LINES_MAX);
const _: () = assert!(FILTER_PAGE_LINES_MAX <= u32::MAX as usize);

/// Where and how a table's filter pages lie: the filter header's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FilterGeometry {
    /// Probes per key, `PROBES_MIN..=PROBES_MAX`.
    pub probes: usize,
    /// Lines in the whole filter, `1..=FILTER_LINES_MAX`.
    pub lines: u64,
    /// Lines in every page but the last, `1..=FILTER_PAGE_LINES_MAX`.
    pub lines_per_page: u32,
    /// Pages: `ceil(lines / lines_per_page)`.
    pub pages: u32,
    /// File offset of page 0's contents.
    pub pages_offset: u64,
}

impl FilterGeometry {
    /// The geometry of a filter of `lines` lines cut into pages of
    /// `lines_per_page` lines, the first at `pages_offset`. Panics on
    /// arguments outside the format's bounds: the builder derives them from
    /// its options and its own filter, so that would be a bug.
    pub(crate) fn new(probes: usize, lines: u64, lines_per_page: usize, pages_offset: u64) -> FilterGeometry {
        assert!((PROBES_MIN..=PROBES_MAX).contains(&probes), "probe count out of range");
        assert!((1..=FILTER_LINES_MAX).contains(&lines), "line count out of range");
        assert!(
            (1..=FILTER_PAGE_LINES_MAX).contains(&lines_per_page),
            "lines per page out of range"
        );
        let pages = lines.div_ceil(lines_per_page as u64);
        FilterGeometry {
            probes,
            lines,
            lines_per_page: u32::try_from(lines_per_page).expect("FILTER_PAGE_LINES_MAX fits u32"),
            pages: u32::try_from(pages).expect("at most FILTER_LINES_MAX pages"),
            pages_offset,
        }
    }

    /// Encodes the header: version u32, probes u32, lines u64, lines per
    /// page u32, pages u32, pages offset u64 (little-endian).
    pub(crate) fn encode(&self) -> [u8; FILTER_HEADER_BYTES] {
        let mut out = [0u8; FILTER_HEADER_BYTES];
        out[0..4].copy_from_slice(&FILTER_HEADER_VERSION.to_le_bytes());
        let probes = u32::try_from(self.probes).expect("PROBES_MAX fits u32");
        out[4..8].copy_from_slice(&probes.to_le_bytes());
        out[8..16].copy_from_slice(&self.lines.to_le_bytes());
        out[16..20].copy_from_slice(&self.lines_per_page.to_le_bytes());
        out[20..24].copy_from_slice(&self.pages.to_le_bytes());
        out[24..32].copy_from_slice(&self.pages_offset.to_le_bytes());
        out
    }

    /// Decodes a header and checks its fields against each other and the
    /// format's bounds; the reason on failure names what is wrong. Where
    /// the pages lie in the file is checked by [`Self::check_placement`].
    pub(crate) fn decode(bytes: &[u8]) -> Result<FilterGeometry, &'static str> {
        if bytes.len() != FILTER_HEADER_BYTES {
            return Err("filter header has the wrong size");
        }
        if u32_le_at(bytes, 0) != FILTER_HEADER_VERSION {
            return Err("unknown filter header version");
        }
        let probes = u32_le_at(bytes, 4) as usize;
        if !(PROBES_MIN..=PROBES_MAX).contains(&probes) {
            return Err("filter probe count out of range");
        }
        let lines = u64_le_at(bytes, 8);
        if !(1..=FILTER_LINES_MAX).contains(&lines) {
            return Err("filter line count out of range");
        }
        let lines_per_page = u32_le_at(bytes, 16);
        if !(1..=FILTER_PAGE_LINES_MAX as u64).contains(&u64::from(lines_per_page)) {
            return Err("filter lines per page out of range");
        }
        let pages = u32_le_at(bytes, 20);
        if u64::from(pages) != lines.div_ceil(u64::from(lines_per_page)) {
            return Err("filter page count does not match its line count");
        }
        Ok(FilterGeometry {
            probes,
            lines,
            lines_per_page,
            pages,
            pages_offset: u64_le_at(bytes, 24),
        })
    }

    /// Bytes of the pages with their trailers, back to back; `None` on
    /// overflow.
    fn pages_bytes(&self) -> Option<u64> {
        let trailers = u64::from(self.pages).checked_mul(BLOCK_TRAILER_BYTES)?;
        self.lines.checked_mul(FILTER_LINE_BYTES as u64)?.checked_add(trailers)
    }

    /// Checks that the pages end exactly where the header block, at
    /// `header_offset`, begins (the writer puts the header right after them).
    pub(crate) fn check_placement(&self, header_offset: u64) -> Result<(), &'static str> {
        let end = self
            .pages_bytes()
            .and_then(|bytes| self.pages_offset.checked_add(bytes));
        if end == Some(header_offset) {
            Ok(())
        } else {
            Err("filter pages do not end where the filter header begins")
        }
    }

    /// The page a key with `hash` maps to, and its line within the page.
    pub(crate) fn locate(&self, hash: u64) -> (u32, u64) {
        let line = filter_line(hash, self.lines);
        let per_page = u64::from(self.lines_per_page);
        let page = u32::try_from(line / per_page).expect("a line lies in one of the pages");
        (page, line % per_page)
    }

    /// Where page `page` lies: computed from the geometry alone. `None` if
    /// there is no such page or its offset overflows (a geometry that
    /// passed [`Self::check_placement`] never overflows).
    pub(crate) fn page_handle(&self, page: u32) -> Option<BlockHandle> {
        if page >= self.pages {
            return None;
        }
        let per_page = u64::from(self.lines_per_page);
        let first_line = u64::from(page) * per_page;
        let lines = per_page.min(self.lines.checked_sub(first_line)?);
        let stride = per_page * FILTER_LINE_BYTES as u64 + BLOCK_TRAILER_BYTES;
        Some(BlockHandle {
            offset: self.pages_offset.checked_add(u64::from(page).checked_mul(stride)?)?,
            size: lines * FILTER_LINE_BYTES as u64,
        })
    }

    /// False only if the key with `hash`, whose line is `line_in_page` of
    /// `page` (the page's verified contents), was certainly not added.
    pub(crate) fn page_may_contain(&self, page: &[u8], line_in_page: u64, hash: u64) -> bool {
        let base = line_in_page * FILTER_LINE_BITS;
        in_line_positions(hash, self.probes).all(|bit| {
            let bit = base + bit;
            page.get((bit / 8) as usize)
                .is_some_and(|&byte| byte & (1 << (bit % 8)) != 0)
        })
    }
}

/// A cache-local filter (bit array then probe byte, as
/// `FilterBuilder::finish` encodes it) cut into pages of `lines_per_page`
/// lines: the probe count, the line count and the pages' contents in order.
/// `None` if `filter` is not a whole number of lines followed by a probe
/// byte (the builder's own output always is).
pub(crate) fn split_into_pages(
    filter: &[u8],
    lines_per_page: usize,
) -> Option<(usize, u64, std::slice::Chunks<'_, u8>)> {
    let (&probes, bits) = filter.split_last()?;
    if bits.is_empty() || !bits.len().is_multiple_of(FILTER_LINE_BYTES) || lines_per_page == 0 {
        return None;
    }
    let lines = (bits.len() / FILTER_LINE_BYTES) as u64;
    Some((
        usize::from(probes),
        lines,
        bits.chunks(lines_per_page * FILTER_LINE_BYTES),
    ))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::sstable::bloom::{bloom_hash, Filter, FilterBuilder, FilterLayout};

    /// A cache-local filter over `keys` keys at 10 bits per key: its bytes
    /// (bits then probe byte) and the parsed whole filter.
    fn whole_filter(keys: u32) -> (Vec<u8>, Filter) {
        let mut builder = FilterBuilder::new(10, FilterLayout::CacheLocal);
        for i in 0..keys {
            builder.add_key(format!("present-{i}").as_bytes());
        }
        let bytes = builder.finish();
        let filter = Filter::parse(Bytes::from(bytes.clone()), FilterLayout::CacheLocal).expect("fresh filter");
        (bytes, filter)
    }

    /// Pages as a reader would find them, from the geometry alone.
    fn paged(bytes: &[u8], lines_per_page: usize) -> (FilterGeometry, Vec<u8>) {
        let (probes, lines, chunks) = split_into_pages(bytes, lines_per_page).expect("whole lines");
        let geometry = FilterGeometry::new(probes, lines, lines_per_page, 1000);
        let mut file = vec![0u8; 1000];
        for chunk in chunks {
            file.extend_from_slice(chunk);
            file.extend_from_slice(&[0u8; BLOCK_TRAILER_BYTES as usize]);
        }
        (geometry, file)
    }

    /// What the paged filter answers for `key`, reading the page through
    /// its computed handle.
    fn paged_may_contain(geometry: &FilterGeometry, file: &[u8], key: &[u8]) -> bool {
        let hash = bloom_hash(key);
        let (page, line) = geometry.locate(hash);
        let handle = geometry.page_handle(page).expect("the key's page exists");
        let contents = &file[handle.offset as usize..(handle.offset + handle.size) as usize];
        geometry.page_may_contain(contents, line, hash)
    }

    #[test]
    fn a_paged_filter_answers_exactly_as_the_whole_filter() {
        // Same lines, same probes: paging changes where bytes lie, never an answer or the false-positive rate.
        for (keys, lines_per_page) in [(100_000, FILTER_PAGE_LINES_DEFAULT), (5_000, 7), (10, 64), (3_000, 1)] {
            let (bytes, whole) = whole_filter(keys);
            let (geometry, file) = paged(&bytes, lines_per_page);
            assert_eq!(geometry.check_placement(file.len() as u64), Ok(()));
            for i in 0..keys {
                let key = format!("present-{i}");
                assert!(
                    paged_may_contain(&geometry, &file, key.as_bytes()),
                    "false negative {key}"
                );
            }
            let mut false_positives = 0u32;
            for i in 0..20_000 {
                let key = format!("absent-{i}");
                let answer = paged_may_contain(&geometry, &file, key.as_bytes());
                assert_eq!(answer, whole.may_contain(key.as_bytes()), "{key} answered differently");
                false_positives += u32::from(answer);
            }
            println!(
                "{keys} keys, {} pages: {false_positives} of 20000 absent keys pass",
                geometry.pages
            );
            if keys >= 1_000 {
                assert!(false_positives < 400, "false-positive rate above 2%");
            }
        }
    }

    #[test]
    fn filter_headers_round_trip_and_damage_is_rejected() {
        // The header locates every page: a wrong field must be refused, never followed.
        let geometry = FilterGeometry::new(7, 1_000, 64, 4096);
        assert_eq!(geometry.pages, 16);
        assert_eq!(FilterGeometry::decode(&geometry.encode()), Ok(geometry));
        let damaged = |at: usize, value: u8| {
            let mut bytes = geometry.encode();
            bytes[at] = value;
            FilterGeometry::decode(&bytes)
        };
        assert!(damaged(0, 2).is_err(), "header version");
        assert!(damaged(4, 0).is_err(), "no probes");
        assert!(damaged(4, 31).is_err(), "too many probes");
        assert!(damaged(8, 0).is_err(), "line count that disagrees with the page count");
        assert!(damaged(20, 17).is_err(), "page count");
        assert!(damaged(16, 0).is_err(), "lines per page of 0");
        assert!(
            FilterGeometry::decode(&geometry.encode()[..31]).is_err(),
            "short header"
        );
        let end = 4096 + 1_000 * 64 + 16 * BLOCK_TRAILER_BYTES;
        assert_eq!(geometry.check_placement(end), Ok(()));
        assert!(geometry.check_placement(end + 1).is_err());
        let far = FilterGeometry {
            pages_offset: u64::MAX - 10,
            ..geometry
        };
        assert!(far.check_placement(end).is_err(), "overflowing placement");
    }

    #[test]
    fn pages_are_full_but_the_last_and_lie_back_to_back() {
        // A page's offset is computed, not stored: the arithmetic is part of the format.
        let geometry = FilterGeometry::new(7, 130, 64, 100);
        assert_eq!(geometry.pages, 3);
        let handles: Vec<BlockHandle> = (0..3).filter_map(|page| geometry.page_handle(page)).collect();
        assert_eq!(handles.len(), 3);
        assert_eq!(geometry.page_handle(3), None, "past the last page");
        assert_eq!(
            handles[0],
            BlockHandle {
                offset: 100,
                size: 4096
            }
        );
        assert_eq!(
            handles[1],
            BlockHandle {
                offset: 100 + 4101,
                size: 4096
            }
        );
        assert_eq!(
            handles[2],
            BlockHandle {
                offset: 100 + 2 * 4101,
                size: 128
            }
        );
        assert_eq!(handles[2].end_with_trailer(), Some(100 + 2 * 4101 + 133));
        assert_eq!(geometry.check_placement(100 + 2 * 4101 + 133), Ok(()));
        assert!(split_into_pages(&[0u8; 65], 0).is_none());
        assert!(split_into_pages(&[7], 1).is_none(), "no bits");
    }
}
