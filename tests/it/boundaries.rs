//! Boundaries the code map (ARCHITECTURE.md) promises, checked on the source text:
//!
//! - SQL is written only under `src/store/`;
//! - `src/domain/` uses no tokio, diesel, redis or serde (it is the pure fold);
//! - the library's top-level modules import each other without cycles;
//! - no source file holds more than 600 lines of non-test code.
//!
//! Test code (`#[cfg(test)]` items and the files of test-only modules) is left out: a test may
//! reach across layers to set up its case. The checks read tokens, not a parse tree — a string
//! literal or a path is what they look at, comments are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Rust source with comments removed and `#[cfg(test)]` items cut out, string literals kept.
fn non_test_code(source: &str) -> String {
    let code = strip_comments(source);
    let mut out = String::with_capacity(code.len());
    let mut rest = code.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        rest = skip_item(&rest[at + "#[cfg(test)]".len()..]);
    }
    out.push_str(rest);
    out
}

/// `text` after its first item: a declaration up to `;`, or a block up to its closing brace.
fn skip_item(text: &str) -> &str {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    // Parentheses and brackets: a `;` inside them (`[u8; 4]`) does not end the item.
    let mut nest = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = end_of_string(bytes, i),
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 2,
            b'(' | b'[' => nest += 1,
            b')' | b']' => nest = nest.saturating_sub(1),
            b';' if depth == 0 && nest == 0 => return &text[i + 1..],
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[i + 1..];
                }
            }
            _ => {}
        }
        i += 1;
    }
    ""
}

/// Index of the closing quote of the string literal opening at `start`.
fn end_of_string(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'"' => return i,
            _ => {}
        }
        i += 1;
    }
    i
}

/// `source` without `//` and `/* */` comments (string literals, raw ones too, kept whole).
fn strip_comments(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'r' && matches!(bytes.get(i + 1), Some(b'"' | b'#')) {
            // A raw string: r"…", r#"…"#, …
            let hashes = bytes[i + 1..].iter().take_while(|b| **b == b'#').count();
            if bytes.get(i + 1 + hashes) == Some(&b'"') {
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let body = i + 2 + hashes;
                let end = bytes[body..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(bytes.len(), |p| body + p + close.len());
                out.extend_from_slice(&bytes[i..end]);
                i = end;
                continue;
            }
        }
        match bytes[i] {
            b'"' => {
                let end = (end_of_string(bytes, i) + 1).min(bytes.len());
                out.extend_from_slice(&bytes[i..end]);
                i = end;
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') || bytes.get(i + 1) == Some(&b'\\') => {
                // A char literal ('"', '{', '\n'): copied as is, so it opens nothing.
                let end = bytes[i + 1..]
                    .iter()
                    .skip(1)
                    .position(|b| *b == b'\'')
                    .map_or(bytes.len(), |p| i + 2 + p + 1);
                out.extend_from_slice(&bytes[i..end]);
                i = end;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = bytes[i + 2..]
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map_or(bytes.len(), |p| i + 2 + p + 2);
                i = end;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("source is UTF-8")
}

/// The string literals of `code`, their contents.
fn string_literals(code: &str) -> Vec<&str> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\'' && bytes.get(i + 2) == Some(&b'\'') {
            i += 3;
            continue;
        }
        if bytes[i] == b'"' {
            let end = end_of_string(bytes, i);
            found.push(&code[i + 1..end.min(code.len())]);
            i = end + 1;
            continue;
        }
        i += 1;
    }
    found
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Files of modules declared `#[cfg(test)] mod name;`: test code as a whole.
fn test_only_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut test_only = BTreeSet::new();
    for file in files {
        let text = strip_comments(&fs::read_to_string(file).expect("readable source"));
        let dir = match file.file_name().and_then(|n| n.to_str()) {
            Some("mod.rs" | "lib.rs" | "main.rs") => file.parent().expect("a parent").to_owned(),
            _ => file.with_extension(""),
        };
        let mut rest = text.as_str();
        while let Some(at) = rest.find("#[cfg(test)]") {
            rest = &rest[at + "#[cfg(test)]".len()..];
            let decl = rest.trim_start();
            let decl = decl.strip_prefix("pub(crate) ").unwrap_or(decl);
            if let Some(name) = decl
                .strip_prefix("mod ")
                .and_then(|d| d.split_once(';'))
                .map(|(n, _)| n.trim())
                .filter(|n| n.chars().all(|c| c.is_alphanumeric() || c == '_'))
            {
                test_only.insert(dir.join(format!("{name}.rs")));
                test_only.insert(dir.join(name).join("mod.rs"));
            }
        }
    }
    test_only
}

/// Every library source file (not the binary's `cli/`, not `main.rs`) with its non-test code.
fn library_sources() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = rust_files(&src);
    let test_only = test_only_files(&files);
    files
        .into_iter()
        .filter(|f| !test_only.contains(f))
        .filter(|f| !f.starts_with(src.join("cli")) && *f != src.join("main.rs"))
        .map(|f| {
            let code = non_test_code(&fs::read_to_string(&f).expect("readable source"));
            (f, code)
        })
        .collect()
}

/// The top-level module of a file under `src/` (`store` for `src/store/load.rs`).
fn top_module(file: &Path) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let relative = file.strip_prefix(&src).expect("under src/");
    let first = relative
        .components()
        .next()
        .expect("a component")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_owned()
}

fn is_sql(literal: &str) -> bool {
    const STATEMENTS: [&str; 12] = [
        "SELECT ",
        "INSERT INTO",
        "UPDATE ",
        "DELETE FROM",
        "CREATE ",
        "DROP ",
        "ALTER ",
        "COPY ",
        "WITH ",
        "TRUNCATE ",
        "SET ",
        "ANALYZE",
    ];
    let text = literal.trim_start();
    STATEMENTS.iter().any(|s| text.starts_with(s))
}

#[test]
fn sql_is_written_only_under_store() {
    let mut offenders = Vec::new();
    for (file, code) in library_sources() {
        if top_module(&file) == "store" {
            continue;
        }
        for literal in string_literals(&code) {
            if is_sql(literal) {
                offenders.push(format!("{}: {literal:?}", file.display()));
            }
        }
        for call in [
            "sql_query(",
            ".batch_execute(",
            ".query_one(",
            ".copy_in(",
            ".copy_out(",
        ] {
            if code.contains(call) {
                offenders.push(format!("{}: calls {call}…)", file.display()));
            }
        }
    }
    // The binary's subcommands too: they call `store`, they do not write SQL.
    let cli = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cli");
    for file in rust_files(&cli) {
        let code = non_test_code(&fs::read_to_string(&file).expect("readable source"));
        for literal in string_literals(&code) {
            if is_sql(literal) {
                offenders.push(format!("{}: {literal:?}", file.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "SQL outside src/store/:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_domain_uses_no_runtime_database_broker_or_serialization_crate() {
    let mut offenders = Vec::new();
    for (file, code) in library_sources() {
        if top_module(&file) != "domain" {
            continue;
        }
        for krate in ["tokio", "diesel", "redis", "serde", "serde_json"] {
            let uses = code.contains(&format!("{krate}::"))
                || code.contains(&format!("use {krate}"))
                || code.contains(&format!("{krate}("));
            if uses {
                offenders.push(format!("{}: {krate}", file.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "src/domain/ must stay pure:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_domain_s_tests_need_no_decoder_or_fixture_generator() {
    // Tests included: the domain's tests build domain events themselves.
    let domain = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain");
    let mut offenders = Vec::new();
    for file in rust_files(&domain) {
        let code = strip_comments(&fs::read_to_string(&file).expect("readable source"));
        for path in ["crate::fixture", "crate::ingest", "serde_json"] {
            if code.contains(path) {
                offenders.push(format!("{}: {path}", file.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}

/// The first path segment of each item of a `use crate::{…}` group (`group` starts after the
/// `{`): `a::{b, c}, d` gives `a`, `d`. Nested groups are skipped whole.
fn group_heads(group: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                heads.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                heads.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    heads
        .into_iter()
        .filter_map(|item| item.trim().split("::").next())
        .filter(|head| !head.is_empty())
        .collect()
}

/// Top-level modules each module's non-test code names (`crate::x`, `use crate::{x, …}`).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let sources = library_sources();
    let modules: BTreeSet<String> = sources
        .iter()
        .map(|(f, _)| top_module(f))
        .filter(|m| m != "lib")
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, code) in &sources {
        let from = top_module(file);
        if from == "lib" {
            continue;
        }
        let edges = graph.entry(from.clone()).or_default();
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let named: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                group_heads(group)
            } else {
                vec![rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")]
            };
            for name in named {
                let name = name.trim();
                if name != from && modules.contains(name) {
                    edges.insert(name.to_owned());
                }
            }
        }
    }
    graph
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let graph = module_graph();
    let mut cycles = Vec::new();
    for (from, edges) in &graph {
        for to in edges {
            // Is there a way back from `to` to `from`?
            let mut seen = BTreeSet::new();
            let mut stack = vec![(to.clone(), vec![from.clone(), to.clone()])];
            while let Some((at, path)) = stack.pop() {
                if !seen.insert(at.clone()) {
                    continue;
                }
                for next in graph.get(&at).into_iter().flatten() {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    if next == from {
                        cycles.push(longer.join(" → "));
                    } else {
                        stack.push((next.clone(), longer));
                    }
                }
            }
        }
    }
    cycles.sort();
    cycles.dedup();
    assert!(
        cycles.is_empty(),
        "import cycles between top-level modules:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn no_source_file_holds_more_than_600_lines_of_code() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = rust_files(&src);
    let test_only = test_only_files(&files);
    let mut long = Vec::new();
    for file in files.iter().filter(|f| !test_only.contains(*f)) {
        let code = non_test_code(&fs::read_to_string(file).expect("readable source"));
        let lines = code.lines().filter(|l| !l.trim().is_empty()).count();
        if lines > 600 {
            long.push(format!("{}: {lines} lines", file.display()));
        }
    }
    assert!(
        long.is_empty(),
        "split these files (comments, blank lines and tests not counted):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    // The tidy checks themselves: a check that cannot see its target would pass forever.
    let source = r#"
use crate::store::{self, Pool};
fn f() { let q = "SELECT 1"; let c = '{'; } // "DROP TABLE x"
#[cfg(test)]
mod tests { fn g() { let s = "DELETE FROM x"; let b = "}"; } }
fn h() { crate::{domain::State, sync}; }
"#;
    let code = non_test_code(source);
    assert!(code.contains("SELECT 1"));
    assert!(!code.contains("DROP TABLE"), "comments are skipped");
    assert!(!code.contains("DELETE FROM"), "test items are skipped");
    assert!(code.contains("fn h()"), "code after a test item is kept");
    let sql: Vec<&str> = string_literals(&code)
        .into_iter()
        .filter(|l| is_sql(l))
        .collect();
    assert_eq!(sql, vec!["SELECT 1"]);
    assert_eq!(
        group_heads("domain::{State, Keys}, sync, store::x};"),
        vec!["domain", "sync", "store"]
    );
    let signature = "#[cfg(test)]\nfn f() -> [u8; 4] { [0; 4] }\nfn kept() {}";
    assert!(non_test_code(signature).contains("fn kept()"));
    assert!(!non_test_code(signature).contains("fn f()"));
}
