//! The systems under test, each as separate processes so their memory and CPU come
//! from `/proc`: Ferry (`ferry serve`) and ZNC (Debian `znc`).
//!
//! Both get the same layout (users, one plaintext network each on the same ircd, the
//! same channels) and both are attached with `PASS user/network:password`.
//!
//! ZNC connects at most one network per second (`ConnectDelay` has a floor of 1 s in
//! `CZNC::SetConnectDelay`, and its connect queue starts one network per tick). With
//! 1,000 users that is 17 minutes, so the bench may split ZNC's users over several
//! processes ([`ZncOpts::users_per_process`]); figures are summed over them and the
//! per-process baseline (an empty ZNC) is subtracted.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry::store::{NewNetwork, Store, TlsVerify};

use crate::client::{source_ip, Conn};
use crate::{ircd, procfs};

/// Password of every bench user.
pub const PASSWORD: &str = "bench-password";
/// The network name every bench user has.
pub const NETWORK: &str = "bench";

/// Who exists and which channels each user is in.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Channels of each user (one network each).
    pub users: Vec<Vec<String>>,
}

impl Layout {
    /// "Small channels": `n` users in groups of ten sharing five channels (5 channels
    /// of 10 members each).
    pub fn small(n: usize) -> Layout {
        Layout {
            users: (0..n)
                .map(|i| (0..5).map(|j| format!("#s{}", (i / 10) * 5 + j)).collect())
                .collect(),
        }
    }

    /// Everyone in the same five channels.
    pub fn shared(n: usize) -> Layout {
        Layout {
            users: (0..n)
                .map(|_| (0..5).map(|j| format!("#shared{j}")).collect())
                .collect(),
        }
    }

    /// Everyone in the given channels.
    pub fn all_in(n: usize, channels: &[&str]) -> Layout {
        Layout {
            users: vec![channels.iter().map(|c| c.to_string()).collect(); n],
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Every distinct channel, sorted.
    pub fn channels(&self) -> Vec<String> {
        let mut all: Vec<String> = self.users.iter().flatten().cloned().collect();
        all.sort();
        all.dedup();
        all
    }

    /// Memberships in total (what LIST sums to once everyone joined).
    pub fn memberships(&self) -> usize {
        self.users.iter().map(Vec::len).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Kind {
    Ferry,
    Znc,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ferry => "ferry",
            Kind::Znc => "znc",
        }
    }
}

/// A network's connect limits as `ferry limits set` takes them.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Limits {
    pub sessions_per_ip: u32,
    pub connects_per_minute: f64,
    /// Connects allowed back to back per source IP.
    pub burst: u32,
}

impl Limits {
    /// `limits set KEY …` arguments for the `ferry` CLI.
    pub fn cli_args(&self, key: &str) -> Vec<String> {
        vec![
            "limits".into(),
            "set".into(),
            key.into(),
            // Set before the benchmark's networks exist.
            "--force".into(),
            "--sessions-per-ip".into(),
            self.sessions_per_ip.to_string(),
            "--connects-per-minute".into(),
            self.connects_per_minute.to_string(),
            "--burst".into(),
            self.burst.to_string(),
        ]
    }

    /// The least time `n` connects take over `ips` source addresses under these
    /// limits: `max(0, n − burst × ips) × 60 / (R × ips)` seconds — the same formula
    /// `ferry migrate` plans with (`migrate::plan::bound`), called here so both agree.
    pub fn bound_secs(&self, key: &str, n: usize, ips: usize) -> f64 {
        ferry::migrate::plan::bound(
            key,
            n as i64,
            Some(&ferry::migrate::plan::NetLimits {
                sessions_per_ip: Some(self.sessions_per_ip),
                connects_per_minute: Some(self.connects_per_minute),
                burst: self.burst,
                connects_per_minute_total: None,
            }),
            ips.max(1),
        )
        .seconds
    }

    /// An InspIRCd `connflood` (period, maxconns) these limits keep under, from `ips`
    /// addresses: within a `period` window counted in whole seconds (so up to
    /// `period + 1` s of connects) they allow `ips × (burst + R/60 × (period + 1))`
    /// registrations; `maxconns` is that plus a small margin (an eighth, at least 3),
    /// since the `maxconns`-th registration of a window is the one refused.
    pub fn connflood(&self, ips: usize) -> (u32, u32) {
        let period = 2u32;
        let per_ip =
            f64::from(self.burst) + self.connects_per_minute / 60.0 * f64::from(period + 1);
        let allowed = (ips as f64 * per_ip).ceil() as u32;
        (period, allowed + (allowed / 8).max(3))
    }
}

/// How to run Ferry.
#[derive(Clone, Debug, Default)]
pub struct FerryOpts {
    /// `serve --source-ip` (repeated): upstream connections spread over these.
    pub source_ips: Vec<std::net::IpAddr>,
    /// Limits for the ircd's host, set with `ferry limits set` before `serve`.
    pub limits: Option<Limits>,
    /// `--database URL` (e.g. a scratch PostgreSQL database); default: SQLite in the
    /// node's data dir (`ferry.db`).
    pub database: Option<String>,
}

/// How to run ZNC.
#[derive(Clone, Copy, Debug)]
pub struct ZncOpts {
    /// Users per ZNC process (see the module docs); `usize::MAX` for one process.
    pub users_per_process: usize,
}

/// A running bouncer with a layout, on one ircd.
pub struct Bouncer {
    pub kind: Kind,
    pub users: usize,
    procs: Vec<Proc>,
    ferry_bin: Option<PathBuf>,
    dir: tempfile::TempDir,
    /// Ferry's HTTP port (metrics).
    pub http_port: u16,
    /// Ferry's `--database`, when not the SQLite file in `dir`.
    database: Option<String>,
}

struct Proc {
    child: Option<Child>,
    /// The IRC listener for clients.
    irc_port: u16,
    /// Users `first..first+count` are served by this process.
    first: usize,
    count: usize,
    log: PathBuf,
    args: Vec<String>,
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// The `ferry` binary: `FERRY_BIN`, else next to this executable.
pub fn find_ferry_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("ferry");
    if p.exists() {
        return Ok(p);
    }
    bail!(
        "no ferry binary next to {} (build it: cargo build --release --bin ferry, or set FERRY_BIN)",
        exe.display()
    )
}

/// Fails clearly when Debian's ZNC is not installed.
pub fn check_znc() -> anyhow::Result<()> {
    match Command::new("znc").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => bail!("ZNC is not installed: run scripts/test-deps.sh (installs Debian's znc)"),
    }
}

impl Bouncer {
    /// Ferry with `layout` against `ircd_addr`: users are created in its store
    /// (`Store::create_user`/`create_network`, as `ferry user add` does without a
    /// running node), then `ferry serve` starts and connects them all.
    pub async fn ferry(
        ferry_bin: &std::path::Path,
        ircd_addr: &str,
        layout: &Layout,
    ) -> anyhow::Result<Bouncer> {
        Self::ferry_with(ferry_bin, &[ircd_addr.to_string()], layout, 1).await
    }

    /// Ferry with `layout` against `ircd_addr`, with source IPs and limits.
    pub async fn ferry_opts(
        ferry_bin: &std::path::Path,
        ircd_addr: &str,
        layout: &Layout,
        opts: &FerryOpts,
    ) -> anyhow::Result<Bouncer> {
        Self::ferry_full(ferry_bin, &[ircd_addr.to_string()], layout, 1, opts).await
    }

    /// Ferry with `networks` networks per user, spread over `ircds`.
    pub async fn ferry_with(
        ferry_bin: &std::path::Path,
        ircds: &[String],
        layout: &Layout,
        networks: usize,
    ) -> anyhow::Result<Bouncer> {
        Self::ferry_full(ferry_bin, ircds, layout, networks, &FerryOpts::default()).await
    }

    async fn ferry_full(
        ferry_bin: &std::path::Path,
        ircds: &[String],
        layout: &Layout,
        networks: usize,
        opts: &FerryOpts,
    ) -> anyhow::Result<Bouncer> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-bench-node-")
            .tempdir()?;
        let db_url = opts
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("ferry.db").display()));
        provision_ferry_networks(&db_url, ircds, layout, networks).await?;
        fs::write(
            dir.path().join("ferry.toml"),
            // The websocket fan-out opens one socket per user, all from 127.0.0.1.
            format!(
                "[upstream]\nbackoff_min_secs = 1\nbackoff_max_secs = 10\n\n\
                 [http]\nmax_connections = 100000\nmax_connections_per_ip = 100000\n\n{}",
                // More settings for a comparison run, e.g. `[store]
                // share_channel_lines = false`.
                std::env::var("FERRY_BENCH_FERRY_TOML").unwrap_or_default()
            ),
        )?;
        if let Some(l) = &opts.limits {
            for addr in ircds {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                let data_dir = dir.path().display().to_string();
                let mut args = vec!["--data-dir".to_string(), data_dir];
                if let Some(db) = &opts.database {
                    args.extend(["--database".to_string(), db.clone()]);
                }
                args.extend(l.cli_args(host));
                ferry_cli(ferry_bin, &args).await?;
            }
        }
        let mut b = Bouncer {
            kind: Kind::Ferry,
            users: layout.len(),
            procs: Vec::new(),
            ferry_bin: Some(ferry_bin.to_path_buf()),
            http_port: crate::free_port(),
            dir,
            database: opts.database.clone(),
        };
        let irc_port = crate::free_port();
        let mut args = vec![
            "--data-dir".to_string(),
            b.dir.path().display().to_string(),
            "--config".to_string(),
            b.dir.path().join("ferry.toml").display().to_string(),
        ];
        if let Some(db) = &opts.database {
            args.extend(["--database".to_string(), db.clone()]);
        }
        args.extend([
            "serve".to_string(),
            "--http".to_string(),
            format!("127.0.0.1:{}", b.http_port),
            "--irc".to_string(),
            format!("127.0.0.1:{irc_port}"),
            "--node-id".to_string(),
            "bench".to_string(),
        ]);
        for ip in &opts.source_ips {
            args.push("--source-ip".to_string());
            args.push(ip.to_string());
        }
        b.procs.push(Proc {
            child: None,
            irc_port,
            first: 0,
            count: layout.len(),
            log: b.dir.path().join("ferry.log"),
            args,
        });
        b.spawn_all()?;
        b.wait_listening().await?;
        Ok(b)
    }

    /// ZNC with `layout` against `ircd_addr`, split over processes per `opts`.
    pub async fn znc(ircd_addr: &str, layout: &Layout, opts: ZncOpts) -> anyhow::Result<Bouncer> {
        check_znc()?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-bench-znc-")
            .tempdir()?;
        let mut b = Bouncer {
            kind: Kind::Znc,
            users: layout.len(),
            procs: Vec::new(),
            ferry_bin: None,
            http_port: 0,
            dir,
            database: None,
        };
        let per = opts.users_per_process.max(1);
        let mut first = 0;
        // Ports handed out so far: the kernel may offer a just-released port again,
        // and of two ZNCs given the same port the second exits (it cannot listen)
        // while `wait_listening` sees the first one answer.
        let mut taken = std::collections::HashSet::new();
        loop {
            let count = per.min(layout.len() - first);
            let pdir = b.dir.path().join(format!("znc{}", b.procs.len()));
            fs::create_dir_all(pdir.join("configs"))?;
            let irc_port = std::iter::repeat_with(crate::free_port)
                .find(|p| taken.insert(*p))
                .expect("a free port");
            fs::write(
                pdir.join("configs/znc.conf"),
                znc_config(
                    irc_port,
                    ircd_addr,
                    &layout.users[first..first + count],
                    first,
                ),
            )?;
            let mut args = vec![
                "--foreground".to_string(),
                "--datadir".to_string(),
                pdir.display().to_string(),
            ];
            // SAFETY: getuid has no preconditions.
            if unsafe { libc::getuid() } == 0 {
                // ZNC refuses to run as root without it.
                args.push("--allow-root".to_string());
            }
            b.procs.push(Proc {
                child: None,
                irc_port,
                first,
                count,
                log: pdir.join("console.log"),
                args,
            });
            first += count;
            if first >= layout.len() {
                break;
            }
        }
        b.spawn_all()?;
        b.wait_listening().await?;
        Ok(b)
    }

    fn spawn_all(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p.log)?;
            let mut cmd = match self.kind {
                Kind::Ferry => {
                    let mut c = Command::new(self.ferry_bin.as_ref().expect("ferry bin"));
                    c.env("FERRY_LOG", "info,sqlx=warn").env("NO_COLOR", "1");
                    c
                }
                Kind::Znc => Command::new("znc"),
            };
            let child = cmd
                .args(&p.args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawn {}", self.kind.name()))?;
            p.child = Some(child);
        }
        Ok(())
    }

    async fn wait_listening(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            let addr = format!("127.0.0.1:{}", p.irc_port);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                    break;
                }
                if let Some(st) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    let log = fs::read_to_string(&p.log).unwrap_or_default();
                    bail!("{:?} exited with {st}:\n{log}", self.kind);
                }
                if Instant::now() > deadline {
                    bail!("{:?} does not listen on {addr}", self.kind);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // A process that answered through someone else's listener, then exited.
        for p in &mut self.procs {
            if let Some(st) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = fs::read_to_string(&p.log).unwrap_or_default();
                bail!("{:?} exited with {st}:\n{log}", self.kind);
            }
        }
        Ok(())
    }

    /// The node's data directory (`--data-dir`: its SQLite store and log).
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Ferry's store: its `--database` URL, or the SQLite file in the data dir.
    pub fn store_url(&self) -> String {
        self.database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.dir.path().join("ferry.db").display()))
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(Proc::pid).collect()
    }

    pub fn processes(&self) -> usize {
        self.procs.len()
    }

    pub fn rss_bytes(&self) -> u64 {
        procfs::rss_sum(&self.pids())
    }

    pub fn cpu_seconds(&self) -> f64 {
        procfs::cpu_sum(&self.pids())
    }

    /// The part of [`Bouncer::cpu_seconds`] spent in the kernel (sockets, mostly).
    pub fn system_cpu_seconds(&self) -> f64 {
        procfs::system_cpu_sum(&self.pids())
    }

    /// Where user `i` attaches and the PASS it sends.
    pub fn login(&self, i: usize) -> (String, String) {
        let p = self
            .procs
            .iter()
            .find(|p| i >= p.first && i < p.first + p.count)
            .expect("user index in layout");
        (
            format!("127.0.0.1:{}", p.irc_port),
            format!("u{i}/{NETWORK}:{PASSWORD}"),
        )
    }

    /// Attaches a client as user `i` (from its own loopback address) and registers.
    pub async fn attach(&self, i: usize) -> anyhow::Result<Conn> {
        let (addr, pass) = self.login(i);
        let mut c = Conn::connect(&addr, Some(source_ip(60_000 + i))).await?;
        c.register(&format!("c{i}"), Some(&pass)).await?;
        Ok(c)
    }

    /// Ferry's `/metrics` as (name with labels, value) pairs.
    pub async fn ferry_metrics(&self) -> anyhow::Result<Vec<(String, f64)>> {
        if self.kind != Kind::Ferry {
            bail!("metrics are Ferry's");
        }
        metrics(self.http_port).await
    }

    pub async fn ferry_metric(&self, name: &str) -> Option<f64> {
        self.ferry_metrics()
            .await
            .ok()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Ferry's log so far.
    pub fn log(&self) -> String {
        self.procs
            .iter()
            .map(|p| {
                fs::read(&p.log)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops every process: SIGTERM (Ferry QUITs upstream and flushes), SIGKILL after
    /// `grace`. Returns how long the stop took.
    pub async fn stop(&mut self, grace: Duration) -> Duration {
        let t0 = Instant::now();
        for p in &self.procs {
            if let Some(pid) = p.pid() {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                let deadline = Instant::now() + grace;
                loop {
                    if c.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    if Instant::now() > deadline {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        t0.elapsed()
    }

    /// Stops and starts the same processes again (a node restart).
    pub async fn restart(&mut self, grace: Duration) -> anyhow::Result<()> {
        self.stop(grace).await;
        self.spawn_all()?;
        self.wait_listening().await
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Creates the layout's users in a Ferry store: user `u{i}`, network `bench` with nick
/// `f{i}` and the user's channels. The password is hashed once and reused (argon2 per
/// user would dominate provisioning time, and login cost is not what we measure).
pub async fn provision_ferry(db_url: &str, ircd_addr: &str, layout: &Layout) -> anyhow::Result<()> {
    provision_ferry_networks(db_url, &[ircd_addr.to_string()], layout, 1).await
}

/// Like [`provision_ferry`] with `networks` networks per user, spread over `ircds`.
pub async fn provision_ferry_networks(
    db_url: &str,
    ircds: &[String],
    layout: &Layout,
    networks: usize,
) -> anyhow::Result<()> {
    let store = Store::open(db_url).await?;
    let hash = ferry::auth::hash_password(PASSWORD);
    for (i, chans) in layout.users.iter().enumerate() {
        let user = store.create_user(&format!("u{i}"), &hash, false).await?;
        for n in 0..networks.max(1) {
            let name = if n == 0 {
                NETWORK.to_string()
            } else {
                format!("{NETWORK}{n}")
            };
            let nick = if n == 0 {
                format!("f{i}")
            } else {
                format!("f{i}n{n}")
            };
            store
                .create_network(
                    user.id,
                    &NewNetwork {
                        name,
                        addr: ircds[(i + n) % ircds.len()].clone(),
                        tls: false,
                        tls_verify: TlsVerify::Verify,
                        nick,
                        username: None,
                        realname: None,
                        sasl: None,
                        source_ip: None,
                        channels: chans
                            .iter()
                            .map(|c| {
                                let key = ferry::irc::Casemapping::Rfc1459.fold(c.as_bytes());
                                (c.as_bytes().to_vec(), key, None)
                            })
                            .collect(),
                    },
                )
                .await?;
        }
    }
    store.close().await;
    Ok(())
}

/// A ZNC 1.8 config: one listener, users `u{first+i}` (nick `z{…}`) with network
/// `bench` and their channels. `ServerThrottle`/`ConnectDelay` at their minimum.
fn znc_config(port: u16, ircd_addr: &str, users: &[Vec<String>], first: usize) -> String {
    use sha2::{Digest, Sha256};
    let (host, iport) = ircd_addr.rsplit_once(':').expect("host:port");
    let salt = "benchsalt01234567890";
    let hash = hex::encode(Sha256::digest(format!("{PASSWORD}{salt}").as_bytes()));
    let mut c = format!(
        "Version = 1.8.2\nConnectDelay = 1\nServerThrottle = 1\nAnonIPLimit = 100000\nMaxBufferSize = 500\n\
         <Listener l>\n\tPort = {port}\n\tIPv4 = true\n\tIPv6 = false\n\tSSL = false\n\tHost = 127.0.0.1\n\tAllowIRC = true\n\tAllowWeb = false\n</Listener>\n"
    );
    for (k, chans) in users.iter().enumerate() {
        let i = first + k;
        c.push_str(&format!(
            "<User u{i}>\n\tNick = z{i}\n\tAltNick = z{i}_\n\tIdent = z{i}\n\tRealName = bench\n\tAdmin = false\n\
             \tBuffer = 50\n\tMaxNetworks = 1\n\t<Pass password>\n\t\tMethod = SHA256\n\t\tHash = {hash}\n\t\tSalt = {salt}\n\t</Pass>\n\
             \t<Network {NETWORK}>\n\t\tServer = {host} {iport}\n"
        ));
        for ch in chans {
            c.push_str(&format!("\t\t<Chan {ch}>\n\t\t</Chan>\n"));
        }
        c.push_str("\t</Network>\n</User>\n");
    }
    c
}

/// A node's `/metrics` as (name with labels, value) pairs.
pub async fn metrics(http_port: u16) -> anyhow::Result<Vec<(String, f64)>> {
    let text = http_get(http_port, "/metrics").await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

/// `ferry_upstream_throttled_total + ferry_upstream_no_slot_total` of a node: the
/// connections a server refused since the node started (too fast, too many).
pub async fn ferry_rejections(http_port: u16) -> anyhow::Result<f64> {
    let m = metrics(http_port).await?;
    let get = |name: &str| m.iter().find(|(k, _)| k == name).map_or(0.0, |(_, v)| *v);
    Ok(get("ferry_upstream_throttled_total") + get("ferry_upstream_no_slot_total"))
}

/// Runs a `ferry` admin command (with `FERRY_LOG=warn`) and returns its stdout;
/// fails with its output when it fails or outlives `timeout`.
pub async fn ferry_cli_timeout(
    ferry_bin: &std::path::Path,
    args: &[String],
    timeout: Duration,
) -> anyhow::Result<String> {
    let child = tokio::process::Command::new(ferry_bin)
        .args(args)
        .env("FERRY_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn ferry")?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .with_context(|| format!("ferry {} did not finish in {timeout:?}", args.join(" ")))??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "ferry {} failed ({}): {stdout}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// [`ferry_cli_timeout`] with one minute.
pub async fn ferry_cli(ferry_bin: &std::path::Path, args: &[String]) -> anyhow::Result<String> {
    ferry_cli_timeout(ferry_bin, args, Duration::from_secs(60)).await
}

/// A tiny HTTP/1.0 GET on loopback (metrics), without pulling an HTTP client in.
async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .context("HTTP timed out")??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((_, body)) => Ok(body.to_string()),
        None => bail!("bad HTTP answer"),
    }
}

/// Waits until the ircd's `channels` hold at least `want` members in total (LIST).
/// Returns how long it took.
pub async fn wait_members(
    ircd_addr: &str,
    channels: &[String],
    want: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let last = std::sync::atomic::AtomicUsize::new(0);
    let ok = crate::poll(timeout, Duration::from_millis(250), || async {
        let s = ircd::stats(ircd_addr, channels).await.ok()?;
        last.store(s.members, std::sync::atomic::Ordering::Relaxed);
        (s.members >= want).then_some(())
    })
    .await;
    let last = last.into_inner();
    if ok.is_none() {
        bail!("after {timeout:?} the ircd's channels hold {last} members, want {want}");
    }
    Ok(t0.elapsed())
}

/// Waits until the ircd's `channels` hold at most `max` members (bouncers gone).
pub async fn wait_members_below(
    ircd_addr: &str,
    channels: &[String],
    max: usize,
    timeout: Duration,
) {
    let _ = crate::poll(timeout, Duration::from_millis(250), || async {
        let s = ircd::stats(ircd_addr, channels).await.ok()?;
        (s.members <= max).then_some(())
    })
    .await;
}

/// One `ferry serve` of a cluster on PostgreSQL (`--database`, `--node-id`,
/// `--source-ip`, advertised addresses, a short lease), as `tests/it/cluster.rs`
/// runs them. Killed (SIGKILL, this PID only) on drop.
pub struct Node {
    pub id: String,
    pub http_port: u16,
    pub irc_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    pub async fn start(
        ferry_bin: &std::path::Path,
        db_url: &str,
        dir: &std::path::Path,
        id: &str,
        source_ip: std::net::IpAddr,
        lease_secs: u64,
    ) -> anyhow::Result<Node> {
        let (http_port, irc_port) = (crate::free_port(), crate::free_port());
        let data = dir.join(id);
        fs::create_dir_all(&data)?;
        let log = dir.join(format!("{id}.log"));
        let out = fs::File::create(&log)?;
        let http = format!("127.0.0.1:{http_port}");
        let irc = format!("127.0.0.1:{irc_port}");
        let child = Command::new(ferry_bin)
            .args(["--database", db_url, "--data-dir"])
            .arg(&data)
            .args(["serve", "--node-id", id, "--http", &http, "--irc", &irc])
            .args(["--advertise-http", &format!("http://{http}")])
            .args(["--advertise-irc", &irc])
            .args(["--source-ip", &source_ip.to_string()])
            .args(["--lease-seconds", &lease_secs.to_string()])
            .env("FERRY_LOG", "info,sqlx=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawn ferry serve")?;
        let mut n = Node {
            id: id.to_string(),
            http_port,
            irc_port,
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(&http).await.is_err() {
            if let Some(st) = n.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("node {id} exited with {st}:\n{}", n.log());
            }
            if Instant::now() > deadline {
                bail!("node {id} does not listen on {http}:\n{}", n.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(n)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + grace;
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
