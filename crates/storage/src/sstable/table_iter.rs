//! Cursors over a table: an index cursor choosing data blocks and a data
//! cursor within the current one. In format 3 the index cursor has two
//! levels: the top-level index (held by the open table) chooses a
//! partition, read through the block cache, whose entries choose data
//! blocks; a seek descends both levels and `next` walks partitions in order.

use std::sync::Arc;

use super::block::{Block, BlockIter};
use super::reader::{Table, TableSource};
use crate::error::Result;
use crate::iterator::InternalIterator;

/// Points `cursor` at the `loaded` block (reusing the cursor's key buffer),
/// or clears it if loading failed, passing the error on.
fn point_at(cursor: &mut Option<BlockIter>, loaded: Result<Block>) -> Result<()> {
    let block = match loaded {
        Ok(block) => block,
        Err(error) => {
            *cursor = None;
            return Err(error);
        }
    };
    match cursor {
        Some(current) => current.reset(block),
        None => *cursor = Some(BlockIter::new(block)),
    }
    Ok(())
}

/// A cursor over every index entry of a table (separator key -> data block
/// handle), through one index level (formats 1 and 2) or two (format 3).
#[derive(Debug)]
struct IndexIter {
    /// The table whose index this is.
    table: Arc<Table>,
    /// The whole index (one level), or the top-level index (two levels).
    top: BlockIter,
    /// Two levels only: the partition the top-level cursor is on; `None`
    /// when the top-level cursor is not valid, or after an error.
    partition: Option<BlockIter>,
    /// Whether the index has two levels.
    partitioned: bool,
    /// Whether partitions read from disk go into the block cache.
    fill_cache: bool,
}

impl IndexIter {
    /// An unpositioned cursor over `table`'s index, loading the index
    /// block first if the table does not hold it.
    fn open(table: Arc<Table>, fill_cache: bool) -> Result<IndexIter> {
        let (root, partitioned) = table.index_root()?;
        Ok(IndexIter {
            table,
            top: BlockIter::new(root),
            partition: None,
            partitioned,
            fill_cache,
        })
    }

    /// Whether the cursor is on an index entry.
    fn valid(&self) -> bool {
        match self.partitioned {
            true => self.partition.as_ref().is_some_and(BlockIter::valid),
            false => self.top.valid(),
        }
    }

    /// The current entry's value: a data block handle. Only while valid.
    fn value(&self) -> &[u8] {
        match (&self.partition, self.partitioned) {
            (Some(partition), true) => partition.value(),
            _ => self.top.value(),
        }
    }

    /// Moves to the first index entry.
    fn seek_to_first(&mut self) -> Result<()> {
        self.top.seek_to_first();
        if !self.partitioned {
            return Ok(());
        }
        self.load_partition()?;
        if let Some(partition) = &mut self.partition {
            partition.seek_to_first();
        }
        self.skip_exhausted_partitions()
    }

    /// Moves to the first index entry whose key is `>= target`.
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.top.seek(target);
        if !self.partitioned {
            return Ok(());
        }
        // The partition's top-level key is its last key, `>= target`: the
        // partition holds the entry sought (unless damaged, then the next).
        self.load_partition()?;
        if let Some(partition) = &mut self.partition {
            partition.seek(target);
        }
        self.skip_exhausted_partitions()
    }

    /// Moves to the next index entry. Only while valid.
    fn next(&mut self) -> Result<()> {
        if !self.partitioned {
            self.top.next();
            return Ok(());
        }
        if let Some(partition) = &mut self.partition {
            partition.next();
        }
        self.skip_exhausted_partitions()
    }

    /// While the partition cursor is exhausted, moves to the next
    /// partition's first entry.
    fn skip_exhausted_partitions(&mut self) -> Result<()> {
        while self.partition.as_ref().is_some_and(|partition| !partition.valid()) {
            self.top.next();
            self.load_partition()?;
            if let Some(partition) = &mut self.partition {
                partition.seek_to_first();
            }
        }
        Ok(())
    }

    /// Loads the partition the top-level cursor is on, or clears the
    /// partition cursor when the top level is exhausted or the read fails.
    fn load_partition(&mut self) -> Result<()> {
        if !self.top.valid() {
            self.partition = None;
            return Ok(());
        }
        let loaded = self
            .table
            .decode_handle(self.top.value())
            .and_then(|handle| self.table.index_partition(handle, self.fill_cache));
        point_at(&mut self.partition, loaded)
    }
}

/// A cursor over a whole table: an index cursor choosing data blocks and a
/// data cursor within the current one.
#[derive(Debug)]
pub(crate) struct TableIter {
    /// Where the table comes from; held so that the file outlives the cursor.
    source: Arc<dyn TableSource>,
    /// Cursor over the index; `None` until first positioned.
    index: Option<IndexIter>,
    /// Cursor over the data block the index cursor points at; `None` when
    /// the cursor is not valid (exhausted, unpositioned, or after an error).
    data: Option<BlockIter>,
    /// Whether blocks read from disk go into the block cache.
    fill_cache: bool,
}

impl TableIter {
    /// A cursor that opens its table through `source` when first positioned,
    /// so that building a cursor over many tables opens none of them.
    pub(crate) fn deferred(source: Arc<dyn TableSource>) -> TableIter {
        TableIter {
            source,
            index: None,
            data: None,
            fill_cache: true,
        }
    }

    /// This cursor, reading blocks missing from the block cache from disk
    /// without inserting them: for compaction, which reads each block once
    /// and must not evict the blocks readers use.
    pub(crate) fn without_cache_fill(mut self) -> TableIter {
        self.fill_cache = false;
        self
    }

    /// The index cursor, opening the table and loading its index first if
    /// this is the first positioning call. Clears the data cursor on error.
    fn index_cursor(&mut self) -> Result<&mut IndexIter> {
        if self.index.is_none() {
            let opened = self
                .source
                .open_table()
                .and_then(|table| IndexIter::open(table, self.fill_cache));
            match opened {
                Ok(index) => self.index = Some(index),
                Err(error) => {
                    self.data = None;
                    return Err(error);
                }
            }
        }
        Ok(self.index.as_mut().expect("the index cursor was just loaded"))
    }

    /// Runs `step` on the index cursor, clearing the data cursor if it fails.
    fn step_index(&mut self, step: impl FnOnce(&mut IndexIter) -> Result<()>) -> Result<()> {
        let result = self.index_cursor().and_then(step);
        if result.is_err() {
            self.data = None;
        }
        result
    }

    /// Loads the data block the index cursor is on into the data cursor, or
    /// clears it when the index is exhausted.
    fn load_data_block(&mut self) -> Result<()> {
        let Some(index) = &self.index else {
            self.data = None;
            return Ok(());
        };
        if !index.valid() {
            self.data = None;
            return Ok(());
        }
        let table = &index.table;
        let loaded = table
            .decode_handle(index.value())
            .and_then(|handle| match self.fill_cache {
                true => table.data_block(handle),
                false => table.data_block_without_cache_fill(handle),
            });
        point_at(&mut self.data, loaded)
    }

    /// While the data cursor is exhausted, moves to the next block's first
    /// entry. (With separator index keys a seek can land on a block whose
    /// entries all sort below the target; the next block then holds the answer.)
    fn skip_exhausted_blocks(&mut self) -> Result<()> {
        while self.data.as_ref().is_some_and(|data| !data.valid()) {
            self.step_index(IndexIter::next)?;
            self.load_data_block()?;
            if let Some(data) = &mut self.data {
                data.seek_to_first();
            }
        }
        Ok(())
    }

    /// The data cursor; only while valid.
    fn current(&self) -> &BlockIter {
        self.data.as_ref().expect("TableIter used while not valid")
    }
}

impl InternalIterator for TableIter {
    fn valid(&self) -> bool {
        self.data.as_ref().is_some_and(BlockIter::valid)
    }

    fn seek_to_first(&mut self) -> Result<()> {
        self.step_index(IndexIter::seek_to_first)?;
        self.load_data_block()?;
        if let Some(data) = &mut self.data {
            data.seek_to_first();
        }
        self.skip_exhausted_blocks()
    }

    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.step_index(|index| index.seek(target))?;
        self.load_data_block()?;
        if let Some(data) = &mut self.data {
            data.seek(target);
        }
        self.skip_exhausted_blocks()
    }

    fn next(&mut self) -> Result<()> {
        let data = self.data.as_mut().expect("TableIter::next called while not valid");
        data.next();
        self.skip_exhausted_blocks()
    }

    fn key(&self) -> &[u8] {
        self.current().key()
    }

    fn value(&self) -> &[u8] {
        self.current().value()
    }
}
