//! The compaction picker: a pure function from the shape of the tree to the
//! next compaction to run. No I/O, so every decision is unit-tested.

use std::ops::Bound;

use crate::options::LEVELS;

/// What the picker needs to know about one live file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileSummary<'a> {
    pub number: u64,
    pub size_bytes: u64,
    /// Smallest user key.
    pub smallest: &'a [u8],
    /// Largest user key.
    pub largest: &'a [u8],
    /// Whether a running compaction already owns the file.
    pub busy: bool,
    /// The smallest blob file number the file points into (0: none).
    pub oldest_blob: u64,
    /// The largest sequence number in the file (0: not recorded).
    pub largest_sequence: u64,
}

/// The knobs that shape the tree.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub l0_compaction_trigger: usize,
    /// Bytes of L0 files one L0 -> L1 compaction takes at most.
    pub l0_compaction_bytes_max: u64,
    pub l1_bytes_target: u64,
    pub level_size_ratio: u64,
}

impl Shape {
    /// Target bytes of `level` (L1 and deeper).
    pub fn level_bytes_target(&self, level: usize) -> u64 {
        assert!(level >= 1, "L0 is sized by file count, not bytes");
        let exponent = u32::try_from(level - 1).unwrap_or(u32::MAX);
        self.l1_bytes_target
            .saturating_mul(self.level_size_ratio.saturating_pow(exponent))
    }
}

/// A compaction to run: `inputs` of `level` merged with the overlapping
/// `next_inputs` of `level + 1`, written to `level + 1` — or, `in_place`,
/// `inputs` rewritten into `level` itself (an intra-L0 compaction, or a
/// deeper table rewritten for blob collection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub level: usize,
    pub inputs: Vec<u64>,
    pub next_inputs: Vec<u64>,
    /// A rewrite of `inputs` within their level (no `next_inputs`), for
    /// the values they point to in blob files due for collection to move.
    pub in_place: bool,
}

impl Plan {
    /// A compaction of `inputs` of `level` into the overlapping `next_inputs`.
    pub fn down(level: usize, inputs: Vec<u64>, next_inputs: Vec<u64>) -> Plan {
        Plan {
            level,
            inputs,
            next_inputs,
            in_place: false,
        }
    }

    /// The level the output goes to.
    pub fn output_level(&self) -> usize {
        if self.in_place {
            self.level
        } else {
            self.level + 1
        }
    }

    /// Whether the plan merges L0 files into one run within L0: it then
    /// writes one output file, since cut into several (or split into
    /// parts) it would leave L0 with as many files as it took, and the
    /// next pick could take the same ones again.
    pub fn is_intra_l0(&self) -> bool {
        self.in_place && self.level == 0
    }

    /// Whether the plan can be carried out by moving one file down a level
    /// without rewriting it.
    pub fn is_trivial_move(&self) -> bool {
        !self.in_place && self.inputs.len() == 1 && self.next_inputs.is_empty()
    }
}

/// How urgently each level needs compaction; >= 1.0 means it does.
pub(crate) fn scores(levels: &[Vec<FileSummary<'_>>; LEVELS], shape: &Shape) -> [f64; LEVELS] {
    let mut scores = [0.0; LEVELS];
    scores[0] = levels[0].len() as f64 / shape.l0_compaction_trigger as f64;
    // The last level has nowhere to go.
    for level in 1..LEVELS - 1 {
        let bytes: u64 = levels[level].iter().map(|f| f.size_bytes).sum();
        scores[level] = bytes as f64 / shape.level_bytes_target(level) as f64;
    }
    scores
}

/// Bytes compaction still has to rewrite to bring every level under its
/// target: the debt the write controller slows writers by.
///
/// `level_bytes[l]` is the size of level `l` and `l0_files` the number of
/// L0 files. Once L0 reaches its trigger, all of it and all of L1 are due
/// to be rewritten; a deeper level over its target pushes its excess (plus
/// whatever arrives from above) down, rewriting the excess and its share of
/// the level below it.
pub(crate) fn pending_compaction_bytes(level_bytes: &[u64; LEVELS], l0_files: usize, shape: &Shape) -> u64 {
    let mut pending: u64 = 0;
    let mut arriving: u64 = 0;
    if l0_files >= shape.l0_compaction_trigger {
        pending = level_bytes[0].saturating_add(level_bytes[1]);
        arriving = level_bytes[0];
    }
    for level in 1..LEVELS - 1 {
        let size = level_bytes[level].saturating_add(arriving);
        let target = shape.level_bytes_target(level);
        if size <= target {
            arriving = 0;
            continue;
        }
        let excess = size - target;
        // Each byte pushed down meets (next / size) bytes of the level below.
        let fanout = level_bytes[level + 1] as f64 / size as f64;
        pending = pending.saturating_add((excess as f64 * (fanout + 1.0)) as u64);
        arriving = excess;
    }
    pending
}

/// Picks the most urgent compaction whose files are all free, or `None`.
///
/// `cursors[level]` is the largest key compacted last time out of `level`:
/// files are taken round-robin after it, so every part of the key space is
/// compacted in turn.
pub(crate) fn pick(
    levels: &[Vec<FileSummary<'_>>; LEVELS],
    shape: &Shape,
    cursors: &[Vec<u8>; LEVELS],
) -> Option<Plan> {
    let scores = scores(levels, shape);
    let mut order: Vec<usize> = (0..LEVELS - 1).filter(|&l| scores[l] >= 1.0).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    order.into_iter().find_map(|level| {
        if level == 0 {
            pick_level0(levels, shape.l0_compaction_bytes_max)
        } else {
            pick_deeper(levels, level, &cursors[level])
        }
    })
}

fn pick_level0(levels: &[Vec<FileSummary<'_>>; LEVELS], bytes_max: u64) -> Option<Plan> {
    // Only one L0 compaction runs at a time: two would write overlapping
    // files into L1, or an intra-L0 output could land between them.
    if levels[0].is_empty() || levels[0].iter().any(|f| f.busy) {
        return None;
    }
    let inputs = oldest_level0_files(&levels[0], bytes_max);
    let smallest = inputs.iter().map(|f| f.smallest).min()?;
    let largest = inputs.iter().map(|f| f.largest).max()?;
    match overlapping(&levels[1], smallest, largest) {
        Some(next_inputs) => Some(Plan::down(0, inputs.iter().map(|f| f.number).collect(), next_inputs)),
        // A deeper compaction holds the L1 files these would merge into.
        None => pick_intra_level0(&levels[0], bytes_max),
    }
}

/// Fewest L0 files an intra-L0 compaction merges: fewer would rewrite
/// bytes to save a lookup one or two file probes.
pub(crate) const INTRA_L0_FILES_MIN: usize = 4;

/// An intra-L0 compaction: while L1 is busy, the newest L0 files merged
/// into one run within L0 (`in_place`), so point lookups probe fewer files
/// and L0 stays further from the write controller's slowdown and stop
/// triggers until L1 is free.
///
/// Only a run of the newest files (`level0` is newest first): the output
/// holds every sequence number between the run's smallest and largest and
/// none of any file outside it, so ordering L0 by largest sequence puts it
/// exactly where the run was. A file that records no sequence ends the run.
/// A file larger than the run so far ends it too: an earlier output is
/// merged again only once newer files add up to its size, so each byte is
/// rewritten a few times, not once per flush. At most `bytes_max` bytes.
fn pick_intra_level0(level0: &[FileSummary<'_>], bytes_max: u64) -> Option<Plan> {
    let mut bytes: u64 = 0;
    let mut count = 0;
    for file in level0 {
        let grown = bytes.saturating_add(file.size_bytes);
        let larger_than_run = count > 0 && file.size_bytes > bytes;
        if file.largest_sequence == 0 || file.busy || larger_than_run || grown > bytes_max {
            break;
        }
        bytes = grown;
        count += 1;
    }
    (count >= INTRA_L0_FILES_MIN).then(|| Plan {
        level: 0,
        inputs: level0[..count].iter().map(|f| f.number).collect(),
        next_inputs: Vec::new(),
        in_place: true,
    })
}

/// The oldest files of L0 (`level0` is newest first) whose bytes stay
/// within `bytes_max`, at least one. Always the oldest: a newer file left
/// above older ones moved down still shadows them correctly, while the
/// reverse would let older data shadow newer.
fn oldest_level0_files<'s, 'a>(level0: &'s [FileSummary<'a>], bytes_max: u64) -> &'s [FileSummary<'a>] {
    let mut bytes: u64 = 0;
    let mut first = level0.len();
    while first > 0 {
        let next = bytes.saturating_add(level0[first - 1].size_bytes);
        if next > bytes_max && first < level0.len() {
            break;
        }
        bytes = next;
        first -= 1;
    }
    &level0[first..]
}

/// User keys splitting a compaction into at most `count_max` sub-compactions
/// of about equal bytes and, by estimate, no fewer than `bytes_min` bytes
/// each, ascending. Sub-compaction `i` covers `[points[i - 1], points[i])`,
/// the first from the start, the last to the end.
///
/// The output level's input files guide the split (they do not overlap, so
/// their bytes fall cleanly on either side of a boundary at one's smallest
/// key); with fewer than two of them, the input level's files do.
pub(crate) fn split_points(
    inputs: &[FileSummary<'_>],
    next_inputs: &[FileSummary<'_>],
    count_max: usize,
    bytes_min: u64,
) -> Vec<Vec<u8>> {
    let total: u64 = inputs.iter().chain(next_inputs).map(|f| f.size_bytes).sum();
    let by_bytes = usize::try_from(total / bytes_min.max(1)).unwrap_or(usize::MAX);
    let count = count_max.min(by_bytes);
    let mut guide: Vec<&FileSummary<'_>> = if next_inputs.len() >= 2 {
        next_inputs.iter().collect()
    } else {
        inputs.iter().collect()
    };
    if count < 2 || guide.len() < 2 {
        return Vec::new();
    }
    guide.sort_by(|a, b| a.smallest.cmp(b.smallest));
    let lowest = inputs
        .iter()
        .chain(next_inputs)
        .map(|f| f.smallest)
        .min()
        .unwrap_or_default();
    let guide_bytes: u64 = guide.iter().map(|f| f.size_bytes).sum();
    let mut points: Vec<Vec<u8>> = Vec::new();
    let mut before: u64 = 0;
    let mut part = 1;
    for file in &guide {
        // The boundary goes at the first file starting at or past the
        // part's share of the bytes.
        if part < count && before.saturating_mul(count as u64) >= guide_bytes.saturating_mul(part as u64) {
            let is_new = points.last().is_none_or(|last| file.smallest > last.as_slice());
            if is_new && file.smallest > lowest {
                points.push(file.smallest.to_vec());
            }
            while part < count && before.saturating_mul(count as u64) >= guide_bytes.saturating_mul(part as u64) {
                part += 1;
            }
        }
        before += file.size_bytes;
    }
    points
}

fn pick_deeper(levels: &[Vec<FileSummary<'_>>; LEVELS], level: usize, cursor: &[u8]) -> Option<Plan> {
    let files = &levels[level];
    let start = files.partition_point(|f| f.largest <= cursor);
    // Try files after the cursor first, then wrap around.
    files[start..].iter().chain(&files[..start]).find_map(|file| {
        if file.busy {
            return None;
        }
        let next_inputs = overlapping(&levels[level + 1], file.smallest, file.largest)?;
        Some(Plan::down(level, vec![file.number], next_inputs))
    })
}

/// The files of `files` meeting `[smallest, largest]`; `None` if any of
/// them is busy (the compaction must wait).
fn overlapping(files: &[FileSummary<'_>], smallest: &[u8], largest: &[u8]) -> Option<Vec<u64>> {
    let mut numbers = Vec::new();
    for file in files {
        if file.smallest <= largest && file.largest >= smallest {
            if file.busy {
                return None;
            }
            numbers.push(file.number);
        }
    }
    Some(numbers)
}

/// The user keys a manual compaction covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyBounds {
    pub start: Bound<Vec<u8>>,
    pub end: Bound<Vec<u8>>,
}

impl KeyBounds {
    /// Whether a file holding `[smallest, largest]` has keys in the bounds.
    pub fn meets(&self, smallest: &[u8], largest: &[u8]) -> bool {
        let after_start = match &self.start {
            Bound::Included(start) => largest >= start.as_slice(),
            Bound::Excluded(start) => largest > start.as_slice(),
            Bound::Unbounded => true,
        };
        let before_end = match &self.end {
            Bound::Included(end) => smallest <= end.as_slice(),
            Bound::Excluded(end) => smallest < end.as_slice(),
            Bound::Unbounded => true,
        };
        after_start && before_end
    }
}

/// The next step of a manual compaction of one level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ManualPick {
    /// No file of the level holds keys in the bounds.
    Done,
    /// A running compaction owns a needed file: wait for it.
    Wait,
    /// Run this plan.
    Run(Plan),
}

/// The files of `level` with keys in `bounds` (plus, in L0, every older file
/// they overlap), merged with what they overlap in the next level. Files
/// outside the bounds stay where they are.
pub(crate) fn pick_manual(levels: &[Vec<FileSummary<'_>>; LEVELS], level: usize, bounds: &KeyBounds) -> ManualPick {
    assert!(level < LEVELS - 1, "the last level has nowhere to compact to");
    let inputs: Vec<&FileSummary<'_>> = if level == 0 {
        level0_closure(&levels[0], bounds)
    } else {
        levels[level]
            .iter()
            .filter(|f| bounds.meets(f.smallest, f.largest))
            .collect()
    };
    let (Some(smallest), Some(largest)) = (
        inputs.iter().map(|f| f.smallest).min(),
        inputs.iter().map(|f| f.largest).max(),
    ) else {
        return ManualPick::Done;
    };
    if inputs.iter().any(|f| f.busy) {
        return ManualPick::Wait;
    }
    let Some(next_inputs) = overlapping(&levels[level + 1], smallest, largest) else {
        return ManualPick::Wait;
    };
    ManualPick::Run(Plan::down(
        level,
        inputs.iter().map(|f| f.number).collect(),
        next_inputs,
    ))
}

/// The L0 files (`level0` is newest first) with keys in `bounds`, and every
/// file older than one of them that it overlaps: an older overlapping file
/// left in L0 would sit above, and shadow, the newer data moved down.
fn level0_closure<'s, 'a>(level0: &'s [FileSummary<'a>], bounds: &KeyBounds) -> Vec<&'s FileSummary<'a>> {
    let mut taken: Vec<bool> = level0.iter().map(|f| bounds.meets(f.smallest, f.largest)).collect();
    // Marks only go to older (later) files, so one pass newest to oldest
    // sees every file after it was marked.
    for newer in 0..level0.len() {
        if !taken[newer] {
            continue;
        }
        let (smallest, largest) = (level0[newer].smallest, level0[newer].largest);
        for older in newer + 1..level0.len() {
            if level0[older].smallest <= largest && level0[older].largest >= smallest {
                taken[older] = true;
            }
        }
    }
    level0.iter().zip(taken).filter(|(_, t)| *t).map(|(f, _)| f).collect()
}

/// A table of L1 or deeper whose oldest blob pointer names a file in `due`
/// (blob files due for collection), the oldest such pointer first, to be
/// rewritten in place so the live values it points to move; `None` if
/// there is none (or every such table is busy). For when no level needs
/// compaction: otherwise the values move as their tables are compacted.
pub(crate) fn pick_blob_collection(
    levels: &[Vec<FileSummary<'_>>; LEVELS],
    due: &std::collections::BTreeSet<u64>,
) -> Option<Plan> {
    let (level, file) = levels
        .iter()
        .enumerate()
        .skip(1)
        .flat_map(|(level, files)| files.iter().map(move |file| (level, file)))
        .filter(|(_, file)| !file.busy && due.contains(&file.oldest_blob))
        .min_by_key(|(_, file)| file.oldest_blob)?;
    Some(Plan {
        level,
        inputs: vec![file.number],
        next_inputs: Vec::new(),
        in_place: true,
    })
}

/// Whether no level below `output_level` holds keys in `[smallest, largest]`:
/// then a tombstone written there shadows nothing and may be dropped.
pub(crate) fn is_bottommost(
    levels: &[Vec<FileSummary<'_>>; LEVELS],
    output_level: usize,
    smallest: &[u8],
    largest: &[u8],
) -> bool {
    levels[output_level + 1..]
        .iter()
        .flatten()
        .all(|f| f.largest < smallest || f.smallest > largest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        l0_compaction_trigger: 4,
        l0_compaction_bytes_max: u64::MAX,
        l1_bytes_target: 1000,
        level_size_ratio: 10,
    };

    fn file(number: u64, size_bytes: u64, smallest: &'static str, largest: &'static str) -> FileSummary<'static> {
        FileSummary {
            number,
            size_bytes,
            smallest: smallest.as_bytes(),
            largest: largest.as_bytes(),
            busy: false,
            oldest_blob: 0,
            largest_sequence: number,
        }
    }

    fn no_cursors() -> [Vec<u8>; LEVELS] {
        Default::default()
    }

    #[test]
    fn nothing_to_do_below_every_trigger() {
        // A small, healthy tree must not be rewritten.
        let mut levels: [Vec<FileSummary<'_>>; LEVELS] = Default::default();
        levels[0] = vec![file(1, 10, "a", "z"); 3];
        levels[1] = vec![file(2, 999, "a", "z")];
        assert_eq!(pick(&levels, &SHAPE, &no_cursors()), None);
    }

    #[test]
    fn l0_at_its_trigger_compacts_with_the_overlapping_l1_files() {
        // All of L0 goes down together, with exactly the L1 files it overlaps.
        let mut levels: [Vec<FileSummary<'_>>; LEVELS] = Default::default();
        levels[0] = vec![
            file(9, 10, "c", "f"),
            file(8, 10, "d", "g"),
            file(7, 10, "e", "h"),
            file(6, 10, "c", "d"),
        ];
        levels[1] = vec![
            file(1, 10, "a", "b"),
            file(2, 10, "c", "e"),
            file(3, 10, "g", "k"),
            file(4, 10, "m", "p"),
        ];
        let plan = pick(&levels, &SHAPE, &no_cursors()).expect("a plan");
        assert_eq!(plan.level, 0);
        assert_eq!(plan.inputs, vec![9, 8, 7, 6]);
        assert_eq!(plan.next_inputs, vec![2, 3]);
        assert!(!plan.is_trivial_move());
    }

    #[test]
    fn while_l1_is_busy_the_newest_l0_files_merge_within_l0() {
        // L0 -> L1 must wait for the deeper compaction holding L1; L0 must not grow meanwhile.
        let mut levels: [Vec<FileSummary<'_>>; LEVELS] = Default::default();
        levels[0] = (1..=6).rev().map(|n| file(n, 10, "a", "z")).collect();
        levels[1] = vec![FileSummary {
            busy: true,
            ..file(20, 999, "a", "m")
        }];
        let plan = pick(&levels, &SHAPE, &no_cursors()).expect("a plan");
        assert_eq!(
            (plan.level, plan.inputs.clone(), plan.in_place, plan.output_level()),
            (0, vec![6, 5, 4, 3, 2, 1], true, 0)
        );
        // With L1 free, L0 goes down as usual.
        levels[1][0].busy = false;
        assert_eq!(
            pick(&levels, &SHAPE, &no_cursors()),
            Some(Plan::down(0, vec![6, 5, 4, 3, 2, 1], vec![20]))
        );
    }

    #[test]
    fn an_intra_l0_run_is_the_newest_files_that_record_a_sequence_and_do_not_outweigh_it() {
        // The output takes the run's place in L0's order only if the run is
        // the newest files and each one's sequence range is known; an
        // earlier, larger output is merged again only once newer files add
        // up to its size.
        let busy_l1 = || {
            vec![FileSummary {
                busy: true,
                ..file(20, 999, "a", "z")
            }]
        };
        let mut levels: [Vec<FileSummary<'_>>; LEVELS] = Default::default();
        levels[0] = vec![
            file(9, 10, "a", "z"),
            file(8, 10, "a", "z"),
            file(7, 10, "a", "z"),
            file(6, 10, "a", "z"),
            file(5, 100, "a", "z"),
        ];
        levels[1] = busy_l1();
        let plan = pick(&levels, &SHAPE, &no_cursors()).expect("a plan");
        assert_eq!(plan.inputs, vec![9, 8, 7, 6], "the large earlier output waits");
        // Files written before sequences were recorded end the run.
        levels[0][2].largest_sequence = 0;
        assert_eq!(pick(&levels, &SHAPE, &no_cursors()), None, "two files are too few");
        // Fewer than INTRA_L0_FILES_MIN files: not worth a rewrite.
        levels[0] = (1..=3).rev().map(|n| file(n, 10, "a", "z")).collect();
        levels[0].push(file(0, 10, "a", "z"));
        levels[0][3].largest_sequence = 0;
        assert_eq!(pick(&levels, &SHAPE, &no_cursors()), None);
        // Within the byte cap.
        levels[0] = (1..=8).rev().map(|n| file(n, 10, "a", "z")).collect();
        let capped = Shape {
            l0_compaction_bytes_max: 45,
            ..SHAPE
        };
        let plan = pick(&levels, &capped, &no_cursors()).expect("a plan");
        assert_eq!(plan.inputs, vec![8, 7, 6, 5]);
    }

    #[test]
    fn a_large_l0_compaction_takes_only_its_oldest_files_within_the_cap() {
        // The cap bounds one compaction's length; newer files wait for the next one.
        let mut levels: [Vec<FileSummary<'_>>; LEVELS] = Default::default();
        levels[0] = vec![
            file(9, 40, "a", "b"),
            file(8, 40, "c", "d"),
            file(7, 40, "e", "f"),
            file(6, 40, "g", "h"),
        ];
        levels[1] = vec![file(1, 10, "a", "b"), file(2, 10, "e", "h")];
        let shape = Shape {
            l0_compaction_bytes_max: 100,
            ..SHAPE
        };
        let plan = pick(&levels, &shape, &no_cursors()).expect("a plan");
        assert_eq!(plan.inputs, vec![7, 6]);
        assert_eq!(plan.next_inputs, vec![2]);
        // One file over the cap still goes, alone.
        let shape = Shape {
            l0_compaction_bytes_max: 10,
            ..SHAPE
        };
        assert_eq!(pick(&levels, &shape, &no_cursors()).expect("a plan").inputs, vec![6]);
    }

    #[test]
    fn a_compaction_splits_at_output_file_boundaries_into_parts_of_equal_bytes() {
        // Four equal L1 files and a bound of 4 parts: one boundary at each file's start after the first.
        let inputs = vec![file(9, 100, "a", "z"), file(8, 100, "b", "y")];
        let next = vec![
            file(1, 100, "a", "e"),
            file(2, 100, "f", "j"),
            file(3, 100, "k", "o"),
            file(4, 100, "p", "t"),
        ];
        assert_eq!(
            split_points(&inputs, &next, 4, 1),
            vec![b"f".to_vec(), b"k".to_vec(), b"p".to_vec()]
        );
        // Two parts: split in the middle of the bytes.
        assert_eq!(split_points(&inputs, &next, 2, 1), vec![b"k".to_vec()]);
        // Parts may not be smaller than the minimum: 600 bytes at 250 each make 2.
        assert_eq!(split_points(&inputs, &next, 8, 250), vec![b"k".to_vec()]);
        // Too little data, or a single part allowed: no split.
        assert!(split_points(&inputs, &next, 4, 1000).is_empty());
        assert!(split_points(&inputs, &next, 1, 1).is_empty());
    }

    #[test]
    fn without_output_files_the_input_files_guide_the_split() {
        // Disjoint L0 files (a sequential load) over an empty L1 still split, at their own starts.
        let inputs = vec![file(9, 100, "m", "p"), file(8, 100, "a", "c"), file(7, 100, "d", "k")];
        assert_eq!(split_points(&inputs, &[], 3, 1), vec![b"d".to_vec(), b"m".to_vec()]);
        // Files that all start at the same key give nowhere to split.
        let inputs = vec![file(9, 100, "a", "z"), file(8, 100, "a", "y")];
        assert!(split_points(&inputs, &[], 4, 1).is_empty());
        // An uneven guide: the big first file holds most of the bytes, so the one split goes after it.
        let next = vec![file(1, 700, "a", "e"), file(2, 100, "f", "j"), file(3, 100, "k", "o")];
        assert_eq!(split_points(&[], &next, 2, 1), vec![b"f".to_vec()]);
    }

    #[test]
    fn the_most_oversized_level_goes_first_and_busy_files_are_skipped() {
        // L2 at 3x its target outranks L1 at 1.5x; a busy L3 file blocks only the plans that need it.
        let mut levels: [Vec<FileSummary<'_>>; LEVELS] = Default::default();
        levels[1] = vec![file(1, 1500, "a", "c")];
        levels[2] = vec![file(2, 15_000, "a", "f"), file(3, 15_000, "g", "m")];
        levels[3] = vec![
            FileSummary {
                busy: true,
                ..file(4, 10, "b", "c")
            },
            file(5, 10, "h", "i"),
        ];
        let plan = pick(&levels, &SHAPE, &no_cursors()).expect("a plan");
        assert_eq!(plan, Plan::down(2, vec![3], vec![5]));
    }

    #[test]
    fn a_table_pointing_into_a_blob_file_due_for_collection_is_rewritten_in_place() {
        // Values in a mostly-garbage blob file move only when a table pointing to them is rewritten.
        let with_blob = |number, blob, busy| FileSummary {
            oldest_blob: blob,
            busy,
            ..file(number, 10, "a", "b")
        };
        let mut levels: [Vec<FileSummary<'_>>; LEVELS] = Default::default();
        levels[0] = vec![with_blob(1, 3, false)];
        levels[1] = vec![with_blob(2, 0, false), with_blob(3, 9, false)];
        levels[2] = vec![with_blob(4, 7, true), with_blob(5, 8, false)];
        let due = |numbers: &[u64]| numbers.iter().copied().collect::<std::collections::BTreeSet<u64>>();
        let plan = pick_blob_collection(&levels, &due(&[3, 7, 8, 9])).expect("a plan");
        // L0 is left to its own compactions, busy files wait, the oldest pointer goes first.
        assert_eq!((plan.level, plan.inputs.clone(), plan.in_place), (2, vec![5], true));
        assert_eq!(plan.output_level(), 2);
        assert!(!plan.is_trivial_move(), "an in-place plan rewrites its file");
        assert_eq!(pick_blob_collection(&levels, &due(&[3, 7])), None);
        assert_eq!(pick_blob_collection(&levels, &due(&[])), None);
    }

    #[test]
    fn deeper_levels_compact_round_robin_from_the_cursor() {
        // Successive compactions of one level walk the key space instead of hammering its start.
        let mut levels: [Vec<FileSummary<'_>>; LEVELS] = Default::default();
        levels[1] = vec![file(1, 800, "a", "c"), file(2, 800, "d", "f"), file(3, 800, "g", "i")];
        let mut cursors = no_cursors();
        cursors[1] = b"f".to_vec();
        let plan = pick(&levels, &SHAPE, &cursors).expect("a plan");
        assert_eq!(plan.inputs, vec![3]);
        assert!(plan.is_trivial_move());
        cursors[1] = b"i".to_vec();
        assert_eq!(pick(&levels, &SHAPE, &cursors).expect("a plan").inputs, vec![1]);
    }

    #[test]
    fn tombstones_may_drop_only_where_no_deeper_level_overlaps() {
        // Dropping a tombstone above an older value would resurrect that value.
        let mut levels: [Vec<FileSummary<'_>>; LEVELS] = Default::default();
        levels[3] = vec![file(1, 10, "m", "p")];
        assert!(is_bottommost(&levels, 1, b"a", b"l"));
        assert!(!is_bottommost(&levels, 1, b"a", b"n"));
        assert!(is_bottommost(&levels, 3, b"a", b"z"));
    }

    #[test]
    fn pending_bytes_count_l0_at_its_trigger_and_every_level_over_target() {
        // A healthy tree owes nothing; L0 at its trigger owes L0 + L1; an oversized level owes its excess and the share below.
        let mut bytes = [0u64; LEVELS];
        bytes[0] = 300;
        bytes[1] = 900;
        assert_eq!(pending_compaction_bytes(&bytes, 3, &SHAPE), 0);
        // L0 at the trigger: 300 + 900 rewritten, and 300 arriving push L1 to 1200 (200 over),
        // which meets an empty L2: 200 more.
        assert_eq!(pending_compaction_bytes(&bytes, 4, &SHAPE), 1200 + 200);
        // L2 holds 20_000 against a 10_000 target, L3 holds 30_000: the 10_000 excess
        // rewrites itself and 30_000 / 20_000 of itself below.
        let mut bytes = [0u64; LEVELS];
        bytes[2] = 20_000;
        bytes[3] = 30_000;
        assert_eq!(pending_compaction_bytes(&bytes, 0, &SHAPE), 10_000 + 15_000);
    }

    fn bounds(start: &str, end: &str) -> KeyBounds {
        KeyBounds {
            start: Bound::Included(start.as_bytes().to_vec()),
            end: Bound::Excluded(end.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_manual_compaction_of_a_range_takes_only_the_files_in_it() {
        // Files outside the range stay; the next level's files are taken only where they overlap the inputs.
        let mut levels: [Vec<FileSummary<'_>>; LEVELS] = Default::default();
        levels[1] = vec![file(1, 10, "a", "c"), file(2, 10, "d", "f"), file(3, 10, "g", "i")];
        levels[2] = vec![file(4, 10, "a", "b"), file(5, 10, "c", "e"), file(6, 10, "h", "z")];
        let plan = ManualPick::Run(Plan::down(1, vec![2], vec![5]));
        assert_eq!(pick_manual(&levels, 1, &bounds("d", "e")), plan);
        // An excluded end at a file's smallest key does not take that file.
        assert_eq!(pick_manual(&levels, 1, &bounds("dd", "g")), plan);
        assert_eq!(pick_manual(&levels, 1, &bounds("j", "k")), ManualPick::Done);
        assert_eq!(pick_manual(&levels, 3, &bounds("a", "z")), ManualPick::Done);
        levels[2][1].busy = true;
        assert_eq!(pick_manual(&levels, 1, &bounds("d", "e")), ManualPick::Wait);
    }

    #[test]
    fn a_manual_l0_compaction_takes_older_files_its_inputs_overlap() {
        // Moving a file down past an older overlapping one would let the older data shadow the newer.
        let mut levels: [Vec<FileSummary<'_>>; LEVELS] = Default::default();
        // Newest first: 13 overlaps 11 (older) but not 12; 12 overlaps 11 but is newer than it.
        levels[0] = vec![
            file(13, 10, "a", "c"),
            file(12, 10, "m", "p"),
            file(11, 10, "b", "n"),
            file(10, 10, "x", "z"),
        ];
        let ManualPick::Run(plan) = pick_manual(&levels, 0, &bounds("a", "b")) else {
            panic!("expected a plan");
        };
        assert_eq!(plan.inputs, vec![13, 11]);
        // A range meeting only the oldest file takes it alone.
        let ManualPick::Run(plan) = pick_manual(&levels, 0, &bounds("y", "yy")) else {
            panic!("expected a plan");
        };
        assert_eq!(plan.inputs, vec![10]);
        // The full range takes all of L0.
        let full = KeyBounds {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        };
        let ManualPick::Run(plan) = pick_manual(&levels, 0, &full) else {
            panic!("expected a plan");
        };
        assert_eq!(plan.inputs, vec![13, 12, 11, 10]);
    }

    #[test]
    fn level_targets_grow_by_the_ratio() {
        // L1 = target, L2 = 10x, L3 = 100x.
        assert_eq!(SHAPE.level_bytes_target(1), 1000);
        assert_eq!(SHAPE.level_bytes_target(3), 100_000);
    }
}
