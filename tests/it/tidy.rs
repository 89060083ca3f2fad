//! Repository hygiene that a reviewer would otherwise have to remember: module docs, a database
//! kept dumb, and documentation that names what exists.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_under(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        files_under(&root().join(dir), "rs", &mut files);
    }
    assert!(files.len() > 10);
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = fs::read_to_string(f).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a `//!` header: {missing:?}"
    );
}

#[test]
fn migrations_hold_no_database_side_logic() {
    let mut files = Vec::new();
    files_under(&root().join("migrations"), "sql", &mut files);
    let forbidden = [
        "trigger",
        "function",
        "procedure",
        "materialized view",
        "create view",
        "create or replace view",
        "create rule",
    ];
    for f in files {
        let text = fs::read_to_string(&f).unwrap_or_default().to_lowercase();
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} contains `{word}`: Postgres stays a dumb sink",
                f.display()
            );
        }
    }
}

#[test]
fn architecture_names_every_module_directory() {
    let arch = fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md exists");
    for entry in fs::read_dir(root().join("src")).expect("src").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let shown = if entry.path().is_dir() {
            format!("src/{name}/")
        } else {
            format!("src/{name}")
        };
        assert!(
            arch.contains(&shown),
            "ARCHITECTURE.md does not mention {shown}"
        );
    }
}
