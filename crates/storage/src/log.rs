//! The log files of the engine: the WAL and the manifest.
//!
//! A log file starts with a 16-byte header (`magic: u64`, `version: u32`,
//! `crc32` of those 12 bytes: u32, all little-endian) followed by records:
//! `crc32: u32 | length: u32 | payload`, where the crc covers the length
//! bytes and the payload. Files are only ever appended to. The framing and
//! the scan are [`crate::framing`]'s, shared with the Raft log store.
//!
//! Recovery reads records until the end. A record cut short by a crash is a
//! *torn tail*: it was never acknowledged as durable and is dropped with
//! everything after it. A record is torn if its declared end lies past the
//! end of the file, or its checksum fails and it is the last record, or only
//! zeros follow it, or one of the disk sectors it spans reads as zeros
//! there (that part of the append never reached the disk: unsynced sectors
//! land in any order, so a lost one can be followed by written ones). A
//! record header of eight zero bytes is torn for the same reason (no record
//! starts so: the crc of a zero length is not zero). Any other bad record
//! is corruption, and recovery refuses to continue.

use std::ops::Range;
use std::path::Path;

use crate::error::{Error, Result};
use crate::framing::FILE_HEADER_BYTES;
use crate::framing::{self, all_zero, FileHeader, ScanEnd};
use crate::io::{AppendFile, FileSystem, ReadFile};

/// Largest record payload, in bytes.
pub const RECORD_BYTES_MAX: usize = 256 << 20;
/// The log format version this build writes and reads.
pub const LOG_FORMAT_VERSION: u32 = 1;

/// Which kind of log a file is, told apart by its magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// A write-ahead log segment.
    Wal,
    /// A manifest (log of version edits).
    Manifest,
}

impl LogKind {
    pub(crate) fn magic(self) -> u64 {
        match self {
            LogKind::Wal => 0x4c53_4d57_414c_0001,      // "LSMWAL" + 1
            LogKind::Manifest => 0x4c53_4d4d_4e46_0001, // "LSMMNF" + 1
        }
    }
}

/// How far ahead [`LogWriter::allocate_ahead`] writes zeros at a time: one
/// sync per step pays for the new length, the rest only for their data.
pub const ALLOCATE_STEP_BYTES: u64 = 1 << 20;

/// Appends records to a new log file.
#[derive(Debug)]
pub struct LogWriter {
    file: AppendFile,
    scratch: Vec<u8>,
}

impl LogWriter {
    /// Creates `path` and writes (and syncs) its header.
    pub fn create(fs: &dyn FileSystem, path: &Path, kind: LogKind) -> Result<Self> {
        let mut file = AppendFile::create_new(fs, path)?;
        file.append(&framing::file_header(kind.magic(), LOG_FORMAT_VERSION))?;
        // The header is synced at once so that a log file that exists after a
        // crash always has a readable header, whatever was appended later.
        file.sync()?;
        Ok(LogWriter {
            file,
            scratch: Vec::new(),
        })
    }

    /// Frames `payload` as one record into `out` without writing it, so a
    /// caller can gather many records into one write.
    pub fn frame(out: &mut Vec<u8>, payload: &[u8]) {
        framing::frame(out, payload, RECORD_BYTES_MAX);
    }

    /// Appends one record (not yet durable: see [`sync`](Self::sync)).
    pub fn add_record(&mut self, payload: &[u8]) -> Result<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        Self::frame(&mut scratch, payload);
        let result = self.file.append(&scratch);
        self.scratch = scratch;
        result
    }

    /// Appends bytes already framed by [`frame`](Self::frame).
    pub fn add_framed(&mut self, framed: &[u8]) -> Result<()> {
        self.file.append(framed)
    }

    /// Makes every appended record durable.
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync()
    }

    /// Makes sure the file already extends `bytes` past the last record, by
    /// writing zeros ahead in steps of [`ALLOCATE_STEP_BYTES`]: a sync after
    /// records that only overwrite those zeros is cheaper than one after
    /// records that grow the file. Recovery reads the zeros after the last
    /// record as the end of the log.
    pub fn allocate_ahead(&mut self, bytes: u64) -> Result<()> {
        let needed = self.file.len_bytes() + bytes;
        if needed <= self.file.allocated_bytes() {
            return Ok(());
        }
        self.file.allocate(needed.next_multiple_of(ALLOCATE_STEP_BYTES))
    }

    /// Makes every record durable and cuts the zeros written ahead, so the
    /// file ends with its last record: done when writes move to a newer
    /// log, since only the newest log may end in anything but a record.
    pub fn finish(&mut self) -> Result<()> {
        self.file.trim_and_sync()
    }

    /// Bytes in the file so far.
    pub fn len_bytes(&self) -> u64 {
        self.file.len_bytes()
    }
}

/// Everything recovery read from one log file.
#[derive(Debug)]
pub struct LogContents {
    buf: Vec<u8>,
    records: Vec<Range<usize>>,
    /// Bytes of the file that hold the header and whole, valid records.
    pub valid_bytes: u64,
    /// Whether a torn tail was found (and dropped) after `valid_bytes`.
    pub torn_tail: bool,
    /// Whether what follows `valid_bytes` is only zeros: zeros written
    /// ahead of the records ([`LogWriter::allocate_ahead`]), or an append
    /// none of whose sectors reached the disk. Counted as a torn tail.
    pub zero_tail: bool,
}

impl LogContents {
    /// The payloads of the valid records, in order.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        self.records.iter().map(|r| &self.buf[r.clone()])
    }

    /// Whether no valid record was read.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Reads every record of the log at `path`, dropping a torn tail and
/// failing on corruption anywhere before it.
pub fn read_log(fs: &dyn FileSystem, path: &Path, kind: LogKind) -> Result<LogContents> {
    let buf = ReadFile::open(fs, path)?.read_all()?;
    let file_len = buf.len();
    let torn_from = |offset: usize, buf: Vec<u8>, records| LogContents {
        zero_tail: all_zero(&buf[offset.min(buf.len())..]),
        buf,
        records,
        valid_bytes: offset as u64,
        torn_tail: true,
    };
    if file_len < FILE_HEADER_BYTES || all_zero(&buf) {
        // The header is synced right after creation, so a short or zeroed
        // header means the crash came before the file was ever used.
        return Ok(torn_from(0, buf, Vec::new()));
    }
    check_header(path, kind, &buf)?;
    let scan = framing::scan_records(&buf, FILE_HEADER_BYTES, RECORD_BYTES_MAX);
    let offset = scan.valid_bytes as u64;
    match scan.end {
        ScanEnd::Complete => Ok(LogContents {
            buf,
            records: scan.payloads,
            valid_bytes: offset,
            torn_tail: false,
            zero_tail: false,
        }),
        // A zeroed header, with or without data after it, is a header that
        // never reached the disk, possibly with later sectors of the same
        // unsynced append written after it. A power cut with non-sync writes
        // in flight leaves this; calling it corruption would refuse to open
        // a database that lost nothing it had promised.
        ScanEnd::ZeroTail | ScanEnd::Torn { .. } => Ok(torn_from(scan.valid_bytes, buf, scan.payloads)),
        ScanEnd::LengthTooLarge { len } => Err(Error::corruption(
            path,
            offset,
            format!("record length {len} exceeds the limit"),
        )),
        ScanEnd::DamagedLength { len, records_at } => Err(Error::corruption(
            path,
            offset,
            format!(
                "record length {len} runs past the records after it, but valid records follow from offset \
                 {records_at}: a damaged length, not a torn write"
            ),
        )),
        ScanEnd::ChecksumMismatch { stored, computed } => Err(Error::ChecksumMismatch {
            file: path.to_path_buf(),
            offset,
            expected: stored,
            actual: computed,
        }),
    }
}

fn check_header(path: &Path, kind: LogKind, buf: &[u8]) -> Result<()> {
    let (magic, version) = match framing::read_file_header(buf) {
        FileHeader::Valid { magic, version } => (magic, version),
        FileHeader::ChecksumMismatch { stored, computed } => {
            return Err(Error::ChecksumMismatch {
                file: path.to_path_buf(),
                offset: 0,
                expected: stored,
                actual: computed,
            })
        }
    };
    if magic != kind.magic() {
        return Err(Error::corruption(
            path,
            0,
            format!("not a {kind:?} log (bad magic number)"),
        ));
    }
    if version != LOG_FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            file: path.to_path_buf(),
            found: version,
            supported: LOG_FORMAT_VERSION,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::{RECORD_HEADER_BYTES, SECTOR_BYTES};
    use crate::io::RealFs;

    fn write_log(path: &Path, payloads: &[&[u8]]) {
        let mut writer = LogWriter::create(&RealFs, path, LogKind::Wal).expect("create");
        for p in payloads {
            writer.add_record(p).expect("append");
        }
        writer.sync().expect("sync");
    }

    fn payloads_of(contents: &LogContents) -> Vec<Vec<u8>> {
        contents.records().map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn records_round_trip() {
        // What is appended and synced is read back whole and in order.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        write_log(&path, &[b"one", b"", b"three"]);
        let contents = read_log(&RealFs, &path, LogKind::Wal).expect("read");
        assert_eq!(payloads_of(&contents), vec![b"one".to_vec(), vec![], b"three".to_vec()]);
        assert!(!contents.torn_tail);
    }

    #[test]
    fn records_over_zeros_written_ahead_read_back_and_finish_cuts_the_zeros() {
        // A log written into space allocated ahead ends in zeros until it is finished, then in its last record.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let mut writer = LogWriter::create(&RealFs, &path, LogKind::Wal).expect("create");
        let payloads: Vec<Vec<u8>> = (0..300u32).map(|i| vec![i as u8; 100 + i as usize * 37]).collect();
        let mut steps = Vec::new();
        for payload in &payloads {
            writer.allocate_ahead(payload.len() as u64 + 64).expect("allocate");
            writer.add_record(payload).expect("append");
            writer.sync().expect("sync");
            steps.push(std::fs::metadata(&path).expect("stat").len());
        }
        let on_disk = std::fs::metadata(&path).expect("stat").len();
        assert_eq!(
            on_disk,
            ALLOCATE_STEP_BYTES * 2,
            "1.7 MB of records in two steps: {steps:?}"
        );
        assert!(steps.iter().all(|len| len.is_multiple_of(ALLOCATE_STEP_BYTES)));
        let contents = read_log(&RealFs, &path, LogKind::Wal).expect("read");
        assert_eq!(payloads_of(&contents), payloads);
        assert!(contents.torn_tail && contents.zero_tail, "the zeros ahead end the log");
        assert_eq!(contents.valid_bytes, writer.len_bytes());

        writer.finish().expect("finish");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), writer.len_bytes());
        let contents = read_log(&RealFs, &path, LogKind::Wal).expect("read");
        assert_eq!(payloads_of(&contents), payloads);
        assert!(!contents.torn_tail && !contents.zero_tail);
    }

    #[test]
    fn every_cut_of_the_tail_is_a_torn_tail() {
        // A crash can stop an append at any byte; recovery keeps the whole records before it.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        write_log(&path, &[b"first record", b"second record"]);
        let full = std::fs::read(&path).expect("read");
        let first_end = FILE_HEADER_BYTES + RECORD_HEADER_BYTES + b"first record".len();
        for cut in first_end..full.len() {
            std::fs::write(&path, &full[..cut]).expect("write");
            let contents = read_log(&RealFs, &path, LogKind::Wal).expect("torn tail is not an error");
            assert_eq!(payloads_of(&contents), vec![b"first record".to_vec()], "cut at {cut}");
            assert_eq!(contents.valid_bytes, first_end as u64);
            assert_eq!(contents.torn_tail, cut != first_end);
        }
    }

    #[test]
    fn a_flipped_byte_before_the_tail_is_corruption() {
        // Damage in the middle must stop recovery, not silently drop later records.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        write_log(&path, &[b"first record", b"second record"]);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[FILE_HEADER_BYTES + RECORD_HEADER_BYTES + 2] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        let err = read_log(&RealFs, &path, LogKind::Wal).expect_err("corruption");
        assert!(matches!(err, Error::ChecksumMismatch { offset, .. } if offset == FILE_HEADER_BYTES as u64));
    }

    #[test]
    fn a_lost_sector_followed_by_written_ones_is_a_torn_tail() {
        // Unsynced sectors reach the disk in any order: a power cut can zero
        // a record's sector (or its header) and keep later records. That is
        // a torn tail, not corruption: found by the simulated-disk crash test.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let big = vec![7u8; 3 * SECTOR_BYTES];
        write_log(&path, &[b"first", &big, &big, b"last"]);
        let full = std::fs::read(&path).expect("read");
        let second = FILE_HEADER_BYTES + RECORD_HEADER_BYTES + b"first".len();
        for (from, to) in [
            // The second record's header lost, its payload written.
            (second, second + RECORD_HEADER_BYTES),
            // A whole sector inside the second record lost.
            (SECTOR_BYTES, 2 * SECTOR_BYTES),
        ] {
            let mut torn = full.clone();
            torn[from..to].fill(0);
            std::fs::write(&path, &torn).expect("write");
            let contents = read_log(&RealFs, &path, LogKind::Wal).expect("a torn tail is not an error");
            assert_eq!(payloads_of(&contents), vec![b"first".to_vec()], "zeroed {from}..{to}");
            assert!(contents.torn_tail);
        }
    }

    #[test]
    fn zeroed_tail_is_torn_and_wrong_kind_is_rejected() {
        // A preallocated or zero-filled tail is treated as unwritten space.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        write_log(&path, &[b"a"]);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &bytes).expect("write");
        let contents = read_log(&RealFs, &path, LogKind::Wal).expect("read");
        assert_eq!(contents.records().count(), 1);
        assert!(contents.torn_tail);
        assert!(read_log(&RealFs, &path, LogKind::Manifest)
            .expect_err("wrong kind")
            .is_corruption());
    }
}
