//! A simulated disk behind the engine's [`FileSystem`] seam, in memory and
//! deterministic from a seed, for crash tests (enabled by the `sim` feature).
//!
//! It keeps apart what is *written* and what is *durable*:
//!
//! - every file has its current bytes (what reads see) and its durable bytes
//!   (what the last successful `sync_data`/`sync_all` saw);
//! - every directory has its current entries and its durable entries (as of
//!   its last `sync_dir`), plus the list of entry changes made since.
//!
//! [`SimFs::crash`] cuts the power: this disk freezes (every later call on it
//! or on a file opened from it fails with `EIO`, so the engine that was
//! running on it can do no more harm) and a new disk is returned holding
//! what survived. With [`CrashMode::DropUnsynced`] that is exactly the
//! durable state. With [`CrashMode::Torn`] each file also keeps a random
//! subset of its unsynced 512-byte sectors, in any order, and a random
//! length (old, new or in between), and each directory keeps a random prefix of its
//! unsynced entry changes, as a journaling filesystem may.
//!
//! Directories are kept by path, which makes two directory operations
//! coarser than on a real disk: a directory moved by a rename that a crash
//! drops comes back under its old name only if it stayed in the same
//! parent (otherwise it is lost with its contents), and a tree removed
//! with `remove_dir_all` never comes back, even if its parent was not
//! synced (a real disk may bring back its name and some of its entries).
//!
//! Faults: [`SimFs::freeze_at_step`] cuts the power at the n-th mutating call
//! (create, append, sync, rename, remove, link, mkdir), counted by
//! [`SimFs::steps`]; [`SimFs::fail_at_step`] makes one call fail with `EIO`,
//! `ENOSPC`, or an fsync failure that also drops the unsynced data it
//! covered (as Linux does with pages whose writeback failed). And, as the
//! negative control of crash tests, [`SimFs::lie_about_syncs`] makes chosen
//! syncs report success while doing nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::io::{File, FileLock, FileSystem};

mod damage;
#[cfg(test)]
mod tests;

pub use damage::{damage_random_file, damaged_copy};

/// The granularity at which a crash tears unsynced writes.
pub const SECTOR_BYTES: usize = 512;
/// `EIO` on Linux.
const EIO: i32 = 5;
/// `ENOSPC` on Linux.
const ENOSPC: i32 = 28;

/// A fault injected into one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with `EIO` and has no effect.
    Eio,
    /// The call fails with `ENOSPC` and has no effect.
    NoSpace,
    /// If the call is a sync, it fails with `EIO` and the unsynced changes it
    /// covered are lost (the file or directory reverts to its durable
    /// state); any other call just fails with `EIO`.
    SyncLosesData,
}

/// What a crash keeps beyond the durable state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Nothing: every unsynced write and entry change is lost.
    DropUnsynced,
    /// A random subset of unsynced sectors per file (and a length between the
    /// old and the new one), a random prefix of unsynced entry changes per
    /// directory.
    Torn,
}

/// Syncs the disk pretends to perform (a negative control: crash tests
/// must fail when one of the engine's syncs does nothing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LyingSyncs {
    /// Every sync is honest.
    #[default]
    None,
    /// `sync_data`/`sync_all` of files whose name contains this string.
    FilesContaining(String),
    /// Every `sync_dir`.
    Directories,
}

/// An in-memory disk with crashes and faults. Cheap to share: `Arc<SimFs>`
/// is what [`crate::Options::fs`] takes.
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("SimFs")
            .field("steps", &state.steps)
            .field("frozen", &state.frozen)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

/// One change to a directory's entries, kept until the directory is synced.
#[derive(Debug, Clone)]
enum DirOp {
    Insert(String, Entry),
    Remove(String),
    /// Atomic, as `rename(2)` is: a crash keeps both halves or neither.
    Rename {
        from: String,
        to: String,
        /// Whether the entry renamed is a directory (whose contents move
        /// back to the old name if a crash drops the rename).
        is_dir: bool,
    },
}

#[derive(Debug, Default, Clone)]
struct Dir {
    entries: BTreeMap<String, Entry>,
    durable: BTreeMap<String, Entry>,
    pending: Vec<DirOp>,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

struct State {
    rng: Rng,
    dirs: BTreeMap<PathBuf, Dir>,
    inodes: HashMap<u64, Inode>,
    next_inode: u64,
    locks: HashSet<PathBuf>,
    steps: u64,
    freeze_at: Option<u64>,
    frozen: bool,
    faults: BTreeMap<u64, Fault>,
    lying: LyingSyncs,
}

/// Whether a call changes the disk (and so counts as a step).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

impl SimFs {
    /// An empty disk whose crashes are drawn from `seed`.
    pub fn new(seed: u64) -> Arc<SimFs> {
        Arc::new(SimFs::from_state(Rng(seed), BTreeMap::new(), HashMap::new(), 1))
    }

    /// A powered-on disk holding `dirs` and `inodes`, with no faults planned.
    fn from_state(rng: Rng, dirs: BTreeMap<PathBuf, Dir>, inodes: HashMap<u64, Inode>, next_inode: u64) -> SimFs {
        SimFs {
            state: Arc::new(Mutex::new(State {
                rng,
                dirs,
                inodes,
                next_inode,
                locks: HashSet::new(),
                steps: 0,
                freeze_at: None,
                frozen: false,
                faults: BTreeMap::new(),
                lying: LyingSyncs::None,
            })),
        }
    }

    /// Mutating calls made so far (the step a fault or freeze refers to).
    pub fn steps(&self) -> u64 {
        self.state.lock().steps
    }

    /// Cuts the power at mutating call number `step` (1-based): that call
    /// and every later one fail with `EIO` and change nothing.
    pub fn freeze_at_step(&self, step: u64) {
        self.state.lock().freeze_at = Some(step);
    }

    /// Cuts the power now: every later call fails with `EIO`.
    pub fn freeze(&self) {
        self.state.lock().frozen = true;
    }

    /// Whether the power is cut.
    pub fn is_frozen(&self) -> bool {
        self.state.lock().frozen
    }

    /// Makes mutating call number `step` fail with `fault`.
    pub fn fail_at_step(&self, step: u64, fault: Fault) {
        self.state.lock().faults.insert(step, fault);
    }

    /// Makes the chosen syncs succeed without making anything durable.
    pub fn lie_about_syncs(&self, lying: LyingSyncs) {
        self.state.lock().lying = lying;
    }

    /// Cuts the power (this disk stays frozen) and returns the disk as it
    /// comes back: the durable state, plus under [`CrashMode::Torn`] a random
    /// part of what was not yet durable. Faults and lies are not carried
    /// over; the new disk's randomness is drawn from this one's.
    pub fn crash(&self, mode: CrashMode) -> Arc<SimFs> {
        let mut old = self.state.lock();
        old.frozen = true;
        let mut rng = Rng(old.rng.next());
        let mut dirs: BTreeMap<PathBuf, Dir> = BTreeMap::new();
        let mut moves_back = Vec::new();
        for (path, dir) in &old.dirs {
            let mut entries = dir.durable.clone();
            let keep = match mode {
                CrashMode::DropUnsynced => 0,
                CrashMode::Torn => rng.below(dir.pending.len() as u64 + 1) as usize,
            };
            for op in &dir.pending[..keep] {
                apply(&mut entries, op);
            }
            // A dropped rename of a directory within `path` moves its
            // contents back under the old name, latest rename first.
            for op in dir.pending[keep..].iter().rev() {
                if let DirOp::Rename { from, to, is_dir: true } = op {
                    moves_back.push((path.join(to), path.join(from)));
                }
            }
            dirs.insert(
                path.clone(),
                Dir {
                    durable: entries.clone(),
                    entries,
                    pending: Vec::new(),
                },
            );
        }
        for (to, from) in moves_back {
            move_tree(&mut dirs, &to, &from);
        }
        // An entry naming a directory whose contents are gone (a removed
        // tree, a directory moved to another parent) is dropped with it.
        let known: HashSet<PathBuf> = dirs.keys().cloned().collect();
        for (path, dir) in &mut dirs {
            dir.entries
                .retain(|name, entry| *entry != Entry::Dir || known.contains(&path.join(name)));
            dir.durable = dir.entries.clone();
        }
        // A directory survives only if its entry in its parent did.
        let all: Vec<PathBuf> = dirs.keys().cloned().collect();
        for path in all {
            if !dir_survives(&dirs, &path) {
                dirs.remove(&path);
            }
        }
        let mut inodes = HashMap::new();
        for dir in dirs.values() {
            for entry in dir.entries.values() {
                if let Entry::File(ino) = *entry {
                    if inodes.contains_key(&ino) {
                        continue;
                    }
                    let Some(old_inode) = old.inodes.get(&ino) else {
                        continue;
                    };
                    let data = match mode {
                        CrashMode::DropUnsynced => old_inode.durable.clone(),
                        CrashMode::Torn => tear(&mut rng, &old_inode.durable, &old_inode.data),
                    };
                    inodes.insert(
                        ino,
                        Inode {
                            durable: data.clone(),
                            data,
                        },
                    );
                }
            }
        }
        Arc::new(SimFs::from_state(rng, dirs, inodes, old.next_inode))
    }

    /// The current bytes of `path` (what a read would see), if it is a file.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.lock();
        let ino = state.file_at(path).ok()?;
        state.inodes.get(&ino).map(|inode| inode.data.clone())
    }

    /// Replaces the bytes of the existing file `path`, durably, as a disk
    /// corruption would (for tests of the engine's checks).
    pub fn corrupt(&self, path: &Path, contents: &[u8]) -> std::io::Result<()> {
        let mut state = self.state.lock();
        let ino = state.file_at(path)?;
        let inode = state.inode(ino)?;
        inode.data = contents.to_vec();
        inode.durable = contents.to_vec();
        Ok(())
    }
}

fn apply(entries: &mut BTreeMap<String, Entry>, op: &DirOp) {
    match op {
        DirOp::Insert(name, entry) => {
            entries.insert(name.clone(), *entry);
        }
        DirOp::Remove(name) => {
            entries.remove(name);
        }
        DirOp::Rename { from, to, .. } => {
            if let Some(entry) = entries.remove(from) {
                entries.insert(to.clone(), entry);
            }
        }
    }
}

/// Moves the records of the directory `from` and of every directory under
/// it to the same places under `to`.
fn move_tree(dirs: &mut BTreeMap<PathBuf, Dir>, from: &Path, to: &Path) {
    let moved: Vec<PathBuf> = dirs.keys().filter(|p| p.starts_with(from)).cloned().collect();
    for path in moved {
        if let (Some(dir), Ok(rest)) = (dirs.remove(&path), path.strip_prefix(from)) {
            dirs.insert(to.join(rest), dir);
        }
    }
}

fn dir_survives(dirs: &BTreeMap<PathBuf, Dir>, path: &Path) -> bool {
    let Some((parent, name)) = split(path) else {
        return true; // a root
    };
    match dirs.get(parent) {
        Some(dir) => dir.entries.get(name) == Some(&Entry::Dir) && dir_survives(dirs, parent),
        None => false,
    }
}

/// What a torn crash leaves of a file: a length (the old one, the new one,
/// or one in between, as if only some appends' size updates landed), and
/// per sector the new bytes or the old ones (zeros where the old file was
/// shorter).
fn tear(rng: &mut Rng, durable: &[u8], data: &[u8]) -> Vec<u8> {
    if durable == data {
        return durable.to_vec();
    }
    let (short, long) = (durable.len().min(data.len()), durable.len().max(data.len()));
    let len = match rng.below(3) {
        0 => durable.len(),
        1 => data.len(),
        _ => short + rng.below((long - short) as u64 + 1) as usize,
    };
    let mut out = vec![0u8; len];
    for start in (0..len).step_by(SECTOR_BYTES) {
        let end = (start + SECTOR_BYTES).min(len);
        let source = if rng.below(2) == 0 { durable } else { data };
        for (i, byte) in out[start..end].iter_mut().enumerate() {
            *byte = source.get(start + i).copied().unwrap_or(0);
        }
    }
    out
}

/// Splits `path` into its parent directory and its name; `None` for a root.
fn split(path: &Path) -> Option<(&Path, &str)> {
    let parent = path.parent()?;
    let name = path.file_name()?.to_str()?;
    Some((parent, name))
}

fn os_error(code: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code)
}

fn not_found(path: &Path) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} not found", path.display()))
}

impl State {
    /// Accounts for one call: fails if the power is cut (or this call cuts
    /// it) or a fault is planned for it.
    fn step(&mut self, kind: Kind) -> std::io::Result<Option<Fault>> {
        if self.frozen {
            return Err(os_error(EIO));
        }
        if kind == Kind::Read {
            return Ok(None);
        }
        self.steps += 1;
        if self.freeze_at.is_some_and(|at| self.steps >= at) {
            self.frozen = true;
            return Err(os_error(EIO));
        }
        Ok(self.faults.remove(&self.steps))
    }

    /// Like [`step`](Self::step) for calls other than syncs: any fault fails
    /// the call with no effect.
    fn step_plain(&mut self, kind: Kind) -> std::io::Result<()> {
        match self.step(kind)? {
            None => Ok(()),
            Some(Fault::NoSpace) => Err(os_error(ENOSPC)),
            Some(Fault::Eio | Fault::SyncLosesData) => Err(os_error(EIO)),
        }
    }

    fn is_root(path: &Path) -> bool {
        split(path).is_none()
    }

    fn dir(&mut self, path: &Path) -> std::io::Result<&mut Dir> {
        if Self::is_root(path) {
            return Ok(self.dirs.entry(path.to_path_buf()).or_default());
        }
        self.dirs.get_mut(path).ok_or_else(|| not_found(path))
    }

    fn lookup(&self, path: &Path) -> Option<Entry> {
        if Self::is_root(path) {
            return Some(Entry::Dir);
        }
        let (parent, name) = split(path)?;
        self.dirs.get(parent)?.entries.get(name).copied()
    }

    fn file_at(&self, path: &Path) -> std::io::Result<u64> {
        match self.lookup(path) {
            Some(Entry::File(ino)) => Ok(ino),
            Some(Entry::Dir) => Err(std::io::Error::other(format!("{} is a directory", path.display()))),
            None => Err(not_found(path)),
        }
    }

    fn inode(&mut self, ino: u64) -> std::io::Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or_else(|| os_error(EIO))
    }

    /// Adds the entry `path` -> `entry`, failing if the name is taken.
    fn insert(&mut self, path: &Path, entry: Entry) -> std::io::Result<()> {
        let (parent, name) = split(path).ok_or_else(|| std::io::Error::other("cannot create a root"))?;
        let dir = self.dir(parent)?;
        if dir.entries.contains_key(name) {
            return Err(std::io::ErrorKind::AlreadyExists.into());
        }
        dir.entries.insert(name.to_string(), entry);
        dir.pending.push(DirOp::Insert(name.to_string(), entry));
        Ok(())
    }

    fn lies_about(&self, path: &Path, is_dir: bool) -> bool {
        match &self.lying {
            LyingSyncs::None => false,
            LyingSyncs::Directories => is_dir,
            LyingSyncs::FilesContaining(part) => {
                !is_dir
                    && path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.contains(part.as_str()))
            }
        }
    }
}

struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    path: PathBuf,
    writable: bool,
}

impl std::fmt::Debug for SimFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SimFile {
    fn sync(&self) -> std::io::Result<()> {
        let mut state = self.state.lock();
        let fault = state.step(Kind::Write)?;
        let lying = state.lies_about(&self.path, false);
        let inode = state.inode(self.ino)?;
        match fault {
            None if lying => Ok(()),
            None => {
                inode.durable.clone_from(&inode.data);
                Ok(())
            }
            Some(Fault::SyncLosesData) => {
                inode.data.clone_from(&inode.durable);
                Err(os_error(EIO))
            }
            Some(Fault::NoSpace) => Err(os_error(ENOSPC)),
            Some(Fault::Eio) => Err(os_error(EIO)),
        }
    }

    fn writable(&self) -> std::io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "{} is open read-only",
                self.path.display()
            )))
        }
    }
}

impl File for SimFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Read)?;
        let data = &state.inode(self.ino)?.data;
        let start = usize::try_from(offset).map_err(|_| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        let end = start.checked_add(buf.len()).filter(|&end| end <= data.len());
        let Some(end) = end else {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        };
        buf.copy_from_slice(&data[start..end]);
        Ok(())
    }

    fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.writable()?;
        let mut state = self.state.lock();
        state.step_plain(Kind::Write)?;
        state.inode(self.ino)?.data.extend_from_slice(bytes);
        Ok(())
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.writable()?;
        let mut state = self.state.lock();
        state.step_plain(Kind::Write)?;
        let start = usize::try_from(offset).map_err(|_| os_error(ENOSPC))?;
        let end = start.checked_add(bytes.len()).ok_or_else(|| os_error(ENOSPC))?;
        let data = &mut state.inode(self.ino)?.data;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len_bytes: u64) -> std::io::Result<()> {
        self.writable()?;
        let mut state = self.state.lock();
        state.step_plain(Kind::Write)?;
        let len = usize::try_from(len_bytes).map_err(|_| os_error(ENOSPC))?;
        state.inode(self.ino)?.data.resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> std::io::Result<()> {
        self.sync()
    }

    fn len_bytes(&self) -> std::io::Result<u64> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Read)?;
        Ok(state.inode(self.ino)?.data.len() as u64)
    }
}

impl SimFs {
    fn file(&self, ino: u64, path: &Path, writable: bool) -> Box<dyn File> {
        Box::new(SimFile {
            state: Arc::clone(&self.state),
            ino,
            path: path.to_path_buf(),
            writable,
        })
    }
}

impl FileSystem for SimFs {
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn File>> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Write)?;
        let ino = state.next_inode;
        state.insert(path, Entry::File(ino))?;
        state.next_inode += 1;
        state.inodes.insert(ino, Inode::default());
        Ok(self.file(ino, path, true))
    }

    fn open(&self, path: &Path) -> std::io::Result<Box<dyn File>> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Read)?;
        let ino = state.file_at(path)?;
        Ok(self.file(ino, path, false))
    }

    fn open_writable(&self, path: &Path) -> std::io::Result<Box<dyn File>> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Read)?;
        let ino = state.file_at(path)?;
        Ok(self.file(ino, path, true))
    }

    fn exists(&self, path: &Path) -> std::io::Result<bool> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Read)?;
        Ok(state.lookup(path).is_some())
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Write)?;
        let entry = state.lookup(from).ok_or_else(|| not_found(from))?;
        let (from_dir, from_name) = split(from).ok_or_else(|| not_found(from))?;
        let (to_dir, to_name) = split(to).ok_or_else(|| not_found(to))?;
        let is_dir = entry == Entry::Dir;
        match state.lookup(to) {
            Some(Entry::Dir) => {
                return Err(std::io::Error::other(format!("{} is a directory", to.display())));
            }
            Some(Entry::File(_)) if is_dir => {
                return Err(std::io::Error::other(format!("{} is a file", to.display())));
            }
            _ => {}
        }
        if is_dir && to.starts_with(from) {
            return Err(std::io::Error::other(format!(
                "cannot move {} into itself",
                from.display()
            )));
        }
        state.dir(to_dir)?;
        if from_dir == to_dir {
            let dir = state.dir(from_dir)?;
            let op = DirOp::Rename {
                from: from_name.to_string(),
                to: to_name.to_string(),
                is_dir,
            };
            apply(&mut dir.entries, &op);
            dir.pending.push(op);
        } else {
            let dir = state.dir(from_dir)?;
            dir.entries.remove(from_name);
            dir.pending.push(DirOp::Remove(from_name.to_string()));
            let dir = state.dir(to_dir)?;
            dir.entries.insert(to_name.to_string(), entry);
            dir.pending.push(DirOp::Insert(to_name.to_string(), entry));
        }
        if is_dir {
            move_tree(&mut state.dirs, from, to);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Write)?;
        state.file_at(path)?;
        let (parent, name) = split(path).ok_or_else(|| not_found(path))?;
        let dir = state.dir(parent)?;
        dir.entries.remove(name);
        dir.pending.push(DirOp::Remove(name.to_string()));
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Write)?;
        match state.lookup(dir) {
            Some(Entry::Dir) => {}
            Some(Entry::File(_)) => {
                return Err(std::io::Error::other(format!("{} is a file", dir.display())));
            }
            None => return Err(not_found(dir)),
        }
        let (parent, name) = split(dir).ok_or_else(|| std::io::Error::other("cannot remove a root"))?;
        let parent = state.dir(parent)?;
        parent.entries.remove(name);
        parent.pending.push(DirOp::Remove(name.to_string()));
        state.dirs.retain(|path, _| !path.starts_with(dir));
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> std::io::Result<bool> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Read)?;
        Ok(state.lookup(path) == Some(Entry::Dir))
    }

    fn hard_link(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Write)?;
        let ino = state.file_at(from)?;
        state.insert(to, Entry::File(ino))
    }

    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Write)?;
        let mut missing = Vec::new();
        let mut at = Some(dir);
        while let Some(path) = at {
            match state.lookup(path) {
                Some(Entry::Dir) => break,
                Some(Entry::File(_)) => {
                    return Err(std::io::Error::other(format!("{} is a file", path.display())));
                }
                None => missing.push(path),
            }
            at = path.parent();
        }
        for path in missing.into_iter().rev() {
            state.insert(path, Entry::Dir)?;
            state.dirs.insert(path.to_path_buf(), Dir::default());
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Read)?;
        Ok(state.dir(dir)?.entries.keys().cloned().collect())
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        let mut state = self.state.lock();
        let fault = state.step(Kind::Write)?;
        let lying = state.lies_about(dir, true);
        let entries = state.dir(dir)?;
        match fault {
            None if lying => Ok(()),
            None => {
                entries.durable = entries.entries.clone();
                entries.pending.clear();
                Ok(())
            }
            Some(Fault::SyncLosesData) => {
                entries.entries = entries.durable.clone();
                entries.pending.clear();
                Err(os_error(EIO))
            }
            Some(Fault::NoSpace) => Err(os_error(ENOSPC)),
            Some(Fault::Eio) => Err(os_error(EIO)),
        }
    }

    fn lock(&self, path: &Path) -> std::io::Result<FileLock> {
        let mut state = self.state.lock();
        state.step_plain(Kind::Write)?;
        if state.lookup(path).is_none() {
            let ino = state.next_inode;
            state.insert(path, Entry::File(ino))?;
            state.next_inode += 1;
            state.inodes.insert(ino, Inode::default());
        }
        if !state.locks.insert(path.to_path_buf()) {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(SimLock {
            state: Arc::clone(&self.state),
            path: path.to_path_buf(),
        }))
    }
}

/// Releases a lock of a [`SimFs`] when dropped.
struct SimLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.state.lock().locks.remove(&self.path);
    }
}

/// SplitMix64: small, fast, and the same sequence everywhere for a seed
/// (also the fuzzing module's mutations).
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
