//! The syntax error Go's `encoding/json` decoder reports for a body, as etcd's gateway answers
//! it: `invalid character 'x' looking for beginning of value`, `unexpected EOF`, … Only the
//! first JSON value counts (a decoder reads one value; what follows it is never looked at).
//!
//! The scan is iterative, with an explicit stack of open containers, so a deeply nested body
//! costs heap (bounded by the body's size), not stack.

/// The containers a value can be inside.
enum Open {
    Object,
    Array,
}

/// Why the scan stopped.
enum Stop {
    /// The input ended inside the value.
    Eof,
    /// An invalid byte, and what the scanner was doing when it met it.
    Invalid(u8, &'static str),
    /// An invalid byte within a literal, and the byte the literal needed there.
    Literal(u8, &'static str, u8),
}

/// Scans the first value of `input` as Go's decoder does: `Ok` with the length of the input up
/// to the value's end (0 if there is no value, only whitespace), or Go's message for the error.
pub(crate) fn go_scan(input: &[u8]) -> Result<usize, String> {
    Scanner { input, at: 0 }.first_value().map_err(|stop| match stop {
        Stop::Eof => "unexpected EOF".to_string(),
        Stop::Invalid(c, context) => format!("invalid character {} {context}", quote_char(c)),
        Stop::Literal(c, literal, want) => format!(
            "invalid character {} in literal {literal} (expecting {})",
            quote_char(c),
            quote_char(want)
        ),
    })
}

struct Scanner<'a> {
    input: &'a [u8],
    /// Invariant: `at <= input.len()`.
    at: usize,
}

impl Scanner<'_> {
    fn first_value(mut self) -> Result<usize, Stop> {
        self.skip_space();
        if self.at == self.input.len() {
            return Ok(0);
        }
        self.value()?;
        Ok(self.at)
    }

    /// One whole value, containers included.
    fn value(&mut self) -> Result<(), Stop> {
        let mut open: Vec<Open> = Vec::new();
        loop {
            // A value begins here.
            let c = self.next_non_space()?;
            self.at += 1;
            match c {
                b'{' => {
                    if self.next_non_space()? == b'}' {
                        self.at += 1;
                    } else {
                        open.push(Open::Object);
                        self.key()?;
                        continue;
                    }
                }
                b'[' => {
                    if self.next_non_space()? == b']' {
                        self.at += 1;
                    } else {
                        open.push(Open::Array);
                        continue;
                    }
                }
                b'"' => self.string()?,
                b'-' | b'0'..=b'9' => {
                    self.at -= 1;
                    self.number()?;
                }
                b't' => self.literal("true")?,
                b'f' => self.literal("false")?,
                b'n' => self.literal("null")?,
                c => return Err(Stop::Invalid(c, "looking for beginning of value")),
            }
            // The value ended: close containers until one expects another element.
            loop {
                let Some(top) = open.last() else { return Ok(()) };
                let c = self.next_non_space()?;
                self.at += 1;
                match (top, c) {
                    (Open::Object, b',') => {
                        self.key()?;
                        break;
                    }
                    (Open::Array, b',') => break,
                    (Open::Object, b'}') | (Open::Array, b']') => {
                        open.pop();
                    }
                    (Open::Object, c) => return Err(Stop::Invalid(c, "after object key:value pair")),
                    (Open::Array, c) => return Err(Stop::Invalid(c, "after array element")),
                }
            }
        }
    }

    /// An object's key and its colon.
    fn key(&mut self) -> Result<(), Stop> {
        match self.next_non_space()? {
            b'"' => self.at += 1,
            c => return Err(Stop::Invalid(c, "looking for beginning of object key string")),
        }
        self.string()?;
        match self.next_non_space()? {
            b':' => {
                self.at += 1;
                Ok(())
            }
            c => Err(Stop::Invalid(c, "after object key")),
        }
    }

    /// The rest of a string after its opening quote.
    fn string(&mut self) -> Result<(), Stop> {
        loop {
            match self.take()? {
                b'"' => return Ok(()),
                b'\\' => match self.take()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        for _ in 0..4 {
                            let c = self.take()?;
                            if !c.is_ascii_hexdigit() {
                                return Err(Stop::Invalid(c, "in \\u hexadecimal character escape"));
                            }
                        }
                    }
                    c => return Err(Stop::Invalid(c, "in string escape code")),
                },
                c if c < 0x20 => return Err(Stop::Invalid(c, "in string literal")),
                _ => {}
            }
        }
    }

    /// A number; it ends at the first byte that cannot continue it (or at the end of input).
    fn number(&mut self) -> Result<(), Stop> {
        if self.peek() == Some(b'-') {
            self.at += 1;
            match self.take()? {
                b'0'..=b'9' => self.at -= 1,
                c => return Err(Stop::Invalid(c, "in numeric literal")),
            }
        }
        // A leading zero stands alone; other digits run on.
        if self.take()? != b'0' {
            self.digits();
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            match self.take()? {
                b'0'..=b'9' => self.digits(),
                c => return Err(Stop::Invalid(c, "after decimal point in numeric literal")),
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            let mut c = self.take()?;
            if c == b'+' || c == b'-' {
                c = self.take()?;
            }
            if !c.is_ascii_digit() {
                return Err(Stop::Invalid(c, "in exponent of numeric literal"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
    }

    /// The rest of a literal after its first letter.
    fn literal(&mut self, word: &'static str) -> Result<(), Stop> {
        for &want in &word.as_bytes()[1..] {
            let c = self.take()?;
            if c != want {
                return Err(Stop::Literal(c, word, want));
            }
        }
        Ok(())
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn take(&mut self) -> Result<u8, Stop> {
        let c = self.peek().ok_or(Stop::Eof)?;
        self.at += 1;
        Ok(c)
    }

    /// The next byte that is not JSON whitespace, not consumed.
    fn next_non_space(&mut self) -> Result<u8, Stop> {
        self.skip_space();
        self.peek().ok_or(Stop::Eof)
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.at += 1;
        }
    }
}

/// A byte as Go's JSON errors quote it: the character (the byte taken as a code point) in
/// single quotes, escaped as Go's `strconv.Quote` escapes what is not printable.
pub(crate) fn quote_char(c: u8) -> String {
    match c {
        b'\'' => "'\\''".to_string(),
        b'"' => "'\"'".to_string(),
        0x07 => "'\\a'".to_string(),
        0x08 => "'\\b'".to_string(),
        0x0c => "'\\f'".to_string(),
        b'\n' => "'\\n'".to_string(),
        b'\r' => "'\\r'".to_string(),
        b'\t' => "'\\t'".to_string(),
        0x0b => "'\\v'".to_string(),
        b'\\' => "'\\\\'".to_string(),
        0x00..=0x1f | 0x7f => format!("'\\x{c:02x}'"),
        0x80..=0xa0 | 0xad => format!("'\\u{c:04x}'"),
        c => format!("'{}'", char::from(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::go_scan;

    #[test]
    fn values_end_where_gos_do() {
        let cases: &[(&str, usize)] = &[
            ("", 0),
            (" \n", 0),
            ("  {} trailing", 4),
            ("truex", 4),
            ("12x", 2),
            ("-0.5e3]", 6),
            ("[1]2", 3),
        ];
        for (input, end) in cases {
            assert_eq!(go_scan(input.as_bytes()), Ok(*end), "{input:?}");
        }
        assert_eq!(go_scan(r#"{"a":[1,-2.5e+3,true,null,"x\u00e9"]}"#.as_bytes()), Ok(37));
    }

    #[test]
    fn messages_are_gos() {
        let cases: &[(&str, &str)] = &[
            ("nonsense", "invalid character 'o' in literal null (expecting 'u')"),
            ("xx", "invalid character 'x' looking for beginning of value"),
            (r#"{"key":tru}"#, "invalid character '}' in literal true (expecting 'e')"),
            (r#"{"key":"YQ==",}"#, "invalid character '}' looking for beginning of object key string"),
            (r#"{"key" 1}"#, "invalid character '1' after object key"),
            (r#"{"a":1 "b":2}"#, "invalid character '\"' after object key:value pair"),
            ("[1 2]", "invalid character '2' after array element"),
            ("[01]", "invalid character '1' after array element"),
            (r#"{"a":-x}"#, "invalid character 'x' in numeric literal"),
            ("[1.]", "invalid character ']' after decimal point in numeric literal"),
            ("[1e+]", "invalid character ']' in exponent of numeric literal"),
            ("\"a\\q\"", "invalid character 'q' in string escape code"),
            ("\"\\u12g4\"", "invalid character 'g' in \\u hexadecimal character escape"),
            ("\"a\nb\"", "invalid character '\\n' in string literal"),
            ("{'a':1}", "invalid character '\\'' looking for beginning of object key string"),
            (r#"{"key":"#, "unexpected EOF"),
            ("[[[", "unexpected EOF"),
            ("-", "unexpected EOF"),
        ];
        for (input, want) in cases {
            assert_eq!(go_scan(input.as_bytes()), Err(want.to_string()), "{input:?}");
        }
    }
}
