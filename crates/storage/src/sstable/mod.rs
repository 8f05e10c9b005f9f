//! Sorted string tables (written by the sstable work).
