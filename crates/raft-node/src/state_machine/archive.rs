//! The snapshot archive: one file holding a checkpoint of the engine (its
//! table files and manifest) and the snapshot's metadata, so a snapshot can
//! be streamed as one byte stream and verified as it is unpacked.
//!
//! Layout (little-endian):
//!
//! ```text
//! magic: u64 | version: u32 | meta length: u32 | meta (prost raft.v1.SnapshotMeta) | crc32 of version..meta: u32
//! per file:  1u8 | name length: u16 | name | size: u64 | bytes | crc32 of name and bytes: u32
//! end:       0u8 | file count: u32
//! ```

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use proto::raft as pb;
use storage::io::{AppendFile, File, FileSystem};

use super::snapshot::into_io;

const MAGIC: u64 = 0x4b56_534e_4150_0001; // "KVSNAP" + 1
const VERSION: u32 = 1;
const KIND_FILE: u8 = 1;
const KIND_END: u8 = 0;
/// Largest encoded metadata accepted, in bytes.
const META_BYTES_MAX: u32 = 16 << 20;
/// Longest file name accepted, in bytes.
const NAME_BYTES_MAX: u16 = 255;
/// Copy buffer size, in bytes.
const COPY_BUFFER_BYTES: usize = 256 * 1024;

/// A snapshot archive that cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// Reading or writing failed.
    #[error("snapshot archive I/O on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The archive's bytes are damaged or not an archive.
    #[error("snapshot archive is corrupt: {0}")]
    Corrupt(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An error of the disk seam's helpers (which name the path themselves)
/// as an archive I/O error on `path`.
fn seam_err(path: &Path) -> impl FnOnce(storage::Error) -> ArchiveError + '_ {
    move |e| io_err(path)(into_io(e))
}

/// A new file on the disk seam as an [`io::Write`], for a `BufWriter`.
struct SeamWriter(AppendFile);

impl Write for SeamWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.append(bytes).map_err(into_io)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A file on the disk seam as an [`io::Read`] from its start (an archive
/// kept as a file, to unpack).
#[derive(Debug)]
pub struct FileReader {
    file: storage::io::ReadFile,
    offset: u64,
}

impl FileReader {
    /// Reads `file` from its start.
    pub fn new(file: storage::io::ReadFile) -> FileReader {
        FileReader { file, offset: 0 }
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.file.len_bytes().saturating_sub(self.offset);
        let n = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
        self.file.read_exact_at(self.offset, &mut buf[..n]).map_err(into_io)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Writes an archive of every file in `source_dir` with `meta` to the new
/// file `dest` on `fs`, fsynced before returning. Returns the archive's
/// size in bytes.
pub fn pack(fs: &dyn FileSystem, source_dir: &Path, meta: &pb::SnapshotMeta, dest: &Path) -> Result<u64, ArchiveError> {
    let file = AppendFile::create_new(fs, dest).map_err(seam_err(dest))?;
    let mut out = BufWriter::with_capacity(COPY_BUFFER_BYTES, SeamWriter(file));
    let size = pack_to(fs, source_dir, meta, &mut out)?;
    let SeamWriter(mut file) = out.into_inner().map_err(|e| ArchiveError::Io {
        path: dest.to_path_buf(),
        source: e.into_error(),
    })?;
    // The archive is complete on disk before anyone may rename or send it.
    file.sync().map_err(seam_err(dest))?;
    Ok(size)
}

/// Every file of a directory, opened, in name order: what an archive of
/// it holds. Once opened the files stay readable whatever happens to the
/// directory (a newer snapshot may replace and remove it while this one is
/// still being sent).
#[derive(Debug)]
pub struct OpenedDir {
    dir: PathBuf,
    files: Vec<(String, PathBuf, Box<dyn File>, u64)>,
}

impl OpenedDir {
    /// Opens every file of `dir` on `fs`.
    pub fn open(fs: &dyn FileSystem, dir: &Path) -> Result<OpenedDir, ArchiveError> {
        let mut names = fs.list_dir(dir).map_err(io_err(dir))?;
        names.sort();
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let path = dir.join(&name);
            let file = fs.open(&path).map_err(io_err(&path))?;
            let size = file.len_bytes().map_err(io_err(&path))?;
            files.push((name, path, file, size));
        }
        Ok(OpenedDir {
            dir: dir.to_path_buf(),
            files,
        })
    }
}

/// The size in bytes of the archive [`pack_opened`] writes for `opened`
/// and `meta`.
pub fn packed_len(opened: &OpenedDir, meta: &pb::SnapshotMeta) -> u64 {
    // magic, version, meta length, meta, header crc; then per file: kind,
    // name length, name, size, bytes, crc; then the end kind and count.
    let header = 8 + 4 + 4 + meta.encoded_len() as u64 + 4;
    let files: u64 = opened
        .files
        .iter()
        .map(|(name, _, _, size)| 1 + 2 + name.len() as u64 + 8 + size + 4)
        .sum();
    header + files + 1 + 4
}

/// Writes the archive of every file in `source_dir` on `fs` with `meta` to
/// `out`; returns its size in bytes.
pub fn pack_to(
    fs: &dyn FileSystem,
    source_dir: &Path,
    meta: &pb::SnapshotMeta,
    out: &mut impl Write,
) -> Result<u64, ArchiveError> {
    pack_opened(OpenedDir::open(fs, source_dir)?, meta, out)
}

/// Writes the archive of the files of `opened` with `meta` to `out`;
/// returns its size in bytes.
pub fn pack_opened(opened: OpenedDir, meta: &pb::SnapshotMeta, out: &mut impl Write) -> Result<u64, ArchiveError> {
    let OpenedDir {
        dir: source_dir,
        files: inputs,
    } = opened;
    let source_dir = source_dir.as_path();
    let mut written = 0u64;
    let mut write = |out: &mut dyn Write, bytes: &[u8]| {
        written += bytes.len() as u64;
        out.write_all(bytes).map_err(io_err(source_dir))
    };
    let meta_bytes = meta.encode_to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
    header.extend_from_slice(&meta_bytes);
    write(out, &MAGIC.to_le_bytes())?;
    write(out, &header)?;
    write(out, &crc32fast::hash(&header).to_le_bytes())?;
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let count = inputs.len();
    for (name, path, input, size) in inputs {
        let name_len =
            u16::try_from(name.len()).map_err(|_| ArchiveError::Corrupt(format!("file name too long: {name}")))?;
        write(out, &[KIND_FILE])?;
        write(out, &name_len.to_le_bytes())?;
        write(out, name.as_bytes())?;
        write(out, &size.to_le_bytes())?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(name.as_bytes());
        let mut offset = 0u64;
        while offset < size {
            let chunk = usize::try_from(size - offset).map_or(buffer.len(), |l| l.min(buffer.len()));
            input.read_at(offset, &mut buffer[..chunk]).map_err(io_err(&path))?;
            crc.update(&buffer[..chunk]);
            write(out, &buffer[..chunk])?;
            offset += chunk as u64;
        }
        write(out, &crc.finalize().to_le_bytes())?;
    }
    write(out, &[KIND_END])?;
    write(out, &(count as u32).to_le_bytes())?;
    Ok(written)
}

fn read_array<const N: usize>(input: &mut impl Read, what: &str) -> Result<[u8; N], ArchiveError> {
    let mut raw = [0u8; N];
    input
        .read_exact(&mut raw)
        .map_err(|_| ArchiveError::Corrupt(format!("archive ends within {what}")))?;
    Ok(raw)
}

/// Reads the archive's header: its metadata.
pub fn read_meta(input: &mut impl Read) -> Result<pb::SnapshotMeta, ArchiveError> {
    if u64::from_le_bytes(read_array(input, "the magic number")?) != MAGIC {
        return Err(ArchiveError::Corrupt(
            "not a snapshot archive (bad magic number)".into(),
        ));
    }
    let version = read_array::<4>(input, "the version")?;
    if u32::from_le_bytes(version) != VERSION {
        return Err(ArchiveError::Corrupt(format!(
            "unsupported archive version {}",
            u32::from_le_bytes(version)
        )));
    }
    let meta_len = read_array::<4>(input, "the metadata length")?;
    if u32::from_le_bytes(meta_len) > META_BYTES_MAX {
        return Err(ArchiveError::Corrupt("metadata longer than META_BYTES_MAX".into()));
    }
    let mut meta = vec![0u8; u32::from_le_bytes(meta_len) as usize];
    input
        .read_exact(&mut meta)
        .map_err(|_| ArchiveError::Corrupt("archive ends within the metadata".into()))?;
    let stored_crc = u32::from_le_bytes(read_array(input, "the header checksum")?);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&version);
    crc.update(&meta_len);
    crc.update(&meta);
    if crc.finalize() != stored_crc {
        return Err(ArchiveError::Corrupt("header checksum mismatch".into()));
    }
    pb::SnapshotMeta::decode(meta.as_slice()).map_err(|e| ArchiveError::Corrupt(format!("metadata: {e}")))
}

/// Unpacks the archive read from `input` into the new directory `dest` on
/// `fs`, verifying every checksum; every file and the directory are fsynced.
pub fn unpack(input: impl Read, fs: &dyn FileSystem, dest: &Path) -> Result<pb::SnapshotMeta, ArchiveError> {
    let mut input = BufReader::with_capacity(COPY_BUFFER_BYTES, input);
    let meta = read_meta(&mut input)?;
    storage::io::create_dir_all(fs, dest).map_err(seam_err(dest))?;
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut count = 0u32;
    loop {
        match read_array::<1>(&mut input, "a file record")?[0] {
            KIND_FILE => {}
            KIND_END => {
                let expected = u32::from_le_bytes(read_array(&mut input, "the file count")?);
                if expected != count {
                    return Err(ArchiveError::Corrupt(format!(
                        "{count} files read, the archive says {expected}"
                    )));
                }
                break;
            }
            other => return Err(ArchiveError::Corrupt(format!("unknown record kind {other}"))),
        }
        let name_len = u16::from_le_bytes(read_array(&mut input, "a file name length")?);
        if name_len == 0 || name_len > NAME_BYTES_MAX {
            return Err(ArchiveError::Corrupt(format!("file name length {name_len}")));
        }
        let mut name = vec![0u8; usize::from(name_len)];
        input
            .read_exact(&mut name)
            .map_err(|_| ArchiveError::Corrupt("archive ends within a file name".into()))?;
        let name = String::from_utf8(name).map_err(|_| ArchiveError::Corrupt("file name is not UTF-8".into()))?;
        if name.contains('/') || name == "." || name == ".." {
            return Err(ArchiveError::Corrupt(format!(
                "file name {name:?} escapes the directory"
            )));
        }
        let size = u64::from_le_bytes(read_array(&mut input, "a file size")?);
        let path = dest.join(&name);
        let mut output = AppendFile::create_new(fs, &path).map_err(seam_err(&path))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(name.as_bytes());
        let mut left = size;
        while left > 0 {
            let chunk = usize::try_from(left).map_or(buffer.len(), |l| l.min(buffer.len()));
            input
                .read_exact(&mut buffer[..chunk])
                .map_err(|_| ArchiveError::Corrupt(format!("archive ends within file {name}")))?;
            crc.update(&buffer[..chunk]);
            output.append(&buffer[..chunk]).map_err(seam_err(&path))?;
            left -= chunk as u64;
        }
        if crc.finalize() != u32::from_le_bytes(read_array(&mut input, "a file checksum")?) {
            return Err(ArchiveError::Corrupt(format!("checksum mismatch in file {name}")));
        }
        // Each file is durable before the directory is switched to.
        output.sync().map_err(seam_err(&path))?;
        count += 1;
    }
    // The seam's one sync_dir: the files' names are durable before the
    // directory is switched to.
    storage::io::sync_dir(fs, dest).map_err(seam_err(dest))?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use storage::io::RealFs;

    use super::*;

    fn sample_meta() -> pb::SnapshotMeta {
        pb::SnapshotMeta {
            snapshot_id: "3-1-42".into(),
            ..Default::default()
        }
    }

    #[test]
    fn packed_len_is_the_size_pack_writes() {
        // A backup announces its size before streaming it: the figure must be exact.
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a.sst"), vec![7u8; 1000]).expect("write");
        fs::write(dir.path().join("MANIFEST"), b"m").expect("write");
        let opened = OpenedDir::open(&RealFs, dir.path()).expect("open");
        let expected = packed_len(&opened, &sample_meta());
        let mut out = Vec::new();
        let written = pack_opened(opened, &sample_meta(), &mut out).expect("pack");
        assert_eq!((written, out.len() as u64), (expected, expected));
    }

    #[test]
    fn a_directory_round_trips_through_an_archive() {
        // What a follower installs must be exactly what the leader checkpointed.
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source");
        fs::create_dir(&source).expect("mkdir");
        fs::write(source.join("000001.sst"), vec![7u8; 600_000]).expect("write");
        fs::write(source.join("CURRENT"), b"MANIFEST-000002\n").expect("write");
        let archive = dir.path().join("snap");
        pack(&RealFs, &source, &sample_meta(), &archive).expect("pack");
        let dest = dir.path().join("dest");
        let meta = unpack(fs::File::open(&archive).expect("open"), &RealFs, &dest).expect("unpack");
        assert_eq!(meta, sample_meta());
        assert_eq!(fs::read(dest.join("000001.sst")).expect("read"), vec![7u8; 600_000]);
        assert_eq!(fs::read(dest.join("CURRENT")).expect("read"), b"MANIFEST-000002\n");
    }

    #[test]
    fn random_damage_to_an_archive_is_refused_never_installed_or_panicked_on() {
        // A byte flipped, cut or inserted anywhere must either fail the unpack
        // or, if it hit nothing that matters, unpack exactly the original.
        let seed = std::env::var("ARCHIVE_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        println!("ARCHIVE_FUZZ_SEED={seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source");
        fs::create_dir(&source).expect("mkdir");
        fs::write(
            source.join("000001.sst"),
            (0..3000u32).map(|i| i as u8).collect::<Vec<_>>(),
        )
        .expect("write");
        fs::write(source.join("CURRENT"), b"MANIFEST-000002\n").expect("write");
        let mut original = Vec::new();
        pack_to(&RealFs, &source, &sample_meta(), &mut original).expect("pack");
        for round in 0..500 {
            let mut damaged = original.clone();
            match rng.u8(0..3) {
                0 => {
                    let at = rng.usize(..damaged.len());
                    damaged[at] ^= 1 << rng.u8(0..8);
                }
                1 => damaged.truncate(rng.usize(..damaged.len())),
                _ => {
                    let at = rng.usize(..=damaged.len());
                    damaged.insert(at, rng.u8(..));
                }
            }
            let dest = dir.path().join(format!("dest-{round}"));
            if let Ok(meta) = unpack(damaged.as_slice(), &RealFs, &dest) {
                assert_eq!(
                    meta,
                    sample_meta(),
                    "seed {seed} round {round}: wrong metadata accepted"
                );
                for name in ["000001.sst", "CURRENT"] {
                    assert_eq!(
                        fs::read(dest.join(name)).ok(),
                        fs::read(source.join(name)).ok(),
                        "seed {seed} round {round}: {name} damaged yet accepted"
                    );
                }
            }
            let _ = fs::remove_dir_all(&dest);
        }
    }

    #[test]
    fn damaged_or_truncated_archives_are_refused() {
        // A snapshot damaged in transit must never be installed.
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source");
        fs::create_dir(&source).expect("mkdir");
        fs::write(source.join("a"), vec![1u8; 10_000]).expect("write");
        let archive = dir.path().join("snap");
        pack(&RealFs, &source, &sample_meta(), &archive).expect("pack");
        let bytes = fs::read(&archive).expect("read");
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 1;
        assert!(unpack(flipped.as_slice(), &RealFs, &dir.path().join("d1")).is_err());
        assert!(unpack(&bytes[..bytes.len() - 3], &RealFs, &dir.path().join("d2")).is_err());
        assert!(unpack(&b"not an archive at all"[..], &RealFs, &dir.path().join("d3")).is_err());
    }
}
