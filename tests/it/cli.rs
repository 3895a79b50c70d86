//! The `webhookd` command line: configuration, keys (tokens: tests/it/replicas.rs, as they
//! are made while replicas serve).

use std::process::Output;

use crate::support::webhookd;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn config_show_masks_secrets_and_bad_values_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let shown = webhookd(
        dir.path(),
        &["config", "show"],
        &[("WEBHOOKD_AMQP_URL", "amqp://app:hunter2@mq:5672/%2f"), ("WEBHOOKD_OBP_BANKS", "b1,b2")],
    );
    assert!(shown.status.success());
    let text = stdout(&shown);
    assert!(text.contains("amqp://app:********@mq:5672/%2f") && !text.contains("hunter2"), "{text}");
    assert!(text.contains(r#"banks = ["b1", "b2"]"#) || text.contains("\"b1\""), "{text}");

    let bad = webhookd(dir.path(), &["serve"], &[("WEBHOOKD_DELIVERY_TIMEOUT_MS", "soon")]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("WEBHOOKD_DELIVERY_TIMEOUT_MS") && err.contains("delivery.timeout_ms"), "{err}");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[amqp]\nqueue_typ = \"quorum\"\n").unwrap();
    let bad = webhookd(dir.path(), &["--config", file.to_str().unwrap(), "serve"], &[]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown configuration key amqp.queue_typ"));

    let defaults = stdout(&webhookd(dir.path(), &["config", "defaults"], &[]));
    assert!(defaults.starts_with("# webhookd configuration"), "the commented defaults");
}

#[test]
fn keys_are_shown_and_rotated_keeping_the_old_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let before = stdout(&webhookd(dir.path(), &["keys", "show"], &[]));
    assert!(before.contains("whpk_") && before.contains("\"kty\": \"EC\""), "{before}");
    assert!(webhookd(dir.path(), &["keys", "rotate"], &[]).status.success());
    let after = stdout(&webhookd(dir.path(), &["keys", "show"], &[]));
    let kids = |text: &str| -> Vec<String> {
        text.lines().filter(|l| l.contains("\"kid\"")).map(|l| l.trim().to_string()).collect()
    };
    assert_eq!(kids(&before).len(), 2);
    assert_eq!(kids(&after).len(), 4, "new keys plus the retired ones, still published");
    assert!(kids(&before).iter().all(|k| after.contains(k.as_str())));
}
