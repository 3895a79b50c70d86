//! The OpenAPI document and the server's routes agree, in both directions.

use std::collections::BTreeSet;

/// `{bank_id}` and `{BANK_ID}` name the same path.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_served() {
    let served: BTreeSet<(String, String)> = webhookd_api::routes()
        .into_iter()
        .map(|(method, path, _)| (method.as_str().to_ascii_lowercase(), normalize(path)))
        .collect();
    let doc: serde_json::Value = serde_json::from_str(webhookd_api::OPENAPI_JSON).unwrap();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                documented.insert((method.to_string(), normalize(path)));
            }
        }
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "undocumented: {undocumented:?}; not served: {unserved:?}"
    );
}

#[tokio::test]
async fn the_document_is_served() {
    let names = crate::support::Names::new("openapi");
    let dir = tempfile::tempdir().unwrap();
    let node =
        crate::support::Node::start(crate::support::config(&names, &crate::support::amqp_url(), dir.path()))
            .await;
    let a = node.call("GET", "/openapi.json", None, None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, serde_json::from_str::<serde_json::Value>(webhookd_api::OPENAPI_JSON).unwrap());
    node.stop().await;
}
