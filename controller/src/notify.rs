//! Webhook notifications on apply results, rollbacks and failures: generic
//! JSON, Slack (`{"text": …}`) and DingTalk. Events carry names, versions,
//! results and messages — never env values (secrets stay on the controller).

use crate::config::{NotificationSink, SinkKind};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A reconcile ran actions (all succeeded, or some failed: see `actions`).
    Applied,
    /// A service was switched back after its new release failed the health gate.
    Rollback,
    /// A reconcile failed, or the newest revision was refused.
    Failure,
    /// Approve-mode actions wait for `tend approve ID`.
    AwaitingApproval,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventAction {
    pub kind: String,
    pub host: String,
    pub service: String,
    pub result: String,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub kind: EventKind,
    pub controller: String,
    pub reconcile: Option<u64>,
    pub revision: Option<String>,
    /// One line for people.
    pub summary: String,
    pub actions: Vec<EventAction>,
    pub errors: Vec<String>,
}

impl Event {
    /// The message for chat sinks.
    pub fn text(&self) -> String {
        let mut s = format!("[tend {}] {}", self.controller, self.summary);
        if let Some(r) = &self.revision {
            s.push_str(&format!(" (revision {})", crate::source::short(r)));
        }
        for a in &self.actions {
            s.push_str(&format!(
                "\n- {} {}/{}: {}",
                a.kind, a.host, a.service, a.result
            ));
            if let Some(m) = &a.message {
                s.push_str(&format!(" ({m})"));
            }
        }
        for e in self.errors.iter().take(10) {
            s.push_str(&format!("\n! {e}"));
        }
        s
    }

    /// The request body for a sink of `kind`.
    pub fn payload(&self, kind: SinkKind) -> serde_json::Value {
        match kind {
            SinkKind::Generic => serde_json::to_value(self).unwrap_or(serde_json::Value::Null),
            SinkKind::Slack => serde_json::json!({ "text": self.text() }),
            SinkKind::Dingtalk => {
                serde_json::json!({ "msgtype": "text", "text": { "content": self.text() } })
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notification to {url} failed: {why}")]
    Send { url: String, why: String },
}

impl NotifyError {
    pub fn metric_label(&self) -> &'static str {
        "send"
    }
}

#[derive(Debug, Clone, Default)]
pub struct Notifier {
    sinks: Vec<NotificationSink>,
    /// Only built when there is a sink: a TLS client config and its root
    /// certificates are resident memory a controller without sinks never uses.
    client: Option<reqwest::Client>,
}

impl Notifier {
    pub fn new(sinks: Vec<NotificationSink>) -> Notifier {
        let client = (!sinks.is_empty()).then(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default()
        });
        Notifier { sinks, client }
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Send to every sink; failures are returned, never fatal.
    pub async fn send(&self, event: &Event) -> Vec<NotifyError> {
        let mut errors = Vec::new();
        let Some(client) = &self.client else {
            return errors;
        };
        for sink in &self.sinks {
            let res = client
                .post(&sink.url)
                .json(&event.payload(sink.kind))
                .send()
                .await;
            let url = crate::source::redact_url(&sink.url);
            match res {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => errors.push(NotifyError::Send {
                    url,
                    why: format!("HTTP {}", r.status()),
                }),
                Err(e) => errors.push(NotifyError::Send {
                    url,
                    why: e.to_string(),
                }),
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            kind: EventKind::Rollback,
            controller: "tend@a".into(),
            reconcile: Some(3),
            revision: Some("0123456789abcdef".into()),
            summary: "ai-service-1 rolled back".into(),
            actions: vec![EventAction {
                kind: "upgrade".into(),
                host: "tencent".into(),
                service: "ai-service-1".into(),
                result: "rolled_back".into(),
                message: Some("health check failed".into()),
            }],
            errors: vec![],
        }
    }

    #[test]
    fn each_sink_gets_its_own_shape() {
        let e = event();
        let slack = e.payload(SinkKind::Slack);
        assert!(slack["text"].as_str().unwrap().contains("ai-service-1"));
        let ding = e.payload(SinkKind::Dingtalk);
        assert_eq!(ding["msgtype"], "text");
        assert!(ding["text"]["content"]
            .as_str()
            .unwrap()
            .contains("rolled_back"));
        let generic = e.payload(SinkKind::Generic);
        assert_eq!(generic["kind"], "rollback");
        assert_eq!(generic["actions"][0]["service"], "ai-service-1");
    }

    #[tokio::test]
    async fn a_local_receiver_gets_the_notification() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let recv = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(i) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= i + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&buf).into_owned()
        });
        let n = Notifier::new(vec![NotificationSink {
            kind: SinkKind::Slack,
            url,
        }]);
        let errors = n.send(&event()).await;
        assert!(errors.is_empty(), "{errors:?}");
        let req = recv.await.unwrap();
        assert!(req.starts_with("POST /hook"), "{req}");
        assert!(
            req.contains("\"text\":\"[tend tend@a] ai-service-1 rolled back"),
            "{req}"
        );
    }
}
