//! Parsing one input line into a borrowed event, or saying exactly why it is malformed
//! (JOIN.md "Events"). Nothing is allocated for a well-formed line: field values are
//! slices of the line (serde_json `RawValue`), the feature object is kept as raw JSON
//! to be spliced into the sample, and the join key is a 128-bit hash.

use odl_proto::event::StreamKind;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// The join key `(pv_id, item_id)`, hashed to 128 bits. Two distinct keys collide with
/// probability about n²/2^129 (10^-20 for a billion keys in one window), far below
/// the rate of silent hardware errors, so the key is stored instead of the strings.
pub type Key = u128;

/// A well-formed event, borrowing from its line. String fields are kept as their raw
/// JSON literals (quotes and escapes included), which is how they are written out again.
#[derive(Clone, Copy, Debug)]
pub struct ParsedEvent<'a> {
    pub stream: StreamKind,
    pub ts: i64,
    pub key: Key,
    pub pv_id: &'a str,
    pub item_id: &'a str,
    pub user_id: Option<&'a str>,
    /// The raw `features` object (feature events only).
    pub features: Option<&'a str>,
    /// `xxh3_64` of the unescaped sample id (exposures only): the audit draw.
    pub audit_hash: u64,
}

/// Why a line was rejected; `reason()` is what the dead-letter line carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Malformed {
    NotJson(String),
    NotObject,
    MissingStream,
    UnknownStream(String),
    MissingField { stream: StreamKind, field: &'static str },
    WrongType { stream: StreamKind, field: &'static str, expected: &'static str },
}

impl Malformed {
    pub fn reason(&self) -> String {
        match self {
            Malformed::NotJson(e) => format!("not json: {e}"),
            Malformed::NotObject => "not an object".into(),
            Malformed::MissingStream => "missing field stream".into(),
            Malformed::UnknownStream(s) => format!("unknown stream {s}"),
            Malformed::MissingField { field, .. } => format!("missing field {field}"),
            Malformed::WrongType { field, expected, .. } => format!("field {field} is not {expected}"),
        }
    }

    /// The stream, when the line named a known one.
    pub fn stream(&self) -> Option<StreamKind> {
        match self {
            Malformed::MissingField { stream, .. } | Malformed::WrongType { stream, .. } => Some(*stream),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pv_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    item_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts: Option<&'a RawValue>,
    #[serde(borrow, default)]
    features: Option<&'a RawValue>,
}

/// The raw JSON text of each known field (`None`: absent or `null`), from the fast
/// scanner or from serde_json.
#[derive(Default)]
struct RawFields<'a> {
    stream: Option<&'a str>,
    pv_id: Option<&'a str>,
    item_id: Option<&'a str>,
    user_id: Option<&'a str>,
    ts: Option<&'a str>,
    features: Option<&'a str>,
}

mod scan;

/// Reusable parser state (a scratch buffer for the key bytes).
#[derive(Default)]
pub struct Parser {
    scratch: Vec<u8>,
}

impl Parser {
    /// Parses a replay line, whose `stream` field names the stream.
    pub fn parse<'a>(&mut self, line: &'a [u8]) -> Result<ParsedEvent<'a>, Malformed> {
        self.parse_with(line, None)
    }

    /// Parses a message whose stream is known from where it came from (a Kafka topic);
    /// a `stream` field in it, if any, is ignored.
    pub fn parse_with<'a>(
        &mut self,
        line: &'a [u8],
        known: Option<StreamKind>,
    ) -> Result<ParsedEvent<'a>, Malformed> {
        // serde would also read a struct from an array (by position): objects only.
        if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
                Ok(_) => Malformed::NotObject,
                Err(e) => Malformed::NotJson(e.to_string()),
            });
        }
        let f = match scan::fields(line) {
            Some(f) => f,
            None => match serde_json::from_slice::<Fields<'a>>(line) {
                Ok(f) => RawFields {
                    stream: f.stream.map(RawValue::get),
                    pv_id: f.pv_id.map(RawValue::get),
                    item_id: f.item_id.map(RawValue::get),
                    user_id: f.user_id.map(RawValue::get),
                    ts: f.ts.map(RawValue::get),
                    features: f.features.map(RawValue::get),
                },
                Err(e) => return Err(classify(line, e)),
            },
        };
        let stream = match known {
            Some(s) => s,
            None => {
                let raw = f.stream.ok_or(Malformed::MissingStream)?;
                let name = string_value(raw).ok_or_else(|| Malformed::UnknownStream(raw.to_string()))?;
                StreamKind::parse(&name).ok_or_else(|| Malformed::UnknownStream(raw.to_string()))?
            }
        };
        let pv_id = required_string(stream, "pv_id", f.pv_id)?;
        let item_id = required_string(stream, "item_id", f.item_id)?;
        let user_id = match stream {
            StreamKind::Exposure => Some(required_string(stream, "user_id", f.user_id)?),
            _ => f.user_id.filter(|r| r.starts_with('"')),
        };
        let ts_raw = f.ts.ok_or(Malformed::MissingField { stream, field: "ts" })?;
        let ts =
            integer(ts_raw).ok_or(Malformed::WrongType { stream, field: "ts", expected: "an integer" })?;
        let features = match stream {
            StreamKind::Feature => {
                let raw = f.features.ok_or(Malformed::MissingField { stream, field: "features" })?;
                if !raw.starts_with('{') {
                    return Err(Malformed::WrongType { stream, field: "features", expected: "an object" });
                }
                Some(raw)
            }
            _ => None,
        };
        // Key bytes: pv_id, 0xFF (never in UTF-8, so the split is unambiguous), item_id.
        let s = &mut self.scratch;
        s.clear();
        s.extend_from_slice(unescaped(pv_id).as_bytes());
        let sep = s.len();
        s.push(0xFF);
        s.extend_from_slice(unescaped(item_id).as_bytes());
        let key = xxh3_128(s);
        let audit_hash = if stream == StreamKind::Exposure {
            s[sep] = b':';
            xxh3_64(s)
        } else {
            0
        };
        Ok(ParsedEvent { stream, ts, key, pv_id, item_id, user_id, features, audit_hash })
    }
}

/// A line starting with `{` that serde refused: broken JSON, or (still valid JSON) an
/// object with a repeated key.
fn classify(_line: &[u8], e: serde_json::Error) -> Malformed {
    Malformed::NotJson(e.to_string())
}

fn required_string<'a>(
    stream: StreamKind,
    field: &'static str,
    raw: Option<&'a str>,
) -> Result<&'a str, Malformed> {
    let raw = raw.ok_or(Malformed::MissingField { stream, field })?;
    if raw.starts_with('"') {
        Ok(raw)
    } else {
        Err(Malformed::WrongType { stream, field, expected: "a string" })
    }
}

/// The text of a raw JSON string literal (already validated by serde_json).
pub fn unescaped(raw: &str) -> Cow<'_, str> {
    let inner = &raw[1..raw.len() - 1];
    if !inner.contains('\\') {
        return Cow::Borrowed(inner);
    }
    match serde_json::from_str::<String>(raw) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(inner),
    }
}

fn string_value(raw: &str) -> Option<Cow<'_, str>> {
    raw.starts_with('"').then(|| unescaped(raw))
}

/// A JSON integer literal (no fraction, no exponent) that fits in i64.
fn integer(raw: &str) -> Option<i64> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<ParsedEvent<'_>, Malformed> {
        Parser::default().parse(line.as_bytes())
    }

    #[test]
    fn well_formed_events_of_each_stream() {
        let e = p(r#"{"stream":"exposure","pv_id":"p","item_id":"i","user_id":"u","ts":5,"ctx":{"a":[1]}}"#)
            .unwrap();
        assert_eq!((e.stream, e.ts, e.pv_id, e.user_id), (StreamKind::Exposure, 5, "\"p\"", Some("\"u\"")));
        let c = p(r#"{"stream":"click","pv_id":"p","item_id":"i","ts":-7}"#).unwrap();
        assert_eq!((c.stream, c.ts, c.key), (StreamKind::Click, -7, e.key));
        let f =
            p(r#" {"ts":1,"features":{ "a": 1 },"item_id":"i","pv_id":"p","stream":"feature"} "#).unwrap();
        assert_eq!(f.features, Some(r#"{ "a": 1 }"#));
        let d = p(r#"{"stream":"detail_click","pv_id":"p","item_id":"i","ts":0,"user_id":3}"#).unwrap();
        assert_eq!((d.stream, d.user_id), (StreamKind::DetailClick, None));
    }

    #[test]
    fn key_uses_unescaped_text_and_separates_fields() {
        let a = p(r#"{"stream":"click","pv_id":"p","item_id":"i","ts":0}"#).unwrap().key;
        let b = p(r#"{"stream":"click","pv_id":"\u0070","item_id":"i","ts":0}"#).unwrap().key;
        assert_eq!(a, b);
        let c = p(r#"{"stream":"click","pv_id":"a:b","item_id":"c","ts":0}"#).unwrap().key;
        let d = p(r#"{"stream":"click","pv_id":"a","item_id":"b:c","ts":0}"#).unwrap().key;
        assert_ne!(c, d);
    }

    #[test]
    fn every_malformed_kind() {
        use Malformed::*;
        use StreamKind::*;
        let cases: Vec<(&str, Malformed)> = vec![
            ("{not json", NotJson(String::new())),
            (r#"{"stream":"click","pv_id":"p","item_id":"i","ts":1} trailing"#, NotJson(String::new())),
            ("[1,2]", NotObject),
            ("\"str\"", NotObject),
            ("42", NotObject),
            ("null", NotObject),
            (r#"{"pv_id":"p","item_id":"i","ts":1}"#, MissingStream),
            (r#"{"stream":"view","pv_id":"p","item_id":"i","ts":1}"#, UnknownStream("\"view\"".into())),
            (r#"{"stream":7,"pv_id":"p","item_id":"i","ts":1}"#, UnknownStream("7".into())),
            (r#"{"stream":"click","item_id":"i","ts":1}"#, MissingField { stream: Click, field: "pv_id" }),
            (r#"{"stream":"click","pv_id":"p","ts":1}"#, MissingField { stream: Click, field: "item_id" }),
            (r#"{"stream":"click","pv_id":"p","item_id":"i"}"#, MissingField { stream: Click, field: "ts" }),
            (
                r#"{"stream":"exposure","pv_id":"p","item_id":"i","ts":1}"#,
                MissingField { stream: Exposure, field: "user_id" },
            ),
            (
                r#"{"stream":"feature","pv_id":"p","item_id":"i","ts":1}"#,
                MissingField { stream: Feature, field: "features" },
            ),
            (
                r#"{"stream":"click","pv_id":5,"item_id":"i","ts":1}"#,
                WrongType { stream: Click, field: "pv_id", expected: "a string" },
            ),
            (
                r#"{"stream":"click","pv_id":null,"item_id":"i","ts":1}"#,
                MissingField { stream: Click, field: "pv_id" },
            ),
            (
                r#"{"stream":"click","pv_id":"p","item_id":["i"],"ts":1}"#,
                WrongType { stream: Click, field: "item_id", expected: "a string" },
            ),
            (
                r#"{"stream":"exposure","pv_id":"p","item_id":"i","user_id":{},"ts":1}"#,
                WrongType { stream: Exposure, field: "user_id", expected: "a string" },
            ),
            (
                r#"{"stream":"click","pv_id":"p","item_id":"i","ts":1.5}"#,
                WrongType { stream: Click, field: "ts", expected: "an integer" },
            ),
            (
                r#"{"stream":"click","pv_id":"p","item_id":"i","ts":1e3}"#,
                WrongType { stream: Click, field: "ts", expected: "an integer" },
            ),
            (
                r#"{"stream":"click","pv_id":"p","item_id":"i","ts":"1"}"#,
                WrongType { stream: Click, field: "ts", expected: "an integer" },
            ),
            (
                r#"{"stream":"click","pv_id":"p","item_id":"i","ts":99999999999999999999}"#,
                WrongType { stream: Click, field: "ts", expected: "an integer" },
            ),
            (
                r#"{"stream":"feature","pv_id":"p","item_id":"i","ts":1,"features":[1]}"#,
                WrongType { stream: Feature, field: "features", expected: "an object" },
            ),
            (
                r#"{"stream":"feature","pv_id":"p","item_id":"i","ts":1,"features":"x"}"#,
                WrongType { stream: Feature, field: "features", expected: "an object" },
            ),
        ];
        for (line, want) in cases {
            let got = p(line).unwrap_err();
            match (&got, &want) {
                (NotJson(_), NotJson(_)) => {}
                _ => assert_eq!(got, want, "{line}"),
            }
            assert!(!got.reason().is_empty());
        }
        assert!(matches!(Parser::default().parse(b"\xff\xfe"), Err(NotJson(_))));
    }
}
