//! `tend validate` as people and CI run it: the real binary on real files.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tend(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tend"))
        .args(args)
        .current_dir(cwd)
        .env_remove("TEND_JWT_SECRET")
        .env_remove("TEND_AGE_IDENTITIES")
        .output()
        .expect("run tend");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_repository_validates_and_prints_each_hosts_budget() {
    let (code, out, err) = tend(&["validate"], &repo());
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let aliyun = out
        .lines()
        .find(|l| l.starts_with("aliyun "))
        .expect("an aliyun row");
    assert!(aliyun.contains("1.44GiB / 1.49GiB"), "{aliyun}");
    assert!(
        aliyun.contains("3306,5432,6379,7474,7687,8080,9200"),
        "{aliyun}"
    );
    let tencent = out
        .lines()
        .find(|l| l.starts_with("tencent "))
        .expect("a tencent row");
    assert!(tencent.contains("416MiB"), "{tencent}");
    assert!(out.contains("valid: 17 services in 5 files"), "{out}");
    assert!(err.contains("checked with placeholders"), "{err}");
    assert!(
        err.contains("age-encrypted values checked for shape only"),
        "{err}"
    );
}

#[test]
fn with_the_seed_test_only_identity_its_encrypted_values_decrypt() {
    let (code, out, err) = tend(
        &[
            "validate",
            "manifests/seed",
            "--age-identities",
            "manifests/seed/TEST-ONLY-age-identity.txt",
        ],
        &repo(),
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(!err.contains("shape only"), "{err}");
    let (code, out, _) = tend(
        &[
            "validate",
            "manifests/seed",
            "--age-identities",
            "/nonexistent/age.key",
        ],
        &repo(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .all(|l| l.contains(".fromAge: cannot read age identities")),
        "{out}"
    );
}

#[test]
fn a_broken_manifest_exits_1_with_one_line_per_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("m")).unwrap();
    std::fs::write(
        dir.path().join("m/fleet.yaml"),
        "apiVersion: tend/v1\nkind: Host\nmetadata: {name: box}\nspec: {address: local}\n---\n\
         apiVersion: tend/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  host: bx\n  runtime: process\n  version: '1'\n  command: [x]\n  memory: 1G\n",
    )
    .unwrap();
    let (code, out, _) = tend(&["validate", "m"], dir.path());
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "m/fleet.yaml:10:9: spec.host: unknown host `bx` (hosts: box)",
            "m/fleet.yaml:14:11: spec.memory: `1G` is not a size: `G` is ambiguous, write 1GiB (or 1GB)",
        ]
    );
}

#[test]
fn json_output_is_for_machines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("x.yaml"),
        "apiVersion: tend/v2\nkind: Host\n",
    )
    .unwrap();
    let (code, out, _) = tend(&["validate", "x.yaml", "--output", "json"], dir.path());
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["file"], "x.yaml");
    assert_eq!(v["errors"][0]["line"], 1);
    assert_eq!(v["errors"][0]["field"], "apiVersion");

    let (code, out, _) = tend(&["validate", "manifests/demo", "--output", "json"], &repo());
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["hosts"][0]["name"], "demo");
    assert_eq!(v["hosts"][0]["committed"], 3 * 64 * 1024 * 1024);
}
