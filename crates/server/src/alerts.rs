//! Starting the alerts machinery (crates/alerts): the rules in force, and the jobs:
//! the outbox writer, the delivery worker and the rule refresh (the sealer of channel
//! secrets is [`crate::secrets::sealer`], shared with projects' provider keys). The limiter the gateway uses is wrapped by
//! [`tollgate_alerts::detect::AlertingLimiter`] in `app.rs`.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_alerts::AlertStore;
use tollgate_alerts::channels::SendSettings;
use tollgate_alerts::detect::Crossing;
use tollgate_alerts::outbox::{Alerts, DeliverySettings};
use tollgate_alerts::seal::Sealer;

use crate::config::AlertsSettings;

/// Builds the alerts machinery and loads the rules; `sealer` is the one of every sealed secret ([`crate::secrets::sealer`]).
pub async fn build(
    settings: &AlertsSettings,
    store: Arc<dyn AlertStore>,
    sealer: Option<Sealer>,
) -> anyhow::Result<(Arc<Alerts>, UnboundedReceiver<Crossing>)> {
    if sealer.is_none() {
        tracing::warn!(
            "no master key (secrets.master_key or secrets.master_key_file): channels with secrets \
             (webhooks, Slack, SMTP passwords) and projects' provider keys cannot be stored or used"
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
