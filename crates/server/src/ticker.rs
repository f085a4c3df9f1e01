//! The daemon's periodic jobs (the thermal manager, lifetimes, health)
//! share one shape: wait a period or the stop signal, then run a pass.

use std::time::Duration;

use tokio::sync::watch;

pub struct Ticker {
    period: Duration,
    stop: watch::Receiver<bool>,
}

impl Ticker {
    pub fn new(period: Duration, stop: watch::Receiver<bool>) -> Ticker {
        Ticker { period, stop }
    }

    /// Waits one period; false once the daemon is stopping (the job ends).
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(self.period) => {}
            _ = self.stop.changed() => return false,
        }
        !*self.stop.borrow()
    }
}
