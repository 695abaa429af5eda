//! Which addresses are public: the line every outbound request is held to
//! unless its use was allowed private addresses (`allow_private`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::{Ipv4Net, Ipv6Net};

/// IPv4 ranges that are not reachable public unicast addresses (IANA special
/// purpose registry): a request to any of them would reach the server's own
/// network or nothing at all.
static NON_PUBLIC_V4: LazyLock<Vec<Ipv4Net>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",       // "this network", unspecified
        "10.0.0.0/8",      // RFC 1918
        "100.64.0.0/10",   // CGNAT shared space
        "127.0.0.0/8",     // loopback
        "169.254.0.0/16",  // link-local, cloud metadata
        "172.16.0.0/12",   // RFC 1918
        "192.0.0.0/24",    // IETF protocol assignments
        "192.0.2.0/24",    // TEST-NET-1
        "192.31.196.0/24", // AS112
        "192.52.193.0/24", // AMT
        "192.88.99.0/24",  // deprecated 6to4 relay anycast
        "192.168.0.0/16",  // RFC 1918
        "192.175.48.0/24", // AS112 direct delegation
        "198.18.0.0/15",   // benchmarking
        "198.51.100.0/24", // TEST-NET-2
        "203.0.113.0/24",  // TEST-NET-3
        "224.0.0.0/4",     // multicast
        "240.0.0.0/4",     // reserved, broadcast
    ]
    .iter()
    .map(|net| net.parse().expect("valid IPv4 prefix"))
    .collect()
});

/// IPv6 ranges that are never a public server. Ranges that embed an IPv4
/// address (mapped, NAT64, 6to4) are handled by [`embedded_ipv4`] instead.
static NON_PUBLIC_V6: LazyLock<Vec<Ipv6Net>> = LazyLock::new(|| {
    [
        "::/128",         // unspecified
        "::1/128",        // loopback
        "64:ff9b:1::/48", // local-use NAT64
        "100::/64",       // discard-only
        "2001::/23",      // IETF protocol assignments (Teredo, ORCHID, …)
        "2001:db8::/32",  // documentation
        "3fff::/20",      // documentation (RFC 9637)
        "5f00::/16",      // SRv6 SIDs
        "fc00::/7",       // unique local
        "fe80::/10",      // link-local
        "fec0::/10",      // deprecated site-local
        "ff00::/8",       // multicast
    ]
    .iter()
    .map(|net| net.parse().expect("valid IPv6 prefix"))
    .collect()
});

/// The IPv4 address an IPv6 address carries, for the forms a connection would
/// actually reach over IPv4: IPv4-mapped (`::ffff:a.b.c.d`), deprecated
/// IPv4-compatible (`::a.b.c.d`), well-known NAT64 (`64:ff9b::/96`) and 6to4
/// (`2002:AABB:CCDD::/48`).
fn embedded_ipv4(ip: &Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        // `::` and `::1` are in NON_PUBLIC_V6; every other `::/96` is IPv4-compatible.
        [0, 0, 0, 0, 0, 0, _, _] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Whether `ip` is a public unicast address: not this machine, not its
/// network, not cloud metadata.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !NON_PUBLIC_V4.iter().any(|net| net.contains(&v4)),
        IpAddr::V6(v6) => {
            if NON_PUBLIC_V6.iter().any(|net| net.contains(&v6)) {
                return false;
            }
            match embedded_ipv4(&v6) {
                Some(v4) => is_public_ip(IpAddr::V4(v4)),
                None => true,
            }
        }
    }
}

/// Host names that name the machine itself whatever DNS says.
pub fn is_local_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost") || host == "localhost.localdomain"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_refused() {
        for text in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2001::1",
        ] {
            assert!(!is_public_ip(ip(text)), "{text} must not be public");
        }
    }

    #[test]
    fn public_addresses_are_accepted() {
        for text in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert!(is_public_ip(ip(text)), "{text} must be public");
        }
    }
}
