//! Untrusted input in messages: how much of it an error or log line quotes.

/// Most characters of an input an error message quotes.
pub const QUOTE_CHARS: usize = 200;

/// `s` quoted for an error message: Debug-quoted, cut to its first
/// [`QUOTE_CHARS`] characters (then `…(N bytes)`), so a huge input never
/// makes a huge message or log line.
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}…({} bytes)", &s[..cut], s.len()),
    }
}

/// `s` as is when short, else like [`quote`] but unquoted: for log fields.
pub fn short(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(QUOTE_CHARS) {
        None => s.into(),
        Some((cut, _)) => format!("{}…({} bytes)", &s[..cut], s.len()).into(),
    }
}

/// The error and its sources, joined.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let part = e.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = e.source();
    }
    s
}
