//! Interface set-up done in-process with the classic `SIOC*` ioctls (no `ip`
//! binary may be assumed in a guest image).
//!
//! - `lo` is always brought up.
//! - eth0: the guest kernel normally configures it from `ip=` on the command line
//!   (`IP-Config: Complete`). This is the fallback for kernels that do not: if the
//!   interface lacks the wanted address, set address + netmask, bring it up and
//!   add the default route. `GuestConfig.net` overrides the command line.
//!
//! Link state is never checked: right after boot eth0 can report operstate
//! `down` for a couple of seconds while the carrier is already up, and that is
//! not a failure.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use bhatti_protocol::config::ConfigNet;

use super::GuestError;

// The kernel's small constants in the C types its structs use (AF_INET is
// 2, IFF_UP 0x1, IFF_RUNNING 0x40): the casts cannot truncate.
#[allow(clippy::cast_possible_truncation)]
const AF_INET: libc::sa_family_t = libc::AF_INET as libc::sa_family_t;
#[allow(clippy::cast_possible_truncation)]
const ARPHRD_ETHER: libc::sa_family_t = libc::ARPHRD_ETHER as libc::sa_family_t;
#[allow(clippy::cast_possible_truncation)]
const IFF_UP: libc::c_short = libc::IFF_UP as libc::c_short;
#[allow(clippy::cast_possible_truncation)]
const IFF_UP_RUNNING: libc::c_short = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;

/// Address configuration for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Interface name (`eth0` unless the command line names another).
    pub dev: String,
    /// The interface's own address.
    pub addr: Ipv4Addr,
    /// Its netmask (classful when `ip=` gives none).
    pub netmask: Ipv4Addr,
    /// The default route's gateway; `None`: no default route is added.
    pub gateway: Option<Ipv4Addr>,
}

const DEFAULT_DEV: &str = "eth0";

/// Parses the kernel's `ip=<client>:<server>:<gw>:<netmask>:<host>:<dev>:<autoconf>...`
/// from a command line. Forms without a static client address (`ip=dhcp`,
/// `ip=off`, ...) give `None`.
pub fn parse_cmdline_ip(cmdline: &str) -> Option<IpConfig> {
    let spec = cmdline
        .split_ascii_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix("ip="))?;
    let f: Vec<&str> = spec.split(':').collect();
    let addr: Ipv4Addr = f.first()?.parse().ok()?;
    let gateway = f.get(2).and_then(|g| g.parse().ok());
    let netmask = f
        .get(3)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| classful_mask(addr));
    let dev = f
        .get(5)
        .filter(|d| !d.is_empty())
        .map_or(DEFAULT_DEV, |d| d)
        .to_string();
    Some(IpConfig {
        dev,
        addr,
        netmask,
        gateway,
    })
}

/// What the kernel assumes when `ip=` carries no netmask.
fn classful_mask(a: Ipv4Addr) -> Ipv4Addr {
    match a.octets()[0] {
        0..=127 => Ipv4Addr::new(255, 0, 0, 0),
        128..=191 => Ipv4Addr::new(255, 255, 0, 0),
        _ => Ipv4Addr::new(255, 255, 255, 0),
    }
}

/// `GuestConfig.net` (`a.b.c.d/prefix` + gateway) as an [`IpConfig`] for eth0.
pub fn from_config(net: &ConfigNet) -> Result<IpConfig, GuestError> {
    let invalid = |what, value: &str| GuestError::Invalid {
        what,
        value: value.to_string(),
    };
    let (a, p) = net
        .address
        .split_once('/')
        .unwrap_or((net.address.as_str(), "32"));
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| invalid("net.address", &net.address))?;
    let prefix: u32 = p
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| invalid("net.address prefix", &net.address))?;
    let gateway = if net.gateway.is_empty() {
        None
    } else {
        Some(
            net.gateway
                .parse()
                .map_err(|_| invalid("net.gateway", &net.gateway))?,
        )
    };
    Ok(IpConfig {
        dev: DEFAULT_DEV.into(),
        addr,
        netmask: prefix_mask(prefix),
        gateway,
    })
}

/// The netmask of a `/prefix`; a prefix above 32 is taken as 32.
fn prefix_mask(prefix: u32) -> Ipv4Addr {
    // Prefix 0 shifts by 32, which `checked_shl` refuses: no bits set.
    Ipv4Addr::from(
        u32::MAX
            .checked_shl(32_u32.saturating_sub(prefix))
            .unwrap_or(0),
    )
}

/// Whether `/proc/net/route` already has a default route.
pub fn has_default_route(route_table: &str) -> bool {
    route_table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 7 && f[1] == "00000000" && f[7] == "00000000"
    })
}

/// Brings `lo` up.
pub fn loopback_up() -> Result<(), GuestError> {
    let s = inet_socket()?;
    set_up(&s, "lo")
}

/// Makes `cfg.dev` carry `cfg.addr` and, with a gateway, a default route.
/// Returns a short description of what had to be done.
pub fn apply(cfg: &IpConfig) -> Result<String, GuestError> {
    let s = inet_socket()?;
    let mut done = Vec::new();
    let current = get_addr(&s, &cfg.dev)?;
    if current != Some(cfg.addr) {
        set_addr(&s, &cfg.dev, libc::SIOCSIFADDR, cfg.addr)?;
        set_addr(&s, &cfg.dev, libc::SIOCSIFNETMASK, cfg.netmask)?;
        done.push(format!("address {}/{}", cfg.addr, cfg.netmask));
    }
    if !is_up(&s, &cfg.dev)? {
        set_up(&s, &cfg.dev)?;
        done.push("link up".into());
    }
    if let Some(gw) = cfg.gateway {
        let table = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
        if !has_default_route(&table) {
            add_default_route(&s, &cfg.dev, gw)?;
            done.push(format!("default via {gw}"));
        }
    }
    Ok(if done.is_empty() {
        format!("{} already configured", cfg.dev)
    } else {
        format!("{}: {}", cfg.dev, done.join(", "))
    })
}

/// Parses `aa:bb:cc:dd:ee:ff` as a unicast MAC address.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    // No seventh octet, and not a multicast (or broadcast) address.
    (parts.next().is_none() && mac[0] & 1 == 0).then_some(mac)
}

/// Gives `dev` the hardware address `mac` while it stays up. A virtio NIC
/// takes it live (and tells the device, which filters by it); a NIC that
/// cannot refuses with `EBUSY`.
pub fn set_mac(dev: &str, mac: [u8; 6]) -> Result<(), GuestError> {
    let s = inet_socket()?;
    let mut r = ifreq(dev)?;
    // SAFETY: sockaddr is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = ARPHRD_ETHER;
    for (d, b) in sa.sa_data.iter_mut().zip(mac) {
        *d = libc::c_char::from_ne_bytes([b]);
    }
    r.ifr_ifru.ifru_hwaddr = sa;
    ioctl(&s, libc::SIOCSIFHWADDR, (&mut r as *mut libc::ifreq).cast())
        .map_err(sys(format!("set {dev}'s MAC address")))
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestError {
    let what = what.into();
    move |source| GuestError::Io { what, source }
}

fn inet_socket() -> Result<OwnedFd, GuestError> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(sys("socket(AF_INET)")(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(dev: &str) -> Result<libc::ifreq, GuestError> {
    let name = dev.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(GuestError::Invalid {
            what: "interface name",
            value: dev.into(),
        });
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    Ok(r)
}

fn ioctl(s: &OwnedFd, req: libc::c_ulong, arg: *mut libc::c_void) -> std::io::Result<()> {
    // SAFETY: callers pass a pointer to the struct type `req` expects, valid for
    // the duration of the call.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), req, arg) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sockaddr_in(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: AF_INET,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn from_sockaddr(sa: libc::sockaddr) -> Option<Ipv4Addr> {
    if sa.sa_family != AF_INET {
        return None;
    }
    // SAFETY: same size, plain data; the family says it is a sockaddr_in.
    let sin = unsafe { std::mem::transmute::<libc::sockaddr, libc::sockaddr_in>(sa) };
    Some(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()))
}

fn get_addr(s: &OwnedFd, dev: &str) -> Result<Option<Ipv4Addr>, GuestError> {
    let mut r = ifreq(dev)?;
    match ioctl(s, libc::SIOCGIFADDR, (&mut r as *mut libc::ifreq).cast()) {
        // SAFETY: SIOCGIFADDR filled the address member.
        Ok(()) => Ok(from_sockaddr(unsafe { r.ifr_ifru.ifru_addr })),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(None),
        Err(e) => Err(sys(format!("SIOCGIFADDR {dev}"))(e)),
    }
}

fn set_addr(s: &OwnedFd, dev: &str, req: libc::c_ulong, a: Ipv4Addr) -> Result<(), GuestError> {
    let mut r = ifreq(dev)?;
    r.ifr_ifru.ifru_addr = sockaddr_in(a);
    ioctl(s, req, (&mut r as *mut libc::ifreq).cast())
        .map_err(sys(format!("set {a} on {dev} (ioctl {req:#x})")))
}

fn flags(s: &OwnedFd, dev: &str) -> Result<libc::c_short, GuestError> {
    let mut r = ifreq(dev)?;
    ioctl(s, libc::SIOCGIFFLAGS, (&mut r as *mut libc::ifreq).cast())
        .map_err(sys(format!("SIOCGIFFLAGS {dev}")))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    Ok(unsafe { r.ifr_ifru.ifru_flags })
}

fn is_up(s: &OwnedFd, dev: &str) -> Result<bool, GuestError> {
    Ok(flags(s, dev)? & IFF_UP != 0)
}

fn set_up(s: &OwnedFd, dev: &str) -> Result<(), GuestError> {
    let f = flags(s, dev)?;
    if f & IFF_UP != 0 {
        return Ok(());
    }
    let mut r = ifreq(dev)?;
    r.ifr_ifru.ifru_flags = f | IFF_UP_RUNNING;
    ioctl(s, libc::SIOCSIFFLAGS, (&mut r as *mut libc::ifreq).cast())
        .map_err(sys(format!("SIOCSIFFLAGS {dev} up")))
}

/// The kernel's `struct rtentry` (not exported by the libc crate for glibc).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn add_default_route(s: &OwnedFd, dev: &str, gw: Ipv4Addr) -> Result<(), GuestError> {
    let dev_c = CString::new(dev).map_err(|_| GuestError::Invalid {
        what: "interface name",
        value: dev.into(),
    })?;
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gw),
        rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev_c.as_ptr().cast_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    match ioctl(s, libc::SIOCADDRT, (&mut rt as *mut RtEntry).cast()) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(sys(format!("add default route via {gw} dev {dev}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_as_six_unicast_octets() {
        assert_eq!(
            parse_mac("02:ab:00:10:ff:7e"),
            Some([0x02, 0xab, 0x00, 0x10, 0xff, 0x7e])
        );
        for bad in [
            "",
            "02:ab:00:10:ff",
            "02:ab:00:10:ff:7e:01",
            "03:ab:00:10:ff:7e",
            "ff:ff:ff:ff:ff:ff",
            "2:ab:00:10:ff:7e0",
            "02-ab-00-10-ff-7e",
            "0g:ab:00:10:ff:7e",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_kernel_ip_param() {
        let c = "console=ttyS0 root=/dev/vda ip=172.31.255.2::172.31.255.1:255.255.255.252::eth0:off quiet";
        assert_eq!(
            parse_cmdline_ip(c),
            Some(IpConfig {
                dev: "eth0".into(),
                addr: Ipv4Addr::new(172, 31, 255, 2),
                netmask: Ipv4Addr::new(255, 255, 255, 252),
                gateway: Some(Ipv4Addr::new(172, 31, 255, 1)),
            })
        );
    }

    #[test]
    fn ip_param_defaults_and_non_static_forms() {
        let c = parse_cmdline_ip("ip=10.0.0.5").expect("parse");
        assert_eq!(c.dev, "eth0");
        assert_eq!(c.netmask, Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(c.gateway, None);
        assert_eq!(parse_cmdline_ip("ip=dhcp"), None);
        assert_eq!(parse_cmdline_ip("ip=off"), None);
        assert_eq!(parse_cmdline_ip("console=ttyS0"), None);
        assert_eq!(parse_cmdline_ip("ip=::::"), None);
    }

    #[test]
    fn config_net_overrides() {
        let c = from_config(&ConfigNet {
            address: "10.9.0.2/24".into(),
            gateway: "10.9.0.1".into(),
        })
        .expect("valid");
        assert_eq!(c.addr, Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(c.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 9, 0, 1)));
        for bad in ["10.9.0.2/33", "nope/24", "10.9.0.2/x"] {
            assert!(from_config(&ConfigNet {
                address: bad.into(),
                gateway: String::new()
            })
            .is_err());
        }
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(prefix_mask(30), Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(prefix_mask(32), Ipv4Addr::BROADCAST);
        assert_eq!(prefix_mask(40), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn default_route_detection() {
        let hdr =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        let net = "eth0\t00FC1FAC\t00000000\t0001\t0\t0\t0\tFCFFFFFF\t0\t0\t0\n";
        let def = "eth0\t00000000\t01FF1FAC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert!(!has_default_route(&format!("{hdr}{net}")));
        assert!(has_default_route(&format!("{hdr}{net}{def}")));
    }

    #[test]
    fn sockaddr_round_trip() {
        let a = Ipv4Addr::new(172, 31, 255, 2);
        assert_eq!(from_sockaddr(sockaddr_in(a)), Some(a));
    }
}
