//! Errors as people read them: an error and its causes on one line, for logs and answers. No IO.

/// An error with its sources, on one line (a TLS failure hides under two layers of hyper errors).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the plan")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_is_printed_once_after_its_error() {
        let error = Outer(std::io::Error::other("disk gone"));
        assert_eq!(error_chain(&error), "reading the plan: disk gone");
    }
}
