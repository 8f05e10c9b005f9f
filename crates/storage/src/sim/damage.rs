//! Random damage to a real file, for tests that check decoders meet
//! garbage with an error: bit flips, a zeroed run, a cut, appended bytes.

use std::io;
use std::path::Path;

/// Longest run [`damage_random_file`] zeroes, in bytes.
const ZEROED_RUN_BYTES_MAX: u64 = 700;
/// Most bits flipped at once.
const FLIPS_MAX: u64 = 8;
/// Most bytes appended at once.
const APPENDED_BYTES_MAX: u64 = 256;

/// Copies every file of `base` into the empty directory `copy`, then
/// damages one of the copies ([`damage_random_file`]); `base` is untouched.
pub fn damaged_copy(base: &Path, copy: &Path, random: &mut dyn FnMut(u64) -> u64) -> io::Result<String> {
    for entry in std::fs::read_dir(base)? {
        let entry = entry?;
        std::fs::copy(entry.path(), copy.join(entry.file_name()))?;
    }
    damage_random_file(copy, random)
}

/// Damages one file of `dir` (any but `LOCK`) in place, choosing with
/// `random(n)` (a number in `0..n`); returns what it did, for a failure
/// message.
pub fn damage_random_file(dir: &Path, random: &mut dyn FnMut(u64) -> u64) -> io::Result<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    files.retain(|p| p.is_file() && p.file_name().is_some_and(|n| n != "LOCK"));
    files.sort();
    if files.is_empty() {
        return Err(io::Error::other(format!("no file to damage in {}", dir.display())));
    }
    let path = &files[pick(random, files.len())];
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut bytes = std::fs::read(path)?;
    let random_byte = |random: &mut dyn FnMut(u64) -> u64| random(256) as u8;
    let what = if bytes.is_empty() {
        let extra = 1 + pick(random, 64);
        bytes.extend((0..extra).map(|_| random_byte(random)));
        format!("filled empty {name} with {extra} random bytes")
    } else {
        match random(5) {
            0 | 1 => {
                let flips = 1 + pick(random, FLIPS_MAX as usize);
                for _ in 0..flips {
                    let at = pick(random, bytes.len());
                    bytes[at] ^= 1 << random(8);
                }
                format!("flipped {flips} bits in {name}")
            }
            2 => {
                let at = pick(random, bytes.len());
                let len = 1 + pick(random, (bytes.len() - at).min(ZEROED_RUN_BYTES_MAX as usize));
                bytes[at..at + len].fill(0);
                format!("zeroed {len} bytes at {at} of {name}")
            }
            3 => {
                let len = pick(random, bytes.len());
                bytes.truncate(len);
                format!("cut {name} to {len} bytes")
            }
            _ => {
                let extra = 1 + pick(random, APPENDED_BYTES_MAX as usize);
                bytes.extend((0..extra).map(|_| random_byte(random)));
                format!("appended {extra} random bytes to {name}")
            }
        }
    };
    std::fs::write(path, &bytes)?;
    Ok(what)
}

fn pick(random: &mut dyn FnMut(u64) -> u64, n: usize) -> usize {
    usize::try_from(random(n as u64)).unwrap_or(0).min(n.saturating_sub(1))
}
