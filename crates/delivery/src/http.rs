//! One HTTP attempt: build the request, sign it, send it, read a bounded answer.

use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::Method;
use std::sync::Arc;

use webhookd_core::clock::Clock;
use webhookd_core::delivery::Delivery;
use webhookd_core::destination::DestinationPolicy;
use webhookd_core::signing::Signer;

use crate::proxy::EgressProxy;
use crate::resolver::GuardedResolver;
use crate::settings::DeliverySettings;
use crate::DeliveryError;

/// The HTTP clients: one negotiating HTTP/1.1 (or h2 over TLS), one speaking HTTP/2 directly
/// for OBP webhooks created with `http_protocol` `HTTP/2.0`.
#[derive(Clone)]
pub struct Clients {
    http1: reqwest::Client,
    http2: reqwest::Client,
    body_max: usize,
    policy: Arc<DestinationPolicy>,
    /// Set when deliveries go through an egress proxy: each destination name is then checked
    /// here before the proxy resolves it.
    proxied: Option<Arc<GuardedResolver>>,
    /// `delivery.connect_timeout_ms`, which also bounds that check.
    connect_timeout: Duration,
}

/// What one attempt produced.
#[derive(Debug)]
pub struct Response {
    /// The status, when the receiver answered.
    pub status: Option<u16>,
    /// The first bytes of the body.
    pub body: Vec<u8>,
    /// What the receiver asked with `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Why there was no answer.
    pub error: Option<String>,
    /// How long the attempt took.
    pub elapsed: Duration,
}

impl Clients {
    /// Builds the clients: pooled keep-alive connections sized to the per-destination limit,
    /// no redirects followed (a redirect could lead anywhere), the egress proxy if one is
    /// configured ([`crate::proxy`]), the configured timeouts, and a resolver that drops
    /// addresses the destination policy refuses, so the check happens again at every connect.
    pub fn new(
        settings: &DeliverySettings,
        policy: Arc<DestinationPolicy>,
    ) -> Result<Clients, DeliveryError> {
        let proxy = EgressProxy::from_settings(settings, |name| std::env::var(name).ok())?;
        let resolver = GuardedResolver::new(policy.clone());
        let resolver = Arc::new(match &proxy {
            Some(proxy) => resolver.exempting(proxy.hosts()),
            None => resolver,
        });
        if let Some(proxy) = &proxy {
            tracing::info!(proxy = proxy.summary(), "deliveries go through the egress proxy");
        }
        let build = |http2: bool| {
            let mut builder = reqwest::Client::builder()
                .user_agent(concat!("webhookd/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy();
            for p in proxy.iter().flat_map(|p| p.proxies()) {
                builder = builder.proxy(p.clone());
            }
            let builder = builder
                .dns_resolver(resolver.clone())
                .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
                .timeout(Duration::from_millis(settings.timeout_ms))
                .pool_max_idle_per_host(settings.max_in_flight_per_destination)
                .tcp_nodelay(true);
            let builder = if http2 { builder.http2_prior_knowledge() } else { builder };
            builder.build().map_err(|e| DeliveryError::Client(e.to_string()))
        };
        Ok(Clients {
            http1: build(false)?,
            http2: build(true)?,
            body_max: settings.response_body_max_bytes,
            policy,
            proxied: proxy.map(|_| resolver),
            connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
        })
    }

    /// Sends one attempt of `delivery`, signed with `signer` at the current time.
    pub async fn send(&self, delivery: &Delivery, signer: &Signer, clock: &Clock) -> Response {
        let started = Instant::now();
        let mut response = match self.exchange(delivery, signer, clock).await {
            Ok(r) => r,
            Err(error) => Response {
                status: None,
                body: Vec::new(),
                retry_after: None,
                error: Some(error),
                elapsed: Duration::ZERO,
            },
        };
        response.elapsed = started.elapsed();
        response
    }

    async fn exchange(&self, d: &Delivery, signer: &Signer, clock: &Clock) -> Result<Response, String> {
        // IP literals never reach the resolver: check the url itself (the policy may also have
        // changed since the delivery was queued).
        self.policy.check_url(&d.url, None).map_err(|e| format!("refused destination: {e}"))?;
        if let Some(resolver) = &self.proxied {
            // The proxy resolves the name itself: every address it could reach must be allowed.
            let url = url::Url::parse(&d.url).map_err(|e| format!("invalid url: {e}"))?;
            if let Some(url::Host::Domain(host)) = url.host() {
                // Bounded like a connect: a slow resolver must not hold the attempt's slot.
                let lookup = resolver.lookup_all_allowed(host);
                tokio::time::timeout(self.connect_timeout, lookup)
                    .await
                    .map_err(|_| format!("cannot resolve {host} within the connect timeout"))?
                    .map_err(|e| error_chain(&e))?;
            }
        }
        let method =
            Method::from_bytes(d.method.as_bytes()).map_err(|_| format!("invalid method {:?}", d.method))?;
        let client = if d.http2 { &self.http2 } else { &self.http1 };
        let mut request = client.request(method.clone(), &d.url);
        for (name, value) in &d.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        for (name, value) in d.signature_headers(signer, clock.now_secs()) {
            let value = HeaderValue::from_str(&value).map_err(|e| e.to_string())?;
            request = request.header(HeaderName::from_static(name), value);
        }
        if method != Method::GET {
            request = request.body(d.body.clone());
        }
        let mut answer = request.send().await.map_err(|e| error_chain(&e))?;
        let status = answer.status().as_u16();
        let retry_after =
            answer.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let mut body = Vec::new();
        // Read only a bounded prefix: a receiver streaming a huge body cannot exhaust memory.
        while body.len() < self.body_max {
            match answer.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.body_max - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(e) => return Err(error_chain(&e)),
            }
        }
        Ok(Response { status: Some(status), body, retry_after, error: None, elapsed: Duration::ZERO })
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// An error with its causes, which is where reqwest says what actually went wrong.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 5 "), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }

    /// Through a proxy, a destination name whose address the policy refuses (this machine's own
    /// name, which resolves to a loopback address) is refused before the proxy is contacted.
    #[tokio::test]
    async fn a_proxied_attempt_to_a_refused_address_never_reaches_the_proxy() {
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let settings = DeliverySettings {
            proxy: format!("http://{}", proxy.local_addr().unwrap()),
            connect_timeout_ms: 2_000,
            timeout_ms: 2_000,
            ..DeliverySettings::default()
        };
        let policy = Arc::new(DestinationPolicy { allow_http: true, allow: Vec::new() });
        let clients = Clients::new(&settings, policy).unwrap();
        let host =
            String::from_utf8(std::process::Command::new("hostname").output().unwrap().stdout).unwrap();
        let delivery = Delivery {
            url: format!("http://{}/hook", host.trim()),
            destination: format!("{}:80", host.trim()),
            ..Delivery::fixture()
        };
        let signer = webhookd_core::signing::KeyRing::generate(0).signer();
        let response = clients.send(&delivery, &signer, &Clock::real()).await;
        let error = response.error.unwrap_or_default();
        // Refused (it resolves to this machine), or not resolvable at all: never handed over.
        assert!(error.contains("refused destination") || error.contains("cannot resolve"), "{error}");
        let accepted = tokio::time::timeout(Duration::from_millis(200), proxy.accept()).await;
        assert!(accepted.is_err(), "the proxy was contacted: {error}");
    }
}
