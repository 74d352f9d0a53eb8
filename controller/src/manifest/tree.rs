//! The repository tree manifests are read from: a directory on disk or the
//! files of a Git commit held in memory. Both `load` (manifest files) and
//! `validate` (`source.path` directories) read through it.

use super::TreeFile;
use crate::model::SourceFile;
use std::path::{Path, PathBuf};

/// Directories never read from a working tree.
const SKIP_DIRS: &[&str] = &[".git", "target", ".venv", "__pycache__", "node_modules"];

/// Where the validator reads files from.
pub(crate) trait Tree {
    /// Manifest files (`*.yaml`, `*.yml`) under `dir` (or `dir` itself when it is
    /// a file), repo-relative paths, sorted.
    fn manifests(&self, dir: &str) -> Result<Vec<(String, Vec<u8>)>, String>;
    /// Files under `dir`, paths relative to it; None when it does not exist.
    fn dir(&self, dir: &str) -> Result<Option<Vec<SourceFile>>, String>;
}

/// A YAML file, but not the controller's own config (`tend.yaml` may sit
/// beside the manifests; it is not one of them).
fn is_manifest(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    (path.ends_with(".yaml") || path.ends_with(".yml")) && name != "tend.yaml" && name != "tend.yml"
}

pub(crate) struct SliceTree<'a>(pub(crate) &'a [TreeFile]);

impl Tree for SliceTree<'_> {
    fn manifests(&self, dir: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out: Vec<(String, Vec<u8>)> = self
            .0
            .iter()
            .filter(|f| f.path == dir || (f.path.starts_with(&prefix) && is_manifest(&f.path)))
            .map(|f| (f.path.clone(), f.contents.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn dir(&self, dir: &str) -> Result<Option<Vec<SourceFile>>, String> {
        let prefix = format!("{dir}/");
        let files: Vec<SourceFile> = self
            .0
            .iter()
            .filter_map(|f| {
                f.path.strip_prefix(&prefix).map(|rel| SourceFile {
                    path: rel.to_string(),
                    executable: f.executable,
                    contents: f.contents.clone(),
                })
            })
            .collect();
        Ok((!files.is_empty()).then_some(files))
    }
}

pub(crate) struct FsTree {
    pub(crate) root: PathBuf,
}

impl FsTree {
    /// Every regular file under `dir`, relative to `dir`, sorted. Symlinked
    /// directories are not followed (no loops, nothing outside the tree).
    fn walk(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), dir.to_path_buf())];
        while let Some((rel, path)) = stack.pop() {
            let rd = std::fs::read_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            for entry in rd {
                let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let child_rel = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let ft = entry
                    .file_type()
                    .map_err(|e| format!("{}: {e}", entry.path().display()))?;
                if ft.is_dir() {
                    if !SKIP_DIRS.contains(&name.as_str()) {
                        stack.push((child_rel, entry.path()));
                    }
                } else if ft.is_file() || (ft.is_symlink() && entry.path().is_file()) {
                    out.push((child_rel, entry.path()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn join(&self, dir: &str) -> PathBuf {
        if dir.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir)
        }
    }
}

impl Tree for FsTree {
    fn manifests(&self, dir: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        let base = self.join(dir);
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        if base.is_file() {
            return Ok(vec![(dir.to_string(), read(&base)?)]);
        }
        let mut out = Vec::new();
        for (rel, path) in Self::walk(&base)? {
            if is_manifest(&rel) {
                let repo_rel = if dir.is_empty() {
                    rel
                } else {
                    format!("{dir}/{rel}")
                };
                out.push((repo_rel, read(&path)?));
            }
        }
        Ok(out)
    }

    fn dir(&self, dir: &str) -> Result<Option<Vec<SourceFile>>, String> {
        let base = self.join(dir);
        if !base.is_dir() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for (rel, path) in Self::walk(&base)? {
            let contents = std::fs::read(&path).map_err(|e| format!("{rel}: {e}"))?;
            out.push(SourceFile {
                path: rel,
                executable: is_executable(&path),
                contents,
            });
        }
        Ok(Some(out))
    }
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(_: &Path) -> bool {
    false
}

/// `./a/b/` → `a/b`; None for absolute paths, `..`, or the root itself.
pub(crate) fn normalize(p: &str) -> Option<String> {
    if p.starts_with('/') || p.contains('\0') || p.contains('\\') {
        return None;
    }
    let parts: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return None;
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_controller_config_beside_the_manifests_is_not_a_manifest() {
        assert!(super::is_manifest("m/web.yaml"));
        assert!(super::is_manifest("m/hosts.yml"));
        assert!(!super::is_manifest("m/tend.yaml"));
        assert!(!super::is_manifest("tend.yml"));
        assert!(super::is_manifest("m/mytend.yaml"));
    }
}
