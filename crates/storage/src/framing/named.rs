//! Named records: the framing of files that are reused (recycled) without
//! being zeroed first, so that bytes of the file's earlier life follow the
//! records it holds now.
//!
//! Each record names the file it belongs to and says how much of that file
//! was durable when it was written:
//!
//! ```text
//! 0   4   crc32 (IEEE) of bytes 4..24 and the payload
//! 4   4   len: payload bytes
//! 8   8   file number: the file this record belongs to
//! 16  8   synced_bytes: bytes of this file known durable (synced) when
//!         this record was written; at most the record's own offset
//! 24  len payload (never empty)
//! ```
//!
//! A record with an empty payload is a **seal**: the file's records end
//! there, and whatever follows it is not read.
//!
//! A scan reads records from the start while they are whole, hold their
//! checksum and name this file. What stops it:
//!
//! - the end of the file (complete), or a seal;
//! - only zeros (the unused end of a zero-filled file);
//! - a record that runs past the end of the file (cut short);
//! - a whole record of an older file: the file's earlier life;
//! - anything else (leftover): bytes that do not hold a record at all (the
//!   earlier life seen mid-record, or a torn write), or damage.
//!
//! Damage is told from the other stops by `synced_bytes`: a record of this
//! file that lies after the stop and holds its checksum, and whose
//! `synced_bytes` passes the stop's offset, was written after the bytes at
//! the stop had been synced; so those bytes were durable, and a crash
//! cannot have torn them: they are damaged ([`NamedEnd::Damaged`]). A
//! writer sets `synced_bytes` only from syncs that completed, so a torn
//! write never meets such a record. Records of a later file number than
//! the file's own, or that claim more synced bytes than their own offset,
//! are damage too ([`NamedEnd::Invalid`]): a file is only ever reused for
//! a greater number.

use std::ops::Range;

use super::{all_zero, u32_at};

/// Bytes of a named record's header.
pub const NAMED_RECORD_HEADER_BYTES: usize = 24;

/// What a named record says about itself besides its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordName {
    /// The number of the file the record belongs to.
    pub file_number: u64,
    /// Bytes of that file known durable when the record was written.
    pub synced_bytes: u64,
}

/// Frames `payload` as one named record at the end of `out`.
///
/// Panics if the payload is empty (that frame is the seal:
/// [`frame_seal`]) or exceeds `record_bytes_max` (at most `u32::MAX`):
/// callers check sizes they do not control.
pub fn frame(out: &mut Vec<u8>, payload: &[u8], record_bytes_max: usize, name: RecordName) {
    assert!(!payload.is_empty(), "an empty named record is the seal");
    frame_any(out, payload, record_bytes_max, name);
}

/// Frames the seal: the record after which a file's records end.
pub fn frame_seal(out: &mut Vec<u8>, name: RecordName) {
    frame_any(out, &[], 0, name);
}

fn frame_any(out: &mut Vec<u8>, payload: &[u8], record_bytes_max: usize, name: RecordName) {
    assert!(
        payload.len() <= record_bytes_max,
        "record of {} bytes exceeds the limit of {record_bytes_max}",
        payload.len()
    );
    let mut header = [0u8; NAMED_RECORD_HEADER_BYTES];
    let len = u32::try_from(payload.len()).expect("record limits fit in u32");
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8..16].copy_from_slice(&name.file_number.to_le_bytes());
    header[16..24].copy_from_slice(&name.synced_bytes.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[4..]);
    hasher.update(payload);
    header[..4].copy_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// How the records of a scanned named file end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedEnd {
    /// The last record ends at the end of the file.
    Complete,
    /// A seal follows the last record (at `valid_bytes`).
    Sealed,
    /// Only zeros follow the last record.
    ZeroTail,
    /// A record runs past the end of the file.
    Cut {
        /// What runs past the end.
        reason: &'static str,
    },
    /// A whole record of an older file follows (this file's earlier
    /// life), and nothing proves the bytes there were this file's.
    Older {
        /// The number of the file that record names.
        file_number: u64,
    },
    /// What follows is not a record at all, and nothing proves it was
    /// durable: an older file's bytes seen mid-record, or a torn write.
    Leftover {
        /// What was found there.
        reason: String,
    },
    /// What follows the last record is damage: a record of this file at
    /// `witness`, written after the bytes at `valid_bytes` were synced,
    /// holds its checksum.
    Damaged {
        /// What is wrong at `valid_bytes`.
        reason: String,
        /// Offset of the record that proves those bytes were durable.
        witness: usize,
    },
    /// A record whose checksum holds says something no writer writes.
    Invalid {
        /// What it says.
        reason: String,
    },
}

/// What [`scan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedScan {
    /// The byte range of each valid record's payload, in file order (the
    /// seal, which has none, is not listed).
    pub payloads: Vec<Range<usize>>,
    /// Bytes up to the end of the last valid record: where the records
    /// end (the seal's offset, if any).
    pub valid_bytes: usize,
    /// What follows the valid records.
    pub end: NamedEnd,
}

/// One record header read at some offset, before its checksum is checked.
struct Header {
    stored_crc: u32,
    len: usize,
    name: RecordName,
}

fn header_at(buf: &[u8], offset: usize) -> Option<Header> {
    let bytes = buf.get(offset..offset.checked_add(NAMED_RECORD_HEADER_BYTES)?)?;
    Some(Header {
        stored_crc: u32_at(bytes, 0),
        len: u32_at(bytes, 4) as usize,
        name: RecordName {
            file_number: u64_at(bytes, 8),
            synced_bytes: u64_at(bytes, 16),
        },
    })
}

/// The checksum of the record at `offset` whose payload is `len` bytes
/// (which must lie within `buf`).
fn crc_of(buf: &[u8], offset: usize, len: usize) -> u32 {
    crc32fast::hash(&buf[offset + 4..offset + NAMED_RECORD_HEADER_BYTES + len])
}

/// Reads the named records of `buf` from `start` (just after the file
/// header), for the file numbered `file_number`.
pub fn scan(buf: &[u8], start: usize, record_bytes_max: usize, file_number: u64) -> NamedScan {
    let mut payloads = Vec::new();
    let mut offset = start;
    let end = loop {
        let Some(rest) = buf.get(offset..).filter(|rest| !rest.is_empty()) else {
            break NamedEnd::Complete;
        };
        if all_zero(rest) {
            break NamedEnd::ZeroTail;
        }
        let Some(header) = header_at(buf, offset) else {
            break NamedEnd::Cut {
                reason: "record header cut short",
            };
        };
        if header.len > record_bytes_max {
            break NamedEnd::Leftover {
                reason: format!("record length {} exceeds {record_bytes_max}", header.len),
            };
        }
        if NAMED_RECORD_HEADER_BYTES + header.len > rest.len() {
            break NamedEnd::Cut {
                reason: "record runs past the end of the file",
            };
        }
        let computed = crc_of(buf, offset, header.len);
        if computed != header.stored_crc {
            break NamedEnd::Leftover {
                reason: format!(
                    "checksum mismatch: stored {:#010x}, computed {computed:#010x}",
                    header.stored_crc
                ),
            };
        }
        if header.name.file_number < file_number {
            break NamedEnd::Older {
                file_number: header.name.file_number,
            };
        }
        if header.name.file_number > file_number {
            break NamedEnd::Invalid {
                reason: format!(
                    "a record of file {}, later than this file's {file_number}",
                    header.name.file_number
                ),
            };
        }
        if header.name.synced_bytes > offset as u64 {
            break NamedEnd::Invalid {
                reason: format!(
                    "a record claims {} bytes synced before its own offset {offset}",
                    header.name.synced_bytes
                ),
            };
        }
        if header.len == 0 {
            break NamedEnd::Sealed;
        }
        payloads.push(offset + NAMED_RECORD_HEADER_BYTES..offset + NAMED_RECORD_HEADER_BYTES + header.len);
        offset += NAMED_RECORD_HEADER_BYTES + header.len;
    };
    let end = match end {
        NamedEnd::Cut { reason } => {
            witnessed(buf, offset, record_bytes_max, file_number, reason.to_owned()).unwrap_or(NamedEnd::Cut { reason })
        }
        NamedEnd::Leftover { reason } => witnessed(buf, offset, record_bytes_max, file_number, reason.clone())
            .unwrap_or(NamedEnd::Leftover { reason }),
        NamedEnd::Older { file_number: older } => witnessed(
            buf,
            offset,
            record_bytes_max,
            file_number,
            format!("a record of file {older} (this file's earlier life)"),
        )
        .unwrap_or(NamedEnd::Older { file_number: older }),
        other => other,
    };
    NamedScan {
        payloads,
        valid_bytes: offset,
        end,
    }
}

/// [`NamedEnd::Damaged`] if a record of this file after `stop` proves that
/// the bytes at `stop` were durable when it was written (see the module
/// doc); `None` if none does.
///
/// Candidates are found by their header alone (this file's number, a
/// `synced_bytes` past `stop` and not past their own offset, a length
/// that fits), and only those get their checksum computed; in a file of
/// this writer's records that is one checksum per record after `stop`.
fn witnessed(buf: &[u8], stop: usize, record_bytes_max: usize, file_number: u64, reason: String) -> Option<NamedEnd> {
    let number = file_number.to_le_bytes();
    let last_start = buf.len().checked_sub(NAMED_RECORD_HEADER_BYTES)?;
    let mut at = stop + 1;
    while at <= last_start {
        // The file number sits 8 bytes into a header: look for it first.
        let candidate = at + find(&buf[at + 8..last_start + 16], &number)?;
        at = candidate + 1;
        let Some(header) = header_at(buf, candidate) else {
            continue;
        };
        let synced = header.name.synced_bytes;
        let fits = header.len <= record_bytes_max && candidate + NAMED_RECORD_HEADER_BYTES + header.len <= buf.len();
        if synced > stop as u64
            && synced <= candidate as u64
            && fits
            && crc_of(buf, candidate, header.len) == header.stored_crc
        {
            return Some(NamedEnd::Damaged {
                reason,
                witness: candidate,
            });
        }
    }
    None
}

/// Whether the bytes at `stop`, where the records of a file that had no
/// earlier life (zero-filled or grown by appends) end, look like a write a
/// crash tore: as for [`crate::framing::scan_records`], a record header of
/// zeros, or a record whose declared end lies within the file and after
/// which only zeros follow, or one of whose 512-byte sectors holds only
/// zeros (that part of the write never reached the disk).
pub fn torn_over_zeros(buf: &[u8], stop: usize, record_bytes_max: usize) -> bool {
    let Some(header) = header_at(buf, stop) else {
        return true; // cut short by the end of the file
    };
    if all_zero(&buf[stop..stop + 8]) {
        return true;
    }
    if header.len > record_bytes_max {
        return false;
    }
    let end = stop + NAMED_RECORD_HEADER_BYTES + header.len;
    if end > buf.len() {
        return true;
    }
    all_zero(&buf[end..]) || super::has_zeroed_sector(buf, stop, end)
}

/// The first offset of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8; 8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Checks one whole named record (header and payload) read back at a
/// known place, for file `file_number`, and returns its payload, or what
/// is wrong with it.
pub fn check_record(record: &[u8], file_number: u64) -> Result<&[u8], String> {
    let Some(header) = header_at(record, 0) else {
        return Err(format!("record of {} bytes has no room for its header", record.len()));
    };
    if NAMED_RECORD_HEADER_BYTES.saturating_add(header.len) != record.len() {
        return Err(format!(
            "record length {} disagrees with the index ({} payload bytes)",
            header.len,
            record.len() - NAMED_RECORD_HEADER_BYTES
        ));
    }
    let computed = crc_of(record, 0, header.len);
    if computed != header.stored_crc {
        return Err(format!(
            "checksum mismatch on read: stored {:#010x}, computed {computed:#010x}",
            header.stored_crc
        ));
    }
    if header.name.file_number != file_number {
        return Err(format!(
            "record of file {} read back from file {file_number}",
            header.name.file_number
        ));
    }
    Ok(&record[NAMED_RECORD_HEADER_BYTES..])
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::FILE_HEADER_BYTES;

    const MAX: usize = 1 << 20;

    /// A file numbered `number` holding `payloads`, each record claiming
    /// `synced` bytes durable (0: none).
    fn file(number: u64, payloads: &[&[u8]], synced: u64) -> Vec<u8> {
        let mut buf = vec![0xAB; FILE_HEADER_BYTES];
        for p in payloads {
            let name = RecordName {
                file_number: number,
                synced_bytes: synced.min(buf.len() as u64),
            };
            frame(&mut buf, p, MAX, name);
        }
        buf
    }

    fn payloads<'a>(buf: &'a [u8], scan: &NamedScan) -> Vec<&'a [u8]> {
        scan.payloads.iter().map(|r| &buf[r.clone()]).collect()
    }

    #[test]
    fn records_round_trip_and_a_seal_ends_them() {
        // What is framed is read back in order; nothing after a seal is read.
        let mut buf = file(3, &[b"one", b"two"], 0);
        let sealed_at = buf.len();
        frame_seal(
            &mut buf,
            RecordName {
                file_number: 3,
                synced_bytes: 0,
            },
        );
        frame(
            &mut buf,
            b"after",
            MAX,
            RecordName {
                file_number: 3,
                synced_bytes: 0,
            },
        );
        let scan = scan(&buf, FILE_HEADER_BYTES, MAX, 3);
        assert_eq!(payloads(&buf, &scan), vec![&b"one"[..], b"two"]);
        assert_eq!((scan.valid_bytes, scan.end), (sealed_at, NamedEnd::Sealed));
        let start = scan.payloads[1].start - NAMED_RECORD_HEADER_BYTES;
        assert_eq!(check_record(&buf[start..sealed_at], 3), Ok(&b"two"[..]));
        assert!(
            check_record(&buf[start..sealed_at], 4).is_err(),
            "another file's record"
        );
    }

    #[test]
    fn an_older_files_records_after_the_new_ones_are_leftover_even_aligned() {
        // A reused file: same layout, same lengths, even the same payloads; only the number tells.
        let old = file(2, &[b"aaaa", b"bbbb", b"cccc"], 0);
        let mut reused = file(5, &[b"aaaa"], 0);
        let new_end = reused.len();
        reused.extend_from_slice(&old[new_end..]);
        assert_eq!(reused.len(), old.len());
        let scan = scan(&reused, FILE_HEADER_BYTES, MAX, 5);
        assert_eq!(payloads(&reused, &scan), vec![&b"aaaa"[..]]);
        assert_eq!(
            (scan.valid_bytes, scan.end),
            (new_end, NamedEnd::Older { file_number: 2 })
        );
    }

    #[test]
    fn a_torn_record_over_old_bytes_is_leftover_and_damage_before_a_witness_is_not() {
        // A record whose bytes were never synced may be half old bytes; one a later record vouches for may not.
        let old = file(1, &[&[7u8; 900], &[8u8; 900]], 0);
        // Header 16, first 29 bytes, second 1524 (45..1569), third 29.
        let mut new = file(4, &[b"first"], 0);
        let second = new.len();
        // The second record was written before any sync; the third after
        // a sync that covered the first two.
        frame(
            &mut new,
            &[9u8; 1500],
            MAX,
            RecordName {
                file_number: 4,
                synced_bytes: 0,
            },
        );
        let third = new.len();
        frame(
            &mut new,
            b"third",
            MAX,
            RecordName {
                file_number: 4,
                synced_bytes: third as u64,
            },
        );
        assert!(second < 512 && 1024 < third && new.len() <= old.len());
        let mut reused = old.clone();
        reused[..new.len()].copy_from_slice(&new);
        // Torn: the second record's middle sector still holds old bytes,
        // and no later record vouches for it (cut the third off).
        let mut torn = reused.clone();
        torn[512..1024].copy_from_slice(&old[512..1024]);
        let mut torn_only = torn.clone();
        torn_only[third..new.len()].copy_from_slice(&old[third..new.len()]);
        let scan_torn = scan(&torn_only, FILE_HEADER_BYTES, MAX, 4);
        assert_eq!((scan_torn.payloads.len(), scan_torn.valid_bytes), (1, second));
        assert!(
            matches!(scan_torn.end, NamedEnd::Leftover { .. }),
            "{:?}",
            scan_torn.end
        );
        // The same bytes with the third record present: it proves the
        // second was synced, so the old sector there is damage.
        let scan_damaged = scan(&torn, FILE_HEADER_BYTES, MAX, 4);
        assert_eq!(scan_damaged.valid_bytes, second);
        assert_eq!(
            scan_damaged.end,
            NamedEnd::Damaged {
                reason: scan_damaged_reason(&scan_damaged),
                witness: third
            }
        );
        // Whole, the file reads its three records and stops at the old ones.
        let whole = scan(&reused, FILE_HEADER_BYTES, MAX, 4);
        assert_eq!(whole.payloads.len(), 3);
        assert_eq!(whole.valid_bytes, new.len());
        assert!(matches!(whole.end, NamedEnd::Leftover { .. }));
    }

    fn scan_damaged_reason(scan: &NamedScan) -> String {
        match &scan.end {
            NamedEnd::Damaged { reason, .. } => reason.clone(),
            other => panic!("expected damage, found {other:?}"),
        }
    }

    #[test]
    fn impossible_records_are_invalid_and_zeros_and_cuts_end_the_file() {
        // A later file's record, or one claiming its own bytes synced, is damage; zeros and a cut are ends.
        let later = file(9, &[b"x"], 0);
        assert!(matches!(
            scan(&later, FILE_HEADER_BYTES, MAX, 8).end,
            NamedEnd::Invalid { .. }
        ));
        let mut claims = vec![0xAB; FILE_HEADER_BYTES];
        frame(
            &mut claims,
            b"x",
            MAX,
            RecordName {
                file_number: 8,
                synced_bytes: 1000,
            },
        );
        assert!(matches!(
            scan(&claims, FILE_HEADER_BYTES, MAX, 8).end,
            NamedEnd::Invalid { .. }
        ));
        let mut zeros = file(8, &[b"x"], 0);
        let written = zeros.len();
        zeros.resize(written + 4096, 0);
        let scan_zeros = scan(&zeros, FILE_HEADER_BYTES, MAX, 8);
        assert_eq!((scan_zeros.valid_bytes, scan_zeros.end), (written, NamedEnd::ZeroTail));
        let whole = file(8, &[b"x", b"second"], 0);
        let cut = scan(&whole[..whole.len() - 2], FILE_HEADER_BYTES, MAX, 8);
        assert_eq!(cut.payloads.len(), 1);
        assert!(matches!(cut.end, NamedEnd::Cut { .. }));
    }
}
