//! What the fuzz targets share: the destination policy they check urls with, and turning
//! arbitrary bytes into a request target.

use webhookd_core::destination::DestinationPolicy;

/// The policy of local set-ups (`deploy/local/webhookd.toml`): plain http and the loopback
/// address allowed, so that more urls get past the scheme check into the address checks.
pub fn policy() -> DestinationPolicy {
    DestinationPolicy { allow_http: true, allow: vec!["127.0.0.1/32".into(), "::1/128".into()] }
}

/// `/path?<data>`, with every byte a request target cannot carry percent-encoded, so that the
/// query decoder sees exactly `data` (the request line of a real request is such a target).
pub fn request_target(path: &str, data: &[u8]) -> String {
    let mut out = String::with_capacity(path.len() + 1 + data.len() * 3);
    out.push_str(path);
    out.push('?');
    for &b in data {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
