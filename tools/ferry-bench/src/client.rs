//! A minimal raw IRC client: lines are bytes, PING is answered by whoever reads, and
//! nothing here shares code with Ferry (so the bench observes it from outside).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

/// The write half, shareable between the reader (for PONG) and whoever talks.
#[derive(Clone)]
pub struct Writer(Arc<Mutex<OwnedWriteHalf>>);

impl Writer {
    /// Sends one line (CRLF added).
    pub async fn send(&self, line: impl AsRef<[u8]>) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(line.as_ref().len() + 2);
        buf.extend_from_slice(line.as_ref());
        buf.extend_from_slice(b"\r\n");
        self.0.lock().await.write_all(&buf).await
    }
}

/// One parsed line: enough for the bench (prefix nick, command, params lossily decoded).
#[derive(Debug, Clone)]
pub struct Line {
    pub raw: Vec<u8>,
    pub nick: String,
    pub command: String,
    pub params: Vec<String>,
}

impl Line {
    pub fn parse(raw: &[u8]) -> Line {
        let mut s = String::from_utf8_lossy(raw).into_owned();
        if s.starts_with('@') {
            s = s
                .split_once(' ')
                .map(|(_, r)| r.to_string())
                .unwrap_or_default();
        }
        let mut nick = String::new();
        if let Some(rest) = s.strip_prefix(':') {
            let (prefix, r) = rest.split_once(' ').unwrap_or((rest, ""));
            nick = prefix.split('!').next().unwrap_or("").to_string();
            s = r.to_string();
        }
        let (head, trailing) = match s.split_once(" :") {
            Some((h, t)) => (h.to_string(), Some(t.to_string())),
            None => (s.clone(), None),
        };
        let mut words = head.split(' ').filter(|w| !w.is_empty());
        let command = words.next().unwrap_or("").to_ascii_uppercase();
        let mut params: Vec<String> = words.map(str::to_string).collect();
        params.extend(trailing);
        Line {
            raw: raw.to_vec(),
            nick,
            command,
            params,
        }
    }

    pub fn last(&self) -> &str {
        self.params.last().map_or("", String::as_str)
    }
}

/// A connection: a reader owned by one task and a cloneable [`Writer`].
pub struct Conn {
    pub writer: Writer,
    reader: BufReader<OwnedReadHalf>,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr`, from `from` when given (any 127.0.0.0/8 address works).
    pub async fn connect(addr: &str, from: Option<IpAddr>) -> anyhow::Result<Conn> {
        let target: std::net::SocketAddr = addr.parse().context("address")?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(ip) = from {
            socket
                .bind((ip, 0).into())
                .with_context(|| format!("bind {ip}"))?;
        }
        let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(target))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(Conn {
            writer: Writer(Arc::new(Mutex::new(w))),
            reader: BufReader::with_capacity(64 * 1024, r),
            buf: Vec::with_capacity(1024),
        })
    }

    pub async fn send(&self, line: impl AsRef<[u8]>) -> std::io::Result<()> {
        self.writer.send(line).await
    }

    /// The next line without its line ending; answers PING itself. `None` at EOF.
    pub async fn next_raw(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            self.buf.clear();
            let n = self.reader.read_until(b'\n', &mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                self.buf.pop();
            }
            if self.buf.is_empty() {
                continue;
            }
            if self.buf.starts_with(b"PING ") {
                let mut pong = b"PONG ".to_vec();
                pong.extend_from_slice(&self.buf[5..]);
                self.writer.send(pong).await?;
                continue;
            }
            return Ok(Some(std::mem::take(&mut self.buf)));
        }
    }

    pub async fn next(&mut self) -> std::io::Result<Option<Line>> {
        Ok(self.next_raw().await?.map(|r| Line::parse(&r)))
    }

    /// Reads until `pred` matches, failing on EOF, `ERROR` or `timeout`.
    pub async fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Line) -> bool,
    ) -> anyhow::Result<Line> {
        let fut = async {
            loop {
                let Some(l) = self.next().await? else {
                    bail!("connection closed while waiting for {what}");
                };
                if pred(&l) {
                    return Ok(l);
                }
                if l.command == "ERROR" {
                    bail!("server error while waiting for {what}: {}", l.last());
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .with_context(|| format!("timed out waiting for {what}"))?
    }

    /// Registers (optionally with PASS) and waits for 001.
    pub async fn register(&mut self, nick: &str, pass: Option<&str>) -> anyhow::Result<()> {
        if let Some(p) = pass {
            self.send(format!("PASS {p}")).await?;
        }
        self.send(format!("NICK {nick}")).await?;
        self.send(format!("USER {nick} 0 * :{nick}")).await?;
        self.expect("001", Duration::from_secs(60), |l| l.command == "001")
            .await?;
        Ok(())
    }
}

/// The loopback address for simulated person or client `i`: spread over
/// 127.0.1.0–127.0.255.255 so the server sees many hosts.
pub fn source_ip(i: usize) -> IpAddr {
    let i = i % (255 * 250);
    IpAddr::V4(std::net::Ipv4Addr::new(
        127,
        0,
        (1 + i / 250) as u8,
        (1 + i % 250) as u8,
    ))
}
