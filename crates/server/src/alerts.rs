//! Starting the alerts machinery (crates/alerts): the sealer of channel secrets, the
//! rules in force, and the jobs: the outbox writer, the delivery worker and the rule
//! refresh. The limiter the gateway uses is wrapped by
//! [`tollgate_alerts::detect::AlertingLimiter`] in `app.rs`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_alerts::AlertStore;
use tollgate_alerts::channels::SendSettings;
use tollgate_alerts::detect::Crossing;
use tollgate_alerts::outbox::{Alerts, DeliverySettings};
use tollgate_alerts::seal::{MasterKey, Sealer};

use crate::config::AlertsSettings;

/// The file the embedded store's generated master key is kept in.
pub const MASTER_KEY_FILE: &str = "alerts-master.key";

/// The sealer from the configured master key, a key file, or (embedded store only) a
/// key generated once into `<data_dir>/alerts-master.key`; `None` when there is none.
pub fn sealer(settings: &AlertsSettings, data_dir: &Path, embedded: bool) -> anyhow::Result<Option<Sealer>> {
    let current = if let Some(key) = &settings.master_key {
        Some(key.expose().to_owned())
    } else if let Some(path) = &settings.master_key_file {
        Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading alerts.master_key_file {}", path.display()))?,
        )
    } else if embedded {
        Some(generated_key(data_dir)?)
    } else {
        None
    };
    let Some(current) = current else { return Ok(None) };
    let current = MasterKey::parse(&current).context("alerts master key")?;
    let older = settings
        .old_master_keys
        .iter()
        .map(|k| MasterKey::parse(k.expose()))
        .collect::<Result<Vec<_>, _>>()
        .context("alerts.old_master_keys")?;
    Ok(Some(Sealer::new(current, older)))
}

fn generated_key(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(MASTER_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(key) => return Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let key = MasterKey::generate_hex().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, key.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "no alerts master key was configured: one was generated into this file (readable only by its owner); \
         back it up with the database, or sealed channel secrets cannot be opened"
    );
    Ok(key)
}

/// Builds the alerts machinery and loads the rules.
pub async fn build(
    settings: &AlertsSettings,
    store: Arc<dyn AlertStore>,
    data_dir: &Path,
    embedded: bool,
) -> anyhow::Result<(Arc<Alerts>, UnboundedReceiver<Crossing>)> {
    let sealer = sealer(settings, data_dir, embedded)?;
    if sealer.is_none() {
        tracing::warn!(
            "no alerts master key (alerts.master_key or alerts.master_key_file): channels with secrets \
             (webhooks, Slack, SMTP passwords) cannot be created or used"
        );
    }
    let delivery = DeliverySettings {
        retry_schedule: settings.retry_schedule.clone(),
        poll_every: settings.poll_every,
        lease: settings.lease,
        rules_refresh: settings.rules_refresh,
        send: SendSettings { timeout: settings.send_timeout, allow_private_targets: settings.allow_private_targets },
    };
    let (alerts, crossings) = Alerts::new(store, sealer, delivery);
    alerts.reload_rules().await.context("loading alert rules")?;
    Ok((alerts, crossings))
}

/// Starts the outbox writer, the delivery worker and the rule refresh.
pub fn spawn_jobs(
    alerts: &Arc<Alerts>,
    crossings: UnboundedReceiver<Crossing>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(alerts.clone().run_outbox(crossings, cancel.clone()));
    tracker.spawn(alerts.clone().run_deliveries(cancel.clone()));
    tracker.spawn(alerts.clone().run_rule_refresh(cancel.clone()));
}
