//! The capture format: one AMQP message per line, as one JSON object (JSON Lines).
//!
//! A line holds the exchange and routing key the message was published with, its properties
//! (headers rendered as JSON), its body and when it was received:
//!
//! ```json
//! {"exchange":"webhookd.events","routing_key":"balance.changed","properties":{"content_type":"application/json","delivery_mode":2},"body":"{\"type\":\"balance.changed\",...}","received_at":"2026-11-24T10:00:00.123Z"}
//! ```
//!
//! The body is kept as text in `body` when it is valid UTF-8, otherwise as standard base64 in
//! `body_base64`; exactly one of the two is present. Properties that are absent are left out.
//!
//! Headers (an AMQP field table) are rendered as JSON: strings as strings, integers, floats,
//! decimals and timestamps as numbers, booleans as booleans, void as `null`, nested tables as
//! objects and arrays as arrays; byte arrays (and long strings that are not UTF-8) become
//! standard base64 strings. Read back for re-publishing ([`CapturedMessage::to_amqp_properties`]),
//! strings become long strings, integers 64-bit signed integers (`l`), other numbers doubles.
//! Re-publishing is faithful for what publishers normally put in headers (strings, integers,
//! booleans, tables, arrays); the exact AMQP type of a number and byte arrays are not kept.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// One captured AMQP message.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CapturedMessage {
    /// The exchange the message was published to (empty for the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its AMQP properties, headers included.
    pub properties: CapturedProperties,
    /// The body, when it is valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub body: Option<String>,
    /// The body as standard base64, when it is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub body_base64: Option<String>,
    /// When the message was received: RFC 3339, UTC, with milliseconds.
    pub received_at: String,
}

/// The AMQP basic properties of a captured message; absent ones are `None` and left out.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CapturedProperties {
    /// MIME content type, e.g. `application/json`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_type: Option<String>,
    /// MIME content encoding, e.g. `gzip`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_encoding: Option<String>,
    /// 1 transient, 2 persistent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delivery_mode: Option<u8>,
    /// Message priority, 0 to 9.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub priority: Option<u8>,
    /// Application message id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message_id: Option<String>,
    /// Application correlation id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub correlation_id: Option<String>,
    /// Address to reply to.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as the string AMQP carries.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expiration: Option<String>,
    /// Message timestamp, seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timestamp: Option<u64>,
    /// Message type name (the AMQP `type` property).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none", default)]
    pub kind: Option<String>,
    /// Creating application id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub app_id: Option<String>,
    /// The headers table rendered as a JSON object (see the module docs).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub headers: Option<Value>,
}

/// Why a capture could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Reading or writing the capture file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The capture file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a capture file is not a valid captured message.
    #[error("line {line}: {reason}")]
    Line {
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The message has no body, two bodies, or its `body_base64` is not base64.
    #[error("invalid body: {0}")]
    Body(String),
    /// The `received_at` is not an RFC 3339 time.
    #[error("invalid received_at {0:?}")]
    ReceivedAt(String),
}

impl CapturedProperties {
    /// Captures the properties of a received message (headers rendered as JSON).
    pub fn from_amqp(properties: &BasicProperties) -> CapturedProperties {
        let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_string());
        CapturedProperties {
            content_type: text(properties.content_type()),
            content_encoding: text(properties.content_encoding()),
            delivery_mode: *properties.delivery_mode(),
            priority: *properties.priority(),
            message_id: text(properties.message_id()),
            correlation_id: text(properties.correlation_id()),
            reply_to: text(properties.reply_to()),
            expiration: text(properties.expiration()),
            timestamp: *properties.timestamp(),
            kind: text(properties.kind()),
            app_id: text(properties.app_id()),
            headers: properties.headers().as_ref().map(field_table_to_json),
        }
    }
}

impl CapturedMessage {
    /// Builds a captured message; the body goes to `body` or `body_base64`, the time to UTC ms.
    pub fn from_parts(
        exchange: &str,
        routing_key: &str,
        properties: CapturedProperties,
        body: &[u8],
        received_at: OffsetDateTime,
    ) -> CapturedMessage {
        let (body, body_base64) = match std::str::from_utf8(body) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(BASE64.encode(body))),
        };
        CapturedMessage {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            properties,
            body,
            body_base64,
            received_at: format_time(received_at),
        }
    }

    /// The body bytes, from `body` or by decoding `body_base64`.
    pub fn body_bytes(&self) -> Result<Vec<u8>, CaptureError> {
        match (&self.body, &self.body_base64) {
            (Some(text), None) => Ok(text.as_bytes().to_vec()),
            (None, Some(encoded)) => BASE64
                .decode(encoded)
                .map_err(|e| CaptureError::Body(format!("`body_base64` is not standard base64: {e}"))),
            (Some(_), Some(_)) => Err(CaptureError::Body("both `body` and `body_base64` are set".into())),
            (None, None) => Err(CaptureError::Body("neither `body` nor `body_base64` is set".into())),
        }
    }

    /// The `received_at` time, parsed.
    pub fn received_at(&self) -> Result<OffsetDateTime, CaptureError> {
        OffsetDateTime::parse(&self.received_at, &Rfc3339)
            .map_err(|_| CaptureError::ReceivedAt(self.received_at.clone()))
    }

    /// The properties for re-publishing: headers converted back, `delivery_mode` 2 when absent.
    ///
    /// Property strings longer than AMQP's 255-byte limit and header keys longer than that (which
    /// no broker delivers, so only a hand-edited capture has them) are left out.
    pub fn to_amqp_properties(&self) -> BasicProperties {
        let p = &self.properties;
        let short = |s: &Option<String>| s.as_deref().and_then(|s| ShortString::try_new(s).ok());
        let mut out = BasicProperties::default().with_delivery_mode(p.delivery_mode.unwrap_or(2));
        if let Some(v) = short(&p.content_type) {
            out = out.with_content_type(v);
        }
        if let Some(v) = short(&p.content_encoding) {
            out = out.with_content_encoding(v);
        }
        if let Some(v) = p.priority {
            out = out.with_priority(v);
        }
        if let Some(v) = short(&p.message_id) {
            out = out.with_message_id(v);
        }
        if let Some(v) = short(&p.correlation_id) {
            out = out.with_correlation_id(v);
        }
        if let Some(v) = short(&p.reply_to) {
            out = out.with_reply_to(v);
        }
        if let Some(v) = short(&p.expiration) {
            out = out.with_expiration(v);
        }
        if let Some(v) = p.timestamp {
            out = out.with_timestamp(v);
        }
        if let Some(v) = short(&p.kind) {
            out = out.with_type(v);
        }
        if let Some(v) = short(&p.app_id) {
            out = out.with_app_id(v);
        }
        if let Some(headers) = &p.headers {
            out = out.with_headers(json_to_field_table(headers));
        }
        out
    }

    /// The message as one JSON line, without the trailing newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("a captured message always serializes")
    }
}

/// Renders an AMQP field table as a JSON object (see the module docs for the mapping).
pub fn field_table_to_json(table: &FieldTable) -> Value {
    Value::Object(table.inner().iter().map(|(k, v)| (k.as_str().to_string(), amqp_to_json(v))).collect())
}

/// Converts a JSON object back to an AMQP field table (non-object values become `{"value": ...}`).
pub fn json_to_field_table(value: &Value) -> FieldTable {
    match json_to_amqp(value) {
        AMQPValue::FieldTable(table) => table,
        other => {
            // Not an object (only a hand-edited capture has that): kept under one key.
            let mut table = FieldTable::default();
            table.insert("value".into(), other);
            table
        }
    }
}

/// One AMQP value as JSON.
fn amqp_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        // Non-finite floats have no JSON form: serde_json renders them as null.
        AMQPValue::Float(f) => Value::from(f64::from(*f)),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => Value::from(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Value::String(text.to_string()),
            Err(_) => Value::String(BASE64.encode(s.as_bytes())),
        },
        AMQPValue::ByteArray(bytes) => Value::String(BASE64.encode(bytes.as_slice())),
        AMQPValue::FieldArray(items) => Value::Array(items.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::FieldTable(table) => field_table_to_json(table),
        AMQPValue::Void => Value::Null,
    }
}

/// One JSON value as AMQP (see the module docs for the mapping).
fn json_to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => {
            AMQPValue::FieldArray(FieldArray::from(items.iter().map(json_to_amqp).collect::<Vec<_>>()))
        }
        Value::Object(map) => {
            let mut table = FieldTable::default();
            for (k, v) in map {
                if let Ok(key) = ShortString::try_new(k.as_str()) {
                    table.insert(key, json_to_amqp(v));
                }
            }
            AMQPValue::FieldTable(table)
        }
    }
}

/// Formats a time as RFC 3339 in UTC with exactly three fraction digits, e.g. `...T10:00:00.123Z`.
pub fn format_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// Reads a capture file; blank lines are skipped, and an error names the line that is wrong.
///
/// Every message is checked: exactly one body field (base64 that decodes) and a parseable
/// `received_at`.
pub fn read_capture(path: &Path) -> Result<Vec<CapturedMessage>, CaptureError> {
    let io_error = |source| CaptureError::Io { path: path.to_path_buf(), source };
    let reader = BufReader::new(File::open(path).map_err(io_error)?);
    let mut messages = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line_no = index + 1;
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                CaptureError::Line { line: line_no, reason: "not valid UTF-8".into() }
            }
            _ => io_error(e),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| CaptureError::Line { line: line_no, reason };
        let message: CapturedMessage = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        message.body_bytes().map_err(|e| bad(e.to_string()))?;
        message.received_at().map_err(|e| bad(e.to_string()))?;
        messages.push(message);
    }
    Ok(messages)
}

/// Writes `messages` to a new capture file at `path` (replacing it), one line each.
pub fn write_capture(path: &Path, messages: &[CapturedMessage]) -> Result<(), CaptureError> {
    let mut text = String::new();
    for m in messages {
        text.push_str(&m.to_line());
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|source| CaptureError::Io { path: path.to_path_buf(), source })
}

/// Appends captured messages to a file, one complete line per write.
#[derive(Debug)]
pub struct CaptureWriter {
    path: PathBuf,
    file: File,
}

impl CaptureWriter {
    /// Creates (or truncates) the capture file at `path`.
    pub fn create(path: &Path) -> Result<CaptureWriter, CaptureError> {
        let file =
            File::create(path).map_err(|source| CaptureError::Io { path: path.to_path_buf(), source })?;
        Ok(CaptureWriter { path: path.to_path_buf(), file })
    }

    /// Writes one message as one line, handed to the OS at once (unbuffered), so a recorder
    /// killed at any moment leaves only complete lines behind.
    pub fn write(&mut self, m: &CapturedMessage) -> Result<(), CaptureError> {
        let mut line = m.to_line();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|source| CaptureError::Io { path: self.path.clone(), source })
    }

    /// Flushes the file to disk (fsync).
    pub fn sync(&mut self) -> Result<(), CaptureError> {
        self.file.sync_all().map_err(|source| CaptureError::Io { path: self.path.clone(), source })
    }

    /// The path of the capture file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{ByteArray, DecimalValue};
    use std::time::{SystemTime, UNIX_EPOCH};

    /// A fresh file path under the system temp dir, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> TempFile {
            let nanos =
                SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
            TempFile(std::env::temp_dir().join(format!("webhookd-{name}-{}-{nanos}", std::process::id())))
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &Rfc3339).unwrap()
    }

    #[test]
    fn bodies_go_to_text_or_base64() {
        let when = at("2026-11-24T10:00:00.123456+01:00");
        let text = CapturedMessage::from_parts("x", "k", CapturedProperties::default(), b"{\"a\":1}", when);
        assert_eq!(text.body.as_deref(), Some("{\"a\":1}"));
        assert_eq!(text.body_base64, None);
        assert_eq!(text.received_at, "2026-11-24T09:00:00.123Z");
        assert_eq!(text.received_at().unwrap(), at("2026-11-24T09:00:00.123Z"));
        assert_eq!(text.body_bytes().unwrap(), b"{\"a\":1}");

        let bytes = [0xff, 0xfe, b'{', 0];
        let binary = CapturedMessage::from_parts("x", "k", CapturedProperties::default(), &bytes, when);
        assert_eq!(binary.body, None);
        assert_eq!(binary.body_base64.as_deref(), Some("//57AA=="));
        assert_eq!(binary.body_bytes().unwrap(), bytes);
        let line = binary.to_line();
        assert!(!line.contains("\"body\""), "{line}");
        assert!(!line.contains("content_type"), "absent properties are left out: {line}");

        let empty = CapturedMessage::from_parts("", "k", CapturedProperties::default(), b"", when);
        assert_eq!(empty.body.as_deref(), Some(""));
        assert_eq!(empty.body_bytes().unwrap(), b"");
    }

    #[test]
    fn headers_render_as_json_and_convert_back() {
        let mut nested = FieldTable::default();
        nested.insert("depth".into(), AMQPValue::ShortInt(2));
        nested.insert("name".into(), AMQPValue::ShortString("inner".into()));
        let mut headers = FieldTable::default();
        headers.insert("text".into(), AMQPValue::LongString("hello".into()));
        headers.insert("count".into(), AMQPValue::LongInt(-7));
        headers.insert("big".into(), AMQPValue::LongLongInt(1 << 40));
        headers.insert("flag".into(), AMQPValue::Boolean(true));
        headers.insert("ratio".into(), AMQPValue::Double(0.5));
        headers.insert("price".into(), AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 1250 }));
        headers.insert("when".into(), AMQPValue::Timestamp(1_795_000_000));
        headers.insert("raw".into(), AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 255])));
        headers.insert("latin1".into(), AMQPValue::LongString(LongString::from(vec![0xe9u8])));
        headers.insert("none".into(), AMQPValue::Void);
        headers.insert("nested".into(), AMQPValue::FieldTable(nested));
        headers.insert(
            "list".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongString("a".into()), AMQPValue::LongInt(1)].into()),
        );
        let json = field_table_to_json(&headers);
        assert_eq!(
            json,
            serde_json::json!({
                "text": "hello", "count": -7, "big": 1_u64 << 40, "flag": true, "ratio": 0.5,
                "price": 12.5, "when": 1_795_000_000, "raw": "AAH/", "latin1": "6Q==", "none": null,
                "nested": {"depth": 2, "name": "inner"}, "list": ["a", 1],
            })
        );

        let back = json_to_field_table(&json);
        let get = |k: &str| back.inner().get(k).cloned().unwrap();
        assert_eq!(get("text"), AMQPValue::LongString("hello".into()));
        assert_eq!(get("count"), AMQPValue::LongLongInt(-7));
        assert_eq!(get("flag"), AMQPValue::Boolean(true));
        assert_eq!(get("ratio"), AMQPValue::Double(0.5));
        assert_eq!(get("none"), AMQPValue::Void);
        let AMQPValue::FieldTable(inner) = get("nested") else { panic!("nested is not a table") };
        assert_eq!(inner.inner().get("depth"), Some(&AMQPValue::LongLongInt(2)));
        assert_eq!(inner.inner().get("name"), Some(&AMQPValue::LongString("inner".into())));
        // Rendering the converted table again gives the same JSON (up to the decimal and bytes).
        assert_eq!(field_table_to_json(&back), json);
    }

    #[test]
    fn properties_round_trip_for_republishing() {
        let mut headers = FieldTable::default();
        headers.insert("x-trace".into(), AMQPValue::LongString("abc".into()));
        let original = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_delivery_mode(1)
            .with_priority(3)
            .with_message_id("m-1".into())
            .with_correlation_id("c-1".into())
            .with_reply_to("replies".into())
            .with_expiration("60000".into())
            .with_timestamp(1_795_000_000)
            .with_type("balance.changed".into())
            .with_app_id("core".into())
            .with_headers(headers.clone());
        let props = CapturedProperties::from_amqp(&original);
        let m = CapturedMessage::from_parts("x", "k", props, b"{}", OffsetDateTime::now_utc());
        let line = m.to_line();
        assert!(line.contains(r#""type":"balance.changed""#), "{line}");
        let parsed: CapturedMessage = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, m);
        let back = parsed.to_amqp_properties();
        assert_eq!(back, original);

        // A bare capture is re-published persistent, without headers.
        let bare = CapturedMessage::from_parts(
            "x",
            "k",
            CapturedProperties::default(),
            b"",
            m.received_at().unwrap(),
        );
        assert_eq!(bare.to_amqp_properties(), BasicProperties::default().with_delivery_mode(2));
    }

    #[test]
    fn reads_what_the_writer_wrote_and_names_bad_lines() {
        let file = TempFile::new("capture-rw");
        let when = at("2026-11-24T00:00:00Z");
        let a = CapturedMessage::from_parts("x", "a", CapturedProperties::default(), b"{}", when);
        let b = CapturedMessage::from_parts("x", "b", CapturedProperties::default(), &[0xc3, 0x28], when);
        let mut writer = CaptureWriter::create(&file.0).unwrap();
        writer.write(&a).unwrap();
        writer.write(&b).unwrap();
        writer.sync().unwrap();
        assert_eq!(writer.path(), file.0);
        assert_eq!(read_capture(&file.0).unwrap(), vec![a.clone(), b.clone()]);

        // Blank lines are skipped.
        let text = format!("\n{}\n   \n{}\n\n", a.to_line(), b.to_line());
        std::fs::write(&file.0, text).unwrap();
        assert_eq!(read_capture(&file.0).unwrap(), vec![a.clone(), b.clone()]);

        let cases = [
            ("{not json".to_string(), "line 2: "),
            (a.to_line().replace(r#""body":"{}","#, ""), "neither"),
            (a.to_line().replace(r#""body":"{}","#, r#""body":"{}","body_base64":"e30=","#), "both"),
            (b.to_line().replace("wyg=", "!!"), "base64"),
            (a.to_line().replace("2026-11-24T00:00:00.000Z", "yesterday"), "yesterday"),
        ];
        for (bad, expected) in cases {
            std::fs::write(&file.0, format!("{}\n{bad}\n", a.to_line())).unwrap();
            let err = read_capture(&file.0).unwrap_err();
            assert!(matches!(err, CaptureError::Line { line: 2, .. }), "{err}");
            assert!(err.to_string().contains(expected), "{err} should mention {expected:?}");
        }

        std::fs::write(&file.0, [b'{', 0xff, b'\n']).unwrap();
        let err = read_capture(&file.0).unwrap_err();
        assert!(matches!(err, CaptureError::Line { line: 1, .. }), "{err}");

        let missing = read_capture(Path::new("/nonexistent/capture.jsonl")).unwrap_err();
        assert!(matches!(missing, CaptureError::Io { .. }));
        assert!(missing.to_string().contains("/nonexistent/capture.jsonl"), "{missing}");
    }

    #[test]
    fn write_capture_writes_one_line_each() {
        let file = TempFile::new("capture-all");
        let when = at("2026-11-24T00:00:00.5Z");
        let messages: Vec<_> = (0..3)
            .map(|i| {
                let body = format!("{{\"n\":{i}}}");
                CapturedMessage::from_parts("x", "k", CapturedProperties::default(), body.as_bytes(), when)
            })
            .collect();
        write_capture(&file.0, &messages).unwrap();
        let text = std::fs::read_to_string(&file.0).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.ends_with('\n'));
        assert_eq!(read_capture(&file.0).unwrap(), messages);
        assert_eq!(messages[0].received_at, "2026-11-24T00:00:00.500Z");
    }
}
