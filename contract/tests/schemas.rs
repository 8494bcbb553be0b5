//! The committed JSON Schema files match the types, and the golden fixtures and example jobs are valid.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn committed_schemas_are_current() {
    let dir = root().join("schemas");
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    for (name, text) in ainern2d_contract::schema::all() {
        let path = dir.join(name);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} is stale: run `UPDATE_SCHEMAS=1 cargo test -p ainern2d-contract --test schemas` and commit it",
            path.display()
        );
    }
}

fn validator(name: &str) -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("schemas").join(name)).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn example_jobs_parse_and_match_the_schema() {
    let schema = validator("job.v1.schema.json");
    let files = json_files(&root().join("examples/jobs"));
    assert_eq!(files.len(), 4, "one example per kind");
    for path in files {
        let body = std::fs::read(&path).unwrap();
        let job = ainern2d_contract::parse_job(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(schema.is_valid(&value), "{} does not match the schema", path.display());
        assert_eq!(path.file_stem().unwrap().to_str().unwrap(), job.kind().as_str());
    }
}

#[test]
fn golden_fixtures_round_trip() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for path in json_files(&dir) {
        let text = std::fs::read_to_string(&path).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        let (schema, reparsed) = match name.split('.').next().unwrap() {
            "job" => (
                "job.v1.schema.json",
                serde_json::to_value(serde_json::from_value::<ainern2d_contract::Job>(value.clone()).unwrap()).unwrap(),
            ),
            "event" => (
                "event.v1.schema.json",
                serde_json::to_value(serde_json::from_value::<ainern2d_contract::Event>(value.clone()).unwrap())
                    .unwrap(),
            ),
            "heartbeat" => (
                "heartbeat.v1.schema.json",
                serde_json::to_value(serde_json::from_value::<ainern2d_contract::Heartbeat>(value.clone()).unwrap())
                    .unwrap(),
            ),
            "control" => (
                "control.v1.schema.json",
                serde_json::to_value(serde_json::from_value::<ainern2d_contract::Control>(value.clone()).unwrap())
                    .unwrap(),
            ),
            other => panic!("fixture {name}: unknown message type {other}"),
        };
        assert!(validator(schema).is_valid(&value), "{name} does not match {schema}");
        assert_eq!(reparsed, value, "{name} does not round-trip unchanged");
    }
}
