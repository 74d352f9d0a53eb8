//! The manifest rules, case by case: each test is one document and what
//! validation says of it, so the file is long the way a table is; helpers at
//! the top, one test per rule or refusal below.

use super::*;
use crate::model::{Address, Delivery, HealthCheck};
use crate::record::RuntimeKind;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(super) fn tf(path: &str, text: &str) -> TreeFile {
    TreeFile {
        path: path.into(),
        executable: false,
        contents: text.as_bytes().to_vec(),
    }
}

const HOSTS: &str = "\
apiVersion: tend/v1
kind: Host
metadata: {name: box}
spec:
  address: 192.0.2.7
  capacity: {memory: 1GiB, reserved: 256MiB}
";

const WEB: &str = "\
apiVersion: tend/v1
kind: Service
metadata: {name: web}
spec:
  host: box
  runtime: process
  source: {path: apps/web}
  command: [python3, app.py]
  ports: [8080]
  memory: 128MiB
  health: {http: {port: 8080, path: /health}}
";

/// A valid tree: one host, one service with its source.
fn base() -> Vec<TreeFile> {
    vec![
        tf("m/hosts.yaml", HOSTS),
        tf("m/web.yaml", WEB),
        tf("apps/web/app.py", "print('hi')\n"),
    ]
}

fn with(mut files: Vec<TreeFile>, path: &str, text: &str) -> Vec<TreeFile> {
    files.retain(|f| f.path != path);
    files.push(tf(path, text));
    files
}

pub(super) fn load(files: &[TreeFile]) -> Result<Loaded, Diagnostics> {
    load_tree(files, "m", Secrets::Placeholder)
}

pub(super) fn errors(files: &[TreeFile]) -> Vec<Diagnostic> {
    match load(files) {
        Ok(_) => panic!("expected the manifests to be refused"),
        Err(d) => d.0,
    }
}

/// The one error at `file:line`, whose field and message contain the given text.
#[track_caller]
pub(super) fn expect_error(
    files: &[TreeFile],
    file: &str,
    line: usize,
    field: &str,
    msg: &str,
) -> Diagnostic {
    let all = errors(files);
    let found = all.iter().find(|d| {
        d.file == file && d.line == line && d.field.contains(field) && d.message.contains(msg)
    });
    match found {
        Some(d) => d.clone(),
        None => panic!(
            "no error at {file}:{line} [{field}] containing {msg:?}; got:\n{}",
            all.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// The whole repository's manifests and sources as an in-memory tree.
fn repo_tree() -> Vec<TreeFile> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<TreeFile>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                out.push(TreeFile {
                    path: rel,
                    executable: false,
                    contents: std::fs::read(&p).unwrap(),
                });
            }
        }
    }
    let root = std::fs::canonicalize(repo()).unwrap();
    let mut out = Vec::new();
    walk(&root, &root.join("manifests"), &mut out);
    walk(&root, &root.join("services"), &mut out);
    out
}

// ------------------------------------------------------------------ the repo

#[test]
fn the_repository_manifests_validate() {
    let l = load_path(&repo().join("manifests"), Secrets::Placeholder)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        l.desired.hosts.keys().collect::<Vec<_>>(),
        ["aliyun", "demo", "tencent"]
    );
    assert_eq!(l.desired.services.len(), 17);
    assert!(l.files >= 5);
    // Only unresolved secrets and undecrypted ones are worth a warning in the repo.
    for w in &l.warnings {
        assert!(
            w.message.ends_with(PLACEHOLDER_NOTE) || w.message.ends_with(SHAPE_ONLY_NOTE),
            "unexpected warning: {w}"
        );
    }
}

#[test]
fn the_seed_fleet_fits_its_memory_budgets() {
    let l = load_tree(&repo_tree(), "manifests/seed", Secrets::Placeholder)
        .unwrap_or_else(|e| panic!("{e}"));
    for (name, host) in &l.desired.hosts {
        let committed: u64 = l.desired.services_on(name).filter_map(|s| s.memory).sum();
        let budget = host.capacity.unwrap() - host.reserved;
        assert!(committed <= budget, "{name}: {committed} > {budget}");
    }
    let auth = &l.desired.services["zervigo-auth"];
    assert_eq!(auth.runtime, RuntimeKind::Process);
    assert!(auth.version.starts_with("src-") && auth.version.len() == 16);
    assert!(auth.env["JWT_SECRET"].secret);
    assert_eq!(auth.env["JWT_SECRET"].display(), "<redacted>");
    let crm = &l.desired.services["looma-crm"];
    assert_eq!(crm.depends_on, ["ai-service-1", "ai-service-2"]);
    assert!(matches!(
        l.desired.services["mysql"].delivery,
        Delivery::Image { .. }
    ));
}

#[test]
fn the_demo_fleet_is_local_and_needs_no_secrets() {
    let l = load_tree(&repo_tree(), "manifests/demo", Secrets::Resolve)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let demo = &l.desired.hosts["demo"];
    assert_eq!(demo.address, Address::Local);
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(Path::new(&demo.root), cwd.join(".tend-demo"));
    let ports: Vec<u16> = l
        .desired
        .services
        .values()
        .flat_map(|s| s.ports.clone())
        .collect();
    assert_eq!(ports, [18082, 18081, 18083]);
    assert_eq!(l.desired.services["demo-web"].depends_on, ["demo-api"]);
    for s in l.desired.services.values() {
        let Delivery::Source(src) = &s.delivery else {
            panic!("{} has no source", s.name)
        };
        assert!(src.files.iter().any(|f| f.path == "app.py"));
        assert!(matches!(
            s.health.as_ref().unwrap().check,
            HealthCheck::Http { .. }
        ));
    }
}

#[test]
fn moving_the_five_tencent_apps_onto_aliyun_is_refused_with_the_numbers() {
    let mut tree = repo_tree();
    let apps = tree
        .iter_mut()
        .find(|f| f.path == "manifests/seed/tencent-apps.yaml")
        .unwrap();
    let text = String::from_utf8(apps.contents.clone()).unwrap();
    assert_eq!(text.matches("host: tencent").count(), 5);
    apps.contents = text.replace("host: tencent", "host: aliyun").into_bytes();
    let errs = load_tree(&tree, "manifests/seed", Secrets::Placeholder)
        .unwrap_err()
        .0;
    let over: Vec<_> = errs
        .iter()
        .filter(|d| d.message.contains("overcommitted"))
        .collect();
    assert_eq!(over.len(), 1, "{errs:?}");
    let d = over[0];
    assert_eq!(d.file, "manifests/seed/hosts.yaml");
    assert_eq!(d.field, "spec.capacity");
    assert_eq!(d.line, 20);
    for part in [
        "host `aliyun`",
        "limits sum to 3.19GiB",
        "capacity 1.8GiB",
        "reserved 320MiB",
        "leaves 1.49GiB",
        "1.7GiB short",
        "ai-service-1 512MiB",
        "zervigo-auth 256MiB",
        "zervigo-shared 128MiB",
        "looma-crm 384MiB",
        "mysql 384MiB",
    ] {
        assert!(
            d.message.contains(part),
            "{part:?} missing from: {}",
            d.message
        );
    }
}

// ------------------------------------------------------------------ one test per rule

#[test]
fn the_base_fixture_is_valid() {
    let l = load(&base()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.files, 2);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let web = &l.desired.services["web"];
    assert_eq!(web.memory, Some(128 << 20));
    assert_eq!(web.health.as_ref().unwrap().retries, 3);
}

#[test]
fn a_yaml_syntax_error_points_at_its_line() {
    let files = with(
        base(),
        "m/web.yaml",
        "apiVersion: tend/v1\nkind: Service\nmetadata: {name: web\nspec: {}\n",
    );
    let d = &errors(&files)[0];
    assert_eq!(d.file, "m/web.yaml");
    assert!((3..=4).contains(&d.line), "{d}");
}

#[test]
fn an_unknown_field_is_refused_with_its_path() {
    let files = with(
        base(),
        "m/web.yaml",
        &WEB.replace("  ports: [8080]\n", "  ports: [8080]\n  prots: [1]\n"),
    );
    expect_error(
        &files,
        "m/web.yaml",
        10,
        "spec.prots",
        "unknown field `prots`",
    );
}

#[test]
fn a_duplicate_key_is_refused() {
    let files = with(
        base(),
        "m/web.yaml",
        &WEB.replace("  ports: [8080]\n", "  ports: [8080]\n  ports: [8081]\n"),
    );
    expect_error(
        &files,
        "m/web.yaml",
        10,
        "spec.ports",
        "duplicate mapping key",
    );
}

#[test]
fn an_unknown_kind_or_api_version_is_refused() {
    let files = with(
        base(),
        "m/x.yaml",
        "apiVersion: tend/v1\nkind: Pod\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Host\n",
    );
    expect_error(&files, "m/x.yaml", 2, "kind", "unknown kind `Pod`");
    expect_error(
        &files,
        "m/x.yaml",
        5,
        "apiVersion",
        "unknown apiVersion `v1`",
    );
}

#[test]
fn a_duplicate_name_is_refused_with_both_places() {
    let files = with(base(), "m/web2.yaml", WEB);
    let d = expect_error(
        &files,
        "m/web2.yaml",
        3,
        "metadata.name",
        "duplicate Service `web`",
    );
    assert!(d.message.contains("m/web.yaml:3:"), "{d}");
}

#[test]
fn a_host_and_a_service_may_share_a_name() {
    let files = with(
        base(),
        "m/more.yaml",
        &WEB.replace("{name: web}", "{name: box}")
            .replace("[8080]", "[8081]")
            .replace("port: 8080", "port: 8081"),
    );
    load(&files).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_unknown_host_is_refused() {
    let files = with(base(), "m/web.yaml", &WEB.replace("host: box", "host: bx"));
    expect_error(
        &files,
        "m/web.yaml",
        5,
        "spec.host",
        "unknown host `bx` (hosts: box)",
    );
}

#[test]
fn an_unknown_dependency_is_refused() {
    let files = with(base(), "m/web.yaml", &format!("{WEB}  dependsOn: [db]\n"));
    expect_error(
        &files,
        "m/web.yaml",
        12,
        "spec.dependsOn[0]",
        "unknown service `db`",
    );
}

#[test]
fn a_dependency_cycle_is_printed() {
    let a = WEB.to_string() + "  dependsOn: [api]\n";
    let b = WEB
        .replace("{name: web}", "{name: api}")
        .replace("8080", "8081")
        + "  dependsOn: [web]\n";
    let files = with(with(base(), "m/web.yaml", &a), "m/api.yaml", &b);
    let all = errors(&files);
    let cycles: Vec<_> = all.iter().filter(|d| d.message.contains("cycle")).collect();
    assert_eq!(cycles.len(), 1, "{all:?}");
    assert_eq!(cycles[0].message, "dependency cycle: api -> web -> api");
    assert_eq!(
        (cycles[0].file.as_str(), cycles[0].line),
        ("m/web.yaml", 12)
    );
}

#[test]
fn two_services_on_one_port_of_a_host_name_both() {
    let b = WEB.replace("{name: web}", "{name: api}");
    let files = with(base(), "m/api.yaml", &b);
    let d = expect_error(
        &files,
        "m/web.yaml",
        9,
        "spec.ports[0]",
        "port 8080 on host `box` is taken by both `api`",
    );
    assert!(
        d.message.contains("m/api.yaml:9:") && d.message.contains("`web` (m/web.yaml:9:"),
        "{d}"
    );
}

#[test]
fn the_same_port_on_two_hosts_is_fine() {
    let other = HOSTS.replace("{name: box}", "{name: other}");
    let b = WEB
        .replace("{name: web}", "{name: api}")
        .replace("host: box", "host: other");
    let files = with(with(base(), "m/other.yaml", &other), "m/api.yaml", &b);
    load(&files).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn memory_overcommit_prints_capacity_reserved_limits_and_excess() {
    let big = WEB.replace("128MiB", "800MiB");
    let files = with(base(), "m/web.yaml", &big);
    let d = expect_error(
        &files,
        "m/hosts.yaml",
        6,
        "spec.capacity",
        "memory overcommitted on host `box`",
    );
    assert_eq!(
        d.message,
        "memory overcommitted on host `box`: limits sum to 800MiB but capacity 1GiB − reserved 256MiB leaves 768MiB, 32MiB short (web 800MiB)"
    );
}

#[test]
fn a_name_that_is_not_a_dns_label_is_refused() {
    for bad in ["Web", "web_1", "-web", &"a".repeat(64)] {
        let files = with(
            base(),
            "m/web.yaml",
            &WEB.replace("{name: web}", &format!("{{name: \"{bad}\"}}")),
        );
        expect_error(
            &files,
            "m/web.yaml",
            3,
            "metadata.name",
            "is not a DNS label",
        );
    }
}

#[test]
fn podman_needs_an_image_and_an_image_needs_podman() {
    let files = with(
        base(),
        "m/web.yaml",
        &WEB.replace("runtime: process", "runtime: podman"),
    );
    expect_error(
        &files,
        "m/web.yaml",
        6,
        "spec.runtime",
        "runtime podman needs `image`",
    );
    expect_error(
        &files,
        "m/web.yaml",
        7,
        "spec.source",
        "runtime podman runs an image",
    );
    let files = with(
        base(),
        "m/web.yaml",
        &WEB.replace(
            "  source: {path: apps/web}\n",
            "  version: '1'\n  image: docker.io/library/nginx:1\n",
        ),
    );
    expect_error(
        &files,
        "m/web.yaml",
        8,
        "spec.image",
        "`image` needs runtime podman, not process",
    );
}

#[test]
fn a_health_port_outside_the_ports_is_a_warning() {
    let files = with(
        base(),
        "m/web.yaml",
        &WEB.replace("port: 8080,", "port: 9090,"),
    );
    let l = load(&files).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.warnings.len(), 1);
    let w = &l.warnings[0];
    assert_eq!((w.line, w.field.as_str()), (11, "spec.health.http.port"));
    assert!(w.message.contains("9090 is not in the service's ports"));
}

#[test]
fn a_literal_secret_is_refused_without_echoing_it() {
    let files = with(
        base(),
        "m/web.yaml",
        &format!("{WEB}  env:\n    DB_PASSWORD: hunter2\n    api_token: abc\n    DB_HOST: db\n"),
    );
    let d = expect_error(
        &files,
        "m/web.yaml",
        13,
        "spec.env.DB_PASSWORD",
        "secrets never live in Git as plain text: use fromEnv, fromFile or fromAge",
    );
    assert!(!d.to_string().contains("hunter2"));
    expect_error(
        &files,
        "m/web.yaml",
        14,
        "spec.env.api_token",
        "secrets never live in Git",
    );
    assert_eq!(errors(&files).len(), 2);
}

#[test]
fn an_ambiguous_memory_unit_gets_a_hint() {
    for (unit, hint) in [
        ("512M", "write 512MiB (or 512MB)"),
        ("512m", "write 512MiB (or 512MB)"),
        ("2G", "write 2GiB (or 2GB)"),
    ] {
        let files = with(base(), "m/web.yaml", &WEB.replace("128MiB", unit));
        expect_error(&files, "m/web.yaml", 10, "spec.memory", hint);
    }
}

#[test]
fn sizes_parse_in_iec_and_si_units() {
    assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
    assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
    assert_eq!(parse_bytes("2GB"), Ok(2_000_000_000));
    assert_eq!(parse_bytes("512MB"), Ok(512_000_000));
    assert_eq!(parse_bytes("100kB"), Ok(100_000));
    assert_eq!(parse_bytes("4096"), Ok(4096));
    assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
    for bad in [
        "",
        "MiB",
        "1.2.3GiB",
        "-1MiB",
        "1e9",
        "1.GiB",
        "99999999999999TiB",
    ] {
        assert!(parse_bytes(bad).is_err(), "{bad:?} parsed");
    }
    assert_eq!(format_bytes(1536 << 20), "1.5GiB");
    assert_eq!(format_bytes(384 << 20), "384MiB");
    assert_eq!(format_bytes(12), "12B");
}

#[test]
fn a_missing_source_directory_is_refused() {
    let files = with(base(), "m/web.yaml", &WEB.replace("apps/web", "apps/wbe"));
    expect_error(
        &files,
        "m/web.yaml",
        7,
        "spec.source.path",
        "source directory `apps/wbe` is not in the repository",
    );
    let files = with(base(), "m/web.yaml", &WEB.replace("apps/web", "../etc"));
    expect_error(&files, "m/web.yaml", 7, "spec.source.path", "without `..`");
}

#[test]
fn a_version_is_required_without_a_source() {
    let files = with(
        base(),
        "m/web.yaml",
        &WEB.replace("  source: {path: apps/web}\n", ""),
    );
    expect_error(
        &files,
        "m/web.yaml",
        5,
        "spec.version",
        "version is required unless the service has a `source`",
    );
}

#[test]
fn a_source_version_follows_its_contents() {
    let v1 = load(&base()).unwrap().desired.services["web"]
        .version
        .clone();
    let changed = with(base(), "apps/web/app.py", "print('bye')\n");
    let v2 = load(&changed).unwrap().desired.services["web"]
        .version
        .clone();
    let mut exec = base();
    exec[2].executable = true;
    let v3 = load(&exec).unwrap().desired.services["web"].version.clone();
    let mut reordered = base();
    reordered.push(tf("apps/web/a.txt", "x"));
    reordered.reverse();
    let v4 = load(&reordered).unwrap().desired.services["web"]
        .version
        .clone();
    let mut same = base();
    same.push(tf("apps/web/a.txt", "x"));
    let v5 = load(&same).unwrap().desired.services["web"].version.clone();
    assert!(v1.starts_with("src-") && v1.len() == 16);
    assert_ne!(v1, v2);
    assert_ne!(v1, v3);
    assert_eq!(v4, v5);
    let declared = with(
        base(),
        "m/web.yaml",
        &WEB.replace("runtime: process", "runtime: process\n  version: 1.10"),
    );
    assert_eq!(
        load(&declared).unwrap().desired.services["web"].version,
        "1.10"
    );
}

#[test]
fn a_broken_host_key_is_refused() {
    let files = with(
        base(),
        "m/hosts.yaml",
        &format!("{HOSTS}  hostKeys: [\"ssh-ed25519 AAAAnotakey\", \"box ssh-ed25519 AAAA\"]\n"),
    );
    expect_error(
        &files,
        "m/hosts.yaml",
        7,
        "spec.hostKeys[0]",
        "expected an OpenSSH public key",
    );
    expect_error(
        &files,
        "m/hosts.yaml",
        7,
        "spec.hostKeys[1]",
        "looks like a known_hosts line",
    );
}

#[test]
fn a_remote_root_must_be_absolute() {
    let files = with(
        base(),
        "m/hosts.yaml",
        &format!("{HOSTS}  root: srv/tend\n"),
    );
    expect_error(
        &files,
        "m/hosts.yaml",
        7,
        "spec.root",
        "must be an absolute path on the host",
    );
}

#[test]
fn health_needs_exactly_one_check_and_real_durations() {
    let files = with(
        base(),
        "m/web.yaml",
        &WEB.replace(
            "health: {http: {port: 8080, path: /health}}",
            "health: {tcp: {port: 8080}, command: [true]}",
        ),
    );
    expect_error(
        &files,
        "m/web.yaml",
        11,
        "spec.health",
        "set exactly one of http, tcp or command",
    );
    let files = with(
        base(),
        "m/web.yaml",
        &WEB.replace("path: /health}", "path: /health}, timeout: soon"),
    );
    expect_error(
        &files,
        "m/web.yaml",
        11,
        "spec.health.timeout",
        "not a duration",
    );
}

#[test]
fn every_problem_is_collected_in_one_run() {
    let files = with(
        with(base(), "m/web.yaml", &WEB.replace("host: box", "host: nowhere").replace("128MiB", "1M")),
        "m/api.yaml",
        "apiVersion: tend/v1\nkind: Service\nmetadata: {name: Api}\nspec: {host: box, runtime: process, command: [x], bogus: 1}\n",
    );
    let all = errors(&files);
    assert!(all.len() >= 3, "{all:?}");
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "diagnostics come in file and line order");
    assert!(all.iter().any(|d| d.field == "spec.bogus"));
}

#[test]
fn secrets_resolve_from_the_controller_environment_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    std::fs::write(&path, "s3cret\n").unwrap();
    let var = "TEND_TEST_MANIFEST_TOKEN_6b1f";
    std::env::set_var(var, "tok-value");
    let text = format!(
        "{WEB}  env:\n    API_TOKEN: {{fromEnv: {var}}}\n    DB_PASSWORD: {{fromFile: {}}}\n",
        path.display()
    );
    let files = with(base(), "m/web.yaml", &text);
    let l = load_tree(&files, "m", Secrets::Resolve).unwrap_or_else(|e| panic!("{e}"));
    let env = &l.desired.services["web"].env;
    assert_eq!(
        (env["API_TOKEN"].value.as_str(), env["API_TOKEN"].secret),
        ("tok-value", true)
    );
    assert_eq!(env["DB_PASSWORD"].value, "s3cret");

    let missing = text.replace(var, "TEND_TEST_MANIFEST_UNSET_9c2d");
    let files = with(base(), "m/web.yaml", &missing);
    let errs = load_tree(&files, "m", Secrets::Resolve).unwrap_err().0;
    assert!(
        errs[0]
            .message
            .contains("`TEND_TEST_MANIFEST_UNSET_9c2d` is not set"),
        "{errs:?}"
    );
    let l = load_tree(&files, "m", Secrets::Placeholder).unwrap();
    assert_eq!(l.desired.services["web"].env["API_TOKEN"].value, UNRESOLVED);
    assert_eq!(l.warnings.len(), 1);
}

#[test]
fn an_empty_manifests_directory_is_an_error_not_an_empty_fleet() {
    let errs = load_tree(&base(), "nothing-here", Secrets::Placeholder)
        .unwrap_err()
        .0;
    assert!(errs[0].message.contains("no manifest files"));
}

#[test]
fn load_path_finds_the_repository_root_for_sources() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    std::fs::create_dir_all(dir.path().join("deploy/m")).unwrap();
    std::fs::create_dir_all(dir.path().join("apps/web/target")).unwrap();
    std::fs::write(
        dir.path().join("deploy/m/all.yaml"),
        format!("{HOSTS}---\n{WEB}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("apps/web/app.py"), "x").unwrap();
    std::fs::write(dir.path().join("apps/web/target/junk"), "x").unwrap();
    let l = load_path(&dir.path().join("deploy/m"), Secrets::Placeholder)
        .unwrap_or_else(|e| panic!("{e}"));
    let Delivery::Source(src) = &l.desired.services["web"].delivery else {
        panic!()
    };
    assert_eq!(src.path, "apps/web");
    assert_eq!(
        src.files
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        ["app.py"]
    );
    // A single file works too, and errors name the file as given.
    std::fs::write(
        dir.path().join("deploy/m/all.yaml"),
        format!("{HOSTS}---\n{}", WEB.replace("box", "nope")),
    )
    .unwrap();
    let errs = load_path(&dir.path().join("deploy/m/all.yaml"), Secrets::Placeholder)
        .unwrap_err()
        .0;
    assert!(errs[0].file.ends_with("deploy/m/all.yaml"), "{errs:?}");
    assert_eq!(errs[0].line, 12);
}

#[test]
fn a_diagnostic_displays_as_file_line_column_field_message() {
    let d = Diagnostic::new(
        "m/a.yaml",
        raw::At { line: 3, column: 5 },
        "spec.ports[1]",
        "port 0 is not a port",
    );
    assert_eq!(
        d.to_string(),
        "m/a.yaml:3:5: spec.ports[1]: port 0 is not a port"
    );
}

// ------------------------------------------------------------------ robustness

fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("apiVersion: tend/v1\n".to_string()),
        Just("kind: Service\n".to_string()),
        Just("kind: Host\n".to_string()),
        Just("metadata: {name: web}\n".to_string()),
        Just("spec:\n".to_string()),
        Just("  host: box\n".to_string()),
        Just("  runtime: process\n".to_string()),
        Just("  ports: [8080, 8080]\n".to_string()),
        Just("  memory: 1.5GiB\n".to_string()),
        Just("  env: {A: {fromEnv: B}}\n".to_string()),
        Just("  dependsOn: [web]\n".to_string()),
        Just("  address: local\n".to_string()),
        Just("---\n".to_string()),
        Just("&a [*a]\n".to_string()),
        Just("<<: *x\n".to_string()),
        "[ -~]{0,12}\n",
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_bytes_never_panic_the_loader(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut files = base();
        files.push(TreeFile { path: "m/fuzz.yaml".into(), executable: false, contents: bytes });
        let _ = load(&files);
    }

    #[test]
    fn a_mutated_valid_manifest_never_panics_the_loader(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
    ) {
        let mut bytes = format!("{HOSTS}---\n{WEB}  env: {{A: b, C: {{fromEnv: D}}}}\n  suspend: false\n").into_bytes();
        for (i, b) in edits {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        let files = vec![
            TreeFile { path: "m/all.yaml".into(), executable: false, contents: bytes },
            tf("apps/web/app.py", "x"),
        ];
        match load(&files) {
            Ok(_) => {}
            Err(d) => prop_assert!(!d.0.is_empty()),
        }
    }

    #[test]
    fn arbitrary_yaml_never_panics_the_loader(text in yamlish()) {
        let files = with(base(), "m/fuzz.yaml", &text);
        match load(&files) {
            Ok(l) => prop_assert!(l.desired.hosts.contains_key("box")),
            Err(d) => prop_assert!(!d.0.is_empty()),
        }
    }
}

// ------------------------------------------------------------------ fromAge

/// WEB with `env: {NAME: {fromAge: <armored>}}` as a block scalar; the
/// `fromAge` key sits on line 14.
fn with_age(name: &str, armored: &str) -> Vec<TreeFile> {
    let block: String = armored.lines().map(|l| format!("        {l}\n")).collect();
    with(
        base(),
        "m/web.yaml",
        &format!("{WEB}  env:\n    {name}:\n      fromAge: |\n{block}"),
    )
}

fn age_key() -> (::age::x25519::Identity, encrypted::AgeIdentities) {
    use ::age::secrecy::ExposeSecret;
    let key = ::age::x25519::Identity::generate();
    let text = format!("# test key\n{}\n", key.to_string().expose_secret());
    let ids = encrypted::AgeIdentities::from_text(Path::new("/etc/tend/age.key"), &text);
    (key, ids)
}

fn armor(to: &::age::x25519::Recipient, plain: &str) -> String {
    ::age::encrypt_and_armor(to, plain.as_bytes()).unwrap()
}

#[test]
fn an_age_encrypted_value_decrypts_into_a_secret_without_echos_newline() {
    let (key, ids) = age_key();
    let files = with_age("DB_PASSWORD", &armor(&key.to_public(), "pa55-from-age\n"));
    let l =
        load_tree_with(&files, "m", Secrets::Resolve, Some(&ids)).unwrap_or_else(|e| panic!("{e}"));
    let v = &l.desired.services["web"].env["DB_PASSWORD"];
    assert_eq!((v.value.as_str(), v.secret), ("pa55-from-age", true));
    assert_eq!(format!("{v:?}"), "\"<redacted>\"");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn an_age_value_for_another_key_is_refused_at_its_file_and_line() {
    let (_, ids) = age_key();
    let (stranger, _) = age_key();
    let files = with_age("DB_PASSWORD", &armor(&stranger.to_public(), "x"));
    for secrets in [Secrets::Resolve, Secrets::Placeholder] {
        let errs = load_tree_with(&files, "m", secrets, Some(&ids))
            .unwrap_err()
            .0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        let d = &errs[0];
        assert_eq!(
            (d.file.as_str(), d.line, d.field.as_str()),
            ("m/web.yaml", 14, "spec.env.DB_PASSWORD.fromAge"),
            "{d}"
        );
        assert!(d.message.contains("/etc/tend/age.key"), "{d}");
    }
}

#[test]
fn garbage_armor_is_refused_at_its_file_and_line_with_or_without_a_key() {
    let (_, ids) = age_key();
    let garbage = "-----BEGIN AGE ENCRYPTED FILE-----\nYWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IGdhcmJhZ2UK\n-----END AGE ENCRYPTED FILE-----";
    let files = with_age("API_TOKEN", garbage);
    for age in [Some(&ids), None] {
        let errs = load_tree_with(&files, "m", Secrets::Placeholder, age)
            .unwrap_err()
            .0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            (errs[0].line, errs[0].field.as_str()),
            (14, "spec.env.API_TOKEN.fromAge")
        );
        assert!(errs[0].message.contains("not an age file"), "{}", errs[0]);
    }
    let plain = with(
        base(),
        "m/web.yaml",
        &format!("{WEB}  env:\n    API_TOKEN:\n      fromAge: hunter2\n"),
    );
    let errs = load_tree_with(&plain, "m", Secrets::Resolve, Some(&ids))
        .unwrap_err()
        .0;
    assert!(errs[0].message.contains("ASCII-armored"), "{}", errs[0]);
    assert!(!errs[0].to_string().contains("hunter2"), "{}", errs[0]);
}

#[test]
fn without_identities_validate_checks_the_shape_only_and_says_so() {
    let (key, _) = age_key();
    let files = with_age("DB_PASSWORD", &armor(&key.to_public(), "never-seen"));
    let l = load_tree(&files, "m", Secrets::Placeholder).unwrap_or_else(|e| panic!("{e}"));
    let v = &l.desired.services["web"].env["DB_PASSWORD"];
    assert_eq!((v.value.as_str(), v.secret), (UNRESOLVED, true));
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    let w = &l.warnings[0];
    assert_eq!(
        (w.line, w.field.as_str()),
        (14, "spec.env.DB_PASSWORD.fromAge")
    );
    assert!(w.message.ends_with(SHAPE_ONLY_NOTE), "{w}");
    // Where secrets are resolved, a missing key is an error, never a placeholder.
    let errs = load_tree(&files, "m", Secrets::Resolve).unwrap_err().0;
    assert!(
        errs[0].message.contains("secrets.age_identities"),
        "{}",
        errs[0]
    );
}

#[test]
fn an_unreadable_identity_file_is_an_error_at_each_encrypted_value() {
    let (key, _) = age_key();
    let files = with_age("DB_PASSWORD", &armor(&key.to_public(), "x"));
    let missing = encrypted::AgeIdentities::read(Path::new("/nonexistent/tend-age.key"));
    let errs = load_tree_with(&files, "m", Secrets::Resolve, Some(&missing))
        .unwrap_err()
        .0;
    assert_eq!(errs[0].line, 14);
    assert!(
        errs[0]
            .message
            .contains("cannot read age identities /nonexistent/tend-age.key"),
        "{}",
        errs[0]
    );
}

#[test]
fn the_seed_fleet_decrypts_with_its_test_only_identity() {
    let ids =
        encrypted::AgeIdentities::read(&repo().join("manifests/seed/TEST-ONLY-age-identity.txt"));
    let l = load_tree_with(
        &repo_tree(),
        "manifests/seed",
        Secrets::Placeholder,
        Some(&ids),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let auth = &l.desired.services["zervigo-auth"];
    assert!(auth.env["JWT_SECRET"].secret);
    assert_ne!(auth.env["JWT_SECRET"].value, UNRESOLVED);
    assert!(
        l.warnings
            .iter()
            .all(|w| !w.message.ends_with(SHAPE_ONLY_NOTE)),
        "{:?}",
        l.warnings
    );
}

#[test]
fn re_encrypting_the_same_value_keeps_the_config_hash_and_a_new_value_changes_it() {
    let (key, ids) = age_key();
    let hash = |plain: &str| {
        let files = with_age("DB_PASSWORD", &armor(&key.to_public(), plain));
        let l = load_tree_with(&files, "m", Secrets::Resolve, Some(&ids))
            .unwrap_or_else(|e| panic!("{e}"));
        l.desired.services["web"].config_hash()
    };
    // Each encryption differs (a new file key): only the plaintext counts,
    // so rotating the age key restarts nothing, rotating the secret does.
    assert_eq!(hash("one"), hash("one"));
    assert_ne!(hash("one"), hash("two"));
    assert!(!hash("one").contains("one"));
}
