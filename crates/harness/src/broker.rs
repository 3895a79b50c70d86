//! Private RabbitMQ brokers for tests, run by `scripts/rabbitmq.sh`.
//!
//! Every call here is blocking: it runs the script with `std::process` and waits for it
//! (a start takes about 5-8 s, a stop 2-3 s). Async callers wrap these calls in
//! `tokio::task::spawn_blocking`.
//!
//! The script comes from the env var `WEBHOOKD_RABBITMQ_SCRIPT` when set (scripts/test.sh
//! sets it); otherwise the copy compiled into this crate is written to
//! `<dir>/rabbitmq.sh` and run from there.
//!
//! When `WEBHOOKD_TEST_BROKER_LIST` names a file (scripts/test.sh sets it), every broker
//! started here appends a line `<port>\t<dir>` to it before starting, so that the script
//! can stop brokers whose test process was killed before `Drop` could run.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

/// The broker script, compiled in for runs that do not point at a checkout.
const EMBEDDED_SCRIPT: &str = include_str!("../../../scripts/rabbitmq.sh");

/// Env var naming the broker script to run instead of the embedded copy.
const SCRIPT_ENV: &str = "WEBHOOKD_RABBITMQ_SCRIPT";

/// Env var naming a file to which each started broker appends `<port>\t<dir>`.
const BROKER_LIST_ENV: &str = "WEBHOOKD_TEST_BROKER_LIST";

/// The Erlang distribution port of a broker is its AMQP port plus this.
const DIST_PORT_OFFSET: u16 = 20000;

/// AMQP ports handed out by [`free_broker_port`]: with their distribution ports
/// (30000..=32767) they stay below Linux's ephemeral range (32768..), so outgoing
/// connections do not grab them between the check and the broker's start.
const PORT_RANGE: std::ops::RangeInclusive<u16> = 10000..=12767;

/// A private RabbitMQ broker run by scripts/rabbitmq.sh, stopped when dropped.
///
/// All methods block while the script runs; call them from `spawn_blocking` in async code.
#[derive(Debug)]
pub struct Broker {
    port: u16,
    dir: PathBuf,
    url: String,
    script: PathBuf,
}

impl Broker {
    /// Starts a broker on `port` with its data in `dir` (created if missing).
    ///
    /// Blocks until the broker accepts connections (or the script gives up after ~60 s).
    pub fn start(port: u16, dir: &Path) -> Result<Broker> {
        fs::create_dir_all(dir).with_context(|| format!("creating broker dir {}", dir.display()))?;
        let dir = dir.canonicalize().with_context(|| format!("resolving broker dir {}", dir.display()))?;
        let script = broker_script(&dir)?;
        register(port, &dir)?;
        let mut broker = Broker { port, dir, url: String::new(), script };
        broker.url = broker.run_start()?;
        tracing::info!(port, dir = %broker.dir.display(), url = %broker.url, "broker started");
        Ok(broker)
    }

    /// The AMQP URL of this broker.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the broker, keeping its data dir (for restart tests).
    ///
    /// Blocking; succeeds if the broker was not running.
    pub fn stop(&self) -> Result<()> {
        self.run("stop")?;
        tracing::info!(port = self.port, "broker stopped");
        Ok(())
    }

    /// Starts it again after `stop`, with the same data.
    ///
    /// Blocking: stops the broker if it runs, then starts it and waits until it is ready.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Starts it (again) if stopped.
    ///
    /// Blocking; returns once the broker accepts connections, at once if it already runs.
    pub fn start_again(&self) -> Result<()> {
        let url = self.run_start()?;
        if url != self.url {
            bail!("broker on port {} came back with URL {url}, expected {}", self.port, self.url);
        }
        tracing::info!(port = self.port, "broker started again");
        Ok(())
    }

    /// Runs `start` and returns the URL, the last line the script printed.
    fn run_start(&self) -> Result<String> {
        let stdout = self.run("start")?;
        match stdout.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            Some(url) if url.starts_with("amqp://") => Ok(url.to_string()),
            _ => bail!("{} start printed no AMQP URL; stdout was: {stdout:?}", self.script.display()),
        }
    }

    /// Runs one script subcommand for this broker; returns its stdout, or an error with its stderr.
    fn run(&self, subcommand: &str) -> Result<String> {
        let output = Command::new("bash")
            .arg(&self.script)
            .arg(subcommand)
            .env("WEBHOOKD_RMQ_PORT", self.port.to_string())
            .env("WEBHOOKD_RMQ_DIR", &self.dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running bash {} {subcommand}", self.script.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            bail!(
                "`{} {subcommand}` for the broker on port {} (dir {}) failed with {}:\n{}",
                self.script.display(),
                self.port,
                self.dir.display(),
                output.status,
                stderr.trim_end()
            );
        }
        tracing::debug!(port = self.port, subcommand, stderr = %stderr.trim_end(), "broker script done");
        Ok(stdout)
    }
}

impl Drop for Broker {
    /// Best-effort stop; the data dir is left for the caller to remove.
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::warn!(port = self.port, "stopping broker on drop failed: {err:#}");
        }
    }
}

/// Appends a broker (or cluster node) to `$WEBHOOKD_TEST_BROKER_LIST`, if set, for cleanup after a crash.
pub(crate) fn register(port: u16, dir: &Path) -> Result<()> {
    let Some(list) = std::env::var_os(BROKER_LIST_ENV).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let line = format!("{port}\t{}\n", dir.display());
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&list)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .with_context(|| format!("appending to {BROKER_LIST_ENV}={}", Path::new(&list).display()))
}

/// Returns the script to run: `$WEBHOOKD_RABBITMQ_SCRIPT`, or the embedded copy written into `dir`.
fn broker_script(dir: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(SCRIPT_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{SCRIPT_ENV}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let path = dir.join("rabbitmq.sh");
    if fs::read_to_string(&path).is_ok_and(|current| current == EMBEDDED_SCRIPT) {
        return Ok(path);
    }
    // Write to a temp name and rename, so a script being run is never rewritten in place.
    let tmp = dir.join(format!(".rabbitmq.sh.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(EMBEDDED_SCRIPT.as_bytes())?;
        file.set_permissions(fs::Permissions::from_mode(0o755))?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().with_context(|| format!("writing the broker script to {}", path.display()))?;
    Ok(path)
}

/// Picks a free TCP port on 127.0.0.1 (and checks port+20000 is free too) for a new broker.
///
/// Ports come from 10000..=12767 in random order and are never handed out twice by one
/// process; another process may still race for the same port, which then fails to start.
pub fn free_broker_port() -> Result<u16> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);

    let span = u32::from(PORT_RANGE.end() - PORT_RANGE.start()) + 1;
    let offset = RandomState::new().build_hasher().finish() % u64::from(span);
    for i in 0..span {
        let port = PORT_RANGE.start() + ((offset as u32 + i) % span) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if port_is_free(port) && port_is_free(port + DIST_PORT_OFFSET) {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!(
        "no free broker port in {}..={} (with its distribution port +{DIST_PORT_OFFSET})",
        PORT_RANGE.start(),
        PORT_RANGE.end()
    )
}

/// True if nothing listens on (or holds) 127.0.0.1:`port` right now.
fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// A fresh dir under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(prefix: &str) -> TempDir {
            let nanos =
                SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
            let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Connects to `port` and checks that an AMQP 0-9-1 broker answers the protocol header.
    fn assert_amqp_answers(port: u16) {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to broker on {port}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
        // The broker answers with a method frame (type 1) on channel 0: Connection.Start.
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).expect("read Connection.Start frame");
        assert_eq!(header[0], 1, "frame type");
        assert_eq!(&header[1..3], &[0, 0], "channel");
    }

    #[test]
    fn free_ports_are_distinct_and_in_range() {
        let a = free_broker_port().unwrap();
        let b = free_broker_port().unwrap();
        assert_ne!(a, b);
        for port in [a, b] {
            assert!(PORT_RANGE.contains(&port));
        }
    }

    #[test]
    fn embedded_script_is_written_executable() {
        let dir = TempDir::new("webhookd-broker-script");
        if std::env::var_os(SCRIPT_ENV).is_some() {
            // scripts/test.sh points at the checkout; the embedded copy must match it.
            let path = broker_script(&dir.0).unwrap();
            assert_eq!(fs::read_to_string(path).unwrap(), EMBEDDED_SCRIPT);
            return;
        }
        let path = broker_script(&dir.0).unwrap();
        assert_eq!(path, dir.0.join("rabbitmq.sh"));
        assert_eq!(fs::read_to_string(&path).unwrap(), EMBEDDED_SCRIPT);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // A second call keeps the file as it is.
        assert_eq!(broker_script(&dir.0).unwrap(), path);
    }

    #[test]
    fn starts_stops_and_restarts() {
        let dir = TempDir::new("webhookd-broker-test");
        let port = free_broker_port().unwrap();
        let broker = Broker::start(port, &dir.0.join("rmq")).unwrap();
        assert_eq!(broker.url(), format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
        assert_amqp_answers(port);

        broker.restart().unwrap();
        assert_amqp_answers(port);

        // Starting a running broker is a no-op.
        broker.start_again().unwrap();
        assert_amqp_answers(port);

        broker.stop().unwrap();
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still accepts connections after stop"
        );
        // Stopping a stopped broker is fine too.
        broker.stop().unwrap();

        broker.start_again().unwrap();
        assert_amqp_answers(port);
        drop(broker);
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still accepts connections after drop"
        );
    }
}
