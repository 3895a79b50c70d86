//! What changes without a restart (issue 18, items 9 and 10): the API over TLS with a
//! certificate renewed in place, and signing keys rotated in their secrets file, the JWKS and
//! the signatures of later deliveries following.

use std::path::Path;
use std::time::Duration;

use uuid::Uuid;
use webhookd::keys::NewKeys;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::subscription::RaboEventType;
use webhookd_harness::receiver::{Receiver, Reply, Script};

use crate::support::*;

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files into `dir`
/// under `name`; answers its PEM.
fn certificate(dir: &Path, name: &str) -> String {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let pem = made.cert.pem();
    std::fs::write(dir.join(format!("{name}.key")), made.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), &pem).unwrap();
    pem
}

/// A client that trusts only `pem` and opens a new connection for every request.
fn trusting(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .pool_max_idle_per_host(0)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A secrets file of `active`, with `retired` published.
fn secrets_file(path: &Path, active: &NewKeys, retired: Option<&NewKeys>) {
    let retired_list =
        |f: fn(&NewKeys) -> &String| retired.map(|r| format!("[\"{}\"]", f(r))).unwrap_or("[]".into());
    std::fs::write(
        path,
        format!(
            "[signing]\ned25519_secret = \"{}\"\nes256_secret = \"{}\"\nretired_ed25519_secrets = {}\nretired_es256_secrets = {}\n",
            active.ed25519_secret,
            active.es256_secret,
            retired_list(|k| &k.ed25519_secret),
            retired_list(|k| &k.es256_secret),
        ),
    )
    .unwrap();
}

/// The JWKS `client` gets from the API at `base`.
async fn served_jwks(client: &reqwest::Client, base: &str) -> serde_json::Value {
    let text =
        client.get(format!("{base}/.well-known/jwks.json")).send().await.unwrap().text().await.unwrap();
    text.parse().unwrap()
}

fn kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn the_tls_certificate_and_the_signing_keys_are_reloaded_without_a_restart() {
    let files = tempfile::tempdir().unwrap();
    let first_pem = certificate(files.path(), "first");
    let second_pem = certificate(files.path(), "second");
    // The listener's files, replaced in place below.
    std::fs::copy(files.path().join("first.crt"), files.path().join("tls.crt")).unwrap();
    std::fs::copy(files.path().join("first.key"), files.path().join("tls.key")).unwrap();
    let (old_keys, new_keys) = (NewKeys::generate(), NewKeys::generate());
    let secrets = files.path().join("signing.toml");
    secrets_file(&secrets, &old_keys, None);

    let receiver = Receiver::start().await.unwrap();
    receiver.script("/hook", Script::always(Reply::ack()));
    let names = Names::new("reloads");
    let data = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), data.path());
    c.http.tls_cert_file = files.path().join("tls.crt").display().to_string();
    c.http.tls_key_file = files.path().join("tls.key").display().to_string();
    c.http.tls_reload_check_ms = 100;
    c.signing.secrets_file = secrets.display().to_string();
    c.signing.reload_check_ms = 100;
    let node = Node::start(c).await;
    let base = format!("https://localhost:{}", node.running.http_addr.port());
    let (first, second) = (trusting(&first_pem), trusting(&second_pem));

    // TLS with the first certificate; plain HTTP is not served.
    let health = first.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(second.get(format!("{base}/healthz")).send().await.is_err(), "not the second certificate yet");
    let plain = reqwest::Client::new().get(format!("http://{}/healthz", node.running.http_addr)).send().await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true), "no plain HTTP beside TLS");
    let jwks = served_jwks(&first, &base).await;
    assert_eq!(kids(&jwks), [old_keys.ed25519_kid(), old_keys.es256_kid()]);

    // A renewed certificate and rotated keys, written over the files the service reads.
    std::fs::copy(files.path().join("second.key"), files.path().join("tls.key")).unwrap();
    std::fs::copy(files.path().join("second.crt"), files.path().join("tls.crt")).unwrap();
    secrets_file(&secrets, &new_keys, Some(&old_keys));
    let deadline = tokio::time::Instant::now() + HANG;
    while second.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        first.get(format!("{base}/healthz")).send().await.is_err(),
        "new connections get the new certificate"
    );
    let deadline = tokio::time::Instant::now() + HANG;
    let rotated =
        [new_keys.ed25519_kid(), new_keys.es256_kid(), old_keys.ed25519_kid(), old_keys.es256_kid()];
    loop {
        let jwks = served_jwks(&second, &base).await;
        if kids(&jwks) == rotated {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the JWKS never followed the rotation: {jwks}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A delivery made now is signed with the new key.
    let subscription = rabo("m-1", &receiver.url("/hook"), &[RaboEventType::OrderFinalized]);
    node.put(subscription.clone()).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let event = Uuid::new_v4();
    publisher.event(&order_event(event, "m-1")).await;
    node.wait_state(event, &subscription.id(), DeliveryState::Delivered).await;
    let signature = receiver.received_on("/hook")[0].header("x-smartpay-signature").unwrap().to_string();
    let header: serde_json::Value = {
        use base64::Engine as _;
        let encoded = signature.split('.').next().unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded).unwrap())
            .unwrap()
    };
    assert_eq!(header["kid"], new_keys.es256_kid());

    // A broken secrets file changes nothing: the keys in use stay.
    std::fs::write(&secrets, "[signing]\ned25519_secret = 42\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let jwks = served_jwks(&second, &base).await;
    assert_eq!(kids(&jwks), rotated);
    node.stop().await;
}

/// With no interval, only SIGHUP reloads: the real binary, signalled as an operator would.
#[tokio::test]
async fn sighup_reloads_the_signing_keys_of_the_running_binary() {
    let files = tempfile::tempdir().unwrap();
    let (old_keys, new_keys) = (NewKeys::generate(), NewKeys::generate());
    let secrets = files.path().join("signing.toml");
    secrets_file(&secrets, &old_keys, None);
    let names = Names::new("sighup");
    let mut c = config(&names, &amqp_url(), &files.path().join("data"));
    c.http.listen = format!("127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_webhookd"))
        .arg("serve")
        .envs(config_env(&c))
        .env("WEBHOOKD_SIGNING_SECRETS_FILE", &secrets)
        .env("WEBHOOKD_SIGNING_RELOAD_CHECK_MS", "0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(files.path().join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    wait_ready(&c.http.listen).await;
    let (client, base) = (reqwest::Client::new(), format!("http://{}", c.http.listen));
    let jwks = || async { kids(&served_jwks(&client, &base).await) };
    assert_eq!(jwks().await, [old_keys.ed25519_kid(), old_keys.es256_kid()]);
    secrets_file(&secrets, &new_keys, Some(&old_keys));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(jwks().await, [old_keys.ed25519_kid(), old_keys.es256_kid()], "no interval: not yet");
    let hup = std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    let rotated =
        [new_keys.ed25519_kid(), new_keys.es256_kid(), old_keys.ed25519_kid(), old_keys.es256_kid()];
    let deadline = tokio::time::Instant::now() + HANG;
    while jwks().await != rotated {
        assert!(tokio::time::Instant::now() < deadline, "SIGHUP did not reload the keys");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().unwrap().success(), "the process is still webhookd, stopped cleanly");
}
