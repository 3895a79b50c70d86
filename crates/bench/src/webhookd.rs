//! The real webhookd binary under test: minting a token, starting `webhookd serve` with its own
//! data dir and names, creating subscriptions through its API, sampling its memory, stopping it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use webhookd_ingest::AmqpSettings;

use crate::events::now_ns;
use crate::procfs;

/// Longest a `webhookd token create` may take: reading the catalog log to its end (at most
/// 120 s by its own limit) and one change.
const MINT_PATIENCE: Duration = Duration::from_secs(180);

/// How to run webhookd: the binary and the configuration every run shares.
#[derive(Clone, Debug)]
pub struct WebhookdSetup {
    /// The webhookd binary.
    pub exe: PathBuf,
    /// The configuration file the user gave, passed on as `WEBHOOKD_CONFIG`.
    pub config_file: Option<PathBuf>,
}

/// A running `webhookd serve`.
pub struct Webhookd {
    child: tokio::process::Child,
    /// Base url of its API.
    pub api: String,
    /// When it was spawned, unix nanoseconds.
    pub spawned_ns: u64,
    log: PathBuf,
    http: reqwest::Client,
}

impl WebhookdSetup {
    /// A webhookd command on `data_dir` with `amqp`'s names.
    fn command(&self, data_dir: &Path, amqp: &AmqpSettings) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.exe);
        command.env("WEBHOOKD_DATA_DIR", data_dir);
        if let Some(file) = &self.config_file {
            command.env("WEBHOOKD_CONFIG", file);
        }
        command
            .env("WEBHOOKD_AMQP_URL", &amqp.url)
            .env("WEBHOOKD_AMQP_EXCHANGE", &amqp.exchange)
            .env("WEBHOOKD_AMQP_QUEUE", &amqp.queue)
            .env("WEBHOOKD_AMQP_DEAD_LETTER_EXCHANGE", &amqp.dead_letter_exchange)
            .env("WEBHOOKD_AMQP_DEAD_LETTER_QUEUE", &amqp.dead_letter_queue)
            .env("WEBHOOKD_CATALOG_STREAM", crate::amqp::streams(amqp).0)
            .env("WEBHOOKD_DELIVERY_LOG_STREAM", crate::amqp::streams(amqp).1);
        let (retry_prefix, due_queue) = crate::amqp::retry_queues(amqp);
        command
            .env("WEBHOOKD_DELIVERY_RETRY_QUEUE_PREFIX", retry_prefix)
            .env("WEBHOOKD_DELIVERY_DUE_QUEUE", due_queue);
        command
    }

    /// Mints a token for `merchant` through the catalog log of the webhookd on `amqp`'s names.
    pub async fn mint_token(
        &self,
        data_dir: &Path,
        amqp: &AmqpSettings,
        merchant: &str,
    ) -> anyhow::Result<String> {
        let out = self
            .command(data_dir, amqp)
            .args(["token", "create", "--user-id", "bench", "--merchant-id", merchant])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(MINT_PATIENCE, out)
            .await
            .with_context(|| format!("webhookd token create did not finish within {MINT_PATIENCE:?}"))?
            .context("cannot run webhookd token create")?;
        if !out.status.success() {
            bail!("webhookd token create failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts `webhookd serve` on `data_dir`, consuming `amqp`'s names, its log in `log`.
    pub async fn start(&self, data_dir: &Path, amqp: &AmqpSettings, log: &Path) -> anyhow::Result<Webhookd> {
        self.start_with(data_dir, amqp, log, &[]).await
    }

    /// Like [`WebhookdSetup::start`], with more `WEBHOOKD_*` settings.
    pub async fn start_with(
        &self,
        data_dir: &Path,
        amqp: &AmqpSettings,
        log: &Path,
        settings: &[(&str, String)],
    ) -> anyhow::Result<Webhookd> {
        let listen =
            format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
        let log_file = std::fs::File::create(log)?;
        let spawned_ns = now_ns();
        let child = self
            .command(data_dir, amqp)
            .arg("serve")
            .env("WEBHOOKD_HTTP_LISTEN", &listen)
            // The receiver is plain http on loopback, which webhookd refuses by default.
            .env("WEBHOOKD_DESTINATIONS_ALLOW_HTTP", "true")
            .env("WEBHOOKD_DESTINATIONS_ALLOW", "127.0.0.1/32")
            .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start webhookd serve")?;
        // Every request bounded: a webhookd that stops answering fails the run, never hangs it.
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build()?;
        Ok(Webhookd { child, api: format!("http://{listen}"), spawned_ns, log: log.to_path_buf(), http })
    }
}

impl Webhookd {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Waits until `/readyz` answers 200 (connected and consuming).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.api)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("webhookd exited with {status} before it was ready:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("webhookd was not ready within {timeout:?}:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates an enabled Rabo subscription for `order.finalized/v1` to `url`; returns its id.
    pub async fn subscribe(&self, token: &str, url: &str) -> anyhow::Result<String> {
        let body = json!({"status": "enabled", "url": url, "eventTypes": ["order.finalized/v1"]});
        let response = self
            .http
            .post(format!("{}/v3/webhooks/subscriptions", self.api))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("creating a subscription answered {status}: {text}");
        }
        let created: serde_json::Value = serde_json::from_str(&text)?;
        Ok(created["id"].as_str().unwrap_or_default().to_string())
    }

    /// The sum of every series of the counter or gauge `name` on its `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.http.get(format!("{}/metrics", self.api)).send().await?.text().await?;
        Ok(text
            .lines()
            .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Waits until the metric `name` (summed as [`Webhookd::metric`] does) reaches `at_least`.
    pub async fn wait_for_metric(&self, name: &str, at_least: f64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric(name).await?;
            if value >= at_least {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} at {}: {value} after {timeout:?}, not {at_least}:\n{}",
                    self.api,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops it with SIGTERM (graceful), killing it if it has not exited within 30 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.pid();
        let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!("webhookd exited with {status}:\n{}", self.log_tail());
                }
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("webhookd did not stop within 30 s of SIGTERM");
            }
        }
        Ok(())
    }
}

/// Samples a process's resident memory every 100 ms until stopped.
pub struct MemorySampler {
    samples: Arc<Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
    pid: u32,
}

/// Memory figures of one process over one measurement, MiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    /// Median of the `VmRSS` samples.
    pub steady_mib: f64,
    /// `VmHWM` at the end: the peak over the process's life.
    pub peak_mib: f64,
}

impl MemorySampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> MemorySampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let into = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(rss) = procfs::rss_bytes(pid) else { return };
                into.lock().unwrap_or_else(|e| e.into_inner()).push(rss);
            }
        });
        MemorySampler { samples, task, pid }
    }

    /// Stops sampling; the process must still run (for its peak).
    pub fn finish(self) -> Memory {
        self.task.abort();
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        Memory {
            steady_mib: crate::stats::median(samples.into_iter().map(mib)),
            peak_mib: procfs::peak_rss_bytes(self.pid).map_or(0.0, mib),
        }
    }
}
