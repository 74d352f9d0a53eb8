//! No file of `controller/src` imports a file that imports it back, directly
//! or round a longer loop (issue 13). Each stage should be a room a newcomer
//! can enter from one side.
//!
//! Edges come from `crate::`, `self::` and `super::` paths, in `use` items
//! and in code (comments and strings are stripped first). A module naming
//! its own submodules is the module tree, not an import, so edges from a
//! module to its descendants are left out; a submodule's `super::` edge to
//! its parent counts. The binary (`main.rs` and its `cli` modules) is a
//! crate of its own: its `crate::` is `main.rs`, and its `tend::` paths point
//! into the library, which cannot point back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Import edges still to break, each named (from, to) by file under
/// `controller/src`, for the loop's owner to empty (issue 13); keep it empty
/// after. An entry whose edge is gone fails the test, so none goes stale.
/// Pairs allowed to import each other while a move is pending: none.
const ALLOWED: &[(&str, &str)] = &[];

#[test]
fn no_file_of_the_controller_crate_imports_a_file_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = Graph::read(&src);
    let mut problems = Vec::new();

    for (a, tos) in &graph.edges {
        for b in tos {
            if a < b && graph.edges.get(b).is_some_and(|t| t.contains(a)) && !allowed_pair(a, b) {
                problems.push(format!("{a} <-> {b} import each other"));
            }
        }
    }
    // Longer loops (two-file ones are the pairs above), allowed edges taken out.
    let mut pruned = graph.edges.clone();
    for (from, to) in ALLOWED {
        if let Some(set) = pruned.get_mut(*from) {
            set.remove(*to);
        }
    }
    for scc in strongly_connected(&pruned) {
        if scc.len() > 2 {
            problems.push(format!("import loop: {}", scc.join(" -> ")));
        }
    }
    // A stale allow-list entry would let the pair come back unnoticed.
    for (from, to) in ALLOWED {
        if !graph.edges.get(*from).is_some_and(|t| t.contains(*to)) {
            problems.push(format!(
                "ALLOWED names {from} -> {to}, which is gone: drop it"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_cycle_check_sees_a_pair_through_use_groups_and_super() {
    let files: BTreeSet<String> = ["lib.rs", "a/mod.rs", "a/x.rs", "a/y.rs", "b.rs"]
        .into_iter()
        .map(String::from)
        .collect();
    let x = "use super::{y::Thing, Other};\nfn f() { crate::b::g(); }\n// crate::a::y::nope\n";
    let y = "use crate::a::{self, x::{self as xx}};\nconst S: &str = \"super::b\";\n";
    let ex = edges_of("a/x.rs", x, &files);
    let ey = edges_of("a/y.rs", y, &files);
    assert_eq!(ex, set(&["a/y.rs", "a/mod.rs", "b.rs"]));
    assert_eq!(ey, set(&["a/mod.rs", "a/x.rs"]));
    let parent = edges_of("a/mod.rs", "use self::x::X; use crate::a::y::Y;", &files);
    assert!(
        parent.is_empty(),
        "a module naming its children: {parent:?}"
    );
    let inline = edges_of(
        "b.rs",
        "mod tests { use super::*; use super::super::a::X; }",
        &files,
    );
    assert_eq!(inline, set(&["a/mod.rs"]));
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn allowed_pair(a: &str, b: &str) -> bool {
    ALLOWED
        .iter()
        .any(|(f, t)| (*f == a && *t == b) || (*f == b && *t == a))
}

struct Graph {
    edges: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn read(src: &Path) -> Graph {
        let mut paths = Vec::new();
        walk(src, &mut paths);
        let files: BTreeSet<String> = paths.iter().map(|p| rel(src, p)).collect();
        let mut edges = BTreeMap::new();
        for p in &paths {
            let text =
                std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let name = rel(src, p);
            let tos = edges_of(&name, &text, &files);
            edges.insert(name, tos);
        }
        Graph { edges }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn rel(src: &Path, p: &Path) -> String {
    let r = p.strip_prefix(src).unwrap_or(p);
    r.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// The module path of a file: `a/b.rs` and `a/b/mod.rs` are `[a, b]`.
fn module_of(file: &str) -> Vec<String> {
    let stem = file.strip_suffix(".rs").unwrap_or(file);
    let mut segs: Vec<String> = stem.split('/').map(String::from).collect();
    if matches!(
        segs.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        segs.pop();
    }
    segs
}

/// The binary's modules (declared in `main.rs`) form a crate apart.
fn in_bin(file: &str) -> bool {
    file == "main.rs" || file.starts_with("cli/") || file == "cli.rs"
}

/// The file holding module `segs`, if it is a file of its own.
fn file_of(segs: &[String], bin: bool, files: &BTreeSet<String>) -> Option<String> {
    if segs.is_empty() {
        return Some(if bin { "main.rs" } else { "lib.rs" }.to_string());
    }
    let base = segs.join("/");
    [format!("{base}.rs"), format!("{base}/mod.rs")]
        .into_iter()
        .find(|f| files.contains(f) && in_bin(f) == bin)
}

/// The deepest file a path reaches, walking from the crate root.
fn resolve(path: &[String], bin: bool, files: &BTreeSet<String>) -> Option<String> {
    let mut reached = file_of(&[], bin, files)?;
    for i in 1..=path.len() {
        match file_of(&path[..i], bin, files) {
            Some(f) => reached = f,
            None => break,
        }
    }
    Some(reached)
}

fn edges_of(file: &str, text: &str, files: &BTreeSet<String>) -> BTreeSet<String> {
    let code = strip(text);
    let inline = inline_mods(&code);
    let here = module_of(file);
    let bin = in_bin(file);
    let mut out = BTreeSet::new();
    for (pos, path) in paths(&code) {
        let mut module = here.clone();
        module.extend(
            inline
                .iter()
                .filter(|(s, e, _)| *s <= pos && pos < *e)
                .map(|(_, _, n)| n.clone()),
        );
        let Some(abs) = absolute(&module, &path) else {
            continue;
        };
        let Some(to) = resolve(&abs, bin, files) else {
            continue;
        };
        let to_mod = module_of(&to);
        let descendant = to_mod.len() >= here.len() && to_mod[..here.len()] == here[..];
        if to != file && !descendant {
            out.insert(to);
        }
    }
    out
}

/// A path made absolute from the module it is written in; `None` for paths
/// that start elsewhere (extern crates, bare child names).
fn absolute(module: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut segs = path.iter().peekable();
    let mut base: Vec<String> = match segs.peek().map(|s| s.as_str()) {
        Some("crate") => {
            segs.next();
            Vec::new()
        }
        Some("self") => {
            segs.next();
            module.to_vec()
        }
        Some("super") => module.to_vec(),
        _ => return None,
    };
    while segs.peek().map(|s| s.as_str()) == Some("super") {
        segs.next();
        base.pop()?;
    }
    base.extend(segs.cloned());
    Some(base)
}

/// Source with comments, strings and char literals blanked (lengths kept).
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (0usize, i);
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if let Some(end) = raw_string_end(b, i) {
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}'); otherwise a lifetime.
            let end = if rest.get(1) == Some(&b'\\') {
                rest.iter()
                    .skip(2)
                    .position(|&c| c == b'\'')
                    .map(|n| i + n + 3)
            } else {
                let ch = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + ch) == Some(&b'\'')).then_some(i + 2 + ch)
            };
            match end {
                Some(end) => {
                    blank(&mut out, i, end);
                    i = end;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a raw string (`r"…"`, `r#"…"#`, `br"…"`) starting at `i` ends.
fn raw_string_end(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
        return None;
    }
    let mut j = i;
    if b.get(j) == Some(&b'b') {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    j += hashes;
    if b.get(j) != Some(&b'"') {
        return None;
    }
    let close: Vec<u8> = std::iter::once(b'"')
        .chain(std::iter::repeat_n(b'#', hashes))
        .collect();
    let body = j + 1;
    b[body..]
        .windows(close.len())
        .position(|w| w == close.as_slice())
        .map(|n| body + n + close.len())
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Sep, // ::
    Open,
    Close,
    Comma,
    Semi,
    Star,
    Other,
}

fn tokens(code: &str) -> Vec<(usize, Tok)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((start, Tok::Ident(code[start..i].to_string())));
            continue;
        }
        let tok = match c {
            b':' if b.get(i + 1) == Some(&b':') => {
                out.push((i, Tok::Sep));
                i += 2;
                continue;
            }
            b'{' => Tok::Open,
            b'}' => Tok::Close,
            b',' => Tok::Comma,
            b';' => Tok::Semi,
            b'*' => Tok::Star,
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            _ => Tok::Other,
        };
        out.push((i, tok));
        i += 1;
    }
    out
}

/// Inline `mod name { … }` blocks: (start, end, name).
fn inline_mods(code: &str) -> Vec<(usize, usize, String)> {
    let toks = tokens(code);
    let mut out = Vec::new();
    for (k, (pos, t)) in toks.iter().enumerate() {
        let (Tok::Ident(kw), Some((_, Tok::Ident(name))), Some((_, Tok::Open))) =
            (t, toks.get(k + 1), toks.get(k + 2))
        else {
            continue;
        };
        if kw != "mod" {
            continue;
        }
        let mut depth = 0;
        let mut end = code.len();
        for (p, t) in &toks[k + 2..] {
            match t {
                Tok::Open => depth += 1,
                Tok::Close => {
                    depth -= 1;
                    if depth == 0 {
                        end = *p;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((*pos, end, name.clone()));
    }
    out
}

/// Every path that starts with `crate`, `self` or `super`, with where it
/// stands: `use` trees expanded, other paths up to their last `::` segment.
fn paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let toks = tokens(code);
    let mut out = Vec::new();
    let mut k = 0;
    while k < toks.len() {
        let (pos, t) = &toks[k];
        if *t == Tok::Ident("use".into()) {
            let mut trees = Vec::new();
            k = use_tree(&toks, k + 1, &[], &mut trees);
            out.extend(trees.into_iter().map(|p| (*pos, p)));
            continue;
        }
        let root = matches!(t, Tok::Ident(s) if s == "crate" || s == "self" || s == "super");
        let after_sep = k > 0 && toks[k - 1].1 == Tok::Sep;
        if root && !after_sep && toks.get(k + 1).map(|t| &t.1) == Some(&Tok::Sep) {
            let mut path = Vec::new();
            let mut j = k;
            while let Some((_, Tok::Ident(s))) = toks.get(j) {
                path.push(s.clone());
                if toks.get(j + 1).map(|t| &t.1) != Some(&Tok::Sep) {
                    break;
                }
                j += 2;
            }
            out.push((*pos, path));
            k = j + 1;
            continue;
        }
        k += 1;
    }
    out
}

/// Parses one use tree from `k`, pushing each leaf path; returns where it ends.
fn use_tree(
    toks: &[(usize, Tok)],
    mut k: usize,
    prefix: &[String],
    out: &mut Vec<Vec<String>>,
) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match toks.get(k).map(|t| &t.1) {
            Some(Tok::Sep) => k += 1,
            Some(Tok::Ident(s)) if s == "as" => {
                k += 2; // `as name`: the path is what came before
            }
            Some(Tok::Ident(s)) => {
                if s != "self" || path.is_empty() {
                    path.push(s.clone());
                }
                k += 1;
            }
            Some(Tok::Star) => k += 1,
            Some(Tok::Open) => {
                k += 1;
                loop {
                    k = use_tree(toks, k, &path, out);
                    match toks.get(k).map(|t| &t.1) {
                        Some(Tok::Comma) => k += 1,
                        Some(Tok::Close) => {
                            k += 1;
                            break;
                        }
                        _ => return k,
                    }
                }
                return k;
            }
            _ => {
                // A leaf (`self` in a group leaves the prefix itself).
                out.push(path);
                return match toks.get(k).map(|t| &t.1) {
                    Some(Tok::Semi) => k + 1,
                    _ => k,
                };
            }
        }
    }
}

/// Tarjan's strongly connected components, only those of two or more files.
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(tos) = t.edges.get(v) {
            for w in tos {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.reverse();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}
