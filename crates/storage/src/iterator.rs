//! Iterators over internal keys, and the merge of many of them.

use crate::error::Result;

/// A forward cursor over `(internal key, value)` pairs in [`crate::key::compare`] order.
///
/// Implemented by memtables, table blocks, whole tables, levels and the
/// merge of all of these. Positioning calls return I/O or corruption errors;
/// `key` and `value` may only be called while [`valid`](Self::valid).
pub trait InternalIterator: Send {
    /// Whether the cursor is on an entry.
    fn valid(&self) -> bool;
    /// Moves to the first entry.
    fn seek_to_first(&mut self) -> Result<()>;
    /// Moves to the first entry whose internal key is `>= target`.
    fn seek(&mut self, target: &[u8]) -> Result<()>;
    /// Moves to the next entry.
    fn next(&mut self) -> Result<()>;
    /// The current internal key.
    fn key(&self) -> &[u8];
    /// The current value (empty for tombstones).
    fn value(&self) -> &[u8];
}
