//! Form and query parameters, parsed by hand rather than with axum's
//! extractors so that bad input becomes an OAuth error, not axum's plain
//! text rejection, and so that repeated parameters can be refused
//! (RFC 6749 section 3.1: "MUST NOT be included more than once").

use std::collections::HashMap;

pub(crate) struct Params {
    values: HashMap<String, String>,
    repeated: Option<String>,
}

impl Params {
    /// Parses `application/x-www-form-urlencoded` bytes (a body or a
    /// query string). Empty values count as absent, as RFC 6749 section
    /// 3.1 asks.
    pub(crate) fn parse(input: &[u8]) -> Params {
        let mut values = HashMap::new();
        let mut repeated = None;
        for (name, value) in url::form_urlencoded::parse(input) {
            if value.is_empty() {
                continue;
            }
            if values
                .insert(name.to_string(), value.into_owned())
                .is_some()
            {
                repeated.get_or_insert_with(|| name.into_owned());
            }
        }
        Params { values, repeated }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The first parameter that appeared more than once, if any.
    pub(crate) fn repeated(&self) -> Option<&str> {
        self.repeated.as_deref()
    }
}
