//! The host's TSC frequency, for the guest's `tsc_early_khz=`.
//!
//! Without it a TCG guest on a loaded host can hang while calibrating its
//! TSC. Under both TCG and KVM the guest's TSC ticks at the host's TSC
//! rate, so the host's own value is the right one. The lookup order is the
//! same as `host_tsc_khz` in `scripts/guest/lib.sh`:
//!
//! 1. `$BHATTI_TSC_KHZ` (explicit override, an integer in kHz);
//! 2. `/sys/devices/system/cpu/cpu0/tsc_freq_khz` (some kernels have it);
//! 3. the kernel log: the last "tsc: Refined TSC clocksource calibration: X
//!    MHz", else "tsc: Detected X MHz processor" (read from `/dev/kmsg`,
//!    falling back to `journalctl -k -b` when the boot messages have left
//!    the ring buffer);
//! 4. `/proc/cpuinfo` "cpu MHz", only with `constant_tsc` and no cpufreq
//!    driver (otherwise it is the current core clock, not the TSC rate).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::OnceLock;

use super::VmmError;

/// Environment override, kHz.
pub const TSC_ENV: &str = "BHATTI_TSC_KHZ";
const SYSFS_TSC: &str = "/sys/devices/system/cpu/cpu0/tsc_freq_khz";
const CPUFREQ_DIR: &str = "/sys/devices/system/cpu/cpu0/cpufreq";
/// Upper bound on what is read from the kernel log.
const KMSG_MAX_BYTES: usize = 8 << 20;

/// The host TSC frequency in kHz, looked up once per process (see the
/// module docs for the order).
pub fn host_tsc_khz() -> Result<u64, VmmError> {
    static CACHE: OnceLock<Result<u64, String>> = OnceLock::new();
    CACHE.get_or_init(lookup).clone().map_err(VmmError::Tsc)
}

fn lookup() -> Result<u64, String> {
    if let Ok(v) = std::env::var(TSC_ENV) {
        return parse_khz(&v)
            .ok_or_else(|| format!("{TSC_ENV}={v:?} is not a positive integer (kHz)"));
    }
    if let Some(v) = std::fs::read_to_string(SYSFS_TSC)
        .ok()
        .and_then(|s| parse_khz(&s))
    {
        return Ok(v);
    }
    if let Some(v) = read_kmsg().as_deref().and_then(tsc_from_kernel_log) {
        return Ok(v);
    }
    if let Some(v) = journal_kernel_log()
        .as_deref()
        .and_then(tsc_from_kernel_log)
    {
        return Ok(v);
    }
    let cpufreq = std::path::Path::new(CPUFREQ_DIR).exists();
    if let Some(v) = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| tsc_from_cpuinfo(&s, cpufreq))
    {
        return Ok(v);
    }
    Err(format!(
        "not in {SYSFS_TSC}, the kernel log or /proc/cpuinfo; set {TSC_ENV} (kHz)"
    ))
}

fn parse_khz(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&v| v > 0)
}

/// `"2599.998"` → 2599998, `"2600"` → 2600000 (the kernel prints kHz as
/// MHz with three decimals).
pub(crate) fn mhz_to_khz(mhz: &str) -> Option<u64> {
    let mhz = mhz.trim();
    let (int, frac) = mhz.split_once('.').unwrap_or((mhz, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut frac3: String = frac.chars().take(3).collect();
    while frac3.len() < 3 {
        frac3.push('0');
    }
    let v = int
        .parse::<u64>()
        .ok()?
        .checked_mul(1000)?
        .checked_add(frac3.parse::<u64>().ok()?)?;
    (v > 0).then_some(v)
}

/// The number right before `" MHz"` following `marker` on the last line
/// that contains `marker`.
fn last_mhz_after(log: &str, marker: &str) -> Option<u64> {
    log.lines().rev().find_map(|line| {
        let (_, rest) = line.split_once(marker)?;
        let num = rest.trim_start().split(' ').next()?;
        if !rest.trim_start()[num.len()..]
            .trim_start()
            .starts_with("MHz")
        {
            return None;
        }
        mhz_to_khz(num)
    })
}

pub(crate) fn tsc_from_kernel_log(log: &str) -> Option<u64> {
    last_mhz_after(log, "Refined TSC clocksource calibration:")
        .or_else(|| last_mhz_after(log, "tsc: Detected"))
}

pub(crate) fn tsc_from_cpuinfo(cpuinfo: &str, cpufreq_active: bool) -> Option<u64> {
    if cpufreq_active {
        return None;
    }
    let constant = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "constant_tsc"));
    if !constant {
        return None;
    }
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    mhz_to_khz(line.split(':').nth(1)?)
}

/// The kernel ring buffer through `/dev/kmsg` (non-blocking: one record
/// per read, `EAGAIN` at the end). Needs root or `dmesg_restrict=0`.
fn read_kmsg() -> Option<String> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    while out.len() < KMSG_MAX_BYTES {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // "prio,seq,ts,flags;message\n" (+ continuation lines).
                let rec = String::from_utf8_lossy(&buf[..n]);
                let msg = rec.split_once(';').map_or(&*rec, |(_, m)| m);
                out.push_str(msg.lines().next().unwrap_or(""));
                out.push('\n');
            }
            // EPIPE: a record was overwritten while reading; keep going.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    Some(out)
}

fn journal_kernel_log() -> Option<String> {
    let out = std::process::Command::new("journalctl")
        .args(["-k", "-b", "-q", "--no-pager"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mhz() {
        assert_eq!(mhz_to_khz("2599.998"), Some(2_599_998));
        assert_eq!(mhz_to_khz("2600"), Some(2_600_000));
        assert_eq!(mhz_to_khz("2600.5"), Some(2_600_500));
        assert_eq!(mhz_to_khz("2600.12345"), Some(2_600_123));
        assert_eq!(mhz_to_khz(" 3000.000 "), Some(3_000_000));
        assert_eq!(mhz_to_khz(""), None);
        assert_eq!(mhz_to_khz("abc"), None);
        assert_eq!(mhz_to_khz("1.x"), None);
        assert_eq!(mhz_to_khz("0"), None);
    }

    #[test]
    fn kernel_log() {
        let log = "[    0.000063] tsc: Detected 2599.998 MHz processor\n\
                   [    0.405750] clocksource: tsc: mask: 0xffffffffffffffff\n";
        assert_eq!(tsc_from_kernel_log(log), Some(2_599_998));
        let refined =
            format!("{log}[    1.5] tsc: Refined TSC clocksource calibration: 2600.001 MHz\n");
        assert_eq!(tsc_from_kernel_log(&refined), Some(2_600_001));
        assert_eq!(tsc_from_kernel_log("nothing here\n"), None);
    }

    #[test]
    fn cpuinfo() {
        let ci =
            "processor\t: 0\ncpu MHz\t\t: 2599.998\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n";
        assert_eq!(tsc_from_cpuinfo(ci, false), Some(2_599_998));
        assert_eq!(tsc_from_cpuinfo(ci, true), None);
        let no_const = "cpu MHz\t\t: 2599.998\nflags\t\t: fpu tsc\n";
        assert_eq!(tsc_from_cpuinfo(no_const, false), None);
    }

    #[test]
    fn khz() {
        assert_eq!(parse_khz("2599998\n"), Some(2_599_998));
        assert_eq!(parse_khz("-1"), None);
        assert_eq!(parse_khz("0"), None);
    }
}
