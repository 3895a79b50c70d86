//! Which urls and addresses webhookd may send to: the `[destinations]` configuration section.
//!
//! Whoever holds a subscription token chooses the url, but the request leaves from inside the
//! bank's network. Without rules, a subscriber could point webhookd at an internal service, at the
//! cloud metadata endpoint (169.254.169.254) or at the loopback interface, and use webhookd as a
//! door into the network (server-side request forgery). So a destination must be an absolute
//! `https` url (`http` only where the operator allows it) without credentials, whose host is, or
//! resolves to, a globally routable address. Addresses in special-purpose ranges (loopback,
//! private, link-local, unique-local, documentation, multicast, ...) are refused unless the operator
//! lists them in `destinations.allow`; tests and local set-ups allow `127.0.0.1/32`.
//!
//! The rules are applied twice: [`DestinationPolicy::check_url`] when a subscription is created
//! and before every attempt (that is where an IP-literal host is checked), and
//! [`DestinationPolicy::check_ip`] on every address a host name resolves to, at connect time, by
//! the delivery engine's resolver. A DNS answer that changes after the subscription was accepted
//! therefore cannot smuggle a request inside.
//!
//! The classification is written out as explicit tables from the IANA special-purpose address
//! registries (std's `is_global` is unstable). IPv6 addresses that embed an IPv4 address
//! (IPv4-mapped, NAT64, 6to4) are classified by that IPv4 address, and any IPv6 address outside the
//! global unicast block `2000::/3` is refused as reserved.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use url::{Host, Url};

/// The configuration key of the allow-list, named in error messages.
const ALLOW_KEY: &str = "destinations.allow";

/// The destination rules: which urls and addresses webhookd may send to. The `[destinations]` config section.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationPolicy {
    /// Whether plain `http` urls are accepted (otherwise only `https`).
    pub allow_http: bool,
    /// Address ranges accepted even though they are not globally routable: CIDRs like
    /// `127.0.0.1/32`, `10.1.0.0/16` or `::1/128`; a bare address means `/32` or `/128`.
    pub allow: Vec<String>,
}

impl Default for DestinationPolicy {
    /// `https` only, nothing non-global allowed.
    fn default() -> DestinationPolicy {
        DestinationPolicy { allow_http: false, allow: Vec::new() }
    }
}

impl DestinationPolicy {
    /// Checks that every allow-list entry is an address or a CIDR; the error names the key and the entry.
    pub fn validate(&self) -> Result<(), String> {
        for entry in &self.allow {
            parse_allow_entry(entry).map_err(|why| format!("{ALLOW_KEY}: {entry:?} {why}"))?;
        }
        Ok(())
    }

    /// Checks a destination url (and its host, when it is an IP literal) and returns it parsed and normalized.
    ///
    /// The url must be absolute (`scheme://host...`), `https` (or `http` when `allow_http`), without
    /// user name or password, with a host, and at most `max_len` characters long when given. Spaces,
    /// control characters and backslashes are refused rather than silently repaired. An IP-literal
    /// host is checked with [`DestinationPolicy::check_ip`] after the `url` crate's normalization
    /// (so `http://2130706433/`, `http://0177.0.0.1/` and `http://0x7f.1/` are all `127.0.0.1`);
    /// `localhost` and the names under it are refused as loopback; any other host name is
    /// checked at connect time, on the addresses it resolves to.
    pub fn check_url(&self, url: &str, max_len: Option<usize>) -> Result<Url, UrlRefusal> {
        if let Some(max) = max_len {
            let len = url.chars().count();
            if len > max {
                return Err(UrlRefusal::TooLong { len, max });
            }
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlRefusal::Invalid("it contains white space or control characters".into()));
        }
        if url.contains('\\') {
            return Err(UrlRefusal::Invalid("it contains a backslash".into()));
        }
        let parsed = Url::parse(url).map_err(|e| match e {
            url::ParseError::RelativeUrlWithoutBase => UrlRefusal::NotAbsolute,
            url::ParseError::EmptyHost => UrlRefusal::NoHost,
            other => UrlRefusal::Invalid(other.to_string()),
        })?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err(UrlRefusal::HttpNotAllowed),
            other => return Err(UrlRefusal::Scheme(other.to_string())),
        }
        // WHATWG parsing reads `https:host` and `https:/host` as `https://host`; a url meant for
        // a bank's receiver is written in full.
        if !url.get(parsed.scheme().len()..).is_some_and(|rest| rest.starts_with("://")) {
            return Err(UrlRefusal::NotAbsolute);
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(UrlRefusal::Credentials);
        }
        match parsed.host() {
            None => return Err(UrlRefusal::NoHost),
            // RFC 6761: `localhost` and every name under it are the loopback interface, whatever
            // a resolver says; refused without asking one (unless loopback is allowed).
            Some(Host::Domain(name)) if is_loopback_name(name) => {
                if !self.allows(IpAddr::V4(Ipv4Addr::LOCALHOST)) {
                    return Err(UrlRefusal::LoopbackName(name.to_string()));
                }
            }
            Some(Host::Domain(_)) => {}
            Some(Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip))?,
            Some(Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip))?,
        }
        Ok(parsed)
    }

    /// Accepts an address in an allow-list range, or else only a globally routable one.
    ///
    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) also matches the allow-list through its IPv4
    /// address, so allowing `127.0.0.1/32` allows `::ffff:127.0.0.1` too.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), UrlRefusal> {
        if self.allows(ip) {
            return Ok(());
        }
        match non_global_range(ip) {
            Some(range) => Err(UrlRefusal::NonGlobal { ip, range }),
            None => Ok(()),
        }
    }

    /// Whether an allow-list entry covers `ip` (or the IPv4 address an IPv4-mapped `ip` stands for).
    ///
    /// Entries that do not parse are skipped (fail closed); [`DestinationPolicy::validate`] reports them.
    fn allows(&self, ip: IpAddr) -> bool {
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allow
            .iter()
            .filter_map(|entry| parse_allow_entry(entry).ok())
            .any(|net| net.contains(&ip) || mapped.is_some_and(|v4| net.contains(&v4)))
    }
}

/// Whether a (lower-case, as the url crate leaves it) host name is `localhost` or under it,
/// with or without the root's trailing dot.
fn is_loopback_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name == "localhost" || name.ends_with(".localhost")
}

/// Parses one allow-list entry: a CIDR in canonical form, or a bare address.
fn parse_allow_entry(entry: &str) -> Result<IpNet, String> {
    let text = entry.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = text
        .parse()
        .map_err(|_| "is not an IP address or a CIDR (like 10.1.0.0/16 or ::1/128)".to_string())?;
    if net.trunc() != net {
        return Err(format!("has bits set after the prefix; write {}", net.trunc()));
    }
    Ok(net)
}

/// Why a url or address is refused; Display gives a clear sentence for API error messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    /// Not an absolute url (`scheme://host/...`).
    #[error("the url must be absolute, like https://host/path")]
    NotAbsolute,
    /// A scheme other than `https` or `http`.
    #[error("the url scheme must be https, not {0}")]
    Scheme(String),
    /// `http` while the configuration allows only `https`.
    #[error("the url must use https; plain http is not allowed")]
    HttpNotAllowed,
    /// The url carries a user name or password.
    #[error("the url must not contain a user name or password")]
    Credentials,
    /// The url has no host.
    #[error("the url has no host")]
    NoHost,
    /// The url is longer than allowed.
    #[error("the url is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// Length of the url, in characters.
        len: usize,
        /// The maximum, in characters.
        max: usize,
    },
    /// The address is in a range that is not globally routable, and not in the allow-list.
    #[error(
        "the destination address {ip} is not a public address ({range}), so webhookd does not send to it"
    )]
    NonGlobal {
        /// The refused address, as given.
        ip: IpAddr,
        /// The special-purpose range it is in, e.g. `loopback` or `IPv4-mapped private`.
        range: &'static str,
    },
    /// The host is `localhost` or a name under it (RFC 6761), and loopback is not allowed.
    #[error("the host {0} is a loopback name (RFC 6761), so webhookd does not send to it")]
    LoopbackName(String),
    /// The url does not parse.
    #[error("the url is not valid: {0}")]
    Invalid(String),
}

/// The special-purpose range `ip` is in, or `None` when it is globally routable.
///
/// IPv6 addresses embedding an IPv4 address (`::ffff:0:0/96`, `64:ff9b::/96`, `2002::/16`) are
/// classified by the embedded address, with the range named after both (`IPv4-mapped loopback`).
pub fn non_global_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4, Via::Direct),
        IpAddr::V6(v6) => v6_range(v6),
    }
}

/// How an IPv4 address was reached: which of a [`V4Range`]'s names applies.
#[derive(Clone, Copy)]
enum Via {
    /// Written as IPv4.
    Direct = 0,
    /// `::ffff:a.b.c.d`.
    Mapped = 1,
    /// `64:ff9b::a.b.c.d`.
    Nat64 = 2,
    /// `2002:aabb:ccdd::/48`.
    SixToFour = 3,
}

/// One non-global IPv4 range and its names, plain and as embedded in IPv6.
struct V4Range {
    /// Network address.
    net: u32,
    /// Prefix length.
    len: u32,
    /// Names, indexed by [`Via`].
    names: [&'static str; 4],
}

/// A [`V4Range`] from octets, prefix length and name.
macro_rules! v4 {
    ($net:expr, $len:expr, $name:literal) => {
        V4Range {
            net: u32::from_be_bytes($net),
            len: $len,
            names: [$name, concat!("IPv4-mapped ", $name), concat!("NAT64 ", $name), concat!("6to4 ", $name)],
        }
    };
}

/// Non-global IPv4 ranges (IANA IPv4 special-purpose registry), the more specific first.
const V4_RANGES: &[V4Range] = &[
    v4!([0, 0, 0, 0], 32, "unspecified"),
    v4!([0, 0, 0, 0], 8, "this network"),
    v4!([10, 0, 0, 0], 8, "private"),
    v4!([100, 64, 0, 0], 10, "carrier-grade NAT"),
    v4!([127, 0, 0, 0], 8, "loopback"),
    v4!([169, 254, 0, 0], 16, "link-local"),
    v4!([172, 16, 0, 0], 12, "private"),
    v4!([192, 0, 0, 0], 24, "IETF protocol assignments"),
    v4!([192, 0, 2, 0], 24, "documentation"),
    v4!([192, 88, 99, 0], 24, "6to4 relay anycast"),
    v4!([192, 168, 0, 0], 16, "private"),
    v4!([198, 18, 0, 0], 15, "benchmarking"),
    v4!([198, 51, 100, 0], 24, "documentation"),
    v4!([203, 0, 113, 0], 24, "documentation"),
    v4!([224, 0, 0, 0], 4, "multicast"),
    v4!([255, 255, 255, 255], 32, "broadcast"),
    v4!([240, 0, 0, 0], 4, "reserved"),
];

/// The non-global range of an IPv4 address reached `via`, or `None` when it is global.
fn v4_range(ip: Ipv4Addr, via: Via) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_RANGES.iter().find(|r| bits & mask32(r.len) == r.net).map(|r| r.names[via as usize])
}

/// The netmask of a prefix length, IPv4.
fn mask32(len: u32) -> u32 {
    u32::MAX.checked_shl(32 - len).unwrap_or(0)
}

/// The netmask of a prefix length, IPv6.
fn mask128(len: u32) -> u128 {
    u128::MAX.checked_shl(128 - len).unwrap_or(0)
}

/// What an IPv6 range means.
enum V6Kind {
    /// Not global, under this name.
    Named(&'static str),
    /// Embeds an IPv4 address in the low 32 bits, classified as reached this way.
    EmbedsLow32(Via),
    /// 6to4: embeds an IPv4 address in bits 16 to 48.
    SixToFour,
}

/// Special-purpose IPv6 ranges (IANA IPv6 special-purpose registry), the more specific first.
/// Addresses in none of them are still refused outside the global unicast block `2000::/3`.
const V6_RANGES: &[(u128, u32, V6Kind)] = &[
    (0, 128, V6Kind::Named("unspecified")),
    (1, 128, V6Kind::Named("loopback")),
    (0xffff_0000_0000, 96, V6Kind::EmbedsLow32(Via::Mapped)),
    (0x0064_ff9b << 96, 96, V6Kind::EmbedsLow32(Via::Nat64)),
    (0x0064_ff9b_0001 << 80, 48, V6Kind::Named("local-use NAT64")),
    (0x0100 << 112, 64, V6Kind::Named("discard-only")),
    (0x2001_0002 << 96, 48, V6Kind::Named("benchmarking")),
    (0x2001_0000 << 96, 32, V6Kind::Named("Teredo")),
    (0x2001 << 112, 23, V6Kind::Named("IETF protocol assignments")),
    (0x2001_0db8 << 96, 32, V6Kind::Named("documentation")),
    (0x3fff << 112, 20, V6Kind::Named("documentation")),
    (0x2002 << 112, 16, V6Kind::SixToFour),
    (0xfc00 << 112, 7, V6Kind::Named("unique-local")),
    (0xfe80 << 112, 10, V6Kind::Named("link-local")),
    (0xfec0 << 112, 10, V6Kind::Named("site-local")),
    (0xff00 << 112, 8, V6Kind::Named("multicast")),
];

/// The non-global range of an IPv6 address, or `None` when it is global.
fn v6_range(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    let found = V6_RANGES.iter().find(|(net, len, _)| bits & mask128(*len) == *net);
    match found {
        Some((_, _, V6Kind::Named(name))) => Some(name),
        Some((_, _, V6Kind::EmbedsLow32(via))) => v4_range(Ipv4Addr::from(bits as u32), *via),
        Some((_, _, V6Kind::SixToFour)) => v4_range(Ipv4Addr::from((bits >> 80) as u32), Via::SixToFour),
        None if bits & mask128(3) != 0x2000 << 112 => Some("reserved"),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> DestinationPolicy {
        DestinationPolicy::default()
    }

    fn allowing(entries: &[&str]) -> DestinationPolicy {
        DestinationPolicy { allow_http: true, allow: entries.iter().map(|e| e.to_string()).collect() }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn refused_addresses_name_their_range() {
        let table = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "link-local"),
            ("169.254.0.1", "link-local"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.0.9", "IETF protocol assignments"),
            ("192.0.2.1", "documentation"),
            ("192.88.99.1", "6to4 relay anycast"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("254.1.2.3", "reserved"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
            ("::ffff:10.0.0.1", "IPv4-mapped private"),
            ("::ffff:169.254.169.254", "IPv4-mapped link-local"),
            ("::ffff:0.0.0.0", "IPv4-mapped unspecified"),
            ("64:ff9b::10.0.0.1", "NAT64 private"),
            ("64:ff9b::127.0.0.1", "NAT64 loopback"),
            ("64:ff9b::a9fe:a9fe", "NAT64 link-local"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("100::1", "discard-only"),
            ("2001::1", "Teredo"),
            ("2001:2::1", "benchmarking"),
            ("2001:10::1", "IETF protocol assignments"),
            ("2001:1ff:ffff::1", "IETF protocol assignments"),
            ("2001:db8::1", "documentation"),
            ("2001:db8:ffff::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2002:7f00:1::1", "6to4 loopback"),
            ("2002:c0a8:101::", "6to4 private"),
            ("fc00::1", "unique-local"),
            ("fd12:3456:789a::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
            ("::7f00:1", "reserved"),
            ("::a00:1", "reserved"),
            ("5f00::1", "reserved"),
            ("4000::1", "reserved"),
            ("1::", "reserved"),
        ];
        for (text, range) in table {
            let addr = ip(text);
            assert_eq!(non_global_range(addr), Some(range), "{text}");
            assert_eq!(strict().check_ip(addr), Err(UrlRefusal::NonGlobal { ip: addr, range }), "{text}");
        }
    }

    #[test]
    fn public_addresses_are_accepted() {
        for text in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.0.3.1",
            "192.88.98.1",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2001:4860:4860::8888",
            "2a00:1450:4001::1",
            "2606:4700::1111",
            "2001:200::1",
            "2001:db9::1",
            "3ffe::1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            assert_eq!(non_global_range(ip(text)), None, "{text}");
            assert_eq!(strict().check_ip(ip(text)), Ok(()), "{text}");
        }
    }

    #[test]
    fn allow_list_admits_ranges() {
        let policy = allowing(&["127.0.0.1/32", "10.1.0.0/16", "::1", " fd00::/8 "]);
        assert_eq!(policy.validate(), Ok(()));
        for text in
            ["127.0.0.1", "10.1.2.3", "::1", "fd00::5", "::ffff:127.0.0.1", "::ffff:10.1.0.1", "8.8.8.8"]
        {
            assert_eq!(policy.check_ip(ip(text)), Ok(()), "{text}");
        }
        for text in ["127.0.0.2", "10.2.0.1", "::2", "fc00::1", "::ffff:127.0.0.2", "64:ff9b::127.0.0.1"] {
            assert!(matches!(policy.check_ip(ip(text)), Err(UrlRefusal::NonGlobal { .. })), "{text}");
        }
        // A bare IPv4 address means /32, and an IPv4 entry does not cover ::1.
        let policy = allowing(&["127.0.0.1"]);
        assert_eq!(policy.check_ip(ip("127.0.0.1")), Ok(()));
        assert!(policy.check_ip(ip("127.0.0.2")).is_err());
        assert!(policy.check_ip(ip("::1")).is_err());
        // An IPv6 allow entry for the mapped form works on the mapped form itself.
        let policy = allowing(&["::ffff:10.0.0.0/104"]);
        assert_eq!(policy.check_ip(ip("::ffff:10.9.9.9")), Ok(()));
        // A broken entry allows nothing.
        let policy = allowing(&["127.0.0.1/33"]);
        assert!(policy.check_ip(ip("127.0.0.1")).is_err());
    }

    #[test]
    fn validate_names_key_and_entry() {
        assert_eq!(strict().validate(), Ok(()));
        for bad in
            ["localhost", "10.0.0.0/33", "::1/129", "10.0.0/8", "", "010.0.0.1", "10.0.0.0/8,127.0.0.1"]
        {
            let err = allowing(&["127.0.0.1/32", bad]).validate().unwrap_err();
            assert!(err.starts_with("destinations.allow: "), "{err}");
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("is not an IP address or a CIDR"), "{err}");
        }
        let err = allowing(&["10.1.2.3/8"]).validate().unwrap_err();
        assert_eq!(
            err,
            r#"destinations.allow: "10.1.2.3/8" has bits set after the prefix; write 10.0.0.0/8"#
        );
    }

    #[test]
    fn policy_reads_from_toml_shape() {
        let policy: DestinationPolicy =
            serde_json::from_str(r#"{"allow_http":true,"allow":["127.0.0.1/32"]}"#).unwrap();
        assert_eq!(policy, allowing(&["127.0.0.1/32"]));
        assert!(serde_json::from_str::<DestinationPolicy>(r#"{"allow_http":true,"allow":[],"x":1}"#).is_err());
        assert_eq!(DestinationPolicy::default(), DestinationPolicy { allow_http: false, allow: vec![] });
    }

    #[test]
    fn good_urls_are_accepted_and_normalized() {
        let policy = strict();
        let url = policy.check_url("https://Example.COM/hooks?x=1#f", Some(1024)).unwrap();
        assert_eq!(url.as_str(), "https://example.com/hooks?x=1#f");
        assert!(policy.check_url("HTTPS://example.com:8443/a/b", None).is_ok());
        assert!(policy.check_url("https://8.8.8.8/", None).is_ok());
        assert!(policy.check_url("https://[2001:4860:4860::8888]:443/x", None).is_ok());
        assert!(policy.check_url("https://bücher.example/", None).is_ok());
        // Host names are checked at connect time, on what they resolve to.
        assert!(policy.check_url("https://127.0.0.1.nip.io/", None).is_ok());
        assert!(policy.check_url("https://localhost.example.com/", None).is_ok());
        assert!(policy.check_url("https://notlocalhost/", None).is_ok());
        let http = allowing(&[]);
        assert!(http.check_url("http://example.com/", None).is_ok());
    }

    #[test]
    fn ip_forms_are_normalized_before_the_check() {
        let policy = DestinationPolicy { allow_http: true, allow: vec![] };
        let loopback = UrlRefusal::NonGlobal { ip: ip("127.0.0.1"), range: "loopback" };
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.1/",
            "http://0x7f000001/",
            "http://017700000001/",
            "http://127.1/",
            "http://0x7F.0.0.1:8080/x",
            "http://127.0.0.1./",
        ] {
            assert_eq!(policy.check_url(url, None), Err(loopback.clone()), "{url}");
        }
        let metadata = UrlRefusal::NonGlobal { ip: ip("169.254.169.254"), range: "link-local" };
        assert_eq!(policy.check_url("http://2852039166/", None), Err(metadata.clone()));
        assert_eq!(policy.check_url("http://0xa9fea9fe/", None), Err(metadata));
        assert_eq!(
            policy.check_url("http://0/", None),
            Err(UrlRefusal::NonGlobal { ip: ip("0.0.0.0"), range: "unspecified" })
        );
        assert_eq!(
            policy.check_url("http://012.0.0.1/", None),
            Err(UrlRefusal::NonGlobal { ip: ip("10.0.0.1"), range: "private" })
        );
        // Invalid numeric hosts do not parse at all.
        assert!(matches!(policy.check_url("http://1.2.3.4.5/", None), Err(UrlRefusal::Invalid(_))));
        assert!(matches!(policy.check_url("http://0x1ffffffff/", None), Err(UrlRefusal::Invalid(_))));
    }

    #[test]
    fn ipv6_literals_are_checked() {
        let policy = strict();
        let table = [
            ("https://[::1]/", "::1", "loopback"),
            ("https://[::]/", "::", "unspecified"),
            ("https://[fe80::1]/", "fe80::1", "link-local"),
            ("https://[fd00::1]:8443/", "fd00::1", "unique-local"),
            ("https://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1", "IPv4-mapped loopback"),
            ("https://[::ffff:10.0.0.1]/", "::ffff:10.0.0.1", "IPv4-mapped private"),
            ("https://[::ffff:7f00:1]/", "::ffff:127.0.0.1", "IPv4-mapped loopback"),
            ("https://[64:ff9b::192.168.0.1]/", "64:ff9b::c0a8:1", "NAT64 private"),
            ("https://[2001:db8::1]/", "2001:db8::1", "documentation"),
            ("https://[ff02::1]/", "ff02::1", "multicast"),
            ("https://[::127.0.0.1]/", "::7f00:1", "reserved"),
        ];
        for (url, addr, range) in table {
            assert_eq!(
                policy.check_url(url, None),
                Err(UrlRefusal::NonGlobal { ip: ip(addr), range }),
                "{url}"
            );
        }
        assert!(matches!(policy.check_url("https://[fe80::1%25eth0]/", None), Err(UrlRefusal::Invalid(_))));
        assert!(matches!(policy.check_url("https://[::1/", None), Err(UrlRefusal::Invalid(_))));
    }

    #[test]
    fn malformed_urls_are_refused() {
        let policy = strict();
        let table = [
            ("/hooks", UrlRefusal::NotAbsolute),
            ("example.com/hooks", UrlRefusal::NotAbsolute),
            ("//example.com/hooks", UrlRefusal::NotAbsolute),
            ("", UrlRefusal::NotAbsolute),
            ("https:example.com/x", UrlRefusal::NotAbsolute),
            ("https:/example.com/x", UrlRefusal::NotAbsolute),
            ("ftp://example.com/", UrlRefusal::Scheme("ftp".into())),
            ("file:///etc/passwd", UrlRefusal::Scheme("file".into())),
            ("gopher://example.com/", UrlRefusal::Scheme("gopher".into())),
            ("javascript:alert(1)", UrlRefusal::Scheme("javascript".into())),
            ("mailto:a@example.com", UrlRefusal::Scheme("mailto".into())),
            ("localhost:8080", UrlRefusal::Scheme("localhost".into())),
            ("http://example.com/", UrlRefusal::HttpNotAllowed),
            ("https://user:pw@example.com/", UrlRefusal::Credentials),
            ("https://user@example.com/", UrlRefusal::Credentials),
            ("https://:pw@example.com/", UrlRefusal::Credentials),
            ("https://", UrlRefusal::NoHost),
            ("https://:443/", UrlRefusal::NoHost),
        ];
        for (url, refusal) in table {
            assert_eq!(policy.check_url(url, None), Err(refusal), "{url:?}");
        }
        for url in [
            "https://example.com/a b",
            " https://example.com/",
            "https://example.com/\n",
            "https://exa\tmple.com/",
            "https://example.com\\@evil.com/",
            "https:\\\\example.com/",
            "https://exa mple.com/",
            "https://example.com:99999/",
            "https://ex%00ample.com/",
        ] {
            assert!(matches!(policy.check_url(url, None), Err(UrlRefusal::Invalid(_))), "{url:?}");
        }
        // Credentials are refused even with an IP literal or http allowed.
        let open = allowing(&["127.0.0.1/32"]);
        assert_eq!(open.check_url("http://user:pw@127.0.0.1/", None), Err(UrlRefusal::Credentials));
        assert!(open.check_url("http://127.0.0.1:8080/hook", None).is_ok());
        assert!(open.check_url("http://[::ffff:127.0.0.1]/", None).is_ok());
    }

    #[test]
    fn length_limit_counts_characters() {
        let policy = strict();
        let base = "https://example.com/";
        let exact = format!("{base}{}", "a".repeat(1024 - base.len()));
        assert_eq!(exact.len(), 1024);
        assert!(policy.check_url(&exact, Some(1024)).is_ok());
        let long = format!("{exact}a");
        assert_eq!(policy.check_url(&long, Some(1024)), Err(UrlRefusal::TooLong { len: 1025, max: 1024 }));
        assert!(policy.check_url(&long, None).is_ok());
        let accented = format!("{base}{}", "é".repeat(1024 - base.len()));
        assert!(policy.check_url(&accented, Some(1024)).is_ok());
    }

    #[test]
    fn refusals_read_as_sentences() {
        let refusal = UrlRefusal::NonGlobal { ip: ip("::ffff:127.0.0.1"), range: "IPv4-mapped loopback" };
        assert_eq!(
            refusal.to_string(),
            "the destination address ::ffff:127.0.0.1 is not a public address (IPv4-mapped loopback), \
             so webhookd does not send to it"
        );
        assert_eq!(
            UrlRefusal::TooLong { len: 1025, max: 1024 }.to_string(),
            "the url is 1025 characters long; at most 1024 are allowed"
        );
        assert_eq!(UrlRefusal::Scheme("ftp".into()).to_string(), "the url scheme must be https, not ftp");
        assert_eq!(
            UrlRefusal::HttpNotAllowed.to_string(),
            "the url must use https; plain http is not allowed"
        );
    }

    #[test]
    fn every_spelling_of_an_inside_address_is_normalized_and_refused() {
        let policy = allowing(&[]);
        let loopback = UrlRefusal::NonGlobal { ip: ip("127.0.0.1"), range: "loopback" };
        // Percent-encoding, full-width and circled digits, ideographic full stops (IDNA
        // mapping), leading zeros, mixed radixes, two- and three-part forms, a trailing dot.
        for url in [
            "http://%31%32%37.0.0.1/",
            "http://\u{ff11}\u{ff12}\u{ff17}.\u{ff10}.\u{ff10}.\u{ff11}/",
            "http://\u{2460}\u{2461}\u{2466}.0.0.1/",
            "http://127\u{3002}0\u{3002}0\u{3002}1/",
            "http://127.000.000.001/",
            "http://0x7f.0x0.0x0.0x1/",
            "http://0x00007f.1/",
            "http://0177.1/",
            "http://127.0.1/",
            "http://0x7f.1./",
            "HTTP://127.0.0.1:65535/",
        ] {
            assert_eq!(policy.check_url(url, None), Err(loopback.clone()), "{url}");
        }
        let private = UrlRefusal::NonGlobal { ip: ip("10.0.0.1"), range: "private" };
        for url in ["http://167772161/", "http://0xa000001/", "http://012.0.0.01/", "http://10.1/"] {
            assert_eq!(policy.check_url(url, None), Err(private.clone()), "{url}");
        }
        let table = [
            ("http://4294967295/", "255.255.255.255", "broadcast"),
            ("http://0xffffffff/", "255.255.255.255", "broadcast"),
            ("http://00000/", "0.0.0.0", "unspecified"),
            ("http://0x64.0x40.0.1/", "100.64.0.1", "carrier-grade NAT"),
            ("http://3325256705/", "198.51.100.1", "documentation"),
            ("http://0306.022.0.1/", "198.18.0.1", "benchmarking"),
            ("http://0xe0000001/", "224.0.0.1", "multicast"),
            ("http://2886729729/", "172.16.0.1", "private"),
            ("http://3232235521/", "192.168.0.1", "private"),
        ];
        for (url, addr, range) in table {
            assert_eq!(
                policy.check_url(url, None),
                Err(UrlRefusal::NonGlobal { ip: ip(addr), range }),
                "{url}"
            );
        }
        // IPv6 spellings: expanded, zero-compressed, hex-mapped, embedded forms.
        let table = [
            ("http://[0:0:0:0:0:0:0:1]/", "::1", "loopback"),
            ("http://[0::1]/", "::1", "loopback"),
            ("http://[0:0:0:0:0:ffff:127.0.0.1]/", "::ffff:127.0.0.1", "IPv4-mapped loopback"),
            ("http://[::ffff:a00:1]/", "::ffff:10.0.0.1", "IPv4-mapped private"),
            ("http://[::ffff:a9fe:a9fe]/", "::ffff:169.254.169.254", "IPv4-mapped link-local"),
            ("http://[64:ff9b::a00:1]/", "64:ff9b::a00:1", "NAT64 private"),
            ("http://[2002:a00:1::]/", "2002:a00:1::", "6to4 private"),
            ("http://[2002:a9fe:a9fe::1]/", "2002:a9fe:a9fe::1", "6to4 link-local"),
            (
                "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                "Teredo",
            ),
            ("http://[FC00::1]/", "fc00::1", "unique-local"),
            ("http://[fdff:ffff::1]/", "fdff:ffff::1", "unique-local"),
            ("http://[fe80::a:b]/", "fe80::a:b", "link-local"),
            ("http://[ff05::2]/", "ff05::2", "multicast"),
        ];
        for (url, addr, range) in table {
            assert_eq!(
                policy.check_url(url, None),
                Err(UrlRefusal::NonGlobal { ip: ip(addr), range }),
                "{url}"
            );
        }
        // An IPv4 address cannot be smuggled into an IPv6 literal in short form.
        assert!(matches!(policy.check_url("http://[::ffff:127.1]/", None), Err(UrlRefusal::Invalid(_))));
        // What looks like an address before an `@` is a user name: refused as credentials.
        assert_eq!(policy.check_url("http://127.0.0.1:80@example.com/", None), Err(UrlRefusal::Credentials));
        assert_eq!(policy.check_url("http://example.com@127.0.0.1/", None), Err(UrlRefusal::Credentials));
        // After a `#` it is a fragment, and the host is example.com.
        assert_eq!(
            policy.check_url("http://example.com#@127.0.0.1/", None).unwrap().host_str(),
            Some("example.com")
        );
    }

    #[test]
    fn loopback_names_are_refused_without_resolving() {
        let policy = allowing(&[]);
        for (url, host) in [
            ("https://localhost/", "localhost"),
            ("https://LOCALHOST./x", "localhost."),
            ("https://localhost%2e/", "localhost."),
            ("https://foo.localhost/", "foo.localhost"),
            ("https://a.b.LocalHost:8443/", "a.b.localhost"),
            ("http://localhost:9/hook", "localhost"),
        ] {
            assert_eq!(policy.check_url(url, None), Err(UrlRefusal::LoopbackName(host.into())), "{url}");
        }
        assert_eq!(
            UrlRefusal::LoopbackName("foo.localhost".into()).to_string(),
            "the host foo.localhost is a loopback name (RFC 6761), so webhookd does not send to it"
        );
        // Where loopback is allowed (tests, local set-ups), so are its names; an allow-list entry
        // for other addresses does not open them.
        assert!(allowing(&["127.0.0.1/32"]).check_url("http://localhost:9/hook", None).is_ok());
        assert!(allowing(&["127.0.0.0/8"]).check_url("http://foo.localhost/", None).is_ok());
        assert!(allowing(&["10.0.0.0/8", "::1"]).check_url("http://localhost/", None).is_err());
    }
}
