//! The one outbound network module: every request the server makes to another
//! machine (push pings, the BrowserID verifier, plugins' HTTP import) goes
//! through a client built here, for one use and that use's [`Policy`].
//!
//! Where those requests go is chosen by others: clients pick their push URLs,
//! vendors run the DNS zones of their plugins' hosts. The server must not be
//! turned against its own network (loopback, RFC 1918, cloud metadata at
//! 169.254.169.254), so every client:
//! - resolves names with a resolver that drops non-public answers unless its
//!   use has `allow_private = true`, at connection time: a name that was
//!   public when it was checked cannot be re-pointed inside later (DNS
//!   rebinding);
//! - has a resolver of its own: a name trusted for one use (a plugin's vendor
//!   host) loosens nothing for another (push URLs on the same name);
//! - follows no redirects (a redirect would bypass each use's origin checks)
//!   and uses no environment proxy (a proxy resolves names itself, bypassing
//!   the resolver).
//!
//! IP-literal URLs reach no resolver: each use checks those against the
//! origins its operator listed, where `http://127.0.0.1:8000` is deliberate.

mod addr;

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::sync::Semaphore;

use self::addr::{is_local_name, is_public_ip};
use crate::config::{FxaConfig, NetConfig, PluginConfig, PushConfig};

/// A host name that does not resolve within this time is refused.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a lookup waits for one of `net.max_concurrent_lookups` slots
/// before it is refused as [`Refused::Busy`]: long enough to ride out a burst
/// of fast lookups, short enough that a pile-up of slow ones fails fast.
const LOOKUP_SLOT_WAIT: Duration = Duration::from_millis(250);

/// How long a client waits for a TCP/TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type BoxError = Box<dyn StdError + Send + Sync>;

/// Which addresses one use of the network may reach.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The configuration table of the use (`push`, `fxa`, `plugins.vendor`),
    /// so that a refusal names the key that would change it.
    pub scope: String,
    /// Loopback, private and link-local answers are usable too.
    pub allow_private: bool,
}

impl Policy {
    pub fn new(scope: impl Into<String>, allow_private: bool) -> Self {
        Self {
            scope: scope.into(),
            allow_private,
        }
    }

    pub fn push(config: &PushConfig) -> Self {
        Self::new("push", config.allow_private)
    }

    pub fn verifier(config: &FxaConfig) -> Self {
        Self::new("fxa", config.allow_private)
    }

    pub fn plugin(name: &str, config: &PluginConfig) -> Self {
        Self::new(format!("plugins.{name}"), config.allow_private)
    }

    /// Whether a connection to `ip` (a DNS answer, or an IP literal no
    /// operator listed) is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public_ip(ip)
    }

    fn not_permitted(&self, host: &str) -> Refused {
        Refused::NotPermitted {
            host: host.to_owned(),
            scope: self.scope.clone(),
        }
    }

    /// Whether `host` may be looked up at all: names of this machine are
    /// refused whatever DNS would answer.
    pub fn permits_name(&self, host: &str) -> bool {
        self.allow_private || !is_local_name(host)
    }
}

/// Why a name cannot be used under a policy. Travels inside a transport
/// error, so that callers can tell a refusal from an unreachable server.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The name resolved to nothing, or not in time.
    Unresolved { host: String },
    /// `net.max_concurrent_lookups` lookups were already under way: the
    /// name was not looked up at all, and may resolve on a retry.
    Busy { host: String },
    /// The name names this machine, or resolved to an address the policy
    /// does not permit (at a check: any such answer; at connection time: all).
    NotPermitted { host: String, scope: String },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Unresolved { host } => write!(f, "{host} does not resolve"),
            Refused::Busy { host } => write!(
                f,
                "too many host name lookups under way to look up {host} (net.max_concurrent_lookups)"
            ),
            Refused::NotPermitted { host, scope } => write!(
                f,
                "{host} resolves to a loopback, private or link-local address \
                 ({scope}.allow_private is off)"
            ),
        }
    }
}

impl StdError for Refused {}

/// Whether a request failed because the policy refused its destination,
/// rather than because the server was unreachable.
pub fn refusal<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return Some(refused);
        }
        cause = err.source();
    }
    None
}

/// Builds the outbound clients, one per use, sharing one name resolution.
#[derive(Clone)]
pub struct Net {
    dns: Dns,
}

/// Name resolution: hickory's asynchronous resolver, so that a lookup waits
/// on a socket rather than holding one of tokio's blocking threads as
/// `getaddrinfo` would (names that resolve slowly could otherwise take the
/// whole blocking pool, which file I/O and SQLite need), with a bound on the
/// lookups under way at once.
#[derive(Clone)]
struct Dns {
    resolver: Arc<TokioResolver>,
    slots: Arc<Semaphore>,
}

impl Dns {
    /// `net.resolver`, or the system's configuration: `/etc/resolv.conf`
    /// (name servers, search domains, ndots) and `/etc/hosts`.
    fn new(config: &NetConfig) -> anyhow::Result<Self> {
        let mut builder = match config.resolver_addr()? {
            None => TokioResolver::builder_tokio().map_err(|err| {
                anyhow::anyhow!(
                    "cannot read the system's DNS configuration (/etc/resolv.conf): {err}; \
                     set net.resolver to a DNS server"
                )
            })?,
            Some(server) => {
                let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut name_server.connections {
                    connection.port = server.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), vec![name_server]),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        // No answer outlives its lookup: every connection's addresses are
        // fresh, and filtered then (DNS rebinding).
        builder.options_mut().cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|err| anyhow::anyhow!("net.resolver: cannot build the resolver: {err}"))?;
        Ok(Self {
            resolver: Arc::new(resolver),
            slots: Arc::new(Semaphore::new(config.max_concurrent_lookups)),
        })
    }

    /// Every address of `host`, once `policy` lets it be looked up at all:
    /// names of this machine are refused before any lookup.
    async fn lookup_under(&self, policy: &Policy, host: &str) -> Result<Vec<IpAddr>, Refused> {
        if !policy.permits_name(host) {
            return Err(policy.not_permitted(host));
        }
        self.lookup(host).await
    }

    async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, Refused> {
        let (outcome, result) = self.lookup_counted(host).await;
        metrics::counter!("loop_dns_lookups_total", "outcome" => outcome).increment(1);
        result
    }

    /// The lookup and its `loop_dns_lookups_total` outcome.
    async fn lookup_counted(&self, host: &str) -> (&'static str, Result<Vec<IpAddr>, Refused>) {
        let unresolved = || Refused::Unresolved {
            host: host.to_owned(),
        };
        // An IP literal needs no lookup (reqwest hands none to resolvers, but
        // a check may); it takes no slot either.
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
            return ("ok", Ok(vec![ip]));
        }
        let Ok(Ok(_slot)) = tokio::time::timeout(LOOKUP_SLOT_WAIT, self.slots.acquire()).await
        else {
            return (
                "busy",
                Err(Refused::Busy {
                    host: host.to_owned(),
                }),
            );
        };
        match tokio::time::timeout(RESOLVE_TIMEOUT, self.resolver.lookup_ip(host)).await {
            Ok(Ok(answers)) => {
                let addrs: Vec<IpAddr> = answers.iter().collect();
                if addrs.is_empty() {
                    ("unresolved", Err(unresolved()))
                } else {
                    ("ok", Ok(addrs))
                }
            }
            Ok(Err(_)) => ("unresolved", Err(unresolved())),
            Err(_) => ("timeout", Err(unresolved())),
        }
    }
}

impl Net {
    pub fn new(config: &NetConfig) -> anyhow::Result<Self> {
        Ok(Self {
            dns: Dns::new(config)?,
        })
    }

    /// The client of one use: rustls, no redirects, no proxies, and a
    /// resolver that keeps only the answers `policy` permits.
    pub fn client(&self, policy: Policy) -> anyhow::Result<reqwest::Client> {
        let resolver = PolicyResolver {
            dns: self.dns.clone(),
            policy,
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

    /// Resolves `host` for a check ahead of use (a push URL at registration):
    /// one answer `policy` does not permit is enough to refuse, since a
    /// connection may pick any of them.
    pub async fn check_name(&self, policy: &Policy, host: &str) -> Result<(), Refused> {
        let host = normalize_name(host);
        let addrs = self.dns.lookup_under(policy, &host).await?;
        if addrs.iter().all(|ip| policy.permits(*ip)) {
            Ok(())
        } else {
            Err(policy.not_permitted(&host))
        }
    }
}

fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Resolves for one client, then drops the answers its policy does not
/// permit; refuses when none is left.
struct PolicyResolver {
    dns: Dns,
    policy: Policy,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = normalize_name(name.as_str());
        let dns = self.dns.clone();
        let policy = self.policy.clone();
        Box::pin(async move {
            let usable: Vec<SocketAddr> = dns
                .lookup_under(&policy, &host)
                .await?
                .into_iter()
                .filter(|ip| policy.permits(*ip))
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if usable.is_empty() {
                return Err(BoxError::from(policy.not_permitted(&host)));
            }
            let addrs: Addrs = Box::new(usable.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(allow_private: bool) -> PolicyResolver {
        PolicyResolver {
            dns: Dns::new(&NetConfig::default()).unwrap(),
            policy: Policy::new("push", allow_private),
        }
    }

    #[tokio::test]
    async fn names_of_this_machine_need_allow_private() {
        let err = match resolver(false).resolve("LOCALHOST.".parse().unwrap()).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(err) => err,
        };
        let refused = refusal(err.as_ref()).expect("a policy refusal");
        assert!(
            refused.to_string().contains("push.allow_private"),
            "{refused}"
        );

        let addrs: Vec<_> = resolver(true)
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|addr| addr.ip().is_loopback()));
    }

    #[tokio::test]
    async fn checks_refuse_local_names_before_any_lookup() {
        let net = Net::new(&NetConfig::default()).unwrap();
        let refused = net
            .check_name(&Policy::new("fxa", false), "foo.localhost")
            .await
            .unwrap_err();
        assert_eq!(
            refused,
            Refused::NotPermitted {
                host: "foo.localhost".into(),
                scope: "fxa".into()
            }
        );
        net.check_name(&Policy::new("fxa", true), "localhost")
            .await
            .unwrap();
    }

    #[test]
    fn policies_permit_private_addresses_only_when_allowed() {
        let ip: IpAddr = "169.254.169.254".parse().unwrap();
        assert!(!Policy::new("push", false).permits(ip));
        assert!(Policy::new("push", true).permits(ip));
        assert!(Policy::new("push", false).permits("1.1.1.1".parse().unwrap()));
    }
}
