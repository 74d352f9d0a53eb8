//! A podman container `tend-<svc>`, labelled with the service and version.
//!
//! Mutating scripts call podman; observation reads /proc through the record
//! (pid, start time, cgroup learned here at start). Containers run with
//! `--restart=always`: when podman restarted one (a crash; a boot, through
//! podman-restart.service), its recorded pid is dead, and only then the probe
//! asks podman for the new one and rewrites the record (`observe/probe.sh`).
//! Stop removes the container (podman-restart.service would start a stopped
//! `always` container at the next boot). On systemd hosts the start script
//! enables podman-restart.service and orders the containers' scopes after it
//! at shutdown ([`enable_restart`]).
//! `image:
//! rootfs:/abs/dir` runs a container from a directory (`--rootfs`). When
//! `<root>/containers.conf` exists, podman is run with it (`CONTAINERS_CONF`).

use super::REMOVE_COMMON;
use super::{q, q_argv, vars, Release, Runtime, RuntimeError, FN_ALIVE, FN_WRITE_RECORD};
use crate::model::Delivery;
use crate::record::RuntimeKind;
use std::fmt::Write as _;

pub struct Podman;

/// What `podman run` is given as the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef<'a> {
    Image(&'a str),
    Rootfs(&'a str),
}

pub fn image_ref(image: &str) -> ImageRef<'_> {
    match image.strip_prefix("rootfs:") {
        Some(dir) => ImageRef::Rootfs(dir),
        None => ImageRef::Image(image),
    }
}

const CONF: &str = "if [ -f \"$root/containers.conf\" ]; then export CONTAINERS_CONF=\"$root/containers.conf\"; fi\n";

fn image_of<'a>(r: &'a Release) -> Result<ImageRef<'a>, RuntimeError> {
    match &r.service.delivery {
        Delivery::Image { image } => {
            let i = image_ref(image);
            if let ImageRef::Rootfs(d) = i {
                if !d.starts_with('/') {
                    return Err(RuntimeError::Invalid {
                        service: r.service.name.clone(),
                        why: format!("rootfs {d:?} is not an absolute path"),
                    });
                }
            }
            Ok(i)
        }
        _ => Err(RuntimeError::Invalid {
            service: r.service.name.clone(),
            why: "the podman runtime needs an image".into(),
        }),
    }
}

impl Runtime for Podman {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Podman
    }

    fn prepare(&self, r: &Release) -> Result<String, RuntimeError> {
        match image_of(r)? {
            ImageRef::Rootfs(d) => Ok(format!(
                "  [ -d {0} ] || {{ echo \"tend: rootfs {0} is missing\" >&2; exit 1; }}\n",
                q(d)?
            )),
            ImageRef::Image(i) => Ok(format!(
                "  ( {CONF}  podman image exists {0} || podman pull -q {0} ) </dev/null 9>&-\n",
                q(i)?
            )),
        }
    }

    fn start(&self, r: &Release) -> Result<String, RuntimeError> {
        let s = r.service;
        let mut o = String::from("set -eu\n");
        o.push_str(&vars(r.root, &s.name)?);
        let _ = writeln!(o, "rel={}\nr=\"$d/$rel\"\nname=\"tend-$svc\"", q(&r.name)?);
        o.push_str(CONF);
        o.push_str(FN_ALIVE);
        o.push_str(FN_WRITE_RECORD);
        o.push_str(&enable_restart()?);
        o.push_str("podman rm -f \"$name\" </dev/null >/dev/null 2>&1 9>&- || true\n");
        let mut args = vec![
            "podman".to_string(),
            "run".into(),
            "-d".into(),
            // `always`, not `unless-stopped`: podman-restart.service (podman
            // 4.3, Debian 12) starts only `always` containers at boot. tend's
            // stop removes the container, so a stopped service stays stopped.
            "--restart".into(),
            "always".into(),
            "--name".into(),
            format!("tend-{}", s.name),
            "--label".into(),
            format!("tend.service={}", s.name),
            "--label".into(),
            format!("tend.version={}", s.version),
        ];
        if let Some(m) = s.memory {
            args.extend([
                "--memory".into(),
                m.to_string(),
                "--memory-swap".into(),
                m.to_string(),
            ]);
        }
        // Ports are always P:P, so the host's network gives the same
        // addresses without a forwarder: the listener is then the recorded
        // process itself (with `-p`, conmon holds the host port and the
        // probe could not tell it from a stranger), and no netavark rules.
        args.extend(["--network".into(), "host".into()]);
        let mut env_file = false;
        for k in s.env.keys() {
            if super::valid_env_key(k) {
                // `--env KEY` takes the value from podman's environment: exact
                // bytes, newlines included, which `--env-file` cannot carry.
                args.extend(["--env".into(), k.clone()]);
            } else if super::valid_container_env_key(k) {
                // sh cannot hold `discovery.type`: podman reads it from a file.
                env_file = true;
            } else {
                return Err(RuntimeError::EnvKey {
                    service: s.name.clone(),
                    key: k.clone(),
                });
            }
        }
        match image_of(r)? {
            ImageRef::Rootfs(d) => args.extend(["--rootfs".into(), d.to_string()]),
            ImageRef::Image(i) => args.push(i.to_string()),
        }
        args.extend(s.command.iter().cloned());
        let argv = if env_file {
            format!(
                "{} --env-file \"$r/{}\" {}",
                q_argv(&args[..3])?,
                super::PODMAN_ENV_FILE,
                q_argv(&args[3..])?
            )
        } else {
            q_argv(&args)?
        };
        let _ = writeln!(
            o,
            "sh -c {} tend-env \"$r/.tend/env\" {argv} </dev/null >\"$r/.tend/run.out\" 2>&1 9>&- || {{ cat \"$r/.tend/run.out\" >&2; exit 1; }}",
            q(WITH_ENV)?,
        );
        o.push_str(AFTER_RUN);
        Ok(o)
    }

    fn stop(&self, root: &str, service: &str) -> Result<String, RuntimeError> {
        let mut o = vars(root, service)?;
        o.push_str(CONF);
        // Removed, not only stopped: podman-restart.service starts every
        // `always` container at boot, stopped ones too, and podman 4.3 cannot
        // change a container's restart policy. The image or rootfs stays; the
        // record keeps its dead pid, so the service observes as stopped.
        o.push_str(
            "if podman container exists \"tend-$svc\" </dev/null 9>&-; then\n  podman rm -f -t 10 \"tend-$svc\" </dev/null >/dev/null 2>&1 9>&- || true\n  echo \"tend: stopped $svc\"\nfi\n",
        );
        Ok(o)
    }

    fn logs(&self, root: &str, service: &str) -> Result<String, RuntimeError> {
        let mut o = vars(root, service)?;
        o.push_str(CONF);
        let _ = writeln!(
            o,
            "podman logs --tail {} \"tend-$svc\" </dev/null 2>&1 9>&- || true",
            super::LOG_LINES
        );
        Ok(o)
    }

    fn remove(&self, root: &str, service: &str) -> Result<String, RuntimeError> {
        let mut o = vars(root, service)?;
        o.push_str(CONF);
        o.push_str("podman rm -f -t 10 \"tend-$svc\" </dev/null >/dev/null 2>&1 9>&- || true\n");
        o.push_str(REMOVE_COMMON);
        Ok(o)
    }
}

/// Where the drop-in for every container's scopes goes: systemd applies
/// `libpod-.scope.d/` to `libpod-<id>.scope` and `libpod-conmon-<id>.scope`.
pub(crate) const SCOPE_DROPIN_DIR: &str = "/etc/systemd/system/libpod-.scope.d";

/// The drop-in's text (without its last newline). At shutdown systemd stops
/// a container's scope at once (SIGTERM to the container), unordered with
/// podman-restart.service; conmon then restarts the `always` container, again
/// and again, until the conmon scope's 90 s stop timeout; podman-restart's
/// ExecStop, run meanwhile, finds nothing running (seen on the VMs: a reboot
/// took 141 s instead of 43 s). Ordered before podman-restart.service, the
/// scopes are stopped after its ExecStop has stopped the containers.
pub(crate) const SCOPE_DROPIN: &str =
    "# Written by tend: at shutdown, podman-restart.service stops the --restart=always
# containers before systemd stops their scopes (otherwise conmon restarts each
# container systemd stops, and the shutdown waits for the 90 s stop timeout).
[Unit]
Before=podman-restart.service";

/// On a systemd host, podman-restart.service brings `--restart=always`
/// containers back after a boot, before any reconcile. Started too, not only
/// enabled: its ExecStop stops them at shutdown, and the scopes' drop-in
/// ([`SCOPE_DROPIN`]) orders that before systemd stops the containers'
/// scopes. The drop-in is written and `daemon-reload` run only when its text
/// differs; a re-run reads one file and asks systemctl twice. A host without
/// systemd still converges: the next reconcile restarts the containers.
pub(crate) fn enable_restart() -> Result<String, RuntimeError> {
    Ok(format!(
        r#"if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  dropin={dir}
  want={text}
  if [ "$(cat "$dropin/tend.conf" 2>/dev/null)" != "$want" ]; then
    {{ mkdir -p "$dropin" && printf '%s\n' "$want" >"$dropin/.tend.conf.tmp" && mv -f "$dropin/.tend.conf.tmp" "$dropin/tend.conf" && systemctl daemon-reload; }} </dev/null 9>&- ||
      echo "tend: cannot write $dropin/tend.conf: a shutdown may wait 90 s for each container" >&2
  fi
  {{ systemctl is-enabled --quiet podman-restart.service && systemctl is-active --quiet podman-restart.service; }} </dev/null 2>/dev/null 9>&- ||
    systemctl enable --now --quiet podman-restart.service </dev/null >/dev/null 2>&1 9>&- ||
    echo "tend: cannot enable podman-restart.service: containers come back after a boot only at the next reconcile" >&2
fi
"#,
        dir = q(SCOPE_DROPIN_DIR)?,
        text = q(SCOPE_DROPIN)?,
    ))
}

/// Load an env file into the environment, then exec argv (positional
/// parameters are read before the file, so no key can change them).
const WITH_ENV: &str = r#"envf=$1; shift
set -a; . "$envf"; set +a
exec "$@""#;

const AFTER_RUN: &str = r#"pid=$(podman inspect --format '{{.State.Pid}}' "$name" </dev/null 9>&-)
case "$pid" in ''|0|*[!0-9]*) echo "tend: container $name is not running" >&2; podman logs --tail 20 "$name" </dev/null >&2 2>&1 9>&- || true; exit 1 ;; esac
cg=$(awk -F: '$2 == "memory" { print $3; exit }' "/proc/$pid/cgroup")
if [ -z "$cg" ]; then cg=$(awk -F: '$1 == "0" { print $3; exit }' "/proc/$pid/cgroup"); fi
tend_write_record "$cg" "$pid"
"#;
