//! The egress proxy: deliveries sent through an HTTP(S) proxy, as banks route outbound HTTP.
//!
//! Opt-in: `delivery.proxy` names one proxy for every destination, or `delivery.proxy_from_env`
//! takes the usual variables (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, lowercase too, and
//! `NO_PROXY`). Destinations matched by `delivery.no_proxy` (or `NO_PROXY`) are reached
//! directly. An `https` destination goes through a `CONNECT` tunnel (TLS end to end); an `http`
//! one is forwarded by the proxy.
//!
//! The destination policy still holds: with a proxy, the proxy resolves the destination's name,
//! not webhookd, so before an attempt is handed over webhookd resolves the name itself and
//! refuses it unless **every** address it resolves to is allowed
//! ([`crate::resolver::GuardedResolver::lookup_all_allowed`]). The proxy's own host is exempt
//! from the policy (it is usually inside the bank's network).

use reqwest::{NoProxy, Proxy};

use crate::settings::DeliverySettings;
use crate::DeliveryError;

/// The proxies deliveries go through, and their hosts (exempt from the destination policy).
#[derive(Clone, Debug)]
pub struct EgressProxy {
    proxies: Vec<Proxy>,
    hosts: Vec<String>,
    summary: String,
}

/// Reads a proxy setting as curl does: `host:port` alone means `http://host:port`. The error
/// says what is wrong without repeating the value (it may hold a password).
pub fn parse_proxy_url(text: &str) -> Result<url::Url, String> {
    let text = text.trim();
    let with_scheme = if text.contains("://") { text.to_string() } else { format!("http://{text}") };
    match url::Url::parse(&with_scheme) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()) => Ok(u),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => {
            Err(format!("must be an http:// or https:// proxy URL, not {}:// (the value is not shown)", u.scheme()))
        }
        _ => Err("must be a URL such as http://proxy.bank.internal:3128 (the value is not shown: it may hold a password)"
            .to_string()),
    }
}

/// The variables `delivery.proxy_from_env` reads, by the scheme they serve.
const ENV_PROXIES: [(&str, &str); 3] =
    [("https", "HTTPS_PROXY"), ("http", "HTTP_PROXY"), ("all", "ALL_PROXY")];

impl EgressProxy {
    /// The proxy `settings` configure, reading variables through `var` when
    /// `proxy_from_env` is set; `None` when deliveries go directly.
    pub fn from_settings(
        settings: &DeliverySettings,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<EgressProxy>, DeliveryError> {
        // Either spelling of a variable, as curl and most tools accept.
        let env = |name: &str| {
            var(name).or_else(|| var(&name.to_ascii_lowercase())).filter(|v| !v.trim().is_empty())
        };
        // (scheme served, where the value came from, the value)
        let mut chosen: Vec<(&str, &str, String)> = Vec::new();
        let mut no_proxy = settings.no_proxy.join(",");
        if !settings.proxy.is_empty() {
            chosen.push(("all", "delivery.proxy", settings.proxy.clone()));
        } else if settings.proxy_from_env {
            for (scheme, name) in ENV_PROXIES {
                if let Some(url) = env(name) {
                    chosen.push((scheme, name, url));
                }
            }
            if let Some(list) = env("NO_PROXY") {
                no_proxy =
                    [no_proxy, list].iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join(",");
            }
        }
        if chosen.is_empty() {
            return Ok(None);
        }
        let mut proxies = Vec::new();
        let mut hosts = Vec::new();
        let mut shown = Vec::new();
        for (scheme, source, text) in chosen {
            let parsed = parse_proxy_url(&text)
                .map_err(|why| DeliveryError::Client(format!("the egress proxy in {source} {why}")))?;
            let host = parsed.host_str().unwrap_or_default();
            hosts.push(host.trim_matches(['[', ']']).to_ascii_lowercase());
            let proxy = match scheme {
                "https" => Proxy::https(parsed.as_str()),
                "http" => Proxy::http(parsed.as_str()),
                _ => Proxy::all(parsed.as_str()),
            }
            .map_err(|_| DeliveryError::Client(format!("the egress proxy in {source} cannot be used")))?;
            proxies.push(proxy.no_proxy(NoProxy::from_string(&no_proxy)));
            shown.push(format!("{scheme}: {}://{}", parsed.scheme(), host_port(&parsed)));
        }
        let direct = if no_proxy.is_empty() { String::new() } else { format!("; direct: {no_proxy}") };
        Ok(Some(EgressProxy { proxies, hosts, summary: format!("{}{direct}", shown.join(", ")) }))
    }

    /// The proxies, to add to a client.
    pub fn proxies(&self) -> &[Proxy] {
        &self.proxies
    }

    /// The proxies' host names (lowercase): resolved without the destination policy.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The proxies and the direct list, without credentials, for the log.
    pub fn summary(&self) -> &str {
        &self.summary
    }
}

fn host_port(url: &url::Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(proxy: &str, from_env: bool, no_proxy: &[&str]) -> DeliverySettings {
        DeliverySettings {
            proxy: proxy.into(),
            proxy_from_env: from_env,
            no_proxy: no_proxy.iter().map(|s| s.to_string()).collect(),
            ..DeliverySettings::default()
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn no_proxy_unless_asked() {
        let env = vars(&[("HTTPS_PROXY", "http://proxy:3128")]);
        assert!(EgressProxy::from_settings(&settings("", false, &[]), &env).unwrap().is_none());
    }

    #[test]
    fn the_configured_proxy_serves_every_scheme_and_hides_its_password() {
        let p = EgressProxy::from_settings(
            &settings("http://user:secret@Proxy.Bank:3128", false, &["internal.bank"]),
            vars(&[]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.hosts(), ["proxy.bank"]);
        assert_eq!(p.proxies().len(), 1);
        assert_eq!(p.summary(), "all: http://proxy.bank:3128; direct: internal.bank");
        assert!(!p.summary().contains("secret"));
    }

    #[test]
    fn the_environment_is_read_in_either_case_when_asked() {
        let env = vars(&[
            ("https_proxy", "http://p1:8080"),
            ("HTTP_PROXY", "http://p2:8080"),
            ("NO_PROXY", "a.b,10.0.0.0/8"),
        ]);
        let p = EgressProxy::from_settings(&settings("", true, &["c.d"]), env).unwrap().unwrap();
        assert_eq!(p.hosts(), ["p1", "p2"]);
        assert_eq!(p.summary(), "https: http://p1:8080, http: http://p2:8080; direct: c.d,a.b,10.0.0.0/8");
        // Nothing set: direct.
        assert!(EgressProxy::from_settings(&settings("", true, &[]), vars(&[])).unwrap().is_none());
    }

    #[test]
    fn a_bad_proxy_url_is_a_clear_error_that_never_shows_its_password() {
        for bad in ["user:secret@proxy:3128:x", "socks5://user:secret@proxy:1080", "http://user:secret@:3128"]
        {
            let e =
                EgressProxy::from_settings(&settings(bad, false, &[]), vars(&[])).unwrap_err().to_string();
            assert!(e.contains("delivery.proxy") && !e.contains("secret"), "{e}");
            let e = settings(bad, false, &[]).validate().unwrap_err();
            assert!(e.contains("delivery.proxy") && !e.contains("secret"), "{e}");
        }
        let env = vars(&[("HTTPS_PROXY", "ftp://user:secret@p:21")]);
        let e = EgressProxy::from_settings(&settings("", true, &[]), env).unwrap_err().to_string();
        assert!(e.contains("HTTPS_PROXY") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn a_proxy_without_a_scheme_is_http_as_curl_reads_it() {
        let env = vars(&[("HTTPS_PROXY", "proxy.bank:3128")]);
        let p = EgressProxy::from_settings(&settings("", true, &[]), env).unwrap().unwrap();
        assert_eq!(p.summary(), "https: http://proxy.bank:3128");
        assert!(settings("user:pw@proxy.bank:3128", false, &[]).validate().is_ok());
    }
}
