//! External address pool: one /24 per owner, one /32 per sandbox.
//!
//! Owner subnet index `i` (1..=max) owns `pool.base + i*256 / 24`; with the
//! default pool `10.128.0.0/9` that is `10.(128 + i/256).(i%256).0/24`, so
//! index 0's /24 is never used. A sandbox gets a slot `.2`–`.254` of its
//! owner's /24 (lowest free first, so released addresses are reused).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::cidr::Ipv4Cidr;
use super::consts::{FIRST_SLOT, LAST_SLOT, MAX_POOL_PREFIX, MIN_POOL_PREFIX};
use super::NetError;

/// A 256-bit slot bitmap for one owner /24.
type Slots = [u64; 4];

fn is_set(s: &Slots, slot: u8) -> bool {
    s[usize::from(slot / 64)] & (1u64 << (slot % 64)) != 0
}

fn set(s: &mut Slots, slot: u8, on: bool) {
    let bit = 1u64 << (slot % 64);
    if on {
        s[usize::from(slot / 64)] |= bit;
    } else {
        s[usize::from(slot / 64)] &= !bit;
    }
}

#[derive(Debug)]
pub(crate) struct AddressPool {
    pool: Ipv4Cidr,
    owners: HashMap<u16, Slots>,
}

impl AddressPool {
    pub(crate) fn new(pool: Ipv4Cidr) -> Result<Self, NetError> {
        if !(MIN_POOL_PREFIX..=MAX_POOL_PREFIX).contains(&pool.prefix()) {
            return Err(NetError::InvalidConfig(format!(
                "pool {pool}: prefix must be /{MIN_POOL_PREFIX}../{MAX_POOL_PREFIX}"
            )));
        }
        Ok(AddressPool {
            pool,
            owners: HashMap::new(),
        })
    }

    /// Highest valid owner index: 2^(24 − prefix) − 1, the low
    /// 24 − prefix bits set (the prefix is 8..=23, checked in `new`).
    pub(crate) fn max_owner_index(&self) -> u32 {
        u32::MAX
            .checked_shr(8u32.saturating_add(u32::from(self.pool.prefix())))
            .unwrap_or(0)
    }

    /// The /24 of an owner.
    pub(crate) fn owner_subnet(&self, owner_index: u16) -> Result<Ipv4Cidr, NetError> {
        let max = self.max_owner_index();
        if owner_index == 0 || u32::from(owner_index) > max {
            return Err(NetError::InvalidOwnerIndex {
                index: u32::from(owner_index),
                max,
            });
        }
        // The pool has no host bits set and the index fits in them (checked
        // above), so OR is the sum base + index * 256.
        let base = u32::from(self.pool.addr()) | (u32::from(owner_index) << 8);
        Ok(Ipv4Cidr::new_unchecked(Ipv4Addr::from(base), 24))
    }

    /// The owner and slot of a sandbox address, if it is one.
    pub(crate) fn locate(&self, ip: Ipv4Addr) -> Option<(u16, u8)> {
        if !self.pool.contains(ip) {
            return None;
        }
        let offset = u32::from(ip).checked_sub(u32::from(self.pool.addr()))?;
        let owner = u16::try_from(offset >> 8).ok()?;
        let slot = u8::try_from(offset & 0xff).ok()?;
        (owner != 0 && (FIRST_SLOT..=LAST_SLOT).contains(&slot)).then_some((owner, slot))
    }

    /// Lowest free address of the owner's /24.
    pub(crate) fn allocate(&mut self, owner_index: u16) -> Result<Ipv4Addr, NetError> {
        let subnet = self.owner_subnet(owner_index)?;
        let slots = self.owners.entry(owner_index).or_default();
        let slot = (FIRST_SLOT..=LAST_SLOT)
            .find(|&s| !is_set(slots, s))
            .ok_or(NetError::PoolExhausted {
                owner_index,
                subnet,
            })?;
        set(slots, slot, true);
        // The slot is the low byte of the owner's /24.
        Ok(Ipv4Addr::from(u32::from(subnet.addr()) | u32::from(slot)))
    }

    fn check_owner(&self, owner_index: u16, ip: Ipv4Addr) -> Result<u8, NetError> {
        let subnet = self.owner_subnet(owner_index)?;
        match self.locate(ip) {
            Some((owner, slot)) if owner == owner_index => Ok(slot),
            _ => Err(NetError::AddressOutsideOwner {
                ip,
                owner_index,
                subnet,
            }),
        }
    }

    /// Claims exactly `ip` (restore of a snapshot with its old address).
    pub(crate) fn try_claim(&mut self, owner_index: u16, ip: Ipv4Addr) -> Result<(), NetError> {
        let slot = self.check_owner(owner_index, ip)?;
        let slots = self.owners.entry(owner_index).or_default();
        if is_set(slots, slot) {
            return Err(NetError::AddressInUse(ip));
        }
        set(slots, slot, true);
        Ok(())
    }

    /// Marks `ip` as used whether or not it already was (recovery).
    pub(crate) fn mark(&mut self, owner_index: u16, ip: Ipv4Addr) -> Result<(), NetError> {
        let slot = self.check_owner(owner_index, ip)?;
        set(self.owners.entry(owner_index).or_default(), slot, true);
        Ok(())
    }

    /// Frees `ip`; returns whether it was in use.
    pub(crate) fn release(&mut self, ip: Ipv4Addr) -> bool {
        let Some((owner, slot)) = self.locate(ip) else {
            return false;
        };
        let Some(slots) = self.owners.get_mut(&owner) else {
            return false;
        };
        let was = is_set(slots, slot);
        set(slots, slot, false);
        if slots.iter().all(|w| *w == 0) {
            self.owners.remove(&owner);
        }
        was
    }

    /// How many addresses the owner has in use.
    pub(crate) fn in_use(&self, owner_index: u16) -> u32 {
        self.owners
            .get(&owner_index)
            .map_or(0, |s| s.iter().map(|w| w.count_ones()).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn owner_subnets() {
        let p = AddressPool::new("10.128.0.0/9".parse().unwrap()).unwrap();
        assert_eq!(p.max_owner_index(), 32767);
        assert_eq!(p.owner_subnet(1).unwrap().to_string(), "10.128.1.0/24");
        assert_eq!(p.owner_subnet(255).unwrap().to_string(), "10.128.255.0/24");
        assert_eq!(p.owner_subnet(256).unwrap().to_string(), "10.129.0.0/24");
        assert_eq!(
            p.owner_subnet(32767).unwrap().to_string(),
            "10.255.255.0/24"
        );
        assert!(matches!(
            p.owner_subnet(0),
            Err(NetError::InvalidOwnerIndex {
                index: 0,
                max: 32767
            })
        ));
        assert!(p.owner_subnet(32768).is_err());
        let small = AddressPool::new("192.168.0.0/22".parse().unwrap()).unwrap();
        assert_eq!(small.max_owner_index(), 3);
        assert_eq!(small.owner_subnet(3).unwrap().to_string(), "192.168.3.0/24");
        assert!(small.owner_subnet(4).is_err());
        assert!(AddressPool::new("10.0.0.0/24".parse().unwrap()).is_err());
        assert!(AddressPool::new("0.0.0.0/0".parse().unwrap()).is_err());
    }

    #[test]
    fn allocate_release_reuse() {
        let mut p = AddressPool::new("10.128.0.0/9".parse().unwrap()).unwrap();
        assert_eq!(p.allocate(1).unwrap(), ip("10.128.1.2"));
        assert_eq!(p.allocate(1).unwrap(), ip("10.128.1.3"));
        assert_eq!(p.allocate(1).unwrap(), ip("10.128.1.4"));
        assert_eq!(p.allocate(300).unwrap(), ip("10.129.44.2"));
        assert_eq!(p.in_use(1), 3);
        assert!(p.release(ip("10.128.1.3")));
        assert!(!p.release(ip("10.128.1.3")), "double release");
        assert_eq!(
            p.allocate(1).unwrap(),
            ip("10.128.1.3"),
            "lowest free reused"
        );
        assert_eq!(p.allocate(1).unwrap(), ip("10.128.1.5"));
        // Releasing foreign addresses is a no-op.
        assert!(!p.release(ip("192.0.2.1")));
        assert!(!p.release(ip("10.128.1.1")));
    }

    #[test]
    fn claim_and_mark() {
        let mut p = AddressPool::new("10.128.0.0/9".parse().unwrap()).unwrap();
        p.try_claim(7, ip("10.128.7.9")).unwrap();
        assert!(matches!(
            p.try_claim(7, ip("10.128.7.9")),
            Err(NetError::AddressInUse(_))
        ));
        // Wrong owner, reserved slots, outside the pool.
        for bad in [
            "10.128.8.9",
            "10.128.7.0",
            "10.128.7.1",
            "10.128.7.255",
            "10.0.7.9",
        ] {
            assert!(
                matches!(
                    p.try_claim(7, ip(bad)),
                    Err(NetError::AddressOutsideOwner { .. })
                ),
                "{bad}"
            );
        }
        p.mark(7, ip("10.128.7.9")).unwrap();
        p.mark(7, ip("10.128.7.2")).unwrap();
        assert_eq!(p.in_use(7), 2);
        assert_eq!(p.allocate(7).unwrap(), ip("10.128.7.3"));
        assert!(p.mark(7, ip("10.128.7.1")).is_err());
    }

    #[test]
    fn exhaustion() {
        let mut p = AddressPool::new("10.128.0.0/9".parse().unwrap()).unwrap();
        for n in 2..=254u8 {
            assert_eq!(p.allocate(5).unwrap(), Ipv4Addr::new(10, 128, 5, n));
        }
        let err = p.allocate(5).unwrap_err();
        assert!(matches!(
            err,
            NetError::PoolExhausted { owner_index: 5, .. }
        ));
        assert!(err.to_string().contains("exhausted"), "{err}");
        // Other owners are unaffected; a release makes room again.
        assert_eq!(p.allocate(6).unwrap(), ip("10.128.6.2"));
        assert!(p.release(ip("10.128.5.100")));
        assert_eq!(p.allocate(5).unwrap(), ip("10.128.5.100"));
        assert!(p.allocate(5).is_err());
    }
}
