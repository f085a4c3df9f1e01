//! Layering Firecracker Diff snapshots.
//!
//! A Diff memory file is a sparse file as large as guest memory in which
//! only the pages dirtied since the previous snapshot are written, each at
//! its own offset; everything else is a hole. Applying it onto a copy of
//! the previous (full) memory file, extent by extent at the same offsets,
//! gives a full memory file of the newer state; the newer snapshot's state
//! file (`vm.snap`) goes with it. [`merge_diff`] does the memory part,
//! [`apply_diff`] both.
//!
//! This relies on the file system reporting holes (`SEEK_DATA` /
//! `SEEK_HOLE`: ext4, xfs, btrfs, tmpfs do). A file system that reports a
//! sparse file as all data would make the diff's holes overwrite the base
//! with zeros, so [`merge_diff`] refuses a diff whose reported data is
//! larger than the space it occupies.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::vmm::{SnapshotFiles, SnapshotKind, VmmError};

/// Copy buffer size.
const CHUNK: usize = 1 << 20;

/// What [`merge_diff`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeStats {
    /// Data extents copied.
    pub extents: u64,
    /// Bytes copied.
    pub bytes: u64,
}

/// `lseek(fd, off, whence)`; `None` at ENXIO (no more data / holes).
fn seek(f: &File, off: u64, whence: i32) -> std::io::Result<Option<u64>> {
    let off = libc::off_t::try_from(off)
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "offset out of range"))?;
    // SAFETY: plain syscall on a descriptor we own.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    // Non-negative: checked above.
    Ok(u64::try_from(r).ok())
}

/// The data extents `(offset, len)` of `f` (of length `len`).
fn data_extents(f: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Some(start) = seek(f, pos, libc::SEEK_DATA)? else {
            break;
        };
        if start >= len {
            break;
        }
        let end = seek(f, start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        let Some(n) = end.checked_sub(start).filter(|&n| n > 0) else {
            break;
        };
        out.push((start, n));
        pos = end;
    }
    Ok(out)
}

/// Copies the data extents of `diff_mem` onto `base_mem` at the same
/// offsets, then fsyncs `base_mem`. Both must have the same size (guest
/// memory). Blocking: run it on a blocking thread.
///
/// Never merge into a memory file a running VM was restored from:
/// Firecracker maps it privately, and pages it has not touched yet would
/// change under the guest. Merge into a copy.
pub fn merge_diff(base_mem: &Path, diff_mem: &Path) -> Result<MergeStats, VmmError> {
    let io = |what: &str, p: &Path, e| VmmError::io(format!("{what} {}", p.display()), e);
    let diff = File::open(diff_mem).map_err(|e| io("open", diff_mem, e))?;
    let base = OpenOptions::new()
        .write(true)
        .open(base_mem)
        .map_err(|e| io("open", base_mem, e))?;
    let dm = diff.metadata().map_err(|e| io("stat", diff_mem, e))?;
    let bm = base.metadata().map_err(|e| io("stat", base_mem, e))?;
    if dm.len() != bm.len() {
        return Err(VmmError::InvalidSnapshot(format!(
            "diff memory file {} is {} bytes, its base {} is {}",
            diff_mem.display(),
            dm.len(),
            base_mem.display(),
            bm.len()
        )));
    }
    let extents = data_extents(&diff, dm.len()).map_err(|e| io("seek", diff_mem, e))?;
    // The sizes come from the file system (the file is a snapshot from
    // disk): saturate rather than wrap.
    let data = extents
        .iter()
        .fold(0u64, |sum, &(_, l)| sum.saturating_add(l));
    let allocated = dm.blocks().saturating_mul(512);
    // Extents are block-aligned, so their sum never exceeds the allocation
    // (plus one block of slack for the tail) unless holes are not reported.
    if data > allocated.saturating_add(4096) {
        return Err(VmmError::InvalidSnapshot(format!(
            "{}: the file system reports {data} bytes of data but only {allocated} are \
             allocated (no SEEK_HOLE support?); refusing to merge",
            diff_mem.display()
        )));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut stats = MergeStats::default();
    for (start, len) in extents {
        let mut off = start;
        // Inside the file (`data_extents` clamps to its length): no overflow.
        let end = start.saturating_add(len);
        while off < end {
            let n = usize::try_from(end.saturating_sub(off))
                .unwrap_or(CHUNK)
                .min(CHUNK);
            diff.read_exact_at(&mut buf[..n], off)
                .map_err(|e| io("read", diff_mem, e))?;
            base.write_all_at(&buf[..n], off)
                .map_err(|e| io("write", base_mem, e))?;
            off = off.saturating_add(n as u64);
        }
        stats.extents = stats.extents.saturating_add(1);
        stats.bytes = stats.bytes.saturating_add(len);
    }
    base.sync_all().map_err(|e| io("fsync", base_mem, e))?;
    Ok(stats)
}

/// Applies the Diff snapshot `diff` onto the Full snapshot `base` in
/// place: merges the diff's memory into `base`'s memory file
/// ([`merge_diff`]) and replaces `base`'s state file with the diff's.
/// Returns `base` as it now is: a Full snapshot of the diff's state.
/// Blocking. Work on a copy of the base if it must be kept.
pub fn apply_diff(base: &SnapshotFiles, diff: &SnapshotFiles) -> Result<SnapshotFiles, VmmError> {
    let bad = |m: String| Err(VmmError::InvalidSnapshot(m));
    if base.kind != SnapshotKind::Full || diff.kind != SnapshotKind::Diff {
        return bad(format!(
            "apply_diff needs a Full base and a Diff on top, got {:?} and {:?}",
            base.kind, diff.kind
        ));
    }
    if base.driver != diff.driver
        || base.vcpus != diff.vcpus
        || base.mem_mib != diff.mem_mib
        || base.extra_disks != diff.extra_disks
        || base.has_net != diff.has_net
    {
        return bad("the diff was taken of a different machine than its base".into());
    }
    let stats = merge_diff(&base.mem_path(), &diff.mem_path())?;
    // The state file: copy next to the base's, then rename over it.
    let state = base.state_path();
    let tmp = state.with_extension("merging");
    std::fs::copy(diff.state_path(), &tmp).map_err(|e| {
        VmmError::io(
            format!("copy {} to {}", diff.state_path().display(), tmp.display()),
            e,
        )
    })?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| VmmError::io(format!("fsync {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &state).map_err(|e| {
        VmmError::io(
            format!("rename {} to {}", tmp.display(), state.display()),
            e,
        )
    })?;
    let mut out = base.clone();
    let mut size = 0;
    let mut alloc = 0;
    for p in [base.state_path(), base.mem_path()] {
        let m =
            std::fs::metadata(&p).map_err(|e| VmmError::io(format!("stat {}", p.display()), e))?;
        size = m.len().saturating_add(size);
        alloc = m.blocks().saturating_mul(512).saturating_add(alloc);
    }
    out.size_bytes = size;
    out.allocated_bytes = alloc;
    out.vmm_version = diff.vmm_version.clone();
    tracing::debug!(
        extents = stats.extents,
        bytes = stats.bytes,
        "diff snapshot applied"
    );
    Ok(out)
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)] // test data of known, small sizes
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn sparse(path: &Path, len: u64, writes: &[(u64, &[u8])]) {
        let f = File::create(path).unwrap();
        f.set_len(len).unwrap();
        for (off, data) in writes {
            f.write_all_at(data, *off).unwrap();
        }
        f.sync_all().unwrap();
    }

    #[test]
    fn merges_only_the_data_extents() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("mem.snap");
        let diff = tmp.path().join("mem.diff");
        let len = 8 * MIB;
        // The base: every byte non-zero.
        std::fs::write(&base, vec![0xAAu8; len as usize]).unwrap();
        // The diff: two dirty pages (one of them dirtied to all zeros) and a
        // 2 MiB run, holes elsewhere.
        let run = vec![0x22u8; 2 * MIB as usize];
        sparse(
            &diff,
            len,
            &[
                (4096, &[0x11u8; 4096]),
                (3 * MIB, &run),
                (7 * MIB, &[0u8; 4096]),
            ],
        );
        let stats = merge_diff(&base, &diff).unwrap();
        assert!(stats.extents >= 3, "{stats:?}");
        assert_eq!(stats.bytes, 4096 + 2 * MIB + 4096);
        let got = std::fs::read(&base).unwrap();
        assert_eq!(got.len() as u64, len);
        assert!(got[..4096].iter().all(|&b| b == 0xAA));
        assert!(got[4096..8192].iter().all(|&b| b == 0x11));
        assert!(got[8192..3 * MIB as usize].iter().all(|&b| b == 0xAA));
        assert!(got[3 * MIB as usize..5 * MIB as usize]
            .iter()
            .all(|&b| b == 0x22));
        assert!(got[5 * MIB as usize..7 * MIB as usize]
            .iter()
            .all(|&b| b == 0xAA));
        assert!(got[7 * MIB as usize..7 * MIB as usize + 4096]
            .iter()
            .all(|&b| b == 0));
        assert!(got[7 * MIB as usize + 4096..].iter().all(|&b| b == 0xAA));

        // An empty diff changes nothing.
        let empty = tmp.path().join("empty.diff");
        sparse(&empty, len, &[]);
        assert_eq!(merge_diff(&base, &empty).unwrap().bytes, 0);
        assert_eq!(std::fs::read(&base).unwrap(), got);

        // Sizes must match.
        let short = tmp.path().join("short.diff");
        sparse(&short, MIB, &[(0, b"x")]);
        assert!(matches!(
            merge_diff(&base, &short),
            Err(VmmError::InvalidSnapshot(_))
        ));
        assert!(matches!(
            merge_diff(&base, &tmp.path().join("missing")),
            Err(VmmError::Io { .. })
        ));
    }

    fn files(dir: &Path, kind: SnapshotKind, mem: &str) -> SnapshotFiles {
        SnapshotFiles {
            dir: dir.to_path_buf(),
            state_file: "vm.snap".into(),
            mem_file: mem.into(),
            format_version: 1,
            driver: "firecracker".into(),
            vmm_version: "Firecracker v1".into(),
            kind,
            size_bytes: 0,
            allocated_bytes: 0,
            vcpus: 1,
            mem_mib: 1,
            extra_disks: 0,
            has_net: false,
            mapped_ram: false,
        }
    }

    #[test]
    fn full_then_two_diffs() {
        let tmp = tempfile::tempdir().unwrap();
        let (d0, d1, d2) = (
            tmp.path().join("0"),
            tmp.path().join("1"),
            tmp.path().join("2"),
        );
        for d in [&d0, &d1, &d2] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(d0.join("vm.snap"), b"state0").unwrap();
        std::fs::write(d0.join("mem.snap"), vec![1u8; MIB as usize]).unwrap();
        std::fs::write(d1.join("vm.snap"), b"state1").unwrap();
        sparse(&d1.join("mem.diff"), MIB, &[(0, &[2u8; 4096])]);
        std::fs::write(d2.join("vm.snap"), b"state2").unwrap();
        sparse(
            &d2.join("mem.diff"),
            MIB,
            &[(4096, &[3u8; 4096]), (0, &[4u8; 4096])],
        );
        let base = files(&d0, SnapshotKind::Full, "mem.snap");
        let s1 = files(&d1, SnapshotKind::Diff, "mem.diff");
        let s2 = files(&d2, SnapshotKind::Diff, "mem.diff");
        let merged = apply_diff(&base, &s1).unwrap();
        let merged = apply_diff(&merged, &s2).unwrap();
        assert_eq!(merged.kind, SnapshotKind::Full);
        assert_eq!(std::fs::read(d0.join("vm.snap")).unwrap(), b"state2");
        let mem = std::fs::read(d0.join("mem.snap")).unwrap();
        assert!(mem[..4096].iter().all(|&b| b == 4));
        assert!(mem[4096..8192].iter().all(|&b| b == 3));
        assert!(mem[8192..].iter().all(|&b| b == 1));
        assert_eq!(merged.size_bytes, 6 + MIB);
        // Wrong order / kinds are refused.
        assert!(apply_diff(&s1, &base).is_err());
        let mut other = s1.clone();
        other.mem_mib = 2;
        assert!(apply_diff(&base, &other).is_err());
    }
}
