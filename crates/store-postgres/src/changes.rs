//! What one instance tells the others after changing the catalog, so their caches
//! drop what went stale. The transport (Redis pub/sub in the server) is not this
//! crate's business: it only needs a [`ChangePublisher`].

use async_trait::async_trait;

/// A committed catalog change, as announced to other instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogChange {
    /// A key's record or secrets changed; `version` is its version after the change.
    Key { id: String, version: u64 },
    /// A plan was created, replaced or deleted.
    Plan { name: String },
    /// A project was created or its settings changed.
    Project { id: String },
    /// An admin token was created or revoked.
    AdminToken,
}

impl CatalogChange {
    /// The wire form: `key <version> <id>`, `plan <name>`, `project <id>`, `token`.
    pub fn encode(&self) -> String {
        match self {
            CatalogChange::Key { id, version } => format!("key {version} {id}"),
            CatalogChange::Plan { name } => format!("plan {name}"),
            CatalogChange::Project { id } => format!("project {id}"),
            CatalogChange::AdminToken => "token".to_owned(),
        }
    }

    /// Parses the wire form; `None` for anything else (a newer instance's message).
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, ' ');
        match parts.next()? {
            "key" => {
                let version = parts.next()?.parse().ok()?;
                let id = parts.next().filter(|id| !id.is_empty())?;
                Some(CatalogChange::Key { id: id.to_owned(), version })
            }
            "plan" => {
                let name = parts.next().filter(|n| !n.is_empty())?;
                parts.next().is_none().then(|| CatalogChange::Plan { name: name.to_owned() })
            }
            "project" => {
                let id = parts.next().filter(|n| !n.is_empty())?;
                parts.next().is_none().then(|| CatalogChange::Project { id: id.to_owned() })
            }
            "token" => parts.next().is_none().then_some(CatalogChange::AdminToken),
            _ => None,
        }
    }
}

/// Announces committed changes to the other instances. Implementations log their own
/// failures: a lost announcement is bounded by the cache TTL, and must never undo or
/// fail the change itself.
#[async_trait]
pub trait ChangePublisher: Send + Sync + 'static {
    async fn publish(&self, change: CatalogChange);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_round_trips_and_refuses_garbage() {
        for change in [
            CatalogChange::Key { id: "abcDEF012345".into(), version: 7 },
            CatalogChange::Plan { name: "free".into() },
            CatalogChange::Project { id: "acme".into() },
            CatalogChange::AdminToken,
        ] {
            assert_eq!(CatalogChange::decode(&change.encode()), Some(change));
        }
        for bad in
            ["", "key", "key x abc", "key 3 ", "plan", "plan a b", "token x", "kee 1 a", "project", "project a b"]
        {
            assert_eq!(CatalogChange::decode(bad), None, "{bad:?}");
        }
    }
}
