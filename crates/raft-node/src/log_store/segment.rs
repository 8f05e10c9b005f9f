//! Segment files: naming, the file header, record framing, and the scan
//! that recovery runs over each file.
//!
//! A segment starts with a 16-byte header (`magic: u64`, `version: u32`,
//! `crc32` of those 12 bytes: u32, all little-endian), then records:
//! `crc32: u32 | len: u32 | payload`, the crc covering the 4 length bytes
//! and the payload. The format is in `docs/log-store-format.md`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::LogStoreError;

/// Bytes of a segment's file header.
pub(crate) const FILE_HEADER_BYTES: usize = 16;
/// Bytes of a record's header (crc and length).
pub(crate) const RECORD_HEADER_BYTES: usize = 8;
/// Largest record payload, in bytes (one entry, its type byte included).
pub const RECORD_BYTES_MAX: usize = 64 << 20;
/// The segment format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Magic number of a log store segment: "RAFTLOG" and a 1.
const MAGIC: u64 = 0x5241_4654_4c4f_4701;
/// File name prefix of a segment.
const NAME_PREFIX: &str = "log-";
/// File name suffix of a segment.
const NAME_SUFFIX: &str = ".seg";

/// The path of segment number `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{NAME_PREFIX}{seq:020}{NAME_SUFFIX}"))
}

/// The segment number in a file name, if it names a segment.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The file header every segment starts with.
fn file_header() -> [u8; FILE_HEADER_BYTES] {
    let mut header = [0u8; FILE_HEADER_BYTES];
    header[..8].copy_from_slice(&MAGIC.to_le_bytes());
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32fast::hash(&header[..12]);
    header[12..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Frames `payload` as one record at the end of `out`.
///
/// Panics if the payload exceeds [`RECORD_BYTES_MAX`]; callers check
/// sizes they do not control first.
pub(crate) fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    assert!(
        payload.len() <= RECORD_BYTES_MAX,
        "record of {} bytes exceeds RECORD_BYTES_MAX",
        payload.len()
    );
    let len = u32::try_from(payload.len())
        .expect("RECORD_BYTES_MAX fits in u32")
        .to_le_bytes();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(payload);
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.extend_from_slice(&len);
    out.extend_from_slice(payload);
}

/// Creates segment `path` holding the header and `framed` records, and
/// makes it durable (file and directory) before returning.
pub(crate) fn create_segment(dir: &Path, path: &Path, framed: &[u8]) -> Result<File, LogStoreError> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(path)
        .map_err(|e| LogStoreError::io("create", path, e))?;
    let mut bytes = Vec::with_capacity(FILE_HEADER_BYTES + framed.len());
    bytes.extend_from_slice(&file_header());
    bytes.extend_from_slice(framed);
    file.write_all(&bytes)
        .map_err(|e| LogStoreError::io("write", path, e))?;
    // The header and the state records are synced before the segment is
    // used: a segment that exists after a crash then always has a readable
    // header and, on its own, the vote, committed and purged ids, so older
    // segments can be deleted without losing them.
    file.sync_all().map_err(|e| LogStoreError::io("fsync", path, e))?;
    // The directory entry is synced too: entries acknowledged in this file
    // must not vanish with a directory that forgot it.
    sync_dir(dir)?;
    Ok(file)
}

/// Makes creations and deletions of files in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogStoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogStoreError::io("fsync directory", dir, e))
}

/// One valid record found by [`scan`].
#[derive(Debug)]
pub(crate) struct ScannedRecord {
    /// Byte offset of the record (its crc) in the file.
    pub(crate) offset: u64,
    /// The record's payload.
    pub(crate) payload: Vec<u8>,
}

/// What [`scan`] found in one segment.
#[derive(Debug)]
pub(crate) struct Scan {
    /// The valid records, in file order.
    pub(crate) records: Vec<ScannedRecord>,
    /// Bytes holding the header and the valid records.
    pub(crate) valid_bytes: u64,
    /// Whether bytes after `valid_bytes` were dropped as a torn tail.
    pub(crate) torn_tail: bool,
    /// Whether even the header was torn (the file holds nothing).
    pub(crate) torn_header: bool,
}

/// Reads every record of segment `path`.
///
/// With `is_last`, a record cut short by a crash at the end of the file (its
/// declared end lies past the end of the file, or it is the final record and
/// its checksum fails, or only zeros follow its start) is a torn tail and is
/// reported, not returned. Anything else that is wrong, and any damage at
/// all in a segment that is not the last, is [`LogStoreError::Corrupt`]:
/// older segments are synced in full before a newer one is created.
pub(crate) fn scan(path: &Path, is_last: bool) -> Result<Scan, LogStoreError> {
    let buf = std::fs::read(path).map_err(|e| LogStoreError::io("read", path, e))?;
    let torn = |offset: usize, records: Vec<ScannedRecord>, reason: &str| {
        if is_last {
            Ok(Scan {
                records,
                valid_bytes: offset as u64,
                torn_tail: true,
                torn_header: offset == 0,
            })
        } else {
            Err(LogStoreError::corrupt(path, offset as u64, reason))
        }
    };
    if buf.len() < FILE_HEADER_BYTES || all_zero(&buf[..FILE_HEADER_BYTES]) {
        // The header is synced at creation, so it is missing only if the
        // crash came before the segment was ever used.
        return torn(0, Vec::new(), "short or zeroed file header");
    }
    check_header(path, &buf)?;

    let mut records = Vec::new();
    let mut offset = FILE_HEADER_BYTES;
    while offset < buf.len() {
        let rest = &buf[offset..];
        if rest.len() < RECORD_HEADER_BYTES {
            return torn(offset, records, "record header cut short");
        }
        let stored_crc = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = RECORD_HEADER_BYTES.saturating_add(len);
        if end > rest.len() {
            return torn(offset, records, "record runs past the end of the file");
        }
        if len > RECORD_BYTES_MAX {
            if all_zero(rest) {
                return torn(offset, records, "zeroed tail");
            }
            return Err(LogStoreError::corrupt(
                path,
                offset as u64,
                format!("record length {len} exceeds {RECORD_BYTES_MAX}"),
            ));
        }
        let actual_crc = crc32fast::hash(&rest[4..end]);
        if actual_crc != stored_crc {
            if end == rest.len() || all_zero(rest) {
                return torn(offset, records, "checksum mismatch on the final record");
            }
            return Err(LogStoreError::corrupt(
                path,
                offset as u64,
                format!("checksum mismatch: stored {stored_crc:#010x}, computed {actual_crc:#010x}"),
            ));
        }
        records.push(ScannedRecord {
            offset: offset as u64,
            payload: rest[RECORD_HEADER_BYTES..end].to_vec(),
        });
        offset += end;
    }
    Ok(Scan {
        records,
        valid_bytes: buf.len() as u64,
        torn_tail: false,
        torn_header: false,
    })
}

/// Checks the magic number, version and checksum of a segment's header.
fn check_header(path: &Path, buf: &[u8]) -> Result<(), LogStoreError> {
    let expected = file_header();
    if buf[12..16] != crc32fast::hash(&buf[..12]).to_le_bytes() {
        return Err(LogStoreError::corrupt(path, 0, "file header checksum mismatch"));
    }
    if buf[..8] != expected[..8] {
        return Err(LogStoreError::corrupt(
            path,
            0,
            "not a log store segment (bad magic number)",
        ));
    }
    if buf[8..12] != expected[8..12] {
        return Err(LogStoreError::UnsupportedVersion {
            file: path.to_path_buf(),
            found: u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]),
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

/// Whether every byte is zero.
fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_segment(dir: &Path, payloads: &[&[u8]]) -> PathBuf {
        let path = segment_path(dir, 1);
        let mut framed = Vec::new();
        for p in payloads {
            frame(&mut framed, p);
        }
        create_segment(dir, &path, &framed).expect("create");
        path
    }

    #[test]
    fn segment_names_round_trip() {
        // Recovery orders segments by the number parsed back from the name.
        let path = segment_path(Path::new("/x"), 42);
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(parse_segment_name(name), Some(42));
        assert_eq!(parse_segment_name("log-42.seg"), None);
        assert_eq!(parse_segment_name("other"), None);
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        // A crash can stop a write at any byte; the whole records before it are kept.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_segment(dir.path(), &[b"first", b"second record"]);
        let full = std::fs::read(&path).expect("read");
        let first_end = FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 5;
        for cut in first_end..full.len() {
            std::fs::write(&path, &full[..cut]).expect("write");
            let found = scan(&path, true).expect("a torn tail is not an error");
            assert_eq!(found.records.len(), 1, "cut at {cut}");
            assert_eq!(found.valid_bytes, first_end as u64);
            assert_eq!(found.torn_tail, cut != first_end);
            if cut != first_end {
                assert!(scan(&path, false).is_err(), "not the last segment: corrupt");
            }
        }
    }

    #[test]
    fn a_flipped_byte_before_the_tail_is_corruption() {
        // Damage followed by valid data cannot be a torn write.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_segment(dir.path(), &[b"first", b"second"]);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 1] ^= 0x10;
        std::fs::write(&path, &bytes).expect("write");
        let err = scan(&path, true).expect_err("corrupt");
        assert!(
            matches!(&err, LogStoreError::Corrupt { file, offset, .. } if file == &path && *offset == FILE_HEADER_BYTES as u64),
            "{err}"
        );
    }
}
