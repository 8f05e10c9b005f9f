//! Segment files: naming, the file header, record framing, and the scan
//! that recovery runs over each file.
//!
//! A segment starts with a 16-byte header (`magic: u64`, `version: u32`,
//! `crc32` of those 12 bytes: u32, all little-endian), then records:
//! `crc32: u32 | len: u32 | payload`, the crc covering the 4 length bytes
//! and the payload. The format is in `docs/log-store-format.md`; it is the
//! engine's WAL format with another magic number, and the framing and the
//! scan are the engine's ([`storage::framing`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub(crate) use storage::framing::FILE_HEADER_BYTES;
use storage::framing::{self, all_zero, FileHeader, ScanEnd, RECORD_HEADER_BYTES};
use storage::io::{File, FileSystem};

use super::error::LogStoreError;

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
/// File name suffix of a spare: a zero-filled file becoming the next segment.
const SPARE_SUFFIX: &str = ".spare";
/// Zeros written per call when filling a spare.
const FILL_CHUNK_BYTES: usize = 1 << 20;

/// The path of segment number `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{NAME_PREFIX}{seq:020}{NAME_SUFFIX}"))
}

/// The path of the spare that is to become segment `seq`.
pub(crate) fn spare_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{NAME_PREFIX}{seq:020}{SPARE_SUFFIX}"))
}

/// Whether a file name names a spare (left over if a crash came while one
/// was prepared; it holds nothing and is deleted on open).
pub(crate) fn is_spare_name(name: &str) -> bool {
    name.starts_with(NAME_PREFIX) && name.ends_with(SPARE_SUFFIX)
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
pub(crate) fn file_header() -> [u8; FILE_HEADER_BYTES] {
    framing::file_header(MAGIC, FORMAT_VERSION)
}

/// Frames `payload` as one record at the end of `out`.
///
/// Panics if the payload exceeds [`RECORD_BYTES_MAX`]; callers check
/// sizes they do not control first.
pub(crate) fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    framing::frame(out, payload, RECORD_BYTES_MAX);
}

/// Creates segment `path` holding the header and `framed` records, and
/// makes it durable (file and directory) before returning. The file grows
/// as records are appended (see [`prepare_spare`] for the faster kind).
pub(crate) fn create_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    path: &Path,
    framed: &[u8],
) -> Result<Arc<dyn File>, LogStoreError> {
    let file: Arc<dyn File> = fs
        .create_new(path)
        .map_err(|e| LogStoreError::io("create", path, e))?
        .into();
    file.write_at(0, &opening(framed))
        .map_err(|e| LogStoreError::io("write", path, e))?;
    // The header and the state records are synced before the segment is
    // used: a segment that exists after a crash then always has a readable
    // header and, on its own, the vote, committed and purged ids, so older
    // segments can be deleted without losing them.
    file.sync_all().map_err(|e| LogStoreError::io("fsync", path, e))?;
    // The directory entry is synced too: entries acknowledged in this file
    // must not vanish with a directory that forgot it.
    sync_dir(fs, dir)?;
    Ok(file)
}

/// The bytes a segment starts with: its header, then `framed` records.
fn opening(framed: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(FILE_HEADER_BYTES + framed.len());
    bytes.extend_from_slice(&file_header());
    bytes.extend_from_slice(framed);
    bytes
}

/// Writes `bytes` zeros to a new spare file at `path` (replacing one a
/// crash left) and syncs it, so that writes into it later change no file
/// metadata: an fdatasync of such a file writes only data, not the inode
/// and the journal a growing file needs (about half the cost on this
/// machine's disk). Stops early, with an error, once `cancel` is set.
pub(crate) fn prepare_spare(
    fs: &dyn FileSystem,
    path: &Path,
    bytes: u64,
    cancel: &AtomicBool,
) -> io::Result<Box<dyn File>> {
    match fs.remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let file = fs.create_new(path)?;
    let zeros = vec![0u8; FILL_CHUNK_BYTES];
    let mut left = bytes;
    while left > 0 {
        if cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("spare preparation cancelled"));
        }
        let chunk = usize::try_from(left).unwrap_or(usize::MAX).min(FILL_CHUNK_BYTES);
        file.append(&zeros[..chunk])?;
        left -= chunk as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// Turns a prepared spare into segment `path`, opening with the header and
/// `framed` records, durably: the opening is synced before the rename, and
/// the rename before this returns.
pub(crate) fn install_spare(
    fs: &dyn FileSystem,
    dir: &Path,
    spare: Box<dyn File>,
    spare_path: &Path,
    path: &Path,
    framed: &[u8],
) -> Result<Arc<dyn File>, LogStoreError> {
    spare
        .write_at(0, &opening(framed))
        .map_err(|e| LogStoreError::io("write", spare_path, e))?;
    // Synced before the rename: a segment name that survives a crash must
    // never point at a file whose header is still zeros.
    spare
        .sync_data()
        .map_err(|e| LogStoreError::io("fsync", spare_path, e))?;
    fs.rename(spare_path, path)
        .map_err(|e| LogStoreError::io("rename", spare_path, e))?;
    // The rename is durable before appends land in the segment: otherwise
    // a crash could forget the new name, and with it acknowledged entries.
    sync_dir(fs, dir)?;
    Ok(spare.into())
}

/// Makes creations and deletions of files in `dir` durable (the seam's one
/// `sync_dir`).
pub(crate) fn sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<(), LogStoreError> {
    storage::io::sync_dir(fs, dir).map_err(LogStoreError::from)
}

/// Reads the whole of `path`.
fn read_whole(fs: &dyn FileSystem, path: &Path) -> Result<Vec<u8>, LogStoreError> {
    let file = fs.open(path).map_err(|e| LogStoreError::io("open", path, e))?;
    let len_bytes = file.len_bytes().map_err(|e| LogStoreError::io("stat", path, e))?;
    let len = usize::try_from(len_bytes)
        .map_err(|_| LogStoreError::corrupt(path, 0, format!("segment of {len_bytes} bytes")))?;
    let mut buf = vec![0u8; len];
    file.read_at(0, &mut buf)
        .map_err(|e| LogStoreError::io("read", path, e))?;
    Ok(buf)
}

/// One valid record found by [`scan`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScannedRecord {
    /// Byte offset of the record (its crc) in the file.
    pub(crate) offset: u64,
    /// Bytes of the record, its 8-byte header included.
    pub(crate) record_bytes: u64,
}

/// What [`scan`] found in one segment.
#[derive(Debug)]
pub(crate) struct Scan {
    /// The whole file as read: the records' payloads are slices of it
    /// ([`Scan::payload`]), so a scan holds one segment in memory, never
    /// the whole log.
    buf: Vec<u8>,
    /// The valid records, in file order.
    pub(crate) records: Vec<ScannedRecord>,
    /// Bytes holding the header and the valid records.
    pub(crate) valid_bytes: u64,
    /// Whether bytes after `valid_bytes` were dropped as a torn tail.
    pub(crate) torn_tail: bool,
    /// Whether even the header was torn (the file holds nothing).
    pub(crate) torn_header: bool,
    /// Whether only zeros follow the records: the unused end of a
    /// preallocated segment.
    pub(crate) zero_tail: bool,
}

/// Reads every record of segment `path`.
///
/// The records end at the end of the file or where only zeros follow (the
/// unused end of a preallocated segment; no record starts with eight zero
/// bytes, as the crc of a zero length is not zero).
///
/// With `is_last`, a record cut short by a crash is a torn tail: it is
/// reported, not returned, and nothing after it is read. A record is torn
/// if its declared end lies past the end of the file, or its checksum fails
/// and it is the final record (only zeros or the end of the file follow) or
/// one of the disk sectors it spans holds only zeros (that part of the
/// write never reached the disk; writes past the last fsync may land in any
/// order in a preallocated file). A zeroed record header followed by data
/// is torn for the same reason. Anything else that is wrong, and any damage
/// at all in a segment that is not the last, is [`LogStoreError::Corrupt`]:
/// older segments are synced in full before a newer one is created.
pub(crate) fn scan(fs: &dyn FileSystem, path: &Path, is_last: bool) -> Result<Scan, LogStoreError> {
    let buf = read_whole(fs, path)?;
    let torn = |buf: Vec<u8>, offset: usize, records: Vec<ScannedRecord>, reason: &str| {
        if is_last {
            Ok(Scan {
                buf,
                records,
                valid_bytes: offset as u64,
                torn_tail: true,
                torn_header: offset == 0,
                zero_tail: false,
            })
        } else {
            Err(LogStoreError::corrupt(path, offset as u64, reason))
        }
    };
    if buf.len() < FILE_HEADER_BYTES || all_zero(&buf[..FILE_HEADER_BYTES]) {
        // The header is synced at creation, so it is missing only if the
        // crash came before the segment was ever used.
        return torn(buf, 0, Vec::new(), "short or zeroed file header");
    }
    check_header(path, &buf)?;
    let scan = framing::scan_records(&buf, FILE_HEADER_BYTES, RECORD_BYTES_MAX);
    let records = scan
        .payloads
        .iter()
        .map(|payload| ScannedRecord {
            offset: (payload.start - RECORD_HEADER_BYTES) as u64,
            record_bytes: (payload.end - payload.start + RECORD_HEADER_BYTES) as u64,
        })
        .collect();
    let offset = scan.valid_bytes;
    let whole = |buf, records, zero_tail| {
        Ok(Scan {
            buf,
            records,
            valid_bytes: offset as u64,
            torn_tail: false,
            torn_header: false,
            zero_tail,
        })
    };
    match scan.end {
        ScanEnd::Complete => whole(buf, records, false),
        ScanEnd::ZeroTail => whole(buf, records, true),
        ScanEnd::Torn { reason } => torn(buf, offset, records, reason),
        ScanEnd::LengthTooLarge { len } => Err(LogStoreError::corrupt(
            path,
            offset as u64,
            format!("record length {len} exceeds {RECORD_BYTES_MAX}"),
        )),
        ScanEnd::ChecksumMismatch { stored, computed } => Err(LogStoreError::corrupt(
            path,
            offset as u64,
            format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        )),
    }
}

impl Scan {
    /// The payload of `record`, one of this scan's records.
    pub(crate) fn payload(&self, record: &ScannedRecord) -> &[u8] {
        // Offsets and lengths come from this scan, which checked them
        // against the buffer, so the conversions and the slice cannot fail.
        let start = record.offset as usize + RECORD_HEADER_BYTES;
        let end = record.offset as usize + record.record_bytes as usize;
        &self.buf[start..end]
    }
}

/// Checks one record read back from a segment at `offset` (its whole
/// frame, header included, as the index located it) and returns its
/// payload.
///
/// A length that disagrees with the index or a checksum that fails is
/// [`LogStoreError::Corrupt`]: the record was whole when it was indexed,
/// so a mismatch now is damage (or a bug), never a torn write, and must
/// never be served as an entry.
pub(crate) fn check_record<'a>(path: &Path, offset: u64, frame: &'a [u8]) -> Result<&'a [u8], LogStoreError> {
    framing::check_record(frame).map_err(|reason| LogStoreError::corrupt(path, offset, reason))
}

/// Checks the magic number, version and checksum of a segment's header.
fn check_header(path: &Path, buf: &[u8]) -> Result<(), LogStoreError> {
    match framing::read_file_header(buf) {
        FileHeader::ChecksumMismatch { .. } => Err(LogStoreError::corrupt(path, 0, "file header checksum mismatch")),
        FileHeader::Valid { magic, .. } if magic != MAGIC => Err(LogStoreError::corrupt(
            path,
            0,
            "not a log store segment (bad magic number)",
        )),
        FileHeader::Valid { version, .. } if version != FORMAT_VERSION => Err(LogStoreError::UnsupportedVersion {
            file: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        }),
        FileHeader::Valid { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use storage::framing::SECTOR_BYTES;
    use storage::io::RealFs;

    use super::*;

    fn write_segment(dir: &Path, payloads: &[&[u8]]) -> PathBuf {
        let path = segment_path(dir, 1);
        let mut framed = Vec::new();
        for p in payloads {
            frame(&mut framed, p);
        }
        create_segment(&RealFs, dir, &path, &framed).expect("create");
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
            let found = scan(&RealFs, &path, true).expect("a torn tail is not an error");
            assert_eq!(found.records.len(), 1, "cut at {cut}");
            assert_eq!(found.valid_bytes, first_end as u64);
            assert_eq!(found.torn_tail, cut != first_end);
            if cut != first_end {
                assert!(scan(&RealFs, &path, false).is_err(), "not the last segment: corrupt");
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
        let err = scan(&RealFs, &path, true).expect_err("corrupt");
        assert!(
            matches!(&err, LogStoreError::Corrupt { file, offset, .. } if file == &path && *offset == FILE_HEADER_BYTES as u64),
            "{err}"
        );
    }

    #[test]
    fn zeros_after_the_records_are_the_unused_end_of_a_preallocated_segment() {
        // A preallocated segment ends in zeros; they are neither records nor damage.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_segment(dir.path(), &[b"first", b"second"]);
        let written = std::fs::read(&path).expect("read").len();
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.resize(written + 4096, 0);
        std::fs::write(&path, &bytes).expect("write");
        for is_last in [true, false] {
            let found = scan(&RealFs, &path, is_last).expect("a zero tail is clean");
            assert_eq!(found.records.len(), 2);
            assert_eq!(found.valid_bytes, written as u64);
            assert!(found.zero_tail && !found.torn_tail);
        }
    }

    #[test]
    fn a_record_with_a_sector_never_written_is_torn_even_with_data_after_it() {
        // Unsynced writes into a preallocated file reach the disk in any order.
        let dir = tempfile::tempdir().expect("tempdir");
        let big = vec![7u8; 1500];
        let path = write_segment(dir.path(), &[b"first", &big, b"third"]);
        let mut bytes = std::fs::read(&path).expect("read");
        let big_start = FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 5;
        bytes[SECTOR_BYTES..2 * SECTOR_BYTES].fill(0);
        std::fs::write(&path, &bytes).expect("write");
        let found = scan(&RealFs, &path, true).expect("torn, not corrupt");
        assert_eq!(found.records.len(), 1, "the torn record and all after it are dropped");
        assert_eq!(found.valid_bytes, big_start as u64);
        assert!(found.torn_tail);
        assert!(scan(&RealFs, &path, false).is_err(), "not the last segment: corrupt");
    }

    #[test]
    fn a_zeroed_record_header_followed_by_data_is_torn_only_in_the_last_segment() {
        // A header that never reached the disk ends the log; older segments never have one.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_segment(dir.path(), &[b"first", b"second"]);
        let mut bytes = std::fs::read(&path).expect("read");
        let second = FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 5;
        bytes[second..second + RECORD_HEADER_BYTES].fill(0);
        std::fs::write(&path, &bytes).expect("write");
        let found = scan(&RealFs, &path, true).expect("torn");
        assert_eq!((found.records.len(), found.torn_tail), (1, true));
        assert!(scan(&RealFs, &path, false).is_err());
    }
}
