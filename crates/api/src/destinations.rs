//! Destination checks at subscription time: the url's shape and where its host resolves.
//!
//! The delivery engine checks the resolved address again at every connect, so a DNS change
//! after this check cannot smuggle a request inside.

use webhookd_core::destination::DestinationPolicy;

/// Checks a url and every address its host resolves to; the error is a sentence for the caller.
pub async fn check(policy: &DestinationPolicy, url: &str, max_len: Option<usize>) -> Result<(), String> {
    let parsed = policy.check_url(url, max_len).map_err(|e| e.to_string())?;
    check_resolved(policy, &parsed).await
}

/// Checks every address the host of a url that passed [`DestinationPolicy::check_url`] resolves
/// to (an IP-literal host was checked there already); the error is a sentence for the caller.
pub async fn check_resolved(policy: &DestinationPolicy, parsed: &url::Url) -> Result<(), String> {
    let Some(url::Host::Domain(host)) = parsed.host() else {
        return Ok(()); // an IP literal was checked by check_url
    };
    let port = parsed.port_or_known_default().unwrap_or(443);
    let lookup = tokio::net::lookup_host((host, port));
    let addresses = tokio::time::timeout(std::time::Duration::from_secs(10), lookup)
        .await
        .map_err(|_| format!("resolving the host {host} took more than 10 s"))?
        .map_err(|e| format!("the host {host} does not resolve: {e}"))?;
    let mut any = false;
    for address in addresses {
        any = true;
        policy
            .check_ip(address.ip())
            .map_err(|e| format!("the host {host} resolves to {}: {e}", address.ip()))?;
    }
    if !any {
        return Err(format!("the host {host} does not resolve to any address"));
    }
    Ok(())
}
