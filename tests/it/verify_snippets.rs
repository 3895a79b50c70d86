//! The receiver-side verifiers of examples/verify/ (Python, Node.js, Go, Java; docs/delivery.md,
//! "Verifying signatures") against real deliveries of both APIs: each accepts them, rejects them
//! with one body byte changed or a stale timestamp, and still accepts them after a key rotation,
//! when the Ed25519 key that signed them is no longer the JWKS's first.
//!
//! A language whose toolchain is missing is skipped, said on stderr, unless
//! `WEBHOOKD_VERIFY_SNIPPETS=all` (scripts/test.sh, after scripts/install-verify-tools.sh) asks
//! for every one; at least one always runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use uuid::Uuid;
use webhookd_core::subscription::{RaboEventType, Trigger};
use webhookd_harness::receiver::{Received, Receiver};

use crate::support::*;

/// One language's verifier: how to run it, and how to tell whether its toolchain is there.
struct Verifier {
    language: &'static str,
    /// The command that runs the verifier, its three file arguments still to add.
    command: Vec<String>,
    /// A command that succeeds when the toolchain is installed.
    probe: Vec<String>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn verifiers() -> Vec<Verifier> {
    let examples = repo().join("examples/verify");
    let path = |p: &str| examples.join(p).display().to_string();
    let python = repo().join(".local/verify-venv/bin/python").display().to_string();
    let strings = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    vec![
        Verifier {
            language: "Python (.local/verify-venv)",
            command: vec![python.clone(), path("python/verify.py")],
            probe: vec![python, "-c".into(), "import jwcrypto, cryptography".into()],
        },
        Verifier {
            language: "Node.js",
            command: vec!["node".into(), path("node/verify.mjs")],
            probe: strings(&["node", "--version"]),
        },
        Verifier {
            language: "Go",
            command: vec!["go".into(), "run".into(), path("go/verify.go")],
            probe: strings(&["go", "version"]),
        },
        Verifier {
            language: "Java",
            // The single-file launch compiles the source first, so it needs a JDK, not a JRE.
            command: vec!["java".into(), path("java/Verify.java")],
            probe: strings(&["javac", "-version"]),
        },
    ]
}

/// The command that runs `verifier` on many cases: compiled once where its language compiles
/// (a `go run` or a single-file `java` launch compiles again at every run, which on a 2-core
/// CI machine is seconds of CPU taken from the other tests each time).
fn prepared(verifier: &Verifier, dir: &Path) -> Vec<String> {
    let source = verifier.command.last().unwrap().clone();
    let build = |argv: &[&str]| {
        let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let dir_text = dir.display().to_string();
    match verifier.language {
        "Go" => {
            let binary = dir.join("verify-go").display().to_string();
            build(&["go", "build", "-o", &binary, &source]);
            vec![binary]
        }
        "Java" => {
            build(&["javac", "-d", &dir_text, &source]);
            vec!["java".into(), "-cp".into(), dir_text, "Verify".into()]
        }
        _ => verifier.command.clone(),
    }
}

fn runs(argv: &[String]) -> bool {
    Command::new(&argv[0]).args(&argv[1..]).output().is_ok_and(|o| o.status.success())
}

/// The request's headers as the verifiers read them: a JSON object, lowercase names, the
/// first value of each.
fn headers_json(r: &Received) -> serde_json::Map<String, serde_json::Value> {
    let mut headers = serde_json::Map::new();
    for (name, value) in &r.headers {
        headers.entry(name.to_lowercase()).or_insert_with(|| value.clone().into());
    }
    headers
}

/// The JWKS as the node serves it to receivers.
async fn served_jwks(node: &Node) -> Answer {
    let answer = node.call("GET", "/.well-known/jwks.json", None, None).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer
}

/// What one run must give.
enum Expect {
    Verified,
    /// Refused; the reason (stderr) mentions this.
    Refused(&'static str),
}

/// One verifier run: the files it gets, and what it must answer.
struct Case {
    what: &'static str,
    jwks: PathBuf,
    headers: PathBuf,
    body: PathBuf,
    expect: Expect,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_verifiers_accept_real_deliveries_and_refuse_altered_ones() {
    let all = std::env::var("WEBHOOKD_VERIFY_SNIPPETS").is_ok_and(|v| v == "all");
    let (present, missing): (Vec<Verifier>, Vec<Verifier>) =
        verifiers().into_iter().partition(|v| runs(&v.probe));
    let missing_names: Vec<&str> = missing.iter().map(|v| v.language).collect();
    assert!(
        !all || missing.is_empty(),
        "WEBHOOKD_VERIFY_SNIPPETS=all but these toolchains are missing: {missing_names:?} \
         (scripts/install-verify-tools.sh installs them)"
    );
    for language in &missing_names {
        eprintln!("verify_snippets: skipping {language}: its toolchain is not installed (scripts/install-verify-tools.sh)");
    }
    assert!(!present.is_empty(), "no toolchain for any verifier of examples/verify/ is installed");

    // Real deliveries of both APIs.
    let receiver = Receiver::start().await.unwrap();
    let names = Names::new("verify-snippets");
    let dir = tempfile::tempdir().unwrap();
    let c = config(&names, &amqp_url(), dir.path());
    let node = Node::start(c.clone()).await;
    node.put(obp("acc-1", Trigger::OnCreditTransaction, &receiver.url("/obp"))).await;
    node.put(rabo("m-1", &receiver.url("/rabo"), &[RaboEventType::OrderFinalized])).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    publisher.event(&balance_event(Uuid::new_v4(), "acc-1", "50.00")).await;
    publisher.event(&order_event(Uuid::new_v4(), "m-1")).await;
    let obp_delivery = receiver.wait_for(Some("/obp"), 1, HANG).await.unwrap().remove(0);
    let rabo_delivery = receiver.wait_for(Some("/rabo"), 1, HANG).await.unwrap().remove(0);
    let before = served_jwks(&node).await;
    node.stop().await;

    // A rotation: the new keys come first in the JWKS, the ones that signed the deliveries
    // after them.
    let rotated = webhookd(dir.path(), &["keys", "rotate"], &[]);
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let node = Node::start(c).await;
    let after = served_jwks(&node).await;
    node.stop().await;
    let okp_keys = |jwks: &serde_json::Value| -> Vec<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kty"] == "OKP")
            .map(|k| k["x"].as_str().unwrap().to_string())
            .collect()
    };
    let (signing, published) = (okp_keys(&before.body), okp_keys(&after.body));
    assert_eq!(signing.len(), 1);
    assert_eq!(published.len(), 2, "{}", after.text);
    assert_eq!(published[1], signing[0], "the key that signed the delivery is the second Ed25519 key now");

    // The verifiers' inputs.
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = files.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let json = |value: &serde_json::Map<String, serde_json::Value>| serde_json::to_vec(value).unwrap();
    let changed = |body: &[u8]| {
        let mut body = body.to_vec();
        let middle = body.len() / 2;
        body[middle] ^= 0x01;
        body
    };
    let jwks_before = write("jwks.json", before.text.as_bytes());
    let jwks_after = write("jwks-rotated.json", after.text.as_bytes());
    let obp_headers = headers_json(&obp_delivery);
    assert!(obp_headers["webhook-signature"].as_str().unwrap().starts_with("v1a,"));
    let mut stale_headers = obp_headers.clone();
    let timestamp: i64 = obp_headers["webhook-timestamp"].as_str().unwrap().parse().unwrap();
    stale_headers.insert("webhook-timestamp".into(), (timestamp - 600).to_string().into());
    let rabo_headers = headers_json(&rabo_delivery);
    assert!(rabo_headers.contains_key("x-smartpay-signature"));
    let obp_headers = write("obp-headers.json", &json(&obp_headers));
    let stale_headers = write("obp-headers-stale.json", &json(&stale_headers));
    let rabo_headers = write("rabo-headers.json", &json(&rabo_headers));
    let obp_body = write("obp-body", &obp_delivery.body);
    let obp_changed = write("obp-body-changed", &changed(&obp_delivery.body));
    let rabo_body = write("rabo-body", &rabo_delivery.body);
    let rabo_changed = write("rabo-body-changed", &changed(&rabo_delivery.body));
    let case = |what, jwks: &PathBuf, headers: &PathBuf, body: &PathBuf, expect| Case {
        what,
        jwks: jwks.clone(),
        headers: headers.clone(),
        body: body.clone(),
        expect,
    };
    let cases = [
        case("OBP delivery", &jwks_before, &obp_headers, &obp_body, Expect::Verified),
        case("Rabo delivery", &jwks_before, &rabo_headers, &rabo_body, Expect::Verified),
        case("OBP, one body byte changed", &jwks_before, &obp_headers, &obp_changed, Expect::Refused("")),
        case("Rabo, one body byte changed", &jwks_before, &rabo_headers, &rabo_changed, Expect::Refused("")),
        case(
            "OBP, timestamp 10 minutes old",
            &jwks_before,
            &stale_headers,
            &obp_body,
            Expect::Refused("timestamp"),
        ),
        case(
            "OBP after a rotation (signed by the second Ed25519 key)",
            &jwks_after,
            &obp_headers,
            &obp_body,
            Expect::Verified,
        ),
        case(
            "Rabo after a rotation (a retired kid)",
            &jwks_after,
            &rabo_headers,
            &rabo_body,
            Expect::Verified,
        ),
    ];

    // Every verifier on every case.
    let mut ran = Vec::new();
    for verifier in &present {
        let build = tempfile::tempdir().unwrap();
        let command = prepared(verifier, build.path());
        for case in &cases {
            let output = Command::new(&command[0])
                .args(&command[1..])
                .args([&case.jwks, &case.headers, &case.body])
                .output()
                .unwrap();
            let (stdout, stderr) =
                (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
            let said = format!(
                "{} on \"{}\": {}\nstdout: {stdout}\nstderr: {stderr}",
                verifier.language, case.what, output.status
            );
            match case.expect {
                Expect::Verified => assert!(output.status.success() && stdout.trim() == "verified", "{said}"),
                Expect::Refused(reason) => {
                    assert!(!output.status.success() && stdout.trim() != "verified", "{said}");
                    assert!(stderr.contains(reason), "the reason should mention {reason:?}: {said}");
                }
            }
        }
        eprintln!(
            "verify_snippets: {} verified both APIs' deliveries and refused the altered ones",
            verifier.language
        );
        ran.push(verifier.language);
    }
    eprintln!("verify_snippets: ran {ran:?}, skipped {missing_names:?}");
}

/// The code docs/delivery.md shows under "Verifying signatures" is the tested code: each of its
/// code blocks is a verbatim part of the example file of its language.
#[test]
fn the_documented_snippets_are_the_tested_ones() {
    let doc = std::fs::read_to_string(repo().join("docs/delivery.md")).unwrap();
    let start =
        doc.find("\n## Verifying signatures\n").expect("docs/delivery.md has \"## Verifying signatures\"");
    let section = &doc[start + 1..];
    let section = &section[..section[1..].find("\n## ").map_or(section.len(), |end| end + 1)];
    let mut shown = Vec::new();
    for block in section.split("```").skip(1).step_by(2) {
        let (language, code) = block.split_once('\n').unwrap();
        let file = match language {
            "python" => "python/verify.py",
            "js" => "node/verify.mjs",
            "go" => "go/verify.go",
            "java" => "java/Verify.java",
            other => panic!("a {other:?} block in \"Verifying signatures\": which example is it?"),
        };
        let source = std::fs::read_to_string(repo().join("examples/verify").join(file)).unwrap();
        assert!(
            source.contains(code),
            "this {language} block of docs/delivery.md is not in examples/verify/{file}:\n{code}"
        );
        shown.push(language);
    }
    shown.dedup();
    assert_eq!(shown, ["python", "js", "go", "java"]);
}
