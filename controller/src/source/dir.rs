//! A local directory, for development and the demo: read on every poll,
//! watched (debounced) so an edit triggers a reconcile at once.

use super::{Poll, Snapshot, SourceError, TreeFile};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// Directory names never read nor watched: build output, VCS data, tend's cache.
const SKIP: &[&str] = &["target", "node_modules", "__pycache__"];
const MAX_FILE: u64 = 16 << 20;
const MAX_FILES: usize = 50_000;

pub struct DirSource {
    root: PathBuf,
    /// Loose files at the root are read only when the manifests live there:
    /// logs and notes next to the repository must not count as changes.
    root_files: bool,
    /// tend's own state (cache, ledger) when it lies under the root: its
    /// writes must neither trigger a reconcile nor change the revision.
    exclude: Vec<PathBuf>,
    seen: Option<String>,
    watcher: Option<Debouncer<notify::RecommendedWatcher, RecommendedCache>>,
}

impl DirSource {
    /// `manifests` is the manifests directory, relative to `root`.
    pub fn new(root: &Path, manifests: &str) -> DirSource {
        let m = manifests.trim_matches('/');
        // Absolute, so watcher events (absolute paths) can be matched against it.
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        DirSource {
            root,
            root_files: m.is_empty() || m == ".",
            exclude: Vec::new(),
            seen: None,
            watcher: None,
        }
    }

    /// Leave these paths (files or directories) out of reads and watches.
    pub fn excluding(mut self, paths: &[PathBuf]) -> DirSource {
        self.exclude = paths.iter().map(|p| absolute(p)).collect();
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub async fn poll(&mut self) -> Result<Poll, SourceError> {
        let root = self.root.clone();
        let root_files = self.root_files;
        let exclude = self.exclude.clone();
        let snap =
            tokio::task::spawn_blocking(move || read_dir_snapshot(&root, root_files, &exclude))
                .await
                .map_err(|e| SourceError::Io {
                    path: self.root.display().to_string(),
                    why: e.to_string(),
                })??;
        if self.seen.as_deref() == Some(snap.revision.as_str()) {
            return Ok(Poll::Unchanged {
                revision: snap.revision,
            });
        }
        self.seen = Some(snap.revision.clone());
        Ok(Poll::Changed(snap))
    }

    /// Watch the root and its (not skipped) subdirectories; `tx` gets one
    /// message per debounced burst of changes.
    pub fn watch(&mut self, tx: mpsc::UnboundedSender<()>) -> Result<(), SourceError> {
        let root = self.root.clone();
        let root_files = self.root_files;
        let exclude = self.exclude.clone();
        let mut deb = new_debouncer(
            Duration::from_millis(300),
            None,
            move |res: DebounceEventResult| {
                if let Ok(events) = res {
                    let relevant = events.iter().any(|e| {
                        e.paths.iter().any(|p| {
                            if exclude.iter().any(|x| p.starts_with(x)) {
                                return false;
                            }
                            p.strip_prefix(&root)
                                .map(|rel| {
                                    !skipped_path(rel)
                                        && (root_files || rel.components().count() > 1)
                                })
                                .unwrap_or(false)
                        }) && !e.kind.is_access()
                    });
                    if relevant {
                        let _ = tx.send(());
                    }
                }
            },
        )
        .map_err(|e| super::io_err(&self.root, e))?;
        // Not recursive at the root: build output (target/) must not be watched.
        deb.watch(&self.root, RecursiveMode::NonRecursive)
            .map_err(|e| super::io_err(&self.root, e))?;
        let entries = std::fs::read_dir(&self.root).map_err(|e| super::io_err(&self.root, e))?;
        for entry in entries.flatten() {
            let p = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir
                && !skipped_name(&entry.file_name().to_string_lossy())
                && !self.exclude.contains(&p)
            {
                deb.watch(&p, RecursiveMode::Recursive)
                    .map_err(|e| super::io_err(&p, e))?;
            }
        }
        self.watcher = Some(deb);
        Ok(())
    }
}

/// Canonical when it exists; else made absolute and canonical up to the
/// nearest existing parent (a cache directory is created later).
fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => absolute(dir).join(name),
        _ => abs,
    }
}

fn skipped_name(name: &str) -> bool {
    name.starts_with('.') || SKIP.contains(&name)
}

fn skipped_path(rel: &Path) -> bool {
    rel.components()
        .any(|c| skipped_name(&c.as_os_str().to_string_lossy()))
}

/// Read every file under `root` (skipping hidden and build directories) and
/// name the result by a digest of paths, modes and contents.
pub fn read_dir_snapshot(
    root: &Path,
    root_files: bool,
    exclude: &[PathBuf],
) -> Result<Snapshot, SourceError> {
    let mut files = Vec::new();
    walk(root, "", root_files, exclude, &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut h = Sha256::new();
    for f in &files {
        h.update((f.path.len() as u64).to_le_bytes());
        h.update(f.path.as_bytes());
        h.update([u8::from(f.executable)]);
        h.update((f.contents.len() as u64).to_le_bytes());
        h.update(&f.contents);
    }
    let revision = format!("dir-{}", hex::encode(&h.finalize()[..6]));
    Ok(Snapshot {
        revision,
        subject: root.display().to_string(),
        files,
    })
}

fn walk(
    dir: &Path,
    rel: &str,
    files_here: bool,
    exclude: &[PathBuf],
    out: &mut Vec<TreeFile>,
) -> Result<(), SourceError> {
    use std::os::unix::fs::PermissionsExt;
    let entries = std::fs::read_dir(dir).map_err(|e| super::io_err(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| super::io_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if skipped_name(&name)
            || name.ends_with('~')
            || name.ends_with(".swp")
            || name.ends_with(".log")
        {
            continue;
        }
        let path = entry.path();
        if exclude.contains(&path) {
            continue;
        }
        let ty = entry.file_type().map_err(|e| super::io_err(&path, e))?;
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if ty.is_dir() {
            walk(&path, &child, true, exclude, out)?;
        } else if ty.is_file() && files_here {
            let meta = entry.metadata().map_err(|e| super::io_err(&path, e))?;
            if meta.len() > MAX_FILE {
                continue;
            }
            if out.len() >= MAX_FILES {
                return Err(super::io_err(dir, format!("more than {MAX_FILES} files")));
            }
            // A file removed between listing and reading is simply gone.
            let contents = match std::fs::read(&path) {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(super::io_err(&path, e)),
            };
            out.push(TreeFile {
                path: child,
                executable: meta.permissions().mode() & 0o111 != 0,
                contents,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_changed_file_is_a_new_revision_and_build_output_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("manifests")).unwrap();
        std::fs::create_dir_all(d.path().join("target/debug")).unwrap();
        std::fs::write(d.path().join("manifests/a.yaml"), "a: 1\n").unwrap();
        std::fs::write(d.path().join("target/debug/x"), "bin").unwrap();
        std::fs::write(d.path().join("notes.log"), "x").unwrap();
        let mut src = DirSource::new(d.path(), "manifests");
        let Poll::Changed(s) = src.poll().await.unwrap() else {
            panic!("first poll")
        };
        assert_eq!(s.files.len(), 1);
        assert_eq!(s.files[0].path, "manifests/a.yaml");
        std::fs::write(d.path().join("target/debug/x"), "bin2").unwrap();
        std::fs::write(d.path().join("notes.log"), "y").unwrap();
        assert!(matches!(src.poll().await.unwrap(), Poll::Unchanged { .. }));
        std::fs::write(d.path().join("manifests/a.yaml"), "a: 2\n").unwrap();
        let Poll::Changed(s2) = src.poll().await.unwrap() else {
            panic!("edit not seen")
        };
        assert_ne!(s.revision, s2.revision);
    }

    #[tokio::test]
    async fn tends_own_cache_under_the_root_is_neither_read_nor_a_change() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("m")).unwrap();
        std::fs::write(d.path().join("m/a.yaml"), "a: 1\n").unwrap();
        // Not canonical, as tend.yaml may give it; the ledger not yet created.
        let cache = d.path().join("m/../cache");
        std::fs::create_dir_all(&cache).unwrap();
        let ledger = d.path().join("state/ledger.jsonl");
        let mut src = DirSource::new(d.path(), "m").excluding(&[cache.clone(), ledger.clone()]);
        let (tx, mut rx) = mpsc::unbounded_channel();
        src.watch(tx).unwrap();
        let Poll::Changed(s) = src.poll().await.unwrap() else {
            panic!("first poll")
        };
        std::fs::write(cache.join("state.json"), "{}").unwrap();
        std::fs::create_dir_all(d.path().join("state")).unwrap();
        std::fs::write(&ledger, "{}").unwrap();
        assert!(matches!(src.poll().await.unwrap(), Poll::Unchanged { .. }));
        assert_eq!(s.files.len(), 1);
        let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert!(got.is_err(), "a cache write triggered a reconcile");
    }

    #[tokio::test]
    async fn an_edit_is_seen_by_the_watcher() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("manifests")).unwrap();
        let mut src = DirSource::new(d.path(), "manifests");
        let (tx, mut rx) = mpsc::unbounded_channel();
        src.watch(tx).unwrap();
        std::fs::write(d.path().join("manifests/a.yaml"), "a: 1\n").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
        assert!(matches!(got, Ok(Some(()))), "no change event");
    }
}
