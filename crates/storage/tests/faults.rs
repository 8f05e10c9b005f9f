//! Faults that must fail cleanly, never hang or half-apply: a panic in the
//! write path, options that could never work.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use storage::io::{File, FileLock, FileSystem, RealFs};
use storage::{Db, Options, WriteBatch, WriteOptions};

/// The real filesystem, except that appends panic once `armed` is set:
/// stands in for a bug in the write leader.
#[derive(Debug, Default)]
struct PanickingFs {
    armed: Arc<AtomicBool>,
}

#[derive(Debug)]
struct PanickingFile {
    file: Box<dyn File>,
    armed: Arc<AtomicBool>,
}

impl FileSystem for PanickingFs {
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn File>> {
        let file = RealFs.create_new(path)?;
        Ok(Box::new(PanickingFile {
            file,
            armed: Arc::clone(&self.armed),
        }))
    }
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn File>> {
        RealFs.open(path)
    }
    fn open_writable(&self, path: &Path) -> std::io::Result<Box<dyn File>> {
        RealFs.open_writable(path)
    }
    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        RealFs.exists(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        RealFs.remove_file(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        RealFs.remove_dir_all(dir)
    }
    fn is_dir(&self, path: &Path) -> std::io::Result<bool> {
        RealFs.is_dir(path)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealFs.hard_link(from, to)
    }
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        RealFs.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        RealFs.list_dir(dir)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        RealFs.sync_dir(dir)
    }
    fn lock(&self, path: &Path) -> std::io::Result<FileLock> {
        RealFs.lock(path)
    }
}

impl File for PanickingFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_at(offset, buf)
    }
    fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        assert!(!self.armed.load(Ordering::SeqCst), "injected panic in append");
        self.file.append(bytes)
    }
    fn set_len(&self, len_bytes: u64) -> std::io::Result<()> {
        self.file.set_len(len_bytes)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
    fn sync_all(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }
    fn len_bytes(&self) -> std::io::Result<u64> {
        self.file.len_bytes()
    }
    fn write_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        assert!(!self.armed.load(Ordering::SeqCst), "injected panic in write_at");
        self.file.write_at(offset, bytes)
    }
}

#[test]
fn a_panic_in_the_write_leader_fails_every_writer_instead_of_hanging_them() {
    // Writers queued behind a leader that panicked used to wait forever.
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = PanickingFs::default();
    let armed = Arc::clone(&fs.armed);
    let db = Db::open(
        dir.path(),
        Options {
            fs: Arc::new(fs),
            ..Options::default()
        },
    )
    .expect("open");
    db.put(b"before", b"1").expect("a healthy write");
    armed.store(true, Ordering::SeqCst);
    let (done, finished) = std::sync::mpsc::channel();
    for writer in 0..8 {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            let mut batch = WriteBatch::new();
            batch.put(format!("k{writer}"), b"v");
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                db.write(batch, &WriteOptions::default())
            }));
            let _ = done.send(matches!(result, Ok(Err(_))));
        });
    }
    drop(done);
    for _ in 0..8 {
        let failed = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("every writer returns: none hangs behind the panicked leader");
        assert!(failed, "a writer got an error, not success or a panic");
    }
    armed.store(false, Ordering::SeqCst);
    assert!(
        db.put(b"after", b"2").is_err(),
        "the engine stays stopped after a failed write path, like after a failed WAL append"
    );
    assert_eq!(db.get(b"before").expect("reads still work").as_deref(), Some(&b"1"[..]));
}

#[test]
fn options_that_could_never_work_are_refused_at_open() {
    // A zero here used to pass validation and stall every write forever.
    let dir = tempfile::tempdir().expect("tempdir");
    let Err(refused) = Db::open(
        dir.path(),
        Options {
            immutable_memtables_max: 0,
            ..Options::default()
        },
    ) else {
        panic!("opened with immutable_memtables_max 0");
    };
    assert!(refused.to_string().contains("immutable_memtables_max"), "{refused}");
}

#[test]
fn options_past_their_upper_bounds_are_refused_at_open() {
    // A huge memtable allocated its key filter (a 64th of it) at open; the
    // other bounds keep a typo from building a tree that cannot work.
    let cases: Vec<(&str, Options)> = vec![
        (
            "memtable_bytes_max",
            Options {
                memtable_bytes_max: usize::MAX,
                ..Options::default()
            },
        ),
        (
            "immutable_memtables_max",
            Options {
                immutable_memtables_max: 1000,
                ..Options::default()
            },
        ),
        (
            "block_bytes_target",
            Options {
                block_bytes_target: 1 << 30,
                ..Options::default()
            },
        ),
        (
            "level_size_ratio",
            Options {
                level_size_ratio: u64::MAX,
                ..Options::default()
            },
        ),
        (
            "table_bytes_target",
            Options {
                table_bytes_target: 1 << 40,
                l1_bytes_target: 1 << 41,
                ..Options::default()
            },
        ),
    ];
    for (knob, options) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        match Db::open(dir.path(), options) {
            Ok(_) => panic!("opened with {knob} past its bound"),
            Err(refused) => assert!(refused.to_string().contains(knob), "{knob}: {refused}"),
        }
    }
}
