//! One authenticated SSH connection and its channel budget: what the
//! transport runs scripts on and what a kept shell lives on.

use super::hostkey::{self, Trust};
use super::TransportError;
use crate::model::SshTarget;
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;
use tokio::sync::Semaphore;

pub(super) struct Conn {
    pub(super) handle: Handle<Client>,
    pub(super) channels: Arc<Semaphore>,
}

/// What opening a connection needs.
pub(super) struct Dial<'a> {
    /// The Host's name, used in every error.
    pub name: &'a str,
    pub target: &'a SshTarget,
    pub trust: &'a Trust,
    pub identity: Option<&'a PathBuf>,
    pub keepalive: Option<Duration>,
    pub max_channels: usize,
}

impl Conn {
    pub(super) async fn open(d: Dial<'_>) -> Result<Conn, TransportError> {
        let host = d.name;
        let refusal = Arc::new(StdMutex::new(None));
        let handler = Client {
            trust: d.trust.clone(),
            address: d.target.address.clone(),
            port: d.target.port,
            refusal: refusal.clone(),
        };
        let addr = (d.target.address.as_str(), d.target.port);
        let mut handle = match client::connect(Arc::new(client_config(&d)), addr, handler).await {
            Ok(h) => h,
            Err(e) => {
                let refused = refusal.lock().unwrap_or_else(|p| p.into_inner()).take();
                return Err(match refused {
                    Some(why) => TransportError::HostKey {
                        host: host.to_string(),
                        why,
                    },
                    None => TransportError::Connect {
                        host: host.to_string(),
                        why: format!("{}:{}: {e}", d.target.address, d.target.port),
                    },
                });
            }
        };
        let auth_err = |why: String| TransportError::Auth {
            host: host.to_string(),
            why,
        };
        let Some(path) = d.identity else {
            return Err(auth_err(
                "no identity (private key) configured for the host or as default".into(),
            ));
        };
        let key = russh::keys::load_secret_key(path, None)
            .map_err(|e| auth_err(format!("cannot load private key {}: {e}", path.display())))?;
        let hash = if key.algorithm().is_rsa() {
            // rsa-sha2-512/256 when the server says so; OpenSSH ≥ 8.8 refuses SHA-1.
            match handle.best_supported_rsa_hash().await {
                Ok(Some(h)) => h,
                _ => Some(HashAlg::Sha256),
            }
        } else {
            None
        };
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
        let res = handle
            .authenticate_publickey(d.target.user.clone(), key)
            .await
            .map_err(|e| auth_err(format!("as {}: {e}", d.target.user)))?;
        if !res.success() {
            return Err(auth_err(format!(
                "{}:{} refused key {} for user {}",
                d.target.address,
                d.target.port,
                path.display(),
                d.target.user
            )));
        }
        Ok(Conn {
            handle,
            channels: Arc::new(Semaphore::new(d.max_channels.max(1))),
        })
    }

    /// Run a small script on a fresh channel and drain it, outside any
    /// transport (cleanup after an abandoned query).
    pub(super) async fn exec_detached(&self, script: &str) -> Result<(), russh::Error> {
        let _permit = self.channels.acquire().await;
        let mut ch = self.handle.channel_open_session().await?;
        ch.exec(true, script.as_bytes()).await?;
        let _ = ch.eof().await;
        while ch.wait().await.is_some() {}
        Ok(())
    }
}

/// Host key algorithms we hold trusted keys of go first, so a host with
/// several keys shows the one we can check (as OpenSSH does).
fn client_config(d: &Dial<'_>) -> client::Config {
    let mut preferred = russh::Preferred::default();
    let trusted = hostkey::trusted_algorithms(d.trust, &d.target.address, d.target.port);
    if !trusted.is_empty() {
        let mut order: Vec<russh::keys::Algorithm> = Vec::new();
        for a in trusted.iter().chain(preferred.key.iter()) {
            if !order.contains(a) {
                order.push(a.clone());
            }
        }
        preferred.key = order.into();
    }
    client::Config {
        keepalive_interval: d.keepalive,
        keepalive_max: 3,
        nodelay: true,
        preferred,
        ..Default::default()
    }
}

/// russh callbacks: only the host key check matters.
pub(super) struct Client {
    trust: Trust,
    address: String,
    port: u16,
    /// Why the key was refused, for the error russh cannot carry.
    refusal: Arc<StdMutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let verdict = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                hostkey::verify(&self.trust, &self.address, self.port, key)
            }
            PublicKeyOrCertificate::Certificate(_) => Err(format!(
                "{}:{} offered a host certificate; tend accepts only plain host keys",
                self.address, self.port
            )),
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }
}
