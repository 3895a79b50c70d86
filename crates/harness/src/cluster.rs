//! A private 3-node RabbitMQ cluster on loopback for tests, run by `scripts/rabbitmq-cluster.sh`.
//!
//! Every call here is blocking: it runs the script with `std::process` and waits for it (a
//! start took 25-46 s on a busy 2-core machine here, a stop ~4 s). Async callers wrap these
//! calls in `tokio::task::spawn_blocking`.
//!
//! The cluster script comes from the env var `WEBHOOKD_RABBITMQ_CLUSTER_SCRIPT` when set;
//! otherwise the copy compiled into this crate is written to `<dir>/scripts/`, next to the
//! compiled-in copy of `scripts/rabbitmq.sh`, and run from there. The cluster script runs
//! `$WEBHOOKD_RABBITMQ_SCRIPT` for each node when that is set (scripts/test.sh sets it),
//! else the rabbitmq.sh next to it.
//!
//! When `WEBHOOKD_TEST_BROKER_LIST` names a file (scripts/test.sh sets it), each node
//! appends a line `<port>\t<node dir>` to it before the cluster starts, so that the script
//! can stop nodes whose test process was killed before `Drop` could run
//! (`scripts/rabbitmq.sh stop` thaws a frozen node first).
//!
//! The nodes run with `cluster_partition_handling = pause_minority` and a net_ticktime of
//! [`TICK_TIME`]: a frozen node ([`Cluster::freeze`]) counts as down for the others after
//! 5-6.25 s. After [`Cluster::thaw`], call [`Cluster::heal`]: RabbitMQ 3.10 leaves a thawed
//! node partitioned in most runs (docs/cluster-local.md).

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::broker::register;

/// The cluster script, compiled in for runs that do not point at a checkout.
const EMBEDDED_CLUSTER_SCRIPT: &str = include_str!("../../../scripts/rabbitmq-cluster.sh");

/// The broker script the cluster script runs for each node, compiled in likewise.
const EMBEDDED_BROKER_SCRIPT: &str = include_str!("../../../scripts/rabbitmq.sh");

/// Env var naming the cluster script to run instead of the embedded copy.
const CLUSTER_SCRIPT_ENV: &str = "WEBHOOKD_RABBITMQ_CLUSTER_SCRIPT";

/// The Erlang distribution port of a node is its AMQP port plus this.
const DIST_PORT_OFFSET: u16 = 20000;

/// First AMQP ports handed out by [`free_cluster_port`] (nodes use it and the next two): apart
/// from the single brokers' 10000..=12767, and with their distribution ports (27000..=27999)
/// below Linux's ephemeral range (32768..).
const PORT_RANGE: std::ops::RangeInclusive<u16> = 7000..=7997;

/// Number of nodes in a [`Cluster`].
pub const NODES: usize = 3;

/// The net_ticktime of the nodes: a peer silent for 1-1.25 times this counts as down.
pub const TICK_TIME: Duration = Duration::from_secs(5);

/// How long the cluster script may take to form or heal the cluster.
pub const FORM_TIMEOUT: Duration = Duration::from_secs(180);

/// A node's state as `rabbitmq-cluster.sh status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// The node accepts AMQP connections.
    Running,
    /// Its Erlang VM is stopped by SIGSTOP.
    Frozen,
    /// Its VM runs but its AMQP port is closed (booting, or paused as a minority).
    Paused,
    /// Its VM does not run.
    Stopped,
}

/// One node of the cluster as `rabbitmq-cluster.sh status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node's number, 1..=3.
    pub node: usize,
    /// The Erlang node name, `webhookd<port>@localhost`.
    pub name: String,
    /// Whether it runs, frozen, paused or stopped.
    pub state: NodeState,
    /// The running nodes as this node sees them (`rabbitmqctl cluster_status`), sorted.
    pub running_nodes: Vec<String>,
    /// The nodes this node reports a partition with, sorted.
    pub partitioned: Vec<String>,
}

/// The cluster as `rabbitmq-cluster.sh status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Nodes 1, 2 and 3, in order.
    pub nodes: Vec<NodeStatus>,
    /// True if all three run, each sees all three running and none reports a partition.
    pub whole: bool,
}

/// A private 3-node RabbitMQ cluster run by scripts/rabbitmq-cluster.sh, stopped when dropped.
///
/// Nodes are numbered 1..=3. All methods block while the script runs; call them from
/// `spawn_blocking` in async code.
#[derive(Debug)]
pub struct Cluster {
    port: u16,
    dir: PathBuf,
    script: PathBuf,
    urls: Vec<String>,
}

impl Cluster {
    /// Starts a cluster on free ports with its data in `dir` (created if missing).
    ///
    /// Blocks until all three nodes run and see each other (or the script gives up).
    pub fn start(dir: &Path) -> Result<Cluster> {
        Cluster::start_on(free_cluster_port()?, dir)
    }

    /// Starts a cluster whose node 1 listens on `port` (nodes 2 and 3 on the next two).
    ///
    /// Blocks until all three nodes run and see each other (or the script gives up).
    pub fn start_on(port: u16, dir: &Path) -> Result<Cluster> {
        fs::create_dir_all(dir).with_context(|| format!("creating cluster dir {}", dir.display()))?;
        let dir = dir.canonicalize().with_context(|| format!("resolving cluster dir {}", dir.display()))?;
        let script = cluster_script(&dir)?;
        let mut cluster = Cluster { port, dir, script, urls: Vec::new() };
        for n in 1..=NODES {
            let node_dir = cluster.node_dir(n);
            fs::create_dir_all(&node_dir)
                .with_context(|| format!("creating node dir {}", node_dir.display()))?;
            register(cluster.node_port(n), &node_dir)?;
        }
        let stdout = cluster.run(&["start"])?;
        let urls: Vec<String> =
            stdout.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        let expected: Vec<String> = (1..=NODES).map(|n| cluster.expected_url(n)).collect();
        if urls.len() < NODES || urls[urls.len() - NODES..] != expected[..] {
            bail!(
                "{} start did not end with the URLs {expected:?}; stdout was: {stdout:?}",
                cluster.script.display()
            );
        }
        cluster.urls = expected;
        tracing::info!(port, dir = %cluster.dir.display(), urls = ?cluster.urls, "cluster started");
        Ok(cluster)
    }

    /// The AMQP URLs of nodes 1, 2 and 3.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The AMQP URL of node `n` (1..=3); panics for another `n`.
    pub fn url(&self, n: usize) -> &str {
        check_node(n);
        &self.urls[n - 1]
    }

    /// The Erlang node name of node `n` (1..=3), `webhookd<port>@localhost`.
    pub fn node_name(&self, n: usize) -> String {
        check_node(n);
        format!("webhookd{}@localhost", self.node_port(n))
    }

    /// The cluster's dir: its cookie, and node1/ node2/ node3/.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILLs node `n`'s Erlang VM; fine if it does not run.
    pub fn kill(&self, n: usize) -> Result<()> {
        self.run(&["kill", &node_arg(n)])?;
        tracing::info!(node = n, "cluster node killed");
        Ok(())
    }

    /// Stops node `n` if it runs, starts it, and waits until it runs in the cluster again.
    pub fn restart(&self, n: usize) -> Result<()> {
        self.run(&["restart", &node_arg(n)])?;
        tracing::info!(node = n, "cluster node restarted");
        Ok(())
    }

    /// SIGSTOPs node `n`'s Erlang VM: after [`TICK_TIME`] the others count it as down.
    pub fn freeze(&self, n: usize) -> Result<()> {
        self.run(&["freeze", &node_arg(n)])?;
        tracing::info!(node = n, "cluster node frozen");
        Ok(())
    }

    /// SIGCONTs node `n`'s Erlang VM; [`Cluster::heal`] then waits until it is back.
    pub fn thaw(&self, n: usize) -> Result<()> {
        self.run(&["thaw", &node_arg(n)])?;
        tracing::info!(node = n, "cluster node thawed");
        Ok(())
    }

    /// Waits until the cluster is whole, restarting the app of a node stuck in a minority.
    ///
    /// Returns the numbers of the nodes whose app was restarted (empty if it healed alone).
    pub fn heal(&self) -> Result<Vec<usize>> {
        let stdout = self.run(&["heal"])?;
        let restarted = stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| l.parse::<usize>().with_context(|| format!("heal printed {l:?}, not a node number")))
            .collect::<Result<Vec<_>>>()?;
        tracing::info!(?restarted, "cluster whole");
        Ok(restarted)
    }

    /// Runs `rabbitmqctl ARGS` against node `n` and answers its standard output.
    pub fn ctl(&self, n: usize, args: &[&str]) -> Result<String> {
        let node = node_arg(n);
        let mut all = vec!["ctl", node.as_str()];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// The node (1..=3) that leads queue or stream `name`, as node `asked` reports it.
    pub fn leader_of(&self, name: &str, asked: usize) -> Result<usize> {
        let listed = self.ctl(asked, &["-q", "list_queues", "name", "leader", "--no-table-headers"])?;
        let leader = listed
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(queue, _)| queue.trim() == name)
            .map(|(_, leader)| leader.trim().to_string())
            .with_context(|| format!("{name} is not in list_queues: {listed:?}"))?;
        (1..=NODES)
            .find(|n| self.node_name(*n) == leader)
            .with_context(|| format!("{name}'s leader {leader} is none of the cluster's nodes"))
    }

    /// Each node's state and view of the cluster (`rabbitmqctl cluster_status`).
    pub fn status(&self) -> Result<ClusterStatus> {
        let output = self.output(&["status"])?;
        let whole = match output.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => return Err(self.failure(&["status"], &output)),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let nodes = stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(parse_status_line)
            .collect::<Result<Vec<_>>>()?;
        if nodes.len() != NODES {
            bail!("status printed {} node lines, not {NODES}: {stdout:?}", nodes.len());
        }
        Ok(ClusterStatus { nodes, whole })
    }

    /// Stops all three nodes, keeping their data (a frozen node is thawed first).
    ///
    /// Blocking; succeeds if the nodes were not running.
    pub fn stop(&self) -> Result<()> {
        self.run(&["stop"])?;
        tracing::info!(port = self.port, "cluster stopped");
        Ok(())
    }

    /// The AMQP port of node `n`.
    fn node_port(&self, n: usize) -> u16 {
        self.port + (n as u16 - 1)
    }

    /// The dir of node `n`, as the script lays it out.
    fn node_dir(&self, n: usize) -> PathBuf {
        self.dir.join(format!("node{n}"))
    }

    /// The URL the script prints for node `n`.
    fn expected_url(&self, n: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.node_port(n))
    }

    /// Runs the script with `args`; returns its stdout, or an error with its stderr.
    fn run(&self, args: &[&str]) -> Result<String> {
        let output = self.output(args)?;
        if !output.status.success() {
            return Err(self.failure(args, &output));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        tracing::debug!(port = self.port, ?args, stderr = %stderr.trim_end(), "cluster script done");
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs the script with `args` for this cluster and returns what it did.
    fn output(&self, args: &[&str]) -> Result<Output> {
        let mut command = Command::new("bash");
        command
            .arg(&self.script)
            .args(args)
            .env("WEBHOOKD_RMQ_CLUSTER_PORT", self.port.to_string())
            .env("WEBHOOKD_RMQ_CLUSTER_DIR", &self.dir)
            .env("WEBHOOKD_RMQ_TICKTIME", TICK_TIME.as_secs().to_string())
            // Forming or healing the cluster beside other tests on 2 cores took over the
            // script's default minute once (CI); a real failure still ends in an error.
            .env("WEBHOOKD_RMQ_TIMEOUT", FORM_TIMEOUT.as_secs().to_string())
            .env_remove("WEBHOOKD_RMQ_COOKIE")
            .stdin(Stdio::null());
        command.output().with_context(|| format!("running bash {} {}", self.script.display(), args.join(" ")))
    }

    /// The error for a failed script run.
    fn failure(&self, args: &[&str], output: &Output) -> anyhow::Error {
        anyhow::anyhow!(
            "`{} {}` for the cluster on ports {}..={} (dir {}) failed with {}:\n{}",
            self.script.display(),
            args.join(" "),
            self.port,
            self.port + (NODES as u16 - 1),
            self.dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        )
    }
}

impl Drop for Cluster {
    /// Best-effort stop; the data dir is left for the caller to remove.
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::warn!(port = self.port, "stopping cluster on drop failed: {err:#}");
        }
    }
}

/// Panics unless `n` is a node number, 1..=3.
fn check_node(n: usize) {
    assert!((1..=NODES).contains(&n), "cluster nodes are numbered 1..={NODES}, not {n}");
}

/// `n` as the script's N argument; panics unless it is 1..=3.
fn node_arg(n: usize) -> String {
    check_node(n);
    n.to_string()
}

/// Parses one line of `status`: N, name, state, running nodes, partitioned nodes (tab-separated).
fn parse_status_line(line: &str) -> Result<NodeStatus> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [node, name, state, running, partitioned] = fields[..] else {
        bail!("status line {line:?} does not have 5 fields");
    };
    let state = match state {
        "running" => NodeState::Running,
        "frozen" => NodeState::Frozen,
        "paused" => NodeState::Paused,
        "stopped" => NodeState::Stopped,
        other => bail!("unknown node state {other:?} in status line {line:?}"),
    };
    let names = |list: &str| -> Vec<String> {
        if list == "-" {
            Vec::new()
        } else {
            list.split(',').map(String::from).collect()
        }
    };
    Ok(NodeStatus {
        node: node.parse().with_context(|| format!("node number in status line {line:?}"))?,
        name: name.to_string(),
        state,
        running_nodes: names(running),
        partitioned: names(partitioned),
    })
}

/// Returns the script to run: `$WEBHOOKD_RABBITMQ_CLUSTER_SCRIPT`, or the embedded copy
/// written into `<dir>/scripts/` with the embedded rabbitmq.sh next to it.
fn cluster_script(dir: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(CLUSTER_SCRIPT_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{CLUSTER_SCRIPT_ENV}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let embedded_dir = dir.join("scripts");
    write_embedded(&embedded_dir, "rabbitmq.sh", EMBEDDED_BROKER_SCRIPT)?;
    write_embedded(&embedded_dir, "rabbitmq-cluster.sh", EMBEDDED_CLUSTER_SCRIPT)
}

/// Writes `content` to `<dir>/<name>` (mode 755) unless it is there already; returns the path.
fn write_embedded(dir: &Path, name: &str, content: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if fs::read_to_string(&path).is_ok_and(|current| current == content) {
        return Ok(path);
    }
    // Write to a temp name and rename, so a script being run is never rewritten in place.
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        fs::create_dir_all(dir)?;
        let mut file = fs::File::create(&tmp)?;
        file.write_all(content.as_bytes())?;
        file.set_permissions(fs::Permissions::from_mode(0o755))?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().with_context(|| format!("writing {name} to {}", path.display()))?;
    Ok(path)
}

/// Picks AMQP ports for a new cluster: `port`, `port + 1` and `port + 2`, all free on
/// 127.0.0.1 with their distribution ports (+20000). Returns `port`.
///
/// Ports come from 7000..=7999 in random order and are never handed out twice by one
/// process; another process may still race for them, and the cluster then fails to start.
pub fn free_cluster_port() -> Result<u16> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);

    let span = u32::from(PORT_RANGE.end() - PORT_RANGE.start()) + 1;
    let offset = RandomState::new().build_hasher().finish() % u64::from(span);
    for i in 0..span {
        let first = PORT_RANGE.start() + ((offset as u32 + i) % span) as u16;
        let ports: Vec<u16> = (0..NODES as u16).map(|k| first + k).collect();
        if ports.iter().any(|p| handed_out.contains(p)) {
            continue;
        }
        if ports.iter().all(|&p| port_is_free(p) && port_is_free(p + DIST_PORT_OFFSET)) {
            handed_out.extend(ports);
            return Ok(first);
        }
    }
    bail!(
        "no {NODES} free consecutive cluster ports in {}..={} (with their distribution ports +{DIST_PORT_OFFSET})",
        PORT_RANGE.start(),
        PORT_RANGE.end() + (NODES as u16 - 1)
    )
}

/// True if nothing listens on (or holds) 127.0.0.1:`port` right now.
fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_cluster_ports_do_not_overlap() {
        let a = free_cluster_port().unwrap();
        let b = free_cluster_port().unwrap();
        assert!(a.abs_diff(b) >= NODES as u16, "{a} and {b} overlap");
        for port in [a, b] {
            assert!(PORT_RANGE.contains(&port));
        }
    }

    #[test]
    fn status_lines_parse() {
        let line = "1\twebhookd7001@localhost\trunning\twebhookd7001@localhost,webhookd7002@localhost\t-";
        let status = parse_status_line(line).unwrap();
        assert_eq!(status.node, 1);
        assert_eq!(status.state, NodeState::Running);
        assert_eq!(status.running_nodes, ["webhookd7001@localhost", "webhookd7002@localhost"]);
        assert!(status.partitioned.is_empty());
        let frozen = parse_status_line("3\twebhookd7003@localhost\tfrozen\t-\t-").unwrap();
        assert_eq!((frozen.state, frozen.running_nodes.len()), (NodeState::Frozen, 0));
        assert!(parse_status_line("3\tx\tgone\t-\t-").is_err());
        assert!(parse_status_line("3\tx\trunning").is_err());
    }

    #[test]
    fn embedded_scripts_are_written_side_by_side() {
        let dir = std::env::temp_dir().join(format!("webhookd-cluster-scripts-{}", std::process::id()));
        let a = write_embedded(&dir, "rabbitmq.sh", EMBEDDED_BROKER_SCRIPT).unwrap();
        let b = write_embedded(&dir, "rabbitmq-cluster.sh", EMBEDDED_CLUSTER_SCRIPT).unwrap();
        assert_eq!(a.parent(), b.parent());
        assert_eq!(fs::read_to_string(&b).unwrap(), EMBEDDED_CLUSTER_SCRIPT);
        assert_eq!(fs::metadata(&b).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(write_embedded(&dir, "rabbitmq.sh", EMBEDDED_BROKER_SCRIPT).unwrap(), a);
        let _ = fs::remove_dir_all(&dir);
    }
}
