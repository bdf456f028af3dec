//! Real InspIRCd servers on loopback, each configured in its own temp dir.
//!
//! This repeats what `tests/it/fixtures/ircd.rs` learnt about Debian's InspIRCd 3.15
//! (the bench is a program and cannot import test fixtures):
//! - as root without a TTY it needs `--runasroot --nofork`;
//! - readiness: the console says `InspIRCd is now running` and a client registers;
//! - a listener that failed to bind does not stop it (`failed to bind`): retry on new
//!   ports;
//! - flood control is opened wide (`fakelag="no"`, huge `threshold`/`commandrate`), but
//!   3.15 still reads about 10 KB/s of one client's input, so load comes from many
//!   clients;
//! - `localmax`/`globalmax` are high by default: the bench measures bouncers, not
//!   per-IP limits. The restart and migration benchmarks set them (and `connflood`)
//!   to match Ferry's configured limits ([`IrcdOpts`]), so a bouncer that connects too
//!   fast or too often is refused, and the refusal shows in the server's log
//!   ([`Ircd::rejections`]).
//! - InspIRCd 3.15 `connflood` counts registrations server-wide in whole seconds:
//!   within `period` the `maxconns`-th registration is refused (`ERROR :Closing link:
//!   … [Throttled]`, quit message set here; 3.15's default is empty), then every
//!   registration until `period + timeout` after the window's first. `<exception>`
//!   hosts are exempt.
//! - `localmax`: the connection over the limit is closed after NICK/USER with
//!   `No more connections allowed from your host via this connect class (local)`.
//! - Neither refusal is in the log file as such (unregistered clients' quits are not
//!   logged); what is logged is `ANNOUNCEMENT: Connection throttle activated` and, with
//!   `maxconnwarn`, `WARNING: maximum local connections for the … class (N) exceeded
//!   by IP`. The file log is buffered (20 lines by default): `flush="1"` here, so it
//!   can be read while the server runs.
//!
//! For netsplits, [`Ircd::start_pair`] starts a hub and a leaf linked with
//! `spanningtree`; the hub autoconnects to the leaf every few seconds, so a split made
//! with `SQUIT` (by the oper `bench`/`benchpass`, see [`OPER`]) heals by itself.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::client::Conn;

const MODULES_DIR: &str = "/usr/lib/inspircd/modules";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const LINK_PASSWORD: &str = "ferry-bench-link";
/// `OPER` credentials configured on every server (for `SQUIT`).
pub const OPER: (&str, &str) = ("bench", "benchpass");
/// How often the hub retries the link to the leaf after a split (seconds).
pub const AUTOCONNECT_SECS: u64 = 5;

/// The address readiness and stats probes connect from.
pub const PROBE_IP: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 254));

/// Per-address limits of a server (all off by default).
#[derive(Clone, Debug, Default)]
pub struct IrcdOpts {
    /// `<connect localmax>`: connections per IP (default 100,000).
    pub localmax: Option<u32>,
    /// `connflood` as (`period` seconds, `maxconns`), with `timeout` = `period`.
    pub connflood: Option<(u32, u32)>,
    /// Addresses exempt from `connflood` (`<exception>`), e.g. a node that only
    /// connects during set-up.
    pub exempt: Vec<std::net::IpAddr>,
}

/// What the server's log says when it refuses clients: too fast (`connflood`) or too
/// many from one address (`localmax`, with `maxconnwarn`).
pub const REJECTION_TEXTS: [&str; 2] =
    ["Connection throttle activated", "maximum local connections"];

/// One running InspIRCd. Dropping it kills the server.
pub struct Ircd {
    pub name: String,
    pub port: u16,
    pub link_port: u16,
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    opts: IrcdOpts,
}

struct Link {
    peer_name: String,
    peer_port: u16,
    autoconnect: bool,
}

impl Ircd {
    /// Starts one server.
    pub async fn start(name: &str) -> anyhow::Result<Ircd> {
        Self::start_with(name, "0AA", None).await
    }

    /// Starts one server with per-address limits.
    pub async fn start_opts(name: &str, opts: IrcdOpts) -> anyhow::Result<Ircd> {
        Self::start_inner(name, "0AA", None, None, opts).await
    }

    /// Starts a hub and a leaf, linked; returns once the hub sees two servers.
    pub async fn start_pair() -> anyhow::Result<(Ircd, Ircd)> {
        let leaf_link = crate::free_port();
        let hub_link = crate::free_port();
        // The leaf accepts the link; the hub connects (and reconnects after a split).
        let leaf = Self::start_inner(
            "leaf.bench",
            "0AB",
            Some(Link {
                peer_name: "hub.bench".into(),
                peer_port: hub_link,
                autoconnect: false,
            }),
            Some(leaf_link),
            IrcdOpts::default(),
        )
        .await?;
        let hub = Self::start_inner(
            "hub.bench",
            "0AA",
            Some(Link {
                peer_name: "leaf.bench".into(),
                peer_port: leaf_link,
                autoconnect: true,
            }),
            Some(hub_link),
            IrcdOpts::default(),
        )
        .await?;
        let addr = hub.addr();
        crate::poll(
            Duration::from_secs(30),
            Duration::from_millis(300),
            || async { stats(&addr, &[]).await.ok().filter(|s| s.servers >= 2) },
        )
        .await
        .context("hub and leaf did not link")?;
        Ok((hub, leaf))
    }

    async fn start_with(name: &str, sid: &str, link: Option<Link>) -> anyhow::Result<Ircd> {
        Self::start_inner(name, sid, link, None, IrcdOpts::default()).await
    }

    async fn start_inner(
        name: &str,
        sid: &str,
        link: Option<Link>,
        link_port: Option<u16>,
        opts: IrcdOpts,
    ) -> anyhow::Result<Ircd> {
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("ferry-bench-ircd-")
                .tempdir()?;
            let mut ircd = Ircd {
                name: name.to_string(),
                port: crate::free_port(),
                link_port: link_port.unwrap_or(0),
                config: dir.path().join("inspircd.conf"),
                dir,
                child: None,
                opts: opts.clone(),
            };
            ircd.write_config(sid, link.as_ref())?;
            ircd.spawn()?;
            match ircd.wait_ready().await {
                Ok(()) => return Ok(ircd),
                Err(e) => {
                    last = format!("{e:#}\n{}", ircd.console());
                    ircd.kill();
                    if !last.contains("failed to bind") {
                        break;
                    }
                }
            }
        }
        bail!("InspIRCd {name} did not start: {last}")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn write_config(&self, sid: &str, link: Option<&Link>) -> anyhow::Result<()> {
        let dir = self.dir.path().display();
        let (name, port) = (&self.name, self.port);
        let (oper, operpass) = OPER;
        let localmax = self.opts.localmax.unwrap_or(100_000);
        fs::write(self.dir.path().join("motd.txt"), "Ferry bench server\n")?;
        let mut conf = format!(
            r#"<server name="{name}" description="Ferry bench" network="FerryBench" id="{sid}">
<admin name="Ferry bench" nick="ferry" email="bench@example.invalid">
<bind address="127.0.0.1" port="{port}" type="clients">
<path configdir="{dir}" datadir="{dir}" logdir="{dir}" moduledir="{MODULES_DIR}" runtimedir="{dir}">
<pid file="{dir}/inspircd.pid">
<files motd="{dir}/motd.txt">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{dir}/ircd.log" flush="1">
<dns timeout="1">
<options syntaxhints="no" casemapping="rfc1459" defaultmodes="n">
<performance clonesonconnect="yes" quietbursts="yes">
<exception host="*@{probe}" reason="bench probe">
<connect name="bench" allow="*" timeout="60" pingfreq="120"
         hardsendq="64M" softsendq="64M" recvq="64K"
         threshold="1000000" commandrate="1000000" fakelag="no"
         localmax="{localmax}" globalmax="100000" maxconnwarn="yes"
         resolvehostnames="no" useident="no" limit="100000" maxchans="1000">
<class name="BenchLinks" commands="SQUIT CONNECT RSQUIT RCONNECT" privs="servers/auspex" usermodes="*" chanmodes="*">
<type name="BenchOper" classes="BenchLinks">
<oper name="{oper}" password="{operpass}" host="*@*" type="BenchOper">
<module name="cap">
<module name="ircv3">
<module name="ircv3_servertime">
<module name="ircv3_msgid">
<module name="namesx">
<module name="uhnames">
"#,
            probe = PROBE_IP,
        );
        for ip in &self.opts.exempt {
            conf.push_str(&format!(
                "<exception host=\"*@{ip}\" reason=\"bench: connects only in set-up\">\n"
            ));
        }
        if let Some((period, maxconns)) = self.opts.connflood {
            conf.push_str(&format!(
                "<module name=\"connflood\">\n<connflood period=\"{period}\" maxconns=\"{maxconns}\" \
                 timeout=\"{period}\" quitmsg=\"Throttled\" bootwait=\"0\">\n"
            ));
        }
        if let Some(l) = link {
            let link_port = self.link_port;
            conf.push_str(&format!(
                r#"<module name="spanningtree">
<bind address="127.0.0.1" port="{link_port}" type="servers">
<link name="{peer}" ipaddr="127.0.0.1" port="{peer_port}" sendpass="{LINK_PASSWORD}" recvpass="{LINK_PASSWORD}" timeout="10">
"#,
                peer = l.peer_name,
                peer_port = l.peer_port,
            ));
            if l.autoconnect {
                conf.push_str(&format!(
                    "<autoconnect period=\"{AUTOCONNECT_SECS}\" server=\"{}\">\n",
                    l.peer_name
                ));
            }
        }
        fs::write(&self.config, conf)?;
        Ok(())
    }

    fn console_path(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    fn console(&self) -> String {
        fs::read(self.console_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The console and the server's log file so far.
    pub fn log(&self) -> String {
        let file = fs::read(self.dir.path().join("ircd.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        format!("{}\n{file}", self.console())
    }

    /// Lines of the server's log where it refused a client for connecting too fast
    /// or too often ([`REJECTION_TEXTS`]).
    pub fn rejections(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| REJECTION_TEXTS.iter().any(|t| l.contains(t)))
            .map(str::to_string)
            .collect()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let console = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.console_path())?;
        let child = Command::new("inspircd")
            .arg("--runasroot")
            .arg("--nofork")
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .spawn()
            .context("spawn inspircd (run scripts/test-deps.sh)")?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let c = self.console();
            if c.contains("failed to bind") {
                bail!("failed to bind");
            }
            if c.contains("InspIRCd is now running") {
                break;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("inspircd exited with {st}");
            }
            if Instant::now() > deadline {
                bail!("no readiness line");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let addr = self.addr();
        crate::poll(
            deadline.saturating_duration_since(Instant::now()),
            Duration::from_millis(100),
            || async { stats(&addr, &[]).await.ok() },
        )
        .await
        .context("probe registration failed")?;
        Ok(())
    }

    /// Kills the server (our own child, SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again on the same ports and config (a mass reconnect).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        fs::write(self.console_path(), b"")?;
        // The port may linger in TIME_WAIT for connections we initiated; InspIRCd sets
        // SO_REUSEADDR, so retry briefly if a bind fails.
        for _ in 0..20 {
            self.spawn()?;
            match self.wait_ready().await {
                Ok(()) => return Ok(()),
                Err(e) if e.to_string().contains("failed to bind") => {
                    self.kill();
                    fs::write(self.console_path(), b"")?;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
        bail!("InspIRCd {} did not restart", self.name)
    }
}

impl Drop for Ircd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the server reports about itself.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Registered users network-wide (LUSERS 251: users + invisible), without the probe.
    pub users: usize,
    pub servers: usize,
    /// Members of each listed channel (LIST), summed, for the channels asked for.
    pub members: usize,
}

/// Asks the server (from [`PROBE_IP`]) for LUSERS and, when `channels` is not empty,
/// LIST of those channels.
pub async fn stats(addr: &str, channels: &[String]) -> anyhow::Result<Stats> {
    let mut c = Conn::connect(addr, Some(PROBE_IP)).await?;
    let nick = format!("probe{:06}", rand::random::<u32>() % 1_000_000);
    c.register(&nick, None).await?;
    c.send("LUSERS").await?;
    let l = c
        .expect("251", Duration::from_secs(20), |l| l.command == "251")
        .await?;
    let nums: Vec<usize> = l
        .last()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let mut s = Stats {
        users: (nums.first().copied().unwrap_or(0) + nums.get(1).copied().unwrap_or(0))
            .saturating_sub(1),
        servers: nums.get(2).copied().unwrap_or(1),
        members: 0,
    };
    if !channels.is_empty() {
        // InspIRCd takes one pattern per LIST, so list everything and pick ours.
        let wanted: std::collections::HashSet<String> =
            channels.iter().map(|c| c.to_ascii_lowercase()).collect();
        c.send("LIST").await?;
        loop {
            let l = c
                .expect("LIST", Duration::from_secs(30), |l| {
                    l.command == "322" || l.command == "323"
                })
                .await?;
            if l.command == "323" {
                break;
            }
            let name = l
                .params
                .get(1)
                .map(|n| n.to_ascii_lowercase())
                .unwrap_or_default();
            if wanted.contains(&name) {
                s.members += l
                    .params
                    .get(2)
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
            }
        }
    }
    let _ = c.send("QUIT :probe").await;
    Ok(s)
}
