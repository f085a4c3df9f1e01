//! Warm and hot: parking a VM (paused, its memory ballooned down) and
//! waking it again.

use super::*;

/// Hot → warm: vCPUs stop, then the balloon takes half the guest's memory back
/// for the host (where the VMM has one; QEMU here has none).
pub(super) async fn park(sb: &Sandbox, vm: &dyn Vm) -> Result<()> {
    sb.close_idle_agent();
    vm.pause().await.map_err(EngineError::Vmm)?;
    sb.set(LifeState::Running(Thermal::Warm));
    balloon(sb, vm, sb.detail.memory_mb / 2).await;
    Ok(())
}

/// Warm → hot: the balloon is deflated first (docs/engine.md, "Thermal
/// states"; the reference left it inflated and relied on deflate-on-OOM),
/// then the vCPUs run again.
pub(super) async fn wake(sb: &Sandbox, vm: &dyn Vm) -> Result<()> {
    balloon(sb, vm, 0).await;
    vm.resume().await.map_err(EngineError::Vmm)?;
    sb.set(LifeState::Running(Thermal::Hot));
    Ok(())
}

/// Best effort: a balloon is an optimisation, never a reason to fail a
/// thermal transition.
async fn balloon(sb: &Sandbox, vm: &dyn Vm, mib: u32) {
    match vm.set_balloon(mib).await {
        Ok(()) | Err(crate::vmm::VmmError::Unsupported { .. }) => {}
        Err(e) => tracing::warn!(id = %sb.id, mib, error = %e, "balloon target not set"),
    }
}
