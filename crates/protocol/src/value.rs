//! [`Value`], what an event carries, and how an MQTT payload becomes one
//! ([`parse`], exactly as `docs/PROTOCOL.md` defines it).
//!
//! ```
//! use edgepush_protocol::value::{parse, Value};
//!
//! assert_eq!(parse(b" 21.5 "), Value::Number(21.5));
//! assert_eq!(parse(br#"{"v": 230, "a": 1.5}"#), Value::Fields(vec![("v".into(), 230.0), ("a".into(), 1.5)]));
//! assert_eq!(parse(b"open"), Value::Text("open".into()));
//! assert_eq!(parse(&[0xff]), Value::Bytes(vec![0xff]));
//! ```

use serde::{Deserialize, Serialize};

/// The payload of an MQTT message as the gateway understood it. The variant
/// order is the wire discriminant: never reorder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// A finite number (JSON number syntax, or Rust's `f64` syntax).
    Number(f64),
    /// A flat JSON object whose every value is a finite number, in payload order.
    Fields(Vec<(String, f64)>),
    /// Any other UTF-8 payload, untrimmed.
    Text(String),
    /// A payload that is not UTF-8.
    Bytes(Vec<u8>),
}

/// The most fields a payload may have to become [`Value::Fields`].
pub const MAX_FIELDS: usize = 64;

/// JSON whitespace: the only whitespace trimmed or skipped in a payload.
fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim_json_ws(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && is_json_ws(c as u8))
}

/// Classifies an MQTT payload.
pub fn parse(payload: &[u8]) -> Value {
    let Ok(text) = std::str::from_utf8(payload) else {
        return Value::Bytes(payload.to_vec());
    };
    let trimmed = trim_json_ws(text);
    if let Some(n) = parse_number(trimmed) {
        return Value::Number(n);
    }
    if trimmed.starts_with('{') {
        if let Some(fields) = parse_flat_object(trimmed) {
            return Value::Fields(fields);
        }
    }
    Value::Text(text.to_owned())
}

/// A finite number in JSON or `f64::from_str` syntax. `inf` and `NaN` spelled
/// out parse to non-finite values and are refused with them.
fn parse_number(s: &str) -> Option<f64> {
    // Cheap first check: every accepted spelling starts with a sign, digit or dot.
    let first = *s.as_bytes().first()?;
    if !(first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.')) {
        return None;
    }
    s.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// A flat JSON object of numbers and booleans, or None.
fn parse_flat_object(s: &str) -> Option<Vec<(String, f64)>> {
    let mut p = JsonCursor { b: s.as_bytes(), i: 0 };
    p.expect(b'{')?;
    let mut fields: Vec<(String, f64)> = Vec::new();
    p.skip_ws();
    if p.eat(b'}') {
        return p.at_end().then_some(fields);
    }
    loop {
        p.skip_ws();
        let key = p.string()?;
        p.skip_ws();
        p.expect(b':')?;
        p.skip_ws();
        let v = p.scalar()?;
        if fields.len() == MAX_FIELDS || fields.iter().any(|(k, _)| *k == key) {
            return None;
        }
        fields.push((key, v));
        p.skip_ws();
        if p.eat(b',') {
            continue;
        }
        p.expect(b'}')?;
        return p.at_end().then_some(fields);
    }
}

struct JsonCursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl JsonCursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.i += hit as usize;
        hit
    }
    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_json_ws) {
            self.i += 1;
        }
    }
    fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.i == self.b.len()
    }

    /// A JSON number, true (1) or false (0). A number that overflows is refused.
    fn scalar(&mut self) -> Option<f64> {
        if self.b[self.i..].starts_with(b"true") {
            self.i += 4;
            return Some(1.0);
        }
        if self.b[self.i..].starts_with(b"false") {
            self.i += 5;
            return Some(0.0);
        }
        let start = self.i;
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.') {
            self.digits1()?;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            self.digits1()?;
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        text.parse::<f64>().ok().filter(|n| n.is_finite())
    }
    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }
    fn digits1(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    /// A JSON string, unescaped.
    fn string(&mut self) -> Option<String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            let start = self.i;
            while self.peek().is_some_and(|c| c != b'"' && c != b'\\' && c >= 0x20) {
                self.i += 1;
            }
            // The input is a &str and we stopped at ASCII, so this slice is UTF-8.
            out.push_str(std::str::from_utf8(&self.b[start..self.i]).ok()?);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(out);
                }
                b'\\' => {
                    self.i += 1;
                    let c = match self.peek()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            self.i += 1;
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                self.expect(b'\\')?;
                                self.expect(b'u')?;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                            } else {
                                char::from_u32(hi)?
                            };
                            out.push(c);
                            continue;
                        }
                        _ => return None,
                    };
                    self.i += 1;
                    out.push(c);
                }
                _ => return None, // control character
            }
        }
    }
    fn hex4(&mut self) -> Option<u32> {
        let h = self.b.get(self.i..self.i + 4)?;
        let s = std::str::from_utf8(h).ok()?;
        if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        self.i += 4;
        u32::from_str_radix(s, 16).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: &[(&str, f64)]) -> Value {
        Value::Fields(v.iter().map(|(k, x)| (k.to_string(), *x)).collect())
    }

    #[test]
    fn numbers_in_json_and_rust_syntax() {
        for (p, n) in [
            ("21.5", 21.5),
            ("-3", -3.0),
            ("1e3", 1000.0),
            ("+1", 1.0),
            (".5", 0.5),
            (" \t42\r\n", 42.0),
            ("5.", 5.0),
            ("-0", -0.0),
        ] {
            assert_eq!(parse(p.as_bytes()), Value::Number(n), "{p}");
        }
        assert!(matches!(parse(b"-0"), Value::Number(z) if z.is_sign_negative()));
    }

    #[test]
    fn non_numbers_stay_text() {
        for p in ["inf", "NaN", "-inf", "infinity", "1e999", "", "ON", "1 2", "0x10", "1_000", "\u{a0}1"] {
            assert_eq!(parse(p.as_bytes()), Value::Text(p.to_string()), "{p:?}");
        }
        // Only JSON whitespace is trimmed; the text keeps what it had.
        assert_eq!(parse(b" on "), Value::Text(" on ".into()));
        assert_eq!(parse(b"\x0b1"), Value::Text("\x0b1".into()));
    }

    #[test]
    fn flat_objects_become_fields_in_order() {
        assert_eq!(parse(br#"{"t":21.5,"h":40}"#), fields(&[("t", 21.5), ("h", 40.0)]));
        assert_eq!(parse(b"{}"), Value::Fields(vec![]));
        assert_eq!(parse(b" { } "), Value::Fields(vec![]));
        assert_eq!(
            parse(br#" { "on" : true , "off":false, "e":-1.5E2 } "#),
            fields(&[("on", 1.0), ("off", 0.0), ("e", -150.0)])
        );
        assert_eq!(parse(br#"{"a\u00e9\n":1}"#), fields(&[("a\u{e9}\n", 1.0)]));
        assert_eq!(parse(br#"{"\ud83d\ude00":1}"#), fields(&[("\u{1F600}", 1.0)]));
        // Large integers round as f64::from_str does.
        assert_eq!(parse(br#"{"ns":1700000000123456789}"#), fields(&[("ns", 1_700_000_000_123_456_789f64)]));
    }

    #[test]
    fn other_json_is_text() {
        for p in [
            r#"{"a":"x"}"#,
            r#"{"a":null}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a":[1]}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"a":1e999}"#,
            r#"{"a":01}"#,
            r#"{"a":.5}"#,
            r#"{"a":+1}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"{"a":NaN}"#,
            r#"{a:1}"#,
            "{\"a\nb\":1}",
            r#"{"\ud800":1}"#,
            "[1,2]",
        ] {
            assert_eq!(parse(p.as_bytes()), Value::Text(p.to_string()), "{p}");
        }
    }

    #[test]
    fn field_count_is_capped_at_64() {
        let obj = |n: usize| {
            let body: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            format!("{{{}}}", body.join(","))
        };
        assert!(matches!(parse(obj(64).as_bytes()), Value::Fields(f) if f.len() == 64));
        assert!(matches!(parse(obj(65).as_bytes()), Value::Text(_)));
    }

    #[test]
    fn non_utf8_is_bytes() {
        assert_eq!(parse(&[0xff, 0x00]), Value::Bytes(vec![0xff, 0x00]));
    }
}
