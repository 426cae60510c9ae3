//! Property tests (issue 13 item 10) for configuration loading: arbitrary
//! and mangled YAML never panics, and either parses or yields located
//! errors.

use std::path::Path;

use portcullis::config::{parse, ConfigErrors, TOP_LEVEL_KEYS};
use proptest::prelude::*;

const VALID: &str = r#"
listen: [{address: "127.0.0.1:8080"}]
messengers:
  open: {authentication: {enabled: false}}
upstreams:
  chat: {servers: ["127.0.0.1:9000"]}
deployments:
  - {id: dep-a, messenger: open, upstream: chat, allow_all_origins: true}
routes:
  - {path_prefix: /v1}
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

/// Errors are never empty, each has a message, and each either names a
/// YAML path that starts at a section or key of the text, or is about the
/// whole document.
fn check_errors(text: &str, errors: &ConfigErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errors.0.is_empty());
    for e in &errors.0 {
        prop_assert!(!e.message.trim().is_empty(), "{:?}", e);
        // An empty top-level key (`"": x`) is located at the empty path.
        let has_empty_key = top_level_keys(text).iter().any(String::is_empty);
        if e.path.is_empty() && !has_empty_key {
            prop_assert!(
                e.message.starts_with("not valid YAML")
                    || e.message.starts_with("the file must be a YAML mapping")
                    || e.message.starts_with("top-level keys must be strings")
                    || e.message.starts_with("a top-level key is empty")
                    || e.message.contains("required")
                    || e.message.contains("missing"),
                "unlocated error: {:?}",
                e
            );
        } else {
            // Located under a known section, or under a top-level key the
            // document has as YAML reads it (folded lines, escapes decoded:
            // `{~\n"}` has the key `~ "`, which the raw text never spells).
            // Keys may hold `.` and `[` themselves, so the path is matched
            // against whole keys rather than split.
            let under = |key: &str| {
                e.path
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            };
            prop_assert!(
                TOP_LEVEL_KEYS.iter().any(|k| under(k))
                    || top_level_keys(text).iter().any(|k| under(k)),
                "{:?}",
                e
            );
        }
    }
    Ok(())
}

/// The string keys of the document's top-level mapping.
fn top_level_keys(text: &str) -> Vec<String> {
    match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
        Ok(serde_yaml_ng::Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn yamlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("listen".to_string()),
        Just("routes".to_string()),
        Just("deployments".to_string()),
        Just("upstreams".to_string()),
        Just("path_prefix".to_string()),
        Just("id".to_string()),
        Just(":".to_string()),
        Just(": ".to_string()),
        Just("- ".to_string()),
        Just("\n".to_string()),
        Just("\n  ".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(", ".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!binary ".to_string()),
        Just("<<: ".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("~".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("{env: X}".to_string()),
        Just("/v1".to_string()),
        "[ -~]{0,6}",
    ];
    prop::collection::vec(token, 0..30).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_parses_or_gives_located_errors(text in "\\PC{0,200}") {
        if let Err(errors) = parse(&text, Path::new("."), &no_env) {
            check_errors(&text, &errors)?;
        }
    }

    #[test]
    fn yaml_shaped_text_parses_or_gives_located_errors(text in yamlish()) {
        if let Err(errors) = parse(&text, Path::new("."), &no_env) {
            check_errors(&text, &errors)?;
        }
    }

    /// A valid file with one span cut out, or text spliced in, still
    /// parses or yields located errors; and the valid file itself parses.
    #[test]
    fn mangled_valid_files_give_located_errors(at: usize, len in 0usize..40, insert in "[ -~\n]{0,12}") {
        prop_assert!(parse(VALID, Path::new("."), &no_env).is_ok());
        let at = at % VALID.len();
        let end = (at + len).min(VALID.len());
        let text = format!("{}{}{}", &VALID[..at], insert, &VALID[end..]);
        match parse(&text, Path::new("."), &no_env) {
            Ok(_) => {}
            Err(errors) => {
                check_errors(&text, &errors)?;
            }
        }
    }
}
