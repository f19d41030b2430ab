//! The in-memory semantic index of one instance: an HNSW graph per project and
//! partition, each node the embedding of a stored conversation, with the stored
//! answer beside it. Bounded: at most `max_entries_per_project` entries per project
//! (its oldest go first) and `max_bytes` in all (the soonest to expire go first);
//! entries expire at their own time. Projects never share a graph: the map is keyed
//! by the project id and the partition, and a search reads one graph.
//!
//! One `RwLock`: searches share it, inserts and removals take it alone, never across
//! an await.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::SemanticRow;
use super::hnsw::Hnsw;
use crate::CacheKey;

/// What an entry costs beyond its answer and vector (maps, sets, bookkeeping).
pub const ENTRY_OVERHEAD: usize = 256;

/// The closest stored conversation at or above the threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct SemanticHit {
    /// The exact key of the request that stored it.
    pub key: CacheKey,
    /// The encoded [`crate::Entry`].
    pub entry: Bytes,
    pub similarity: f32,
}

pub struct SemanticIndex {
    max_entries_per_project: usize,
    max_bytes: usize,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Project → partition → graph (looked up by `&str`: no allocation per search).
    graphs: HashMap<Arc<str>, HashMap<CacheKey, Hnsw>>,
    entries: HashMap<u64, Stored>,
    /// Exact key of the storing request → entry (a request stored again replaces).
    by_key: HashMap<(Arc<str>, CacheKey), u64>,
    by_expiry: BTreeSet<(i64, u64)>,
    /// Per project, (created, entry): the oldest first.
    by_project: HashMap<Arc<str>, BTreeSet<(i64, u64)>>,
    bytes: usize,
    next: u64,
}

struct Stored {
    project: Arc<str>,
    partition: CacheKey,
    key: CacheKey,
    node: u32,
    entry: Bytes,
    created_ms: i64,
    expires_ms: i64,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, id: u64) {
        let Some(s) = self.entries.remove(&id) else { return };
        self.by_expiry.remove(&(s.expires_ms, id));
        self.by_key.remove(&(s.project.clone(), s.key));
        if let Some(set) = self.by_project.get_mut(&s.project) {
            set.remove(&(s.created_ms, id));
            if set.is_empty() {
                self.by_project.remove(&s.project);
            }
        }
        self.bytes -= s.bytes;
        let Some(partitions) = self.graphs.get_mut(&s.project) else { return };
        let Some(graph) = partitions.get_mut(&s.partition) else { return };
        graph.delete(s.node);
        if graph.live() == 0 {
            partitions.remove(&s.partition);
            if partitions.is_empty() {
                self.graphs.remove(&s.project);
            }
        } else if graph.deleted() > graph.live() && graph.deleted() >= 32 {
            let (fresh, moved) = graph.rebuilt();
            *graph = fresh;
            for (payload, node) in moved {
                if let Some(e) = self.entries.get_mut(&payload) {
                    e.node = node;
                }
            }
        }
    }

    fn prune(&mut self, now_ms: i64) -> usize {
        let mut removed = 0;
        while let Some(&(expires, id)) = self.by_expiry.first() {
            if expires > now_ms {
                break;
            }
            self.remove(id);
            removed += 1;
        }
        removed
    }
}

impl SemanticIndex {
    pub fn new(max_entries_per_project: usize, max_bytes: usize) -> Self {
        Self { max_entries_per_project, max_bytes, inner: RwLock::new(Inner::default()) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries held (some may have expired and not been pruned yet).
    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (answers, vectors and overhead).
    pub fn bytes(&self) -> usize {
        self.read().bytes
    }

    /// Entries of one project.
    pub fn project_len(&self, project: &str) -> usize {
        self.read().by_project.get(project).map_or(0, BTreeSet::len)
    }

    /// Whether the entry stored by the request with exact key `key` is here.
    pub fn contains(&self, project: &str, key: &CacheKey) -> bool {
        let inner = self.read();
        inner.by_key.contains_key(&(Arc::from(project), *key))
    }

    /// The closest unexpired entry of `project`'s `partition` to the unit vector
    /// `query`, if its similarity is at least `threshold`.
    pub fn lookup(
        &self,
        project: &str,
        partition: &CacheKey,
        query: &[f32],
        threshold: f32,
        now_ms: i64,
    ) -> Option<SemanticHit> {
        let inner = self.read();
        let graph = inner.graphs.get(project)?.get(partition)?;
        graph.search(query, 4).into_iter().find_map(|(similarity, id)| {
            let s = inner.entries.get(&id)?;
            (similarity >= threshold && s.expires_ms > now_ms).then(|| SemanticHit {
                key: s.key,
                entry: s.entry.clone(),
                similarity,
            })
        })
    }

    /// Stores `row` (a unit vector); false if it was not (expired, too big, a vector of
    /// another length than its partition's, or an older copy of what is stored).
    pub fn insert(&self, row: &SemanticRow, now_ms: i64) -> bool {
        let size = row.entry.len() + Hnsw::bytes_per_node(row.vector.len()) + ENTRY_OVERHEAD;
        if row.expires_ms <= now_ms || size > self.max_bytes || self.max_entries_per_project == 0 {
            return false;
        }
        let mut inner = self.write();
        inner.prune(now_ms);
        let project: Arc<str> = inner
            .by_project
            .get_key_value(row.project.as_str())
            .map_or_else(|| Arc::from(row.project.as_str()), |(k, _)| k.clone());
        if let Some(&old) = inner.by_key.get(&(project.clone(), row.key)) {
            // The same row again (a bus notice and a catch-up both bring it): kept once.
            if inner.entries.get(&old).is_some_and(|s| s.created_ms >= row.created_ms) {
                return false;
            }
            inner.remove(old);
        }
        if inner.graphs.get(&project).and_then(|p| p.get(&row.partition)).is_some_and(|g| g.dims() != row.vector.len())
        {
            return false;
        }
        while inner.by_project.get(&project).map_or(0, BTreeSet::len) >= self.max_entries_per_project {
            let Some(&(_, oldest)) = inner.by_project.get(&project).and_then(BTreeSet::first) else { break };
            inner.remove(oldest);
        }
        while inner.bytes + size > self.max_bytes {
            let Some(&(_, soonest)) = inner.by_expiry.first() else { break };
            inner.remove(soonest);
        }
        inner.next += 1;
        let id = inner.next;
        let graph = inner
            .graphs
            .entry(project.clone())
            .or_default()
            .entry(row.partition)
            .or_insert_with(|| Hnsw::new(row.vector.len()));
        let Some(node) = graph.insert(row.vector.clone(), id) else { return false };
        inner.entries.insert(
            id,
            Stored {
                project: project.clone(),
                partition: row.partition,
                key: row.key,
                node,
                entry: row.entry.clone(),
                created_ms: row.created_ms,
                expires_ms: row.expires_ms,
                bytes: size,
            },
        );
        inner.by_key.insert((project.clone(), row.key), id);
        inner.by_expiry.insert((row.expires_ms, id));
        inner.by_project.entry(project).or_default().insert((row.created_ms, id));
        inner.bytes += size;
        true
    }

    /// Removes every entry expired at `now_ms`; returns how many.
    pub fn prune(&self, now_ms: i64) -> usize {
        self.write().prune(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::semantic::hnsw::normalised;

    fn row(project: &str, partition: u8, key: u8, vector: &[f32], created: i64, expires: i64) -> SemanticRow {
        SemanticRow {
            key: CacheKey([key; 32]),
            project: project.into(),
            partition: CacheKey([partition; 32]),
            vector: normalised(vector).expect("unit"),
            entry: Bytes::from(vec![key; 100]),
            created_ms: created,
            expires_ms: expires,
        }
    }

    #[test]
    fn partitions_and_projects_are_never_shared() {
        let index = SemanticIndex::new(100, 1 << 20);
        assert!(index.insert(&row("a", 1, 1, &[1.0, 0.0, 0.0], 0, 1000), 0));
        let q = normalised(&[1.0, 0.01, 0.0]).expect("unit");
        let hit = index.lookup("a", &CacheKey([1; 32]), &q, 0.95, 10).expect("a hit in a/1");
        assert_eq!(hit.key, CacheKey([1; 32]));
        assert!(hit.similarity > 0.99);
        assert_eq!(index.lookup("a", &CacheKey([2; 32]), &q, 0.5, 10), None, "another partition");
        assert_eq!(index.lookup("b", &CacheKey([1; 32]), &q, 0.5, 10), None, "another project, same partition");
        let far = normalised(&[0.0, 1.0, 0.0]).expect("unit");
        assert_eq!(index.lookup("a", &CacheKey([1; 32]), &far, 0.5, 10), None, "below the threshold");
        assert_eq!(index.lookup("a", &CacheKey([1; 32]), &q, 0.95, 1000), None, "expired");
        assert_eq!(index.prune(1000), 1);
        assert_eq!((index.len(), index.bytes()), (0, 0));
    }

    #[test]
    fn a_project_holds_at_most_its_cap_and_bytes_stay_bounded() {
        let index = SemanticIndex::new(10, 1 << 20);
        for i in 0..50u8 {
            let v = [1.0, f32::from(i), 0.5];
            assert!(index.insert(&row("a", 1, i, &v, i64::from(i), 10_000), 0));
            assert!(index.project_len("a") <= 10);
        }
        assert!(index.insert(&row("b", 1, 0, &[1.0, 0.0, 0.0], 0, 10_000), 0));
        assert_eq!((index.project_len("a"), index.project_len("b")), (10, 1));
        assert!(index.contains("a", &CacheKey([49; 32])) && !index.contains("a", &CacheKey([0; 32])), "oldest went");

        let one = 100 + Hnsw::bytes_per_node(3) + ENTRY_OVERHEAD;
        let index = SemanticIndex::new(1000, 5 * one);
        for i in 0..40u8 {
            index.insert(&row("a", i % 3, i, &[1.0, f32::from(i), 1.0], 0, 1000 + i64::from(i)), 0);
            assert!(index.bytes() <= 5 * one);
        }
        assert_eq!(index.len(), 5);
    }

    #[test]
    fn a_row_seen_twice_is_kept_once_and_removals_rebuild() {
        let index = SemanticIndex::new(10_000, 64 << 20);
        let r = row("a", 1, 7, &[0.3, 0.4, 0.5], 5, 10_000);
        assert!(index.insert(&r, 0));
        assert!(!index.insert(&r, 0), "the same row again");
        assert_eq!(index.len(), 1);
        // Many entries expiring make the graph rebuild; the survivors are still found.
        for i in 0..200u32 {
            let mut r = row("a", 1, 0, &[1.0, i as f32, (i % 7) as f32], 0, if i % 4 == 0 { 10_000 } else { 50 });
            r.key = CacheKey([(i % 251) as u8; 32]);
            r.key.0[1] = (i / 251) as u8;
            r.key.0[2] = 0xee;
            index.insert(&r, 0);
        }
        index.prune(100);
        assert_eq!(index.len(), 51);
        for i in (0..200u32).step_by(4) {
            let q = normalised(&[1.0, i as f32, (i % 7) as f32]).expect("unit");
            let hit = index.lookup("a", &CacheKey([1; 32]), &q, 0.999, 100).expect("a survivor is found");
            assert_eq!(hit.key.0[0], (i % 251) as u8);
        }
    }
}
