//! The spill file: its records (length, CRC-32C, kind, JSON payload), the header
//! with the write-back head, the appending journal, and reading it back.

use super::*;

/// One held line as a record payload (see the module docs for the format).
#[derive(Serialize, Deserialize)]
pub(super) struct SpillLine {
    pub(super) user: UserId,
    pub(super) seq: i64,
    pub(super) network: NetworkId,
    pub(super) buffer: String,
    pub(super) buffer_key: String,
    /// Microseconds since the epoch (stored times are whole milliseconds).
    pub(super) time_us: i64,
    pub(super) sender: String,
    pub(super) command: String,
    pub(super) raw: String,
    pub(super) text: String,
    pub(super) msgid: Option<String>,
    pub(super) epoch: i64,
    /// The shared stream (`NewMessage::stream`); absent in files of older Ferrys and
    /// for per-user lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) stream: Option<SpillStream>,
}

/// A [`StreamKey`] in a spill record (the channel in base64).
#[derive(Serialize, Deserialize)]
pub(super) struct SpillStream {
    node: String,
    server: String,
    channel: String,
}

impl SpillLine {
    pub(super) fn encode(m: &NewMessage) -> Vec<u8> {
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
            stream: m.stream.as_deref().map(|k| SpillStream {
                node: k.node.clone(),
                server: k.server.clone(),
                channel: B64.encode(&k.channel),
            }),
        };
        serde_json::to_vec(&line).expect("serialising to memory cannot fail")
    }

    pub(super) fn decode(line: &[u8]) -> std::io::Result<NewMessage> {
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
            stream: match l.stream {
                None => None,
                Some(k) => Some(std::sync::Arc::new(StreamKey {
                    node: k.node,
                    server: k.server,
                    channel: b64(&k.channel)?,
                })),
            },
        })
    }
}

pub(super) fn bad(e: &dyn std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

/// Who a spill file belongs to (its first record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpillOwner {
    pub node: String,
    pub store: String,
}

pub(super) const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);
pub(super) const MAGIC: &[u8; 8] = b"FERRYSP1";
/// Bytes of the header: magic, head, its checksum, padding.
pub(super) const HEADER: u64 = 24;
pub(super) const KIND_OWNER: u8 = 0;
pub(super) const KIND_LINE: u8 = 1;
pub(super) const KIND_GAP: u8 = 2;
/// No record is larger (a line is at most a few KiB): a larger length is garbage.
pub(super) const MAX_RECORD: u64 = 16 << 20;
/// How much a read may take at once.
pub(super) const SPILL_READ: usize = 1 << 20;

pub(super) fn header(head: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&head.to_le_bytes());
    h[16..20].copy_from_slice(&CRC.checksum(&head.to_le_bytes()).to_le_bytes());
    h
}

/// Appends one record to `out`; returns its length.
pub(super) fn record(kind: u8, payload: &[u8], out: &mut Vec<u8>) -> u64 {
    let len = payload.len() as u64 + 1;
    let mut d = CRC.digest();
    d.update(&[kind]);
    d.update(payload);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&d.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    8 + len
}

/// A file's header and owner record.
pub(super) fn preamble(owner: &SpillOwner) -> Vec<u8> {
    let mut buf = header(HEADER).to_vec();
    let payload = serde_json::to_vec(owner).expect("serialising to memory cannot fail");
    record(KIND_OWNER, &payload, &mut buf);
    buf
}

/// One record read back.
pub(super) struct Rec {
    pub(super) kind: u8,
    pub(super) payload: Vec<u8>,
    /// Offset after it.
    pub(super) end: u64,
    /// Its length, framing included.
    pub(super) len: u64,
}

/// Why reading stopped before the end.
#[derive(Debug)]
pub(super) enum Stop {
    Io(std::io::Error),
    /// Torn or corrupt at this offset.
    Bad(u64, &'static str),
}

/// Reads records from `pos` up to `end`.
pub(super) struct Records<'a> {
    pub(super) file: &'a File,
    pub(super) pos: u64,
    pub(super) end: u64,
    pub(super) buf: Vec<u8>,
    /// File offset of `buf[0]`.
    pub(super) at: u64,
}

impl<'a> Records<'a> {
    pub(super) fn new(file: &'a File, pos: u64, end: u64) -> Records<'a> {
        Records {
            file,
            pos,
            end,
            buf: Vec::new(),
            at: 0,
        }
    }

    /// `n` bytes at `from` (which the caller checked lie before `end`).
    pub(super) fn bytes(&mut self, from: u64, n: usize) -> Result<&[u8], Stop> {
        let have = from >= self.at && from + n as u64 <= self.at + self.buf.len() as u64;
        if !have {
            let left = usize::try_from(self.end - from).unwrap_or(usize::MAX);
            let want = n.max(SPILL_READ).min(left).max(n);
            self.buf.resize(want, 0);
            self.file
                .read_exact_at(&mut self.buf, from)
                .map_err(Stop::Io)?;
            self.at = from;
        }
        let s = usize::try_from(from - self.at).unwrap_or(usize::MAX);
        Ok(&self.buf[s..s + n])
    }

    pub(super) fn next(&mut self) -> Result<Option<Rec>, Stop> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let at = self.pos;
        if self.end - at < 8 {
            return Err(Stop::Bad(at, "a torn record header"));
        }
        let h = self.bytes(at, 8)?;
        let len = u64::from(u32::from_le_bytes(h[..4].try_into().expect("4 bytes")));
        let sum = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD {
            return Err(Stop::Bad(at, "a record of impossible length"));
        }
        if at + 8 + len > self.end {
            return Err(Stop::Bad(at, "a torn record (shorter than its length)"));
        }
        let n = usize::try_from(len).expect("below MAX_RECORD");
        let body = self.bytes(at + 8, n)?;
        if CRC.checksum(body) != sum {
            return Err(Stop::Bad(at, "a record whose checksum does not match"));
        }
        let rec = Rec {
            kind: body[0],
            payload: body[1..].to_vec(),
            end: at + 8 + len,
            len: 8 + len,
        };
        self.pos = rec.end;
        Ok(Some(rec))
    }
}

/// The journal: every held line, from `head` (next to write back) to `tail` (next
/// to append). Lines before `mem_off` are only here (the spill part); the rest are
/// also in memory.
pub(super) struct Journal {
    pub(super) file: File,
    pub(super) head: u64,
    pub(super) tail: u64,
    pub(super) mem_off: u64,
    /// Lines in the spill part.
    pub(super) lines: usize,
    /// Bytes of their records.
    pub(super) bytes: u64,
}

impl Journal {
    /// Up to `n` lines of the spill part from its start, with the offset after each
    /// and its length.
    pub(super) fn peek(&self, n: usize) -> std::io::Result<Vec<(NewMessage, u64, u64)>> {
        let mut out = Vec::new();
        let mut r = Records::new(&self.file, self.head, self.mem_off);
        while out.len() < n {
            let Some(rec) = r.next()? else { break };
            if rec.kind == KIND_LINE {
                out.push((SpillLine::decode(&rec.payload)?, rec.end, rec.len));
            }
        }
        Ok(out)
    }

    /// Writes back through `to`: `lines` lines of `bytes` from the spill part.
    pub(super) fn consume(&mut self, lines: usize, bytes: u64, to: u64) {
        self.lines -= lines;
        self.bytes -= bytes;
        self.head = self.head.max(to);
        self.mem_off = self.mem_off.max(self.head);
    }

    /// Records the head in the header.
    pub(super) fn save_head(&self) -> std::io::Result<()> {
        self.file.write_all_at(&header(self.head), 0)
    }
}

/// What a spill file held, read back at start.
#[derive(Debug, Default)]
pub struct SpillContents {
    /// Who wrote it (`None`: empty, or no owner record).
    pub owner: Option<SpillOwner>,
    /// Lines after the head, in order.
    pub lines: Vec<NewMessage>,
    /// Gap markers (from the side file).
    pub gaps: Vec<NewMessage>,
    /// Where and why reading stopped early (a torn or corrupt record), if it did.
    pub problems: Vec<String>,
}

/// Reads one file of the format; `kind` is the records wanted.
pub(super) fn read_file(
    path: &Path,
    kind: u8,
    c: &mut SpillContents,
) -> std::io::Result<Vec<NewMessage>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut h = [0u8; HEADER as usize];
    if size < HEADER || file.read_exact_at(&mut h, 0).is_err() || &h[..8] != MAGIC {
        c.problems.push(format!(
            "{}: not a Ferry spill file (no FERRYSP1 header); nothing read from it",
            path.display()
        ));
        return Ok(Vec::new());
    }
    let head = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let sum = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
    let mut r = Records::new(&file, HEADER, size);
    // The owner record first.
    match r.next() {
        Ok(Some(rec)) if rec.kind == KIND_OWNER => {
            let owner: SpillOwner = serde_json::from_slice(&rec.payload).map_err(|e| bad(&e))?;
            if c.owner.is_none() {
                c.owner = Some(owner);
            }
        }
        Ok(_) => {
            c.problems.push(format!(
                "{}: no owner record; nothing read from it",
                path.display()
            ));
            return Ok(Vec::new());
        }
        Err(Stop::Io(e)) => return Err(e),
        Err(Stop::Bad(at, why)) => {
            c.problems.push(format!(
                "{}: {why} at offset {at}; nothing read from it",
                path.display()
            ));
            return Ok(Vec::new());
        }
    }
    let after_owner = r.pos;
    if CRC.checksum(&head.to_le_bytes()) == sum && head <= size {
        r.pos = r.pos.max(head);
    } else {
        c.problems.push(format!(
            "{}: its head (how far it was written back) is torn; reading every record \
             (lines already stored are skipped by their ids)",
            path.display()
        ));
        r.pos = after_owner;
    }
    let mut out = Vec::new();
    loop {
        match r.next() {
            Ok(Some(rec)) if rec.kind == kind => out.push(SpillLine::decode(&rec.payload)?),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(Stop::Io(e)) => return Err(e),
            Err(Stop::Bad(at, why)) => {
                c.problems.push(format!(
                    "{}: {why} at offset {at}; the {} byte(s) from there on are ignored \
                     (what was appended last when the node stopped)",
                    path.display(),
                    size - at
                ));
                break;
            }
        }
    }
    Ok(out)
}

/// Reads back what a spill file (and its gap markers' file) held.
///
/// # Errors
/// The files cannot be read (not: a torn or corrupt record, which ends the reading
/// there and is reported in `problems`).
pub fn read_spill(path: &Path) -> std::io::Result<SpillContents> {
    let mut c = SpillContents::default();
    c.lines = read_file(path, KIND_LINE, &mut c)?;
    let gaps = read_file(&side(path, "gaps"), KIND_GAP, &mut c)?;
    // The side file holds each marker once; keep the last of any repeats.
    let mut seen = HashMap::new();
    for g in gaps {
        seen.insert((g.user_id, g.seq), c.gaps.len());
        c.gaps.push(g);
    }
    let keep: std::collections::HashSet<usize> = seen.into_values().collect();
    c.gaps = c
        .gaps
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, g)| g)
        .collect();
    Ok(c)
}

/// Whether `cfg`'s spill file holds something to write back.
pub fn spill_pending(cfg: &OutageConfig) -> bool {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    cfg.spill_path
        .as_deref()
        .is_some_and(|p| size(p) > 0 || size(&side(p, "gaps")) > 0)
}

impl From<Stop> for std::io::Error {
    fn from(s: Stop) -> std::io::Error {
        match s {
            Stop::Io(e) => e,
            Stop::Bad(at, why) => bad(&format!("spill file: {why} at offset {at}")),
        }
    }
}
