//! `webhookd deliveries ...` and `config show --running`: the admin API from a shell.
//!
//! The store belongs to the running service (sled allows one process), so these commands call
//! its admin API with a token holding `CanManageDeliveries`; they run the same store functions
//! the API does.

use anyhow::{bail, Context};
use serde_json::Value;

/// Where the API is and how to authenticate.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) with `token`.
    pub fn new(base: &str, token: &str) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        Ok(Client { base: base.trim_end_matches('/').to_string(), token: token.to_string(), http })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.with_context(|| format!("cannot reach {}", self.base))?;
        let status = response.status();
        let text = response.text().await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let detail =
                value.get("detail").and_then(Value::as_str).map(String::from).unwrap_or(value.to_string());
            bail!("{status}: {detail}");
        }
        Ok(value)
    }

    /// Lists deliveries of a subscription or an event.
    pub async fn list(&self, query: &[(&str, String)]) -> anyhow::Result<Value> {
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        self.call(reqwest::Method::GET, &format!("/admin/v1/deliveries?{}", query.join("&")), None).await
    }

    /// The configuration the service runs with (`GET /admin/v1/config`).
    pub async fn running_config(&self) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, "/admin/v1/config", None).await
    }

    /// One delivery with its log.
    pub async fn show(&self, id: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, &format!("/admin/v1/deliveries/{}", encode(id)), None).await
    }

    /// Redelivers one delivery.
    pub async fn redeliver(&self, id: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, &format!("/admin/v1/deliveries/{}/redeliver", encode(id)), None)
            .await
    }

    /// Recovers a subscription's failed deliveries since a time.
    pub async fn recover(&self, subscription: &str, since: &str) -> anyhow::Result<Value> {
        let body = serde_json::json!({ "since": since });
        self.call(
            reqwest::Method::POST,
            &format!("/admin/v1/subscriptions/{}/recover", encode(subscription)),
            Some(body),
        )
        .await
    }
}

/// Percent-encodes a query or path value (ids are plain, but a value must never break the url).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A readable table of deliveries, one line each.
pub fn table(list: &Value) -> String {
    let mut out = String::from("DELIVERY\tSTATE\tATTEMPTS\tLAST STATUS\tSUBSCRIPTION\tEVENT\tNEXT ATTEMPT\n");
    for d in list["deliveries"].as_array().into_iter().flatten() {
        let text = |k: &str| d[k].as_str().map(String::from).unwrap_or_else(|| "-".into());
        let status = d["last_status"].as_u64().map_or("-".into(), |s| s.to_string());
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            text("id"),
            text("state"),
            d["attempts"],
            status,
            text("subscription_id"),
            text("event_id"),
            text("next_attempt_at")
        ));
    }
    out
}
