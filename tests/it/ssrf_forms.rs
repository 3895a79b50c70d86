//! Every form of an inside destination, through both APIs' create endpoints (and Rabo's update):
//! each refused range as a literal, IPv4 spelled in decimal, octal, hex and short forms, IPv6
//! and the IPv6 forms that embed IPv4, loopback names, and host names that resolve inside.
//! Each is refused in its API's error format, and nothing is stored or changed.

use serde_json::json;
use webhookd_core::subscription::RaboEventType;

use crate::support::*;

const OBP_CREATE: &str = "/obp/v4.0.0/banks/gh.29.uk/account-web-hooks";
const SUBS: &str = "/v3/webhooks/subscriptions";

/// Inside destinations and a word the refusal must contain.
const FORMS: &[(&str, &str)] = &[
    // Each refused IPv4 range.
    ("http://127.0.0.1/", "loopback"),
    ("http://127.255.255.254/", "loopback"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://169.254.0.1/", "link-local"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://100.127.255.254/", "carrier-grade NAT"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0.1.2.3/", "this network"),
    ("http://192.0.2.1/", "documentation"),
    ("http://198.51.100.1/", "documentation"),
    ("http://203.0.113.1/", "documentation"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://198.19.255.254/", "benchmarking"),
    ("http://192.0.0.1/", "IETF protocol assignments"),
    ("http://240.0.0.1/", "reserved"),
    // IPv4 spelled otherwise.
    ("http://2130706433/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://0x7f.0.0.1/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://127.0.1/", "loopback"),
    ("http://0177.1/", "loopback"),
    ("http://127.000.000.001/", "loopback"),
    ("http://127.0.0.1./", "loopback"),
    ("http://%31%32%37.0.0.1/", "loopback"),
    ("http://\u{ff11}\u{ff12}\u{ff17}.\u{ff10}.\u{ff10}.\u{ff11}/", "loopback"),
    ("http://127\u{3002}0\u{3002}0\u{3002}1/", "loopback"),
    ("http://2852039166/", "link-local"),
    ("http://0xa9fea9fe/", "link-local"),
    ("http://0251.0376.0251.0376/", "link-local"),
    ("http://167772161/", "private"),
    ("http://012.0.0.1/", "private"),
    ("http://10.1/", "private"),
    ("http://0/", "unspecified"),
    ("http://4294967295/", "broadcast"),
    // IPv6, and IPv6 forms that embed an IPv4 address.
    ("http://[::1]/", "loopback"),
    ("http://[0:0:0:0:0:0:0:1]/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[fc00::1]/", "unique-local"),
    ("http://[fd12:3456:789a::1]/", "unique-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[febf::1]/", "link-local"),
    ("http://[fec0::1]/", "site-local"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://[::ffff:10.0.0.1]/", "IPv4-mapped private"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped loopback"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped loopback"),
    ("http://[::ffff:a9fe:a9fe]/", "IPv4-mapped link-local"),
    ("http://[0:0:0:0:0:ffff:169.254.169.254]/", "IPv4-mapped link-local"),
    ("http://[64:ff9b::a00:1]/", "NAT64 private"),
    ("http://[64:ff9b::127.0.0.1]/", "NAT64 loopback"),
    ("http://[64:ff9b:1::1]/", "local-use NAT64"),
    ("http://[2002:0a00:0001::]/", "6to4 private"),
    ("http://[2002:7f00:1::1]/", "6to4 loopback"),
    ("http://[2002:a9fe:a9fe::]/", "6to4 link-local"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "Teredo"),
    ("http://[::127.0.0.1]/", "reserved"),
    ("http://[100::1]/", "discard-only"),
    // Loopback names (RFC 6761), refused without asking a resolver.
    ("http://localhost/", "loopback name"),
    ("http://LOCALHOST./", "loopback name"),
    ("http://localhost:8080/hook", "loopback name"),
    ("http://foo.localhost/", "loopback name"),
    ("http://a.b.localhost/", "loopback name"),
];

/// Host names in this machine's hosts file that stand for inside addresses (other than the
/// loopback names, which are refused by name): the resolution check must refuse them. Which
/// names there are depends on the machine, so they are read, not assumed.
pub fn inside_names_from_hosts_file() -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let mut names = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|a| a.parse::<std::net::IpAddr>().ok()) else { continue };
        if webhookd_core::destination::non_global_range(ip).is_none() {
            continue;
        }
        for name in fields {
            let lower = name.to_ascii_lowercase();
            let plain = lower.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if plain
                && lower != "localhost"
                && !lower.ends_with(".localhost")
                && !names.iter().any(|(n, _)| *n == lower)
            {
                names.push((lower, ip.to_string()));
            }
        }
    }
    names.truncate(4);
    names
}

#[tokio::test]
async fn every_inside_form_is_refused_by_both_apis_and_nothing_is_stored() {
    let names = Names::new("ssrfforms");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    // http allowed, so that the address is what is refused, not the scheme; nothing inside allowed.
    c.destinations.allow_http = true;
    c.destinations.allow = vec![];
    let node = Node::start(c).await;
    let obp_token = node.token("u-obp", None, &["CanCreateWebhook@gh.29.uk"]).await;
    let merchant = node.token("u-m1", Some("m-1"), &[]).await;
    let existing = rabo("m-1", "https://example.com/hook", &[RaboEventType::Test]);
    node.put(existing.clone()).await;
    let one = format!("{SUBS}/{}", existing.id());

    let mut forms: Vec<(String, String)> =
        FORMS.iter().map(|(u, w)| (u.to_string(), w.to_string())).collect();
    for (name, ip) in inside_names_from_hosts_file() {
        // Refused after resolving: the answer names the address the host resolves to.
        forms.push((format!("http://{name}/hook"), format!("resolves to {ip}")));
    }
    for (url, word) in &forms {
        let body = json!({
            "account_id": "acc-1", "trigger_name": "OnBalanceChange", "url": url,
            "http_method": "POST", "http_protocol": "HTTP/1.1", "is_active": "true"
        });
        let a = node.call("POST", OBP_CREATE, Some(&obp_token), Some(body)).await;
        assert_eq!(a.status, 400, "OBP {url}: {}", a.text);
        assert_eq!(a.header("content-type"), Some("application/json"), "OBP {url}");
        assert_eq!(a.body["code"], json!(400), "OBP {url}: {}", a.text);
        let message = a.body["message"].as_str().unwrap();
        assert!(message.starts_with("OBP-10407: Invalid url. "), "OBP {url}: {message}");
        assert!(message.contains(word.as_str()), "OBP {url}: {message:?} should say {word:?}");

        let body = json!({"status": "enabled", "url": url, "eventTypes": ["test/v1"]});
        for (method, path) in [("POST", SUBS), ("PATCH", one.as_str())] {
            let a = node.call(method, path, Some(&merchant), Some(body.clone())).await;
            assert_eq!(a.status, 400, "Rabo {method} {url}: {}", a.text);
            assert_eq!(a.header("content-type"), Some("application/problem+json"), "Rabo {url}");
            let detail = a.body["detail"].as_str().unwrap();
            assert!(detail.starts_with("url is refused: "), "Rabo {method} {url}: {detail}");
            assert!(detail.contains(word.as_str()), "Rabo {method} {url}: {detail:?} should say {word:?}");
        }
    }
    let stored: Vec<_> = node.store.subscriptions().map(|s| s.unwrap()).collect();
    assert_eq!(stored, vec![existing], "nothing refused was stored, and the updated one is unchanged");
    node.stop().await;
}

#[tokio::test]
async fn allowing_loopback_opens_loopback_and_its_names_only() {
    // The set-up of tests and local runs: loopback allowed, everything else inside still refused.
    let names = Names::new("ssrfallow");
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(&names, &amqp_url(), dir.path())).await;
    let merchant = node.token("u-m1", Some("m-1"), &[]).await;
    for url in ["http://127.0.0.1:9/hook", "http://2130706433:9/hook", "http://[::ffff:127.0.0.1]:9/x"] {
        let body = json!({"status": "enabled", "url": url, "eventTypes": ["test/v1"]});
        let a = node.call("POST", SUBS, Some(&merchant), Some(body)).await;
        assert_eq!(a.status, 201, "{url}: {}", a.text);
    }
    for url in ["http://127.0.0.2/", "http://[::1]/", "http://10.0.0.1/", "http://169.254.169.254/"] {
        let body = json!({"status": "enabled", "url": url, "eventTypes": ["test/v1"]});
        let a = node.call("POST", SUBS, Some(&merchant), Some(body)).await;
        assert_eq!(a.status, 400, "{url}: {}", a.text);
    }
    assert_eq!(node.store.subscriptions().count(), 3);
    node.stop().await;
}
