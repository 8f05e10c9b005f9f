//! The block cache (written by the sstable work).
