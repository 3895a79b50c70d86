//! The documentation's examples run as written (issue 18, item 2): every shell block marked
//! `<!-- try-it -->` in README.md, docs/api.md and docs/events.md, in that order, in one bash
//! session, against the real binary started as `scripts/run-local.sh` starts it
//! (`deploy/local/webhookd.toml`). Only what differs between a developer's machine and this
//! test is replaced: the broker's and the API's addresses, the receiver's port, and the queue
//! names (this test shares the test broker with others).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// The files whose marked blocks run, in the order a reader follows them.
const FILES: [&str; 3] = ["README.md", "docs/api.md", "docs/events.md"];

/// The marked `sh` blocks of `text`, in order.
fn marked_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "<!-- try-it -->" {
            continue;
        }
        assert_eq!(
            lines.next().map(str::trim),
            Some("```sh"),
            "a try-it marker must stand right above a ```sh block"
        );
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(block.join("\n"));
    }
    blocks
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_examples_run_as_written_against_a_local_webhookd() {
    let repo = repo();
    let mut script = String::from("set -euo pipefail\n");
    let mut count = 0;
    for file in FILES {
        let blocks = marked_blocks(&std::fs::read_to_string(repo.join(file)).unwrap());
        assert!(!blocks.is_empty(), "{file} has no try-it block");
        count += blocks.len();
        for block in blocks {
            script.push_str(&format!("echo '---- {file}'\n{block}\n"));
        }
    }

    // A webhookd as run-local.sh starts it, with this test's broker, port and names.
    let names = Names::new("doc-examples");
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let mut c = config(&names, &amqp_url(), &data);
    c.http.listen = format!("127.0.0.1:{}", free_port());
    let receiver_port = free_port();
    let mut env = config_env(&c);
    // The local configuration's own values where the test's would differ from what a reader gets.
    env.retain(|(k, _)| {
        !k.starts_with("WEBHOOKD_RETRY_")
            && !k.starts_with("WEBHOOKD_DESTINATIONS_")
            && k != "WEBHOOKD_OBP_BANKS"
    });
    for (from, to) in [
        ("amqp://guest:guest@127.0.0.1:5698/%2f", amqp_url()),
        ("http://127.0.0.1:8080", format!("http://{}", c.http.listen)),
        ("127.0.0.1:9000", format!("127.0.0.1:{receiver_port}")),
        ("examples/receiver.py 9000", format!("examples/receiver.py {receiver_port}")),
    ] {
        assert!(script.contains(from), "the examples no longer use {from}: update this test");
        script = script.replace(from, &to);
    }
    // The reader's working copy: the examples, and run-local.sh's release binary.
    std::os::unix::fs::symlink(repo.join("examples"), work.path().join("examples")).unwrap();
    std::fs::create_dir_all(work.path().join("target/release")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_webhookd"), work.path().join("target/release/webhookd"))
        .unwrap();

    let serve_log = work.path().join("serve.log");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_webhookd"))
        .arg("--config")
        .arg(repo.join("deploy/local/webhookd.toml"))
        .arg("serve")
        .envs(env.iter().cloned())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&serve_log).unwrap())
        .spawn()
        .unwrap();
    wait_ready(&c.http.listen).await;

    let output = work.path().join("examples.log");
    let mut shell = {
        use std::os::unix::process::CommandExt as _;
        Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(work.path())
            .envs(env.iter().filter(|(k, _)| k != "WEBHOOKD_AMQP_URL").cloned())
            .env_remove("WEBHOOKD_TOKEN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(std::fs::File::create(work.path().join("examples.err")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let group = shell.id().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = shell.try_wait().unwrap() {
            break Some(status);
        }
        if tokio::time::Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The receiver the examples started in the background goes with the shell's group.
    let _ = Command::new("kill").args(["-TERM", "--", &format!("-{group}")]).status();
    let _ = Command::new("kill").args(["-TERM", &serve.id().to_string()]).status();
    let _ = serve.wait();
    let read = |name: &str| std::fs::read_to_string(work.path().join(name)).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "the examples failed ({status:?}) after:\n{}\nstderr:\n{}\nwebhookd:\n{}",
        read("examples.log"),
        read("examples.err"),
        read("serve.log").lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    // What the examples did, seen by the receiver: the order, the verify probe, the debit.
    let received = read("receiver.log");
    for expected in [
        "POST /smartpay\n",
        "POST /smartpay-2\n",
        "POST /obp\n",
        "x-smartpay-signature: ",
        "webhook-signature: v1a,",
    ] {
        assert!(received.contains(expected), "the receiver did not get {expected:?}:\n{received}");
    }
    assert!(count >= 12, "{count} blocks ran");
}
