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

pub(super) fn fields(line: &[u8]) -> Option<RawFields<'_>> {
    let text = std::str::from_utf8(line).ok()?;
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
            let key_end = string(b, key_start)?;
            // Only plain keys: an escape could spell a known field name.
            let key = &b[key_start..key_end - 1];
            if key.contains(&b'\\') {
                return None;
            }
            i = ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = ws(b, i + 1);
            let start = i;
            i = value(b, i, 1)?;
            let slot = match key {
                b"stream" => Some((1, &mut f.stream)),
                b"pv_id" => Some((2, &mut f.pv_id)),
                b"item_id" => Some((4, &mut f.item_id)),
                b"user_id" => Some((8, &mut f.user_id)),
                b"ts" => Some((16, &mut f.ts)),
                b"features" => Some((32, &mut f.features)),
                _ => None,
            };
            if let Some((bit, slot)) = slot {
                if seen & bit != 0 {
                    // serde_json: "duplicate field".
                    return None;
                }
                seen |= bit;
                let raw = text.get(start..i)?;
                *slot = (raw != "null").then_some(raw);
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
    (ws(b, i) == b.len()).then_some(f)
}

/// Skips JSON whitespace (the four characters JSON allows).
#[inline]
fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(i) {
        i += 1;
    }
    i
}

/// Bytes that end a plain run inside a string: `"`, `\\` and control characters.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The end (one past the closing quote) of the string whose body starts at `i`.
#[inline]
fn string(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        while b.get(i).is_some_and(|&c| !SPECIAL[c as usize]) {
            i += 1;
        }
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                _ => return None,
            },
            0..=0x1F => return None,
            _ => i += 1,
        }
    }
}

/// The end of the value starting at `i` (no whitespace before it).
fn value(b: &[u8], i: usize, depth: u32) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string(b, i + 1),
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
                i = ws(b, string(b, i + 1)?);
                if b.get(i) != Some(&b':') {
                    return None;
                }
                i = ws(b, i + 1);
                i = ws(b, value(b, i, depth + 1)?);
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
                i = ws(b, value(b, i, depth + 1)?);
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

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

/// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
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

    fn g(r: Option<&RawValue>) -> Option<&str> {
        r.map(RawValue::get)
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
        true
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
