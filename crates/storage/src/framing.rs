//! Record framing and the torn-tail scan, shared by every log-structured
//! file the node writes: the engine's WAL and manifest (`crate::log`) and
//! the Raft log store's segments (`raft-node`'s `log_store::segment`).
//!
//! A file starts with a 16-byte header (`magic: u64`, `version: u32`,
//! `crc32` of those 12 bytes: u32, all little-endian), then records:
//! `crc32: u32 | length: u32 | payload`, where the crc covers the 4 length
//! bytes and the payload. The kinds of file differ only in their magic
//! number, their version and their largest record; the bytes are the
//! same. What a scan's outcome means (a torn tail to cut, an error) is the
//! caller's to decide: the rules differ by file (only the newest Raft
//! segment may end torn, say).
//!
//! The scan's rule for a torn write: a record is torn if its declared end
//! lies past the end of the file, or its crc fails and only zeros follow
//! it, unless a length one or two bits away passes its crc and valid
//! records follow to the end (then its length field is damaged:
//! [`ScanEnd::DamagedLength`]); or its crc fails and one of the 512-byte
//! disk sectors it spans holds only zeros there (that part of the write never reached the disk:
//! unsynced sectors land in any order, so a lost one can be followed by
//! written ones); or its header is eight zero bytes with data after it (no
//! record starts so: the crc of a zero length is not zero). Zeros alone
//! after the records are the unused end of a preallocated file.
//!
//! Files that are reused without being zeroed (the Raft log's recycled
//! segments) use [`named`] records instead, which name their file.

use std::ops::Range;

pub mod named;

/// Bytes of a file's header.
pub const FILE_HEADER_BYTES: usize = 16;
/// Bytes of a record's header (crc and length).
pub const RECORD_HEADER_BYTES: usize = 8;
/// Granularity at which a torn write can leave unwritten (zero) bytes
/// between written ones: the disk's sector.
pub const SECTOR_BYTES: usize = 512;

/// The header a file of kind `magic`, format `version`, starts with.
pub fn file_header(magic: u64, version: u32) -> [u8; FILE_HEADER_BYTES] {
    let mut header = [0u8; FILE_HEADER_BYTES];
    header[..8].copy_from_slice(&magic.to_le_bytes());
    header[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&header[..12]);
    header[12..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// A file header read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileHeader {
    /// The header's checksum holds; its magic number and version.
    Valid {
        /// The kind of file.
        magic: u64,
        /// Its format version.
        version: u32,
    },
    /// The checksum of the first 12 bytes does not match.
    ChecksumMismatch {
        /// The checksum stored in the header.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
}

/// Reads the header at the start of `buf`, which must hold at least
/// [`FILE_HEADER_BYTES`].
pub fn read_file_header(buf: &[u8]) -> FileHeader {
    assert!(
        buf.len() >= FILE_HEADER_BYTES,
        "a file header needs {FILE_HEADER_BYTES} bytes"
    );
    let stored = u32_at(buf, 12);
    let computed = crc32fast::hash(&buf[..12]);
    if stored != computed {
        return FileHeader::ChecksumMismatch { stored, computed };
    }
    FileHeader::Valid {
        magic: u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")),
        version: u32_at(buf, 8),
    }
}

/// Frames `payload` as one record at the end of `out`.
///
/// Panics if the payload exceeds `record_bytes_max` (the file kind's
/// limit, at most `u32::MAX`): callers check sizes they do not control.
pub fn frame(out: &mut Vec<u8>, payload: &[u8], record_bytes_max: usize) {
    assert!(
        payload.len() <= record_bytes_max,
        "record of {} bytes exceeds the limit of {record_bytes_max}",
        payload.len()
    );
    let len = u32::try_from(payload.len())
        .expect("record limits fit in u32")
        .to_le_bytes();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(payload);
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&len);
    out.extend_from_slice(payload);
}

/// How the records of a scanned file end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// The last record ends at the end of the file.
    Complete,
    /// Only zeros follow the last record.
    ZeroTail,
    /// A torn write follows the last valid record (see the module doc).
    Torn {
        /// Why the bytes there are a torn write.
        reason: &'static str,
    },
    /// A record declares a length above the limit.
    LengthTooLarge {
        /// The declared length.
        len: usize,
    },
    /// A record's declared length runs past the end of the file or into
    /// the zeros after the records, yet a length one or two bits away
    /// passes the record's checksum and valid records follow it one after
    /// another to the end of the file or its zero tail: the length field
    /// is damaged, and reading the record as a torn write would drop every
    /// record after it. (A torn record keeps the length it was written
    /// with, which the checksum covers.)
    DamagedLength {
        /// The declared length.
        len: usize,
        /// Where the record ends with its length repaired: the first
        /// record after it, or the end of the records.
        records_at: usize,
    },
    /// A record's checksum fails, and it cannot be a torn write.
    ChecksumMismatch {
        /// The checksum stored in the record.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
}

/// What [`scan_records`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordScan {
    /// The byte range of each valid record's payload, in file order.
    pub payloads: Vec<Range<usize>>,
    /// Bytes up to the end of the last valid record: where the records end,
    /// and where a torn tail or the damage starts.
    pub valid_bytes: usize,
    /// What follows the valid records.
    pub end: ScanEnd,
}

/// Reads the records of `buf` from `start` (just after the file header).
pub fn scan_records(buf: &[u8], start: usize, record_bytes_max: usize) -> RecordScan {
    let mut payloads = Vec::new();
    let mut offset = start;
    let end = loop {
        let Some(rest) = buf.get(offset..).filter(|rest| !rest.is_empty()) else {
            break ScanEnd::Complete;
        };
        let header = &rest[..rest.len().min(RECORD_HEADER_BYTES)];
        if all_zero(header) {
            if all_zero(rest) {
                break ScanEnd::ZeroTail;
            }
            break ScanEnd::Torn {
                reason: "zeroed record header followed by data",
            };
        }
        if rest.len() < RECORD_HEADER_BYTES {
            break ScanEnd::Torn {
                reason: "record header cut short",
            };
        }
        let stored = u32_at(rest, 0);
        let len = u32_at(rest, 4) as usize;
        let record_end = RECORD_HEADER_BYTES.saturating_add(len);
        // No write of a valid record leaves a length above the limit, torn
        // or not: that is damage wherever it is.
        if len > record_bytes_max {
            break ScanEnd::LengthTooLarge { len };
        }
        if record_end > rest.len() {
            if let Some(records_at) = repaired_length(buf, offset, record_bytes_max) {
                break ScanEnd::DamagedLength { len, records_at };
            }
            break ScanEnd::Torn {
                reason: "record runs past the end of the file",
            };
        }
        let computed = crc32fast::hash(&rest[4..record_end]);
        if computed != stored {
            if all_zero(&rest[record_end..]) {
                if let Some(records_at) = repaired_length(buf, offset, record_bytes_max) {
                    break ScanEnd::DamagedLength { len, records_at };
                }
                break ScanEnd::Torn {
                    reason: "checksum mismatch on the final record",
                };
            }
            if has_zeroed_sector(buf, offset, offset + record_end) {
                break ScanEnd::Torn {
                    reason: "checksum mismatch on a record with a sector never written",
                };
            }
            break ScanEnd::ChecksumMismatch { stored, computed };
        }
        payloads.push(offset + RECORD_HEADER_BYTES..offset + record_end);
        offset += record_end;
    };
    RecordScan {
        payloads,
        valid_bytes: offset.min(buf.len()),
        end,
    }
}

/// Most bits of a length field a repair may flip back: one flipped bit is
/// the damage seen in practice; two leave room without opening the door
/// to chance (a repair must also pass the record's own checksum).
const LENGTH_BITS_REPAIRED_MAX: u32 = 2;

/// Where the record at `offset` really ends, if its length field is
/// damaged: the end of a shorter length, at most
/// [`LENGTH_BITS_REPAIRED_MAX`] bits away from the declared one, with which
/// the record's checksum holds and after which valid records follow one
/// another to the end of `buf` (or to only zeros).
///
/// Only asked about a record that would otherwise read as the torn last
/// one. A torn record keeps the length it was written with, so no other
/// length passes its checksum (but by a 2^-32 chance per candidate): the
/// checksum covers the length field. At most 528 candidate lengths; the
/// chains after them are walked once each (a failed one is remembered),
/// so the search stays linear even through a value full of framed
/// records.
fn repaired_length(buf: &[u8], offset: usize, record_bytes_max: usize) -> Option<usize> {
    let header = buf.get(offset..offset + RECORD_HEADER_BYTES)?;
    let stored = u32_at(header, 0);
    let declared = u32_at(header, 4);
    let payload_at = offset + RECORD_HEADER_BYTES;
    // Where the trailing zeros (if any) start: a chain may end there.
    let zeros_from = buf.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
    let mut lengths: Vec<u32> = (0..32)
        .flat_map(|a| (a..32).map(move |b| (1u32 << a) | (1u32 << b)))
        .filter(|mask| mask.count_ones() <= LENGTH_BITS_REPAIRED_MAX && declared & mask == *mask)
        .map(|mask| declared ^ mask)
        .collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut chains = Chains::new(payload_at, zeros_from.max(payload_at));
    for len in lengths {
        let end = payload_at + len as usize;
        if end > buf.len() || !chains.reach_the_end(buf, end, record_bytes_max) {
            continue;
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len.to_le_bytes());
        crc.update(&buf[payload_at..end]);
        if crc.finalize() == stored {
            return Some(end);
        }
    }
    None
}

/// Which offsets start a chain of valid records that runs to the end of
/// the buffer or to its trailing zeros; every offset is walked at most
/// once, the ones whose chain fails remembered in a bitmap.
struct Chains {
    from: usize,
    zeros_from: usize,
    dead: Vec<u64>,
}

impl Chains {
    /// For offsets from `from`, in a buffer whose trailing zeros start at
    /// `zeros_from`.
    fn new(from: usize, zeros_from: usize) -> Chains {
        Chains {
            from,
            zeros_from,
            dead: vec![0; (zeros_from - from).div_ceil(64)],
        }
    }

    fn is_dead(&self, at: usize) -> bool {
        let bit = at - self.from;
        self.dead[bit / 64] & (1 << (bit % 64)) != 0
    }

    /// Whether valid records follow one another from `at` to the end of
    /// `buf` or to its trailing zeros.
    fn reach_the_end(&mut self, buf: &[u8], start: usize, record_bytes_max: usize) -> bool {
        let mut walked = Vec::new();
        let mut at = start;
        let reached = loop {
            if at == buf.len() || at >= self.zeros_from {
                break true;
            }
            if self.is_dead(at) {
                break false;
            }
            walked.push(at);
            match record_at(buf, at, record_bytes_max) {
                Some(end) => at = end,
                None => break false,
            }
        };
        if !reached {
            for at in walked {
                let bit = at - self.from;
                self.dead[bit / 64] |= 1 << (bit % 64);
            }
        }
        reached
    }
}

/// The end of the valid record at `at` in `buf`, if one is there: a
/// payload within the limit and the file, with its checksum.
fn record_at(buf: &[u8], at: usize, record_bytes_max: usize) -> Option<usize> {
    let header = buf.get(at..at.checked_add(RECORD_HEADER_BYTES)?)?;
    let len = u32_at(header, 4) as usize;
    if len > record_bytes_max {
        return None;
    }
    let end = at.checked_add(RECORD_HEADER_BYTES)?.checked_add(len)?;
    let body = buf.get(at + 4..end)?;
    (crc32fast::hash(body) == u32_at(header, 0)).then_some(end)
}

/// Checks one whole record (header and payload) read back at a known place
/// and returns its payload, or what is wrong with it.
pub fn check_record(record: &[u8]) -> Result<&[u8], String> {
    if record.len() < RECORD_HEADER_BYTES {
        return Err(format!("record of {} bytes has no room for its header", record.len()));
    }
    let stored = u32_at(record, 0);
    let len = u32_at(record, 4) as usize;
    if RECORD_HEADER_BYTES.saturating_add(len) != record.len() {
        return Err(format!(
            "record length {len} disagrees with the index ({} payload bytes)",
            record.len() - RECORD_HEADER_BYTES
        ));
    }
    let computed = crc32fast::hash(&record[4..]);
    if computed != stored {
        return Err(format!(
            "checksum mismatch on read: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    Ok(&record[RECORD_HEADER_BYTES..])
}

/// Whether `bytes` holds only zeros.
pub fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Whether the part of some disk sector that lies in `buf[start..end]` is
/// all zeros.
fn has_zeroed_sector(buf: &[u8], start: usize, end: usize) -> bool {
    let mut sector = start - start % SECTOR_BYTES;
    while sector < end {
        if all_zero(&buf[sector.max(start)..(sector + SECTOR_BYTES).min(end)]) {
            return true;
        }
        sector += SECTOR_BYTES;
    }
    false
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = file_header(7, 1).to_vec();
        for p in payloads {
            frame(&mut buf, p, 1 << 20);
        }
        buf
    }

    #[test]
    fn frames_round_trip_and_the_header_is_checked() {
        // What is framed is scanned back whole, in order; a flipped header byte is caught.
        let buf = framed(&[b"one", b"", b"three"]);
        assert_eq!(read_file_header(&buf), FileHeader::Valid { magic: 7, version: 1 });
        let scan = scan_records(&buf, FILE_HEADER_BYTES, 1 << 20);
        let payloads: Vec<&[u8]> = scan.payloads.iter().map(|r| &buf[r.clone()]).collect();
        assert_eq!(payloads, vec![&b"one"[..], b"", b"three"]);
        assert_eq!((scan.valid_bytes, scan.end), (buf.len(), ScanEnd::Complete));
        let start = scan.payloads[2].start - RECORD_HEADER_BYTES;
        assert_eq!(check_record(&buf[start..]), Ok(&b"three"[..]));
        let mut bad = buf.clone();
        bad[9] ^= 1;
        assert!(matches!(read_file_header(&bad), FileHeader::ChecksumMismatch { .. }));
    }

    #[test]
    fn a_damaged_length_that_runs_past_the_end_is_not_a_torn_write() {
        // One flipped bit in a length field used to read as a torn tail and
        // drop every synced record after it.
        let records: Vec<Vec<u8>> = (0..6).map(|i| vec![b'a' + i; 40 + usize::from(i)]).collect();
        let payloads: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let buf = framed(&payloads);
        let second = FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 40;
        let third = second + RECORD_HEADER_BYTES + 41;
        for tail in [Vec::new(), vec![0u8; 3000], vec![0u8; 8000]] {
            let mut damaged = buf.clone();
            damaged[second + 5] ^= 0x10; // length 41 -> 4137: past the end, or into the zeros
            damaged.extend_from_slice(&tail);
            let scan = scan_records(&damaged, FILE_HEADER_BYTES, 1 << 20);
            assert_eq!(scan.valid_bytes, second);
            assert_eq!(
                scan.end,
                ScanEnd::DamagedLength {
                    len: 41 + 0x1000,
                    records_at: third
                },
                "with {} zeros after the records",
                tail.len()
            );
        }
        // A length above the limit is damage even where it runs past the end.
        let mut huge = buf.clone();
        huge[second + 7] = 0x7f;
        let scan = scan_records(&huge, FILE_HEADER_BYTES, 1 << 20);
        assert!(matches!(scan.end, ScanEnd::LengthTooLarge { .. }), "{:?}", scan.end);
        // The last record cut short is still a torn write, with or without
        // zeros written ahead after it.
        for cut in [1, 9, 30] {
            let torn = &buf[..buf.len() - cut];
            let scan = scan_records(torn, FILE_HEADER_BYTES, 1 << 20);
            assert_eq!(scan.payloads.len(), 5, "cut {cut}");
            assert!(matches!(scan.end, ScanEnd::Torn { .. }), "cut {cut}: {:?}", scan.end);
        }
    }

    #[test]
    fn records_inside_a_torn_payload_that_stop_short_of_the_end_leave_it_torn() {
        // A value may hold framed records of its own; cut short, it is still
        // a torn write, and the search through it stays linear (20k
        // embedded records, each a possible start, walked once).
        let mut inner = Vec::new();
        for _ in 0..20_000 {
            frame(&mut inner, b"", 1 << 20);
        }
        inner.extend_from_slice(b"not a record");
        let buf = framed(&[b"first", &inner]);
        let second = FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 5;
        let cuts = [
            buf.len() - 3,
            // Exactly at the end of an embedded record: from there back,
            // records chain to the end of the file.
            second + RECORD_HEADER_BYTES + 800 * RECORD_HEADER_BYTES,
        ];
        for cut in cuts {
            let mut torn = buf[..cut].to_vec();
            let scan = scan_records(&torn, FILE_HEADER_BYTES, 1 << 20);
            assert_eq!(scan.payloads.len(), 1, "cut at {cut}");
            assert!(matches!(scan.end, ScanEnd::Torn { .. }), "cut at {cut}: {:?}", scan.end);
            // The same with the lost sectors read as zeros after the cut.
            torn.resize(buf.len() + 4096, 0);
            let scan = scan_records(&torn, FILE_HEADER_BYTES, 1 << 20);
            assert!(
                matches!(scan.end, ScanEnd::Torn { .. }),
                "zeros from {cut}: {:?}",
                scan.end
            );
        }
    }

    #[test]
    fn a_torn_payload_ending_in_an_empty_records_checksum_is_still_torn() {
        // An empty record is its checksum (0x2144df1c) and a zero length:
        // a payload whose surviving bytes end with that checksum, then the
        // zeros of its lost sectors, holds a "record" that reaches the
        // zeros. It is still a torn write.
        let mut value = vec![7u8; 1000];
        let crc_of_empty = crc32fast::hash(&[0u8; 4]).to_le_bytes();
        value[508..512].copy_from_slice(&crc_of_empty);
        let buf = framed(&[b"first", &value]);
        let second = FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 5;
        let mut torn = buf.clone();
        torn[second + RECORD_HEADER_BYTES + 512..].fill(0);
        let scan = scan_records(&torn, FILE_HEADER_BYTES, 1 << 20);
        assert_eq!(scan.payloads.len(), 1);
        assert!(matches!(scan.end, ScanEnd::Torn { .. }), "{:?}", scan.end);
    }

    #[test]
    fn a_tear_is_torn_and_damage_before_data_is_not() {
        // The zeroed-sector rule: a lost sector is a torn write; a flipped byte with data after it is damage.
        let big = vec![9u8; 3 * SECTOR_BYTES];
        let buf = framed(&[b"first", &big, b"last"]);
        let second = FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 5;
        let mut torn = buf.clone();
        torn[SECTOR_BYTES..2 * SECTOR_BYTES].fill(0);
        let scan = scan_records(&torn, FILE_HEADER_BYTES, 1 << 20);
        assert_eq!(scan.payloads.len(), 1);
        assert_eq!(scan.valid_bytes, second);
        assert!(matches!(scan.end, ScanEnd::Torn { .. }), "{:?}", scan.end);
        let mut flipped = buf.clone();
        flipped[second + RECORD_HEADER_BYTES + 1] ^= 1;
        let scan = scan_records(&flipped, FILE_HEADER_BYTES, 1 << 20);
        assert!(matches!(scan.end, ScanEnd::ChecksumMismatch { .. }), "{:?}", scan.end);
        let mut zeros = buf.clone();
        zeros.resize(buf.len() + 4096, 0);
        let scan = scan_records(&zeros, FILE_HEADER_BYTES, 1 << 20);
        assert_eq!((scan.payloads.len(), scan.end), (3, ScanEnd::ZeroTail));
        assert_eq!(
            scan_records(&buf, FILE_HEADER_BYTES, 4).end,
            ScanEnd::LengthTooLarge { len: 5 }
        );
    }
}
