//! Hostile and malformed input on the API: oversized bodies, deep nesting, invalid UTF-8, huge
//! headers and URIs, unknown paths and methods, slow clients. Each is answered with a clear 4xx
//! in its API's own format (OBP JSON on OBP routes, problem+json elsewhere), nothing is stored,
//! and a normal request made at the same time still succeeds.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use webhookd_api::limits;

use crate::support::*;

const OBP_CREATE: &str = "/obp/v4.0.0/banks/gh.29.uk/account-web-hooks";
const OBP_LIST: &str = "/obp/v4.0.0/management/banks/gh.29.uk/account-web-hooks";
const SUBS: &str = "/v3/webhooks/subscriptions";
const RECOVER: &str = "/admin/v1/subscriptions/wsb_aaaaaaaaaaaaaaaaaaaaa/recover";

/// A node with tokens for every API.
struct Fixture {
    node: Node,
    obp: String,
    rabo: String,
    admin: String,
}

async fn fixture(test: &str) -> (Fixture, tempfile::TempDir) {
    let names = Names::new(test);
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(&names, &amqp_url(), dir.path())).await;
    let obp =
        node.token("u-obp", None, &["CanCreateWebhook@*", "CanUpdateWebhook@*", "CanGetWebhooks@*"]).await;
    let rabo = node.token("u-rabo", Some("m-1"), &[]).await;
    let admin = node.token("ops", None, &["CanManageDeliveries"]).await;
    (Fixture { node, obp, rabo, admin }, dir)
}

impl Fixture {
    fn addr(&self) -> String {
        self.node.running.http_addr.to_string()
    }

    /// A normal, authenticated request that reads the store: it must succeed, and not wait for
    /// the hostile requests beside it to be cut off (they hold their connections for the whole
    /// read timeout; a loaded machine may be slow, but not that slow).
    async fn normal(&self) {
        let started = Instant::now();
        let a = self.node.call("GET", SUBS, Some(&self.rabo), None).await;
        assert_eq!(a.status, 200, "a normal request failed: {}", a.text);
        let waited = started.elapsed();
        assert!(waited < limits::HEADER_READ_TIMEOUT, "a normal request waited {waited:?} for hostile ones");
    }

    /// Runs `hostile` while a normal request runs at the same time; both must finish.
    async fn beside<T>(&self, hostile: impl std::future::Future<Output = T>) -> T {
        let (out, ()) = tokio::join!(hostile, self.normal());
        out
    }

    /// Nothing was stored by the refused requests.
    fn assert_nothing_stored(&self) {
        assert_eq!(self.node.store.subscriptions().count(), 0, "a refused request stored a subscription");
    }
}

/// An HTTP answer read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    content_type: String,
    body: Value,
    text: String,
}

/// Sends `request` as is on a new connection and reads the answer until the server closes.
async fn raw(addr: &str, request: impl AsRef<[u8]>) -> Raw {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before it has read everything; a failed write is fine.
    let _ = stream.write_all(request.as_ref()).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(HANG, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.expect("the server neither answered nor closed");
    parse(&out)
}

fn parse(bytes: &[u8]) -> Raw {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("content-type")))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Raw { status, content_type, body: serde_json::from_str(body).unwrap_or(Value::Null), text }
}

fn assert_obp_raw(r: &Raw, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.content_type, "application/json", "{}", r.text);
    assert_eq!(r.body["code"], json!(status), "{}", r.text);
    let message = r.body["message"].as_str().unwrap_or_default();
    assert!(message.starts_with(code), "{message:?} should start with {code:?}");
    assert_eq!(r.body.as_object().map(|o| o.len()), Some(2), "only code and message: {}", r.text);
}

fn assert_problem_raw(r: &Raw, status: u16, detail: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.content_type, "application/problem+json", "{}", r.text);
    assert_eq!(r.body["status"], json!(status), "{}", r.text);
    assert_eq!(r.body["type"], json!("about:blank"), "{}", r.text);
    assert!(r.body["title"].is_string(), "{}", r.text);
    let d = r.body["detail"].as_str().unwrap_or_default();
    assert!(d.contains(detail), "{d:?} should contain {detail:?}");
}

/// Checks a raw answer against the document's schema for `method doc_path` and its status.
fn documented(method: &str, doc_path: &str, r: &Raw) {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("content-type", r.content_type.parse().unwrap());
    let answer = Answer { status: r.status, headers, body: r.body.clone(), text: r.text.clone() };
    crate::contract::Contract::load().check(method, doc_path, &answer);
}

fn assert_obp(a: &Answer, status: u16, code: &str) {
    let raw = Raw {
        status: a.status,
        content_type: a.header("content-type").unwrap_or("").to_string(),
        body: a.body.clone(),
        text: a.text.clone(),
    };
    assert_obp_raw(&raw, status, code);
}

fn assert_problem(a: &Answer, status: u16, detail: &str) {
    let raw = Raw {
        status: a.status,
        content_type: a.header("content-type").unwrap_or("").to_string(),
        body: a.body.clone(),
        text: a.text.clone(),
    };
    assert_problem_raw(&raw, status, detail);
}

/// A request with a body, written out by hand.
fn request(method: &str, path: &str, token: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\nconnection: close\r\n{extra}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The same request with a chunked body (no length announced up front).
fn chunked(method: &str, path: &str, token: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(8192) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test]
async fn oversized_bodies_are_refused_413_in_each_apis_format() {
    let (f, _dir) = fixture("hostilebody").await;
    let addr = f.addr();
    let big = vec![b' '; limits::MAX_BODY_BYTES + 1];
    // Announced by content-length: refused before the body is read.
    let r = f.beside(raw(&addr, &request("POST", OBP_CREATE, &f.obp, "", &big))).await;
    assert_obp_raw(&r, 413, "OBP-10424: Request body too large.");
    documented("POST", "/obp/v4.0.0/banks/{BANK_ID}/account-web-hooks", &r);
    let r = f.beside(raw(&addr, &request("POST", SUBS, &f.rabo, "", &big))).await;
    assert_problem_raw(&r, 413, "larger than 65536 bytes");
    documented("POST", SUBS, &r);
    let r = f.beside(raw(&addr, &request("POST", RECOVER, &f.admin, "", &big))).await;
    assert_problem_raw(&r, 413, "larger than 65536 bytes");
    documented("POST", "/admin/v1/subscriptions/{subscription_id}/recover", &r);
    // Chunked, so only reading tells: refused when the limit is crossed.
    let r = f.beside(raw(&addr, &chunked("PUT", OBP_CREATE, &f.obp, &big))).await;
    assert_obp_raw(&r, 413, "OBP-10424: Request body too large.");
    let r = f
        .beside(raw(&addr, &chunked("PATCH", &format!("{SUBS}/wsb_aaaaaaaaaaaaaaaaaaaaa"), &f.rabo, &big)))
        .await;
    assert_problem_raw(&r, 413, "larger than 65536 bytes");
    // Even without a token (the body is refused before anything else).
    let r = raw(&addr, &request("POST", SUBS, "none", "", &big)).await;
    assert_problem_raw(&r, 413, "larger than 65536 bytes");
    // Without `connection: close` from the client, the server closes after the 413 anyway (it
    // read none of the body, so the connection cannot carry another request).
    let keep_alive = request("POST", SUBS, &f.rabo, "", &big);
    let keep_alive = String::from_utf8(keep_alive).unwrap().replace("connection: close\r\n", "");
    // `raw` reads until the server closes: an answer at all shows the close (a connection kept
    // open would be cut by the body read timeout instead, long after this bound).
    let started = Instant::now();
    let r = raw(&addr, keep_alive).await;
    assert_problem_raw(&r, 413, "larger than 65536 bytes");
    assert!(started.elapsed() < limits::BODY_READ_TIMEOUT, "closed after {:?}", started.elapsed());
    // A body at the limit is read (and refused for what it is, not for its size).
    let mut at_limit = br#"{"status":"enabled"}"#.to_vec();
    at_limit.resize(limits::MAX_BODY_BYTES, b' ');
    let r = raw(&addr, &request("POST", SUBS, &f.rabo, "", &at_limit)).await;
    assert_problem_raw(&r, 400, "url is required");

    // Many large chunked bodies at once: each is cut at the limit (memory stays bounded by
    // connections x 64 KiB), every one gets its 413, and the server keeps serving.
    let huge = vec![b'['; 1 << 20];
    let many = (0..32).map(|_| raw(&addr, chunked("POST", SUBS, &f.rabo, &huge)));
    let answers = f.beside(futures_util::future::join_all(many)).await;
    for r in &answers {
        assert_problem_raw(r, 413, "larger than 65536 bytes");
    }
    f.assert_nothing_stored();
    f.normal().await;
    f.node.stop().await;
}

#[tokio::test]
async fn deep_nesting_and_invalid_utf8_are_refused_400() {
    let (f, _dir) = fixture("hostilejson").await;
    let addr = f.addr();
    let deep_array = "[".repeat(60_000);
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let in_field =
        format!(r#"{{"status":"enabled","url":"https://example.com/","eventTypes":{}}}"#, "[".repeat(5000));
    for body in [deep_array.as_bytes(), deep_object.as_bytes(), in_field.as_bytes()] {
        let r = f.beside(raw(&addr, &request("POST", OBP_CREATE, &f.obp, "", body))).await;
        assert_obp_raw(&r, 400, "OBP-10001: Incorrect json format.");
        let r = f.beside(raw(&addr, &request("PUT", OBP_CREATE, &f.obp, "", body))).await;
        assert_obp_raw(&r, 400, "OBP-10001: Incorrect json format.");
        let r = f.beside(raw(&addr, &request("POST", SUBS, &f.rabo, "", body))).await;
        assert_problem_raw(&r, 400, "not valid JSON");
        let key = format!("idempotency-key: deep-{}\r\n", body.len());
        let r = raw(&addr, &request("POST", SUBS, &f.rabo, &key, body)).await;
        assert_problem_raw(&r, 400, "not valid JSON");
        let r = raw(&addr, &request("POST", RECOVER, &f.admin, "", body)).await;
        assert_problem_raw(&r, 400, "since");
    }

    // Invalid UTF-8: a body that is not text, and bytes that are not UTF-8 inside JSON strings.
    let garbage: &[u8] = b"\xff\xfe\x00\x80{\"status\":1}";
    let in_string: &[u8] =
        b"{\"status\":\"enabled\",\"url\":\"https://ex\xffample.com/\",\"eventTypes\":[\"test/v1\"]}";
    let obp_in_string: &[u8] = b"{\"account_id\":\"\xc3\x28\",\"trigger_name\":\"OnBalanceChange\",\"url\":\"https://example.com/\",\"http_method\":\"POST\",\"http_protocol\":\"HTTP/1.1\",\"is_active\":\"true\"}";
    for body in [garbage, in_string, obp_in_string] {
        let r = f.beside(raw(&addr, &request("POST", OBP_CREATE, &f.obp, "", body))).await;
        assert_obp_raw(&r, 400, "OBP-10001: Incorrect json format.");
        let r = f.beside(raw(&addr, &request("POST", SUBS, &f.rabo, "", body))).await;
        assert_problem_raw(&r, 400, "not valid JSON");
        // The body is refused before the change goes to the catalog log (where an unknown id
        // is found unknown).
        let r =
            raw(&addr, &request("PATCH", &format!("{SUBS}/wsb_aaaaaaaaaaaaaaaaaaaaa"), &f.rabo, "", body))
                .await;
        assert_problem_raw(&r, 400, "not valid JSON");
    }
    // Not UTF-8 in the path and the query: refused in the path's format, or read as text.
    let r = raw(
        &addr,
        format!(
            "GET {SUBS}/%FF%FE HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
            f.rabo
        )
        .as_bytes(),
    )
    .await;
    assert_problem_raw(&r, 400, "");
    let r = raw(&addr, format!("GET /obp/v4.0.0/management/banks/%FF/account-web-hooks HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n", f.obp).as_bytes()).await;
    assert_obp_raw(&r, 400, "OBP-10420: Invalid request.");
    let r = raw(&addr, format!("GET {OBP_LIST}?limit=%FF HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n", f.obp).as_bytes()).await;
    assert_obp_raw(&r, 400, "OBP-10016: Incorrect filter Parameters in URL.");
    let r = raw(&addr, format!("GET /admin/v1/deliveries?event_id=%FF&limit=x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n", f.admin).as_bytes()).await;
    assert_problem_raw(&r, 400, "limit");
    // Not UTF-8 in the token: no credentials.
    let mut bad_token =
        format!("GET {SUBS} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer ").into_bytes();
    bad_token.extend_from_slice(b"\xff\xfe\r\n\r\n");
    assert_problem_raw(&raw(&addr, &bad_token).await, 401, "bearer token");
    let mut bad_token =
        format!("GET {OBP_LIST} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer ")
            .into_bytes();
    bad_token.extend_from_slice(b"\xff\xfe\r\n\r\n");
    assert_obp_raw(&raw(&addr, &bad_token).await, 401, "OBP-20001");
    // Not UTF-8 in the idempotency key.
    let mut bad_key = request("POST", SUBS, &f.rabo, "idempotency-key: \u{7f}\r\n", b"{}");
    let at = bad_key.windows(2).position(|w| w == b"\x7f\r").unwrap();
    bad_key[at] = 0xff;
    assert_problem_raw(&raw(&addr, &bad_key).await, 400, "idempotency-key");

    f.assert_nothing_stored();
    f.node.stop().await;
}

#[tokio::test]
async fn huge_headers_and_uris_are_refused_in_each_apis_format() {
    let (f, _dir) = fixture("hostilehead").await;
    let addr = f.addr();
    let header = format!("x-padding: {}\r\n", "a".repeat(limits::MAX_HEADER_BYTES));
    let r = f.beside(raw(&addr, &request("POST", OBP_CREATE, &f.obp, &header, b"{}"))).await;
    assert_obp_raw(&r, 431, "OBP-10426: Request headers too large.");
    let r = f.beside(raw(&addr, &request("POST", SUBS, &f.rabo, &header, b"{}"))).await;
    assert_problem_raw(&r, 431, "at most 16384");
    let r = f.beside(raw(&addr, &request("GET", "/healthz", "x", &header, b""))).await;
    assert_problem_raw(&r, 431, "at most 16384");
    // Many small headers adding up.
    let many: String = (0..90).map(|i| format!("x-h{i}: {}\r\n", "b".repeat(200))).collect();
    let r = f.beside(raw(&addr, &request("GET", OBP_LIST, &f.obp, &many, b""))).await;
    assert_obp_raw(&r, 431, "OBP-10426");
    // A token of 20 KiB.
    let r = f.beside(raw(&addr, &request("GET", SUBS, &"t".repeat(20_000), "", b""))).await;
    assert_problem_raw(&r, 431, "at most 16384");

    // Beyond the transport cap hyper refuses on its own (bare 431) and closes; the server carries on.
    let header = format!("x-padding: {}\r\n", "a".repeat(limits::MAX_HEAD_BYTES + 1));
    let r = f.beside(raw(&addr, &request("GET", SUBS, &f.rabo, &header, b""))).await;
    assert_eq!(r.status, 431, "{}", r.text);
    // Too many headers (hyper's limit is 100).
    let many: String = (0..150).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let r = f.beside(raw(&addr, &request("GET", SUBS, &f.rabo, &many, b""))).await;
    assert_eq!(r.status, 431, "{}", r.text);

    // URIs: over 8 KiB is 414 in the path's format.
    let long = format!("{OBP_LIST}?account_id={}", "a".repeat(limits::MAX_URI_BYTES));
    let r = f.beside(raw(&addr, &request("GET", &long, &f.obp, "", b""))).await;
    assert_obp_raw(&r, 414, "OBP-10425: URI too long.");
    let long = format!("{SUBS}/{}", "a".repeat(limits::MAX_URI_BYTES));
    let r = f.beside(raw(&addr, &request("GET", &long, &f.rabo, "", b""))).await;
    assert_problem_raw(&r, 414, "at most 8192");
    f.assert_nothing_stored();
    f.node.stop().await;
}

#[tokio::test]
async fn unknown_paths_methods_and_bad_queries_answer_in_the_paths_format() {
    let (f, _dir) = fixture("hostileroute").await;
    let a = f.beside(f.node.call("GET", "/obp/v4.0.0/banks/gh.29.uk/nothing", Some(&f.obp), None)).await;
    assert_obp(&a, 404, "OBP-10421: Endpoint not found.");
    let a = f.beside(f.node.call("GET", "/v3/webhooks/nothing", Some(&f.rabo), None)).await;
    assert_problem(&a, 404, "no endpoint GET /v3/webhooks/nothing");
    let a = f.node.call("GET", "/", None, None).await;
    assert_problem(&a, 404, "no endpoint");
    let a = f.beside(f.node.call("DELETE", OBP_CREATE, Some(&f.obp), None)).await;
    assert_obp(&a, 405, "OBP-10422: Method not allowed.");
    assert_eq!(a.header("allow"), Some("POST,PUT"), "{}", a.text);
    let a = f.beside(f.node.call("PUT", SUBS, Some(&f.rabo), Some(json!({})))).await;
    assert_problem(&a, 405, "PUT is not allowed on /v3/webhooks/subscriptions");
    let a = f.node.call("POST", "/healthz", None, None).await;
    assert_problem(&a, 405, "allowed");
    // Query strings the extractors cannot read.
    let a = f
        .beside(f.node.call("GET", "/admin/v1/deliveries?limit=many&event_id=x", Some(&f.admin), None))
        .await;
    assert_problem(&a, 400, "limit");
    let a =
        f.node.call("GET", "/admin/v1/deliveries?offset=-1&subscription_id=x", Some(&f.admin), None).await;
    assert_problem(&a, 400, "offset");
    let a = f.node.call("GET", &format!("{OBP_LIST}?limit=1&limit=2"), Some(&f.obp), None).await;
    assert_obp(&a, 400, "OBP-10420: Invalid request.");
    f.assert_nothing_stored();
    f.node.stop().await;
}

/// What a slow client saw: when the server closed, and what it answered before.
struct Cut {
    after: Duration,
    answer: Raw,
}

/// Connects, writes `head` at once, then `trickle` one byte a second, and waits for the server
/// to close the connection.
async fn trickle(addr: &str, head: Vec<u8>, trickle: Vec<u8>) -> Cut {
    let stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let write = tokio::spawn(async move {
        if writer.write_all(&head).await.is_err() {
            return;
        }
        for byte in trickle {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
        }
        // Everything sent: hold the connection open without closing it.
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    write.abort();
    assert!(read.is_ok(), "the server did not close a slow connection within 40 s");
    Cut { after: started.elapsed(), answer: parse(&out) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let (f, _dir) = fixture("hostileslow").await;
    let addr = f.addr();
    // Timers never fire early; on a loaded machine they may fire late, so the upper bound only
    // catches a connection that is never cut.
    let bound = limits::HEADER_READ_TIMEOUT.max(limits::BODY_READ_TIMEOUT) + Duration::from_secs(20);

    // Headers one byte a second (never finished within the bound).
    let slow_head = trickle(&addr, b"GET /healthz HTTP/1.1\r\n".to_vec(), b"x-slow: ".repeat(10));
    // A connection that sends nothing at all.
    let silent = trickle(&addr, Vec::new(), Vec::new());
    // Headers at once, then the body one byte a second, on each API.
    let body_of = |method: &str, path: &str, token: &str| {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: 100\r\n\r\n"
        );
        trickle(&addr, head.into_bytes(), vec![b' '; 100])
    };
    let slow_obp = body_of("POST", OBP_CREATE, &f.obp);
    let slow_rabo = body_of("POST", SUBS, &f.rabo);
    let slow_admin = body_of("POST", RECOVER, &f.admin);
    // Meanwhile a normal client is served, again and again.
    let others = async {
        let started = Instant::now();
        let mut served = 0;
        while started.elapsed() < limits::HEADER_READ_TIMEOUT {
            f.normal().await;
            served += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        served
    };
    let (slow_head, silent, slow_obp, slow_rabo, slow_admin, served) =
        tokio::join!(slow_head, silent, slow_obp, slow_rabo, slow_admin, others);
    // About 40 on an idle machine; a handful shows that the slow clients did not block the others.
    assert!(served >= 3, "only {served} normal requests were served meanwhile");

    for (what, cut) in [("slow headers", &slow_head), ("silent", &silent)] {
        assert!(cut.after <= bound, "{what}: closed after {:?}, bound {bound:?}", cut.after);
        assert!(cut.after >= limits::HEADER_READ_TIMEOUT - Duration::from_secs(1), "{what}: {:?}", cut.after);
        assert!(cut.answer.status == 0 || cut.answer.status == 408, "{what}: {}", cut.answer.text);
    }
    for (what, cut) in [("OBP body", &slow_obp), ("Rabo body", &slow_rabo), ("admin body", &slow_admin)] {
        assert!(cut.after <= bound, "{what}: closed after {:?}, bound {bound:?}", cut.after);
    }
    assert_obp_raw(&slow_obp.answer, 408, "OBP-10423: Request timeout.");
    documented("POST", "/obp/v4.0.0/banks/{BANK_ID}/account-web-hooks", &slow_obp.answer);
    assert_problem_raw(&slow_rabo.answer, 408, "not received within 10 s");
    documented("POST", SUBS, &slow_rabo.answer);
    assert_problem_raw(&slow_admin.answer, 408, "not received within 10 s");
    documented("POST", "/admin/v1/subscriptions/{subscription_id}/recover", &slow_admin.answer);
    f.assert_nothing_stored();
    f.normal().await;
    f.node.stop().await;
}

#[tokio::test]
async fn integers_too_large_for_a_machine_word_are_still_integers() {
    // Found by schemathesis: the document says "an integer >= 1" and such a limit answered 400.
    let (f, _dir) = fixture("hostileint").await;
    let huge = "334366118771684887156345218550202368";
    let a = f.node.call("GET", &format!("{OBP_LIST}?limit={huge}&offset={huge}"), Some(&f.obp), None).await;
    assert_eq!((a.status, &a.body), (200, &json!({"web_hooks": []})), "{}", a.text);
    let a = f.node.call("GET", &format!("{OBP_LIST}?limit={huge}"), Some(&f.obp), None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = f.node.call("GET", &format!("{OBP_LIST}?offset=-{huge}"), Some(&f.obp), None).await;
    assert_obp(&a, 400, "OBP-10016: Incorrect filter Parameters in URL. offset must be an integer >= 0");
    let deliveries = format!("/admin/v1/deliveries?subscription_id=wsb_x&offset={huge}");
    let a = f.node.call("GET", &deliveries, Some(&f.admin), None).await;
    assert_eq!((a.status, &a.body), (200, &json!({"deliveries": []})), "{}", a.text);
    let a = f.node.call("GET", &format!("{deliveries}&limit={huge}"), Some(&f.admin), None).await;
    assert_problem(&a, 400, "limit must be an integer from 1 to 1000");
    f.node.stop().await;
}
