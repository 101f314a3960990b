//! `sluice schema` describes every shipped config: each file in config/ and
//! config/examples/ validates against it (YAML read as JSON, as editors do).

use std::path::Path;
use std::process::Command;

fn schema() -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).expect("sluice schema prints JSON")
}

fn yaml_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_config_validates_against_the_schema() {
    let schema = schema();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = yaml_files(&root.join("config"));
    files.extend(yaml_files(&root.join("config/examples")));
    assert!(!files.is_empty());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let json = serde_json::to_value(yaml).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
    }
}

#[test]
fn the_schema_rejects_what_the_parser_rejects() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let bad = [
        "listen: 127.0.0.1:8080\n", // no upstream
        "upstream: { url: x }\nroutes: [ { name: a, limit: 5/fortnight } ]\n", // bad rate
        "upstream: { url: x }\nstore: { backend: mongo }\n", // unknown backend
        "upstream: { url: x }\nadmin: { listen: 127.0.0.1:9090, token: x }\n", // unknown field
        "upstream: { url: x }\nreload: { interval: soon }\n", // bad duration
    ];
    for text in bad {
        let yaml: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
        let json = serde_json::to_value(yaml).unwrap();
        assert!(!validator.is_valid(&json), "{text}");
    }
}
