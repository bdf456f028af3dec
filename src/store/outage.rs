//! The outage buffer: the lines the writer holds while the store cannot take them.
//!
//! When a commit fails (the store is unreachable) or the node rides out a store
//! outage (`lease` riding out), the writer moves its batches here instead of
//! retrying them in place, so it keeps taking lines from the actors and never pushes
//! back on them. The buffer is a FIFO in three parts, oldest first:
//!
//! 1. **gap markers** standing for lines that no longer fit (below);
//! 2. the **spill file** (`[outage] spill_path`, at most `spill_bytes` between its read
//!    and write offsets): lines that overflowed memory;
//! 3. **memory** (at most `memory_lines` lines): the newest.
//!
//! Lines keep the ids (`seq`) and times the actors gave them, so the backlog written
//! back when the store returns is what it would have been without the outage. The
//! writer drains the buffer from the front, in order, before it writes anything newer.
//!
//! When memory and spill are both full, the *oldest* excess becomes an explicit gap:
//! the first line dropped in a buffer turns into a `GAP` marker (kind `GAP`, from
//! `*ferry*`, as `user::actor::gap` writes them) that keeps that line's id and time,
//! and every later line dropped in the same buffer only widens it ("N lines from … to
//! …"). Since only the oldest lines are dropped, the marker sits exactly where the
//! missing lines were, before everything still held. Nothing is lost silently.
//!
//! The spill file is JSON lines (one `serde_json` object per line, bytes as base64):
//! `serde_json` is already a dependency (no new format crate for a file that is only
//! written during outages), a line is self-delimiting (JSON escapes newlines), and an
//! operator can read it with ordinary tools. It is written and read with positioned
//! I/O (`pwrite`/`pread`) at a write and a read offset, and truncated whenever the
//! buffer empties. Its I/O is blocking, on the writer's task only: appends of one
//! batch to the page cache, far cheaper than the commit they stand in for.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{NetworkId, NewMessage, UserId};

/// Sizes of the outage buffer (`[outage]` in the config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutageConfig {
    /// Lines held in memory before they spill to the file (about 300–600 bytes each).
    pub memory_lines: usize,
    /// Most bytes the spill file holds; beyond it the oldest lines become gap
    /// markers. 0: no spill file.
    pub spill_bytes: u64,
    /// The spill file; `None`: no spill file (memory only). `ferry serve` puts it in
    /// the data directory as `outage-<node id>.spill` unless configured.
    pub spill_path: Option<PathBuf>,
}

impl Default for OutageConfig {
    fn default() -> Self {
        OutageConfig {
            memory_lines: 100_000,
            spill_bytes: 256 * 1024 * 1024,
            spill_path: None,
        }
    }
}

/// One spilled line (see the module docs for the format).
#[derive(Serialize, Deserialize)]
struct SpillLine {
    user: UserId,
    seq: i64,
    network: NetworkId,
    buffer: String,
    buffer_key: String,
    /// Microseconds since the epoch (stored times are whole milliseconds).
    time_us: i64,
    sender: String,
    command: String,
    raw: String,
    text: String,
    msgid: Option<String>,
    epoch: i64,
}

impl SpillLine {
    fn encode(m: &NewMessage, out: &mut Vec<u8>) {
        let line = SpillLine {
            user: m.user_id,
            seq: m.seq,
            network: m.network_id,
            buffer: B64.encode(&m.buffer),
            buffer_key: B64.encode(&m.buffer_key),
            time_us: m.time.timestamp_micros(),
            sender: m.sender.clone(),
            command: m.command.clone(),
            raw: B64.encode(&m.raw),
            text: m.text.clone(),
            msgid: m.msgid.clone(),
            epoch: m.epoch,
        };
        serde_json::to_writer(&mut *out, &line).expect("serialising to memory cannot fail");
        out.push(b'\n');
    }

    fn decode(line: &[u8]) -> std::io::Result<NewMessage> {
        let bad = |e: &dyn std::fmt::Display| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
        };
        let l: SpillLine = serde_json::from_slice(line).map_err(|e| bad(&e))?;
        let b64 = |s: &str| B64.decode(s).map_err(|e| bad(&e));
        Ok(NewMessage {
            user_id: l.user,
            seq: l.seq,
            network_id: l.network,
            buffer: b64(&l.buffer)?,
            buffer_key: b64(&l.buffer_key)?,
            time: DateTime::from_timestamp_micros(l.time_us).ok_or_else(|| bad(&"bad time"))?,
            sender: l.sender,
            command: l.command,
            raw: Bytes::from(b64(&l.raw)?),
            text: l.text,
            msgid: l.msgid,
            epoch: l.epoch,
        })
    }
}

/// The spill file: lines between `head` (next to read) and `tail` (next to write).
struct Spill {
    file: File,
    head: u64,
    tail: u64,
    lines: usize,
}

/// How much a spill read may take at once.
const SPILL_READ: usize = 1 << 20;

impl Spill {
    fn append(&mut self, ms: &[NewMessage]) -> std::io::Result<u64> {
        let mut buf = Vec::with_capacity(ms.len() * 256);
        for m in ms {
            SpillLine::encode(m, &mut buf);
        }
        self.file.write_all_at(&buf, self.tail)?;
        self.tail += buf.len() as u64;
        self.lines += ms.len();
        Ok(buf.len() as u64)
    }

    /// Up to `n` lines from the head, with the offset after each.
    fn peek(&self, n: usize) -> std::io::Result<Vec<(NewMessage, u64)>> {
        let mut out = Vec::new();
        let mut at = self.head;
        let mut buf = Vec::new();
        while out.len() < n && at < self.tail {
            let want = usize::try_from(self.tail - at)
                .unwrap_or(usize::MAX)
                .min(SPILL_READ);
            buf.resize(want, 0);
            self.file.read_exact_at(&mut buf, at)?;
            let mut start = 0;
            while out.len() < n {
                let Some(end) = buf[start..].iter().position(|&b| b == b'\n') else {
                    break;
                };
                let line = &buf[start..start + end];
                start += end + 1;
                out.push((SpillLine::decode(line)?, at + start as u64));
            }
            if start == 0 {
                // One line longer than a read: read it whole.
                let whole = usize::try_from(self.tail - at).unwrap_or(usize::MAX);
                buf.resize(whole, 0);
                self.file.read_exact_at(&mut buf, at)?;
                let end = buf.iter().position(|&b| b == b'\n').ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "unterminated line")
                })?;
                out.push((SpillLine::decode(&buf[..end])?, at + end as u64 + 1));
                at += end as u64 + 1;
                continue;
            }
            at += start as u64;
        }
        Ok(out)
    }

    fn consume(&mut self, lines: usize, to: u64) -> std::io::Result<()> {
        self.lines -= lines;
        self.head = to;
        if self.lines == 0 {
            self.head = 0;
            self.tail = 0;
            self.file.set_len(0)?;
        }
        Ok(())
    }

    fn bytes(&self) -> u64 {
        self.tail - self.head
    }
}

/// A gap marker standing for lines dropped in one buffer.
struct Gap {
    marker: NewMessage,
    lines: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

impl Gap {
    fn new(m: NewMessage) -> Gap {
        let mut g = Gap {
            first: m.time,
            last: m.time,
            lines: 1,
            marker: m,
        };
        g.render();
        g
    }

    fn add(&mut self, m: &NewMessage) {
        self.lines += 1;
        self.last = self.last.max(m.time);
        self.render();
    }

    /// The marker as `user::actor::gap` writes one: a NOTICE from `*ferry*`, kind GAP.
    fn render(&mut self) {
        let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
        let text = format!(
            "{} line{} from {} to {} not kept: the store was unreachable and this node's outage buffer was full",
            self.lines,
            if self.lines == 1 { "" } else { "s" },
            fmt(self.first),
            fmt(self.last),
        );
        let m = &mut self.marker;
        let mut raw = b":*ferry*!ferry@ferry NOTICE ".to_vec();
        raw.extend_from_slice(&m.buffer);
        raw.extend_from_slice(b" :");
        raw.extend_from_slice(text.as_bytes());
        m.raw = Bytes::from(raw);
        m.text = text;
        m.sender = "*ferry*".to_owned();
        m.command = "GAP".to_owned();
        m.msgid = None;
    }
}

/// The front of the buffer, taken for one commit; [`Held::consume`] removes it once
/// committed.
pub(crate) struct Front {
    pub messages: Vec<NewMessage>,
    gaps: usize,
    spill_lines: usize,
    spill_to: u64,
    memory: usize,
}

/// The lines held while the store is away (see the module docs).
pub(crate) struct Held {
    cfg: OutageConfig,
    gaps: Vec<Gap>,
    /// Where the unwritten marker of a buffer is in `gaps`.
    gap_index: HashMap<(UserId, NetworkId, Vec<u8>), usize>,
    spill: Option<Spill>,
    /// The spill file could not be used: memory only until the buffer empties.
    spill_failed: bool,
    memory: VecDeque<NewMessage>,
}

impl Held {
    pub(crate) fn new(cfg: OutageConfig) -> Held {
        Held {
            cfg,
            gaps: Vec::new(),
            gap_index: HashMap::new(),
            spill: None,
            spill_failed: false,
            memory: VecDeque::new(),
        }
    }

    /// Lines held, gap markers included.
    pub(crate) fn len(&self) -> usize {
        self.gaps.len() + self.spill.as_ref().map_or(0, |s| s.lines) + self.memory.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes in the spill file.
    pub(crate) fn spill_bytes(&self) -> u64 {
        self.spill.as_ref().map_or(0, Spill::bytes)
    }

    /// Appends lines (newest last). Returns how many of the oldest lines became gaps.
    pub(crate) fn push(&mut self, ms: impl IntoIterator<Item = NewMessage>) -> u64 {
        self.memory.extend(ms);
        let over = self.memory.len().saturating_sub(self.cfg.memory_lines);
        if over == 0 {
            return 0;
        }
        let oldest: Vec<NewMessage> = self.memory.drain(..over).collect();
        let mut gapped = 0;
        match self.spill_file() {
            Some(spill) => match spill.append(&oldest) {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, lines = oldest.len(), "outage buffer: cannot write the spill file; the oldest lines become gap markers");
                    self.spill_failed = true;
                    gapped += self.gap_all(oldest);
                }
            },
            None => gapped += self.gap_all(oldest),
        }
        gapped + self.trim_spill()
    }

    /// The spill file, opened (and emptied) on first use.
    fn spill_file(&mut self) -> Option<&mut Spill> {
        if self.spill.is_none() && !self.spill_failed && self.cfg.spill_bytes > 0 {
            let path = self.cfg.spill_path.clone()?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = std::fs::create_dir_all(dir);
            }
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                // Backlog lines: readable by Ferry's own user only.
                .mode(0o600)
                .open(&path);
            match opened {
                Ok(file) => {
                    tracing::warn!(file = %path.display(), "outage buffer: memory full, spilling to disk");
                    self.spill = Some(Spill {
                        file,
                        head: 0,
                        tail: 0,
                        lines: 0,
                    });
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "outage buffer: cannot open the spill file; memory only");
                    self.spill_failed = true;
                }
            }
        }
        self.spill.as_mut()
    }

    /// Drops the oldest spilled lines into gaps until the file is within its limit.
    fn trim_spill(&mut self) -> u64 {
        let limit = self.cfg.spill_bytes;
        let Some(spill) = self.spill.as_mut() else {
            return 0;
        };
        if spill.bytes() <= limit {
            return 0;
        }
        let mut dropped = Vec::new();
        while spill.bytes() > limit && spill.lines > 0 {
            // Read ahead in modest steps: lines are a few hundred bytes each.
            match spill.peek(1024) {
                Ok(lines) => {
                    let mut taken = 0;
                    let mut to = spill.head;
                    let read = lines.len();
                    for (m, end) in lines {
                        if spill.tail - to <= limit {
                            break;
                        }
                        dropped.push(m);
                        taken += 1;
                        to = end;
                    }
                    if let Err(e) = spill.consume(taken, to) {
                        tracing::error!(error = %e, "outage buffer: cannot truncate the spill file");
                    }
                    if taken == 0 || read == 0 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, lines = spill.lines, "outage buffer: the spill file cannot be read back; its lines are lost");
                    let n = spill.lines;
                    let _ = spill.consume(n, spill.tail);
                    self.spill_failed = true;
                    return self.gap_all(dropped) + n as u64;
                }
            }
        }
        self.gap_all(dropped)
    }

    /// Turns lines into (or into more of) their buffers' gap markers.
    fn gap_all(&mut self, ms: Vec<NewMessage>) -> u64 {
        let n = ms.len() as u64;
        for m in ms {
            let key = (m.user_id, m.network_id, m.buffer_key.clone());
            match self.gap_index.get(&key) {
                Some(&i) => self.gaps[i].add(&m),
                None => {
                    self.gap_index.insert(key, self.gaps.len());
                    self.gaps.push(Gap::new(m));
                }
            }
        }
        n
    }

    /// Up to `n` lines from the front, in order: gap markers, spill, memory.
    ///
    /// # Errors
    /// The spill file cannot be read.
    pub(crate) fn front(&self, n: usize) -> std::io::Result<Front> {
        let mut f = Front {
            messages: Vec::new(),
            gaps: 0,
            spill_lines: 0,
            spill_to: 0,
            memory: 0,
        };
        for g in self.gaps.iter().take(n) {
            f.messages.push(g.marker.clone());
            f.gaps += 1;
        }
        if let Some(spill) = &self.spill {
            f.spill_to = spill.head;
            for (m, end) in spill.peek(n - f.messages.len())? {
                f.messages.push(m);
                f.spill_lines += 1;
                f.spill_to = end;
            }
        }
        if f.spill_lines == self.spill.as_ref().map_or(0, |s| s.lines) {
            let room = n - f.messages.len();
            for m in self.memory.iter().take(room) {
                f.messages.push(m.clone());
                f.memory += 1;
            }
        }
        Ok(f)
    }

    /// Removes a committed front.
    pub(crate) fn consume(&mut self, f: Front) {
        if f.gaps > 0 {
            self.gaps.drain(..f.gaps);
            self.gap_index.clear();
            for (i, g) in self.gaps.iter().enumerate() {
                let m = &g.marker;
                self.gap_index
                    .insert((m.user_id, m.network_id, m.buffer_key.clone()), i);
            }
        }
        if let Some(spill) = &mut self.spill {
            if f.spill_lines > 0 {
                if let Err(e) = spill.consume(f.spill_lines, f.spill_to) {
                    tracing::error!(error = %e, "outage buffer: cannot truncate the spill file");
                }
            }
        }
        self.memory.drain(..f.memory);
        if self.is_empty() {
            self.spill_failed = false;
        }
    }

    /// Empties the buffer (the lease is lost: these lines are not ours to write).
    /// Returns how many lines it held.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.len();
        self.gaps.clear();
        self.gap_index.clear();
        if let Some(spill) = &mut self.spill {
            let lines = spill.lines;
            let _ = spill.consume(lines, spill.tail);
        }
        self.memory.clear();
        self.spill_failed = false;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(user: UserId, seq: i64, buffer: &str, text: &str) -> NewMessage {
        let raw = format!(":bob!b@h PRIVMSG {buffer} :{text}");
        NewMessage {
            user_id: user,
            seq,
            network_id: 7,
            buffer: buffer.as_bytes().to_vec(),
            buffer_key: buffer.as_bytes().to_vec(),
            time: DateTime::from_timestamp_millis(1_700_000_000_000 + seq * 1000).unwrap(),
            sender: "bob".into(),
            command: "PRIVMSG".into(),
            raw: Bytes::from(raw.into_bytes()),
            text: text.into(),
            msgid: Some(format!("m{seq}")),
            epoch: 3,
        }
    }

    fn drain(h: &mut Held, step: usize) -> Vec<NewMessage> {
        let mut out = Vec::new();
        loop {
            let f = h.front(step).unwrap();
            if f.messages.is_empty() {
                return out;
            }
            out.extend(f.messages.iter().cloned());
            h.consume(f);
        }
    }

    fn key(m: &NewMessage) -> (i64, i64, String, String) {
        (
            m.user_id,
            m.seq,
            m.command.clone(),
            String::from_utf8_lossy(&m.raw).into_owned(),
        )
    }

    #[test]
    fn memory_then_spill_come_back_in_order_with_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = Held::new(OutageConfig {
            memory_lines: 3,
            spill_bytes: 1 << 20,
            spill_path: Some(dir.path().join("n.spill")),
        });
        // Bytes that are not UTF-8 survive the spill file.
        let mut odd = line(1, 2, "#a", "x");
        odd.raw = Bytes::from_static(b":bob!b@h PRIVMSG #a :caf\xe9");
        let all: Vec<NewMessage> = (1..=10)
            .map(|s| {
                if s == 2 {
                    odd.clone()
                } else {
                    line(1, s, "#a", &format!("l{s}"))
                }
            })
            .collect();
        for chunk in all.chunks(4) {
            assert_eq!(h.push(chunk.to_vec()), 0, "nothing becomes a gap");
        }
        assert_eq!(h.len(), 10);
        assert!(h.spill_bytes() > 0, "7 lines spilled");
        let got = drain(&mut h, 4);
        assert_eq!(
            got.iter().map(key).collect::<Vec<_>>(),
            all.iter().map(key).collect::<Vec<_>>()
        );
        assert_eq!(got[1].raw, odd.raw);
        assert_eq!(got[4].time, all[4].time);
        assert_eq!(got[4].msgid.as_deref(), Some("m5"));
        assert!(h.is_empty());
        assert_eq!(h.spill_bytes(), 0);
        let size = std::fs::metadata(dir.path().join("n.spill")).unwrap().len();
        assert_eq!(size, 0, "the spill file is emptied once drained");
    }

    #[test]
    fn a_full_buffer_turns_the_oldest_lines_into_one_gap_per_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let one = {
            let mut v = Vec::new();
            SpillLine::encode(&line(1, 1, "#a", "l1"), &mut v);
            v.len() as u64
        };
        let mut h = Held::new(OutageConfig {
            memory_lines: 2,
            // Room for about three lines.
            spill_bytes: one * 3 + 2,
            spill_path: Some(dir.path().join("n.spill")),
        });
        let mut gapped = 0;
        for s in 1..=10 {
            let buffer = if s % 2 == 0 { "#b" } else { "#a" };
            gapped += h.push([line(1, s, buffer, &format!("l{s}"))]);
        }
        // 10 lines, 2 in memory, 3 in the spill file: the 5 oldest are gaps.
        assert_eq!(gapped, 5);
        assert!(h.spill_bytes() <= one * 3 + 2);
        let got = drain(&mut h, 100);
        let seqs: Vec<i64> = got.iter().map(|m| m.seq).collect();
        // #a lost 1, 3, 5 → a marker with id 1; #b lost 2, 4 → a marker with id 2.
        assert_eq!(seqs, vec![1, 2, 6, 7, 8, 9, 10]);
        assert_eq!(got[0].command, "GAP");
        assert_eq!(got[0].buffer, b"#a");
        assert!(
            got[0].text.starts_with(
                "3 lines from 2023-11-14 22:13:21 UTC to 2023-11-14 22:13:25 UTC not kept"
            ),
            "{}",
            got[0].text
        );
        assert_eq!(got[1].command, "GAP");
        assert!(got[1].text.starts_with("2 lines from"), "{}", got[1].text);
        assert!(got[0].msgid.is_none());
        assert!(String::from_utf8_lossy(&got[0].raw)
            .starts_with(":*ferry*!ferry@ferry NOTICE #a :3 lines"));
        assert!(got[2..].iter().all(|m| m.command == "PRIVMSG"));
    }

    #[test]
    fn without_a_spill_file_memory_overflow_becomes_gaps() {
        let mut h = Held::new(OutageConfig {
            memory_lines: 2,
            spill_bytes: 0,
            spill_path: None,
        });
        assert_eq!(h.push((1..=5).map(|s| line(1, s, "#a", "x"))), 3);
        let got = drain(&mut h, 1);
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 4, 5]);
        assert!(got[0].text.starts_with("3 lines"));
        // A later gap in the same buffer after the first marker was written is a new
        // marker at its own place.
        assert_eq!(h.push((6..=9).map(|s| line(1, s, "#a", "x"))), 2);
        let got = drain(&mut h, 10);
        assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![6, 8, 9]);
        assert_eq!(h.clear(), 0);
    }
}
