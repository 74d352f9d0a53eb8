//! A kept-open `sh` on one session channel, for read-only queries (the probe).
//!
//! An exec channel costs the host a forked sshd session, the login shell's
//! `-c` hop and a fresh `sh`: more than the probe itself. Here each query is
//! one line written to a shell that stays up between reconciles:
//!
//! ```text
//! ( eval '<script>' ) </dev/null; printf '%s%s\n' <mark> "$?"; printf '%s\n' <mark> >&2
//! ```
//!
//! The subshell keeps each query's variables, `set` options and `exit` away
//! from the next; `</dev/null` keeps anything it runs from eating the shell's
//! own input; `eval` of one quoted word means a broken script is an error,
//! never a shell left waiting for the rest of a quote. The mark holds 128
//! random bits, so no output can end a query early.

use super::conn::Conn;
use super::ExecOutput;
use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

pub(super) struct KeptShell {
    /// The connection the channel lives on: a new connection means a new shell.
    pub conn: Arc<Conn>,
    rx: ChannelReadHalf,
    tx: Option<ChannelWriteHalf<Msg>>,
    mark: String,
    /// The shell's pid, which is also its process group (sshd's setsid).
    pid: u32,
    /// The prelude this shell has defined (see `query_prepared`), by hash.
    defined: Option<u64>,
    /// The shell holds one of the connection's channel slots for its life.
    _permit: OwnedSemaphorePermit,
}

/// Why a query on a kept shell failed. `Dead` before anything was sent means
/// nothing ran; after, the query may have run (it is read-only).
#[derive(Debug)]
pub(super) enum ShellFailure {
    /// The shell or its channel ended (or never started).
    Dead(String),
}

impl KeptShell {
    /// Start `sh` on a new session channel of `conn`.
    pub async fn open(
        conn: Arc<Conn>,
        permit: OwnedSemaphorePermit,
        channel: russh::Channel<Msg>,
    ) -> Result<KeptShell, ShellFailure> {
        channel
            .exec(true, &b"exec sh"[..])
            .await
            .map_err(|e| ShellFailure::Dead(format!("starting the kept shell: {e}")))?;
        let (rx, tx) = channel.split();
        let mark = format!("\u{1e}tend-{:032x} ", rand::random::<u128>());
        let mut k = KeptShell {
            conn,
            rx,
            tx: Some(tx),
            mark,
            pid: 0,
            defined: None,
            _permit: permit,
        };
        let out = k.query("echo $$").await?;
        k.pid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 1)
            .ok_or_else(|| {
                ShellFailure::Dead(format!("the kept shell did not say its pid: {out:?}"))
            })?;
        Ok(k)
    }

    /// Run `script` after defining `prelude` in the shell itself, once.
    pub async fn query_prepared(
        &mut self,
        prelude: &str,
        script: &str,
    ) -> Result<ExecOutput, ShellFailure> {
        let h = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            prelude.hash(&mut h);
            h.finish()
        };
        if self.defined != Some(h) {
            // Not in a subshell: the definitions must outlive this query.
            let out = self.run("", prelude).await?;
            if !out.success() {
                return Err(ShellFailure::Dead(format!(
                    "the prelude failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            self.defined = Some(h);
        }
        self.query(script).await
    }

    /// Run one query. On any failure the shell must be dropped, not reused.
    pub async fn query(&mut self, script: &str) -> Result<ExecOutput, ShellFailure> {
        self.run("( ", script).await
    }

    /// `open` is "( " for a subshell, "" to run in the kept shell itself.
    async fn run(&mut self, open: &str, script: &str) -> Result<ExecOutput, ShellFailure> {
        let quoted = crate::shell::quote(script)
            .map_err(|e| ShellFailure::Dead(format!("cannot quote the script: {e}")))?;
        let mark = crate::shell::quote(&self.mark)
            .map_err(|e| ShellFailure::Dead(format!("cannot quote the mark: {e}")))?;
        let close = if open.is_empty() { "" } else { " )" };
        let line = format!(
            "{open}eval {quoted}{close} </dev/null; printf '%s%s\\n' {mark} \"$?\"; printf '%s\\n' {mark} >&2\n"
        );
        let Some(tx) = self.tx.as_ref() else {
            return Err(ShellFailure::Dead("the kept shell was closed".into()));
        };
        tx.data(line.as_bytes())
            .await
            .map_err(|e| ShellFailure::Dead(format!("sending the query: {e}")))?;
        let mut out = ExecOutput::default();
        let mut status: Option<u32> = None;
        let mut err_done = false;
        let end_err = format!("{}\n", self.mark);
        while status.is_none() || !err_done {
            match self.rx.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    out.stdout.extend_from_slice(&data);
                    if status.is_none() {
                        status = take_status(&mut out.stdout, &self.mark)?;
                    }
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    out.stderr.extend_from_slice(&data);
                    if !err_done && out.stderr.ends_with(end_err.as_bytes()) {
                        out.stderr.truncate(out.stderr.len() - end_err.len());
                        err_done = true;
                    }
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    return Err(ShellFailure::Dead(format!(
                        "the kept shell exited with {exit_status}"
                    )))
                }
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    return Err(ShellFailure::Dead(format!(
                        "the kept shell was killed by {signal_name:?}"
                    )))
                }
                Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) | None => {
                    return Err(ShellFailure::Dead("the kept shell's channel ended".into()))
                }
                Some(_) => {}
            }
        }
        out.status = status;
        Ok(out)
    }

    /// End the shell and what it runs, without waiting (abandoned
    /// mid-query). sshd leaves a session's command running when its channel
    /// closes, and refuses signal requests in root sessions: so the process
    /// group is killed from a second channel.
    pub fn close_in_background(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let conn = self.conn.clone();
        let pid = self.pid;
        rt.spawn(async move {
            let _ = tx.close().await;
            if pid > 1 {
                let script = format!("kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid}");
                if let Err(e) = conn.exec_detached(&script).await {
                    tracing::debug!("ending an abandoned kept shell: {e}");
                }
            }
        });
    }
}

/// When `buf` ends with `<mark><status>\n`, cut that off and return the status.
fn take_status(buf: &mut Vec<u8>, mark: &str) -> Result<Option<u32>, ShellFailure> {
    if buf.last() != Some(&b'\n') {
        return Ok(None);
    }
    let m = mark.as_bytes();
    let Some(at) = buf.windows(m.len()).rposition(|w| w == m) else {
        return Ok(None);
    };
    let tail = &buf[at + m.len()..buf.len() - 1];
    let status = std::str::from_utf8(tail)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or_else(|| {
            ShellFailure::Dead(format!(
                "the kept shell's end line is garbled: {:?}",
                String::from_utf8_lossy(tail)
            ))
        })?;
    buf.truncate(at);
    Ok(Some(status))
}

#[cfg(test)]
mod tests {
    use super::take_status;

    #[test]
    fn the_end_line_is_cut_off_and_its_status_returned() {
        let mut b = b"out\nno newline\x1emk 3\n".to_vec();
        assert_eq!(take_status(&mut b, "\x1emk ").unwrap(), Some(3));
        assert_eq!(b, b"out\nno newline");
    }

    #[test]
    fn output_without_the_end_line_waits_for_more() {
        let mut b = b"partial\x1emk".to_vec();
        assert_eq!(take_status(&mut b, "\x1emk ").unwrap(), None);
        let mut b = b"line\n".to_vec();
        assert_eq!(take_status(&mut b, "\x1emk ").unwrap(), None);
        assert_eq!(b, b"line\n");
    }

    #[test]
    fn a_garbled_end_line_is_an_error() {
        let mut b = b"\x1emk x\n".to_vec();
        assert!(take_status(&mut b, "\x1emk ").is_err());
    }
}
