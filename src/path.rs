//! Pure: the one spelling of a request path that the route table and every common upstream stack
//! read alike.
//!
//! Routes match the raw path, so a path that some upstream reads as another path could reach a
//! resource under a route not meant for it. Rather than guess how the upstream decodes, such paths
//! are refused (fail closed). The rule, segment by segment:
//! - the path starts with `/` and has no empty segment (`//`) but a trailing one;
//! - no segment is `.` or `..`;
//! - no `;` at all, raw or `%3B`: servlet containers drop `;params` from each segment, so
//!   `..;` is `..` and `customers;x` is `customers` there;
//! - no backslash, raw or `%5C`: IIS and Windows stacks read it as `/`;
//! - no control character (NUL, CR, LF, ...), raw or encoded, and no raw `#`;
//! - every `%` starts a two-digit hex escape, and the escape is not one of: an unreserved
//!   character (`%63`, `%2e`: the plain spelling is the one to use), `/`, `#`, or a second level
//!   of encoding (`%25` followed by two hex digits, which double-decoding stacks turn into a
//!   character).

/// Why a path is refused; the short text goes in the 400 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathFlaw {
    NotAbsolute,
    EmptySegment,
    DotSegment,
    Semicolon,
    Backslash,
    Control,
    Fragment,
    BadEscape,
    EncodedUnreserved,
    EncodedDelimiter,
    DoubleEncoded,
}

impl PathFlaw {
    pub fn description(self) -> &'static str {
        match self {
            PathFlaw::NotAbsolute => "path does not start with '/'",
            PathFlaw::EmptySegment => "path has an empty segment ('//')",
            PathFlaw::DotSegment => "path has a '.' or '..' segment",
            PathFlaw::Semicolon => "path has a ';' (path parameters are not accepted)",
            PathFlaw::Backslash => "path has a backslash",
            PathFlaw::Control => "path has a control character",
            PathFlaw::Fragment => "path has a '#'",
            PathFlaw::BadEscape => "path has a '%' that is not a two-digit hex escape",
            PathFlaw::EncodedUnreserved => "path has an encoded letter, digit or one of '-._~'",
            PathFlaw::EncodedDelimiter => "path has an encoded '/' or '#'",
            PathFlaw::DoubleEncoded => "path has a double-encoded escape ('%25' and two hex digits)",
        }
    }
}

/// `Ok` when `path` is in normal form (module docs); else the first flaw found.
pub fn check(path: &str) -> Result<(), PathFlaw> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathFlaw::NotAbsolute);
    }
    let mut seg_start = 1;
    let mut i = 1;
    while i <= b.len() {
        let c = b.get(i).copied();
        match c {
            None | Some(b'/') => {
                let seg = &b[seg_start..i];
                if seg == b"." || seg == b".." {
                    return Err(PathFlaw::DotSegment);
                }
                // Only the last segment may be empty (a trailing slash).
                if seg.is_empty() && c.is_some() {
                    return Err(PathFlaw::EmptySegment);
                }
                seg_start = i + 1;
            }
            Some(b';') => return Err(PathFlaw::Semicolon),
            Some(b'\\') => return Err(PathFlaw::Backslash),
            Some(b'#') => return Err(PathFlaw::Fragment),
            Some(c) if c.is_ascii_control() => return Err(PathFlaw::Control),
            Some(b'%') => {
                let byte = escape_at(b, i).ok_or(PathFlaw::BadEscape)?;
                refuse_escaped(byte, b, i)?;
                i += 2;
            }
            Some(_) => {}
        }
        i += 1;
    }
    Ok(())
}

/// The byte `%XX` at `b[i..]` stands for, when `XX` is two hex digits.
pub(crate) fn escape_at(b: &[u8], i: usize) -> Option<u8> {
    hex_pair(*b.get(i + 1)?, *b.get(i + 2)?)
}

/// The byte two hex digits stand for; nothing else reads as one (`from_str_radix` takes a sign).
pub(crate) fn hex_pair(high: u8, low: u8) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    Some((digit(high)? * 16 + digit(low)?) as u8)
}

fn refuse_escaped(byte: u8, b: &[u8], i: usize) -> Result<(), PathFlaw> {
    match byte {
        b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => Err(PathFlaw::EncodedUnreserved),
        b'/' | b'#' => Err(PathFlaw::EncodedDelimiter),
        b'\\' => Err(PathFlaw::Backslash),
        b';' => Err(PathFlaw::Semicolon),
        b if b.is_ascii_control() => Err(PathFlaw::Control),
        b'%' if escape_at(b, i + 2).is_some() => Err(PathFlaw::DoubleEncoded),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted() {
        for p in ["/", "/v1/customers/abc", "/v1/customers/", "/v1/a%20b", "/v1/%3A", "/a.b/c..d", "/...", "/100%25"] {
            assert_eq!(check(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn each_spelling_is_refused_with_its_reason() {
        use PathFlaw::*;
        for (p, flaw) in [
            ("", NotAbsolute),
            ("v1", NotAbsolute),
            ("*", NotAbsolute),
            ("/v1//x", EmptySegment),
            ("//v1", EmptySegment),
            ("/v1/./x", DotSegment),
            ("/v1/../x", DotSegment),
            ("/v1/..", DotSegment),
            ("/v1/.", DotSegment),
            ("/v1/offers/..;/customers", Semicolon),
            ("/v1/offers/..;x/customers", Semicolon),
            ("/v1/offers/.;/customers", Semicolon),
            ("/v1/customers;x/c1", Semicolon),
            ("/v1/;/customers", Semicolon),
            ("/v1/x%3B/..", Semicolon),
            ("/v1/x%3b", Semicolon),
            ("/v1/offers/..\\customers", Backslash),
            ("/v1/offers\\..\\customers", Backslash),
            ("/v1/offers/..%5ccustomers", Backslash),
            ("/v1/offers/..%5Ccustomers", Backslash),
            ("/v1/offers/%00", Control),
            ("/v1/offers/\0", Control),
            ("/v1/offers/%0d%0a", Control),
            ("/v1/offers/%7f", Control),
            ("/v1/offers/\t", Control),
            ("/v1/offers#/../customers", Fragment),
            ("/v1/offers%23/x", EncodedDelimiter),
            ("/v1/%2F", EncodedDelimiter),
            ("/v1/offers%2f..%2fcustomers", EncodedDelimiter),
            ("/v1/%63ustomers", EncodedUnreserved),
            ("/v1/%2e%2e/x", EncodedUnreserved),
            ("/v1/%2E%2E/x", EncodedUnreserved),
            ("/v1/.%2e/x", EncodedUnreserved),
            ("/v1/%2e./x", EncodedUnreserved),
            ("/v1/%2e/x", EncodedUnreserved),
            ("/v1/x%7e", EncodedUnreserved),
            ("/v1/%252e%252e/x", DoubleEncoded),
            ("/v1/%255c", DoubleEncoded),
            ("/v1/%zz", BadEscape),
            ("/v1/%4", BadEscape),
            ("/v1/%", BadEscape),
        ] {
            assert_eq!(check(p), Err(flaw), "{p:?}");
        }
    }

    /// RFC 3986 §5.2.4, written from the RFC's steps as an independent reference.
    fn remove_dot_segments(input: &str) -> String {
        let mut input = input.to_string();
        let mut output = String::new();
        while !input.is_empty() {
            if let Some(rest) = input.strip_prefix("../").or_else(|| input.strip_prefix("./")) {
                input = rest.to_string();
            } else if input.starts_with("/./") {
                input.replace_range(..3, "/");
            } else if input == "/." {
                input = "/".into();
            } else if input.starts_with("/../") || input == "/.." {
                input = format!("/{}", &input[if input == "/.." { 3 } else { 4 }..]);
                let cut = output.rfind('/').unwrap_or(0);
                output.truncate(cut);
            } else if input == "." || input == ".." {
                input.clear();
            } else {
                let start = usize::from(input.starts_with('/'));
                let end = input[start..].find('/').map_or(input.len(), |i| i + start);
                output.push_str(&input[..end]);
                input.replace_range(..end, "");
            }
        }
        output
    }

    /// Decodes `%XX` escapes of unreserved characters only (RFC 3986 §6.2.2.2).
    fn decode_unreserved(p: &str) -> String {
        let b = p.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match (b[i], escape_at(b, i)) {
                (b'%', Some(c)) if c.is_ascii_alphanumeric() || b"-._~".contains(&c) => {
                    out.push(c);
                    i += 3;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// Paths built from the pieces that make up second spellings.
    fn pathish() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop::sample::select(vec![
            "/", "/", "/", ".", "..", "a", "b1", "~", "-", "_", "%2e", "%2E", "%2f", "%5c", "%5C", "\\", ";", "%3b",
            "%3B", "%00", "%0a", "%25", "%252e", "%41", "%61", "%20", "%3A", "%23", "#", "%", "%4", "%zz", "?",
        ]);
        (prop::bool::weighted(0.9), prop::collection::vec(piece, 0..12))
            .prop_map(|(slash, parts)| format!("{}{}", if slash { "/" } else { "" }, parts.concat()))
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 20_000, ..Default::default() })]

        /// Any path the rule accepts is its own normal form: dot-segment removal and decoding of
        /// unreserved characters leave it unchanged, and no upstream reading of ';' or '\\'
        /// applies to it.
        #[test]
        fn an_accepted_path_is_its_own_normal_form(p in pathish()) {
            if check(&p).is_ok() {
                proptest::prop_assert_eq!(remove_dot_segments(&decode_unreserved(&p)), p.clone());
                proptest::prop_assert!(!p.contains(';') && !p.contains('\\') && !p.contains("//"));
                proptest::prop_assert!(!p.to_ascii_lowercase().contains("%5c") && !p.to_ascii_lowercase().contains("%3b"));
            }
        }

        /// The rule never panics on any string, and refuses whatever does not start with '/'.
        #[test]
        fn any_string_gets_an_answer(p in "\\PC*") {
            let r = check(&p);
            if !p.starts_with('/') {
                proptest::prop_assert_eq!(r, Err(PathFlaw::NotAbsolute));
            }
        }
    }

    #[test]
    fn the_reference_removes_dot_segments_as_the_rfc_examples_do() {
        // RFC 3986 §5.2.4's own examples.
        assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
        assert_eq!(remove_dot_segments("mid/content=5/../6"), "mid/6");
        assert_eq!(remove_dot_segments("/v1/offers/../customers"), "/v1/customers");
        assert_eq!(decode_unreserved("/%63ustomers/%2e%2E/%20"), "/customers/../%20");
    }
}
