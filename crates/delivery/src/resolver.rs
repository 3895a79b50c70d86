//! The HTTP client's DNS resolver, which applies the destination policy at connect time.
//!
//! A subscription's host name is accepted when the subscription is created, but its DNS answer
//! can change at any moment afterwards (DNS rebinding): a name that pointed at a public address
//! then can point at `10.0.0.1` or `169.254.169.254` when an attempt runs. reqwest connects only to
//! the addresses its resolver returns, so this resolver looks the name up and keeps only the
//! addresses [`DestinationPolicy::check_ip`] accepts: every connection webhookd opens to a named
//! host goes to an address the policy allows, whatever DNS said earlier.
//!
//! Two things this resolver cannot see, which the client and the engine must take care of:
//! reqwest does not call a resolver for IP-literal hosts (those are checked by
//! [`DestinationPolicy::check_url`] before each attempt), and with a proxy the resolver resolves the
//! proxy, not the destination: then the destination is checked before each attempt with
//! [`GuardedResolver::lookup_all_allowed`] (see [`crate::proxy`]), and the proxy's own host is
//! exempt. The client follows no redirects.

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use webhookd_core::destination::{DestinationPolicy, UrlRefusal};

/// Resolves with the system resolver (tokio::net::lookup_host) and drops addresses the policy refuses; fails with a clear error when none remains.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    policy: Arc<DestinationPolicy>,
    /// Hosts resolved without the policy: the egress proxies the operator configured.
    exempt: Arc<[String]>,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: Arc<DestinationPolicy>) -> GuardedResolver {
        GuardedResolver { policy, exempt: Arc::from(Vec::new()) }
    }

    /// The same, resolving `hosts` (lowercase names of the egress proxies) without the policy.
    pub fn exempting(self, hosts: &[String]) -> GuardedResolver {
        GuardedResolver { exempt: Arc::from(hosts.to_vec()), ..self }
    }

    async fn resolve_all(host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|source| ResolveError::Lookup { host: host.to_string(), source })?
            .collect();
        if found.is_empty() {
            return Err(ResolveError::NoAddress { host: host.to_string() });
        }
        Ok(found)
    }

    /// Looks `host` up and answers every address if the policy accepts them all; otherwise
    /// the refusal of the first it does not. For a destination handed to a proxy, which
    /// connects to whichever address its own lookup gives.
    pub async fn lookup_all_allowed(&self, host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let found = Self::resolve_all(host).await?;
        for addr in &found {
            if let Err(refusal) = self.policy.check_ip(addr.ip()) {
                return Err(ResolveError::Refused { host: host.to_string(), refusal });
            }
        }
        Ok(found)
    }

    /// Looks `host` up and keeps the addresses the policy accepts, in the resolver's order
    /// (every address, for an exempt host).
    pub async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let found = Self::resolve_all(host).await?;
        if self.exempt.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return Ok(found);
        }
        let mut accepted = Vec::with_capacity(found.len());
        let mut first_refusal = None;
        for addr in &found {
            match self.policy.check_ip(addr.ip()) {
                Ok(()) => accepted.push(*addr),
                Err(refusal) => {
                    first_refusal.get_or_insert(refusal);
                }
            }
        }
        if let Some(refusal) = first_refusal {
            if accepted.is_empty() {
                return Err(ResolveError::Refused { host: host.to_string(), refusal });
            }
            tracing::debug!(
                host,
                kept = accepted.len(),
                dropped = found.len() - accepted.len(),
                "dropped resolved addresses the destination policy refuses"
            );
        }
        Ok(accepted)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.lookup(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Why a host name gave no address to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The system resolver failed.
    #[error("cannot resolve {host}")]
    Lookup {
        /// The host name.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// The name resolved to no address at all.
    #[error("{host} resolves to no address")]
    NoAddress {
        /// The host name.
        host: String,
    },
    /// Every address the name resolved to is refused by the destination policy.
    #[error("refused destination {host}")]
    Refused {
        /// The host name.
        host: String,
        /// Why its (first) address is refused.
        #[source]
        refusal: UrlRefusal,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A receiver on 127.0.0.1 answering every request with `200 ok`; returns its port.
    async fn receiver() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        port
    }

    fn client(policy: DestinationPolicy) -> reqwest::Client {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver::new(Arc::new(policy))))
            .no_proxy()
            .build()
            .unwrap()
    }

    fn chain(error: &dyn std::error::Error) -> String {
        crate::http::error_chain(error)
    }

    #[tokio::test]
    async fn loopback_name_is_refused_at_connect_time() {
        let port = receiver().await;
        let policy = DestinationPolicy { allow_http: true, allow: vec![] };
        let error = client(policy).get(format!("http://localhost:{port}/")).send().await.unwrap_err();
        let text = chain(&error);
        assert!(text.contains("refused destination localhost"), "{text}");
        assert!(text.contains("is not a public address (loopback)"), "{text}");
        // The typed refusal can be found in the chain.
        let mut source = error.source();
        let mut found = false;
        while let Some(cause) = source {
            if let Some(ResolveError::Refused { refusal: UrlRefusal::NonGlobal { range, .. }, .. }) =
                cause.downcast_ref::<ResolveError>()
            {
                assert_eq!(*range, "loopback");
                found = true;
            }
            source = cause.source();
        }
        assert!(found, "{text}");
    }

    #[tokio::test]
    async fn allowed_loopback_is_reached() {
        let port = receiver().await;
        let policy = DestinationPolicy { allow_http: true, allow: vec!["127.0.0.1/32".into()] };
        let response = client(policy).get(format!("http://localhost:{port}/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn refused_addresses_are_dropped_and_allowed_ones_kept() {
        let strict = GuardedResolver::new(Arc::new(DestinationPolicy::default()));
        let error = strict.lookup("localhost").await.unwrap_err();
        assert!(matches!(error, ResolveError::Refused { ref host, .. } if host == "localhost"), "{error:?}");
        let literal = strict.lookup("10.0.0.1").await.unwrap_err();
        assert_eq!(
            chain(&literal),
            "refused destination 10.0.0.1: the destination address 10.0.0.1 is not a public address \
             (private), so webhookd does not send to it"
        );

        let open = GuardedResolver::new(Arc::new(DestinationPolicy {
            allow_http: true,
            allow: vec!["127.0.0.1/32".into()],
        }));
        let addrs = open.lookup("localhost").await.unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip() == std::net::Ipv4Addr::LOCALHOST), "{addrs:?}");

        let public = strict.lookup("8.8.8.8").await.unwrap();
        assert_eq!(public, vec![SocketAddr::from(([8, 8, 8, 8], 0))]);

        // Through the trait, as reqwest calls it.
        let name: Name = "localhost".parse().unwrap();
        let error = match strict.resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(error) => error,
        };
        assert!(chain(&*error).contains("(loopback)"), "{error}");
    }

    #[tokio::test]
    async fn through_a_proxy_every_address_must_be_allowed_and_the_proxy_is_exempt() {
        let strict = GuardedResolver::new(Arc::new(DestinationPolicy::default()));
        let error = strict.lookup_all_allowed("localhost").await.unwrap_err();
        assert!(chain(&error).contains("(loopback)"), "{}", chain(&error));
        assert_eq!(
            strict.lookup_all_allowed("8.8.8.8").await.unwrap(),
            vec![SocketAddr::from(([8, 8, 8, 8], 0))]
        );
        // The proxy's own name resolves whatever the policy says; destinations stay checked.
        let with_proxy = strict.exempting(&["localhost".to_string()]);
        assert!(!with_proxy.lookup("LOCALHOST").await.unwrap().is_empty());
        assert!(with_proxy.lookup_all_allowed("localhost").await.is_err());
        assert!(with_proxy.lookup("10.0.0.1").await.is_err());
    }

    #[tokio::test]
    async fn lookup_failures_are_reported() {
        let strict = GuardedResolver::new(Arc::new(DestinationPolicy::default()));
        let error = strict.lookup("no-such-host.invalid").await.unwrap_err();
        assert!(matches!(error, ResolveError::Lookup { .. } | ResolveError::NoAddress { .. }), "{error:?}");
        assert!(error.to_string().contains("no-such-host.invalid"), "{error}");
    }
}
