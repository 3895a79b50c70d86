//! Deliveries through an egress proxy (issue 18, item 1), with a real proxy: Debian's tinyproxy
//! on loopback (scripts/test.sh installs it). The destination policy still holds: a refused
//! destination never reaches the proxy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use uuid::Uuid;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::subscription::RaboEventType;
use webhookd_harness::receiver::{Receiver, Reply, Script};

use crate::support::*;

/// A tinyproxy on 127.0.0.1, logging every request it gets; stopped on drop.
struct TinyProxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl TinyProxy {
    async fn start(dir: &Path) -> TinyProxy {
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        // No ConnectPort line: CONNECT to any port. Clients from this machine only; and it goes
        // on to `localhost` only (a filter), so the test sends nothing off this machine even
        // where it has a network: other requests are logged, then refused.
        let filter = dir.join("tinyproxy.filter");
        std::fs::write(&filter, "^localhost$\n").unwrap();
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 10\nLogFile \"{}\"\nLogLevel Connect\nPidFile \"{}\"\n\
                 MaxClients 50\nAllow 127.0.0.1\nFilter \"{}\"\nFilterExtended On\nFilterDefaultDeny Yes\n",
                log.display(),
                dir.join("tinyproxy.pid").display(),
                filter.display()
            ),
        )
        .unwrap();
        let child = Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "tinyproxy is not installed: scripts/test.sh installs it (scripts/apt-install.sh tinyproxy)",
            );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "tinyproxy did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        TinyProxy { child, port, log }
    }

    /// The requests the proxy got, as it logged them (`GET http://host:port/path HTTP/1.1`).
    fn requests(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once("): ").map(|(_, r)| r.to_string()))
            .filter(|r| r.contains(" HTTP/"))
            .collect()
    }
}

impl Drop for TinyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn deliveries_go_through_the_proxy_and_a_refused_destination_never_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = TinyProxy::start(dir.path()).await;
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/via-proxy", Script::always(Reply::ack()));
    receiver.script("/direct", Script::always(Reply::ack()));
    receiver.script("/refused", Script::always(Reply::ack()));
    let port = receiver.url("/").trim_start_matches("http://127.0.0.1:").trim_end_matches('/').to_string();

    // Through the proxy by name, and directly for a destination in no_proxy.
    let names = Names::new("egress");
    let data = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), data.path());
    c.delivery.proxy = format!("http://127.0.0.1:{}", proxy.port);
    c.delivery.no_proxy = vec!["127.0.0.1".into()];
    // `localhost` resolves to ::1 too where /etc/hosts says so; through a proxy every address
    // must be allowed.
    c.destinations.allow.push("::1/128".into());
    let node = Node::start(c).await;
    let via = rabo("m-1", &format!("http://localhost:{port}/via-proxy"), &[RaboEventType::OrderFinalized]);
    let direct = rabo("m-1", &receiver.url("/direct"), &[RaboEventType::OrderFinalized]);
    node.put(via.clone()).await;
    node.put(direct.clone()).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let event = Uuid::new_v4();
    publisher.event(&order_event(event, "m-1")).await;
    node.wait_state(event, &via.id(), DeliveryState::Delivered).await;
    node.wait_state(event, &direct.id(), DeliveryState::Delivered).await;
    let proxied = &receiver.received_on("/via-proxy")[0];
    assert!(proxied.header("via").is_some_and(|v| v.contains("tinyproxy")), "{:?}", proxied.headers);
    assert!(proxied.header("x-smartpay-signature").is_some(), "signed as always");
    assert!(receiver.received_on("/direct")[0].header("via").is_none(), "no_proxy goes direct");
    let requests = proxy.requests();
    assert!(requests.iter().any(|r| r.contains(&format!("localhost:{port}/via-proxy"))), "{requests:?}");
    assert!(!requests.iter().any(|r| r.contains("/direct")), "{requests:?}");
    node.stop().await;

    // A policy that refuses loopback, with the proxy named by a loopback name: the proxy is
    // exempt (a public destination reaches it), the refused destination never does.
    let names = Names::new("egress-refused");
    let data = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), data.path());
    c.delivery.proxy = format!("http://localhost:{}", proxy.port);
    c.destinations.allow = Vec::new();
    c.retry.retries = 1;
    let node = Node::start(c).await;
    let refused = rabo("m-2", &format!("http://localhost:{port}/refused"), &[RaboEventType::OrderFinalized]);
    // Documentation range (RFC 5737) is refused too; a public literal is allowed.
    let public = rabo("m-2", "http://93.184.216.34/webhookd-egress-test", &[RaboEventType::OrderFinalized]);
    node.put(refused.clone()).await;
    node.put(public.clone()).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let event = Uuid::new_v4();
    publisher.event(&order_event(event, "m-2")).await;
    let d = node.wait_state(event, &refused.id(), DeliveryState::Failed).await;
    let error = d.last_error.unwrap_or_default();
    // Refused by name here (a loopback name); a name that resolves to a refused address is
    // refused the same way (crates/delivery/src/resolver.rs, `through_a_proxy_...`).
    assert!(error.contains("refused destination") && error.contains("loopback"), "{error}");
    // The public destination was handed to the proxy (whose filter refuses it).
    let deadline = tokio::time::Instant::now() + HANG;
    while !proxy.requests().iter().any(|r| r.contains("93.184.216.34/webhookd-egress-test")) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", proxy.requests());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = proxy.requests();
    assert!(!requests.iter().any(|r| r.contains("/refused")), "{requests:?}");
    assert!(receiver.received_on("/refused").is_empty());
    node.stop().await;
}
