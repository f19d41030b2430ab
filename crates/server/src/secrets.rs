//! The master key of every sealed secret (alert channel secrets, projects' provider
//! keys) and its rotation.
//!
//! [`sealer`] builds the one [`Sealer`] from `[secrets]` (or `[alerts]`, its older
//! name): the current key seals, the `old_master_keys` still open. [`rotate`] re-seals
//! every stored value whose key id is not the current key's, in bounded pages, each
//! write a compare-and-swap (provider keys) so a value changed meanwhile is never
//! overwritten with an older one; `POST /api/v1/secrets/rotate` and `tollgate secrets
//! rotate` run it. A value sealed under a key no longer configured cannot be opened:
//! it is counted as `failed` and left as it is.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use tollgate_alerts::AlertStore;
use tollgate_alerts::channels::seal_purpose as channel_purpose;
use tollgate_alerts::seal::{MasterKey, Sealer};
use tollgate_store::provider_keys::seal_purpose;
use tollgate_store::{ProviderKeyCursor, ProviderKeyStore, StoreResult};

use crate::config::SecretsSettings;

/// The file the embedded store's generated master key is kept in (its name from the
/// time only alerts sealed secrets; kept so existing data directories still open).
pub const MASTER_KEY_FILE: &str = "alerts-master.key";

/// Provider keys re-sealed per page.
pub const ROTATE_PAGE: usize = 100;

/// The sealer from the configured master key, a key file, or (embedded store only) a
/// key generated once into `<data_dir>/alerts-master.key`; `None` when there is none.
pub fn sealer(settings: &SecretsSettings, data_dir: &Path, embedded: bool) -> anyhow::Result<Option<Sealer>> {
    let section = settings.section;
    let current = if let Some(key) = &settings.master_key {
        Some(key.expose().to_owned())
    } else if let Some(path) = &settings.master_key_file {
        Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {section}.master_key_file {}", path.display()))?,
        )
    } else if embedded {
        Some(generated_key(data_dir)?)
    } else {
        None
    };
    let Some(current) = current else { return Ok(None) };
    let current = MasterKey::parse(&current).with_context(|| format!("{section}.master_key"))?;
    let older = settings
        .old_master_keys
        .iter()
        .map(|k| MasterKey::parse(k.expose()))
        .collect::<Result<Vec<_>, _>>()
        .context("secrets.old_master_keys")?;
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
        "no master key was configured (secrets.master_key): one was generated into this file (readable only by \
         its owner); back it up with the database, or sealed secrets (channel secrets, provider keys) cannot be opened"
    );
    Ok(key)
}

/// What a rotation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RotationCounts {
    /// Values now sealed under the current key that were not before.
    pub resealed: u64,
    /// Values that were sealed under the current key already.
    pub already_current: u64,
    /// Values that could not be opened (sealed under a key that is not configured,
    /// or corrupt), left as they were; the log names each.
    pub failed: u64,
}

/// Re-seals every provider key and alert channel secret not sealed under the current
/// key. Provider keys are read in pages of [`ROTATE_PAGE`]; each write replaces only
/// the value it read (a key changed meanwhile is counted current: its writer sealed
/// it under the current key).
pub async fn rotate(
    sealer: &Sealer,
    provider_keys: &dyn ProviderKeyStore,
    alerts: &dyn AlertStore,
) -> StoreResult<RotationCounts> {
    let mut counts = RotationCounts::default();
    let mut after: Option<ProviderKeyCursor> = None;
    loop {
        let page = provider_keys.provider_keys_page(after.as_ref(), ROTATE_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(ProviderKeyCursor { project_id: last.project_id.clone(), provider: last.provider.clone() });
        for record in &page {
            if sealer.is_current(&record.sealed_key) {
                counts.already_current += 1;
                continue;
            }
            let purpose = seal_purpose(&record.project_id, &record.provider);
            match sealer.reseal(&purpose, &record.sealed_key) {
                Ok(sealed) => {
                    let replaced = provider_keys
                        .reseal_provider_key(&record.project_id, &record.provider, &record.sealed_key, &sealed)
                        .await?;
                    if replaced {
                        counts.resealed += 1;
                    } else {
                        counts.already_current += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        project_id = %record.project_id,
                        provider = %record.provider,
                        error = %e,
                        "a provider key cannot be re-sealed"
                    );
                    counts.failed += 1;
                }
            }
        }
        if page.len() < ROTATE_PAGE {
            break;
        }
    }
    // Channels are few (a handful per project): one listing.
    for mut channel in alerts.list_channels(None).await? {
        let Some(sealed) = channel.sealed_secret.clone() else { continue };
        if sealer.is_current(&sealed) {
            counts.already_current += 1;
            continue;
        }
        match sealer.reseal(channel_purpose(channel.kind), &sealed) {
            Ok(resealed) => {
                // Re-read just before the write: a channel changed meanwhile keeps its change.
                match alerts.get_channel(&channel.id).await? {
                    Some(now) if now.sealed_secret.as_deref() == Some(sealed.as_str()) => {
                        channel = now;
                        channel.sealed_secret = Some(resealed);
                        alerts.update_channel(channel).await?;
                        counts.resealed += 1;
                    }
                    _ => counts.already_current += 1,
                }
            }
            Err(e) => {
                tracing::warn!(channel_id = %channel.id, error = %e, "an alert channel secret cannot be re-sealed");
                counts.failed += 1;
            }
        }
    }
    Ok(counts)
}
