//! The `webhookd` command line: tokens, configuration, keys.

use std::process::Output;

use webhookd_store::Store;

use crate::support::webhookd;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn tokens_are_minted_once_listed_without_secrets_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let created = webhookd(
        dir.path(),
        &[
            "token",
            "create",
            "--user-id",
            "u-1",
            "--merchant-id",
            "m-1",
            "--role",
            "CanGetWebhooks@*",
            "--role",
            "CanCreateWebhook@gh.29.uk",
            "--note",
            "ci",
        ],
        &[],
    );
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let secret = stdout(&created).trim().to_string();
    assert!(secret.starts_with("whd_"), "{secret}");
    let bad_role =
        webhookd(dir.path(), &["token", "create", "--user-id", "u", "--role", "CanCreateWebhook"], &[]);
    assert!(!bad_role.status.success(), "a bank-scoped role needs @BANK or @*");

    let listed = stdout(&webhookd(dir.path(), &["token", "list"], &[]));
    assert!(
        listed.contains("active") && listed.contains("user=u-1") && listed.contains("merchant=m-1"),
        "{listed}"
    );
    assert!(listed.contains("CanGetWebhooks@*,CanCreateWebhook@gh.29.uk"), "{listed}");
    assert!(!listed.contains(&secret[4..]), "the secret is never shown again");
    let id = listed.split('\t').next().unwrap().to_string();

    {
        let store = Store::open(&dir.path().join("store")).unwrap();
        let caller = store.authenticate(&secret).unwrap().expect("the token authenticates");
        assert_eq!((caller.user_id.as_str(), caller.merchant_id.as_deref()), ("u-1", Some("m-1")));
        assert!(
            caller.has_role("CanGetWebhooks", "any-bank") && !caller.has_role("CanCreateWebhook", "other")
        );
    }
    assert!(webhookd(dir.path(), &["token", "revoke", &id], &[]).status.success());
    assert!(stdout(&webhookd(dir.path(), &["token", "list"], &[])).contains("revoked"));
    let store = Store::open(&dir.path().join("store")).unwrap();
    assert!(store.authenticate(&secret).unwrap().is_none(), "a revoked token no longer works");
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
