//! Several replicas signing with the keys of their configuration: the same JWKS byte for byte,
//! signatures of one replica that verify against another's JWKS, rotation in the
//! configuration, and `webhookd keys generate` whose output configures a node.

use base64::Engine as _;
use uuid::Uuid;
use webhookd::keys::NewKeys;
use webhookd::Config;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::ids::rabo_event_id;
use webhookd_core::signing::{verify, SigningError};
use webhookd_core::subscription::{RaboEventType, Trigger};
use webhookd_harness::receiver::{Received, Receiver};

use crate::support::*;

/// A replica's configuration: its own names and data dir, `active` signing, `retired` published.
fn replica(names: &Names, dir: &std::path::Path, active: &NewKeys, retired: &[&NewKeys]) -> Config {
    let mut c = config(names, &amqp_url(), dir);
    c.signing.ed25519_secret = active.ed25519_secret.clone();
    c.signing.es256_secret = active.es256_secret.clone();
    c.signing.retired_ed25519_secrets = retired.iter().map(|k| k.ed25519_secret.clone()).collect();
    c.signing.retired_es256_secrets = retired.iter().map(|k| k.es256_secret.clone()).collect();
    c.validate().unwrap();
    c
}

/// The bytes of the node's `GET /.well-known/jwks.json`.
async fn served_jwks(node: &Node) -> Vec<u8> {
    let response =
        reqwest::get(format!("http://{}/.well-known/jwks.json", node.running.http_addr)).await.unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap().to_vec()
}

fn kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
}

/// The `whpk_` keys of `jwks` that verify an OBP delivery's Standard Webhooks signature.
fn obp_verifying_keys(jwks: &serde_json::Value, r: &Received) -> Vec<String> {
    let (id, ts, sig) = (
        r.header("webhook-id").unwrap(),
        r.header("webhook-timestamp").unwrap(),
        r.header("webhook-signature").unwrap(),
    );
    verify::ed25519_public_keys(jwks)
        .into_iter()
        .filter(|pk| verify::standard_webhooks(pk, id, ts, &r.body, sig).is_ok())
        .collect()
}

/// The kid of a Rabo delivery's detached JWS.
fn jws_kid(r: &Received) -> String {
    let jws = r.header("x-smartpay-signature").unwrap();
    let (header, _) = jws.split_once("..").unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap();
    serde_json::from_slice::<serde_json::Value>(&header).unwrap()["kid"].as_str().unwrap().to_string()
}

/// Checks a Rabo delivery's JWS against `jwks` as a receiver would (jsonwebtoken) and with ours.
fn rabo_verifies(jwks: &serde_json::Value, r: &Received) -> Result<(), SigningError> {
    let jws = r.header("x-smartpay-signature").unwrap();
    verify::detached_jws(jwks, jws, &r.body)?;
    let kid = jws_kid(r);
    let jwk = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid.as_str()).unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let (header, signature) = jws.split_once("..").unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = format!("{header}.{}.{signature}", b64.encode(&r.body));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation)
        .expect("JWS verifies with jsonwebtoken");
    Ok(())
}

/// One replica of the test: its names, data dir, receiver paths and subscription ids.
struct Replica {
    names: Names,
    dir: tempfile::TempDir,
    tag: &'static str,
    obp_id: String,
    rabo_id: String,
}

impl Replica {
    fn new(tag: &'static str) -> Replica {
        Replica {
            names: Names::new(&format!("keys{tag}")),
            dir: tempfile::tempdir().unwrap(),
            tag,
            obp_id: String::new(),
            rabo_id: String::new(),
        }
    }

    fn path(&self, api: &str) -> String {
        format!("/{}/{api}", self.tag)
    }

    /// Puts an OBP and a Rabo subscription to this replica's paths on the receiver.
    async fn subscribe(&mut self, node: &Node, receiver: &Receiver) {
        let obp_sub = obp("acc-1", Trigger::OnBalanceChange, &receiver.url(&self.path("obp")));
        let rabo_sub = rabo("m-1", &receiver.url(&self.path("rabo")), &[RaboEventType::OrderFinalized]);
        (self.obp_id, self.rabo_id) = (obp_sub.id(), rabo_sub.id());
        node.put(obp_sub).await;
        node.put(rabo_sub).await;
    }

    /// Publishes a balance change and an order to this replica and returns what the receiver got
    /// for them (OBP, Rabo), once the node has recorded both as delivered.
    async fn deliver(&self, node: &Node, receiver: &Receiver) -> (Received, Received) {
        let publisher = Publisher::connect(&amqp_url(), &self.names.exchange).await;
        let (balance_id, order_id) = (Uuid::new_v4(), Uuid::new_v4());
        publisher.event(&balance_event(balance_id, "acc-1", "50.00")).await;
        publisher.event(&order_event(order_id, "m-1")).await;
        node.wait_state(balance_id, &self.obp_id, DeliveryState::Delivered).await;
        node.wait_state(order_id, &self.rabo_id, DeliveryState::Delivered).await;
        let obp = receiver
            .received_on(&self.path("obp"))
            .into_iter()
            .find(|r| r.json().unwrap()["event_id"] == balance_id.to_string())
            .expect("the OBP delivery arrived");
        let rabo = receiver
            .received_on(&self.path("rabo"))
            .into_iter()
            .find(|r| r.header("x-smartpay-event-id") == Some(rabo_event_id(order_id).as_str()))
            .expect("the Rabo delivery arrived");
        (obp, rabo)
    }
}

#[tokio::test]
async fn replicas_with_the_same_configured_keys_serve_one_jwks_and_rotate_together() {
    let receiver = Receiver::start().await.unwrap();
    let (mut a, mut b) = (Replica::new("a"), Replica::new("b"));
    let first = NewKeys::generate();

    // Two replicas given the same keys, each with its own data dir and queue.
    let node_a = Node::start(replica(&a.names, a.dir.path(), &first, &[])).await;
    let node_b = Node::start(replica(&b.names, b.dir.path(), &first, &[])).await;
    let jwks_bytes = served_jwks(&node_a).await;
    assert_eq!(jwks_bytes, served_jwks(&node_b).await, "byte-identical JWKS");
    let jwks_1: serde_json::Value = serde_json::from_slice(&jwks_bytes).unwrap();
    assert_eq!(kids(&jwks_1), [first.ed25519_kid(), first.es256_kid()]);
    let pk_1 = verify::ed25519_public_keys(&jwks_1);
    assert_eq!(pk_1.len(), 1);
    for dir in [a.dir.path(), b.dir.path()] {
        assert!(!webhookd::keys::key_file(dir).exists(), "configured keys are never written");
    }

    // A delivery signed by one replica verifies against the other's JWKS, both ways.
    a.subscribe(&node_a, &receiver).await;
    b.subscribe(&node_b, &receiver).await;
    let (obp_a, rabo_a) = a.deliver(&node_a, &receiver).await;
    let (obp_b, rabo_b) = b.deliver(&node_b, &receiver).await;
    let served_b: serde_json::Value = serde_json::from_slice(&served_jwks(&node_b).await).unwrap();
    let served_a: serde_json::Value = serde_json::from_slice(&served_jwks(&node_a).await).unwrap();
    assert_eq!(obp_verifying_keys(&served_b, &obp_a), pk_1);
    rabo_verifies(&served_b, &rabo_a).unwrap();
    assert_eq!(obp_verifying_keys(&served_a, &obp_b), pk_1);
    rabo_verifies(&served_a, &rabo_b).unwrap();
    assert_eq!(jws_kid(&rabo_a), first.es256_kid());
    node_a.stop().await;
    node_b.stop().await;

    // Rotation, step 1: new active keys, the first ones retired, on both replicas.
    let second = NewKeys::generate();
    let node_a = Node::start(replica(&a.names, a.dir.path(), &second, &[&first])).await;
    let node_b = Node::start(replica(&b.names, b.dir.path(), &second, &[&first])).await;
    let jwks_bytes = served_jwks(&node_a).await;
    assert_eq!(jwks_bytes, served_jwks(&node_b).await, "byte-identical JWKS after the rotation");
    let jwks_2: serde_json::Value = serde_json::from_slice(&jwks_bytes).unwrap();
    assert_eq!(
        kids(&jwks_2),
        [second.ed25519_kid(), second.es256_kid(), first.ed25519_kid(), first.es256_kid()],
        "the new keys first, then the retired ones under their old kids"
    );
    let pk_2 = verify::ed25519_public_keys(&jwks_2);
    assert_eq!(pk_2.len(), 2);
    assert_eq!(pk_2[1], pk_1[0]);
    // What was signed before the rotation still verifies, on either replica's JWKS.
    assert_eq!(obp_verifying_keys(&jwks_2, &obp_a), pk_1);
    rabo_verifies(&jwks_2, &rabo_a).unwrap();
    rabo_verifies(&jwks_2, &rabo_b).unwrap();
    // New deliveries are signed with the new keys only.
    let (obp_a, rabo_a) = a.deliver(&node_a, &receiver).await;
    let (obp_b, rabo_b) = b.deliver(&node_b, &receiver).await;
    for (obp, rabo) in [(&obp_a, &rabo_a), (&obp_b, &rabo_b)] {
        assert_eq!(obp_verifying_keys(&jwks_2, obp), [pk_2[0].clone()]);
        assert!(obp_verifying_keys(&jwks_1, obp).is_empty(), "not signed with the retired key");
        assert_eq!(jws_kid(rabo), second.es256_kid());
        rabo_verifies(&jwks_2, rabo).unwrap();
        assert!(matches!(rabo_verifies(&jwks_1, rabo), Err(SigningError::UnknownKid(_))));
    }
    node_a.stop().await;
    node_b.stop().await;

    // Step 2: the retired keys leave the configuration, and the JWKS of both replicas.
    let node_a = Node::start(replica(&a.names, a.dir.path(), &second, &[])).await;
    let node_b = Node::start(replica(&b.names, b.dir.path(), &second, &[])).await;
    let jwks_bytes = served_jwks(&node_a).await;
    assert_eq!(jwks_bytes, served_jwks(&node_b).await);
    let jwks_3: serde_json::Value = serde_json::from_slice(&jwks_bytes).unwrap();
    assert_eq!(kids(&jwks_3), [second.ed25519_kid(), second.es256_kid()]);
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test]
async fn keys_generate_prints_configuration_that_a_node_starts_with() {
    let dir = tempfile::tempdir().unwrap();
    let untouched = dir.path().join("never-created");

    // TOML: a [signing] section; nothing written, no store or broker needed.
    let generated =
        webhookd(&untouched, &["keys", "generate"], &[("WEBHOOKD_AMQP_URL", "amqp://nowhere:1/%2f")]);
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let toml = String::from_utf8(generated.stdout).unwrap();
    assert!(toml.starts_with("[signing]\n") && toml.contains("ed25519_secret = \"whsk_"), "{toml}");
    let notes = String::from_utf8_lossy(&generated.stderr).into_owned();
    assert!(!untouched.exists(), "keys generate writes nothing");
    let again = webhookd(&untouched, &["keys", "generate"], &[]);
    assert_ne!(String::from_utf8(again.stdout).unwrap(), toml, "a new key set each time");

    // Fed back as the configuration file of a node.
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, &toml).unwrap();
    let names = Names::new("keysgen");
    let node_dir = dir.path().join("node");
    let env = config_env(&config(&names, &amqp_url(), &node_dir));
    let node_config = Config::load_with_env(Some(&file), env.clone()).unwrap();
    let node = Node::start(node_config).await;
    let served: serde_json::Value = serde_json::from_slice(&served_jwks(&node).await).unwrap();
    let served_kids = kids(&served);
    assert_eq!(served_kids.len(), 2);
    assert!(served_kids[0].starts_with("ed25519-cfg") && served_kids[1].starts_with("es256-cfg"));
    assert!(served_kids.iter().all(|kid| notes.contains(kid.as_str())), "{notes}");
    assert!(!webhookd::keys::key_file(&node_dir).exists());

    // `keys show` with the same file prints the JWKS the node serves.
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let shown = webhookd(&node_dir, &["--config", file.to_str().unwrap(), "keys", "show"], &env_refs);
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let shown = String::from_utf8(shown.stdout).unwrap();
    let (jwks_text, whpk) = shown.split_once("standard-webhooks public key: ").unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(jwks_text).unwrap(), served);
    assert_eq!(verify::ed25519_public_keys(&served), [whpk.trim().to_string()]);
    node.stop().await;

    // env: WEBHOOKD_SIGNING_* lines, usable as the environment.
    let generated = webhookd(&untouched, &["keys", "generate", "--format", "env"], &[]);
    assert!(generated.status.success());
    let lines = String::from_utf8(generated.stdout).unwrap();
    let vars: Vec<(&str, &str)> = lines.lines().map(|l| l.split_once('=').unwrap()).collect();
    assert_eq!(
        vars.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        ["WEBHOOKD_SIGNING_ED25519_SECRET", "WEBHOOKD_SIGNING_ES256_SECRET"]
    );
    let other_dir = dir.path().join("other");
    let shown = webhookd(&other_dir, &["keys", "show"], &vars);
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert!(shown.contains("\"ed25519-cfg") && shown.contains("\"es256-cfg"), "{shown}");
    assert_eq!(shown, String::from_utf8(webhookd(&other_dir, &["keys", "show"], &vars).stdout).unwrap());
    let masked = String::from_utf8(webhookd(&other_dir, &["config", "show"], &vars).stdout).unwrap();
    assert!(vars.iter().all(|(_, secret)| !masked.contains(secret)), "{masked}");

    // `keys rotate` with configured keys explains the procedure and changes nothing.
    let rotate = webhookd(&other_dir, &["keys", "rotate"], &vars);
    assert!(!rotate.status.success());
    let why = String::from_utf8_lossy(&rotate.stderr);
    assert!(
        why.contains("webhookd keys generate")
            && why.contains("signing.retired_ed25519_secrets")
            && why.contains("Signing keys for several replicas"),
        "{why}"
    );
    assert!(!webhookd::keys::key_file(&other_dir).exists());
    assert!(vars.iter().all(|(_, secret)| !why.contains(secret)));
}
