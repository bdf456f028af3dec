//! The outage buffer: the lines the writer holds while the store cannot take them.
//!
//! When a commit fails (the store is unreachable) or the node rides out a store
//! outage (`lease` riding out), the writer moves its batches here instead of
//! retrying them in place, so it keeps taking lines from the actors and never pushes
//! back on them. The buffer is a FIFO in three parts, oldest first:
//!
//! 1. **gap markers** standing for lines that no longer fit (below);
//! 2. the **spill** part (at most `spill_bytes` of records): lines that overflowed
//!    memory and are now only in the spill file;
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
//! **The spill file is a journal** (`[outage] spill_path`): *every* held line is
//! appended to it the moment the writer holds it, memory lines included (memory only
//! keeps a copy of the newest), so what the node held survives the process: a SIGKILL
//! or a crash leaves it in the page cache and on disk, and the next start writes it
//! back ([`replay`]) before any user actor runs. A clean shutdown with lines still
//! held keeps the file too ([`Held::close`], which syncs it to disk). Appends are not
//! synced one by one (the page cache survives the process; a power loss can take the
//! last few seconds of appends, see docs/ARCHITECTURE.md). Gap markers, few and
//! rewritten as they widen, live in a small side file (`<spill_path>.gaps`, replaced
//! atomically). Both files are emptied when the buffer empties.
//!
//! Format (little-endian), the same for both files:
//!
//! - a 24-byte header: `FERRYSP1`, the *head* (offset of the first record not yet
//!   written back, `u64`), the CRC-32C of those 8 bytes (`u32`), 4 zero bytes; the
//!   head is rewritten in place after each write-back, so a restart skips what was
//!   written (a torn head fails its checksum and the replay starts at the first
//!   record: lines already stored are no-ops, their ids are taken);
//! - records: length of what follows the checksum (`u32`), CRC-32C of it (`u32`), a
//!   kind byte (0: who the file belongs to, 1: a line, 2: a gap marker), and a
//!   `serde_json` payload (bytes as base64). The first record says which node and
//!   store the file belongs to. A record whose length runs past the end of the file
//!   (torn by a crash mid-append) or whose checksum fails ends the replay there,
//!   logged: what follows it cannot be trusted.
//!
//! CRC-32C comes from the `crc` crate (already in the build through sqlx). The
//! payload is JSON because `serde_json` is already a dependency and an operator can
//! read a record with ordinary tools. The file is written and read with positioned
//! I/O (`pwrite`/`pread`), blocking, on the writer's task only: appends of one batch
//! to the page cache, far cheaper than the commit they stand in for.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use crc::{Crc, CRC_32_ISCSI};
use serde::{Deserialize, Serialize};

use super::{NetworkId, NewMessage, Store, StoreError, StreamKey, UserId};

mod file;
mod replay;

use file::*;
pub use file::{read_spill, spill_pending, SpillContents, SpillOwner};
pub use replay::{replay, ReplayError, Replayed};

/// Sizes of the outage buffer (`[outage]` in the config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutageConfig {
    /// Lines held in memory before they spill to the file (about 300–600 bytes each).
    pub memory_lines: usize,
    /// Most bytes of lines only in the spill file; beyond it the oldest lines become
    /// gap markers. 0: lines that leave memory become gap markers at once (the file
    /// still journals what memory holds).
    pub spill_bytes: u64,
    /// The spill file (the journal of held lines); `None`: memory only, nothing held
    /// survives the process. `ferry serve` puts it in the data directory as
    /// `outage-<node id>.spill` unless configured.
    pub spill_path: Option<PathBuf>,
    /// Who the spill file belongs to: the node id (set by the server).
    pub node: String,
    /// And the store, as a URL without its password (set by the server).
    pub store: String,
}

impl Default for OutageConfig {
    fn default() -> Self {
        OutageConfig {
            memory_lines: 100_000,
            spill_bytes: 256 * 1024 * 1024,
            spill_path: None,
            node: String::new(),
            store: String::new(),
        }
    }
}

impl OutageConfig {
    /// The side file of gap markers.
    fn gaps_path(&self) -> Option<PathBuf> {
        self.spill_path.as_ref().map(|p| side(p, "gaps"))
    }
}

/// `<path>.<ext>`, next to `path`.
fn side(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
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
    spill_bytes: u64,
    spill_to: u64,
    memory: usize,
}

/// A line in memory, with where its record ends in the journal and its length
/// (`None`: not journaled).
struct Mem {
    m: NewMessage,
    rec: Option<(u64, u64)>,
}

/// What [`Held::close`] left for the next start.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Closed {
    /// Lines (and gap markers) kept in the spill file.
    pub kept: usize,
    /// Lines that were only in memory (no spill file, or it failed).
    pub lost: usize,
}

/// The lines held while the store is away (see the module docs).
pub(crate) struct Held {
    cfg: OutageConfig,
    gaps: Vec<Gap>,
    /// Where the unwritten marker of a buffer is in `gaps`.
    gap_index: HashMap<(UserId, NetworkId, Vec<u8>), usize>,
    journal: Option<Journal>,
    /// The spill file could not be used: memory only until the buffer empties.
    spill_failed: bool,
    memory: VecDeque<Mem>,
}

impl Held {
    pub(crate) fn new(cfg: OutageConfig) -> Held {
        Held {
            cfg,
            gaps: Vec::new(),
            gap_index: HashMap::new(),
            journal: None,
            spill_failed: false,
            memory: VecDeque::new(),
        }
    }

    /// Lines held, gap markers included.
    pub(crate) fn len(&self) -> usize {
        self.gaps.len() + self.journal.as_ref().map_or(0, |j| j.lines) + self.memory.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of lines only in the spill file.
    pub(crate) fn spill_bytes(&self) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.bytes)
    }

    /// Appends lines (newest last), journaled first. Returns how many of the oldest
    /// lines became gaps.
    pub(crate) fn push(&mut self, ms: impl IntoIterator<Item = NewMessage>) -> u64 {
        let ms: Vec<NewMessage> = ms.into_iter().collect();
        if ms.is_empty() {
            return 0;
        }
        let recs = self.append(&ms);
        for (i, m) in ms.into_iter().enumerate() {
            let rec = recs.as_ref().map(|r| r[i]);
            self.memory.push_back(Mem { m, rec });
        }
        let over = self.memory.len().saturating_sub(self.cfg.memory_lines);
        if over == 0 {
            return 0;
        }
        // The oldest leave memory: journaled ones stay in the file (the spill part),
        // the others become gaps.
        let mut unjournaled = Vec::new();
        for e in self.memory.drain(..over) {
            match (e.rec, self.journal.as_mut()) {
                (Some((end, len)), Some(j)) => {
                    j.lines += 1;
                    j.bytes += len;
                    j.mem_off = end;
                }
                _ => unjournaled.push(e.m),
            }
        }
        let gapped = self.gap_all(unjournaled) + self.trim_spill();
        if gapped > 0 {
            self.save_gaps();
        }
        gapped
    }

    /// Journals lines; the end and length of each record, or `None` when there is
    /// no spill file (or it failed).
    fn append(&mut self, ms: &[NewMessage]) -> Option<Vec<(u64, u64)>> {
        let j = self.journal_file()?;
        let mut buf = Vec::with_capacity(ms.len() * 320);
        let mut recs = Vec::with_capacity(ms.len());
        let mut at = j.tail;
        for m in ms {
            let len = record(KIND_LINE, &SpillLine::encode(m), &mut buf);
            at += len;
            recs.push((at, len));
        }
        match j.file.write_all_at(&buf, j.tail) {
            Ok(()) => {
                j.tail = at;
                Some(recs)
            }
            Err(e) => {
                tracing::error!(error = %e, lines = ms.len(), "outage buffer: cannot write the spill file; held lines are in memory only (lost if the node stops)");
                self.spill_failed = true;
                None
            }
        }
    }

    /// The journal, opened (and emptied) on first use.
    fn journal_file(&mut self) -> Option<&mut Journal> {
        if self.journal.is_none() && !self.spill_failed {
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
                .open(&path)
                .and_then(|file| {
                    let pre = preamble(&self.owner());
                    file.write_all_at(&pre, 0)?;
                    Ok((file, pre.len() as u64))
                });
            match opened {
                Ok((file, tail)) => {
                    tracing::warn!(file = %path.display(), "outage buffer: journaling held lines to the spill file");
                    self.journal = Some(Journal {
                        file,
                        head: HEADER,
                        tail,
                        mem_off: tail,
                        lines: 0,
                        bytes: 0,
                    });
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "outage buffer: cannot open the spill file; memory only (lost if the node stops)");
                    self.spill_failed = true;
                }
            }
        }
        self.journal.as_mut()
    }

    fn owner(&self) -> SpillOwner {
        SpillOwner {
            node: self.cfg.node.clone(),
            store: self.cfg.store.clone(),
        }
    }

    /// Rewrites the side file of gap markers (removes it when there are none).
    fn save_gaps(&self) {
        let Some(path) = self.cfg.gaps_path() else {
            return;
        };
        if self.gaps.is_empty() {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::error!(file = %path.display(), error = %e, "outage buffer: cannot remove the gap markers' file");
                }
            }
            return;
        }
        let mut buf = preamble(&self.owner());
        for g in &self.gaps {
            record(KIND_GAP, &SpillLine::encode(&g.marker), &mut buf);
        }
        let tmp = side(&path, "tmp");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|f| f.write_all_at(&buf, 0))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::error!(file = %path.display(), error = %e, "outage buffer: cannot write the gap markers' file");
        }
    }

    /// Drops the oldest spilled lines into gaps until the spill part is within its
    /// limit.
    fn trim_spill(&mut self) -> u64 {
        let limit = self.cfg.spill_bytes;
        let Some(j) = self.journal.as_mut() else {
            return 0;
        };
        let mut dropped = Vec::new();
        while j.bytes > limit && j.lines > 0 {
            // Read ahead in modest steps: lines are a few hundred bytes each.
            match j.peek(1024) {
                Ok(lines) => {
                    let (mut taken, mut bytes, mut to) = (0, 0, j.head);
                    let read = lines.len();
                    for (m, end, len) in lines {
                        if j.bytes - bytes <= limit {
                            break;
                        }
                        dropped.push(m);
                        taken += 1;
                        bytes += len;
                        to = end;
                    }
                    j.consume(taken, bytes, to);
                    if taken == 0 || read == 0 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, lines = j.lines, "outage buffer: the spill file cannot be read back; its lines are lost");
                    let (n, bytes, to) = (j.lines, j.bytes, j.mem_off);
                    j.consume(n, bytes, to);
                    self.spill_failed = true;
                    return self.gap_all(dropped) + n as u64;
                }
            }
        }
        self.save_head();
        self.gap_all(dropped)
    }

    fn save_head(&self) {
        if let Some(j) = &self.journal {
            if let Err(e) = j.save_head() {
                tracing::error!(error = %e, "outage buffer: cannot update the spill file's head");
            }
        }
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
            spill_bytes: 0,
            spill_to: 0,
            memory: 0,
        };
        for g in self.gaps.iter().take(n) {
            f.messages.push(g.marker.clone());
            f.gaps += 1;
        }
        if let Some(j) = &self.journal {
            f.spill_to = j.head;
            if j.lines > 0 && f.messages.len() < n {
                for (m, end, len) in j.peek(n - f.messages.len())? {
                    f.messages.push(m);
                    f.spill_lines += 1;
                    f.spill_bytes += len;
                    f.spill_to = end;
                }
            }
        }
        if f.spill_lines == self.journal.as_ref().map_or(0, |j| j.lines) {
            let room = n - f.messages.len();
            for e in self.memory.iter().take(room) {
                f.messages.push(e.m.clone());
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
        let mut to = f.spill_to;
        for e in self.memory.drain(..f.memory) {
            if let Some((end, _)) = e.rec {
                to = to.max(end);
            }
        }
        if let Some(j) = &mut self.journal {
            j.consume(f.spill_lines, f.spill_bytes, to);
        }
        if self.is_empty() {
            self.spill_failed = false;
            self.empty_files();
        } else {
            self.save_head();
            if f.gaps > 0 {
                self.save_gaps();
            }
        }
    }

    /// Empties the spill file and removes the gap markers' file: nothing is held.
    fn empty_files(&mut self) {
        if let Some(j) = self.journal.take() {
            if let Err(e) = j.file.set_len(0) {
                tracing::error!(error = %e, "outage buffer: cannot truncate the spill file");
            }
        }
        self.gaps.clear();
        self.gap_index.clear();
        self.save_gaps();
    }

    /// Empties the buffer (the lease is lost: these lines are not ours to write).
    /// Returns how many lines it held.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.len();
        self.memory.clear();
        self.empty_files();
        self.spill_failed = false;
        n
    }

    /// The node stops with lines held: they stay in the spill file (synced to disk)
    /// for the next start to write back; what memory held without it is lost.
    pub(crate) fn close(&mut self) -> Closed {
        let lost = self.memory.iter().filter(|e| e.rec.is_none()).count();
        let mut kept = self.len() - lost;
        self.save_gaps();
        let mut synced = self.journal.as_ref().map_or(Ok(()), |j| {
            j.save_head()?;
            j.file.sync_all()
        });
        if let Some(p) = self.cfg.gaps_path().filter(|_| !self.gaps.is_empty()) {
            synced = synced.and_then(|()| File::open(p)?.sync_all());
        }
        if let Err(e) = synced {
            tracing::error!(error = %e, "outage buffer: cannot sync the spill file at shutdown; it is kept as the page cache has it");
        }
        if self.journal.is_none() {
            // Only gap markers: they are in their file.
            kept = self.gaps.len();
        }
        self.memory.clear();
        self.gaps.clear();
        self.gap_index.clear();
        self.journal = None;
        Closed { kept, lost }
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
            stream: None,
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

    /// A held line keeps its shared stream through the spill record; a record of an
    /// older Ferry (no `stream` field) still reads, as a per-user line.
    #[test]
    fn spill_records_keep_the_stream() {
        let mut m = line(1, 5, "#a", "shared");
        m.stream = Some(std::sync::Arc::new(StreamKey {
            node: "n1".into(),
            server: "irc.example.org:6697".into(),
            channel: b"#a\xff".to_vec(),
        }));
        let back = SpillLine::decode(&SpillLine::encode(&m)).unwrap();
        assert_eq!(back.stream, m.stream);
        assert_eq!(key(&back), key(&m));
        let plain = SpillLine::encode(&line(1, 6, "#a", "own"));
        assert!(!String::from_utf8_lossy(&plain).contains("stream"));
        let mut old: serde_json::Value = serde_json::from_slice(&SpillLine::encode(&m)).unwrap();
        old.as_object_mut().unwrap().remove("stream");
        let back = SpillLine::decode(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(back.stream, None);
        assert_eq!(key(&back), key(&m));
    }

    #[test]
    fn memory_then_spill_come_back_in_order_with_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = Held::new(OutageConfig {
            memory_lines: 3,
            spill_bytes: 1 << 20,
            spill_path: Some(dir.path().join("n.spill")),
            ..OutageConfig::default()
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
        let one = record(
            KIND_LINE,
            &SpillLine::encode(&line(1, 1, "#a", "l1")),
            &mut Vec::new(),
        );
        let mut h = Held::new(OutageConfig {
            memory_lines: 2,
            // Room for about three lines.
            spill_bytes: one * 3 + 2,
            spill_path: Some(dir.path().join("n.spill")),
            ..OutageConfig::default()
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
            ..OutageConfig::default()
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

    fn journaled(dir: &Path, memory_lines: usize) -> OutageConfig {
        OutageConfig {
            memory_lines,
            spill_bytes: 1 << 20,
            spill_path: Some(dir.join("n1.spill")),
            node: "n1".into(),
            store: "postgres://db/ferry".into(),
        }
    }

    fn seqs(ms: &[NewMessage]) -> Vec<i64> {
        ms.iter().map(|m| m.seq).collect()
    }

    /// Offset of the `i`-th line record (0-based) in a journal of `lines`.
    fn line_offset(cfg: &OutageConfig, lines: &[NewMessage], i: usize) -> u64 {
        let mut at = preamble(&SpillOwner {
            node: cfg.node.clone(),
            store: cfg.store.clone(),
        })
        .len() as u64;
        for m in &lines[..i] {
            at += record(KIND_LINE, &SpillLine::encode(m), &mut Vec::new());
        }
        at
    }

    #[test]
    fn every_held_line_is_journaled_and_read_back_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = journaled(dir.path(), 3);
        let path = cfg.spill_path.clone().unwrap();
        let mut h = Held::new(cfg);
        let all: Vec<NewMessage> = (1..=6)
            .map(|s| line(1, s, "#a", &format!("l{s}")))
            .collect();
        assert_eq!(h.push(all[..4].to_vec()), 0);
        assert_eq!(h.push(all[4..].to_vec()), 0);
        // A crash: nothing closed, nothing synced; the file has all six, memory's too.
        let c = read_spill(&path).unwrap();
        assert_eq!(seqs(&c.lines), vec![1, 2, 3, 4, 5, 6]);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(
            c.owner,
            Some(SpillOwner {
                node: "n1".into(),
                store: "postgres://db/ferry".into()
            })
        );
        let odd = &c.lines[4];
        assert_eq!(odd.raw, all[4].raw);
        assert_eq!(odd.time, all[4].time);
        assert_eq!(odd.epoch, 3);
        // Two lines written back: the head moves past them, a restart skips them.
        let f = h.front(2).unwrap();
        assert_eq!(seqs(&f.messages), vec![1, 2]);
        h.consume(f);
        assert_eq!(seqs(&read_spill(&path).unwrap().lines), vec![3, 4, 5, 6]);
        // Past the spill part, into memory.
        let f = h.front(3).unwrap();
        assert_eq!(seqs(&f.messages), vec![3, 4, 5]);
        h.consume(f);
        assert_eq!(seqs(&read_spill(&path).unwrap().lines), vec![6]);
        // A clean stop keeps what is held.
        assert_eq!(h.close(), Closed { kept: 1, lost: 0 });
        assert_eq!(seqs(&read_spill(&path).unwrap().lines), vec![6]);
        assert!(spill_pending(&journaled(dir.path(), 3)));
    }

    #[test]
    fn a_torn_last_record_ends_the_reading_at_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = journaled(dir.path(), 100);
        let path = cfg.spill_path.clone().unwrap();
        let mut h = Held::new(cfg);
        h.push((1..=4).map(|s| line(1, s, "#a", "x")));
        drop(h);
        // The node died in the middle of appending the last record.
        let size = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(size - 5).unwrap();
        let c = read_spill(&path).unwrap();
        assert_eq!(seqs(&c.lines), vec![1, 2, 3]);
        assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
        assert!(c.problems[0].contains("torn record"), "{:?}", c.problems);
        // Only the 8-byte frame of a record made it.
        let cfg = journaled(dir.path(), 100);
        let fourth = line_offset(
            &cfg,
            &(1..=4).map(|s| line(1, s, "#a", "x")).collect::<Vec<_>>(),
            3,
        );
        f.set_len(fourth + 6).unwrap();
        let c = read_spill(&path).unwrap();
        assert_eq!(seqs(&c.lines), vec![1, 2, 3]);
        assert!(
            c.problems[0].contains("torn record header"),
            "{:?}",
            c.problems
        );
    }

    #[test]
    fn a_checksum_mismatch_ends_the_reading_there() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = journaled(dir.path(), 100);
        let path = cfg.spill_path.clone().unwrap();
        let lines: Vec<NewMessage> = (1..=5).map(|s| line(1, s, "#a", "hello")).collect();
        let mut h = Held::new(cfg.clone());
        h.push(lines.clone());
        drop(h);
        // One flipped bit in the third line's payload.
        let at = line_offset(&cfg, &lines, 2) + 30;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
        let c = read_spill(&path).unwrap();
        assert_eq!(seqs(&c.lines), vec![1, 2], "stops before the bad record");
        assert!(
            c.problems[0].contains("checksum does not match")
                && c.problems[0].contains(&format!("offset {}", at - 30)),
            "{:?}",
            c.problems
        );
        // A torn head: everything from the first record is read again.
        let mut h = Held::new(cfg.clone());
        h.push(lines.clone());
        let f2 = h.front(2).unwrap();
        h.consume(f2);
        drop(h);
        assert_eq!(seqs(&read_spill(&path).unwrap().lines), vec![3, 4, 5]);
        f.write_all_at(&[0xff], 9).unwrap();
        let c = read_spill(&path).unwrap();
        assert_eq!(seqs(&c.lines), vec![1, 2, 3, 4, 5]);
        assert!(c.problems[0].contains("head"), "{:?}", c.problems);
        // Not a spill file at all.
        std::fs::write(&path, b"{\"user\":1}\n").unwrap();
        let c = read_spill(&path).unwrap();
        assert!(c.lines.is_empty());
        assert!(c.problems[0].contains("not a Ferry spill file"));
    }

    #[test]
    fn gap_markers_survive_in_their_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = journaled(dir.path(), 2);
        cfg.spill_bytes = 0;
        let path = cfg.spill_path.clone().unwrap();
        let mut h = Held::new(cfg);
        assert_eq!(h.push((1..=5).map(|s| line(1, s, "#a", "x"))), 3);
        drop(h);
        let c = read_spill(&path).unwrap();
        assert_eq!(seqs(&c.gaps), vec![1]);
        assert!(
            c.gaps[0].text.starts_with("3 lines from"),
            "{}",
            c.gaps[0].text
        );
        assert_eq!(seqs(&c.lines), vec![4, 5]);
        // Written back: both files are emptied.
        let mut h = Held::new(journaled(dir.path(), 2));
        h.push([line(1, 9, "#a", "x")]);
        let got = drain(&mut h, 10);
        assert_eq!(seqs(&got), vec![9]);
        assert!(!spill_pending(&journaled(dir.path(), 2)));
        assert!(!side(&path, "gaps").exists());
    }
}
