//! A websocket client of Ferry's `GET /ws` (protocol in `docs/websocket.md`): a token
//! from `POST /api/login`, the upgrade with `Authorization: Bearer`, `resume` as a new
//! client, then events until `synced`; after that, live events.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::loadgen::Recorder;

pub type Ws = WebSocketStream<TcpStream>;

/// Logs `user` in from the loopback address `from` and returns the session token.
/// (Ferry budgets failed logins per client address: give each user its own.)
pub async fn login(
    http_port: u16,
    user: &str,
    password: &str,
    from: IpAddr,
) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .local_address(from)
        .timeout(Duration::from_secs(60))
        .build()?;
    let resp = http
        .post(format!("http://127.0.0.1:{http_port}/api/login"))
        .json(&serde_json::json!({ "username": user, "password": password }))
        .send()
        .await
        .with_context(|| format!("POST /api/login as {user}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("login answer")?;
    match body["token"].as_str() {
        Some(t) if status.is_success() => Ok(t.to_string()),
        _ => bail!("login as {user} failed ({status}): {body}"),
    }
}

/// Opens `/ws` with the token, resumes as a new client and reads until `synced`.
pub async fn connect(http_port: u16, token: &str) -> anyhow::Result<Ws> {
    let stream = TcpStream::connect(("127.0.0.1", http_port)).await?;
    stream.set_nodelay(true)?;
    let mut req = format!("ws://127.0.0.1:{http_port}/ws").into_client_request()?;
    req.headers_mut()
        .insert(AUTHORIZATION, format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .context("websocket upgrade")?;
    ws.send(Message::Text(
        r#"{"type":"resume","last_id":null}"#.to_string().into(),
    ))
    .await?;
    let synced = async {
        while let Some(m) = ws.next().await {
            if let Message::Text(t) = m? {
                if t.as_str().contains(r#""type":"synced""#) {
                    return Ok(());
                }
            }
        }
        bail!("websocket closed before synced")
    };
    tokio::time::timeout(Duration::from_secs(60), synced)
        .await
        .context("no synced within 60 s")??;
    Ok(ws)
}

/// The probe id of a `message` event whose text is `bench <id> <sent_us> …`.
pub fn probe_id(frame: &str) -> Option<u64> {
    const KEY: &str = r#""text":"bench "#;
    let pos = frame.find(KEY)?;
    let rest = &frame[pos + KEY.len()..];
    rest.split(' ').next()?.parse().ok()
}

/// Reads `ws` until it closes or `cancel`, recording probe arrivals into `rec` with
/// the same clock as the IRC readers ([`crate::now_us`]).
pub fn spawn_reader(
    mut ws: Ws,
    rec: Arc<Recorder>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                () = cancel.cancelled() => break,
                m = ws.next() => m,
            };
            let Some(Ok(m)) = m else {
                rec.closed.fetch_add(1, Ordering::Relaxed);
                break;
            };
            let now = crate::now_us();
            let Message::Text(t) = m else { continue };
            rec.lines.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = probe_id(t.as_str()) {
                rec.probes.fetch_add(1, Ordering::Relaxed);
                if rec.keep_samples {
                    rec.samples.lock().unwrap().push((id, now));
                }
            }
        }
        let _ = ws.close(None).await;
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_ids_come_from_message_text() {
        let f = r##"{"type":"message","id":7,"network":"bench","buffer":"#lat","sender":"prober","kind":"PRIVMSG","text":"bench 42 123456 some words","own":false}"##;
        assert_eq!(super::probe_id(f), Some(42));
        assert_eq!(
            super::probe_id(r#"{"type":"message","text":"hello"}"#),
            None
        );
    }
}
