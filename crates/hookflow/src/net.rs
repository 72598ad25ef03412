//! Outbound HTTP (callbacks, workflow steps) that refuses non-public addresses.
//!
//! SSRF protection is checked on the **resolved** address: [`build_client`] installs a DNS
//! resolver that drops every address [`NetworkPolicy::permits`] refuses. A resolver never sees
//! IP-literal hosts (`http://127.0.0.1/`), so callers must also run [`NetworkPolicy::check_url`]
//! on every URL before sending. Redirects are not followed and proxies are not used, so the
//! checked URL is the only one the client connects to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

/// Connect timeout of the shared client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// IPv4 ranges that are not public: `(network, prefix length)`.
const V4_NON_PUBLIC: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // carrier-grade NAT
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local (cloud metadata)
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // TEST-NET-1
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

/// IPv6 ranges that are not public: `(network, prefix length)`. IPv4-mapped addresses
/// (`::ffff:0:0/96`) are unwrapped and checked against [`V4_NON_PUBLIC`] instead.
const V6_NON_PUBLIC: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::UNSPECIFIED, 128),                         // ::
    (Ipv6Addr::LOCALHOST, 128),                           // ::1
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96),          // IPv4-compatible (deprecated)
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96),  // NAT64
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),      // discard-only
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),      // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),     // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),     // site-local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),      // multicast
];

/// Why an outbound request was refused before it was sent.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The URL's scheme is neither `http` nor `https`.
    #[error("unsupported URL scheme {0:?}: only http and https are allowed")]
    UnsupportedScheme(String),
    /// The URL has no host.
    #[error("URL has no host")]
    MissingHost,
    /// The (resolved or literal) address lies in a non-public range that is not allowed.
    #[error("address {0} is not public; allow it with --allow-network")]
    AddressNotAllowed(IpAddr),
    /// The name resolved to no address at all.
    #[error("{0} resolved to no address")]
    NoAddresses(String),
    /// DNS resolution failed.
    #[error("could not resolve {host}")]
    Resolve {
        /// The name that was looked up.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
}

/// Installs ring as rustls' process-wide crypto provider (idempotent; call at startup and in
/// tests). A provider installed earlier, by anyone, is kept.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Which non-public ranges may be reached (from `--allow-network` CIDRs). The default allows
/// none: only public addresses are reachable.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    allowed: Vec<IpNet>,
}

impl NetworkPolicy {
    /// A policy that additionally permits the given (normally non-public) ranges.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// The ranges allowed in addition to public addresses.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// True when `ip` is public, or lies in an allowed range. Unwraps IPv4-mapped IPv6 first.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        is_public(canonical)
            || self
                .allowed
                .iter()
                .any(|net| net.contains(&canonical) || net.contains(&ip))
    }

    /// Checks the scheme (http/https only) and, when the host is an IP literal, the address
    /// (a custom resolver never sees literals). Hosts given as names are checked after
    /// resolution, by the client from [`build_client`].
    pub fn check_url(&self, url: &url::Url) -> Result<(), NetError> {
        match url.scheme() {
            "http" | "https" => {}
            other => return Err(NetError::UnsupportedScheme(other.to_owned())),
        }
        let ip = match url.host() {
            None => return Err(NetError::MissingHost),
            Some(url::Host::Domain(_)) => return Ok(()),
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(NetError::AddressNotAllowed(ip))
        }
    }
}

/// True when `ip` lies in none of the non-public ranges. IPv4-mapped IPv6 addresses are judged
/// by their IPv4 address.
fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            !V4_NON_PUBLIC.iter().any(|&(net, prefix)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                bits & mask == u32::from(net) & mask
            })
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            !V6_NON_PUBLIC.iter().any(|&(net, prefix)| {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                bits & mask == u128::from(net) & mask
            })
        }
    }
}

/// DNS resolver that resolves with the system resolver and drops refused addresses.
struct PolicyResolver {
    policy: Arc<NetworkPolicy>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|source| NetError::Resolve {
                    host: host.clone(),
                    source,
                })?;
            let mut refused = None;
            let permitted: Vec<SocketAddr> = resolved
                .filter(|addr| {
                    let ok = policy.permits(addr.ip());
                    if !ok && refused.is_none() {
                        refused = Some(addr.ip());
                    }
                    ok
                })
                .collect();
            if permitted.is_empty() {
                let err = match refused {
                    Some(ip) => NetError::AddressNotAllowed(ip),
                    None => NetError::NoAddresses(host),
                };
                return Err(Box::new(err) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// One pooled client: no redirects, no proxy, a DNS resolver that drops addresses `policy`
/// refuses (error if none is left), connect timeout 10 s, the given user agent. Per-request
/// timeouts are set by callers, who must also [`NetworkPolicy::check_url`] each URL.
///
/// Installs the crypto provider if none is installed yet.
pub fn build_client(policy: Arc<NetworkPolicy>, user_agent: &str) -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(PolicyResolver { policy }))
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(user_agent)
        .build()
        .expect("building the HTTP client (TLS configuration) cannot fail")
}

/// A one-line description of a reqwest error including its source chain (so
/// "address 10.0.0.1 is not public" reaches the logs and the delivery record).
///
/// The URL is left out (it may carry credentials; callers know which URL they requested).
pub fn describe_error(err: &reqwest::Error) -> String {
    let mut top = err.to_string();
    if let Some(url) = err.url() {
        let suffix = format!(" for url ({url})");
        if let Some(stripped) = top.strip_suffix(&suffix) {
            top = stripped.to_owned();
        }
    }
    if err.is_timeout() && !top.contains("timed out") {
        top.push_str(" (timed out)");
    }
    let mut parts = vec![top];
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers often repeat their inner error's message; keep each message once.
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn non_public_addresses_are_refused() {
        let policy = NetworkPolicy::default();
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "64:ff9b::808:808",
            "100::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:192.168.0.1",
            "::ffff:0.0.0.0",
        ] {
            assert!(!policy.permits(ip(s)), "{s} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_permitted() {
        let policy = NetworkPolicy::default();
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.1",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.255.255",
            "169.255.0.1",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.0.3.1",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.101.1",
            "203.0.114.1",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "fbff::1",
            "2001:db9::1",
        ] {
            assert!(policy.permits(ip(s)), "{s} should be permitted");
        }
    }

    #[test]
    fn allow_list_opens_ranges() {
        let policy = NetworkPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        assert_eq!(policy.allowed().len(), 3);
        for s in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "::ffff:127.0.0.1",
            "fd00::5",
            "8.8.8.8",
        ] {
            assert!(policy.permits(ip(s)), "{s} should be permitted");
        }
        for s in [
            "10.2.0.1",
            "192.168.0.1",
            "::1",
            "fc00::1",
            "169.254.169.254",
            "::ffff:10.2.0.1",
        ] {
            assert!(!policy.permits(ip(s)), "{s} should still be refused");
        }
        // An IPv6 allow-list entry does not open IPv4 loopback, and vice versa.
        let v6_only = NetworkPolicy::new(vec!["::1/128".parse().unwrap()]);
        assert!(v6_only.permits(ip("::1")));
        assert!(!v6_only.permits(ip("127.0.0.1")));
    }

    #[test]
    fn literal_urls_are_checked() {
        let policy = NetworkPolicy::default();
        let check = |s: &str| policy.check_url(&url::Url::parse(s).unwrap());
        for s in [
            "http://127.0.0.1/",
            "https://127.0.0.1:8443/x",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0x7f.1/",     // the url crate normalises to 127.0.0.1
            "http://2130706433/", // 127.0.0.1 as a number
            "http://10.0.0.1./",
            "http://0/",
        ] {
            match check(s) {
                Err(NetError::AddressNotAllowed(_)) => {}
                other => panic!("{s}: expected AddressNotAllowed, got {other:?}"),
            }
        }
        let err = check("http://10.0.0.1/").unwrap_err();
        assert_eq!(
            err.to_string(),
            "address 10.0.0.1 is not public; allow it with --allow-network"
        );
        for s in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "gopher://1.1.1.1/",
        ] {
            assert!(
                matches!(check(s), Err(NetError::UnsupportedScheme(_))),
                "{s} should be refused"
            );
        }
        for s in [
            "http://8.8.8.8/",
            "https://[2606:4700:4700::1111]/",
            "https://example.com/hook",
            "http://localhost:8080/", // a name: checked after resolution
        ] {
            check(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        let allowed = NetworkPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        allowed
            .check_url(&url::Url::parse("http://127.0.0.1:3000/").unwrap())
            .unwrap();
    }

    /// A tiny HTTP server answering every connection with `204 No Content`.
    async fn local_server() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = sock
                        .write_all(
                            b"HTTP/1.1 204 No Content\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                        )
                        .await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn client_refuses_resolved_loopback_unless_allowed() {
        install_crypto_provider();
        install_crypto_provider(); // idempotent
        let port = local_server().await;
        let url = format!("http://localhost:{port}/");

        let strict = build_client(Arc::new(NetworkPolicy::default()), "hookflow/test");
        let err = strict
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect_err("loopback must be refused");
        let text = describe_error(&err);
        assert!(
            text.contains("is not public") && text.contains("allow it with --allow-network"),
            "{text}"
        );
        assert!(
            text.contains("address 127.0.0.1") || text.contains("address ::1"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
        assert!(!text.contains(&url), "URL left out: {text}");

        let open = build_client(
            Arc::new(NetworkPolicy::new(vec!["127.0.0.0/8".parse().unwrap()])),
            "hookflow/test",
        );
        let resp = open
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}", describe_error(&e)));
        assert_eq!(resp.status(), reqwest::StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn unresolvable_names_are_described() {
        let client = build_client(Arc::new(NetworkPolicy::default()), "hookflow/test");
        let err = client
            .get("http://does-not-exist.invalid/")
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect_err("no such host");
        let text = describe_error(&err);
        assert!(text.contains("does-not-exist.invalid"), "{text}");
    }
}
