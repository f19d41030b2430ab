//! Test fixtures for tollgate's own tests (a dev-dependency only).
//!
//! [`RedisCluster`]: a real Redis Cluster of `redis-server` processes (three masters,
//! each with a replica) on free ports, made with `redis-cli --cluster create`, that a
//! test can break (kill the master of a key's slot) and wait to heal. The processes
//! die with the fixture. Nothing here is faked: the limiter, the bus and the gateway
//! talk to real cluster nodes, with real `MOVED` redirections and real failovers.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A node of the cluster.
struct Node {
    port: u16,
    child: Option<Child>,
}

/// A local Redis Cluster; its processes are killed when it is dropped.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

/// How long the cluster may take to form or to heal (a failover needs the node
/// timeout, then an election).
const DEADLINE: Duration = Duration::from_secs(60);
/// `cluster-node-timeout`: how long a silent master stays a master.
pub const NODE_TIMEOUT_MS: u64 = 1_000;

fn free_port_pair() -> u16 {
    // A port and its cluster bus port (+10000) both free.
    loop {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else { continue };
        let Ok(addr) = listener.local_addr() else { continue };
        let port = addr.port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("redis-cli cannot run (Debian package redis-tools): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Polls `check` until it answers `true` or the deadline passes (then panics with
/// `what`). Not a sleep for synchronisation: it waits for a state.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "the Redis Cluster did not reach this state in time: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl RedisCluster {
    /// Starts six nodes and forms a cluster of three masters with a replica each;
    /// answers once every slot is served and every replica is in sync.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-redis-cluster-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port_pair();
            let log = std::fs::File::create(dir.join(format!("{port}.log"))).expect("log file");
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--protected-mode", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&dir)
                .stdout(Stdio::from(log))
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server cannot run (Debian package redis-server)");
            nodes.push(Node { port, child: Some(child) });
        }
        let cluster = Self { nodes, dir };
        for node in &cluster.nodes {
            wait_for(&format!("node {} answers", node.port), || {
                cli(node.port, &["PING"]).is_ok_and(|r| r.trim() == "PONG")
            });
        }
        let addresses: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let created = Command::new("redis-cli").args(&args).stdin(Stdio::null()).output().expect("redis-cli");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        cluster.wait_healthy();
        cluster
    }

    /// The seed nodes, comma-separated, as tollgate's `redis_url` takes them.
    pub fn url(&self) -> String {
        self.live_ports().iter().map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port).collect()
    }

    /// Waits until the live nodes agree the cluster is ok, every slot served, and
    /// every live replica linked to its master.
    pub fn wait_healthy(&self) {
        for port in self.live_ports() {
            wait_for(&format!("node {port} sees cluster_state:ok with every slot"), || {
                cli(port, &["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384"))
            });
            wait_for(&format!("node {port} is a master or a replica in sync"), || {
                cli(port, &["INFO", "replication"])
                    .is_ok_and(|info| info.contains("role:master") || info.contains("master_link_status:up"))
            });
        }
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        self.try_master_of(key).unwrap_or_else(|| panic!("no live master serves the slot of {key}"))
    }

    /// The port of the master serving `key`'s slot, if one does (as a live node sees it).
    pub fn try_master_of(&self, key: &str) -> Option<u16> {
        let port = *self.live_ports().first()?;
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key]).ok()?.trim().parse().ok()?;
        let nodes = cli(port, &["CLUSTER", "NODES"]).ok()?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let mut ends = range.split('-').filter_map(|n| n.parse::<u16>().ok());
                match (ends.next(), ends.next()) {
                    (Some(a), Some(b)) => (a..=b).contains(&slot),
                    (Some(a), None) => a == slot,
                    _ => false,
                }
            });
            if serves {
                let address = fields[1].split('@').next().unwrap_or_default();
                return address.rsplit(':').next().and_then(|p| p.parse().ok());
            }
        }
        None
    }

    /// Kills the master serving `key`'s slot (SIGKILL: no goodbye to the others);
    /// answers its port. Its replica takes over after the node timeout.
    pub fn kill_master_of(&mut self, key: &str) -> u16 {
        let port = self.master_of(key);
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port)
            && let Some(mut child) = node.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        port
    }

    /// The port of the first seed in [`url`](Self::url).
    pub fn first_seed(&self) -> u16 {
        self.live_ports()[0]
    }

    /// Kills the node on `port` (SIGKILL).
    pub fn kill_port(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port)
            && let Some(mut child) = node.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until the slot of `key` has a master again (a promoted replica), and
    /// the cluster is ok.
    pub fn wait_failover(&self, key: &str, old_master: u16) {
        let port = self.live_ports()[0];
        wait_for(&format!("a replica of {old_master} is promoted"), || {
            cli(port, &["CLUSTER", "INFO"]).is_ok_and(|i| i.contains("cluster_state:ok"))
                && self.try_master_of(key).is_some_and(|p| p != old_master)
        });
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
