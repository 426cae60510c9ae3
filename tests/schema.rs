//! `portcullis schema`: the JSON Schema editors check the YAML against.
//! Every configuration the project ships (conf/, examples/, the README's
//! snippets) must pass it, and known-bad files must fail it: a schema that
//! refuses good files breaks editors, one that passes anything is useless.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis::config::schema::json_schema;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&json_schema()).expect("the schema is itself valid")
}

fn yaml_to_json(text: &str) -> Value {
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).expect("valid YAML");
    serde_json::to_value(yaml).expect("YAML representable as JSON")
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// The portcullis configuration files under `dir` (Prometheus and Grafana
/// files live beside them under conf/ and are not ours to check).
fn config_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "prometheus" | "grafana") {
                config_files(&path, out);
            }
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_shipped_configuration_passes_the_schema() {
    let validator = validator();
    let mut files = Vec::new();
    config_files(&root().join("conf"), &mut files);
    config_files(&root().join("examples"), &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("conf/portcullis.example.yaml")),
        "found {files:?}"
    );
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let problems = errors(&validator, &yaml_to_json(&text));
        assert!(problems.is_empty(), "{}: {problems:#?}", file.display());
    }
}

/// The README's YAML snippets: sections of a file are checked against the
/// schema (less its required sections: a snippet shows a part); a deeper
/// fragment (`require:` of a messenger) against the schema's definitions
/// that have all its keys, at least one of which must accept it.
#[test]
fn every_readme_snippet_passes_the_schema() {
    let schema = json_schema();
    let mut sections = schema.clone();
    sections.as_object_mut().unwrap().remove("required");
    let whole = jsonschema::validator_for(&sections).unwrap();
    let top_level: Vec<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let snippets: Vec<&str> = readme
        .split("```yaml\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or(""))
        .collect();
    assert!(!snippets.is_empty());
    for snippet in snippets {
        let instance = yaml_to_json(snippet);
        let keys: Vec<&str> = instance
            .as_object()
            .expect("a snippet is a mapping")
            .keys()
            .map(String::as_str)
            .collect();
        if keys.iter().all(|k| top_level.contains(k)) {
            let problems = errors(&whole, &instance);
            assert!(problems.is_empty(), "{snippet}\n{problems:#?}");
            continue;
        }
        let definitions = schema["$defs"].as_object().unwrap();
        let candidates: Vec<&String> = definitions
            .iter()
            .filter(|(_, def)| {
                def["properties"]
                    .as_object()
                    .is_some_and(|p| keys.iter().all(|k| p.contains_key(*k)))
            })
            .map(|(name, _)| name)
            .collect();
        assert!(!candidates.is_empty(), "no definition has {keys:?}");
        let accepted = candidates.iter().any(|name| {
            // A fragment shows part of its entry (`require` without `enabled`).
            let mut fragment = schema.clone();
            if let Some(def) = fragment["$defs"][name.as_str()].as_object_mut() {
                def.remove("required");
            }
            fragment["$ref"] = Value::String(format!("#/$defs/{name}"));
            fragment.as_object_mut().unwrap().remove("properties");
            fragment.as_object_mut().unwrap().remove("required");
            fragment
                .as_object_mut()
                .unwrap()
                .remove("additionalProperties");
            jsonschema::validator_for(&fragment)
                .unwrap()
                .is_valid(&instance)
        });
        assert!(accepted, "{snippet}\nnone of {candidates:?} accepts it");
    }
}

#[test]
fn known_bad_configurations_fail_the_schema() {
    let validator = validator();
    let good = std::fs::read_to_string(root().join("conf/portcullis.example.yaml")).unwrap();
    let good = yaml_to_json(&good);
    assert!(validator.is_valid(&good));
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut typo = good.clone();
    typo["deployments"][0]["allowed_orgins"] = serde_json::json!(["https://a.example"]);
    cases.push(("a misspelt key", typo));
    let mut unknown_section = good.clone();
    unknown_section["sesions"] = serde_json::json!({});
    cases.push(("an unknown section", unknown_section));
    let mut inline_secret = good.clone();
    let provider = inline_secret["providers"]
        .as_object_mut()
        .unwrap()
        .values_mut()
        .next()
        .unwrap();
    provider["client_secret"] = Value::String("hunter2".into());
    cases.push(("an inline client secret", inline_secret));
    let mut bad_status = good.clone();
    bad_status["deployments"][0]["status"] = Value::String("paused".into());
    cases.push(("a status that does not exist", bad_status));
    let mut wrong_type = good.clone();
    wrong_type["threads"] = Value::String("four".into());
    cases.push(("threads as text", wrong_type));
    let mut no_listen = good.clone();
    no_listen.as_object_mut().unwrap().remove("listen");
    cases.push(("no listeners", no_listen));
    let mut bad_name = good.clone();
    bad_name["upstreams"]["has space"] = serde_json::json!({"servers": ["127.0.0.1:1"]});
    cases.push(("an upstream name with a space", bad_name));
    for (what, instance) in cases {
        assert!(!validator.is_valid(&instance), "{what} passed the schema");
    }
}

#[test]
fn the_schema_command_prints_the_schema() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("schema")
        .output()
        .expect("run portcullis schema");
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(printed, json_schema());
}
