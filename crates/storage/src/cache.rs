//! The block cache: parsed, checksum-verified blocks shared by all tables,
//! bounded by bytes.
//!
//! It holds data blocks and also the tables' index blocks (format 3: index
//! partitions) and bloom filters (format 3: filter pages), so the memory
//! those take is charged to the same byte budget instead of being pinned
//! per table (see [`crate::Options`], "Memory").
//!
//! Keyed by `(file number, block offset)`; file numbers are never reused, so
//! a key never names two different blocks. Eviction is `quick_cache`'s
//! CLOCK-Pro-like policy, weighted by each block's size.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};

use crate::sstable::{Block, Filter};

/// Bytes charged per cached block beyond its contents: the `Block` handle,
/// the shared-bytes header and the cache's own slot.
const ENTRY_OVERHEAD_BYTES: u64 = 96;

/// Block size assumed when telling the cache how many entries to expect.
const BLOCK_BYTES_EXPECTED: usize = 4096;

/// The smallest shard worth splitting the cache into. A table's index block
/// and filter are single entries of up to about a megabyte (a 64 MiB table
/// of 116-byte entries has a ~700 KB filter), and a shard evicts only its
/// own entries: shards of a few MiB could hold only a handful of them and
/// would evict every data block to make room, or refuse them outright
/// (`quick_cache` admits nothing heavier than a shard's hot share). Shards
/// of at least this size hold dozens.
const SHARD_BYTES_MIN: usize = 32 << 20;

/// Shards the cache is split into at most (more only spreads lock traffic
/// thinner than the reader threads need).
const SHARDS_MAX: usize = 64;

/// How many shards a cache of `capacity_bytes` gets: as many as keep each
/// at least [`SHARD_BYTES_MIN`], at most four per core and [`SHARDS_MAX`],
/// at least one; `quick_cache` rounds up to a power of two, so this rounds
/// down to one first.
fn shard_count(capacity_bytes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wanted = (capacity_bytes / SHARD_BYTES_MIN).clamp(1, (cores * 4).min(SHARDS_MAX));
    1 << wanted.ilog2()
}

/// Identifies a block: the table's file number and the block's offset.
type BlockKey = (u64, u64);

/// What the cache holds at one key: a data or index block, a filter, or
/// one page of a paged filter.
#[derive(Debug, Clone)]
enum Cached {
    /// A parsed data or index block.
    Block(Block),
    /// A parsed bloom filter.
    Filter(Filter),
    /// The verified contents of one filter page (table format 3).
    FilterPage(Bytes),
}

/// Charges each entry its size in bytes.
#[derive(Debug, Clone, Copy)]
struct BlockWeighter;

impl Weighter<BlockKey, Cached> for BlockWeighter {
    fn weight(&self, _key: &BlockKey, cached: &Cached) -> u64 {
        let bytes = match cached {
            Cached::Block(block) => block.size_bytes(),
            Cached::Filter(filter) => filter.memory_bytes(),
            Cached::FilterPage(page) => page.len(),
        };
        // Never zero: zero-weight entries would never be evicted.
        bytes as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// A byte-bounded cache of data blocks, safe to share between threads.
pub(crate) struct BlockCache {
    /// The blocks and filters.
    cache: Cache<BlockKey, Cached, BlockWeighter>,
    /// Lookups that found their block.
    hits: AtomicU64,
    /// Lookups that did not.
    misses: AtomicU64,
}

impl BlockCache {
    /// A cache holding at most about `capacity_bytes` of blocks; 0 caches nothing.
    pub(crate) fn new(capacity_bytes: usize) -> Self {
        let items_expected = (capacity_bytes / BLOCK_BYTES_EXPECTED).max(1);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(items_expected)
            .weight_capacity(capacity_bytes as u64)
            .shards(shard_count(capacity_bytes))
            .build()
            .expect("every required cache option is set above");
        BlockCache {
            cache: Cache::with_options(
                options,
                BlockWeighter,
                DefaultHashBuilder::default(),
                Default::default(),
            ),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The block at `block_offset` of table `file_number`, if cached.
    pub(crate) fn get(&self, file_number: u64, block_offset: u64) -> Option<Block> {
        self.get_kind(file_number, block_offset, |cached| match cached {
            Cached::Block(block) => Some(block),
            Cached::Filter(_) | Cached::FilterPage(_) => None,
        })
    }

    /// The filter at `block_offset` of table `file_number`, if cached.
    pub(crate) fn get_filter(&self, file_number: u64, block_offset: u64) -> Option<Filter> {
        self.get_kind(file_number, block_offset, |cached| match cached {
            Cached::Filter(filter) => Some(filter),
            Cached::Block(_) | Cached::FilterPage(_) => None,
        })
    }

    /// The filter page at `page_offset` of table `file_number`, if cached.
    pub(crate) fn get_filter_page(&self, file_number: u64, page_offset: u64) -> Option<Bytes> {
        self.get_kind(file_number, page_offset, |cached| match cached {
            Cached::FilterPage(page) => Some(page),
            Cached::Block(_) | Cached::Filter(_) => None,
        })
    }

    /// The entry at a key if `pick` accepts its kind, counted as a hit or a
    /// miss. An entry of another kind counts as a miss: only a damaged table
    /// names one block's offset as another kind (offsets within a table are
    /// distinct), and the read from disk then reports the damage.
    fn get_kind<T>(&self, file_number: u64, offset: u64, pick: impl FnOnce(Cached) -> Option<T>) -> Option<T> {
        let found = self.lookup(file_number, offset).and_then(pick);
        self.count(found.is_some());
        found
    }

    /// Caches `block`, evicting others if over capacity. A block larger than
    /// the cache's share for it is not kept.
    pub(crate) fn insert(&self, file_number: u64, block_offset: u64, block: Block) {
        self.cache.insert((file_number, block_offset), Cached::Block(block));
    }

    /// Caches `filter`, like [`Self::insert`].
    pub(crate) fn insert_filter(&self, file_number: u64, block_offset: u64, filter: Filter) {
        self.cache.insert((file_number, block_offset), Cached::Filter(filter));
    }

    /// Caches the verified contents of a filter page, like [`Self::insert`].
    pub(crate) fn insert_filter_page(&self, file_number: u64, page_offset: u64, page: Bytes) {
        self.cache.insert((file_number, page_offset), Cached::FilterPage(page));
    }

    /// The entry at a key, without counting.
    fn lookup(&self, file_number: u64, block_offset: u64) -> Option<Cached> {
        self.cache.get(&(file_number, block_offset))
    }

    /// Counts a hit or a miss.
    fn count(&self, hit: bool) {
        // Statistics only: no ordering with other memory is needed.
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Lookups that found their block.
    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Lookups that did not find their block.
    pub(crate) fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Bytes charged for the blocks currently cached.
    pub(crate) fn used_bytes(&self) -> u64 {
        self.cache.weight()
    }
}

impl fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockCache")
            .field("capacity_bytes", &self.cache.capacity())
            .field("used_bytes", &self.used_bytes())
            .field("hits", &self.hits())
            .field("misses", &self.misses())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sstable::tests_support::block_of_bytes;

    #[test]
    fn a_second_lookup_of_a_block_is_a_hit() {
        // The cache exists to turn repeated reads of hot blocks into memory reads.
        let cache = BlockCache::new(1 << 20);
        assert!(cache.get(7, 0).is_none());
        cache.insert(7, 0, block_of_bytes(4096));
        assert!(cache.get(7, 0).is_some());
        assert!(cache.get(7, 4096).is_none());
        assert!(cache.get(8, 0).is_none());
        assert_eq!((cache.hits(), cache.misses()), (1, 3));
    }

    #[test]
    fn the_capacity_bound_is_respected() {
        // Memory use must stay near the configured bound however many blocks pass through.
        let capacity_bytes = 256 * 1024;
        let cache = BlockCache::new(capacity_bytes);
        for offset in 0..1000u64 {
            cache.insert(1, offset * 4096, block_of_bytes(4000));
        }
        let used = cache.used_bytes();
        println!("cache holds {used} of {capacity_bytes} bytes");
        assert!(used > 0, "a non-empty cache holds something");
        assert!(
            used <= capacity_bytes as u64 + 4096,
            "used {used} exceeds capacity {capacity_bytes}"
        );
    }

    #[test]
    fn a_large_index_or_filter_is_kept_alongside_data_blocks() {
        // A table's whole index or filter (up to ~1 MB) must fit in the cache next to
        // data blocks, or every lookup reads it from disk again.
        let cache = BlockCache::new(4 << 20);
        cache.insert(1, 0, block_of_bytes(900 * 1024));
        for offset in 1..=256u64 {
            cache.insert(2, offset * 4096, block_of_bytes(4000));
        }
        cache.insert(3, 0, block_of_bytes(900 * 1024));
        assert!(cache.get(1, 0).is_some(), "the first large block was dropped");
        assert!(cache.get(3, 0).is_some(), "the second large block was dropped");
        let data_kept = (1..=256u64).filter(|&o| cache.get(2, o * 4096).is_some()).count();
        assert!(data_kept > 200, "only {data_kept} of 256 data blocks kept");
    }

    #[test]
    fn shards_stay_large_enough_for_whole_tables_metadata() {
        // Small caches are one shard; larger ones split only into shards of at least 32 MiB.
        assert_eq!(shard_count(0), 1);
        assert_eq!(shard_count(8 << 20), 1);
        assert_eq!(shard_count(63 << 20), 1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for capacity in [64usize << 20, 256 << 20, 4 << 30] {
            let shards = shard_count(capacity);
            assert!(shards.is_power_of_two());
            assert!(shards <= (cores * 4).min(SHARDS_MAX));
            assert!(
                capacity / shards >= SHARD_BYTES_MIN,
                "{shards} shards for {capacity} bytes"
            );
        }
    }

    #[test]
    fn a_zero_capacity_cache_caches_nothing() {
        // Capacity 0 is a valid setting: every read goes to disk.
        let cache = BlockCache::new(0);
        cache.insert(1, 0, block_of_bytes(100));
        assert!(cache.get(1, 0).is_none());
        assert_eq!(cache.used_bytes(), 0);
    }
}
