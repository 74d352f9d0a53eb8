//! Invalid manifests, generated: a valid fleet broken by one to three
//! mutations, each of which alone makes it invalid (10 000 cases), plus
//! YAML-ish noise (2 000 cases). Loading never panics; a broken fleet never
//! yields a `Desired` (so nothing can reach a host: `apply::converge` only
//! takes a loaded one); every error names the file and a line.

use proptest::prelude::*;
use tend::manifest::{load_tree, Diagnostics, Secrets, TreeFile};

const FILE: &str = "fleet/fleet.yaml";

const BASE: &str = r#"apiVersion: tend/v1
kind: Host
metadata:
  name: h1
spec:
  address: 10.77.9.9
  port: 22
---
apiVersion: tend/v1
kind: Service
metadata:
  name: web
spec:
  host: h1
  runtime: process
  version: "1.2.3"
  command: [busybox, httpd, -f, -p, "8080"]
  ports: [8080]
  memory: 32MiB
  env:
    MODE: prod
  health:
    http: {port: 8080, path: /health}
    interval: 1s
    retries: 3
  dependsOn: [db]
---
apiVersion: tend/v1
kind: Service
metadata:
  name: db
spec:
  host: h1
  runtime: process
  version: "9"
  command: [sleep, "1000"]
  ports: [5432]
"#;

/// One change that, alone, makes BASE invalid.
#[derive(Debug, Clone)]
enum Mutation {
    UnknownSpecKey(usize, String),
    UnknownTopKey(usize, String),
    PortOutOfRange(u32),
    PortNotANumber(String),
    UnknownRuntime(String),
    BadMemory(String),
    UnknownHost(String),
    BadName(String),
    UnknownDependency(String),
    UnknownKind(String),
    UnknownApiVersion(u8),
    UnclosedFlowSequence,
    TabIndent(usize),
    InvalidUtf8(usize),
    DuplicateService,
    NegativeRetries(i32),
    BadInterval(String),
    BadEnvKey(String),
    MissingHostAddress,
    MissingRuntime(usize),
}

fn word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,11}"
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0..2usize, word()).prop_map(|(d, w)| Mutation::UnknownSpecKey(d, w)),
        (0..3usize, word()).prop_map(|(d, w)| Mutation::UnknownTopKey(d, w)),
        (65_536u32..10_000_000).prop_map(Mutation::PortOutOfRange),
        "[a-z]{1,10}".prop_map(Mutation::PortNotANumber),
        word().prop_map(Mutation::UnknownRuntime),
        word().prop_map(Mutation::BadMemory),
        word().prop_map(Mutation::UnknownHost),
        "[A-Z_][A-Za-z_.!]{0,10}".prop_map(Mutation::BadName),
        word().prop_map(Mutation::UnknownDependency),
        word().prop_map(Mutation::UnknownKind),
        (2u8..100).prop_map(Mutation::UnknownApiVersion),
        Just(Mutation::UnclosedFlowSequence),
        (0..1000usize).prop_map(Mutation::TabIndent),
        Just(Mutation::DuplicateService),
        (-100_000i32..0).prop_map(Mutation::NegativeRetries),
        word().prop_map(Mutation::BadInterval),
        "[0-9][A-Za-z0-9_]{0,8}".prop_map(Mutation::BadEnvKey),
        Just(Mutation::MissingHostAddress),
        (0..2usize).prop_map(Mutation::MissingRuntime),
    ]
}

/// Replace the first line equal to `from` (after `skip` such lines).
fn replace(lines: &mut [String], from: &str, skip: usize, to: &str) {
    if let Some(l) = lines.iter_mut().filter(|l| l.as_str() == from).nth(skip) {
        *l = to.to_string();
    }
}

/// Insert `line` after the `nth` line equal to `after`.
fn insert_after(lines: &mut Vec<String>, after: &str, nth: usize, line: String) {
    let at = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.as_str() == after)
        .nth(nth)
        .map(|(i, _)| i);
    if let Some(i) = at {
        lines.insert(i + 1, line);
    }
}

fn apply(ms: &[Mutation]) -> Vec<u8> {
    let mut lines: Vec<String> = BASE.lines().map(str::to_string).collect();
    let mut bad_utf8 = None;
    for m in ms {
        match m {
            Mutation::UnknownSpecKey(d, w) => {
                insert_after(&mut lines, "spec:", 1 + d, format!("  zz{w}: 1"))
            }
            Mutation::UnknownTopKey(d, w) => {
                let kinds = ["kind: Host", "kind: Service", "kind: Service"];
                let skip = if *d == 2 { 1 } else { 0 };
                insert_after(&mut lines, kinds[*d], skip, format!("zz{w}: x"))
            }
            Mutation::PortOutOfRange(p) => {
                replace(&mut lines, "  ports: [8080]", 0, &format!("  ports: [{p}]"))
            }
            Mutation::PortNotANumber(w) => {
                replace(&mut lines, "  ports: [8080]", 0, &format!("  ports: [{w}]"))
            }
            Mutation::UnknownRuntime(w) => replace(
                &mut lines,
                "  runtime: process",
                0,
                &format!("  runtime: zz{w}"),
            ),
            Mutation::BadMemory(w) => replace(
                &mut lines,
                "  memory: 32MiB",
                0,
                &format!("  memory: 12zz{w}"),
            ),
            Mutation::UnknownHost(w) => {
                replace(&mut lines, "  host: h1", 0, &format!("  host: zz{w}"))
            }
            Mutation::BadName(w) => replace(&mut lines, "  name: web", 0, &format!("  name: {w}")),
            Mutation::UnknownDependency(w) => replace(
                &mut lines,
                "  dependsOn: [db]",
                0,
                &format!("  dependsOn: [zz{w}]"),
            ),
            Mutation::UnknownKind(w) => {
                replace(&mut lines, "kind: Service", 0, &format!("kind: Zz{w}"))
            }
            Mutation::UnknownApiVersion(v) => replace(
                &mut lines,
                "apiVersion: tend/v1",
                0,
                &format!("apiVersion: tend/v{v}"),
            ),
            Mutation::UnclosedFlowSequence => replace(
                &mut lines,
                "  command: [busybox, httpd, -f, -p, \"8080\"]",
                0,
                "  command: [busybox, httpd, -f",
            ),
            Mutation::TabIndent(i) => {
                let spec: Vec<usize> = (0..lines.len())
                    .filter(|&j| lines[j].starts_with("  ") && !lines[j].starts_with("   "))
                    .collect();
                if let Some(&j) = spec.get(i % spec.len().max(1)) {
                    lines[j] = format!("\t{}", &lines[j][2..]);
                }
            }
            Mutation::InvalidUtf8(i) => bad_utf8 = Some(*i),
            Mutation::DuplicateService => {
                let db = BASE.split("---\n").nth(2).unwrap_or_default();
                lines.push("---".into());
                lines.extend(db.lines().map(str::to_string));
            }
            Mutation::NegativeRetries(n) => replace(
                &mut lines,
                "    retries: 3",
                0,
                &format!("    retries: {n}"),
            ),
            Mutation::BadInterval(w) => replace(
                &mut lines,
                "    interval: 1s",
                0,
                &format!("    interval: zz{w}"),
            ),
            Mutation::BadEnvKey(k) => {
                replace(&mut lines, "    MODE: prod", 0, &format!("    {k}: x"))
            }
            Mutation::MissingHostAddress => lines.retain(|l| l != "  address: 10.77.9.9"),
            Mutation::MissingRuntime(d) => {
                if let Some(i) = lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| *l == "  runtime: process")
                    .nth(*d)
                    .map(|(i, _)| i)
                {
                    lines.remove(i);
                }
            }
        }
    }
    let mut out = lines.join("\n").into_bytes();
    out.push(b'\n');
    if let Some(i) = bad_utf8 {
        let at = i % out.len();
        out.splice(at..at, [0xff, 0xfe, 0xc3]);
    }
    out
}

fn tree(contents: Vec<u8>) -> Vec<TreeFile> {
    vec![TreeFile {
        path: FILE.into(),
        executable: false,
        contents,
    }]
}

/// Every diagnostic names the file and a line; the whole reads as `file:line:`.
fn assert_clear(d: &Diagnostics, input: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(!d.0.is_empty(), "an error without diagnostics");
    for x in &d.0 {
        prop_assert_eq!(
            &x.file,
            FILE,
            "{} for\n{}",
            x,
            String::from_utf8_lossy(input)
        );
        prop_assert!(
            x.line >= 1,
            "no line: {} for\n{}",
            x,
            String::from_utf8_lossy(input)
        );
        prop_assert!(!x.message.trim().is_empty(), "empty message: {:?}", x);
        let shown = x.to_string();
        let prefix = format!("{FILE}:{}:", x.line);
        prop_assert!(shown.starts_with(&prefix), "{}", shown);
    }
    Ok(())
}

#[test]
fn the_unmutated_fleet_loads() {
    let l = load_tree(&tree(BASE.as_bytes().to_vec()), "fleet", Secrets::Resolve)
        .unwrap_or_else(|d| panic!("BASE must be valid: {d}"));
    assert_eq!(l.desired.services.len(), 2);
}

#[test]
fn each_mutation_alone_is_refused() {
    let samples = [
        Mutation::UnknownSpecKey(0, "a".into()),
        Mutation::UnknownSpecKey(1, "a".into()),
        Mutation::UnknownTopKey(0, "a".into()),
        Mutation::UnknownTopKey(2, "a".into()),
        Mutation::PortOutOfRange(70_000),
        Mutation::PortNotANumber("abc".into()),
        Mutation::UnknownRuntime("x".into()),
        Mutation::BadMemory("x".into()),
        Mutation::UnknownHost("x".into()),
        Mutation::BadName("Web".into()),
        Mutation::UnknownDependency("x".into()),
        Mutation::UnknownKind("x".into()),
        Mutation::UnknownApiVersion(2),
        Mutation::UnclosedFlowSequence,
        Mutation::TabIndent(3),
        Mutation::DuplicateService,
        Mutation::NegativeRetries(-1),
        Mutation::BadInterval("x".into()),
        Mutation::BadEnvKey("9X".into()),
        Mutation::MissingHostAddress,
        Mutation::MissingRuntime(0),
    ];
    let mut accepted = Vec::new();
    for m in samples {
        let input = apply(std::slice::from_ref(&m));
        match load_tree(&tree(input), "fleet", Secrets::Resolve) {
            Ok(_) => accepted.push(m),
            Err(d) => assert_clear(&d, &apply(std::slice::from_ref(&m))).unwrap(),
        }
    }
    assert!(accepted.is_empty(), "accepted as valid: {accepted:?}");
}

#[test]
fn bytes_that_are_not_utf8_are_refused_with_the_line_they_are_on() {
    for at in [0usize, 40, 300] {
        let input = apply(&[Mutation::InvalidUtf8(at)]);
        let d = load_tree(&tree(input.clone()), "fleet", Secrets::Resolve)
            .expect_err("not UTF-8 is refused");
        assert_clear(&d, &input).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn ten_thousand_broken_fleets_are_refused_with_a_file_and_line_each(
        ms in prop::collection::vec(mutation(), 1..=3)
    ) {
        let input = apply(&ms);
        match load_tree(&tree(input.clone()), "fleet", Secrets::Resolve) {
            Ok(l) => prop_assert!(false, "{:?} loaded {} services", ms, l.desired.services.len()),
            Err(d) => assert_clear(&d, &input)?,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    /// Noise: never a panic; refused with a file, or (when it happens to be
    /// an empty set of documents) nothing to run.
    #[test]
    fn yaml_noise_never_panics_and_never_yields_services(
        text in "(apiVersion: tend/v1\n|kind: (Host|Service)\n|---\n|spec:\n|  |- |[a-z:\\[\\]{},'\"#&*!|>%@` \t\n-]{1,12}){0,40}"
    ) {
        match load_tree(&tree(text.clone().into_bytes()), "fleet", Secrets::Resolve) {
            Ok(l) => prop_assert!(l.desired.services.is_empty(), "noise loaded services:\n{}", text),
            Err(d) => {
                prop_assert!(!d.0.is_empty());
                for x in &d.0 {
                    // An empty tree is refused for the directory, not a file.
                    prop_assert!(x.file == FILE || x.file == "fleet", "{}", x);
                    prop_assert!(!x.message.trim().is_empty(), "{:?}", x);
                }
            }
        }
    }
}
