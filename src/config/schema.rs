//! The JSON Schema of the configuration file (`portcullis schema`), derived
//! from the raw serde structs in `raw.rs` with `schemars`, so the schema an
//! editor checks against is the shape the parser accepts and cannot drift
//! from it. The schema knows the shape (keys, types, enumerations);
//! `portcullis check` still does what a schema cannot: references between
//! entries, secrets that resolve, origins and durations that parse.

use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::raw::*;

/// The whole file. The validator reads each section on its own (so one bad
/// section does not hide the others' problems) and never builds this
/// struct; it exists for the schema, and a test holds its keys equal to
/// `TOP_LEVEL_KEYS`, the list the validator accepts.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "portcullis configuration")]
#[allow(dead_code)]
pub struct RawFile {
    /// The proxy's listeners (at least one).
    listen: Vec<RawListener>,
    /// The public base URL; the login redirect URI is this + `/.auth/callback`.
    public_url: Option<String>,
    /// Worker threads of the proxy service (default: the number of CPUs).
    #[schemars(range(min = 1, max = 1024))]
    threads: Option<usize>,
    /// The admin listener (metrics, health, reload, status page).
    admin: Option<RawAdmin>,
    /// OpenID providers by name.
    #[schemars(extend("propertyNames" = {"pattern": ENTITY_NAME}))]
    providers: Option<BTreeMap<String, RawProvider>>,
    /// Messenger configurations by name.
    #[schemars(extend("propertyNames" = {"pattern": ENTITY_NAME}))]
    messengers: Option<BTreeMap<String, RawMessenger>>,
    /// Deployments: the ids clients send.
    deployments: Option<Vec<RawDeployment>>,
    /// Upstream server groups by name.
    #[schemars(extend("propertyNames" = {"pattern": ENTITY_NAME}))]
    upstreams: Option<BTreeMap<String, RawUpstream>>,
    /// Which request paths are messaging endpoints.
    routes: Option<Vec<RawRoute>>,
    /// The session store, cookie and keys.
    sessions: Option<RawSessions>,
    logging: Option<RawLogging>,
    compat: Option<RawCompat>,
    forwarding: Option<RawForwarding>,
    /// The prefix of identity headers (default `X-Auth-`).
    identity_header_prefix: Option<String>,
    limits: Option<RawLimits>,
    rate_limits: Option<RawRateLimits>,
    shutdown: Option<RawShutdown>,
}

/// Entity names: letters, digits, '-' and '_' (as `validate` checks them).
const ENTITY_NAME: &str = "^[A-Za-z0-9_-]{1,64}$";

/// The JSON Schema (draft 2020-12) of the configuration file.
pub fn json_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(RawFile).to_value();
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "description".into(),
            "The YAML configuration of portcullis. `portcullis check -c FILE` validates \
             what a schema cannot (references, secrets, origins, durations)."
                .into(),
        );
    }
    schema
}

/// `{env: NAME}` or `{file: PATH}`: secrets are never written inline.
pub(super) fn secret(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A secret: {env: VARIABLE} or {file: /path/to/file}, never inline.",
        "oneOf": [secret_source("env"), secret_source("file")],
    })
}

/// A value that may be written inline when it holds nothing secret
/// (`sessions.redis.url` without a password), else like `secret`.
pub(super) fn plain_or_secret(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "oneOf": [{"type": "string"}, secret_source("env"), secret_source("file")],
    })
}

pub(super) fn secret_list(generator: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "array", "items": secret(generator)})
}

fn secret_source(key: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {key: {"type": "string", "minLength": 1}},
        "required": [key],
        "additionalProperties": false,
    })
}

/// Whole seconds, or text such as `30s`, `15m`, `24h`, `7d`.
pub(super) fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A duration: whole seconds, or text such as 30s, 15m, 24h, 7d.",
        "anyOf": [
            {"type": "integer", "minimum": 0},
            {"type": "string", "pattern": "^\\s*[0-9]"},
            {"type": "null"},
        ],
    })
}

/// Whole bytes, or text such as `512KiB`, `256MiB`.
pub(super) fn byte_size(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A size: whole bytes, or text such as 512KiB, 256MiB, 1GiB.",
        "anyOf": [
            {"type": "integer", "minimum": 0},
            {"type": "string", "pattern": "^\\s*[0-9]"},
            {"type": "null"},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_has_exactly_the_sections_the_validator_accepts() {
        let schema = json_schema();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        let mut keys: Vec<&str> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .map(String::as_str)
            .collect();
        let mut accepted = super::super::TOP_LEVEL_KEYS.to_vec();
        keys.sort_unstable();
        accepted.sort_unstable();
        assert_eq!(keys, accepted);
        assert_eq!(schema["additionalProperties"], false);
    }
}
