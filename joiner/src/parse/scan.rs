//! The fast path of the parser: one pass over the line that validates the JSON and
//! records the raw text of the known top-level fields, building nothing.
//!
//! It returns `None` whenever it is not certain that serde_json would accept the line
//! and read the same fields; the caller then runs serde_json, which decides (and names
//! the error). So the scanner may be stricter than serde_json (invalid UTF-8 anywhere,
//! `\u` escapes, escaped keys, repeated known keys, deep nesting all go the slow way)
//! but never looser, and where it accepts, each span is what serde's `RawValue` holds:
//! the value's text without the whitespace around it (`null` reads as absent).

use super::RawFields;

/// Nesting beyond this goes to serde_json (whose own limit is 128).
const MAX_DEPTH: u32 = 100;

/// The bits of [`RawFields::escaped`], one per known field.
pub(super) const STREAM: u8 = 1;
pub(super) const PV_ID: u8 = 2;
pub(super) const ITEM_ID: u8 = 4;
pub(super) const USER_ID: u8 = 8;
const TS: u8 = 16;
const FEATURES: u8 = 32;

pub(super) fn fields(line: &[u8]) -> Option<RawFields<'_>> {
    let mut s = Scan { b: line, non_ascii: false };
    let b = line;
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut f = RawFields::default();
    let mut seen = 0u8;
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let key_start = i + 1;
            let (key_end, key_escaped) = s.string(key_start)?;
            // Only plain keys: an escape could spell a known field name.
            if key_escaped {
                return None;
            }
            let key = &b[key_start..key_end - 1];
            i = ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = ws(b, i + 1);
            let start = i;
            let escaped;
            (i, escaped) = match b.get(i) {
                Some(b'"') => s.string(i + 1)?,
                _ => (s.member(i, 1)?, false),
            };
            let slot = match key {
                b"stream" => Some((STREAM, &mut f.stream)),
                b"pv_id" => Some((PV_ID, &mut f.pv_id)),
                b"item_id" => Some((ITEM_ID, &mut f.item_id)),
                b"user_id" => Some((USER_ID, &mut f.user_id)),
                b"ts" => Some((TS, &mut f.ts)),
                b"features" => Some((FEATURES, &mut f.features)),
                _ => None,
            };
            if let Some((bit, slot)) = slot {
                if seen & bit != 0 {
                    // serde_json: "duplicate field".
                    return None;
                }
                seen |= bit;
                let raw = &b[start..i];
                *slot = (raw != b"null").then_some(raw);
                if escaped {
                    f.escaped |= bit;
                }
            }
            i = ws(b, i);
            match b.get(i) {
                Some(b',') => i = ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    if ws(b, i) != b.len() {
        return None;
    }
    // Outside strings only ASCII passed the grammar; inside them, bytes above 0x7F were
    // only noted: a line with any must be valid UTF-8 as a whole, as serde requires.
    if s.non_ascii && std::str::from_utf8(line).is_err() {
        return None;
    }
    Some(f)
}

/// Skips JSON whitespace (the four characters JSON allows).
#[inline(always)]
fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(i) {
        i += 1;
    }
    i
}

/// Bytes that end a plain run inside a string: `"`, `\\`, control characters, and
/// (to be noted for the UTF-8 check) bytes above 0x7F.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = c < 0x20 || c >= 0x80 || c == b'"' as usize || c == b'\\' as usize;
        c += 1;
    }
    t
};

const ONES: u64 = u64::from_le_bytes([1; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// A mask whose lowest set bit (if any) is the high bit of the first byte of `x`
/// (little-endian) that is special (see [`SPECIAL`]). Bits above it may be spurious
/// (borrows), so only the lowest one is read.
#[inline]
fn special_mask(x: u64) -> u64 {
    let quote = x ^ (ONES * b'"' as u64);
    let backslash = x ^ (ONES * b'\\' as u64);
    let is_quote = quote.wrapping_sub(ONES) & !quote;
    let is_backslash = backslash.wrapping_sub(ONES) & !backslash;
    // Below 0x20: the subtraction borrows into the high bit; 0x80 and above: set already.
    let is_control_or_high = x.wrapping_sub(ONES * 0x20) | x;
    (is_quote | is_backslash | is_control_or_high) & HIGHS
}

/// The scanner's state: the line, and whether a string held a byte above 0x7F.
struct Scan<'a> {
    b: &'a [u8],
    non_ascii: bool,
}

impl Scan<'_> {
    /// The end (one past the closing quote) of the string whose body starts at `i`, and
    /// whether it holds an escape. Plain runs are skipped eight bytes at a time.
    #[inline(always)]
    fn string(&mut self, mut i: usize) -> Option<(usize, bool)> {
        let b = self.b;
        let mut escaped = false;
        loop {
            match b.get(i..).and_then(<[u8]>::first_chunk::<8>) {
                Some(chunk) => {
                    let m = special_mask(u64::from_le_bytes(*chunk));
                    if m == 0 {
                        i += 8;
                        continue;
                    }
                    i += (m.trailing_zeros() / 8) as usize;
                }
                None => {
                    while b.get(i).is_some_and(|&c| !SPECIAL[c as usize]) {
                        i += 1;
                    }
                }
            }
            match *b.get(i)? {
                b'"' => return Some((i + 1, escaped)),
                b'\\' => match *b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                        escaped = true;
                        i += 2;
                    }
                    _ => return None,
                },
                0..=0x1F => return None,
                _ => {
                    self.non_ascii = true;
                    i += 1;
                }
            }
        }
    }

    /// [`Scan::value`] with the common scalars (strings, numbers) handled in line
    /// rather than by a call.
    #[inline(always)]
    fn member(&mut self, i: usize, depth: u32) -> Option<usize> {
        match *self.b.get(i)? {
            b'"' => Some(self.string(i + 1)?.0),
            b'-' | b'0'..=b'9' => number(self.b, i),
            _ => self.value(i, depth),
        }
    }

    /// The end of the value starting at `i` (no whitespace before it).
    #[inline(never)]
    fn value(&mut self, i: usize, depth: u32) -> Option<usize> {
        let b = self.b;
        match *b.get(i)? {
            b'"' => Some(self.string(i + 1)?.0),
            b'{' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                let mut i = ws(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    return Some(i + 1);
                }
                loop {
                    if b.get(i) != Some(&b'"') {
                        return None;
                    }
                    i = ws(b, self.string(i + 1)?.0);
                    if b.get(i) != Some(&b':') {
                        return None;
                    }
                    i = ws(b, i + 1);
                    i = ws(b, self.member(i, depth + 1)?);
                    match b.get(i) {
                        Some(b',') => i = ws(b, i + 1),
                        Some(b'}') => return Some(i + 1),
                        _ => return None,
                    }
                }
            }
            b'[' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                let mut i = ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    return Some(i + 1);
                }
                loop {
                    i = ws(b, self.member(i, depth + 1)?);
                    match b.get(i) {
                        Some(b',') => i = ws(b, i + 1),
                        Some(b']') => return Some(i + 1),
                        _ => return None,
                    }
                }
            }
            b't' => literal(b, i, b"true"),
            b'f' => literal(b, i, b"false"),
            b'n' => literal(b, i, b"null"),
            b'-' | b'0'..=b'9' => number(b, i),
            _ => None,
        }
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

/// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
#[inline(always)]
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    let digit = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => {
            i += 1;
            if digit(i) {
                return None;
            }
        }
        b'1'..=b'9' => {
            i += 1;
            while digit(i) {
                i += 1;
            }
        }
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digit(i) {
            return None;
        }
        while digit(i) {
            i += 1;
        }
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        if !digit(i) {
            return None;
        }
        while digit(i) {
            i += 1;
        }
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::super::Fields;
    use super::*;
    use serde_json::value::RawValue;

    fn g(r: Option<&RawValue>) -> Option<&[u8]> {
        r.map(|r| r.get().as_bytes())
    }

    /// Where the scanner accepts, serde_json accepts too and reads the same fields.
    fn agrees(line: &str) -> bool {
        let Some(f) = fields(line.as_bytes()) else {
            return false;
        };
        let s: Fields<'_> = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: serde says {e}"));
        assert_eq!(
            (f.stream, f.pv_id, f.item_id, f.user_id, f.ts, f.features),
            (g(s.stream), g(s.pv_id), g(s.item_id), g(s.user_id), g(s.ts), g(s.features)),
            "{line}"
        );
        // The escape bits: set exactly for the known string fields holding a backslash.
        for (bit, raw) in [(STREAM, f.stream), (PV_ID, f.pv_id), (ITEM_ID, f.item_id), (USER_ID, f.user_id)] {
            let has = raw.is_some_and(|r| r.starts_with(b"\"") && r.contains(&b'\\'));
            assert_eq!(f.escaped & bit != 0, has, "{line}");
        }
        true
    }

    /// The eight-byte skip finds the first special byte wherever it sits in the word,
    /// whatever precedes it (borrows of the SWAR arithmetic must not mislead it).
    #[test]
    fn plain_runs_end_at_the_first_special_byte_in_every_position() {
        let fillers: [u8; 6] = [b'a', b' ', 0x7F, b'!', b'#', b'~'];
        let specials: [u8; 5] = [b'"', b'\\', 0x00, 0x1F, 0xC3];
        for len in 0..24 {
            for &fill in &fillers {
                for &sp in &specials {
                    let mut body = vec![fill; len];
                    body.push(sp);
                    body.extend_from_slice(b"n\"zzzzzzzzzzzzzzzz");
                    let mut s = Scan { b: &body, non_ascii: false };
                    let got = s.string(0);
                    match sp {
                        b'"' => assert_eq!(got, Some((len + 1, false)), "{len} {fill} {sp}"),
                        0xC3 => {
                            assert_eq!(got, Some((len + 3, false)), "{len} {fill} {sp}");
                            assert!(s.non_ascii);
                        }
                        b'\\' => assert_eq!(got, Some((len + 3, true)), "{len} {fill} {sp}"),
                        _ => assert_eq!(got, None, "{len} {fill} {sp}"),
                    }
                }
            }
        }
    }

    #[test]
    fn non_ascii_strings_need_valid_utf8() {
        assert!(agrees("{\"pv_id\":\"caf\u{e9}\",\"features\":{\"\u{4e2d}\":\"\u{1f600}\"}}"));
        assert!(fields(b"{\"pv_id\":\"caf\xe9\"}").is_none());
        assert!(fields(b"{\"a\":{\"b\":\"\xed\xa0\x80\"}}").is_none(), "a surrogate is not UTF-8");
    }

    #[test]
    fn accepts_common_lines_with_serde_spans() {
        for line in [
            r#"{"stream":"feature","pv_id":"p","item_id":"i","ts":1,"features":{"a":"x","b":[1,2.5e-3,-0.5],"c":{}}}"#,
            r#" { "stream" : "exposure" , "pv_id":"p\"q","item_id":"i","user_id":"u","ts":-7,"ctx":{"k":[true,false,null]} } "#,
            r#"{"stream":"click","pv_id":null,"item_id":"i","ts":1,"other":[[],{},"\\\/\b\f\n\r\t"]}"#,
            r#"{}"#,
            r#"{"x":1,"x":2,"ts":0}"#,
        ] {
            assert!(agrees(line), "{line}");
        }
    }

    #[test]
    fn leaves_doubtful_lines_to_serde() {
        for line in [
            "{not json",
            r#"{"ts":1} trailing"#,
            r#"{"ts":1,}"#,
            r#"{"ts":01}"#,
            r#"{"ts":1.}"#,
            r#"{"ts":1e}"#,
            r#"{"ts":-}"#,
            r#"{"ts":1,"ts":2}"#,
            r#"{"ts":null,"ts":2}"#,
            r#"{"t\u0073":1}"#,
            r#"{"pv_id":"\u0070"}"#,
            r#"{"a":"\x"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":tru}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a" 1}"#,
            "[1]",
            "\x0c{}",
        ] {
            assert!(!agrees(line), "{line}");
        }
        assert!(fields(b"{\"a\":\"\xff\"}").is_none());
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(!agrees(&deep));
    }
}
