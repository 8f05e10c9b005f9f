//! A tmpfs mounted as a node's data directory: a disk of a chosen size
//! that a scenario can fill, and free again.
//!
//! Mounting needs root (or `CAP_SYS_ADMIN`). Without it [`Tmpfs::mount`]
//! fails with the reason: a scenario built on a full disk must fail, not
//! pass without having filled anything.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Bytes written per write while filling.
const FILL_CHUNK_BYTES: usize = 1 << 20;

/// A mounted tmpfs; unmounted when dropped (lazily if it is still busy).
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB on the existing directory `dir`.
    pub fn mount(dir: &Path, size_mib: u64) -> Result<Tmpfs> {
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "chaos-tmpfs"])
            .arg(dir)
            .output()
            .context("running mount")?;
        if !output.status.success() {
            bail!(
                "cannot mount a {size_mib} MiB tmpfs on {} ({}): this scenario needs root to \
                 give a node a disk that fills, and fails rather than pass without the fault",
                dir.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(Tmpfs { dir: dir.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).status();
        if !matches!(unmounted, Ok(status) if status.success()) {
            eprintln!(
                "chaos: umount {} failed ({unmounted:?}); detaching it lazily",
                self.dir.display()
            );
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Writes `path` until its filesystem is full, then shrinks it so that
/// about `free_bytes` are free again; returns the bytes the file keeps.
pub fn fill(path: &Path, free_bytes: u64) -> Result<u64> {
    let mut file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let chunk = vec![0x5Au8; FILL_CHUNK_BYTES];
    let mut written = 0u64;
    // Ends at the first failed write: ENOSPC on a filesystem of bounded size.
    while file.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    let kept = written.saturating_sub(free_bytes);
    file.set_len(kept)
        .with_context(|| format!("shrinking {}", path.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(kept)
}
