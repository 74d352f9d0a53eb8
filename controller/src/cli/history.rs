//! `tend history [SERVICE]`: the ledger, from its file or a running controller.

use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use tend::config::Config;
use tend::ledger::{Entry, Ledger, LedgerConfig, Page};

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only reconciles that acted on this service.
    pub service: Option<String>,
    /// Read this ledger file instead of asking a controller.
    #[arg(long, conflicts_with = "config")]
    pub file: Option<PathBuf>,
    /// Read the ledger file this tend.yaml names (its `ledger` and `cache_dir`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, env = "TEND_URL", default_value = "http://127.0.0.1:9617")]
    pub url: String,
    /// Newest entries shown.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Entries older than this sequence number (paging).
    #[arg(long)]
    pub before: Option<u64>,
    #[arg(long, value_enum, default_value_t = super::Output::Text)]
    pub output: super::Output,
}

pub fn run(a: HistoryArgs) -> anyhow::Result<ExitCode> {
    let service = a.service.as_deref();
    let page = match (&a.file, &a.config) {
        (Some(f), _) => {
            Ledger::open(f.clone(), &LedgerConfig::default())?.page(a.limit, a.before, service)?
        }
        (None, Some(c)) => {
            let cfg = Config::load(c)?;
            Ledger::open(cfg.ledger_path(), &cfg.ledger)?.page(a.limit, a.before, service)?
        }
        (None, None) => fetch(&a)?,
    };
    if a.output == super::Output::Json {
        println!("{}", serde_json::to_string_pretty(&page)?);
    } else {
        print!("{}", render(&page));
    }
    Ok(ExitCode::SUCCESS)
}

fn fetch(a: &HistoryArgs) -> anyhow::Result<Page> {
    let mut url = format!("{}/ledger?limit={}", a.url.trim_end_matches('/'), a.limit);
    if let Some(b) = a.before {
        url.push_str(&format!("&before={b}"));
    }
    if let Some(s) = &a.service {
        url.push_str(&format!("&service={s}"));
    }
    let body = super::run::get_body(&a.url, &url)?;
    serde_json::from_str(&body).context("controller answer is not a ledger page")
}

fn when(at: f64) -> String {
    let t = chrono::DateTime::from_timestamp_millis((at * 1000.0) as i64).unwrap_or_default();
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// One block per entry: a header line, one line per action, its output's last line.
pub fn render(p: &Page) -> String {
    let mut out = String::new();
    if p.entries.is_empty() {
        out.push_str("no ledger entries\n");
    }
    for e in &p.entries {
        out.push_str(&header(e));
        for a in &e.actions {
            let v = |x: &Option<String>| x.clone().unwrap_or_else(|| "–".into());
            out.push_str(&format!(
                "  {} {}@{} {} → {}: {}{}\n",
                a.kind,
                a.service,
                a.host,
                v(&a.version_before),
                v(&a.version_after),
                a.result,
                a.message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ));
            if a.result != "succeeded" {
                for l in a
                    .output
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .iter()
                    .rev()
                {
                    out.push_str(&format!("    | {l}\n"));
                }
            }
        }
        if let Some(err) = &e.error {
            out.push_str(&format!("  error: {err}\n"));
        }
    }
    if let Some(b) = p.next_before {
        out.push_str(&format!("(older: --before {b})\n"));
    }
    out
}

fn header(e: &Entry) -> String {
    format!(
        "#{} {} {} by {}, revision {}, {} in {:.1}s{}\n",
        e.seq,
        when(e.at),
        e.result,
        e.who,
        e.revision
            .as_deref()
            .map(tend::source::short)
            .unwrap_or("–"),
        e.trigger,
        e.duration_seconds,
        if e.overrode.is_empty() {
            String::new()
        } else {
            format!(", overriding: {}", e.overrode.join(", "))
        }
    )
}
