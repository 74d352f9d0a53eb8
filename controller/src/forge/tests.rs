//! Request shapes against each forge's documented REST API (GitHub
//! "Create a commit status", Gitea/Forgejo `POST /repos/{owner}/{repo}/statuses/{sha}`,
//! GitLab "Set the pipeline status of a commit"). No live forge is reached.

use super::*;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn cfg(kind: ForgeKind, api: &str, repo: &str) -> ForgeConfig {
    ForgeConfig {
        kind,
        api_url: api.into(),
        repository: repo.into(),
        token_file: "/etc/tend/forge-token".into(),
        context: "tend/prod".into(),
        target_url: Some("https://tend.example/".into()),
    }
}

#[test]
fn github_gets_a_bearer_token_and_state_context_description_target_url() {
    let c = cfg(ForgeKind::Github, "https://api.github.com/", "acme/fleet");
    let r = request(
        &c,
        SHA,
        Outcome::Failure,
        "2 of 5 action(s) did not succeed",
    );
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.url,
        format!("https://api.github.com/repos/acme/fleet/statuses/{SHA}")
    );
    assert_eq!(r.auth, ("Authorization", "Bearer "));
    assert!(r
        .headers
        .contains(&("Accept", "application/vnd.github+json")));
    assert!(r.headers.contains(&("X-GitHub-Api-Version", "2022-11-28")));
    assert_eq!(
        r.body,
        serde_json::json!({
            "state": "failure",
            "context": "tend/prod",
            "description": "2 of 5 action(s) did not succeed",
            "target_url": "https://tend.example/",
        })
    );
}

#[test]
fn gitea_and_forgejo_get_a_token_header_and_the_same_fields() {
    let c = cfg(ForgeKind::Gitea, "https://git.example/api/v1", "ops/fleet");
    let r = request(&c, SHA, Outcome::Success, "converged");
    assert_eq!(
        r.url,
        format!("https://git.example/api/v1/repos/ops/fleet/statuses/{SHA}")
    );
    assert_eq!(r.auth, ("Authorization", "token "));
    assert_eq!(r.body["state"], "success");
    assert_eq!(r.body["context"], "tend/prod");
    let r = request(&c, SHA, Outcome::Error, "no host reached");
    assert_eq!(r.body["state"], "error");
}

#[test]
fn gitlab_gets_a_private_token_an_encoded_project_and_name_not_context() {
    let mut c = cfg(
        ForgeKind::Gitlab,
        "https://gitlab.example/api/v4",
        "infra/fleet",
    );
    c.target_url = None;
    let r = request(&c, SHA, Outcome::Failure, "partial");
    assert_eq!(
        r.url,
        format!("https://gitlab.example/api/v4/projects/infra%2Ffleet/statuses/{SHA}")
    );
    assert_eq!(r.auth, ("PRIVATE-TOKEN", ""));
    assert_eq!(
        r.body,
        serde_json::json!({"state": "failed", "name": "tend/prod", "description": "partial"})
    );
    let r = request(&c, SHA, Outcome::Success, "ok");
    assert_eq!(r.body["state"], "success");
}

#[test]
fn a_long_description_is_cut_to_140_characters() {
    let c = cfg(ForgeKind::Github, "https://api.github.com", "a/b");
    let r = request(&c, SHA, Outcome::Error, &"é".repeat(300));
    assert_eq!(r.body["description"].as_str().unwrap().chars().count(), 140);
}

#[test]
fn reconcile_results_map_to_outcomes() {
    assert_eq!(Outcome::of_result("success"), Outcome::Success);
    assert_eq!(Outcome::of_result("partial"), Outcome::Failure);
    assert_eq!(Outcome::of_result("failure"), Outcome::Error);
}

#[tokio::test]
async fn send_posts_the_body_with_the_token_to_a_local_receiver() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let t = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = t.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        s.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        String::from_utf8_lossy(&buf).to_string()
    });
    let c = cfg(
        ForgeKind::Gitea,
        &format!("http://{addr}/api/v1"),
        "ops/fleet",
    );
    send(&request(&c, SHA, Outcome::Success, "converged"), "t0ken")
        .await
        .unwrap();
    let got = server.await.unwrap();
    assert!(
        got.starts_with(&format!(
            "POST /api/v1/repos/ops/fleet/statuses/{SHA} HTTP/1.1"
        )),
        "{got}"
    );
    assert!(
        got.to_ascii_lowercase()
            .contains("authorization: token t0ken"),
        "{got}"
    );
    assert!(got.contains("\"state\":\"success\""), "{got}");
}
