//! The engine's layers, checked: every `crate::` path in `engine/src` must
//! point to a module of a lower layer (or its own module), so that imports
//! point down only and no cycle can form between modules.
//!
//! Run alone with `cargo test -p herald --test layers`. The order below is
//! the one the crate docs draw; moving a module, or importing upward, makes
//! this test name the file and the import. It reads `crate::` paths only
//! (`use` lines and paths in code, comments skipped); a child module's
//! `super::` stays inside its own module, which is what the rule allows.

use std::{collections::HashMap, fs, path::Path};

/// Every top-level module of `engine/src`, bottom layer first. A module may
/// import the modules before it in this list, and itself.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "pure wire, handshake and protocol code",
        &["wire", "handshake", "protocol"],
    ),
    (
        "pure limits, settings, counters and time",
        &["admission", "conflation", "config", "metrics", "timer"],
    ),
    (
        "connection state machine and topic index",
        &["conn", "pubsub", "broadcast"],
    ),
    (
        "the reactor: mio, sockets, threads, the clock",
        &["reactor"],
    ),
    ("channels", &["channels"]),
    ("the cluster", &["cluster"]),
];

/// Test and benchmark support, above everything, allowed to reach anything.
const SUPPORT: &[&str] = &["fuzzing", "bench_support"];

fn rank_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .flat_map(|(_, modules)| modules.iter())
        .position(|&m| m == module)
}

fn layer_of(module: &str) -> &'static str {
    LAYERS
        .iter()
        .find(|(_, modules)| modules.contains(&module))
        .map_or("?", |(name, _)| name)
}

/// The crate root's re-exports: `Broadcast` -> `broadcast`, and so on.
fn root_reexports(lib: &str) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for statement in lib.split(';') {
        let Some(start) = statement.find("pub use ") else {
            continue;
        };
        let path = &statement[start + "pub use ".len()..];
        let Some((module, rest)) = path.split_once("::") else {
            continue;
        };
        let items = rest.trim().trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let name = item.rsplit("::").next().unwrap_or("").trim();
            if !name.is_empty() {
                names.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    names
}

/// The first path segment of every `crate::` path in `code` (comments
/// removed beforehand), with the line it is on.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        let preceded = start.checked_sub(1).map(|i| bytes[i]);
        if preceded.is_some_and(|b| b == b'$' || b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        if bytes.get(from) == Some(&b'{') {
            for item in top_level_items(&code[from + 1..]) {
                found.push((line, item));
            }
        } else {
            found.push((line, identifier(&code[from..])));
        }
    }
    found
}

/// The first identifier of each comma-separated item of a `{ ... }` group
/// whose opening brace has been consumed.
fn top_level_items(group: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut depth = 0;
    let mut item_start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(identifier(group[item_start..i].trim_start()));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(identifier(group[item_start..i].trim_start()));
                item_start = i + 1;
            }
            _ => {}
        }
    }
    items.retain(|item| !item.is_empty());
    items
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn without_comments(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rust_files(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("read engine/src") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn every_import_points_to_a_lower_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).expect("read lib.rs");
    let reexports = root_reexports(&without_comments(&lib));
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a path");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "bin" || SUPPORT.contains(&module.as_str()) {
            continue;
        }
        let Some(rank) = rank_of(&module) else {
            violations.push(format!(
                "{}: module `{module}` is in no layer",
                relative.display()
            ));
            continue;
        };
        let code = without_comments(&fs::read_to_string(&file).expect("read a source file"));
        for (line, segment) in crate_paths(&code) {
            checked += 1;
            let target = match reexports.get(&segment) {
                Some(module) => module.clone(),
                None => segment.clone(),
            };
            match rank_of(&target) {
                Some(target_rank) if target_rank <= rank => {}
                Some(_) => violations.push(format!(
                    "{}:{line}: `{module}` ({}) imports `crate::{segment}` from `{target}` ({}), a layer above",
                    relative.display(),
                    layer_of(&module),
                    layer_of(&target),
                )),
                None => violations.push(format!(
                    "{}:{line}: `crate::{segment}` names no module of a layer",
                    relative.display()
                )),
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} imports found: is the parser broken?"
    );
    assert!(
        violations.is_empty(),
        "imports that point up:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_nested_and_reexported_imports() {
    let code = "use crate::{\n    broadcast::Broadcast,\n    reactor::{Conn, Service},\n    Handler,\n};\nfn f() { crate::wire::text_frame(\"x\"); $crate::metrics::add(); }";
    let segments: Vec<String> = crate_paths(code).into_iter().map(|(_, s)| s).collect();
    assert_eq!(segments, ["broadcast", "reactor", "Handler", "wire"]);
    let reexports =
        root_reexports("pub use reactor::{\n    Accept, Conn,\n};\npub use conn::SendError;");
    assert_eq!(reexports["Conn"], "reactor");
    assert_eq!(reexports["SendError"], "conn");
    assert_eq!(rank_of("wire"), Some(0));
    assert!(rank_of("cluster") > rank_of("channels"));
}
