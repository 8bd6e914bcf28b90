//! The one local-cluster launcher: real `redrec` processes on loopback, for the demo,
//! `redrec eval`, the benches and the tests alike. A process logs to `<name>.log` in its
//! log directory and is ready once it prints `redrec <role> listening on http://ADDR`;
//! it is killed when dropped, or stopped cleanly (SIGTERM, then SIGKILL) by [`stop_all`].
//!
//! Ports: servers that can take port 0 do, and announce the port they got. A shard node
//! must know its peers' ports before they start, so [`free_port`] hands out ports below
//! the kernel's ephemeral range (where no outgoing connection or port-0 server lands),
//! never the same one twice in a process, and a process that could not bind its port is
//! started again, a few times, before [`Proc::start`] gives up.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Longest a process may take to announce its address.
const START: Duration = Duration::from_secs(120);
/// Longest a process keeps trying to get a port someone else holds.
const BIND_RETRIES: Duration = Duration::from_secs(15);

/// A child `redrec` process and the address it announced.
pub struct Proc {
    pub name: String,
    pub addr: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `exe args` (with `env` added) as `name`, logging to `logs/<name>.log`, and
    /// waits for its address. A process that exits because its port was taken is started
    /// again until [`BIND_RETRIES`] has passed.
    pub fn start(
        exe: &Path,
        name: &str,
        args: &[&str],
        env: &[(String, String)],
        logs: &Path,
    ) -> Result<Proc> {
        let until = Instant::now() + BIND_RETRIES;
        loop {
            match Self::start_once(exe, name, args, env, logs) {
                Err(e)
                    if bind_failed(&logs.join(format!("{name}.log"))) && Instant::now() < until =>
                {
                    tracing::debug!("{name}: its port is taken ({e}); starting it again");
                    std::thread::sleep(Duration::from_millis(250));
                }
                other => return other,
            }
        }
    }

    fn start_once(
        exe: &Path,
        name: &str,
        args: &[&str],
        env: &[(String, String)],
        logs: &Path,
    ) -> Result<Proc> {
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let mut child = Command::new(exe)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep reading so that a chatty child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START) {
            Ok(Some(Ok(line))) if line.contains("listening on") => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{name} did not start ({}); {}:\n{}",
                    match other {
                        Err(_) => format!("nothing within {START:?}"),
                        Ok(None) => "it exited".into(),
                        Ok(l) => format!("first line {l:?}"),
                    },
                    log.display(),
                    tail.join("\n")
                );
            }
        };
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        Ok(Proc {
            name: name.into(),
            addr,
            log,
            child,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `kill -9`, and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), sig);
    }

    /// SIGTERM, `grace` for a clean shutdown, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        self.signal(Signal::SIGCONT);
        self.signal(Signal::SIGTERM);
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop in {grace:?}; killing it", self.name);
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped (SIGSTOP) process must be woken to die.
        self.signal(Signal::SIGCONT);
        self.kill();
    }
}

/// Whether a process's log says it could not bind its port.
fn bind_failed(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|l| l.contains("Address already in use"))
}

/// Stops every process cleanly, the last started first (routers before the shards they
/// call).
pub fn stop_all(procs: Vec<Proc>) {
    for mut p in procs.into_iter().rev() {
        p.stop(Duration::from_secs(10));
    }
}

/// A port for a server that must be known before it starts: below the ephemeral range,
/// free when handed out, and never handed out twice by this process.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    let high = ephemeral_low().clamp(LOW + 1_000, 65_000);
    let span = high - LOW;
    // Processes start at different places, so that two launchers rarely meet.
    let start = std::process::id().wrapping_mul(7_919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Where a local cluster keeps its data and its processes' logs.
#[derive(Clone)]
pub struct Layout {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub logs: PathBuf,
}

impl Layout {
    /// `dir` and `dir/logs` (created); `exe` is the `redrec` binary to run.
    pub fn new(exe: PathBuf, dir: &Path) -> Result<Layout> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("{}", logs.display()))?;
        Ok(Layout {
            exe,
            dir: dir.to_path_buf(),
            logs,
        })
    }

    /// The layout of this very binary (the demo, eval and the benches run themselves).
    pub fn of_current_exe(dir: &Path) -> Result<Layout> {
        Layout::new(std::env::current_exe()?, dir)
    }

    pub fn start(&self, name: &str, args: &[&str]) -> Result<Proc> {
        Proc::start(&self.exe, name, args, &[], &self.logs)
    }

    /// `n` lone shards on free ports, their data under `dir/shard-<i>`.
    pub fn lone_shards(&self, n: usize, extra: &[&str]) -> Result<Vec<Proc>> {
        (0..n)
            .map(|i| {
                let data = self.dir.join(format!("shard-{i}"));
                let data = data.to_string_lossy();
                let mut args = vec!["shard", "--listen", "127.0.0.1:0", "--data", &data];
                args.extend_from_slice(extra);
                self.start(&format!("shard-{i}"), &args)
            })
            .collect()
    }

    /// `nodes` shard nodes (ids 1..=nodes, data under `dir/node-<id>`), each hosting a
    /// replica of groups 0..`groups`; waits until every node is ready (each group has a
    /// leader and every replica caught up).
    pub fn shard_nodes(&self, nodes: usize, groups: usize, extra: &[&str]) -> Result<Vec<Proc>> {
        let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        // Every node gets the same list: a node leaves itself out of its peers.
        let peers = ports
            .iter()
            .enumerate()
            .map(|(j, p)| format!("{}=http://127.0.0.1:{p}", j + 1))
            .collect::<Vec<_>>()
            .join(",");
        let groups = (0..groups)
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let (id, listen) = ((i + 1).to_string(), format!("127.0.0.1:{port}"));
            let data = self.dir.join(format!("node-{id}"));
            let data = data.to_string_lossy();
            let mut args = vec![
                "shard",
                "--listen",
                &listen,
                "--data",
                &data,
                "--node-id",
                &id,
                "--peers",
                &peers,
                "--groups",
                &groups,
            ];
            args.extend_from_slice(extra);
            procs.push(self.start(&format!("node-{id}"), &args)?);
        }
        let addrs: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();
        wait_ready(&addrs, Duration::from_secs(30))?;
        Ok(procs)
    }
}

/// Shards, an encoder and a router, as started by [`Layout::cluster`].
pub struct Local {
    pub shards: Vec<Proc>,
    pub encoder: Proc,
    pub router: Proc,
}

impl Local {
    /// Stops the router, the encoder, then the shards, each cleanly.
    pub fn stop(self) {
        let mut procs = self.shards;
        procs.push(self.encoder);
        procs.push(self.router);
        stop_all(procs);
    }
}

impl Layout {
    /// `shards` shard groups (lone shards when `replicas` ≤ 1, else `replicas` shard nodes
    /// each hosting a replica of every group, whose meta group the router follows), an
    /// encoder (`encoder` flags added), and a router listening on `listen` (`router`
    /// flags added).
    pub fn cluster(
        &self,
        shards: usize,
        replicas: usize,
        encoder: &[&str],
        listen: &str,
        router: &[&str],
    ) -> Result<Local> {
        let (flag, shards) = if replicas <= 1 {
            ("--shards", self.lone_shards(shards, &[])?)
        } else {
            ("--meta", self.shard_nodes(replicas, shards, &[])?)
        };
        let list = shards
            .iter()
            .map(|s| s.addr.clone())
            .collect::<Vec<_>>()
            .join(",");
        let mut router_args = vec![flag, list.as_str()];
        router_args.extend_from_slice(router);
        self.front(shards, encoder, listen, &router_args)
    }

    /// An encoder and a router keeping items in the Qdrant collection at `qdrant` (gRPC),
    /// `router` flags added (the collection's shards, replication, …).
    pub fn on_qdrant(
        &self,
        qdrant: &str,
        encoder: &[&str],
        listen: &str,
        router: &[&str],
    ) -> Result<Local> {
        let mut router_args = vec!["--qdrant-url", qdrant];
        router_args.extend_from_slice(router);
        self.front(Vec::new(), encoder, listen, &router_args)
    }

    /// An encoder and a router in front of `shards`.
    fn front(
        &self,
        shards: Vec<Proc>,
        encoder: &[&str],
        listen: &str,
        router: &[&str],
    ) -> Result<Local> {
        let mut args = vec!["encoder", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(encoder);
        let encoder = self.start("encoder", &args)?;
        let mut args = vec!["router", "--listen", listen, "--encoder", &encoder.addr];
        args.extend_from_slice(router);
        let router = self.start("router", &args)?;
        Ok(Local {
            shards,
            encoder,
            router,
        })
    }
}

/// Waits until every server at `addrs` answers `/readyz` with success.
pub fn wait_ready(addrs: &[String], limit: Duration) -> Result<()> {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let until = Instant::now() + limit;
    for addr in addrs {
        while !http
            .get(format!("{addr}/readyz"))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            if Instant::now() > until {
                bail!("{addr} did not become ready within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}
