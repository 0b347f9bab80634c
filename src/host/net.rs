//! Network interfaces: state, addresses, counters and Wi-Fi signal.
//!
//! Everything comes from procfs and sysfs text so that fixtures can stand in for a Pi. IPv6
//! addresses are listed per interface in `/proc/net/if_inet6`, but no text file lists IPv4
//! addresses per interface: the local addresses are the `/32 host LOCAL` leaves of
//! `/proc/net/fib_trie`, and each is attributed to the interface whose directly connected
//! route in `/proc/net/route` contains it, which also gives its prefix length.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use schemars::JsonSchema;
use serde::Serialize;

use super::{parse_error, read_optional_text, read_text, Result, Roots};

/// Signal of a wireless interface, from `/proc/net/wireless`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Wireless {
    /// Driver-specific link quality (for the Raspberry Pi's brcmfmac driver, 0 to 70 or so).
    pub link_quality: f64,
    /// Received signal level in dBm; above -60 is good, below -75 is poor.
    pub signal_dbm: f64,
    /// Noise level in dBm, when the driver measures it.
    pub noise_dbm: Option<f64>,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Interface {
    /// Interface name, such as "eth0", "wlan0" or "lo".
    pub name: String,
    /// Hardware (MAC) address; absent for interfaces without one, such as loopback.
    pub mac: Option<String>,
    /// Kernel operational state: "up", "down", "dormant", "unknown" (loopback, tunnels)...
    pub operstate: String,
    /// Whether the interface can pass traffic: operationally up, or administratively up with
    /// an unknown state as loopback always is.
    pub up: bool,
    /// Whether a link is detected (cable plugged in, Wi-Fi associated); absent while the
    /// interface is administratively down.
    pub carrier: Option<bool>,
    /// Maximum transmission unit in bytes.
    pub mtu: Option<u32>,
    /// Negotiated link speed in Mbit/s; absent for Wi-Fi, virtual interfaces and no link.
    pub speed_mbps: Option<i64>,
    /// IPv4 addresses in CIDR form, such as "192.168.1.23/24".
    pub ipv4: Vec<String>,
    /// IPv6 addresses in CIDR form, such as "fe80::1/64".
    pub ipv6: Vec<String>,
    /// Bytes received since the interface appeared.
    pub rx_bytes: u64,
    /// Bytes sent since the interface appeared.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Packets dropped before sending.
    pub tx_dropped: u64,
    /// Wi-Fi signal, for wireless interfaces.
    pub wireless: Option<Wireless>,
}

/// Reads every interface of `<proc>/net/dev`, sorted by name.
pub fn read_interfaces(roots: &Roots) -> Result<Vec<Interface>> {
    let net = roots.proc.join("net");
    let dev_path = net.join("dev");
    let counters = parse_net_dev(&read_text(&dev_path)?, &dev_path)?;

    let wireless_path = net.join("wireless");
    let wireless = match read_optional_text(&wireless_path)? {
        Some(text) => parse_wireless(&text, &wireless_path)?,
        None => HashMap::new(),
    };
    let inet6_path = net.join("if_inet6");
    let ipv6 = match read_optional_text(&inet6_path)? {
        // Absent when IPv6 is disabled on the kernel command line.
        Some(text) => parse_if_inet6(&text, &inet6_path)?,
        None => HashMap::new(),
    };
    let ipv4 = read_ipv4(roots)?;

    let mut interfaces: Vec<Interface> = counters
        .into_iter()
        .map(|c| {
            let sys = roots.sys.join("class/net").join(&c.name);
            let operstate = sys_attr(&sys.join("operstate")).unwrap_or_else(|| "unknown".to_string());
            let admin_up = sys_attr(&sys.join("flags"))
                .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
                .map(|flags| flags & IFF_UP != 0);
            let up = operstate == "up" || (operstate == "unknown" && admin_up.unwrap_or(false));
            Interface {
                mac: sys_attr(&sys.join("address")).filter(|m| is_hardware_address(m)),
                up,
                carrier: sys_attr(&sys.join("carrier")).and_then(|c| match c.as_str() {
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => None,
                }),
                mtu: sys_attr(&sys.join("mtu")).and_then(|m| m.parse().ok()),
                // The kernel reports -1 (or a huge unsigned value) when the speed is unknown.
                speed_mbps: sys_attr(&sys.join("speed"))
                    .and_then(|s| s.parse::<i64>().ok())
                    .filter(|s| *s > 0 && *s < i64::from(u32::MAX)),
                ipv4: ipv4.get(&c.name).cloned().unwrap_or_default(),
                ipv6: ipv6.get(&c.name).cloned().unwrap_or_default(),
                wireless: wireless.get(&c.name).cloned(),
                operstate,
                name: c.name,
                rx_bytes: c.rx_bytes,
                tx_bytes: c.tx_bytes,
                rx_packets: c.rx_packets,
                tx_packets: c.tx_packets,
                rx_errors: c.rx_errors,
                tx_errors: c.tx_errors,
                rx_dropped: c.rx_dropped,
                tx_dropped: c.tx_dropped,
            }
        })
        .collect();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(interfaces)
}

const IFF_UP: u32 = 0x1;

/// Loopback and some tunnels show an all-zero (or empty) address: they have no hardware.
fn is_hardware_address(address: &str) -> bool {
    address.chars().any(|c| c.is_ascii_hexdigit() && c != '0')
}

/// A sysfs attribute of an interface, `None` when it cannot be read: `carrier` and `speed`
/// fail with EINVAL while the link is down, and Wi-Fi drivers refuse `speed` entirely.
fn sys_attr(path: &Path) -> Option<String> {
    match std::fs::read(path) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).trim().to_string()),
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::debug!("cannot read {}: {e}", path.display());
            }
            None
        }
    }
}

/// The counters of one `/proc/net/dev` line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DevCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The counters of every interface in `<proc>/net/dev`, in the file's order, and nothing
/// else: a small part of the cost of [`read_interfaces`], which also reads each interface's
/// attributes and addresses. For monitoring, which reads them often.
pub fn read_counters(roots: &Roots) -> Result<Vec<DevCounters>> {
    let path = roots.proc.join("net/dev");
    parse_net_dev(&read_text(&path)?, &path)
}

fn parse_net_dev(text: &str, path: &Path) -> Result<Vec<DevCounters>> {
    let mut interfaces = Vec::new();
    // The first two lines are column headers.
    for line in text.lines().skip(2) {
        if line.trim().is_empty() {
            continue;
        }
        // Interface names cannot contain ':', and old kernels glued large counters to it.
        let (name, rest) =
            line.split_once(':').ok_or_else(|| parse_error(path, format!("no interface name on line {line:?}")))?;
        let numbers = rest
            .split_whitespace()
            .map(|n| n.parse::<u64>())
            .collect::<std::result::Result<Vec<u64>, _>>()
            .map_err(|_| parse_error(path, format!("non-numeric counter on line {line:?}")))?;
        if numbers.len() < 16 {
            return Err(parse_error(path, format!("expected 16 counters on line {line:?}")));
        }
        interfaces.push(DevCounters {
            name: name.trim().to_string(),
            rx_bytes: numbers[0],
            rx_packets: numbers[1],
            rx_errors: numbers[2],
            rx_dropped: numbers[3],
            tx_bytes: numbers[8],
            tx_packets: numbers[9],
            tx_errors: numbers[10],
            tx_dropped: numbers[11],
        });
    }
    Ok(interfaces)
}

fn parse_wireless(text: &str, path: &Path) -> Result<HashMap<String, Wireless>> {
    let mut interfaces = HashMap::new();
    for line in text.lines().skip(2) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || parse_error(path, format!("unexpected line {line:?}"));
        let (name, rest) = line.split_once(':').ok_or_else(bad)?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let [_status, link, level, noise, ..] = fields.as_slice() else {
            return Err(bad());
        };
        // Values carry a trailing '.' when the driver marks them as updated.
        let number = |s: &str| s.trim_end_matches('.').parse::<f64>().map_err(|_| bad());
        let noise = number(noise)?;
        interfaces.insert(
            name.trim().to_string(),
            Wireless {
                link_quality: number(link)?,
                signal_dbm: number(level)?,
                // -256 is what drivers that do not measure noise report.
                noise_dbm: (noise > -256.0 && noise < 0.0).then_some(noise),
            },
        );
    }
    Ok(interfaces)
}

fn parse_if_inet6(text: &str, path: &Path) -> Result<HashMap<String, Vec<String>>> {
    let mut addresses: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || parse_error(path, format!("unexpected line {line:?}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [hex, _index, prefix, _scope, _flags, name] = fields.as_slice() else {
            return Err(bad());
        };
        let address = u128::from_str_radix(hex, 16).ok().filter(|_| hex.len() == 32).ok_or_else(bad)?;
        let prefix = u8::from_str_radix(prefix, 16).map_err(|_| bad())?;
        addresses.entry(name.to_string()).or_default().push(format!("{}/{prefix}", Ipv6Addr::from(address)));
    }
    Ok(addresses)
}

/// IPv4 addresses by interface, in CIDR form.
fn read_ipv4(roots: &Roots) -> Result<HashMap<String, Vec<String>>> {
    let trie_path = roots.proc.join("net/fib_trie");
    let Some(trie) = read_optional_text(&trie_path)? else {
        return Ok(HashMap::new());
    };
    let locals = parse_fib_trie_locals(&trie, &trie_path)?;
    let route_path = roots.proc.join("net/route");
    let routes = match read_optional_text(&route_path)? {
        Some(text) => parse_routes(&text, &route_path)?,
        None => Vec::new(),
    };
    Ok(attribute_addresses(&locals, &routes))
}

/// The local addresses of the FIB: leaves (`|-- a.b.c.d`) carrying a `/32 host LOCAL` entry.
/// Each appears once per table, so duplicates are dropped, keeping trie order.
fn parse_fib_trie_locals(text: &str, path: &Path) -> Result<Vec<Ipv4Addr>> {
    let mut locals = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(address) = trimmed.strip_prefix("|-- ") {
            let address = address
                .trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| parse_error(path, format!("bad leaf address on line {line:?}")))?;
            leaf = Some(address);
        } else if trimmed.starts_with('/') {
            let words: Vec<&str> = trimmed.split_whitespace().collect();
            if let (Some(address), ["/32", "host", "LOCAL", ..]) = (leaf, words.as_slice()) {
                if !locals.contains(&address) {
                    locals.push(address);
                }
            }
        } else {
            // A table header ("Main:") or an inner node ("+-- 10.0.0.0/8 2 0 2").
            leaf = None;
        }
    }
    Ok(locals)
}

/// A directly connected IPv4 route: the subnet of an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    interface: String,
    destination: u32,
    mask: u32,
    metric: u32,
}

const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;

/// Parses `/proc/net/route`, keeping only routes without a gateway: those are the subnets
/// the machine's own interfaces sit on.
fn parse_routes(text: &str, path: &Path) -> Result<Vec<Route>> {
    let mut routes = Vec::new();
    for line in text.lines().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || parse_error(path, format!("unexpected line {line:?}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [interface, destination, _gateway, flags, _refcnt, _use, metric, mask, ..] = fields.as_slice() else {
            return Err(bad());
        };
        let hex = |s: &str| u32::from_str_radix(s, 16).map_err(|_| bad());
        let flags = hex(flags)?;
        if flags & RTF_UP == 0 || flags & RTF_GATEWAY != 0 {
            continue;
        }
        routes.push(Route {
            interface: interface.to_string(),
            destination: network_order(hex(destination)?),
            mask: network_order(hex(mask)?),
            metric: metric.parse().map_err(|_| bad())?,
        });
    }
    Ok(routes)
}

/// The kernel prints a network-order address as a native-endian integer (so 192.168.1.0
/// reads `0001A8C0` on a little-endian Pi); this gives back the address as a number whose
/// most significant byte is the first octet.
fn network_order(printed: u32) -> u32 {
    u32::from_be_bytes(printed.to_ne_bytes())
}

/// Attributes each local address to the interface whose connected route contains it, most
/// specific route first, then lowest metric. Loopback addresses have no route in the main
/// table and belong to `lo` with the /8 the kernel assigns.
///
/// When two interfaces sit on the same subnet (Ethernet and Wi-Fi on one LAN) these files
/// cannot tell which address is whose; both then go to the preferred route's interface.
fn attribute_addresses(locals: &[Ipv4Addr], routes: &[Route]) -> HashMap<String, Vec<String>> {
    let mut by_interface: HashMap<String, Vec<String>> = HashMap::new();
    for &address in locals {
        if address.is_loopback() {
            by_interface.entry("lo".to_string()).or_default().push(format!("{address}/8"));
            continue;
        }
        let value = u32::from(address);
        let best = routes
            .iter()
            .filter(|r| r.mask != 0 && value & r.mask == r.destination & r.mask)
            .min_by_key(|r| (std::cmp::Reverse(r.mask.count_ones()), r.metric));
        match best {
            Some(route) => by_interface
                .entry(route.interface.clone())
                .or_default()
                .push(format!("{address}/{}", route.mask.count_ones())),
            None => log::debug!("local address {address} matches no connected route"),
        }
    }
    by_interface
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::host::{fixture, HostError};

    fn by_name<'a>(interfaces: &'a [Interface], name: &str) -> &'a Interface {
        interfaces.iter().find(|i| i.name == name).unwrap()
    }

    #[test]
    fn reads_ethernet_wifi_and_loopback_of_a_pi4() {
        let interfaces = read_interfaces(&fixture("pi4")).unwrap();
        let names: Vec<_> = interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["eth0", "lo", "wlan0"]);

        let eth0 = by_name(&interfaces, "eth0");
        assert_eq!(eth0.mac.as_deref(), Some("dc:a6:32:3a:7b:01"));
        assert_eq!(eth0.operstate, "up");
        assert!(eth0.up);
        assert_eq!(eth0.carrier, Some(true));
        assert_eq!(eth0.mtu, Some(1500));
        assert_eq!(eth0.speed_mbps, Some(1000));
        assert_eq!(eth0.ipv4, vec!["192.168.1.23/24"]);
        assert_eq!(eth0.ipv6, vec!["2001:db8:1:0:dea6:32ff:fe3a:7b01/64", "fe80::dea6:32ff:fe3a:7b01/64"]);
        assert_eq!((eth0.rx_bytes, eth0.rx_packets, eth0.rx_dropped), (918273645, 812345, 12));
        assert_eq!((eth0.tx_bytes, eth0.tx_packets, eth0.tx_errors), (123456789, 456789, 0));
        assert_eq!(eth0.wireless, None);

        let wlan0 = by_name(&interfaces, "wlan0");
        assert_eq!(wlan0.ipv4, vec!["10.42.0.17/24"]);
        assert_eq!(wlan0.ipv6, vec!["fe80::dea6:32ff:fe3a:7b02/64"]);
        assert_eq!(wlan0.speed_mbps, None);
        assert_eq!(wlan0.tx_errors, 1);
        assert_eq!(wlan0.wireless, Some(Wireless { link_quality: 62.0, signal_dbm: -48.0, noise_dbm: None }));

        let lo = by_name(&interfaces, "lo");
        assert_eq!(lo.mac, None);
        assert_eq!(lo.operstate, "unknown");
        assert!(lo.up);
        assert_eq!(lo.mtu, Some(65536));
        assert_eq!(lo.ipv4, vec!["127.0.0.1/8"]);
        assert_eq!(lo.ipv6, vec!["::1/128"]);
        assert_eq!(lo.rx_bytes, 284512);
    }

    #[test]
    fn reads_a_pi5_on_wifi_with_the_cable_unplugged() {
        let interfaces = read_interfaces(&fixture("pi5")).unwrap();
        let eth0 = by_name(&interfaces, "eth0");
        assert_eq!(eth0.mac.as_deref(), Some("2c:cf:67:12:34:56"));
        assert!(!eth0.up);
        assert_eq!(eth0.carrier, Some(false));
        assert_eq!(eth0.speed_mbps, None);
        assert!(eth0.ipv4.is_empty() && eth0.ipv6.is_empty());

        let wlan0 = by_name(&interfaces, "wlan0");
        assert!(wlan0.up);
        assert_eq!(wlan0.ipv4, vec!["192.168.1.42/24"]);
        assert_eq!(wlan0.ipv6, vec!["2001:db8:42:0:2ecf:67ff:fe12:3457/64", "fe80::2ecf:67ff:fe12:3457/64"]);
        assert_eq!(wlan0.rx_bytes, 734003200);
        let wireless = wlan0.wireless.clone().unwrap();
        assert_eq!((wireless.link_quality, wireless.signal_dbm), (55.0, -55.0));
    }

    #[test]
    fn reports_noise_when_the_driver_measures_it() {
        let text = "h1\nh2\n  wlp2s0: 0000   70.  -40.  -95.       0      0      0      0      0    0\n";
        let wireless = parse_wireless(text, Path::new("wireless")).unwrap();
        assert_eq!(wireless["wlp2s0"].noise_dbm, Some(-95.0));
    }

    #[test]
    fn reads_counters_glued_to_the_interface_name() {
        let text = "h1\nh2\n  eth0:176982443 6801 0 0 0 0 0 0 590258 4541 0 0 0 0 0 0\n";
        let counters = parse_net_dev(text, Path::new("dev")).unwrap();
        assert_eq!(counters[0].name, "eth0");
        assert_eq!(counters[0].rx_bytes, 176982443);
        assert_eq!(counters[0].tx_packets, 4541);
    }

    #[test]
    fn rejects_malformed_network_files_naming_them() {
        type Fails = fn(&str, &Path) -> bool;
        let cases: [(Fails, &str); 6] = [
            (|t, p| parse_net_dev(t, p).is_err(), "h1\nh2\n eth0 1 2 3\n"),
            (|t, p| parse_net_dev(t, p).is_err(), "h1\nh2\n eth0: 1 2 3\n"),
            (|t, p| parse_wireless(t, p).is_err(), "h1\nh2\n wlan0: 0000 x. -40. -256\n"),
            (|t, p| parse_if_inet6(t, p).is_err(), "fe80 02 40 20 80 eth0\n"),
            (|t, p| parse_routes(t, p).is_err(), "Iface\n eth0 zz 0 0001 0 0 0 00FFFFFF 0 0 0\n"),
            (|t, p| parse_fib_trie_locals(t, p).is_err(), "Main:\n  |-- 300.1.2.3\n     /32 host LOCAL\n"),
        ];
        for (fails, text) in cases {
            assert!(fails(text, Path::new("/p/net/x")), "{text:?}");
        }
        let err = parse_routes("Iface\neth0 0\n", Path::new("/p/net/route")).unwrap_err();
        assert!(matches!(err, HostError::Parse { ref path, .. } if path == Path::new("/p/net/route")));
    }

    #[test]
    fn prefers_the_most_specific_route_for_an_address() {
        let routes = parse_routes(
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
             eth0\t0000000A\t00000000\t0001\t0\t0\t100\t000000FF\n\
             wg0\t0000010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
             eth0\t0000000B\t0100000A\t0003\t0\t0\t0\t0000FFFF\n",
            Path::new("route"),
        )
        .unwrap();
        assert_eq!(routes.len(), 2, "the gateway route is not a connected subnet");
        let locals = [Ipv4Addr::new(10, 1, 0, 5), Ipv4Addr::new(10, 2, 0, 5), Ipv4Addr::new(172, 16, 0, 1)];
        let attributed = attribute_addresses(&locals, &routes);
        assert_eq!(attributed["wg0"], vec!["10.1.0.5/24"]);
        assert_eq!(attributed["eth0"], vec!["10.2.0.5/8"]);
        assert_eq!(attributed.len(), 2, "an address without a route is left out");
    }

    #[test]
    fn reads_only_host_local_leaves_of_the_fib_trie() {
        let text = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.0.0.0\n        /8 link UNICAST\n\
                    |-- 10.0.0.7\n        /32 host LOCAL\n\
                    |-- 10.255.255.255\n        /32 link BROADCAST\n\
                    Local:\n     |-- 10.0.0.7\n        /32 host LOCAL\n";
        let locals = parse_fib_trie_locals(text, Path::new("fib_trie")).unwrap();
        assert_eq!(locals, vec![Ipv4Addr::new(10, 0, 0, 7)]);
    }

    #[test]
    fn reads_the_interfaces_of_this_machine() {
        let interfaces = read_interfaces(&Roots::system()).unwrap();
        let lo = by_name(&interfaces, "lo");
        assert!(lo.up);
        assert!(lo.ipv4.iter().any(|a| a.starts_with("127.")), "{lo:?}");
        let names: Vec<_> = interfaces.iter().map(|i| i.name.clone()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }
}
