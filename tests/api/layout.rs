//! The layout shows the flow: dependencies between the crate's modules point
//! one way. Read from the sources themselves, every `use` tree and every
//! `crate::`/`super::` path resolved to the module file it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`domain::recipient`) → the modules its file names.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the source tree is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> String {
    let relative = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let parts = match parts.last().map(String::as_str) {
        Some("mod") | Some("lib") | Some("main") => &parts[..parts.len() - 1],
        _ => &parts[..],
    };
    parts.join("::")
}

/// Every path a source names: `use` trees expanded (`a::{b, c::d}` → `a::b`,
/// `a::c::d`), and paths written inline.
fn paths_named(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut offset = 0;
    for line in code.split_inclusive('\n') {
        let statement = line.trim_start();
        let statement = match statement.strip_prefix("pub") {
            Some(rest) if rest.starts_with('(') => rest.split_once(") ").map_or("", |(_, r)| r),
            Some(rest) => rest.trim_start(),
            None => statement,
        };
        if let Some(tree) = statement.strip_prefix("use ") {
            let from = offset + (line.len() - tree.len());
            if let Some(end) = code[from..].find(';') {
                expand("", &code[from..from + end], &mut out);
            }
        }
        offset += line.len();
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            let mut end = at;
            while end < bytes.len()
                && (bytes[end].is_ascii_alphanumeric() || b"_:".contains(&bytes[end]))
            {
                end += 1;
            }
            out.push(code[at..end].trim_end_matches(':').to_owned());
            from = end.max(at + 1);
        }
    }
    out
}

fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => {
            let path = tree.split(" as ").next().unwrap_or("").trim();
            out.push(format!("{prefix}{path}").trim_end_matches("::").to_owned());
        }
        Some(open) => {
            let head = format!("{prefix}{}", &tree[..open]);
            let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
            let inner = &tree[open + 1..close];
            let (mut depth, mut begin) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&head, &inner[begin..i], out);
                        begin = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&head, &inner[begin..], out);
        }
    }
}

/// The longest known module a path starts with, seen from `module`.
fn resolve(module: &str, path: &str, known: &BTreeSet<String>) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    let mut base: Vec<&str> = Vec::new();
    match parts.first() {
        Some(&"crate") => {
            parts.remove(0);
        }
        Some(&"super") => {
            base = module.split("::").collect();
            while parts.first() == Some(&"super") {
                parts.remove(0);
                base.pop();
            }
        }
        _ => return None,
    }
    (1..=parts.len()).rev().find_map(|n| {
        let candidate = base
            .iter()
            .chain(&parts[..n])
            .copied()
            .collect::<Vec<_>>()
            .join("::");
        known.contains(&candidate).then_some(candidate)
    })
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            (
                module_of(&src, f),
                std::fs::read_to_string(f).expect("a source file"),
            )
        })
        .collect();
    let known: BTreeSet<String> = modules.iter().map(|(m, _)| m.clone()).collect();
    modules
        .iter()
        .map(|(module, source)| {
            let named = paths_named(source)
                .iter()
                .filter_map(|p| resolve(module, p, &known))
                .filter(|m| m != module && !m.is_empty())
                .collect();
            (module.clone(), named)
        })
        .collect()
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn no_two_modules_import_each_other() {
    let graph = graph();
    assert!(
        graph.len() > 50,
        "the sources were found: {} modules",
        graph.len()
    );
    let pairs: Vec<(&String, &String)> = graph
        .iter()
        .flat_map(|(a, named)| named.iter().map(move |b| (a, b)))
        .filter(|(a, b)| a < b && graph.get(*b).is_some_and(|n| n.contains(*a)))
        .collect();
    assert!(
        pairs.is_empty(),
        "module pairs importing each other: {pairs:?}"
    );
}

#[test]
fn dependencies_point_from_the_api_down_to_the_domain() {
    // What each layer may name, besides itself.
    let allowed: &[(&str, &[&str])] = &[
        ("domain", &["render"]),
        ("storage", &["domain", "config"]),
        ("commands", &["domain", "storage", "memory_limit", "render"]),
        ("streams", &["domain", "storage"]),
        (
            "projections",
            &[
                "domain",
                "storage",
                "streams",
                "commands",
                "reactors",
                "config",
                "memory_limit",
            ],
        ),
        (
            "reactors",
            &["domain", "storage", "commands", "projections", "config"],
        ),
    ];
    let graph = graph();
    let mut wrong = Vec::new();
    for (module, named) in &graph {
        let Some((_, may)) = allowed.iter().find(|(layer, _)| *layer == top(module)) else {
            continue;
        };
        for target in named {
            let layer = top(target);
            if layer != top(module) && !may.contains(&layer) {
                wrong.push(format!("{module} names {target}"));
            }
        }
    }
    assert!(wrong.is_empty(), "dependencies against the flow: {wrong:?}");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let holders: Vec<String> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).is_ok_and(|s| s.contains("pub struct AppState")))
        .map(|f| module_of(&src, f))
        .collect();
    assert_eq!(
        holders,
        vec!["api::state".to_owned()],
        "AppState lives with the api"
    );
}
