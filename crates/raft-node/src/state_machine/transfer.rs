//! [`SnapshotData`]: a snapshot as the byte stream openraft moves around,
//! made on the fly from a checkpoint directory when sent and unpacked on the
//! fly into a directory when received. No archive file is ever written: the
//! bytes on the wire are the archive format of [`super::archive`], produced
//! and consumed by a blocking thread on each side.

use std::io::{self, Read, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use proto::raft as pb;
use storage::io::FileSystem;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;

use super::archive::{self, ArchiveError, OpenedDir};
use super::snapshot::Receiving;

/// Chunks buffered between the async side and the blocking thread, each of
/// at most [`CHUNK_BYTES`]: bounds a transfer's memory per side.
const CHUNKS_IN_FLIGHT_MAX: usize = 4;
/// Bytes per chunk handed between the two sides.
const CHUNK_BYTES: usize = 256 << 10;

/// A snapshot being sent (read from) or received (written to).
pub struct SnapshotData {
    mode: Mode,
    /// For a reception: keeps its directory from being taken for garbage
    /// while this lives ([`super::snapshot::Layout::receive`]).
    _receiving: Option<Receiving>,
}

enum Mode {
    /// Reads the archive of a checkpoint directory, packed on demand.
    Outgoing {
        source: Option<Box<(OpenedDir, pb::SnapshotMeta)>>,
        chunks: Option<mpsc::Receiver<io::Result<Bytes>>>,
        current: Bytes,
    },
    /// Unpacks what is written into a directory.
    Incoming {
        sender: PollSender<Bytes>,
        unpacker: Option<JoinHandle<Result<pb::SnapshotMeta, ArchiveError>>>,
        dir: PathBuf,
    },
    /// Received whole: unpacked into `dir`, every checksum verified and
    /// synced, waiting to be installed.
    Received { dir: PathBuf, meta: pb::SnapshotMeta },
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mode {
            Mode::Outgoing { source, .. } => f
                .debug_struct("SnapshotData::Outgoing")
                .field("started", &source.is_none())
                .finish(),
            Mode::Incoming { dir, .. } => f.debug_struct("SnapshotData::Incoming").field("dir", dir).finish(),
            Mode::Received { dir, .. } => f.debug_struct("SnapshotData::Received").field("dir", dir).finish(),
        }
    }
}

impl SnapshotData {
    /// The archive of the files of `dir` (already open, so a snapshot
    /// directory removed while it is sent still streams whole) with `meta`,
    /// packed as it is read; packing starts at the first read.
    pub(crate) fn outgoing(dir: OpenedDir, meta: pb::SnapshotMeta) -> SnapshotData {
        SnapshotData {
            mode: Mode::Outgoing {
                source: Some(Box::new((dir, meta))),
                chunks: None,
                current: Bytes::new(),
            },
            _receiving: None,
        }
    }

    /// A sink whose bytes (an archive) are unpacked into the new directory
    /// `dir` on `fs`, every checksum verified, as they arrive.
    pub(crate) fn incoming(fs: Arc<dyn FileSystem>, dir: PathBuf) -> SnapshotData {
        let (sender, receiver) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT_MAX);
        let target = dir.clone();
        let unpacker = tokio::task::spawn_blocking(move || {
            archive::unpack(
                ChannelReader {
                    receiver,
                    current: Bytes::new(),
                },
                fs.as_ref(),
                &target,
            )
        });
        SnapshotData {
            mode: Mode::Incoming {
                sender: PollSender::new(sender),
                unpacker: Some(unpacker),
                dir,
            },
            _receiving: None,
        }
    }

    /// This snapshot, holding `receiving` for as long as it lives.
    pub(crate) fn holding(self, receiving: Receiving) -> SnapshotData {
        SnapshotData {
            _receiving: Some(receiving),
            ..self
        }
    }

    /// Whether this is a snapshot being received (written to), finished
    /// or not.
    pub(crate) fn is_incoming(&self) -> bool {
        matches!(self.mode, Mode::Incoming { .. } | Mode::Received { .. })
    }

    /// Ends the writing of a received snapshot: waits until everything
    /// written is unpacked and synced, and returns the directory it was
    /// unpacked into and the archive's metadata. An error means the bytes written are not one whole archive (a
    /// transfer cut short, damaged bytes) or could not be stored; nothing
    /// of it may be installed then. Called again, it answers as the first
    /// call did, without waiting.
    pub(crate) async fn finish_receiving(&mut self) -> Result<(&Path, &pb::SnapshotMeta), ArchiveError> {
        if let Mode::Incoming { sender, unpacker, dir } = &mut self.mode {
            // Closing the channel is the end of the archive for the unpacker.
            sender.close();
            let unpacker = unpacker
                .take()
                .ok_or_else(|| ArchiveError::Corrupt("an earlier reception of this snapshot failed".into()))?;
            let meta = unpacker.await.map_err(|e| ArchiveError::Io {
                path: dir.clone(),
                source: io::Error::other(e),
            })??;
            let dir = std::mem::take(dir);
            self.mode = Mode::Received { dir, meta };
        }
        match &self.mode {
            Mode::Received { dir, meta } => Ok((dir, meta)),
            Mode::Incoming { .. } | Mode::Outgoing { .. } => Err(ArchiveError::Corrupt(
                "a snapshot being sent was given to install".into(),
            )),
        }
    }

    /// [`SnapshotData::finish_receiving`], owned.
    #[cfg(test)]
    pub(crate) async fn finish_incoming(mut self) -> Result<(PathBuf, pb::SnapshotMeta), ArchiveError> {
        let (dir, meta) = self.finish_receiving().await?;
        Ok((dir.to_path_buf(), meta.clone()))
    }
}

/// The blocking side of a received snapshot: reads the chunks the async
/// side sends; the end of the channel is the end of the stream.
struct ChannelReader {
    receiver: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// The blocking side of a sent snapshot: chunks of the archive as it is
/// packed; a send fails once the reader is gone, which stops the packing.
struct ChannelWriter {
    sender: mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES)));
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the snapshot's reader is gone"))
    }
}

/// Starts packing `dir` into a channel on a blocking thread.
fn start_packing(dir: OpenedDir, meta: pb::SnapshotMeta) -> mpsc::Receiver<io::Result<Bytes>> {
    let (sender, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT_MAX);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            sender: sender.clone(),
            buffer: Vec::with_capacity(CHUNK_BYTES),
        };
        let packed = archive::pack_opened(dir, &meta, &mut writer).and_then(|_| {
            writer.flush().map_err(|source| ArchiveError::Io {
                path: PathBuf::from("<snapshot stream>"),
                source,
            })
        });
        if let Err(error) = packed {
            // The reader sees the failure instead of a short archive.
            let _ = sender.blocking_send(Err(io::Error::other(error.to_string())));
        }
    });
    receiver
}

impl AsyncRead for SnapshotData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let Mode::Outgoing {
            source,
            chunks,
            current,
        } = &mut self.get_mut().mode
        else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a snapshot being received cannot be read",
            )));
        };
        if let Some(source) = source.take() {
            let (dir, meta) = *source;
            *chunks = Some(start_packing(dir, meta));
        }
        while current.is_empty() {
            let Some(receiver) = chunks.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(receiver.poll_recv(cx)) {
                Some(Ok(chunk)) => *current = chunk,
                Some(Err(error)) => return Poll::Ready(Err(error)),
                None => {
                    *chunks = None; // the end of the archive
                    return Poll::Ready(Ok(()));
                }
            }
        }
        let n = buf.remaining().min(current.len());
        buf.put_slice(&current.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let sender = match &mut self.get_mut().mode {
            Mode::Incoming { sender, .. } => sender,
            Mode::Received { .. } => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a snapshot received whole cannot be written to",
                )))
            }
            Mode::Outgoing { .. } => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a snapshot being sent cannot be written",
                )))
            }
        };
        let broken = || {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the snapshot unpacker stopped (see its error)",
            )
        };
        if ready!(sender.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(broken()));
        }
        let n = bytes.len().min(CHUNK_BYTES);
        if sender.send_item(Bytes::copy_from_slice(&bytes[..n])).is_err() {
            return Poll::Ready(Err(broken()));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Durability comes with `finish_receiving`, which waits for the
        // unpacker's fsyncs; nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Only the trivial seeks: a stream cannot go back once it has started.
impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let at_start = match &self.mode {
            Mode::Outgoing { source, .. } => source.is_some(),
            Mode::Incoming { .. } | Mode::Received { .. } => false,
        };
        match position {
            SeekFrom::Start(0) if at_start => Ok(()),
            SeekFrom::Current(0) => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a snapshot stream cannot seek",
            )),
        }
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(0))
    }
}

#[cfg(test)]
mod tests {
    use storage::io::RealFs;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn meta() -> pb::SnapshotMeta {
        pb::SnapshotMeta {
            snapshot_id: "7-test".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_directory_streams_into_another_without_an_archive_file() {
        // Sender packs on the fly, receiver unpacks on the fly: the files
        // arrive whole and nothing else is written on either side.
        let source = tempfile::tempdir().expect("tempdir");
        std::fs::write(source.path().join("000001.sst"), vec![1u8; 700_000]).expect("write");
        std::fs::write(source.path().join("MANIFEST-000002"), b"manifest").expect("write");
        let target_root = tempfile::tempdir().expect("tempdir");
        let target = target_root.path().join("received");
        let mut outgoing = SnapshotData::outgoing(OpenedDir::open(&RealFs, source.path()).expect("open"), meta());
        let mut incoming = SnapshotData::incoming(RealFs::shared(), target.clone());
        let mut buffer = vec![0u8; 100_000];
        loop {
            let n = outgoing.read(&mut buffer).await.expect("read");
            if n == 0 {
                break;
            }
            incoming.write_all(&buffer[..n]).await.expect("write");
        }
        let (dir, received) = incoming.finish_incoming().await.expect("unpacked");
        assert_eq!(dir, target);
        assert_eq!(received, meta());
        assert_eq!(
            std::fs::read(target.join("000001.sst")).expect("read"),
            vec![1u8; 700_000]
        );
        assert_eq!(
            std::fs::read(target.join("MANIFEST-000002")).expect("read"),
            b"manifest"
        );
        assert_eq!(std::fs::read_dir(target_root.path()).expect("list").count(), 1);
    }

    #[tokio::test]
    async fn a_stream_cut_short_is_refused_at_install() {
        // A transfer that breaks off must never install a partial engine.
        let source = tempfile::tempdir().expect("tempdir");
        std::fs::write(source.path().join("000001.sst"), vec![3u8; 300_000]).expect("write");
        let target = tempfile::tempdir().expect("tempdir");
        let mut outgoing = SnapshotData::outgoing(OpenedDir::open(&RealFs, source.path()).expect("open"), meta());
        let mut incoming = SnapshotData::incoming(RealFs::shared(), target.path().join("received"));
        let mut buffer = vec![0u8; 100_000];
        let n = outgoing.read(&mut buffer).await.expect("read");
        incoming.write_all(&buffer[..n]).await.expect("write");
        drop(outgoing);
        let error = incoming.finish_incoming().await.expect_err("cut short");
        assert!(error.to_string().contains("ends within"), "{error}");
    }
}
