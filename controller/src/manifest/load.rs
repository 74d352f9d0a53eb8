//! Finding manifest files in a tree and parsing them into typed documents.
//!
//! Each file is parsed twice: first into an untyped [`Node`] tree (to read
//! `apiVersion`/`kind` and to name the field an error points at), then each
//! document into its typed form, so field positions survive.

use super::encrypted::AgeIdentities;
use super::node::{Node, NodeKind};
use super::raw::{At, DocKind, TypedDoc, S};
use super::tree::{normalize, FsTree, SliceTree, Tree};
use super::validate::{self, Parsed, ParsedDoc, Report};
use super::{Diagnostic, Diagnostics, Loaded, Resolver, Secrets, TreeFile};
use serde_saphyr::DuplicateKeyPolicy;
use std::path::{Path, PathBuf};

/// Loads the manifests under `manifests_dir` (repo-relative; `""` for the whole
/// tree, or one file) of an in-memory tree. `source.path`s resolve in `files`.
pub fn load_tree(
    files: &[TreeFile],
    manifests_dir: &str,
    secrets: Secrets,
) -> Result<Loaded, Diagnostics> {
    load_tree_with(files, manifests_dir, secrets, None)
}

/// [`load_tree`] with age identities for `fromAge` values.
pub fn load_tree_with(
    files: &[TreeFile],
    manifests_dir: &str,
    secrets: Secrets,
    age: Option<&AgeIdentities>,
) -> Result<Loaded, Diagnostics> {
    let dir = normalize(manifests_dir).unwrap_or_default();
    load(&SliceTree(files), &dir, Resolver { secrets, age })
}

/// Loads manifests from a directory (or one file) on disk. The repository
/// root (for `source.path`) is the nearest ancestor holding `.git`, else the
/// directory itself (or a file's parent). Diagnostics name files as given.
pub fn load_path(path: &Path, secrets: Secrets) -> Result<Loaded, Diagnostics> {
    load_path_with(path, secrets, None)
}

/// [`load_path`] with age identities for `fromAge` values.
pub fn load_path_with(
    path: &Path,
    secrets: Secrets,
    age: Option<&AgeIdentities>,
) -> Result<Loaded, Diagnostics> {
    let fail = |why: String| {
        Diagnostics(vec![Diagnostic::new(
            path.display().to_string(),
            At::default(),
            "",
            why,
        )])
    };
    let abs = std::fs::canonicalize(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let root = repo_root(&abs);
    let rel = abs.strip_prefix(&root).unwrap_or(Path::new(""));
    let rel: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    let tree = FsTree { root: root.clone() };

    // Name files the way the user can open them: relative to the working directory.
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|c| std::fs::canonicalize(c).ok());
    let display = |repo_rel: &str| -> String {
        let full = root.join(repo_rel);
        match cwd.as_ref().and_then(|c| full.strip_prefix(c).ok()) {
            Some(p) if !p.as_os_str().is_empty() => p.display().to_string(),
            _ => full.display().to_string(),
        }
    };
    let rename = |mut ds: Vec<Diagnostic>| {
        for d in &mut ds {
            d.file = display(&d.file);
        }
        ds
    };
    match load(&tree, &rel.join("/"), Resolver { secrets, age }) {
        Ok(mut l) => {
            l.warnings = rename(l.warnings);
            Ok(l)
        }
        Err(Diagnostics(ds)) => Err(Diagnostics(rename(ds))),
    }
}

/// The repository root for `path`: the nearest ancestor with `.git`, else
/// `path` (a directory) or its parent (a file).
pub fn repo_root(path: &Path) -> PathBuf {
    for a in path.ancestors() {
        if a.join(".git").exists() {
            return a.to_path_buf();
        }
    }
    if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| path.to_path_buf())
    }
}

pub(crate) fn load(tree: &dyn Tree, dir: &str, resolver: Resolver) -> Result<Loaded, Diagnostics> {
    let shown = if dir.is_empty() { "." } else { dir };
    let files = tree.manifests(dir).map_err(|why| {
        Diagnostics(vec![Diagnostic::new(
            shown,
            At::default(),
            "",
            format!("cannot read manifests: {why}"),
        )])
    })?;
    if files.is_empty() {
        // An empty desired state would mean "remove everything": never guess that.
        return Err(Diagnostics(vec![Diagnostic::new(
            shown,
            At::default(),
            "",
            "no manifest files (*.yaml, *.yml) here",
        )]));
    }
    let mut report = Report::default();
    let mut docs = Vec::new();
    for (path, bytes) in &files {
        docs.extend(parse_file(path, bytes, &mut report));
    }
    if docs.is_empty() && report.errors.is_empty() {
        report.errors.push(Diagnostic::new(
            shown,
            At::default(),
            "",
            "no Host or Service documents here",
        ));
    }
    let desired = validate::build(docs, tree, resolver, &mut report);
    let mut errors = report.errors;
    errors.sort();
    errors.dedup();
    match desired {
        Some(desired) if errors.is_empty() => {
            let mut warnings = report.warnings;
            warnings.sort();
            Ok(Loaded {
                desired,
                warnings,
                files: files.len(),
            })
        }
        _ => Err(Diagnostics(errors)),
    }
}

/// The message of a parser error without its position (we print our own).
fn message(e: &serde_saphyr::Error) -> String {
    let full = e.without_snippet().to_string();
    let mut m = full.lines().next().unwrap_or("").trim().to_string();
    if let Some(rest) = m.strip_prefix("error: ") {
        m = rest.to_string();
    }
    // "line 3 column 4: msg" → "msg"
    if m.starts_with("line ") {
        if let Some((_, rest)) = m.split_once(": ") {
            m = rest.to_string();
        }
    }
    // "msg at line 3, column 4" → "msg"
    if let Some(i) = m.rfind(" at line ") {
        if m[i + 9..]
            .chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == ' ' || c.is_alphabetic())
        {
            m.truncate(i);
        }
    }
    m
}

fn parse_file(file: &str, bytes: &[u8], r: &mut Report) -> Vec<ParsedDoc> {
    let err = |r: &mut Report, at: At, field: &str, msg: String| {
        r.errors.push(Diagnostic::new(file, at, field, msg));
    };
    if let Err(e) = std::str::from_utf8(bytes) {
        // Point at the first bad byte: line and column (1-based) of where it sits.
        let good = &bytes[..e.valid_up_to()];
        let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = 1 + String::from_utf8_lossy(&good[line_start..]).chars().count();
        let msg = format!("not UTF-8 text (byte {} of the file)", e.valid_up_to() + 1);
        err(r, At { line, column }, "", msg);
        return Vec::new();
    }

    // Pass 1: untyped, lenient about duplicate keys (pass 2 reports them).
    let lenient = serde_saphyr::options! { duplicate_keys: DuplicateKeyPolicy::LastWins };
    let mut cursor = std::io::Cursor::new(bytes);
    let mut nodes: Vec<Option<Node>> = Vec::new();
    let mut kinds = Vec::new();
    for item in serde_saphyr::read_with_options::<_, Node>(&mut cursor, lenient) {
        match item {
            Ok(node) => {
                let kind = header(file, &node, r);
                kinds.push(kind);
                nodes.push(Some(node));
            }
            Err(e) => {
                let at = e.location().map(At::from).unwrap_or_default();
                err(r, at, "", message(&e));
                kinds.push(DocKind::Skip);
                nodes.push(None);
            }
        }
    }
    if kinds.iter().all(|k| *k == DocKind::Skip) {
        return Vec::new();
    }

    // Pass 2: typed, strict.
    let strict = serde_saphyr::options! { duplicate_keys: DuplicateKeyPolicy::Error };
    let mut cursor = std::io::Cursor::new(bytes);
    let results: Vec<_> = super::raw::with_kinds(kinds.clone(), || {
        serde_saphyr::read_with_options::<_, S<TypedDoc>>(&mut cursor, strict).collect()
    });
    let mut out = Vec::new();
    for (i, res) in results.into_iter().enumerate() {
        let Some(kind) = kinds.get(i) else { break };
        if *kind == DocKind::Skip {
            continue;
        }
        let node = nodes.get(i).and_then(Option::as_ref);
        match res {
            Ok(doc) => {
                if node.is_some_and(|n| n.at != doc.at) {
                    err(
                        r,
                        doc.at,
                        "",
                        "internal: documents out of step between parses".into(),
                    );
                    break;
                }
                match doc.value {
                    TypedDoc::Host(h) => out.push(ParsedDoc {
                        file: file.to_string(),
                        doc: Parsed::Host(h),
                    }),
                    TypedDoc::Service(s) => out.push(ParsedDoc {
                        file: file.to_string(),
                        doc: Parsed::Service(s),
                    }),
                    TypedDoc::Skipped => {}
                }
            }
            Err(e) => {
                let at = e.location().map(At::from).unwrap_or_default();
                let mut msg = message(&e);
                let Some(node) = node else {
                    err(r, at, "", msg);
                    continue;
                };
                let mut field = node.path_at(at);
                let mut at = at;
                // serde stops at the first problem of a document: the schema finds the rest.
                let more = schema_problems(*kind, node);
                if msg.starts_with("missing field `") {
                    // serde points at the mapping's last key; the schema knows the mapping.
                    if let Some((f, a, _)) = more.iter().find(|(_, _, m)| *m == msg) {
                        (field, at) = (f.clone(), *a);
                    }
                } else if msg.starts_with("invalid u") {
                    if let Some((_, _, better)) = more.iter().find(|(f, _, _)| *f == field) {
                        msg = better.clone();
                    }
                }
                err(r, at, &field, msg);
                for (f, a, m) in more {
                    if f != field {
                        err(r, a, &f, m);
                    }
                }
            }
        }
    }
    out
}

/// ["spec", "ports", "1"] → `spec.ports[1]`.
fn field_of<'a>(segs: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for seg in segs {
        if !seg.is_empty() && seg.chars().all(|c| c.is_ascii_digit()) && !out.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

fn join_field(parent: &[String], name: &str) -> String {
    field_of(
        parent
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(name)),
    )
}

/// Structural problems the schema sees in a document: (field, position, message).
fn schema_problems(kind: DocKind, node: &Node) -> Vec<(String, At, String)> {
    use jsonschema::error::ValidationErrorKind as K;
    let Some(validator) = super::schema::validator(kind) else {
        return Vec::new();
    };
    let json = node.to_json();
    let mut out = Vec::new();
    for e in validator.iter_errors(&json) {
        let segs: Vec<String> = e.instance_path().iter().map(|s| s.to_string()).collect();
        let field = field_of(segs.iter().map(String::as_str));
        let target = node.lookup(segs.iter().map(String::as_str));
        let at = target.map_or(node.at, |n| n.at);
        let scalar = target.is_some_and(|n| !matches!(n.kind, NodeKind::Map(_) | NodeKind::Seq(_)));
        match e.kind() {
            K::AdditionalProperties { unexpected } => {
                for key in unexpected {
                    let key_at = target.and_then(|n| n.get(key)).map_or(at, |(k, _)| k.at);
                    out.push((
                        join_field(&segs, key),
                        key_at,
                        format!("unknown field `{key}`"),
                    ));
                }
            }
            K::Required { property } => {
                let name = property.as_str().unwrap_or("?");
                out.push((
                    join_field(&segs, name),
                    at,
                    format!("missing field `{name}`"),
                ));
            }
            K::Type { .. } => {
                // YAML scalars convert between strings, numbers and booleans as
                // the loader needs; only a wrong shape is a problem.
                let text = e.to_string();
                if !scalar || text.contains("\"object\"") || text.contains("\"array\"") {
                    out.push((field, at, text));
                }
            }
            K::Pattern { .. } => {
                let why = e
                    .instance()
                    .as_str()
                    .and_then(|s| super::parse_bytes(s).err());
                out.push((field, at, why.unwrap_or_else(|| e.to_string())));
            }
            K::OneOfNotValid { .. } | K::AnyOf { .. } if field.starts_with("spec.env.") => {
                out.push((
                    field,
                    at,
                    "expected a string, {fromEnv: NAME}, {fromFile: PATH} or {fromAge: ARMORED}"
                        .into(),
                ));
            }
            _ => out.push((field, at, e.to_string())),
        }
    }
    out
}

/// Checks `apiVersion` and `kind`; says which typed form to parse.
fn header(file: &str, node: &Node, r: &mut Report) -> DocKind {
    let mut err = |at: At, field: &str, msg: String| {
        r.errors.push(Diagnostic::new(file, at, field, msg));
    };
    if !matches!(node.kind, NodeKind::Map(_)) {
        err(
            node.at,
            "",
            "a document is a mapping with apiVersion, kind, metadata and spec".into(),
        );
        return DocKind::Skip;
    }
    let mut ok = true;
    match node.get("apiVersion") {
        None => {
            err(node.at, "apiVersion", "missing apiVersion (tend/v1)".into());
            ok = false;
        }
        Some((_, v)) if v.scalar() != Some("tend/v1") => {
            err(
                v.at,
                "apiVersion",
                format!(
                    "unknown apiVersion `{}`: expected tend/v1",
                    v.scalar().unwrap_or("?")
                ),
            );
            ok = false;
        }
        Some(_) => {}
    }
    let kind = match node.get("kind") {
        None => {
            err(node.at, "kind", "missing kind (Host or Service)".into());
            DocKind::Skip
        }
        Some((_, v)) => match v.scalar() {
            Some("Host") => DocKind::Host,
            Some("Service") => DocKind::Service,
            other => {
                err(
                    v.at,
                    "kind",
                    format!(
                        "unknown kind `{}`: expected Host or Service",
                        other.unwrap_or("?")
                    ),
                );
                DocKind::Skip
            }
        },
    };
    if ok {
        kind
    } else {
        DocKind::Skip
    }
}
