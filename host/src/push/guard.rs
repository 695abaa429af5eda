//! Which push URLs the server stores and pings. Push URLs are supplied by
//! clients and fetched by the server, so a client must not be able to point
//! the server at its own network.
//!
//! - [`PushRules::validate`] checks a URL at registration, resolving its host
//!   under the push [`Policy`].
//! - [`PushRules::check`] is the same check without the lookup, run again before
//!   every ping: a URL stored under an older `push.allowed_origins` is not
//!   pinged once the operator removed its origin. The lookup then happens at
//!   connection time, in the push client's resolver, which drops the answers
//!   the policy does not permit (DNS rebinding).

use std::net::IpAddr;

use url::{Host, Origin, Url};

use crate::config::PushConfig;
use crate::error::AppError;
use crate::net::{Net, Policy, Refused};

/// Longer push URLs are refused; real push services use well under 1 KiB.
pub const MAX_PUSH_URL_LEN: usize = 2048;

/// `push.*` as the checks need it, built once: the listed origins are parsed
/// here rather than on every ping.
pub struct PushRules {
    /// `push.allowed_origins`, parsed; `None` (the list is empty): any
    /// public https origin.
    allowed_origins: Option<Vec<Origin>>,
    policy: Policy,
}

impl PushRules {
    pub fn new(config: &PushConfig) -> Self {
        Self {
            // Config::validate has refused origins that do not parse.
            allowed_origins: (!config.allowed_origins.is_empty()).then(|| {
                config
                    .allowed_origins
                    .iter()
                    .filter_map(|allowed| Url::parse(allowed).ok())
                    .map(|allowed| allowed.origin())
                    .collect()
            }),
            policy: Policy::push(config),
        }
    }

    /// Checks a push URL against `push.*` without resolving it; returns it parsed,
    /// or why it is refused. A refusal names the URL's origin at most, never its
    /// path or query (a push URL is a capability for someone's device).
    ///
    /// `push.allowed_origins` non-empty: the URL's origin (scheme, host, port) must
    /// be listed; a listed IP literal may be private, as the operator wrote it.
    /// Empty: only https, and an IP literal must be public. Either way a host name
    /// must later resolve to addresses the push policy permits.
    pub fn check(&self, url: &str) -> Result<Url, String> {
        if url.len() > MAX_PUSH_URL_LEN {
            return Err(format!(
                "push URL is longer than {MAX_PUSH_URL_LEN} characters"
            ));
        }
        let parsed = Url::parse(url).map_err(|err| format!("not a valid URL ({err})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("push URL must be http or https".into());
        }
        let Some(host) = parsed.host() else {
            return Err("push URL has no host".into());
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("push URL must not contain credentials".into());
        }
        let policy = &self.policy;

        if let Some(allowed_origins) = &self.allowed_origins {
            let origin = parsed.origin();
            if !allowed_origins.contains(&origin) {
                return Err(format!(
                    "push URL origin {} is not in push.allowed_origins",
                    origin.ascii_serialization()
                ));
            }
            return Ok(parsed);
        }

        if parsed.scheme() != "https" {
            return Err("push URL must be https".into());
        }
        let ip = match host {
            Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            Host::Domain(name) if !policy.permits_name(name) => {
                return Err("push URL points at this machine".into());
            }
            Host::Domain(_) => None,
        };
        if ip.is_some_and(|ip| !policy.permits(ip)) {
            return Err(
            "push URL must point at a public address, not a loopback, private or link-local one"
                .into(),
        );
        }
        Ok(parsed)
    }

    /// Checks a client-supplied push URL at registration: [`Self::check`],
    /// then its host name must resolve, only to addresses the push policy permits.
    pub async fn validate(&self, net: &Net, field: &str, url: &str) -> Result<Url, AppError> {
        let parsed = self
            .check(url)
            .map_err(|reason| AppError::invalid(field, reason))?;
        if let Some(Host::Domain(name)) = parsed.host() {
            net.check_name(&self.policy, name)
                .await
                .map_err(|refused| match refused {
                    Refused::Unresolved { host } => {
                        AppError::invalid(field, format!("push URL host {host} does not resolve"))
                    }
                    // The URL may be fine: 503 with Retry-After, not a 400.
                    busy @ Refused::Busy { .. } => AppError::Backend(busy.to_string()),
                    not_permitted => AppError::invalid(
                        field,
                        format!("push URL must point at a public address: {not_permitted}"),
                    ),
                })?;
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetConfig;

    fn open() -> PushConfig {
        PushConfig {
            allowed_origins: Vec::new(),
            ..PushConfig::default()
        }
    }

    async fn refusal(config: &PushConfig, url: &str) -> String {
        let net = Net::new(&NetConfig::default()).unwrap();
        match PushRules::new(config)
            .validate(&net, "simplePushURLs.calls", url)
            .await
        {
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

    #[test]
    fn refusals_never_repeat_the_path_or_query() {
        let config = PushConfig {
            allowed_origins: vec!["https://push.example.com".into()],
            ..PushConfig::default()
        };
        let reason = PushRules::new(&config)
            .check("https://other.example.com/SECRET?t=SECRET")
            .unwrap_err();
        assert!(
            reason.contains("https://other.example.com") && !reason.contains("SECRET"),
            "{reason}"
        );
    }

    #[test]
    fn private_addresses_need_a_listed_literal_or_allow_private() {
        let private = PushConfig {
            allow_private: true,
            ..open()
        };
        for url in ["https://10.0.0.1/push", "https://localhost/"] {
            PushRules::new(&open()).check(url).unwrap_err();
            PushRules::new(&private).check(url).unwrap();
        }
    }

    #[tokio::test]
    async fn listed_origins_are_allowed_and_others_refused() {
        let config = PushConfig {
            allowed_origins: vec!["http://127.0.0.1:8080".into()],
            ..PushConfig::default()
        };
        let net = Net::new(&NetConfig::default()).unwrap();
        let ok = PushRules::new(&config)
            .validate(&net, "f", "http://127.0.0.1:8080/push/abc")
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
        PushRules::new(&config)
            .check("https://push.example.com:443/x")
            .unwrap();
        PushRules::new(&config)
            .check("https://push.example.com:8443/x")
            .unwrap_err();
    }
}
