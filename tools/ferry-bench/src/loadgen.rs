//! Simulated people on real IRC servers, and readers for clients attached to a bouncer.
//!
//! [`People`] is driven by one task that owns every person (no shared state): each tick
//! it draws an event from the [`Mix`] and has a person do it. Channel popularity and
//! people's chattiness are heavy-tailed (Zipf), so a few channels are busy and most are
//! quiet. A person whose connection died (a `QUIT` event, a netsplit's victim, a
//! restarted server) is reconnected the next time they are drawn, at most every 2 s —
//! so after a mass reconnect people come back at random times, as they do.
//!
//! Everything is bounded: [`People::run`] stops at its deadline, its event budget or
//! its cancel token, whichever comes first.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::client::{source_ip, Conn, Writer};
use crate::words::{pick, zipf_weights, Words};

/// The traffic mix. Every field has a default (see `tools/README.md` for where the
/// defaults come from); a TOML file may set any subset.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mix {
    /// Simulated people connected directly to the IRC server(s).
    pub people: usize,
    /// Channels they use.
    pub channels: usize,
    /// Zipf exponent of channel popularity (membership and message share).
    pub channel_zipf: f64,
    /// Zipf exponent of how chatty people are.
    pub person_zipf: f64,
    /// Channels each person joins at first: between these bounds.
    pub min_channels_per_person: usize,
    pub max_channels_per_person: usize,
    /// Events per second, all people together.
    pub events_per_second: f64,
    /// Relative weights of the event kinds.
    pub weights: Weights,
    /// Length of a "long line" in bytes (servers cut at 512 with the prefix).
    pub long_line_bytes: usize,
    /// With two linked servers: split the link every this many seconds (0 = never).
    pub netsplit_every_secs: f64,
    /// Restart the (hub) server once at this time, in seconds (0 = never).
    pub mass_reconnect_at_secs: f64,
    /// Vocabulary size and Zipf exponent of words.
    pub vocabulary: usize,
    pub word_zipf: f64,
    pub seed: u64,
}

/// Relative frequencies of events.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    pub privmsg: f64,
    pub action: f64,
    pub latin1: f64,
    pub long_line: f64,
    pub private_message: f64,
    pub join_part: f64,
    pub quit: f64,
    pub nick: f64,
    pub away: f64,
    pub topic: f64,
    pub mode: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            privmsg: 78.0,
            action: 3.0,
            latin1: 2.0,
            long_line: 2.0,
            private_message: 5.0,
            join_part: 4.0,
            quit: 2.0,
            nick: 1.5,
            away: 1.5,
            topic: 0.5,
            mode: 0.5,
        }
    }
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            people: 60,
            channels: 20,
            channel_zipf: 1.0,
            person_zipf: 0.8,
            min_channels_per_person: 1,
            max_channels_per_person: 5,
            events_per_second: 20.0,
            weights: Weights::default(),
            long_line_bytes: 420,
            netsplit_every_secs: 30.0,
            mass_reconnect_at_secs: 0.0,
            vocabulary: 20_000,
            word_zipf: 1.0,
            seed: 6,
        }
    }
}

impl Mix {
    /// Reads a TOML mix file (missing fields keep their defaults).
    pub fn load(path: &std::path::Path) -> anyhow::Result<Mix> {
        let text = std::fs::read_to_string(path)?;
        Ok(toml::from_str(&text)?)
    }

    /// The channel names, most popular first.
    pub fn channel_names(&self) -> Vec<String> {
        (0..self.channels).map(|c| format!("#chat{c}")).collect()
    }
}

struct Person {
    base: String,
    nick: String,
    server: usize,
    index: usize,
    joined: Vec<usize>,
    away: bool,
    writer: Option<Writer>,
    alive: Arc<AtomicBool>,
    next_reconnect: Instant,
}

/// Counters of what the people did and saw.
#[derive(Default, Debug, Serialize)]
pub struct PeopleReport {
    pub events: BTreeMap<String, u64>,
    pub lines_received: u64,
    pub reconnects: u64,
    pub send_errors: u64,
    pub netsplits: u64,
    pub elapsed_secs: f64,
}

/// The simulated people and their driver.
pub struct People {
    mix: Mix,
    servers: Vec<String>,
    people: Vec<Person>,
    /// Index of the person holding op in each channel (never parts or quits).
    owners: Vec<usize>,
    channel_w: Vec<f64>,
    person_w: Vec<f64>,
    words: Words,
    rng: StdRng,
    received: Arc<AtomicU64>,
    /// Nicks outside the simulation that may get private messages (bouncer users).
    pub extra_targets: Vec<String>,
    report: PeopleReport,
}

impl People {
    /// Connects `mix.people` people, spread over `servers` (people `i` on server
    /// `i % len`), each from its own loopback address, and joins their channels.
    pub async fn connect(mix: &Mix, servers: &[String]) -> anyhow::Result<People> {
        let mut rng = StdRng::seed_from_u64(mix.seed);
        let channel_w = zipf_weights(mix.channels.max(1), mix.channel_zipf);
        let person_w = zipf_weights(mix.people.max(1), mix.person_zipf);
        let mut people = Vec::new();
        let mut owners = vec![usize::MAX; mix.channels];
        for i in 0..mix.people {
            let k = rng
                .gen_range(mix.min_channels_per_person.max(1)..=mix.max_channels_per_person.max(1));
            let mut joined = Vec::new();
            for _ in 0..k * 3 {
                if joined.len() >= k {
                    break;
                }
                let c = pick(&channel_w, &mut rng);
                if !joined.contains(&c) {
                    joined.push(c);
                }
            }
            for &c in &joined {
                if owners[c] == usize::MAX {
                    owners[c] = i;
                }
            }
            people.push(Person {
                base: format!("p{i}"),
                nick: format!("p{i}"),
                server: i % servers.len().max(1),
                index: i,
                joined,
                away: false,
                writer: None,
                alive: Arc::new(AtomicBool::new(false)),
                next_reconnect: Instant::now(),
            });
        }
        // Every channel gets an owner, who joins it first and so holds op.
        for (c, owner) in owners.iter_mut().enumerate() {
            if *owner == usize::MAX && !people.is_empty() {
                *owner = c % people.len();
                let p = &mut people[*owner];
                if !p.joined.contains(&c) {
                    p.joined.push(c);
                }
            }
        }
        let mut me = People {
            words: Words::new(mix.vocabulary, mix.word_zipf),
            mix: mix.clone(),
            servers: servers.to_vec(),
            people,
            owners,
            channel_w,
            person_w,
            rng,
            received: Arc::new(AtomicU64::new(0)),
            extra_targets: Vec::new(),
            report: PeopleReport::default(),
        };
        // Owners first, one by one, so they are the channels' first members (op).
        let mut order: Vec<usize> = me.owners.clone();
        order.sort();
        order.dedup();
        for i in order {
            me.reconnect(i).await?;
        }
        let rest: Vec<usize> = (0..me.people.len())
            .filter(|i| !me.people[*i].alive.load(Ordering::Relaxed))
            .collect();
        for chunk in rest.chunks(50) {
            let conns = futures_join(chunk.iter().map(|&i| {
                let addr = me.servers[me.people[i].server].clone();
                let nick = me.people[i].nick.clone();
                async move {
                    let mut c = Conn::connect(&addr, Some(source_ip(i))).await?;
                    c.register(&nick, None).await?;
                    anyhow::Ok(c)
                }
            }))
            .await;
            for (&i, c) in chunk.iter().zip(conns) {
                me.adopt(i, c?).await;
            }
        }
        me.report.reconnects = 0;
        Ok(me)
    }

    /// All channel memberships the people hold now.
    pub fn memberships(&self) -> usize {
        self.people.iter().map(|p| p.joined.len()).sum()
    }

    async fn adopt(&mut self, i: usize, conn: Conn) {
        let p = &mut self.people[i];
        let w = conn.writer.clone();
        for c in &p.joined {
            let _ = w.send(format!("JOIN #chat{c}")).await;
        }
        if p.away {
            let _ = w.send("AWAY :away").await;
        }
        p.alive = Arc::new(AtomicBool::new(true));
        p.writer = Some(w);
        let alive = p.alive.clone();
        let received = self.received.clone();
        tokio::spawn(drain(conn, alive, received));
    }

    async fn reconnect(&mut self, i: usize) -> anyhow::Result<()> {
        let p = &mut self.people[i];
        p.next_reconnect = Instant::now() + Duration::from_secs(2);
        p.nick = p.base.clone();
        let addr = self.servers[p.server].clone();
        let mut c = Conn::connect(&addr, Some(source_ip(i))).await?;
        c.register(&p.nick.clone(), None).await?;
        self.adopt(i, c).await;
        self.report.reconnects += 1;
        Ok(())
    }

    /// Runs events until `deadline`, `max_events` or `cancel`. With several servers,
    /// splits the link every `netsplit_every_secs` (the hub relinks by itself).
    pub async fn run(
        &mut self,
        duration: Duration,
        max_events: u64,
        cancel: &CancellationToken,
    ) -> &PeopleReport {
        let t0 = Instant::now();
        let deadline = t0 + duration;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(
            1.0 / self.mix.events_per_second.max(0.1),
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut next_split = (self.servers.len() > 1 && self.mix.netsplit_every_secs > 0.0)
            .then(|| t0 + Duration::from_secs_f64(self.mix.netsplit_every_secs));
        let mut n = 0;
        while n < max_events && Instant::now() < deadline {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Some(at) = next_split {
                if Instant::now() >= at {
                    self.netsplit().await;
                    next_split = Some(at + Duration::from_secs_f64(self.mix.netsplit_every_secs));
                }
            }
            self.event().await;
            n += 1;
        }
        self.report.lines_received = self.received.load(Ordering::Relaxed);
        self.report.elapsed_secs = t0.elapsed().as_secs_f64();
        &self.report
    }

    fn count(&mut self, kind: &str) {
        *self.report.events.entry(kind.to_string()).or_default() += 1;
    }

    /// `SQUIT` the leaf from the hub as an oper: every person on the other side QUITs
    /// with `hub.bench leaf.bench` for the rest; the hub's autoconnect rejoins them.
    async fn netsplit(&mut self) {
        let r = async {
            let mut c = Conn::connect(&self.servers[0], Some(crate::ircd::PROBE_IP)).await?;
            c.register(&format!("oper{}", self.rng.gen::<u16>()), None)
                .await?;
            let (u, p) = crate::ircd::OPER;
            c.send(format!("OPER {u} {p}")).await?;
            c.expect("381", Duration::from_secs(10), |l| l.command == "381")
                .await?;
            c.send("SQUIT leaf.bench :bench netsplit").await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            c.send("QUIT").await?;
            anyhow::Ok(())
        }
        .await;
        match r {
            Ok(()) => {
                self.report.netsplits += 1;
                self.count("netsplit");
            }
            Err(_) => self.report.send_errors += 1,
        }
    }

    async fn event(&mut self) {
        if self.people.is_empty() {
            return;
        }
        let i = pick(&self.person_w, &mut self.rng);
        if !self.people[i].alive.load(Ordering::Relaxed) {
            if Instant::now() >= self.people[i].next_reconnect {
                if self.reconnect(i).await.is_err() {
                    self.report.send_errors += 1;
                }
                self.count("reconnect");
            }
            return;
        }
        let w = &self.mix.weights;
        let kinds = [
            ("privmsg", w.privmsg),
            ("action", w.action),
            ("latin1", w.latin1),
            ("long_line", w.long_line),
            ("private_message", w.private_message),
            ("join_part", w.join_part),
            ("quit", w.quit),
            ("nick", w.nick),
            ("away", w.away),
            ("topic", w.topic),
            ("mode", w.mode),
        ];
        let weights: Vec<f64> = kinds.iter().map(|k| k.1).collect();
        let kind = kinds[pick(&weights, &mut self.rng)].0;
        let chan = self.channel_of(i);
        let text = self.words.sentence(&mut self.rng);
        let line: Vec<u8> = match kind {
            "privmsg" => format!("PRIVMSG #chat{chan} :{text}").into_bytes(),
            "action" => format!("PRIVMSG #chat{chan} :\x01ACTION {text}\x01").into_bytes(),
            "latin1" => {
                // Latin-1 bytes, invalid as UTF-8: "café, naïve garçon, über".
                let mut l = format!("PRIVMSG #chat{chan} :{text} caf").into_bytes();
                l.extend_from_slice(b"\xe9, na\xefve gar\xe7on, \xfcber");
                l
            }
            "long_line" => {
                let mut t = text;
                while t.len() < self.mix.long_line_bytes {
                    t.push(' ');
                    t.push_str(self.words.word(&mut self.rng));
                }
                format!("PRIVMSG #chat{chan} :{t}").into_bytes()
            }
            "private_message" => {
                let use_extra = !self.extra_targets.is_empty() && self.rng.gen_bool(0.5);
                let target = if use_extra {
                    self.extra_targets[self.rng.gen_range(0..self.extra_targets.len())].clone()
                } else {
                    self.people[self.rng.gen_range(0..self.people.len())]
                        .nick
                        .clone()
                };
                format!("PRIVMSG {target} :{text}").into_bytes()
            }
            "join_part" => {
                let p = &self.people[i];
                let owned: Vec<usize> = (0..self.owners.len())
                    .filter(|c| self.owners[*c] == i)
                    .collect();
                let partable: Vec<usize> = p
                    .joined
                    .iter()
                    .copied()
                    .filter(|c| !owned.contains(c))
                    .collect();
                if !partable.is_empty() && (p.joined.len() > 2 || self.rng.gen_bool(0.5)) {
                    let c = partable[self.rng.gen_range(0..partable.len())];
                    self.people[i].joined.retain(|x| *x != c);
                    format!("PART #chat{c} :later").into_bytes()
                } else {
                    let c = pick(&self.channel_w, &mut self.rng);
                    if !self.people[i].joined.contains(&c) {
                        self.people[i].joined.push(c);
                    }
                    format!("JOIN #chat{c}").into_bytes()
                }
            }
            "quit" => {
                if self.owners.contains(&i) {
                    format!("PRIVMSG #chat{chan} :{text}").into_bytes()
                } else {
                    self.people[i].alive.store(false, Ordering::Relaxed);
                    self.people[i].next_reconnect = Instant::now() + Duration::from_secs(2);
                    b"QUIT :Quit: leaving".to_vec()
                }
            }
            "nick" => {
                let p = &mut self.people[i];
                p.nick = if p.nick == p.base {
                    format!("{}_away", p.base)
                } else {
                    p.base.clone()
                };
                format!("NICK {}", p.nick).into_bytes()
            }
            "away" => {
                let p = &mut self.people[i];
                p.away = !p.away;
                if p.away {
                    b"AWAY :gone for lunch".to_vec()
                } else {
                    b"AWAY".to_vec()
                }
            }
            "topic" => format!("TOPIC #chat{chan} :{text}").into_bytes(),
            "mode" => {
                let owner = self.owners[chan];
                let target = self.people[i].nick.clone();
                let sign = if self.rng.gen_bool(0.5) { '+' } else { '-' };
                match self.people.get(owner).and_then(|o| o.writer.clone()) {
                    Some(ow) if self.people[owner].alive.load(Ordering::Relaxed) => {
                        self.count("mode");
                        if ow
                            .send(format!("MODE #chat{chan} {sign}v {target}"))
                            .await
                            .is_err()
                        {
                            self.report.send_errors += 1;
                        }
                        return;
                    }
                    _ => format!("PRIVMSG #chat{chan} :{text}").into_bytes(),
                }
            }
            _ => unreachable!(),
        };
        self.count(kind);
        let ok = match &self.people[i].writer {
            Some(wr) => wr.send(&line).await.is_ok(),
            None => false,
        };
        if !ok {
            self.report.send_errors += 1;
            self.people[i].alive.store(false, Ordering::Relaxed);
        }
        let _ = self.people[i].index;
    }

    fn channel_of(&mut self, i: usize) -> usize {
        let p = &self.people[i];
        if p.joined.is_empty() {
            return 0;
        }
        let w: Vec<f64> = p.joined.iter().map(|c| self.channel_w[*c]).collect();
        p.joined[pick(&w, &mut self.rng)]
    }

    /// Quits everyone.
    pub async fn quit_all(&mut self) {
        for p in &mut self.people {
            if let Some(w) = p.writer.take() {
                let _ = w.send("QUIT :bench over").await;
            }
        }
    }
}

async fn futures_join<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futs.collect();
    let mut out = Vec::with_capacity(handles.len());
    // Loopback registrations are quick; a simple join keeps dependencies small.
    let mut set = Vec::new();
    for f in handles {
        set.push(Box::pin(f));
    }
    for f in set {
        out.push(f.await);
    }
    out
}

async fn drain(mut conn: Conn, alive: Arc<AtomicBool>, received: Arc<AtomicU64>) {
    while let Ok(Some(_)) = conn.next_raw().await {
        received.fetch_add(1, Ordering::Relaxed);
    }
    alive.store(false, Ordering::Relaxed);
}

/// What the clients attached to a bouncer received: lines, and for probe lines
/// (`bench <id> <sent_us> …`) the receive time of each.
#[derive(Default)]
pub struct Recorder {
    pub lines: AtomicU64,
    pub probes: AtomicU64,
    pub closed: AtomicU64,
    /// `(id, received_us)` of probe lines, kept only when `keep_samples`.
    pub samples: Mutex<Vec<(u64, u64)>>,
    pub keep_samples: bool,
}

impl Recorder {
    pub fn new(keep_samples: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            keep_samples,
            ..Recorder::default()
        })
    }
}

/// Reads `conn` until EOF or `cancel`, recording into `rec`.
pub fn spawn_reader(
    mut conn: Conn,
    rec: Arc<Recorder>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let line = tokio::select! {
                () = cancel.cancelled() => break,
                l = conn.next_raw() => l,
            };
            let Ok(Some(raw)) = line else {
                rec.closed.fetch_add(1, Ordering::Relaxed);
                break;
            };
            let now = crate::now_us();
            rec.lines.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = probe_id(&raw) {
                rec.probes.fetch_add(1, Ordering::Relaxed);
                if rec.keep_samples {
                    rec.samples.lock().unwrap().push((id, now));
                }
            }
        }
        let _ = conn.send("QUIT :bench done").await;
    })
}

/// The id of a probe line `… PRIVMSG #x :bench <id> <sent_us> …`.
pub fn probe_id(raw: &[u8]) -> Option<u64> {
    let pos = raw.windows(7).position(|w| w == b" :bench")?;
    let rest = std::str::from_utf8(&raw[pos + 8..]).ok()?;
    rest.split(' ').next()?.parse().ok()
}

/// A probe line's text: `bench <id> <sent_us>` and some words.
pub fn probe_text(id: u64, words: &Words, rng: &mut impl Rng) -> String {
    format!("bench {id} {} {}", crate::now_us(), words.sentence(rng))
}
