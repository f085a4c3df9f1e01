//! Shutdown: PID 1 never exits (the kernel would panic); it syncs and powers the
//! VM off with `reboot(2)` instead.

use std::time::Duration;

use nix::sys::reboot::{reboot, set_cad_enabled, RebootMode};
use tokio::signal::unix::{signal, SignalKind};

/// Ctrl-Alt-Del then sends SIGINT to PID 1 instead of rebooting at once, so it
/// goes through the same orderly path as SIGTERM.
pub fn disable_ctrl_alt_del() {
    if let Err(e) = set_cad_enabled(false) {
        tracing::warn!(error = %e, "reboot(CAD_OFF) failed");
    }
}

/// Flushes the filesystems and powers off. Never returns: if `reboot(2)` fails
/// (not PID 1 / no privilege), the thread parks forever rather than exit.
pub fn power_off(reason: &str) -> ! {
    println!("lohar: powering off ({reason})");
    nix::unistd::sync();
    match reboot(RebootMode::RB_POWER_OFF) {
        Ok(never) => match never {},
        Err(e) => eprintln!("lohar: reboot(RB_POWER_OFF) failed: {e}"),
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Installs the SIGTERM/SIGINT handlers now and returns a future that resolves
/// (naming the signal) when one arrives. Without handlers (registration failed)
/// it never resolves: PID 1 simply ignores signals it has no handler for.
pub fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut t), Ok(mut i)) => tokio::select! {
                _ = t.recv() => "SIGTERM",
                _ = i.recv() => "SIGINT",
            },
            (t, i) => {
                for e in [t.err(), i.err()].into_iter().flatten() {
                    tracing::error!(error = %e, "cannot listen for shutdown signals");
                }
                std::future::pending().await
            }
        }
    }
}
