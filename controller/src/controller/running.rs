//! Start and stop a controller in this process: its loop and its server.

use super::coalesce::Trigger;
use super::context::Context;
use super::engine::Engine;
use super::error::ControllerError;
use super::memory;
use super::schedule;
use super::worker::Worker;
use crate::config::{Config, SourceSpec};
use crate::source::{self, Source};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Build the source the config names.
pub fn make_source(config: &Config) -> Result<Source, ControllerError> {
    Ok(match config.source_spec() {
        SourceSpec::Git { url, branch } => {
            let token = match (&config.git.token_env, &config.git.token_file) {
                (Some(var), _) if std::env::var(var).is_ok_and(|v| !v.trim().is_empty()) => {
                    std::env::var(var).ok().map(|v| v.trim().to_string())
                }
                (_, Some(f)) => Some(crate::config::read_secret(f)?),
                _ => None,
            };
            let git = source::git::GitSource::new(
                &url,
                &branch,
                &config.cache_dir,
                source::git::Credentials {
                    ssh_key: config.git.ssh_key.clone(),
                    known_hosts: config.git.known_hosts.clone(),
                    token,
                    username: config.git.username.clone(),
                },
                config.git.allow_rewrites,
            );
            Source::Git(match &config.git.allowed_signers {
                Some(f) => git.verify_with(allowed_signers(f)?),
                None => git,
            })
        }
        SourceSpec::Dir { root } => {
            if config.git.allowed_signers.is_some() {
                // Refused rather than ignored: a directory has no signatures.
                return Err(crate::config::ConfigError::Invalid {
                    file: "tend.yaml".into(),
                    why: "git.allowed_signers: a directory source has no commits to verify".into(),
                }
                .into());
            }
            Source::Dir(
                source::dir::DirSource::new(&root, &config.path)
                    .excluding(&[config.cache_dir.clone(), config.ledger_path()]),
            )
        }
    })
}

/// The allowed-signers file, parsed; a bad line names the file and line.
fn allowed_signers(
    f: &std::path::Path,
) -> Result<source::signature::AllowedSigners, ControllerError> {
    let file = f.display().to_string();
    let text = std::fs::read_to_string(f).map_err(|e| crate::config::ConfigError::Read {
        file: file.clone(),
        why: e.to_string(),
    })?;
    source::signature::AllowedSigners::parse(&text)
        .map_err(|why| crate::config::ConfigError::Invalid { file, why }.into())
}

/// The loop. Returns after `shutdown` resolves and the reconcile in progress
/// (if any) has finished.
pub async fn run(
    ctx: Arc<Context>,
    mut source: Source,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let sched = match schedule::Schedule::parse(&ctx.config.schedule) {
        Ok(s) => {
            let c = ctx.clone();
            Some(tokio::spawn(schedule::run(
                s,
                ctx.coalescer.clone(),
                schedule::Clock::System,
                move |t| {
                    c.trigger(t);
                },
            )))
        }
        Err(e) => {
            tracing::error!("schedule: {e}");
            None
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Err(e) = source.watch(tx) {
        tracing::warn!("not watching the source: {e}");
    }
    let watcher = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                ctx.trigger(Trigger::Watch);
            }
        })
    };
    {
        let c = ctx.coalescer.clone();
        tokio::spawn(async move {
            shutdown.await;
            c.close();
        });
    }
    let mut worker = Worker {
        engine: Engine::new(&ctx.config),
        ctx: ctx.clone(),
        source,
    };
    ctx.trigger(Trigger::Startup);
    while let Some(q) = ctx.coalescer.next().await {
        worker.reconcile(q).await;
        ctx.coalescer.finish();
        // What the reconcile freed is not needed until the next one.
        memory::release_free();
    }
    if let Some(s) = sched {
        s.abort();
    }
    watcher.abort();
}

/// A controller running in this process: the loop and its HTTP server.
pub struct Running {
    pub ctx: Arc<Context>,
    /// Where the server listens (the real port when `listen` asked for 0).
    pub addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    loop_task: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Ask it to stop (the running reconcile finishes first).
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// A handle that asks for a stop (signal handlers).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// Stop and wait for the loop and the server to end.
    pub async fn stop(self) {
        self.request_stop();
        self.wait().await;
    }

    /// Wait until stopped (by [`Running::request_stop`] or a stopper).
    pub async fn wait(self) {
        if let Err(e) = self.loop_task.await {
            tracing::error!("controller loop: {e}");
        }
        let _ = self.stop.send(true);
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("server: {e}"),
            Err(e) => tracing::error!("server task: {e}"),
        }
    }
}

/// Start the controller described by `config`: bind, serve, loop.
pub async fn spawn(config: Config) -> Result<Running, ControllerError> {
    let addr = config
        .listen_addr()
        .map_err(|why| ControllerError::Listen {
            addr: config.listen.clone(),
            why,
        })?;
    let source = make_source(&config)?;
    let ctx = Context::new(config, &source)?;
    let listener =
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ControllerError::Listen {
                addr: addr.to_string(),
                why: e.to_string(),
            })?;
    let addr = listener.local_addr().map_err(|e| ControllerError::Listen {
        addr: addr.to_string(),
        why: e.to_string(),
    })?;
    let (stop, stop_rx) = watch::channel(false);
    let wait_stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(crate::server::serve(
        ctx.clone(),
        listener,
        wait_stop(stop_rx.clone()),
    ));
    let loop_task = tokio::spawn(run(ctx.clone(), source, wait_stop(stop_rx)));
    Ok(Running {
        ctx,
        addr,
        stop,
        loop_task,
        server,
    })
}
