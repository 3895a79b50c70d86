//! API tokens against a real sled database in a temporary directory, changed as every replica
//! changes them: by applying catalog records.

use webhookd_core::auth::{mint_token, roles, BankScope, Caller, MintedToken, RoleGrant};
use webhookd_core::catalog::{CatalogRecord, Change};
use webhookd_store::tokens::TokenRecord;
use webhookd_store::{Applied, Store, StoreError};

/// Applies `change` as the log's next record, proposed at `at_ms`.
fn log(store: &Store, at_ms: u64, change: Change) -> Applied {
    let offset = store.catalog_position().unwrap().map_or(0, |p| p.offset + 1);
    store.apply_record(&CatalogRecord::new(uuid::Uuid::nil(), at_ms, change), offset).unwrap()
}

fn add(store: &Store, token: TokenRecord) {
    assert!(matches!(log(store, 1, Change::AddToken { token }), Applied::Changed(None)));
}

fn revoke(store: &Store, at_ms: u64, id: &str) -> Applied {
    log(store, at_ms, Change::RevokeToken { id: id.into() })
}

fn record(token: &MintedToken, user: &str, merchant: Option<&str>) -> TokenRecord {
    TokenRecord {
        id: token.id.clone(),
        hash: token.hash,
        user_id: user.into(),
        merchant_id: merchant.map(Into::into),
        roles: vec![
            RoleGrant::parse("CanCreateWebhook@gh.29.uk").unwrap(),
            RoleGrant::parse("CanGetWebhooks@*").unwrap(),
        ],
        created_at_ms: 1_000,
        revoked_at_ms: None,
        note: Some("ops laptop".into()),
    }
}

#[tokio::test]
async fn a_minted_token_authenticates_as_its_caller() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let token = mint_token();
    add(&store, record(&token, "user-1", Some("m-1")));

    let caller = store.authenticate(&token.secret).unwrap().expect("authenticated");
    assert_eq!(
        caller,
        Caller {
            token_id: token.id.clone(),
            user_id: "user-1".into(),
            merchant_id: Some("m-1".into()),
            roles: vec![
                RoleGrant { role: "CanCreateWebhook".into(), bank: BankScope::Bank("gh.29.uk".into()) },
                RoleGrant { role: "CanGetWebhooks".into(), bank: BankScope::All },
            ],
        }
    );
    assert!(caller.has_role(roles::CAN_CREATE_WEBHOOK, "gh.29.uk"));
    assert!(!caller.has_role(roles::CAN_CREATE_WEBHOOK, "other"));
    assert!(caller.has_role(roles::CAN_GET_WEBHOOKS, "other"));
}

#[tokio::test]
async fn wrong_malformed_and_foreign_secrets_authenticate_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mine = mint_token();
    let theirs = mint_token();
    add(&store, record(&mine, "me", None));
    add(&store, record(&theirs, "them", None));

    // The right id with another random part.
    let (head, random) = mine.secret.rsplit_once('_').unwrap();
    let flipped = if random.starts_with('a') { 'b' } else { 'a' };
    let wrong = format!("{head}_{flipped}{}", &random[1..]);
    assert_eq!(store.authenticate(&wrong).unwrap(), None);

    // Another token's id with this token's random part.
    let their_head = theirs.secret.rsplit_once('_').unwrap().0;
    assert_eq!(store.authenticate(&format!("{their_head}_{random}")).unwrap(), None);

    // A well-formed secret of a token that was never stored.
    assert_eq!(store.authenticate(&mint_token().secret).unwrap(), None);

    for malformed in ["", "whd_", &mine.id, &format!("Bearer {}", mine.secret), &mine.secret[..52], "é"] {
        assert_eq!(store.authenticate(malformed).unwrap(), None, "{malformed:?}");
    }

    assert_eq!(store.authenticate(&mine.secret).unwrap().unwrap().user_id, "me");
    assert_eq!(store.authenticate(&theirs.secret).unwrap().unwrap().user_id, "them");
}

#[tokio::test]
async fn a_revoked_token_authenticates_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let token = mint_token();
    let other = mint_token();
    add(&store, record(&token, "u", None));
    add(&store, record(&other, "u", None));
    assert!(store.authenticate(&token.secret).unwrap().is_some());

    assert!(matches!(revoke(&store, 5_000, &token.id), Applied::Changed(None)));
    let revoked = store.token(&token.id).unwrap().unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(5_000), "revoked as of the record's log time");
    assert!(revoked.is_revoked());
    assert_eq!(store.authenticate(&token.secret).unwrap(), None);
    assert!(store.authenticate(&other.secret).unwrap().is_some(), "only the revoked token is affected");

    // Idempotent: the first revocation time stays.
    assert!(matches!(revoke(&store, 9_000, &token.id), Applied::Changed(None)));
    assert_eq!(store.token(&token.id).unwrap(), Some(revoked));

    match revoke(&store, 1, "tok_0000000000000000") {
        Applied::Refused(StoreError::NotFound(what)) => {
            assert!(what.contains("tok_0000000000000000"), "{what}")
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A second token under a taken id changes nothing.
    let mut twin = record(&other, "intruder", None);
    twin.hash = [7; 32];
    assert!(matches!(
        log(&store, 1, Change::AddToken { token: twin }),
        Applied::Refused(StoreError::Exists(_))
    ));
    assert_eq!(store.authenticate(&other.secret).unwrap().unwrap().user_id, "u");
}

#[tokio::test]
async fn tokens_and_revocations_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let kept = mint_token();
    let revoked = mint_token();
    {
        let store = Store::open(dir.path()).unwrap();
        add(&store, record(&kept, "u", Some("m")));
        add(&store, record(&revoked, "u", None));
        revoke(&store, 7, &revoked.id);
    }
    let store = Store::open(dir.path()).unwrap();
    let caller = store.authenticate(&kept.secret).unwrap().expect("still valid after reopen");
    assert_eq!(caller.merchant_id.as_deref(), Some("m"));
    assert_eq!(store.authenticate(&revoked.secret).unwrap(), None);
    assert_eq!(store.token(&revoked.id).unwrap().unwrap().revoked_at_ms, Some(7));
}

#[tokio::test]
async fn listing_shows_records_in_id_order_and_never_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(store.tokens().unwrap().is_empty());
    let minted: Vec<MintedToken> = (0..5).map(|_| mint_token()).collect();
    for token in &minted {
        add(&store, record(token, "u", None));
    }

    let listed = store.tokens().unwrap();
    let mut ids: Vec<&str> = minted.iter().map(|t| t.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ids);
    for token in &minted {
        let stored = listed.iter().find(|r| r.id == token.id).unwrap();
        assert_eq!(stored.hash, token.hash);
        let random = token.secret.rsplit_once('_').unwrap().1;
        for shown in [format!("{stored:?}"), serde_json::to_string(stored).unwrap()] {
            assert!(!shown.contains(&token.secret) && !shown.contains(random), "{shown}");
        }
    }
}

#[tokio::test]
async fn the_hash_is_stored_as_hex() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let token = mint_token();
    let stored = record(&token, "u", None);
    add(&store, stored.clone());

    let json = serde_json::to_value(&stored).unwrap();
    let hex: String = token.hash.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(json["hash"], serde_json::Value::String(hex.clone()));
    assert_eq!(serde_json::from_value::<TokenRecord>(json).unwrap(), stored);

    let mut upper = serde_json::to_value(&stored).unwrap();
    upper["hash"] = serde_json::Value::String(hex.to_uppercase());
    assert_eq!(serde_json::from_value::<TokenRecord>(upper).unwrap(), stored);
    for bad in [&hex[..62], &format!("{}zz", &hex[..62]), &format!("{hex}00")] {
        let mut value = serde_json::to_value(&stored).unwrap();
        value["hash"] = serde_json::Value::String(bad.to_string());
        assert!(serde_json::from_value::<TokenRecord>(value).is_err(), "{bad}");
    }
    assert_eq!(store.tokens().unwrap(), vec![stored]);
}
