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

/// issue 18: `config show` resolved the defaults where the operator expected the running
/// service's configuration, and a first start did not say how to make an API token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_service_shows_its_own_configuration_and_says_how_to_make_the_first_token() {
    use crate::support::{amqp_url, config, config_env, free_port, wait_ready, Names, HANG};
    let names = Names::new("config-running");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.http.listen = format!("127.0.0.1:{}", free_port());
    let env = config_env(&c);
    let file = dir.path().join("webhookd.toml");
    std::fs::write(&file, "[retention]\nkeep_finished_seconds = 4321\n").unwrap();
    let file_arg = file.to_str().unwrap().to_string();
    let exe = env!("CARGO_BIN_EXE_webhookd");
    let start = |log: &str| {
        std::process::Command::new(exe)
            .args(["--config", &file_arg, "serve"])
            .envs(env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
            .spawn()
            .unwrap()
    };
    let stop = |mut child: std::process::Child| {
        let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(child.wait().unwrap().success());
    };
    let hint = "no API token exists yet";
    let read = |log: &str| std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();

    let first = start("first.log");
    wait_ready(&c.http.listen).await;
    let deadline = tokio::time::Instant::now() + HANG;
    while !read("first.log").contains(hint) {
        assert!(tokio::time::Instant::now() < deadline, "no hint on a first start:\n{}", read("first.log"));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(read("first.log").contains("webhookd token create --user-id"), "{}", read("first.log"));

    let cli = |args: &[&str], extra: &[(&str, &str)]| {
        let out = std::process::Command::new(exe)
            .args(args)
            .envs(env.iter().cloned())
            .envs(extra.iter().copied())
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, token, err) = tokio::task::block_in_place(|| {
        cli(&["token", "create", "--user-id", "ops", "--role", "CanManageDeliveries"], &[])
    });
    assert!(ok, "{err}");
    let token = token.trim().to_string();

    // The running service's own configuration: its file's value, where it came from, no secret.
    let (ok, shown, err) =
        tokio::task::block_in_place(|| cli(&["config", "show", "--running"], &[("WEBHOOKD_TOKEN", &token)]));
    assert!(ok, "{err}");
    assert!(shown.contains("keep_finished_seconds = 4321"), "{shown}");
    assert!(
        shown.contains(&format!("the file {file_arg}")) && shown.contains("WEBHOOKD_AMQP_URL"),
        "{shown}"
    );
    assert!(!shown.contains("guest:guest@"), "the broker password is masked:\n{shown}");
    // Without --running: what this shell resolves (no file here), and it says so.
    let (ok, local, _) = tokio::task::block_in_place(|| cli(&["config", "show"], &[]));
    assert!(ok);
    assert!(local.contains("this command resolves: embedded defaults, then no file"), "{local}");
    assert!(!local.contains("keep_finished_seconds = 4321"), "{local}");
    let (ok, _, err) = tokio::task::block_in_place(|| {
        cli(&["config", "show", "--running"], &[("WEBHOOKD_TOKEN", "whd_x_y")])
    });
    assert!(!ok && err.contains("401"), "{err}");
    stop(first);

    // With a token in the catalog, a start says nothing about making one.
    let second = start("second.log");
    wait_ready(&c.http.listen).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    stop(second);
    assert!(!read("second.log").contains(hint), "{}", read("second.log"));
}
