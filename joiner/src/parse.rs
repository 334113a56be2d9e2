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
/// JSON literals (quotes and escapes included; valid UTF-8, as the whole line is),
/// which is how they are written out again.
#[derive(Clone, Copy, Debug)]
pub struct ParsedEvent<'a> {
    pub stream: StreamKind,
    pub ts: i64,
    pub key: Key,
    pub pv_id: &'a [u8],
    pub item_id: &'a [u8],
    pub user_id: Option<&'a [u8]>,
    /// The raw `features` object (feature events only).
    pub features: Option<&'a [u8]>,
    /// `xxh3_64` of the unescaped sample id (exposures only): the audit draw.
    pub audit_hash: u64,
}

/// A [`ParsedEvent`] whose fields are spans of its line instead of borrows, so it can
/// cross a thread beside the line (the Kafka joiner parses on its reader threads) and
/// borrow from it again there ([`DetachedEvent::attach`]).
#[derive(Clone, Copy, Debug)]
pub struct DetachedEvent {
    stream: StreamKind,
    ts: i64,
    key: Key,
    pv_id: Span,
    item_id: Span,
    user_id: Option<Span>,
    features: Option<Span>,
    audit_hash: u64,
}

/// Where a field lies in its line.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    /// `part`'s place in `line`; `None` unless `part` is a slice of `line`.
    fn of(line: &[u8], part: &[u8]) -> Option<Span> {
        let start = (part.as_ptr() as usize).checked_sub(line.as_ptr() as usize)?;
        let end = start.checked_add(part.len())?;
        (end <= line.len()).then_some(Span { start, end })
    }
}

impl<'a> ParsedEvent<'a> {
    /// The event as spans of `line`, the line it was parsed from; `None` if a field
    /// does not lie in it (the parser only ever returns slices of its line).
    pub fn detach(&self, line: &'a [u8]) -> Option<DetachedEvent> {
        let span = |part: &[u8]| Span::of(line, part);
        let optional = |part: Option<&[u8]>| part.map(span).map_or(Some(None), |s| s.map(Some));
        Some(DetachedEvent {
            stream: self.stream,
            ts: self.ts,
            key: self.key,
            pv_id: span(self.pv_id)?,
            item_id: span(self.item_id)?,
            user_id: optional(self.user_id)?,
            features: optional(self.features)?,
            audit_hash: self.audit_hash,
        })
    }
}

impl DetachedEvent {
    pub fn ts(&self) -> i64 {
        self.ts
    }

    /// The join key `(pv_id, item_id)`.
    pub fn key(&self) -> Key {
        self.key
    }

    /// The event again, borrowing from `line`, which must be the line it was detached
    /// from (any other line may panic or give wrong fields).
    pub fn attach<'a>(&self, line: &'a [u8]) -> ParsedEvent<'a> {
        let at = |s: Span| &line[s.start..s.end];
        ParsedEvent {
            stream: self.stream,
            ts: self.ts,
            key: self.key,
            pv_id: at(self.pv_id),
            item_id: at(self.item_id),
            user_id: self.user_id.map(at),
            features: self.features.map(at),
            audit_hash: self.audit_hash,
        }
    }
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
    stream: Option<&'a [u8]>,
    pv_id: Option<&'a [u8]>,
    item_id: Option<&'a [u8]>,
    user_id: Option<&'a [u8]>,
    ts: Option<&'a [u8]>,
    features: Option<&'a [u8]>,
    /// Per field (the bits of `scan`), whether its string literal may hold an escape;
    /// a clear bit spares unescaping the pv_id and item_id of every event.
    escaped: u8,
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
                Ok(f) => {
                    let raw = |r: Option<&'a RawValue>| r.map(|r| r.get().as_bytes());
                    RawFields {
                        stream: raw(f.stream),
                        pv_id: raw(f.pv_id),
                        item_id: raw(f.item_id),
                        user_id: raw(f.user_id),
                        ts: raw(f.ts),
                        features: raw(f.features),
                        escaped: u8::MAX,
                    }
                }
                Err(e) => return Err(classify(line, e)),
            },
        };
        let stream = match known {
            Some(s) => s,
            None => {
                let raw = f.stream.ok_or(Malformed::MissingStream)?;
                let unknown = || Malformed::UnknownStream(String::from_utf8_lossy(raw).into_owned());
                let name = string_value(raw, f.escaped & scan::STREAM != 0).ok_or_else(unknown)?;
                stream_kind(&name).ok_or_else(unknown)?
            }
        };
        let pv_id = required_string(stream, "pv_id", f.pv_id)?;
        let item_id = required_string(stream, "item_id", f.item_id)?;
        let user_id = match stream {
            StreamKind::Exposure => Some(required_string(stream, "user_id", f.user_id)?),
            _ => f.user_id.filter(|r| r.starts_with(b"\"")),
        };
        let ts_raw = f.ts.ok_or(Malformed::MissingField { stream, field: "ts" })?;
        let ts =
            integer(ts_raw).ok_or(Malformed::WrongType { stream, field: "ts", expected: "an integer" })?;
        let features = match stream {
            StreamKind::Feature => {
                let raw = f.features.ok_or(Malformed::MissingField { stream, field: "features" })?;
                if !raw.starts_with(b"{") {
                    return Err(Malformed::WrongType { stream, field: "features", expected: "an object" });
                }
                Some(raw)
            }
            _ => None,
        };
        // Key bytes: pv_id, 0xFF (never in UTF-8, so the split is unambiguous), item_id.
        let s = &mut self.scratch;
        s.clear();
        s.extend_from_slice(&unescaped_if(pv_id, f.escaped & scan::PV_ID != 0));
        let sep = s.len();
        s.push(0xFF);
        s.extend_from_slice(&unescaped_if(item_id, f.escaped & scan::ITEM_ID != 0));
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
    raw: Option<&'a [u8]>,
) -> Result<&'a [u8], Malformed> {
    let raw = raw.ok_or(Malformed::MissingField { stream, field })?;
    if raw.starts_with(b"\"") {
        Ok(raw)
    } else {
        Err(Malformed::WrongType { stream, field, expected: "a string" })
    }
}

/// The text of a raw JSON string literal (already validated).
pub fn unescaped(raw: &[u8]) -> Cow<'_, [u8]> {
    unescaped_if(raw, true)
}

/// [`unescaped`], told whether the literal may hold an escape at all.
fn unescaped_if(raw: &[u8], may_escape: bool) -> Cow<'_, [u8]> {
    let inner = &raw[1..raw.len() - 1];
    if !may_escape || memchr::memchr(b'\\', inner).is_none() {
        return Cow::Borrowed(inner);
    }
    match serde_json::from_slice::<String>(raw) {
        Ok(s) => Cow::Owned(s.into_bytes()),
        Err(_) => Cow::Borrowed(inner),
    }
}

fn string_value(raw: &[u8], may_escape: bool) -> Option<Cow<'_, [u8]>> {
    raw.starts_with(b"\"").then(|| unescaped_if(raw, may_escape))
}

fn stream_kind(name: &[u8]) -> Option<StreamKind> {
    StreamKind::ALL.into_iter().find(|k| k.as_str().as_bytes() == name)
}

/// A JSON integer literal (no fraction, no exponent) that fits in i64.
fn integer(raw: &[u8]) -> Option<i64> {
    let (negative, digits) = match raw.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, raw),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    // 19 digits fit in u64 (10^19 - 1 < 2^64), so only the sign's range is checked.
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (d - b'0') as u64;
    }
    if negative {
        0i64.checked_sub_unsigned(v)
    } else {
        i64::try_from(v).ok()
    }
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
        assert_eq!(
            (e.stream, e.ts, e.pv_id, e.user_id),
            (StreamKind::Exposure, 5, &b"\"p\""[..], Some(&b"\"u\""[..]))
        );
        let c = p(r#"{"stream":"click","pv_id":"p","item_id":"i","ts":-7}"#).unwrap();
        assert_eq!((c.stream, c.ts, c.key), (StreamKind::Click, -7, e.key));
        let f =
            p(r#" {"ts":1,"features":{ "a": 1 },"item_id":"i","pv_id":"p","stream":"feature"} "#).unwrap();
        assert_eq!(f.features, Some(&br#"{ "a": 1 }"#[..]));
        let d = p(r#"{"stream":"detail_click","pv_id":"p","item_id":"i","ts":0,"user_id":3}"#).unwrap();
        assert_eq!((d.stream, d.user_id), (StreamKind::DetailClick, None));
    }

    /// What a reader thread hands over is the same event once attached to its line,
    /// and only its own line's slices can be detached.
    #[test]
    fn a_detached_event_attaches_to_its_line_unchanged() {
        let lines = [
            r#"{"stream":"exposure","pv_id":"p\u0031","item_id":"i","user_id":"u","ts":5}"#,
            r#"{"stream":"feature","pv_id":"p","item_id":"i","ts":1,"features":{"a":1}}"#,
            r#"{"stream":"click","pv_id":"p","item_id":"i","ts":-7,"user_id":"u"}"#,
        ];
        for line in lines {
            let e = p(line).expect("well formed");
            let d = e.detach(line.as_bytes()).expect("fields are slices of the line");
            let copy = line.as_bytes().to_vec();
            assert_eq!(format!("{:?}", d.attach(&copy)), format!("{e:?}"), "{line}");
            assert_eq!(d.ts(), e.ts);
        }
        let other = lines[1].as_bytes().to_vec();
        assert!(p(lines[0]).expect("well formed").detach(&other).is_none(), "not a slice of that line");
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

    #[test]
    fn ts_is_any_i64_and_nothing_else() {
        for (raw, want) in [
            ("0", Some(0)),
            ("-0", Some(0)),
            ("1767225600000", Some(1_767_225_600_000)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("9999999999999999999", None),
            ("00000000000000000001", None),
            ("-9223372036854775809", None),
            ("-", None),
            ("", None),
            ("+1", None),
            ("1.0", None),
        ] {
            assert_eq!(integer(raw.as_bytes()), want, "{raw}");
        }
    }
}
