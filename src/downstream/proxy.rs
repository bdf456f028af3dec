//! Routing: a client whose user runs on another node is proxied there.
//!
//! This node has verified the credentials against the shared store. It opens a TCP
//! connection to the owner's advertised IRC address, registers again there with the
//! same credentials and the capabilities this client negotiated (`CAP LS 302`,
//! `CAP REQ`, `CAP END`, `PASS`, `NICK`, `USER`), drops the owner's replies up to its
//! `001`, forwards everything from the `001` on, then splices bytes both ways. The
//! client never knows.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::io::{self, Reader, Writer};
use super::login::Registered;
use crate::services::Services;

/// How long the owner may take to accept the replayed registration.
const OWNER_TIMEOUT: Duration = Duration::from_secs(20);

/// Proxies a registered client to the node that owns its user, until either side
/// closes.
pub async fn run(reader: Reader, writer: Writer, services: &Services, reg: &Registered) {
    let user = &reg.verified.user.name;
    let owner = match services.owner_of(reg.verified.user.id).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(user = %user, error = %e, "owner lookup failed");
            return writer
                .close("your bouncer session cannot be found, try again later")
                .await;
        }
    };
    let Some(addr) = owner.irc_addr.filter(|_| !owner.local) else {
        return writer
            .close("your bouncer session is not running on any node right now, try again shortly")
            .await;
    };
    let owner_id = owner.node_id.unwrap_or_default();
    let (up, first) = match tokio::time::timeout(OWNER_TIMEOUT, login_on_owner(&addr, reg)).await {
        Ok(Ok(up)) => up,
        Ok(Err(e)) => {
            tracing::warn!(user = %user, owner = %owner_id, %addr, error = %e, "proxy to the owner node failed");
            return writer
                .close(&format!("could not reach node {owner_id}: {e}"))
                .await;
        }
        Err(_) => {
            return writer
                .close(&format!(
                    "node {owner_id} did not accept the session in time"
                ))
                .await
        }
    };
    tracing::info!(user = %user, owner = %owner_id, %addr, "client proxied to the owner node");
    let (mut client, pending) = io::reunite(reader, writer).await;
    // What the owner sent from its 001 on, then what the client sent meanwhile.
    let mut greeting = first;
    greeting.extend_from_slice(up.buffer());
    let mut up = up.into_inner();
    if client.write_all(&greeting).await.is_err() || up.write_all(&pending).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
}

/// Registers on the owner; returns the connection just after its `001`, and the
/// `001` line.
async fn login_on_owner(
    addr: &str,
    reg: &Registered,
) -> anyhow::Result<(BufReader<TcpStream>, Vec<u8>)> {
    let stream = TcpStream::connect(addr).await?;
    let mut up = BufReader::new(stream);
    let c = &reg.verified.creds;
    let ident = format!(
        "{}{}{}",
        c.user,
        c.client
            .as_deref()
            .map(|c| format!("@{c}"))
            .unwrap_or_default(),
        reg.verified
            .network
            .as_ref()
            .map(|n| format!("/{}", n.name))
            .unwrap_or_default()
    );
    let nick = String::from_utf8_lossy(&reg.nick).into_owned();
    let nick = if nick.is_empty() {
        c.user.clone()
    } else {
        nick
    };
    let caps: Vec<&str> = reg.caps.enabled().collect();
    let mut lines = vec!["CAP LS 302".to_owned()];
    if !caps.is_empty() {
        lines.push(format!("CAP REQ :{}", caps.join(" ")));
    }
    lines.push("CAP END".to_owned());
    lines.push(format!("PASS {ident}:{}", c.password));
    lines.push(format!("NICK {nick}"));
    lines.push(format!("USER {} 0 * :{}", c.user, c.user));
    let mut out = lines.join("\r\n");
    out.push_str("\r\n");
    up.get_mut().write_all(out.as_bytes()).await?;

    // Drop the owner's replies (CAP LS/ACK, …) up to 001; it is the client's first line.
    let mut line = Vec::new();
    loop {
        line.clear();
        if up.read_until(b'\n', &mut line).await? == 0 {
            anyhow::bail!("the owner closed the connection during registration");
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let command = text
            .split_whitespace()
            .find(|w| !w.starts_with('@') && !w.starts_with(':'))
            .unwrap_or("");
        match command {
            "001" => return Ok((up, line)),
            "ERROR" | "464" => anyhow::bail!("the owner refused the login: {}", text.trim_end()),
            "PING" => {
                let token = text.trim_end().split_once(' ').map_or("", |(_, t)| t);
                up.get_mut()
                    .write_all(format!("PONG {token}\r\n").as_bytes())
                    .await?;
            }
            _ => {}
        }
    }
}
