//! The ledger: one JSON line per reconcile that did something or failed,
//! appended and fsync'd on the controller, rotated by size, read back newest
//! first in pages. It outlives the process (status history does not).
//!
//! Entries are redacted before they get here; the file never holds a secret
//! value because nothing written to it carries one.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `ledger:` in tend.yaml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// The JSON-lines file; default `<cache_dir>/ledger.jsonl`.
    pub path: Option<PathBuf>,
    /// Past this size the file is rotated (`ledger.jsonl.1`, …).
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub keep: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            path: None,
            max_bytes: 10 << 20,
            keep: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {why}")]
    Io { path: String, why: String },
    #[error("ledger entry: {0}")]
    Encode(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> LedgerError + '_ {
    move |e| LedgerError::Io {
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

/// One reconcile, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the ledger: grows across restarts (reconcile ids do not).
    #[serde(default)]
    pub seq: u64,
    pub controller: String,
    pub reconcile: u64,
    /// Unix seconds the reconcile started.
    pub at: f64,
    pub duration_seconds: f64,
    /// schedule, api, cli, webhook, watch, startup
    pub trigger: String,
    /// Who asked: `api token`, `signed webhook`, `schedule`, …
    pub who: String,
    pub revision: Option<String>,
    /// success, partial, failure
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Window holds a manual override let through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrode: Vec<String>,
    /// The approved plan this reconcile applied, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    pub actions: Vec<ActionEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionEntry {
    pub kind: String,
    pub service: String,
    pub host: String,
    pub result: String,
    pub version_before: Option<String>,
    pub version_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The end of what the host printed, redacted.
    #[serde(default)]
    pub output: String,
    /// How long the action took (0 in entries written before it was kept).
    #[serde(default)]
    pub duration_seconds: f64,
}

impl Entry {
    pub fn touches(&self, service: &str) -> bool {
        self.actions.iter().any(|a| a.service == service)
    }
}

/// A page: newest first; `next_before` asks for the one after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub next_before: Option<u64>,
}

#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    /// The last seq written; the lock also orders appends and rotations.
    last: Mutex<u64>,
}

impl Ledger {
    /// Open (or start) the ledger at `path`, continuing its numbering.
    pub fn open(path: PathBuf, cfg: &LedgerConfig) -> Result<Ledger, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let l = Ledger {
            path,
            max_bytes: cfg.max_bytes.max(1),
            keep: cfg.keep,
            last: Mutex::new(0),
        };
        let last = l.read_all()?.last().map_or(0, |e| e.seq);
        *l.lock() = last;
        Ok(l)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rotated(&self, i: usize) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    }

    /// Append `e` (its seq assigned here), fsync'd; rotate first when the
    /// line would take the file past `max_bytes`. The entry as written.
    pub fn append(&self, mut e: Entry) -> Result<Entry, LedgerError> {
        let mut last = self.lock();
        e.seq = *last + 1;
        let mut line = serde_json::to_string(&e).map_err(|x| LedgerError::Encode(x.to_string()))?;
        line.push('\n');
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if size > 0 && size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        if torn(&self.path) {
            // A crash cut the last line: end it, so this entry is a line of its own.
            line.insert(0, '\n');
        }
        f.write_all(line.as_bytes()).map_err(io(&self.path))?;
        f.sync_all().map_err(io(&self.path))?;
        *last = e.seq;
        Ok(e)
    }

    fn rotate(&self) -> Result<(), LedgerError> {
        if self.keep == 0 {
            return std::fs::remove_file(&self.path).map_err(io(&self.path));
        }
        let oldest = self.rotated(self.keep);
        if oldest.exists() {
            std::fs::remove_file(&oldest).map_err(io(&oldest))?;
        }
        for i in (1..self.keep).rev() {
            let from = self.rotated(i);
            if from.exists() {
                let to = self.rotated(i + 1);
                std::fs::rename(&from, &to).map_err(io(&from))?;
            }
        }
        let to = self.rotated(1);
        std::fs::rename(&self.path, &to).map_err(io(&self.path))?;
        // The rename is durable once the directory is.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Every entry kept, oldest first. A line that does not parse (a write
    /// torn by a crash) is skipped.
    pub fn read_all(&self) -> Result<Vec<Entry>, LedgerError> {
        let mut files: Vec<PathBuf> = (1..=self.keep).rev().map(|i| self.rotated(i)).collect();
        files.push(self.path.clone());
        let mut out = Vec::new();
        for f in files {
            let file = match File::open(&f) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&f)(e)),
            };
            for line in BufReader::new(file).lines() {
                let line = line.map_err(io(&f))?;
                if let Ok(e) = serde_json::from_str::<Entry>(&line) {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    /// Up to `limit` entries older than `before` (seq), newest first.
    pub fn page(
        &self,
        limit: usize,
        before: Option<u64>,
        service: Option<&str>,
    ) -> Result<Page, LedgerError> {
        let _order = self.lock();
        Ok(page_of(self.read_all()?, limit, before, service))
    }
}

/// Whether the file's last byte is not a newline.
fn torn(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let mut last = [0u8; 1];
    f.seek(SeekFrom::End(-1)).is_ok() && f.read_exact(&mut last).is_ok() && last[0] != b'\n'
}

/// The page of `all` (oldest first) that `limit`, `before` and `service` ask for.
pub fn page_of(all: Vec<Entry>, limit: usize, before: Option<u64>, service: Option<&str>) -> Page {
    let mut entries: Vec<Entry> = all
        .into_iter()
        .rev()
        .filter(|e| before.is_none_or(|b| e.seq < b))
        .filter(|e| service.is_none_or(|s| e.touches(s)))
        .take(limit.saturating_add(1))
        .collect();
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next_before = if more {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Page {
        entries,
        next_before,
    }
}

#[cfg(test)]
mod tests;
