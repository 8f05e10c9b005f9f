//! The memtable's index: a skip list of internal keys and their values,
//! laid out in an arena.
//!
//! One writer inserts at a time (the group-commit leader, or recovery);
//! any number of readers search and walk the list at the same time without
//! locks, shared counters or reference counts. Each node — its links, key
//! and value — is one bump allocation in a chunk of the arena, so an insert
//! copies the entry once and allocates nothing most of the time, and a
//! reader compares keys where they lie. Nodes are never changed after they
//! are linked in (only their links to later nodes are), never moved and
//! never freed before the whole list is: the memtable is dropped as one.
//!
//! Publication: the writer fills in a node completely, then links it in
//! from the bottom level up with `Release` stores; readers follow links with
//! `Acquire` loads, so a reader that reaches a node sees it whole. A reader
//! that misses a node being linked in sees the list as it was just before
//! the insert, which is harmless: the memtable publishes a batch's sequence
//! numbers only after the whole batch is in.
//!
//! This is the one module of the engine with `unsafe` code; every block
//! states why it holds.
#![expect(
    unsafe_code,
    reason = "an arena of nodes read without locks while one writer links in new ones"
)]

use std::alloc::{self, Layout};
use std::cmp::Ordering as KeyOrdering;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::key::TRAILER_BYTES;

/// Levels of links: with a quarter of the nodes promoted at each level,
/// searches stay logarithmic up to 4^12 (about 16 million) entries, far
/// beyond what a memtable holds.
const HEIGHT_MAX: usize = 12;
/// One node in `1 / HEIGHT_BRANCHING` reaches the next level.
const HEIGHT_BRANCHING: u64 = 4;
/// Bytes of one arena chunk. Nodes larger than a quarter of this get a
/// chunk of their own, so a chunk never wastes more than a quarter.
const CHUNK_BYTES: usize = 1 << 20;
/// Every node starts at a multiple of this (its links are pointers).
const NODE_ALIGN: usize = std::mem::align_of::<AtomicPtr<u8>>();
/// The node header: key length, value length, height, padding (4 × u32).
const HEADER_BYTES: usize = 16;
const LINK_BYTES: usize = std::mem::size_of::<AtomicPtr<u8>>();

const _: () = assert!(HEADER_BYTES.is_multiple_of(NODE_ALIGN));
const _: () = assert!(CHUNK_BYTES.is_multiple_of(NODE_ALIGN));

/// A skip list of `(internal key, value)` pairs in [`crate::key::compare`]
/// order.
pub(crate) struct SkipList {
    /// The head's links, one per level; null ends a level.
    head: [AtomicPtr<u8>; HEIGHT_MAX],
    /// Levels in use; readers may see a stale (smaller or larger) value,
    /// which only costs them a step.
    height: AtomicUsize,
    /// Entries linked in.
    len: AtomicUsize,
    /// Bytes of nodes allocated, links and padding included.
    node_bytes: AtomicUsize,
    /// The arena and the height generator, touched only by the writer.
    writer: Mutex<Writer>,
}

// SAFETY: the raw pointers in `head` and in nodes point into chunks that
// `SkipList` owns and frees only on drop; nodes are immutable once linked
// in except for their atomic links; all mutation goes through the `writer`
// mutex. So sharing and sending the list between threads is sound.
unsafe impl Send for SkipList {}
// SAFETY: see `Send` above.
unsafe impl Sync for SkipList {}

struct Writer {
    /// Every chunk allocated, freed when the list drops.
    chunks: Vec<(NonNull<u8>, Layout)>,
    /// The next free byte of the current chunk and the bytes left after it.
    free: Option<NonNull<u8>>,
    free_bytes: usize,
    /// State of the xorshift generator that draws node heights.
    rng: u64,
}

/// Inserts into a list; one at a time exists (it holds the writer lock).
pub(crate) struct ListWriter<'a> {
    list: &'a SkipList,
    writer: MutexGuard<'a, Writer>,
}

impl ListWriter<'_> {
    /// Inserts the internal key `key` with `value`. Internal keys are
    /// unique (each write has its own sequence number); a duplicate would
    /// be placed before the equal key already there.
    pub(crate) fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.list.insert(&mut self.writer, key, value);
    }
}

/// A borrowed entry of the list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    /// The encoded internal key.
    pub key: &'a [u8],
    /// The value (empty for tombstones).
    pub value: &'a [u8],
}

impl SkipList {
    /// An empty list.
    pub(crate) fn new() -> Self {
        SkipList {
            head: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            height: AtomicUsize::new(1),
            len: AtomicUsize::new(0),
            node_bytes: AtomicUsize::new(0),
            writer: Mutex::new(Writer {
                chunks: Vec::new(),
                free: None,
                free_bytes: 0,
                rng: 0x9E37_79B9_7F4A_7C15,
            }),
        }
    }

    /// Entries in the list.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Bytes the nodes take, links, keys, values and padding included.
    pub(crate) fn node_bytes(&self) -> usize {
        self.node_bytes.load(Ordering::Relaxed)
    }

    /// The writer's handle: inserts through it hold the writer lock once
    /// for as many entries as it inserts.
    pub(crate) fn writer(&self) -> ListWriter<'_> {
        ListWriter {
            list: self,
            writer: self.writer.lock(),
        }
    }

    fn insert(&self, writer: &mut Writer, key: &[u8], value: &[u8]) {
        assert!(
            key.len() >= TRAILER_BYTES,
            "an internal key is shorter than its trailer"
        );
        let key_len = u32::try_from(key.len()).expect("key length is bounded by KEY_BYTES_MAX");
        let value_len = u32::try_from(value.len()).expect("value length is bounded by VALUE_BYTES_MAX");
        let target = SearchKey::of(key);

        // The last node before the new one on every level.
        let mut before: [Option<Node>; HEIGHT_MAX] = [None; HEIGHT_MAX];
        let list_height = self.height.load(Ordering::Relaxed);
        let mut node = None;
        for level in (0..list_height).rev() {
            node = self.walk_level(node, level, &target).0;
            before[level] = node;
        }

        let height = writer.random_height();
        if height > list_height {
            // Levels above the old height start at the head (`None`).
            self.height.store(height, Ordering::Relaxed);
        }
        let size = node_size(height, key.len() + value.len());
        let base = writer.allocate(size);
        // SAFETY: `base` points to `size` fresh, exclusively owned, aligned
        // bytes of a live chunk: room for the header, `height` links, the
        // key and the value. Nothing else can see them until linked in.
        let new = unsafe {
            let header = [key_len, value_len, height as u32, 0];
            ptr::copy_nonoverlapping(header.as_ptr().cast::<u8>(), base.as_ptr(), HEADER_BYTES);
            let links = base.as_ptr().add(HEADER_BYTES).cast::<AtomicPtr<u8>>();
            for (level, before) in before.iter().enumerate().take(height) {
                // The writer alone changes links, so a relaxed load reads the latest.
                let next = self.link(*before, level).load(Ordering::Relaxed);
                links.add(level).write(AtomicPtr::new(next));
            }
            let payload = base.as_ptr().add(HEADER_BYTES + height * LINK_BYTES);
            ptr::copy_nonoverlapping(key.as_ptr(), payload, key.len());
            ptr::copy_nonoverlapping(value.as_ptr(), payload.add(key.len()), value.len());
            Node(base)
        };
        // Bottom level first: a reader that finds the node on a level can
        // always descend from it.
        for (level, before) in before.iter().enumerate().take(height) {
            self.link(*before, level).store(new.0.as_ptr(), Ordering::Release);
        }
        self.node_bytes.fetch_add(size, Ordering::Relaxed);
        self.len.fetch_add(1, Ordering::Release);
    }

    /// The first entry whose internal key is `>= target` (an encoded
    /// internal key), if any.
    pub(crate) fn lower_bound(&self, target: &[u8]) -> Option<Node> {
        let target = SearchKey::of(target);
        let mut node = None;
        let mut found = None;
        for level in (0..self.height.load(Ordering::Relaxed)).rev() {
            (node, found) = self.walk_level(node, level, &target);
        }
        // The answer is the node the bottom-level walk compared and stopped
        // at, not a fresh load of the link after `node`: a node the writer
        // links in between (a key between `node` and the target, not yet
        // visible to this reader's snapshot) would otherwise be returned in
        // place of the real lower bound, and a reader would miss an entry
        // that was there all along. (The height is at least 1, so the
        // bottom level was walked.)
        found
    }

    /// The first entry of the list.
    pub(crate) fn first(&self) -> Option<Node> {
        self.next(None)
    }

    /// The entry after `node` (`None` is the head: the first entry).
    pub(crate) fn next(&self, node: Option<Node>) -> Option<Node> {
        NonNull::new(self.link(node, 0).load(Ordering::Acquire)).map(Node)
    }

    /// The entry at `node`, borrowed from the list.
    ///
    /// `node` must come from this list: nodes of another list would be
    /// read out of that list's memory, which need not be alive. Crate code
    /// only pairs a list with its own nodes (see `Cursor`).
    pub(crate) fn entry(&self, node: Node) -> Entry<'_> {
        // SAFETY: `node` is a node of this list (the caller's contract), so
        // it is fully written (published with Release, read with Acquire)
        // and lives as long as `self`.
        unsafe { node.entry() }
    }

    /// From `start` (`None`: the head), moves along `level` while the next
    /// node's key is before `target`; returns the last such node and the
    /// node after it that stopped the walk (`None`: the level's end), as
    /// loaded and compared here.
    fn walk_level(&self, start: Option<Node>, level: usize, target: &SearchKey<'_>) -> (Option<Node>, Option<Node>) {
        let mut node = start;
        loop {
            let Some(next) = NonNull::new(self.link(node, level).load(Ordering::Acquire)) else {
                return (node, None);
            };
            // SAFETY: `next` was published by the writer with Release and
            // loaded here with Acquire: a complete node of this list.
            let next_key = unsafe { Node(next).entry().key };
            if target.compare_to(next_key) != KeyOrdering::Greater {
                return (node, Some(Node(next)));
            }
            node = Some(Node(next));
        }
    }

    /// The link at `level` of `node` (`None`: the head).
    fn link(&self, node: Option<Node>, level: usize) -> &AtomicPtr<u8> {
        match node {
            None => &self.head[level],
            // SAFETY: `node` is a node of this list, alive as long as
            // `self`, and the walk only asks for levels below its height
            // (a node is reached on a level only through a link on it).
            Some(node) => unsafe { node.link(level) },
        }
    }
}

impl Drop for SkipList {
    fn drop(&mut self) {
        for (chunk, layout) in self.writer.get_mut().chunks.drain(..) {
            // SAFETY: each chunk was allocated with exactly this layout and
            // is freed once; `&mut self` means no reader is left.
            unsafe { alloc::dealloc(chunk.as_ptr(), layout) };
        }
    }
}

impl std::fmt::Debug for SkipList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkipList")
            .field("len", &self.len())
            .field("node_bytes", &self.node_bytes())
            .finish()
    }
}

impl Writer {
    /// A height in `1..=HEIGHT_MAX`, each level kept with probability
    /// `1 / HEIGHT_BRANCHING`.
    fn random_height(&mut self) -> usize {
        let mut height = 1;
        while height < HEIGHT_MAX && self.next_random().is_multiple_of(HEIGHT_BRANCHING) {
            height += 1;
        }
        height
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: fast, and plenty for balancing a skip list.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `size` bytes (a multiple of `NODE_ALIGN`) at a `NODE_ALIGN` boundary.
    fn allocate(&mut self, size: usize) -> NonNull<u8> {
        debug_assert!(size.is_multiple_of(NODE_ALIGN));
        if size > CHUNK_BYTES / 4 {
            return self.new_chunk(size);
        }
        if size > self.free_bytes {
            let chunk = self.new_chunk(CHUNK_BYTES);
            self.free = Some(chunk);
            self.free_bytes = CHUNK_BYTES;
        }
        let start = self.free.expect("a chunk with room was just ensured");
        // SAFETY: `size <= free_bytes`, so `start + size` stays within (or
        // one past the end of) the current chunk.
        let after = unsafe { NonNull::new_unchecked(start.as_ptr().add(size)) };
        self.free = Some(after);
        self.free_bytes -= size;
        start
    }

    fn new_chunk(&mut self, size: usize) -> NonNull<u8> {
        let layout = Layout::from_size_align(size, NODE_ALIGN).expect("chunk sizes are small multiples of 8");
        // SAFETY: `layout` has a non-zero size (every node has a header).
        let chunk = unsafe { alloc::alloc(layout) };
        let Some(chunk) = NonNull::new(chunk) else {
            alloc::handle_alloc_error(layout);
        };
        self.chunks.push((chunk, layout));
        chunk
    }
}

/// The bytes a node of `height` links and `payload_bytes` of key and value
/// takes, rounded up to the node alignment.
fn node_size(height: usize, payload_bytes: usize) -> usize {
    (HEADER_BYTES + height * LINK_BYTES + payload_bytes).next_multiple_of(NODE_ALIGN)
}

/// A node of a list: a pointer to its header in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Node(NonNull<u8>);

// SAFETY: a `Node` is only an address; reading through it is done by its
// list (`SkipList::entry`) or by a `Cursor` that keeps the list alive.
unsafe impl Send for Node {}
// SAFETY: see `Send` above.
unsafe impl Sync for Node {}

impl Node {
    /// # Safety
    /// The node must be a published node of a list that is alive for `'a`.
    unsafe fn entry<'a>(self) -> Entry<'a> {
        let base = self.0.as_ptr();
        // SAFETY: the header is 4 aligned u32s at the node's start, written
        // before the node was published (the caller's contract).
        let (key_len, value_len, height) = unsafe {
            let header = base.cast::<u32>();
            (
                header.read() as usize,
                header.add(1).read() as usize,
                header.add(2).read() as usize,
            )
        };
        // SAFETY: the key and value follow the links, inside the node's
        // allocation, and never change after publication.
        unsafe {
            let key = base.add(HEADER_BYTES + height * LINK_BYTES);
            Entry {
                key: std::slice::from_raw_parts(key, key_len),
                value: std::slice::from_raw_parts(key.add(key_len), value_len),
            }
        }
    }

    /// # Safety
    /// The node must be a published node of a list alive for `'a`, and
    /// `level` below its height.
    unsafe fn link<'a>(self, level: usize) -> &'a AtomicPtr<u8> {
        // SAFETY: the links are `height` aligned `AtomicPtr`s right after
        // the header, initialised before publication (the caller's contract).
        unsafe {
            &*self
                .0
                .as_ptr()
                .add(HEADER_BYTES + level * LINK_BYTES)
                .cast::<AtomicPtr<u8>>()
        }
    }
}

/// An internal key split for comparing against nodes: user key ascending,
/// then trailer (sequence and kind) descending.
struct SearchKey<'a> {
    user_key: &'a [u8],
    trailer: u64,
}

impl<'a> SearchKey<'a> {
    fn of(internal: &'a [u8]) -> Self {
        let (user_key, trailer) = split(internal);
        SearchKey { user_key, trailer }
    }

    /// How this key orders against the encoded internal key `other`.
    fn compare_to(&self, other: &[u8]) -> KeyOrdering {
        let (other_user_key, other_trailer) = split(other);
        self.user_key
            .cmp(other_user_key)
            .then_with(|| other_trailer.cmp(&self.trailer))
    }
}

fn split(internal: &[u8]) -> (&[u8], u64) {
    let (user_key, trailer) = internal.split_at(internal.len() - TRAILER_BYTES);
    let mut raw = [0u8; TRAILER_BYTES];
    raw.copy_from_slice(trailer);
    (user_key, u64::from_le_bytes(raw))
}

/// A position in a list that keeps the list alive: the memtable's cursor.
#[derive(Debug)]
pub(crate) struct Cursor {
    list: Arc<SkipList>,
    node: Option<Node>,
}

impl Cursor {
    /// A cursor over `list`, not yet positioned.
    pub(crate) fn new(list: Arc<SkipList>) -> Self {
        Cursor { list, node: None }
    }

    /// The current entry, if the cursor is on one.
    pub(crate) fn entry(&self) -> Option<Entry<'_>> {
        self.node.map(|node| self.list.entry(node))
    }

    /// Moves to the first entry.
    pub(crate) fn seek_to_first(&mut self) {
        self.node = self.list.first();
    }

    /// Moves to the first entry whose internal key is `>= target`.
    pub(crate) fn seek(&mut self, target: &[u8]) {
        self.node = self.list.lower_bound(target);
    }

    /// Moves to the next entry; a no-op when exhausted.
    pub(crate) fn next(&mut self) {
        if let Some(node) = self.node {
            self.node = self.list.next(Some(node));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::key::{self, InternalKey, ValueKind};

    fn ikey(user_key: &[u8], sequence: u64) -> Vec<u8> {
        key::internal_key(user_key, sequence, ValueKind::Put)
    }

    #[test]
    fn iteration_and_lower_bound_agree_with_a_sorted_set() {
        // The list must order entries exactly as `key::compare` and find lower bounds like a BTreeSet.
        let seed = std::env::var("SKIPLIST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        println!("seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let list = SkipList::new();
        let mut model = BTreeSet::new();
        let inserts: u64 = if cfg!(miri) { 300 } else { 5_000 };
        for sequence in 1..inserts {
            let user_key = format!("k{:04}", rng.u32(..800)).into_bytes();
            let key = ikey(&user_key, sequence);
            let value = vec![rng.u8(..); rng.usize(..40)];
            list.writer().insert(&key, &value);
            model.insert((InternalKey(key.into()), value));
        }
        assert_eq!(list.len(), model.len());
        let mut cursor = Cursor::new(Arc::new(list));
        cursor.seek_to_first();
        for (key, value) in &model {
            let entry = cursor.entry().expect("the list ends early");
            assert_eq!((entry.key, entry.value), (&key.0[..], value.as_slice()));
            cursor.next();
        }
        assert!(cursor.entry().is_none());
        for _ in 0..inserts / 2 {
            let target = ikey(format!("k{:04}", rng.u32(..820)).as_bytes(), rng.u64(..5_100));
            cursor.seek(&target);
            let expected = model.range((InternalKey(target.clone().into()), Vec::new())..).next();
            assert_eq!(cursor.entry().map(|e| e.key), expected.map(|(k, _)| &k.0[..]));
        }
    }

    #[test]
    fn entries_larger_than_a_chunk_get_their_own_and_small_ones_share() {
        // Big values must not corrupt neighbours, and memory accounting must count every node.
        let list = SkipList::new();
        let big = vec![7u8; CHUNK_BYTES + 3];
        let small = vec![1u8; 10];
        let k1 = ikey(b"a", 1);
        let k2 = ikey(b"b", 2);
        let k3 = ikey(b"c", 3);
        let mut writer = list.writer();
        writer.insert(&k1, &small);
        writer.insert(&k2, &big);
        writer.insert(&k3, &small);
        drop(writer);
        let mut cursor = Cursor::new(Arc::new(list));
        cursor.seek(&k2);
        assert_eq!(cursor.entry().map(|e| e.value.len()), Some(big.len()));
        assert!(cursor.entry().is_some_and(|e| e.value.iter().all(|&b| b == 7)));
        cursor.next();
        assert_eq!(cursor.entry().map(|e| e.value), Some(&small[..]));
        assert!(cursor.list.node_bytes() > big.len() + 2 * (small.len() + HEADER_BYTES));
    }

    #[test]
    fn readers_running_beside_the_writer_see_sorted_complete_entries() {
        // Lock-free readers must never see a torn node or an out-of-order walk while one thread inserts.
        let list = Arc::new(SkipList::new());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let list = Arc::clone(&list);
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    let mut walks = 0;
                    while !done.load(Ordering::Acquire) || walks < 3 {
                        let mut cursor = Cursor::new(Arc::clone(&list));
                        cursor.seek_to_first();
                        let mut previous: Option<Vec<u8>> = None;
                        while let Some(entry) = cursor.entry() {
                            // Each value is the key repeated: a torn node would not match.
                            assert_eq!(entry.value, entry.key, "a reader saw a partly written node");
                            if let Some(previous) = &previous {
                                assert!(key::compare(previous, entry.key).is_lt(), "walk out of order");
                            }
                            previous = Some(entry.key.to_vec());
                            cursor.next();
                        }
                        walks += 1;
                    }
                })
            })
            .collect();
        let inserts: u64 = if cfg!(miri) { 300 } else { 20_000 };
        for sequence in 1..inserts {
            let key = ikey(
                format!("{:08}", sequence.wrapping_mul(7919) % 20_011).as_bytes(),
                sequence,
            );
            list.writer().insert(&key, &key);
        }
        done.store(true, Ordering::Release);
        for reader in readers {
            reader.join().expect("a reader panicked");
        }
        assert_eq!(list.len() as u64, inserts - 1);
    }
}
