//! `tend run` (the controller), `tend trigger` and `tend status` (its clients).

use anyhow::Context as _;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tend::config::Config;
use tend::controller;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Controller configuration (tend.yaml). Without it: the embedded demo.
    #[arg(long, env = "TEND_CONFIG")]
    pub config: Option<PathBuf>,
    /// Only hosts with this label, `key=value` (repeatable); replaces `selector`.
    #[arg(long = "selector", short = 'l')]
    pub selectors: Vec<String>,
    /// Address to serve on (overrides `listen` and TEND_LISTEN).
    #[arg(long)]
    pub listen: Option<String>,
}

/// A running controller and the token its POST endpoints need.
#[derive(Debug, Args)]
pub struct Remote {
    /// Controller address.
    #[arg(long, env = "TEND_URL", default_value = "http://127.0.0.1:9617")]
    pub url: String,
    /// File holding the bearer token (default: .tend/token when it exists, as the demo writes).
    #[arg(long, env = "TEND_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl Remote {
    /// POST `path` (with a JSON body, if any); the answer's status and body.
    pub(super) fn post(
        &self,
        path: &str,
        json: Option<serde_json::Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, String)> {
        let token = read_token(self.token_file.as_deref())?;
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        runtime()?.block_on(async {
            let mut req = client()?.post(&url).bearer_auth(token);
            if let Some(j) = &json {
                req = req.json(j);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("cannot reach the controller at {}", self.url))?;
            let code = resp.status();
            Ok((code, resp.text().await.unwrap_or_default()))
        })
    }
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// Wait for the reconcile to finish and print its result.
    #[arg(long)]
    pub wait: bool,
    /// Act past sync windows whose `manual_override` allows it (recorded in status).
    #[arg(long)]
    pub override_window: bool,
    #[arg(long, value_enum, default_value_t = super::Output::Text)]
    pub output: super::Output,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, env = "TEND_URL", default_value = "http://127.0.0.1:9617")]
    pub url: String,
    #[arg(long, value_enum, default_value_t = super::Output::Text)]
    pub output: super::Output,
}

const DEMO_TOKEN: &str = "token";

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Write a fresh random token readable only by us; reuse one already there.
fn demo_token(cache_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let path = cache_dir.join(DEMO_TOKEN);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating {}", cache_dir.display()))?;
    let token: [u8; 24] = rand::random();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{}", hex::encode(token))?;
    Ok(path)
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    // Before the runtime starts any thread (see controller::memory).
    controller::memory::limit_arenas();
    let demo = a.config.is_none();
    let mut cfg = match &a.config {
        Some(f) => Config::load(f)?,
        None => Config::demo(),
    };
    cfg.apply_env()?;
    if !a.selectors.is_empty() {
        cfg.selector = tend::config::parse_selectors(a.selectors.iter().map(String::as_str))
            .map_err(anyhow::Error::msg)?;
    }
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    cfg.validate().map_err(anyhow::Error::msg)?;
    if demo && cfg.token_file.is_none() && cfg.token_env.is_none() {
        cfg.token_file = Some(demo_token(&cfg.cache_dir)?);
    }
    let rt = runtime()?;
    rt.block_on(async move {
        let running = controller::spawn(cfg).await?;
        if demo {
            eprintln!(
                "tend: no --config: running the demo fleet ({}) from {}",
                running.ctx.config.path,
                std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            );
        }
        eprintln!(
            "tend: serving http://{}/ (status page), /metrics, /status; Ctrl-C stops",
            running.addr
        );
        if let Some(f) = &running.ctx.config.token_file {
            eprintln!("tend: POST /reconcile token in {}", f.display());
        }
        tokio::spawn(watch_signals(running.stopper()));
        running.wait().await;
        eprintln!("tend: stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// First SIGTERM/SIGINT: let the running reconcile finish, then stop. Second: exit now.
async fn watch_signals(stop: tokio::sync::watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    eprintln!("tend: stopping after the running reconcile (signal again to exit now)");
    let _ = stop.send(true);
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    std::process::exit(130);
}

pub(super) fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("tend/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

pub(super) fn read_token(file: Option<&Path>) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var("TEND_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let default = Path::new(".tend").join(DEMO_TOKEN);
    let file = match file {
        Some(f) => f.to_path_buf(),
        None if default.exists() => default,
        None => anyhow::bail!("no token: pass --token-file or set TEND_TOKEN"),
    };
    Ok(tend::config::read_secret(&file)?)
}

pub fn trigger(a: TriggerArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/reconcile{}", if a.wait { "?wait=true" } else { "" });
    let json = serde_json::json!({ "override_window": a.override_window });
    let (code, body) = a.remote.post(&path, Some(json))?;
    if !code.is_success() {
        anyhow::bail!("{}{path}: HTTP {code}: {}", a.remote.url, body.trim());
    }
    if a.output == super::Output::Json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).context("controller answer is not JSON")?;
    let id = v["id"].as_u64().unwrap_or(0);
    if v["coalesced"].as_bool() == Some(true) {
        println!("joined reconcile #{id} (already queued)");
    } else {
        println!("queued reconcile #{id}");
    }
    if a.wait {
        let r = &v["reconcile"];
        let result = r["result"].as_str().unwrap_or("unknown");
        println!(
            "reconcile #{id}: {result} in {:.2}s{}",
            r["duration_seconds"].as_f64().unwrap_or(0.0),
            r["error"]
                .as_str()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default()
        );
        for act in r["actions"].as_array().into_iter().flatten() {
            println!(
                "  {} {}/{}: {}",
                act["kind"].as_str().unwrap_or(""),
                act["host"].as_str().unwrap_or(""),
                act["service"].as_str().unwrap_or(""),
                act["result"].as_str().unwrap_or("")
            );
        }
        if result != "success" {
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// GET `url` from the controller at `base`; the body of a 2xx answer.
pub(super) fn get_body(base: &str, url: &str) -> anyhow::Result<String> {
    runtime()?.block_on(async {
        let resp = client()?
            .get(url)
            .send()
            .await
            .with_context(|| format!("cannot reach the controller at {base}"))?;
        let code = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !code.is_success() {
            anyhow::bail!("{url}: HTTP {code}: {}", body.trim());
        }
        Ok(body)
    })
}

pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let url = format!("{}/status", a.url.trim_end_matches('/'));
    let body = get_body(&a.url, &url)?;
    if a.output == super::Output::Json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).context("controller answer is not JSON")?;
    print!("{}", render_status(&v));
    let drifted = v["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["services"].as_array().into_iter().flatten())
        .any(|s| s["status"] != "in_sync" && s["status"] != "suspended");
    Ok(if drifted {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// A readable table of `/status` (works on the JSON so an older or newer
/// controller still prints).
pub fn render_status(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let s = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
    let mut out = String::new();
    let src = &v["source"];
    let loc = match src["kind"].as_str() {
        Some("git") => format!("{} ({})", s(&src["url"]), s(&src["branch"])),
        _ => s(&src["path"]),
    };
    let _ = writeln!(
        out,
        "controller {}  source {}  revision {}  manifests {}",
        s(&v["controller"]),
        loc,
        src["revision"]
            .as_str()
            .map(tend::source::short)
            .unwrap_or("none"),
        if src["manifests_valid"] == true {
            "valid"
        } else {
            "REFUSED"
        }
    );
    for e in src["errors"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  ! {}", s(e));
    }
    if let Some(e) = src["fetch_error"].as_str() {
        let _ = writeln!(out, "  ! {e}");
    }
    for w in v["windows"].as_array().into_iter().flatten() {
        let state = if w["active"] == true {
            "active until"
        } else {
            "opens"
        };
        let _ = writeln!(
            out,
            "window {} ({}) {state} {}",
            s(&w["name"]),
            s(&w["kind"]),
            s(&w["until_local"])
        );
    }
    let a = &v["awaiting_approval"];
    if let Some(id) = a["id"].as_str() {
        let n = a["actions"].as_array().map_or(0, Vec::len);
        let _ = writeln!(
            out,
            "plan {id} awaits approval: {n} action(s); `tend approve {id}` applies it"
        );
    }
    let mut rows = vec![[
        "HOST".to_string(),
        "SERVICE".into(),
        "STATUS".into(),
        "DRIFT".into(),
        "DESIRED".into(),
        "OBSERVED".into(),
        "LAST ACTION".into(),
    ]];
    for h in v["hosts"].as_array().into_iter().flatten() {
        let host = s(&h["name"]);
        let services = h["services"].as_array().cloned().unwrap_or_default();
        if services.is_empty() || h["up"] != true {
            rows.push([
                host.clone(),
                "-".into(),
                if h["up"] == true {
                    "up".into()
                } else {
                    "DOWN".into()
                },
                s(&h["reason"]),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        for svc in services {
            let reasons: Vec<String> = svc["reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .map(&s)
                .collect();
            let last = &svc["last_action"];
            rows.push([
                host.clone(),
                s(&svc["name"]),
                s(&svc["status"]).replace('_', " "),
                reasons.join(","),
                s(&svc["desired_version"]),
                s(&svc["observed_version"]),
                if last.is_null() {
                    String::new()
                } else {
                    format!("{} {}", s(&last["kind"]), s(&last["result"]))
                },
            ]);
        }
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}", w = *w))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if let Some(r) = v["reconciles"].as_array().and_then(|r| r.first()) {
        let _ = writeln!(
            out,
            "last reconcile #{} ({}): {} in {:.2}s{}",
            r["id"],
            s(&r["trigger"]),
            s(&r["result"]),
            r["duration_seconds"].as_f64().unwrap_or(0.0),
            r["error"]
                .as_str()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default()
        );
    }
    out
}
