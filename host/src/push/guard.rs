//! The SSRF guard: push URLs are supplied by clients and fetched by the server,
//! so a client must not be able to point the server at its own network
//! (loopback, RFC 1918, cloud metadata at 169.254.169.254, …).
//!
//! Two layers:
//! - [`validate_push_url`] refuses a URL at registration, resolving its host.
//! - [`http_client`] installs a DNS resolver that drops non-public addresses
//!   for every host the operator did not trust explicitly, so a name that
//!   resolved to a public address at registration cannot be re-pointed at an
//!   internal one before the push (DNS rebinding).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use crate::config::{Config, PushConfig};
use crate::error::AppError;

/// Longer push URLs are refused; real push services use well under 1 KiB.
pub const MAX_PUSH_URL_LEN: usize = 2048;

/// A host name that does not resolve within this time is refused.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the one outbound client waits for a TCP/TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// IPv4 ranges that are not reachable public unicast addresses (IANA special
/// purpose registry): a push to any of them would reach the server's own
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

/// IPv6 ranges that are never a public push server. Ranges that embed an IPv4
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

/// Whether `ip` is a public unicast address a push may be sent to.
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
fn is_local_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost") || host == "localhost.localdomain"
}

fn refused(field: &str, reason: impl Into<String>) -> AppError {
    AppError::invalid(field, reason)
}

/// Checks a client-supplied push URL; returns it parsed.
///
/// `push.allowed_origins` non-empty: the URL's origin (scheme, host, port) must
/// be listed, and listed origins are trusted even on loopback or private
/// addresses (tests, private deployments). Empty: only https, and the host must
/// be, or resolve only to, public addresses.
pub async fn validate_push_url(
    config: &PushConfig,
    field: &str,
    url: &str,
) -> Result<Url, AppError> {
    if url.len() > MAX_PUSH_URL_LEN {
        return Err(refused(
            field,
            format!("push URL is longer than {MAX_PUSH_URL_LEN} characters"),
        ));
    }
    let parsed =
        Url::parse(url).map_err(|err| refused(field, format!("not a valid URL ({err})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(refused(field, "push URL must be http or https"));
    }
    let Some(host) = parsed.host() else {
        return Err(refused(field, "push URL has no host"));
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(refused(field, "push URL must not contain credentials"));
    }

    if !config.allowed_origins.is_empty() {
        let origin = parsed.origin();
        let listed = config
            .allowed_origins
            .iter()
            .filter_map(|allowed| Url::parse(allowed).ok())
            .any(|allowed| allowed.origin() == origin);
        return if listed {
            Ok(parsed)
        } else {
            Err(refused(
                field,
                format!(
                    "push URL origin {} is not in push.allowed_origins",
                    origin.ascii_serialization()
                ),
            ))
        };
    }

    if parsed.scheme() != "https" {
        return Err(refused(field, "push URL must be https"));
    }
    match host {
        Host::Ipv4(v4) => ensure_public(field, IpAddr::V4(v4))?,
        Host::Ipv6(v6) => ensure_public(field, IpAddr::V6(v6))?,
        Host::Domain(name) => {
            if is_local_name(name) {
                return Err(refused(field, "push URL points at this machine"));
            }
            let port = parsed.port_or_known_default().unwrap_or(443);
            let addrs =
                match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
                    .await
                {
                    Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
                    Ok(Err(_)) | Err(_) => {
                        return Err(refused(
                            field,
                            format!("push URL host {name} does not resolve"),
                        ));
                    }
                };
            if addrs.is_empty() {
                return Err(refused(
                    field,
                    format!("push URL host {name} does not resolve"),
                ));
            }
            // One private answer is enough to refuse: the connection may pick any.
            for addr in addrs {
                ensure_public(field, addr.ip())?;
            }
        }
    }
    Ok(parsed)
}

fn ensure_public(field: &str, ip: IpAddr) -> Result<(), AppError> {
    if is_public_ip(ip) {
        Ok(())
    } else {
        Err(refused(
            field,
            "push URL must point at a public address, not a loopback, private or link-local one",
        ))
    }
}

/// The one outbound HTTP client (push pings, the BrowserID verifier, plugins'
/// HTTP import): rustls, no redirects (a redirect would bypass every origin
/// check), no environment proxies (a proxy would resolve names itself and
/// bypass the resolver below), and the public-only resolver.
pub fn http_client(config: &Config) -> anyhow::Result<reqwest::Client> {
    let resolver = PublicOnlyResolver {
        trusted: trusted_hosts(config),
    };
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("loop-server/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(resolver))
        .build()?)
}

/// Host names the operator configured, which may resolve to private addresses.
fn trusted_hosts(config: &Config) -> HashSet<String> {
    let push = config.push.allowed_origins.iter();
    let plugins = config
        .plugins
        .values()
        .flat_map(|plugin| plugin.allowed_hosts.iter());
    let verifier = config.fxa.verifier_url.iter();
    push.chain(plugins)
        .chain(verifier)
        .filter_map(|url| Url::parse(url).ok())
        .filter_map(|url| match url.host() {
            Some(Host::Domain(name)) => Some(normalize_name(name)),
            _ => None,
        })
        .collect()
}

fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Resolves with the system resolver, then drops non-public addresses unless
/// the host is trusted. IP-literal URLs never reach a resolver; those are
/// checked by [`validate_push_url`] (push) or the plugin's allowed hosts.
struct PublicOnlyResolver {
    trusted: HashSet<String>,
}

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = normalize_name(name.as_str());
        let trusted = self.trusted.contains(&host);
        Box::pin(async move {
            if !trusted && is_local_name(&host) {
                return Err(format!("refusing to connect to {host}: it names this machine").into());
            }
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> = if trusted {
                resolved
            } else {
                resolved
                    .into_iter()
                    .filter(|addr| is_public_ip(addr.ip()))
                    .collect()
            };
            if usable.is_empty() {
                return Err(
                    format!("refusing to connect to {host}: it has no public address").into(),
                );
            }
            let addrs: Addrs = Box::new(usable.into_iter());
            Ok(addrs)
        })
    }
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

    fn open() -> PushConfig {
        PushConfig {
            allowed_origins: Vec::new(),
            ..PushConfig::default()
        }
    }

    async fn refusal(config: &PushConfig, url: &str) -> String {
        match validate_push_url(config, "simplePushURLs.calls", url).await {
            Ok(_) => panic!("{url} must be refused"),
            Err(err) => {
                assert_eq!(err.errno() as u16, 107);
                err.to_string()
            }
        }
    }

    #[tokio::test]
    async fn refusals_name_the_field() {
        for url in [
            "http://127.0.0.1/",
            "https://127.0.0.1/",
            "https://10.0.0.1/push",
            "https://[::1]/",
            "https://[::ffff:7f00:1]/",
            "https://169.254.169.254/latest/meta-data",
            "https://0x7f.1/",
            "https://2130706433/",
            "https://localhost/",
            "https://LOCALHOST./",
            "https://foo.localhost/",
            "ftp://push.example.com/",
            "not-a-url",
            "https://user:pw@push.example.com/",
            "http://push.example.com/",
        ] {
            let message = refusal(&open(), url).await;
            assert!(
                message.starts_with("simplePushURLs.calls:"),
                "{url}: {message}"
            );
        }
        let long = format!("https://push.example.com/{}", "a".repeat(MAX_PUSH_URL_LEN));
        refusal(&open(), &long).await;
    }

    #[tokio::test]
    async fn listed_origins_are_trusted_and_others_refused() {
        let config = PushConfig {
            allowed_origins: vec!["http://127.0.0.1:8080".into()],
            ..PushConfig::default()
        };
        let ok = validate_push_url(&config, "f", "http://127.0.0.1:8080/push/abc")
            .await
            .unwrap();
        assert_eq!(ok.path(), "/push/abc");
        refusal(&config, "http://127.0.0.1:8081/push").await;
        refusal(&config, "https://127.0.0.1:8080/push").await;
        refusal(&config, "https://push.example.com/").await;

        let config = PushConfig {
            allowed_origins: vec!["https://push.example.com".into()],
            ..PushConfig::default()
        };
        // The default port is part of the origin whether written or not.
        validate_push_url(&config, "f", "https://push.example.com:443/x")
            .await
            .unwrap();
        refusal(&config, "https://push.example.com:8443/x").await;
    }

    #[tokio::test]
    async fn resolver_refuses_private_answers_for_untrusted_hosts() {
        let resolver = PublicOnlyResolver {
            trusted: HashSet::new(),
        };
        let name: Name = "localhost".parse().unwrap();
        assert!(resolver.resolve(name).await.is_err());

        let resolver = PublicOnlyResolver {
            trusted: ["localhost".to_string()].into_iter().collect(),
        };
        let name: Name = "localhost".parse().unwrap();
        let addrs: Vec<_> = resolver.resolve(name).await.unwrap().collect();
        assert!(addrs.iter().all(|addr| addr.ip().is_loopback()) && !addrs.is_empty());
    }
}
