//! The webhookd under test as a child process: started, killed, restarted on the same data.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::Child;

/// How long a graceful stop may take before the process is killed.
const STOP_PATIENCE: Duration = Duration::from_secs(15);

/// A running `webhookd serve` and everything needed to start it again.
pub struct WebhookdProcess {
    exe: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    /// How many times it was started.
    starts: u32,
}

impl WebhookdProcess {
    /// Starts `exe serve` with `env`, appending its stderr to `log`.
    pub fn start(exe: &Path, env: Vec<(String, String)>, log: &Path) -> anyhow::Result<WebhookdProcess> {
        let mut p = WebhookdProcess { exe: exe.into(), env, log: log.into(), child: None, starts: 0 };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        // Appending keeps the log of every run of this process in one file.
        let log = OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = tokio::process::Command::new(&self.exe)
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // Warnings only, unless a person tracing a run asks for more.
            .env("RUST_LOG", std::env::var("WEBHOOKD_HARNESS_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(log)
            // A replay that fails half-way must not leave webhookd running.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Kills it with SIGKILL (no chance to flush or acknowledge) and starts it again.
    pub async fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.spawn()
    }

    /// Kills it with SIGKILL and leaves it down (until [`WebhookdProcess::start_again`]).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("cannot kill webhookd")?;
        }
        Ok(())
    }

    /// Starts it again after [`WebhookdProcess::kill`] (a no-op while it runs).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn()
    }

    /// Stops it with SIGTERM, waits for a clean exit, and starts it again.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let status = terminate(&mut child).await?;
            if !status.success() {
                bail!("webhookd exited with {status} after SIGTERM");
            }
        }
        self.spawn()
    }

    /// Fails when the process ended on its own.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("webhookd exited on its own with {status}");
            }
        }
        Ok(())
    }

    /// Stops it gracefully (SIGTERM, then SIGKILL after a while).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = terminate(&mut child).await {
                tracing::warn!(error = %e, "webhookd did not stop cleanly");
            }
        }
    }
}

/// Sends SIGTERM and waits; kills the process if it does not exit within [`STOP_PATIENCE`].
async fn terminate(child: &mut Child) -> anyhow::Result<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
    }
    if let Ok(status) = tokio::time::timeout(STOP_PATIENCE, child.wait()).await {
        return Ok(status?);
    }
    child.kill().await?;
    let status = child.wait().await?;
    bail!("webhookd did not stop within {STOP_PATIENCE:?} of SIGTERM and was killed ({status})")
}

/// Mints an API token with `webhookd token create ARGS`, configured by `env` like the webhookd it
/// is for (the token goes through that webhookd's catalog log, running or not).
pub async fn mint_token(exe: &Path, env: &[(String, String)], args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(exe)
        .args(["token", "create"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .await
        .context("cannot run webhookd token create")?;
    if !out.status.success() {
        bail!("webhookd token create failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
