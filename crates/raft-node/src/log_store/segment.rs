//! Segment files: naming, the file header, record framing, and the scan
//! that recovery runs over each file.
//!
//! A segment starts with a 16-byte header (`magic: u64`, `version: u32`,
//! `crc32` of those 12 bytes: u32, all little-endian), then records. In
//! format 2 (written now) the records name their segment
//! ([`storage::framing::named`]): `crc32 | len | segment number |
//! synced bytes | payload`, and an empty one (the seal) ends a segment, so
//! a segment file can be recycled without zeroing it. Format 1 (still
//! read) frames records as the engine's WAL does: `crc32 | len | payload`
//! ([`storage::framing`]). The format is in `docs/log-store-format.md`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use storage::framing::named::RecordName;
use storage::framing::named::{self, NamedEnd, NAMED_RECORD_HEADER_BYTES};
pub(crate) use storage::framing::FILE_HEADER_BYTES;
use storage::framing::{self, all_zero, FileHeader, ScanEnd, RECORD_HEADER_BYTES};
use storage::io::{File, FileSystem};

use super::error::LogStoreError;
use super::record::{TYPE_OPENING_FRESH, TYPE_OPENING_RECYCLED};

/// Largest record payload, in bytes (one entry, its type byte included).
pub const RECORD_BYTES_MAX: usize = 64 << 20;
/// The segment format version this build writes: records that name their
/// segment (recyclable segments).
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The first format, still read: records framed as the engine's WAL's.
pub(crate) const FORMAT_VERSION_V1: u32 = 1;
/// Magic number of a log store segment: "RAFTLOG" and a 1 (the same in
/// every format version).
const MAGIC: u64 = 0x5241_4654_4c4f_4701;
/// File name prefix of a segment.
const NAME_PREFIX: &str = "log-";
/// File name suffix of a segment.
const NAME_SUFFIX: &str = ".seg";
/// File name suffix of a spare: a zero-filled file becoming the next segment.
const SPARE_SUFFIX: &str = ".spare";
/// File name suffix of a purged segment kept to be recycled.
const RECYCLE_SUFFIX: &str = ".recycle";
/// Zeros written, then synced, per slice when filling a spare: a
/// foreground fdatasync queues behind at most this much of the fill.
const FILL_SLICE_BYTES: usize = 1 << 20;
/// Rate at which a spare is filled, at most, in bytes per second: leaves
/// the disk to the appends' fdatasyncs between slices.
const FILL_BYTES_PER_SECOND_MAX: u64 = 256 << 20;
const _: () = assert!(FILL_SLICE_BYTES as u64 <= FILL_BYTES_PER_SECOND_MAX);

/// The path of segment number `seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{NAME_PREFIX}{seq:020}{NAME_SUFFIX}"))
}

/// The path of the spare that is to become segment `seq`.
pub(crate) fn spare_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{NAME_PREFIX}{seq:020}{SPARE_SUFFIX}"))
}

/// The path purged segment `seq` is kept under until it is recycled.
pub(crate) fn recycle_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{NAME_PREFIX}{seq:020}{RECYCLE_SUFFIX}"))
}

/// Whether a file name names a spare or a segment kept for recycling
/// (left over if the store stopped with one: it holds no live records and
/// is deleted on open).
pub(crate) fn is_spare_name(name: &str) -> bool {
    name.starts_with(NAME_PREFIX) && (name.ends_with(SPARE_SUFFIX) || name.ends_with(RECYCLE_SUFFIX))
}

/// The segment number in a file name, if it names a segment.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The file header every segment this build writes starts with.
pub(crate) fn file_header() -> [u8; FILE_HEADER_BYTES] {
    framing::file_header(MAGIC, FORMAT_VERSION)
}

/// The header of a format-1 segment (older builds; tests and fuzzing).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn file_header_v1() -> [u8; FILE_HEADER_BYTES] {
    framing::file_header(MAGIC, FORMAT_VERSION_V1)
}

/// Frames `payload` as one format-1 record (older builds; tests and fuzzing).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn frame_v1(out: &mut Vec<u8>, payload: &[u8]) {
    framing::frame(out, payload, RECORD_BYTES_MAX);
}

/// Frames `payload` as one record of the segment `name` names, at the end
/// of `out`.
///
/// Panics if the payload is empty (the seal's frame) or exceeds
/// [`RECORD_BYTES_MAX`]; callers check sizes they do not control first.
pub(crate) fn frame(out: &mut Vec<u8>, payload: &[u8], name: RecordName) {
    named::frame(out, payload, RECORD_BYTES_MAX, name);
}

/// Frames the seal of the segment `name` names: its records end there.
pub(crate) fn frame_seal(out: &mut Vec<u8>, name: RecordName) {
    named::frame_seal(out, name);
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
///
/// The zeros go out in slices of [`FILL_SLICE_BYTES`], each synced before
/// the next is written, at most [`FILL_BYTES_PER_SECOND_MAX`]: one sync of
/// the whole file at the end made a burst of a segment's size that the
/// appends' fdatasyncs queued behind (tens of milliseconds).
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
    let zeros = vec![0u8; FILL_SLICE_BYTES];
    let started = Instant::now();
    let mut written = 0u64;
    while written < bytes {
        if cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("spare preparation cancelled"));
        }
        let chunk = usize::try_from(bytes - written)
            .unwrap_or(usize::MAX)
            .min(FILL_SLICE_BYTES);
        file.append(&zeros[..chunk])?;
        file.sync_data()?;
        written += chunk as u64;
        let due = Duration::from_secs_f64(written as f64 / FILL_BYTES_PER_SECOND_MAX as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    file.sync_all()?;
    Ok(file)
}

/// Turns a prepared file (a zero-filled spare, or a purged segment kept
/// for recycling) at `from` into segment `path`, opening with the header
/// and `framed` records, durably: the opening is synced before the
/// rename, and the rename before this returns.
pub(crate) fn install_spare(
    fs: &dyn FileSystem,
    dir: &Path,
    spare: Box<dyn File>,
    from: &Path,
    path: &Path,
    framed: &[u8],
) -> Result<Arc<dyn File>, LogStoreError> {
    spare
        .write_at(0, &opening(framed))
        .map_err(|e| LogStoreError::io("write", from, e))?;
    // Synced before the rename: a segment name that survives a crash must
    // never point at a file whose header is still zeros (or, recycled, an
    // older segment's header and records).
    spare.sync_data().map_err(|e| LogStoreError::io("fsync", from, e))?;
    fs.rename(from, path)
        .map_err(|e| LogStoreError::io("rename", from, e))?;
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
    /// Bytes of the record, its header included.
    pub(crate) record_bytes: u64,
}

/// How the records of a scanned segment end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// At the end of the file.
    Complete,
    /// At a seal (format 2): what follows is not read.
    Sealed,
    /// Only zeros follow (format 1: the unused end of a preallocated
    /// segment, in any segment).
    Zeros,
    /// A record cut short by a crash follows: a torn tail.
    Torn,
    /// What follows is not this segment's (format 2): zeros, a recycled
    /// file's earlier records, or a torn write over them. Only the newest
    /// segment may end so: older ones were sealed (or cut) before a newer
    /// one was created.
    Leftover,
}

/// What [`scan`] found in one segment.
#[derive(Debug)]
pub(crate) struct Scan {
    /// The whole file as read: the records' payloads are slices of it
    /// ([`Scan::payload`]), so a scan holds one segment in memory, never
    /// the whole log.
    buf: Vec<u8>,
    /// Bytes of each record's header in this segment's format.
    header_bytes: usize,
    /// The segment's format version.
    pub(crate) version: u32,
    /// The valid records, in file order.
    pub(crate) records: Vec<ScannedRecord>,
    /// Bytes holding the header and the valid records.
    pub(crate) valid_bytes: u64,
    /// What follows the valid records.
    pub(crate) end: Ending,
    /// Whether even the header was torn (the file holds nothing).
    pub(crate) torn_header: bool,
}

impl Scan {
    /// Whether recovery cuts the file at `valid_bytes` if it is the newest
    /// segment (a torn tail, or unused bytes after the records).
    pub(crate) fn needs_cut(&self) -> bool {
        matches!(self.end, Ending::Zeros | Ending::Torn | Ending::Leftover)
    }
}

/// How a scan treats the segment numbers in format-2 records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Numbers {
    /// A record of another segment ends the records: the only correct way.
    Checked,
    /// A deliberately broken reader that takes a recycled file's earlier
    /// records as its own: the crash tests' negative control.
    #[cfg_attr(
        not(any(test, feature = "testing")),
        expect(dead_code, reason = "only the tests' negative control reads so")
    )]
    IgnoredForTests,
}

/// Reads every record of segment `path`, numbered `seq`.
///
/// The records end at the end of the file, at a seal, or where only zeros
/// or (format 2) bytes of another segment follow.
///
/// With `is_last`, a record cut short by a crash is a torn tail: it is
/// reported, not returned, and nothing after it is read. In format 1 a
/// record is torn if its declared end lies past the end of the file, or
/// its checksum fails and it is the final record (only zeros or the end of
/// the file follow) or one of the disk sectors it spans holds only zeros
/// (that part of the write never reached the disk; writes past the last
/// fsync may land in any order in a preallocated file). A zeroed record
/// header followed by data is torn for the same reason. In format 2 a
/// record whose end lies past the end of the file is torn; any other stop
/// is [`Ending::Leftover`] unless a later record of this segment proves
/// the bytes there were synced (`storage::framing::named`). Anything else
/// that is wrong, and any damage at all in a segment that is not the last,
/// is [`LogStoreError::Corrupt`]: older segments are synced in full before
/// a newer one is created.
pub(crate) fn scan(
    fs: &dyn FileSystem,
    path: &Path,
    seq: u64,
    is_last: bool,
    numbers: Numbers,
) -> Result<Scan, LogStoreError> {
    let buf = read_whole(fs, path)?;
    let torn_header = |buf: Vec<u8>| {
        if !is_last {
            return Err(LogStoreError::corrupt(path, 0, "short or zeroed file header"));
        }
        Ok(Scan {
            buf,
            header_bytes: NAMED_RECORD_HEADER_BYTES,
            version: FORMAT_VERSION,
            records: Vec::new(),
            valid_bytes: 0,
            end: Ending::Torn,
            torn_header: true,
        })
    };
    if buf.len() < FILE_HEADER_BYTES || all_zero(&buf[..FILE_HEADER_BYTES]) {
        // The header is synced at creation, so it is missing only if the
        // crash came before the segment was ever used.
        return torn_header(buf);
    }
    let version = check_header(path, &buf)?;
    let scanned = if version == FORMAT_VERSION_V1 {
        Some(scan_v1(path, &buf)?)
    } else {
        scan_v2(path, &buf, seq, numbers)?
    };
    let Some((header_bytes, payloads, valid_bytes, end)) = scanned else {
        // Format 2: no opening record. It is synced with the header before
        // the segment's name exists, so this too is a creation a crash
        // interrupted: the segment never held anything.
        return torn_header(buf);
    };
    if !is_last && !matches!(end, Ending::Complete | Ending::Sealed | Ending::Zeros) {
        return Err(LogStoreError::corrupt(
            path,
            valid_bytes as u64,
            format!("a segment that is not the newest ends {end:?}"),
        ));
    }
    let records = payloads
        .iter()
        .map(|payload| ScannedRecord {
            offset: (payload.start - header_bytes) as u64,
            record_bytes: (payload.end - payload.start + header_bytes) as u64,
        })
        .collect();
    Ok(Scan {
        buf,
        header_bytes,
        version,
        records,
        valid_bytes: valid_bytes as u64,
        end,
        torn_header: false,
    })
}

/// What one format's scan found: its record header size, the payloads,
/// where the records end and how.
type Scanned = (usize, Vec<std::ops::Range<usize>>, usize, Ending);

/// The records of a format-1 segment.
fn scan_v1(path: &Path, buf: &[u8]) -> Result<Scanned, LogStoreError> {
    let scan = framing::scan_records(buf, FILE_HEADER_BYTES, RECORD_BYTES_MAX);
    let offset = scan.valid_bytes;
    let end = match scan.end {
        ScanEnd::Complete => Ending::Complete,
        ScanEnd::ZeroTail => Ending::Zeros,
        ScanEnd::Torn { .. } => Ending::Torn,
        ScanEnd::LengthTooLarge { len } => {
            return Err(LogStoreError::corrupt(
                path,
                offset as u64,
                format!("record length {len} exceeds {RECORD_BYTES_MAX}"),
            ))
        }
        ScanEnd::DamagedLength { len, records_at } => {
            return Err(LogStoreError::corrupt(
                path,
                offset as u64,
                format!(
                    "record length {len} runs past the records after it, but valid records follow from offset \
                     {records_at}: a damaged length, not a torn write"
                ),
            ))
        }
        ScanEnd::ChecksumMismatch { stored, computed } => {
            return Err(LogStoreError::corrupt(
                path,
                offset as u64,
                format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
            ))
        }
    };
    Ok((RECORD_HEADER_BYTES, scan.payloads, offset, end))
}

/// The records of a format-2 segment numbered `seq`; `None` if it lacks
/// its opening record.
///
/// Where the records stop short of a seal or the end of the file, the
/// opening record decides: in a recycled file, bytes that are not this
/// segment's records are its earlier life (or a torn write over it) unless
/// a later record proves them synced; in a new file they are zeros, so a
/// stop that is not a torn write over zeros (the format-1 rule) is damage.
fn scan_v2(path: &Path, buf: &[u8], seq: u64, numbers: Numbers) -> Result<Option<Scanned>, LogStoreError> {
    let mut scan = named::scan(buf, FILE_HEADER_BYTES, RECORD_BYTES_MAX, seq);
    let mut payloads = std::mem::take(&mut scan.payloads);
    let recycled = match payloads.first().map(|range| &buf[range.clone()]) {
        Some([TYPE_OPENING_FRESH]) => false,
        Some([TYPE_OPENING_RECYCLED]) => true,
        Some(_) => {
            return Err(LogStoreError::corrupt(
                path,
                FILE_HEADER_BYTES as u64,
                "the first record of a format-2 segment is not its opening",
            ))
        }
        None if matches!(
            scan.end,
            NamedEnd::Sealed | NamedEnd::Invalid { .. } | NamedEnd::Damaged { .. }
        ) =>
        {
            return Err(LogStoreError::corrupt(
                path,
                FILE_HEADER_BYTES as u64,
                format!("no opening record: {:?}", scan.end),
            ))
        }
        None => return Ok(None),
    };
    while let (Numbers::IgnoredForTests, NamedEnd::Older { file_number }) = (numbers, &scan.end) {
        // The broken reader: go on through the earlier life's records.
        scan = named::scan(buf, scan.valid_bytes, RECORD_BYTES_MAX, *file_number);
        payloads.append(&mut scan.payloads);
    }
    let offset = scan.valid_bytes;
    let end = match scan.end {
        NamedEnd::Complete => Ending::Complete,
        NamedEnd::Sealed => Ending::Sealed,
        NamedEnd::Cut { .. } => Ending::Torn,
        NamedEnd::ZeroTail => Ending::Leftover,
        NamedEnd::Older { .. } | NamedEnd::Leftover { .. } if recycled => Ending::Leftover,
        NamedEnd::Leftover { .. } if named::torn_over_zeros(buf, offset, RECORD_BYTES_MAX) => Ending::Torn,
        NamedEnd::Older { file_number } => {
            return Err(LogStoreError::corrupt(
                path,
                offset as u64,
                format!("a record of segment {file_number} in a segment that was never recycled"),
            ))
        }
        NamedEnd::Leftover { reason } => return Err(LogStoreError::corrupt(path, offset as u64, reason)),
        NamedEnd::Damaged { reason, witness } => {
            return Err(LogStoreError::corrupt(
                path,
                offset as u64,
                format!("{reason}, before a record at offset {witness} written after these bytes were synced"),
            ))
        }
        NamedEnd::Invalid { reason } => return Err(LogStoreError::corrupt(path, offset as u64, reason)),
    };
    Ok(Some((NAMED_RECORD_HEADER_BYTES, payloads, offset, end)))
}

impl Scan {
    /// The payload of `record`, one of this scan's records.
    pub(crate) fn payload(&self, record: &ScannedRecord) -> &[u8] {
        // Offsets and lengths come from this scan, which checked them
        // against the buffer, so the conversions and the slice cannot fail.
        let start = record.offset as usize + self.header_bytes;
        let end = record.offset as usize + record.record_bytes as usize;
        &self.buf[start..end]
    }
}

/// Checks one record read back from segment `seq` (format `version`) at
/// `offset` (its whole frame, header included, as the index located it)
/// and returns its payload.
///
/// A length that disagrees with the index, a checksum that fails or
/// (format 2) a record of another segment is [`LogStoreError::Corrupt`]:
/// the record was whole when it was indexed, so a mismatch now is damage
/// (or a bug), never a torn write, and must never be served as an entry.
pub(crate) fn check_record<'a>(
    path: &Path,
    seq: u64,
    version: u32,
    offset: u64,
    frame: &'a [u8],
) -> Result<&'a [u8], LogStoreError> {
    let checked = if version == FORMAT_VERSION_V1 {
        framing::check_record(frame)
    } else {
        named::check_record(frame, seq)
    };
    checked.map_err(|reason| LogStoreError::corrupt(path, offset, reason))
}

/// Checks the magic number, version and checksum of a segment's header,
/// and returns the version.
fn check_header(path: &Path, buf: &[u8]) -> Result<u32, LogStoreError> {
    match framing::read_file_header(buf) {
        FileHeader::ChecksumMismatch { .. } => Err(LogStoreError::corrupt(path, 0, "file header checksum mismatch")),
        FileHeader::Valid { magic, .. } if magic != MAGIC => Err(LogStoreError::corrupt(
            path,
            0,
            "not a log store segment (bad magic number)",
        )),
        FileHeader::Valid { version, .. } if version != FORMAT_VERSION && version != FORMAT_VERSION_V1 => {
            Err(LogStoreError::UnsupportedVersion {
                file: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION,
            })
        }
        FileHeader::Valid { version, .. } => Ok(version),
    }
}

#[cfg(test)]
mod tests {
    use storage::framing::SECTOR_BYTES;
    use storage::io::RealFs;

    use super::*;

    /// A format-1 segment (an older build's) numbered 1 holding `payloads`.
    fn write_segment(dir: &Path, payloads: &[&[u8]]) -> PathBuf {
        let path = segment_path(dir, 1);
        let mut bytes = file_header_v1().to_vec();
        for p in payloads {
            frame_v1(&mut bytes, p);
        }
        std::fs::write(&path, &bytes).expect("write");
        path
    }

    /// Scans segment 1 at `path`.
    fn scan1(path: &Path, is_last: bool) -> Result<Scan, LogStoreError> {
        scan(&RealFs, path, 1, is_last, Numbers::Checked)
    }

    /// A format-2 segment's bytes: numbered `seq`, made from a recycled
    /// file, holding `payloads`, each claiming `synced_bytes` durable
    /// (capped at its own offset).
    fn segment_v2(seq: u64, payloads: &[&[u8]], synced_bytes: u64) -> Vec<u8> {
        opened_v2(seq, TYPE_OPENING_RECYCLED, payloads, synced_bytes)
    }

    /// [`segment_v2`] opening with `opening` (fresh or recycled).
    fn opened_v2(seq: u64, opening: u8, payloads: &[&[u8]], synced_bytes: u64) -> Vec<u8> {
        let mut bytes = file_header().to_vec();
        for p in std::iter::once(&[opening][..]).chain(payloads.iter().copied()) {
            let name = RecordName {
                file_number: seq,
                synced_bytes: synced_bytes.min(bytes.len() as u64),
            };
            frame(&mut bytes, p, name);
        }
        bytes
    }

    /// The payloads a scan found after the opening record.
    fn found(scan: &Scan) -> Vec<Vec<u8>> {
        scan.records.iter().skip(1).map(|r| scan.payload(r).to_vec()).collect()
    }

    /// Bytes of a format-2 opening record.
    const OPENING_BYTES: usize = NAMED_RECORD_HEADER_BYTES + 1;

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
    fn format_1_every_cut_of_the_last_record_is_a_torn_tail() {
        // A crash can stop a write at any byte; the whole records before it are kept.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_segment(dir.path(), &[b"first", b"second record"]);
        let full = std::fs::read(&path).expect("read");
        let first_end = FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 5;
        for cut in first_end..full.len() {
            std::fs::write(&path, &full[..cut]).expect("write");
            let found = scan1(&path, true).expect("a torn tail is not an error");
            assert_eq!(found.records.len(), 1, "cut at {cut}");
            assert_eq!(found.valid_bytes, first_end as u64);
            assert_eq!(found.end == Ending::Torn, cut != first_end);
            if cut != first_end {
                assert!(scan1(&path, false).is_err(), "not the last segment: corrupt");
            }
        }
    }

    #[test]
    fn format_1_a_flipped_byte_before_the_tail_is_corruption() {
        // Damage followed by valid data cannot be a torn write.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_segment(dir.path(), &[b"first", b"second"]);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 1] ^= 0x10;
        std::fs::write(&path, &bytes).expect("write");
        let err = scan1(&path, true).expect_err("corrupt");
        assert!(
            matches!(&err, LogStoreError::Corrupt { file, offset, .. } if file == &path && *offset == FILE_HEADER_BYTES as u64),
            "{err}"
        );
    }

    #[test]
    fn format_1_zeros_after_the_records_are_the_unused_end_of_a_preallocated_segment() {
        // A preallocated segment ends in zeros; they are neither records nor damage.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_segment(dir.path(), &[b"first", b"second"]);
        let written = std::fs::read(&path).expect("read").len();
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.resize(written + 4096, 0);
        std::fs::write(&path, &bytes).expect("write");
        for is_last in [true, false] {
            let found = scan1(&path, is_last).expect("a zero tail is clean");
            assert_eq!(found.records.len(), 2);
            assert_eq!(found.valid_bytes, written as u64);
            assert_eq!(found.end, Ending::Zeros);
        }
    }

    #[test]
    fn format_1_a_record_with_a_sector_never_written_is_torn_even_with_data_after_it() {
        // Unsynced writes into a preallocated file reach the disk in any order.
        let dir = tempfile::tempdir().expect("tempdir");
        let big = vec![7u8; 1500];
        let path = write_segment(dir.path(), &[b"first", &big, b"third"]);
        let mut bytes = std::fs::read(&path).expect("read");
        let big_start = FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 5;
        bytes[SECTOR_BYTES..2 * SECTOR_BYTES].fill(0);
        std::fs::write(&path, &bytes).expect("write");
        let found = scan1(&path, true).expect("torn, not corrupt");
        assert_eq!(found.records.len(), 1, "the torn record and all after it are dropped");
        assert_eq!(found.valid_bytes, big_start as u64);
        assert_eq!(found.end, Ending::Torn);
        assert!(scan1(&path, false).is_err(), "not the last segment: corrupt");
    }

    #[test]
    fn format_1_a_zeroed_record_header_followed_by_data_is_torn_only_in_the_last_segment() {
        // A header that never reached the disk ends the log; older segments never have one.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_segment(dir.path(), &[b"first", b"second"]);
        let mut bytes = std::fs::read(&path).expect("read");
        let second = FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 5;
        bytes[second..second + RECORD_HEADER_BYTES].fill(0);
        std::fs::write(&path, &bytes).expect("write");
        let found = scan1(&path, true).expect("torn");
        assert_eq!((found.records.len(), found.end), (1, Ending::Torn));
        assert!(scan1(&path, false).is_err());
    }

    /// An older segment `seq` of `count` records of `len` bytes (record `i`
    /// filled with `i + 1`): its payloads and its bytes.
    fn old_segment(seq: u64, count: u8, len: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
        let payloads: Vec<Vec<u8>> = (0..count).map(|i| vec![i + 1; len]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let bytes = segment_v2(seq, &refs, u64::MAX);
        (payloads, bytes)
    }

    /// `old` with `new` written over its start: a recycled file.
    fn overlay(old: &[u8], new: &[u8]) -> Vec<u8> {
        let mut recycled = old.to_vec();
        recycled[..new.len()].copy_from_slice(new);
        recycled
    }

    /// Offset of the second record of a format-2 segment whose first
    /// (after the opening) has a 5-byte payload.
    const SECOND: usize = FILE_HEADER_BYTES + OPENING_BYTES + NAMED_RECORD_HEADER_BYTES + 5;

    /// Asserts that `bytes`, as the newest segment `seq`, are corrupt at `offset`.
    fn assert_corrupt_at(dir: &Path, seq: u64, bytes: &[u8], offset: usize) {
        let err = scan_bytes(dir, seq, bytes, true, Numbers::Checked).expect_err("damage");
        assert!(
            matches!(&err, LogStoreError::Corrupt { offset: at, .. } if *at == offset as u64),
            "{err}"
        );
    }

    /// Writes `bytes` as segment `seq` in `dir` and scans it.
    fn scan_bytes(dir: &Path, seq: u64, bytes: &[u8], is_last: bool, numbers: Numbers) -> Result<Scan, LogStoreError> {
        let path = segment_path(dir, seq);
        std::fs::write(&path, bytes).expect("write");
        scan(&RealFs, &path, seq, is_last, numbers)
    }

    #[test]
    fn a_recycled_segment_reads_exactly_its_new_records() {
        // The goal of the format: an older segment's records after the new ones are never read.
        let dir = tempfile::tempdir().expect("tempdir");
        let (old_payloads, old) = old_segment(3, 6, 300);
        let old_refs: Vec<&[u8]> = old_payloads.iter().map(Vec::as_slice).collect();
        // Same length and layout as the old records, even the same bytes:
        // only the segment number tells them apart.
        for new_count in 0..old_refs.len() {
            let new = segment_v2(9, &old_refs[..new_count], u64::MAX);
            let recycled = overlay(&old, &new);
            let scanned = scan_bytes(dir.path(), 9, &recycled, true, Numbers::Checked).expect("opens");
            assert_eq!(
                found(&scanned),
                old_payloads[..new_count].to_vec(),
                "{new_count} new records"
            );
            assert_eq!((scanned.valid_bytes, scanned.end), (new.len() as u64, Ending::Leftover));
            // The deliberately broken reader, which ignores the numbers,
            // reads the old records too: the fixture does test the check.
            let broken = scan_bytes(dir.path(), 9, &recycled, true, Numbers::IgnoredForTests).expect("scans");
            assert_eq!(
                broken.records.len(),
                1 + old_refs.len(),
                "the broken reader reads old records"
            );
        }
        // Other lengths: the new records end mid-way through an old one.
        let new = segment_v2(9, &[b"short", &[5u8; 1000], b"x"], u64::MAX);
        let recycled = overlay(&old, &new);
        let scanned = scan_bytes(dir.path(), 9, &recycled, true, Numbers::Checked).expect("opens");
        assert_eq!(found(&scanned), vec![b"short".to_vec(), vec![5u8; 1000], b"x".to_vec()]);
        assert_eq!(scanned.end, Ending::Leftover);
        assert!(
            scan_bytes(dir.path(), 9, &recycled, false, Numbers::Checked).is_err(),
            "an unsealed leftover in an older segment is damage"
        );
    }

    #[test]
    fn a_recycled_segment_torn_mid_record_keeps_the_records_before_the_tear() {
        // A power cut mid-write leaves old bytes, not zeros, in the sectors that never landed.
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, old) = old_segment(2, 8, 700);
        // Nothing of the new segment synced yet but its opening (16 bytes).
        let new_payloads: [&[u8]; 3] = [b"first", &[6u8; 1800], b"third"];
        let new = segment_v2(5, &new_payloads, FILE_HEADER_BYTES as u64);
        let second = SECOND;
        // Every prefix of the new bytes over the old file, then, per cut,
        // one sector of the second record lost (old bytes) with the third
        // landed: always the whole records before the tear, no error.
        for cut in (second..=new.len()).step_by(37) {
            let recycled = overlay(&old, &new[..cut]);
            let scanned = scan_bytes(dir.path(), 5, &recycled, true, Numbers::Checked).expect("torn, not corrupt");
            let whole = if cut == new.len() {
                3
            } else if cut >= second + NAMED_RECORD_HEADER_BYTES + 1800 {
                2
            } else {
                1
            };
            assert_eq!(found(&scanned).len(), whole, "cut at {cut}");
            assert!(
                scanned.needs_cut(),
                "cut at {cut}: old bytes follow, recovery cuts them"
            );
        }
        let mut torn = overlay(&old, &new);
        torn[2 * SECTOR_BYTES..3 * SECTOR_BYTES].copy_from_slice(&old[2 * SECTOR_BYTES..3 * SECTOR_BYTES]);
        let scanned = scan_bytes(dir.path(), 5, &torn, true, Numbers::Checked).expect("torn, not corrupt");
        assert_eq!((found(&scanned).len(), scanned.valid_bytes), (1, second as u64));
    }

    #[test]
    fn damage_that_a_later_record_vouches_for_is_corruption_even_in_the_newest_segment() {
        // A record written after a sync proves the bytes before it durable: a crash cannot have torn them.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = segment_v2(4, &[b"first", b"second"], 0);
        let synced = bytes.len() as u64;
        frame(
            &mut bytes,
            b"after the sync",
            RecordName {
                file_number: 4,
                synced_bytes: synced,
            },
        );
        bytes[SECOND + NAMED_RECORD_HEADER_BYTES + 2] ^= 0x40;
        assert_corrupt_at(dir.path(), 4, &bytes, SECOND);
        // Without the vouching record, the same bytes may be a torn write.
        let unvouched = &bytes[..synced as usize];
        let scanned = scan_bytes(dir.path(), 4, unvouched, true, Numbers::Checked).expect("torn");
        assert_eq!((found(&scanned).len(), scanned.end), (1, Ending::Leftover));
    }

    #[test]
    fn in_a_segment_never_recycled_damage_before_data_is_corruption_as_in_format_1() {
        // Without an earlier life, what follows the records is zeros: data after a bad record is damage.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = opened_v2(4, TYPE_OPENING_FRESH, &[b"first", b"second", b"third"], 0);
        bytes[SECOND + NAMED_RECORD_HEADER_BYTES + 2] ^= 0x40;
        assert_corrupt_at(dir.path(), 4, &bytes, SECOND);
        // The same record torn over zeros (a sector never written) is a torn tail.
        let mut torn = opened_v2(4, TYPE_OPENING_FRESH, &[b"first", &[3u8; 1500], b"third"], 0);
        torn[SECTOR_BYTES..2 * SECTOR_BYTES].fill(0);
        let scanned = scan_bytes(dir.path(), 4, &torn, true, Numbers::Checked).expect("torn");
        assert_eq!((found(&scanned).len(), scanned.end), (1, Ending::Torn));
        // A recycled segment with the same bytes: what follows may be its earlier life.
        let mut refreshed = Vec::new();
        frame(
            &mut refreshed,
            &[TYPE_OPENING_RECYCLED],
            RecordName {
                file_number: 4,
                synced_bytes: 0,
            },
        );
        bytes[FILE_HEADER_BYTES..FILE_HEADER_BYTES + OPENING_BYTES].copy_from_slice(&refreshed);
        let scanned = scan_bytes(dir.path(), 4, &bytes, true, Numbers::Checked).expect("leftover");
        assert_eq!((found(&scanned).len(), scanned.end), (1, Ending::Leftover));
    }

    #[test]
    fn a_sealed_segment_ends_at_its_seal_and_older_segments_must_be_sealed_or_cut() {
        // Older segments end at a seal or the end of the file; anything else there is damage.
        let dir = tempfile::tempdir().expect("tempdir");
        let old = segment_v2(1, &[&[1u8; 400], &[2u8; 400], &[3u8; 400]], u64::MAX);
        let mut bytes = segment_v2(6, &[b"one"], u64::MAX);
        let seal_at = bytes.len();
        frame_seal(
            &mut bytes,
            RecordName {
                file_number: 6,
                synced_bytes: seal_at as u64,
            },
        );
        let recycled = overlay(&old, &bytes);
        for is_last in [true, false] {
            let scanned = scan_bytes(dir.path(), 6, &recycled, is_last, Numbers::Checked).expect("sealed");
            assert_eq!((found(&scanned).len(), scanned.end), (1, Ending::Sealed));
            assert_eq!(scanned.valid_bytes, seal_at as u64);
        }
        let complete = segment_v2(6, &[b"one"], u64::MAX);
        let scanned = scan_bytes(dir.path(), 6, &complete, false, Numbers::Checked).expect("cut to its records");
        assert_eq!(scanned.end, Ending::Complete);
        let mut zeros = complete.clone();
        zeros.resize(complete.len() + 1024, 0);
        assert_eq!(
            scan_bytes(dir.path(), 6, &zeros, true, Numbers::Checked)
                .expect("newest")
                .end,
            Ending::Leftover
        );
        assert!(
            scan_bytes(dir.path(), 6, &zeros, false, Numbers::Checked).is_err(),
            "older segments are sealed"
        );
        let later = segment_v2(7, &[b"one"], u64::MAX);
        assert!(
            scan_bytes(dir.path(), 6, &later, true, Numbers::Checked).is_err(),
            "a record of a later segment is never left in a file"
        );
    }
}
