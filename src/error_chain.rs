//! Reading an error's chain of causes: for log lines, and for the bounded kind a metric label
//! may carry. Never for a client: what an error says about the network stays in the logs.

use std::error::Error;

/// All causes, outermost first: "client error (Connect): tcp connect error: Connection refused".
pub fn describe(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e;
    while let Some(next) = cur.source() {
        out.push_str(": ");
        out.push_str(&next.to_string());
        cur = next;
    }
    out
}

/// Whether any cause satisfies `test`. Connectors nest errors in `io::Error`s, whose `source()`
/// skips the wrapped error, so each of those is unwrapped too.
pub(crate) fn any(e: &(dyn Error + 'static), test: &dyn Fn(&(dyn Error + 'static)) -> bool) -> bool {
    fn node(e: &(dyn Error + 'static), test: &dyn Fn(&(dyn Error + 'static)) -> bool) -> bool {
        if test(e) {
            return true;
        }
        match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => node(inner, test),
            None => false,
        }
    }
    let mut cur = Some(e);
    while let Some(err) = cur {
        if node(err, test) {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("outer")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_inside_io_errors_are_found() {
        let inner = std::io::Error::other(std::fmt::Error);
        let e = Outer(inner);
        assert_eq!(describe(&e), "outer: an error occurred when formatting an argument");
        assert!(any(&e, &|c| c.is::<std::fmt::Error>()));
        assert!(!any(&e, &|c| c.is::<std::str::Utf8Error>()));
    }
}
