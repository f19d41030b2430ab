//! A compact HNSW graph (Malkov & Yashunin, "Efficient and robust approximate nearest
//! neighbor search using Hierarchical Navigable Small World graphs") over unit
//! vectors, scored by cosine similarity (the dot product of unit vectors).
//!
//! Why our own: the semantic cache needs incremental inserts and removals (entries
//! expire and are evicted), bounded memory and no build-time downloads; a graph of a
//! few hundred lines does all three, and its recall is tested against brute force
//! below. Removal marks a node deleted (it still routes searches, it is never
//! returned); the owner rebuilds the graph once deleted nodes outnumber live ones
//! ([`Hnsw::rebuilt`]).

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashSet};

/// Links per node above layer 0 (layer 0 keeps twice as many).
pub const M: usize = 16;
/// Candidates kept while inserting.
pub const EF_CONSTRUCTION: usize = 64;
/// Candidates kept while searching.
pub const EF_SEARCH: usize = 48;
/// The highest layer a node may get (2^-(4·16) odds: never reached in practice).
const MAX_LEVEL: usize = 16;

/// A similarity that orders totally (NaN sorts low; vectors are finite anyway).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Score(f32);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

struct Node {
    vector: Box<[f32]>,
    /// Neighbours per layer, layer 0 first.
    links: Vec<Vec<u32>>,
    deleted: bool,
    payload: u64,
}

/// One graph: every vector has the same length.
pub struct Hnsw {
    dims: usize,
    nodes: Vec<Node>,
    entry: Option<u32>,
    top: usize,
    live: usize,
    rng: u64,
}

/// The dot product: the cosine similarity of unit vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `v` scaled to length 1, or `None` if it has no direction or is not finite.
pub fn normalised(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm.is_finite() && norm > 0.0).then(|| v.iter().map(|x| x / norm).collect())
}

impl Hnsw {
    pub fn new(dims: usize) -> Self {
        Self { dims, nodes: Vec::new(), entry: None, top: 0, live: 0, rng: 0x9e37_79b9_7f4a_7c15 ^ dims as u64 }
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Nodes not deleted.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Nodes deleted but still routing.
    pub fn deleted(&self) -> usize {
        self.nodes.len() - self.live
    }

    /// Bytes this graph holds per node, roughly (vector and links), for memory bounds.
    pub fn bytes_per_node(dims: usize) -> usize {
        dims * 4 + 3 * M * 4 + 64
    }

    /// A level drawn from the geometric distribution with ratio 1/M (deterministic:
    /// splitmix64 seeded by the graph).
    fn level(&mut self) -> usize {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let uniform = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-uniform.ln() / (M as f64).ln()) as usize).min(MAX_LEVEL)
    }

    fn score(&self, query: &[f32], node: u32) -> Score {
        Score(dot(query, &self.nodes[node as usize].vector))
    }

    /// The `ef` nodes closest to `query` on `layer` reachable from `entries`, best
    /// first (deleted ones included: they route).
    fn search_layer(&self, query: &[f32], entries: &[u32], ef: usize, layer: usize) -> Vec<(Score, u32)> {
        let mut visited: HashSet<u32> = entries.iter().copied().collect();
        let mut candidates: BinaryHeap<(Score, u32)> = BinaryHeap::new();
        let mut best: BinaryHeap<Reverse<(Score, u32)>> = BinaryHeap::new();
        for &e in entries {
            let s = self.score(query, e);
            candidates.push((s, e));
            best.push(Reverse((s, e)));
        }
        while best.len() > ef {
            best.pop();
        }
        while let Some((s, node)) = candidates.pop() {
            let worst = best.peek().map(|Reverse((w, _))| *w);
            if best.len() >= ef && worst.is_some_and(|w| s < w) {
                break;
            }
            let Some(links) = self.nodes[node as usize].links.get(layer) else { continue };
            for &next in links {
                if !visited.insert(next) {
                    continue;
                }
                let sn = self.score(query, next);
                let worst = best.peek().map(|Reverse((w, _))| *w);
                if best.len() < ef || worst.is_some_and(|w| sn > w) {
                    candidates.push((sn, next));
                    best.push(Reverse((sn, next)));
                    if best.len() > ef {
                        best.pop();
                    }
                }
            }
        }
        let mut out: Vec<(Score, u32)> = best.into_iter().map(|Reverse(x)| x).collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out
    }

    /// The greedy descent from the top layer down to `down_to + 1`.
    fn descend(&self, query: &[f32], down_to: usize) -> Option<u32> {
        let mut at = self.entry?;
        for layer in (down_to + 1..=self.top).rev() {
            if let Some(&(_, best)) = self.search_layer(query, &[at], 1, layer).first() {
                at = best;
            }
        }
        Some(at)
    }

    /// Adds a unit vector of [`dims`](Self::dims) floats with its payload; returns its
    /// node id. A vector of another length is refused (`None`).
    pub fn insert(&mut self, vector: Vec<f32>, payload: u64) -> Option<u32> {
        if vector.len() != self.dims {
            return None;
        }
        let id = u32::try_from(self.nodes.len()).ok()?;
        let level = self.level();
        let links = (0..=level).map(|l| Vec::with_capacity(if l == 0 { 2 * M } else { M })).collect();
        self.nodes.push(Node { vector: vector.into_boxed_slice(), links, deleted: false, payload });
        self.live += 1;
        let Some(start) = self.descend_for_insert(id, level) else {
            self.entry = Some(id);
            self.top = level;
            return Some(id);
        };
        let query = self.nodes[id as usize].vector.clone();
        let mut entries = vec![start];
        for layer in (0..=level.min(self.top)).rev() {
            let found = self.search_layer(&query, &entries, EF_CONSTRUCTION, layer);
            let cap = if layer == 0 { 2 * M } else { M };
            let chosen = self.select(found.iter().copied().filter(|(_, n)| *n != id), cap);
            self.nodes[id as usize].links[layer] = chosen.clone();
            for n in chosen {
                self.link(n, id, layer, cap);
            }
            entries = found.into_iter().map(|(_, n)| n).collect();
        }
        if level > self.top {
            self.top = level;
            self.entry = Some(id);
        }
        Some(id)
    }

    fn descend_for_insert(&self, id: u32, level: usize) -> Option<u32> {
        self.entry?;
        let query = &self.nodes[id as usize].vector;
        self.descend(query, level)
    }

    /// Adds `to` to `from`'s links on `layer`, keeping the `cap` closest.
    fn link(&mut self, from: u32, to: u32, layer: usize, cap: usize) {
        let links = &self.nodes[from as usize].links[layer];
        if links.len() < cap {
            self.nodes[from as usize].links[layer].push(to);
            return;
        }
        let base = self.nodes[from as usize].vector.clone();
        let mut scored: Vec<(Score, u32)> =
            links.iter().chain(std::iter::once(&to)).map(|&n| (self.score(&base, n), n)).collect();
        scored.sort_unstable_by(|a, b| b.cmp(a));
        self.nodes[from as usize].links[layer] = self.select(scored.into_iter(), cap);
    }

    /// The paper's neighbour heuristic: of `candidates` (best first), keep one only if
    /// it is closer to the base than to every neighbour kept so far, so links point in
    /// different directions and clusters stay connected; up to `cap`.
    fn select(&self, candidates: impl Iterator<Item = (Score, u32)>, cap: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(cap);
        for (to_base, c) in candidates {
            if kept.len() >= cap {
                break;
            }
            let vector = &self.nodes[c as usize].vector;
            if kept.iter().all(|&k| self.score(vector, k) < to_base) {
                kept.push(c);
            }
        }
        kept
    }

    /// Marks a node deleted: never returned again, still routing.
    pub fn delete(&mut self, node: u32) {
        if let Some(n) = self.nodes.get_mut(node as usize)
            && !n.deleted
        {
            n.deleted = true;
            self.live -= 1;
        }
    }

    /// Up to `k` live nodes closest to `query`: (similarity, payload), best first.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<(f32, u64)> {
        if query.len() != self.dims || self.live == 0 {
            return Vec::new();
        }
        let Some(start) = self.descend(query, 0) else { return Vec::new() };
        // Deleted nodes take room among the candidates: widen by how many there are
        // (bounded, the owner rebuilds before they outnumber the live ones).
        let ef = EF_SEARCH.max(k).saturating_add(self.deleted().min(EF_SEARCH));
        self.search_layer(query, &[start], ef, 0)
            .into_iter()
            .filter(|(_, n)| !self.nodes[*n as usize].deleted)
            .take(k)
            .map(|(s, n)| (s.0, self.nodes[n as usize].payload))
            .collect()
    }

    /// A new graph of the live nodes only, and (payload, new node id) for each.
    pub fn rebuilt(&self) -> (Hnsw, Vec<(u64, u32)>) {
        let mut graph = Hnsw::new(self.dims);
        let mut moved = Vec::with_capacity(self.live);
        for node in self.nodes.iter().filter(|n| !n.deleted) {
            if let Some(id) = graph.insert(node.vector.to_vec(), node.payload) {
                moved.push((node.payload, id));
            }
        }
        (graph, moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic cloud of unit vectors in clusters (texts about a few topics
    /// look like this), so neighbours are not trivially far apart.
    fn cloud(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let centres: Vec<Vec<f32>> = (0..20).map(|_| (0..dims).map(|_| next()).collect()).collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % centres.len()];
                let v: Vec<f32> = c.iter().map(|x| x + 0.6 * next()).collect();
                normalised(&v).expect("non-zero")
            })
            .collect()
    }

    /// Queries near stored points (a paraphrase is near what it rephrases).
    fn near(points: &[Vec<f32>], n: usize, seed: u64) -> Vec<Vec<f32>> {
        let noise = cloud(n, points[0].len(), seed);
        (0..n)
            .map(|i| {
                let p = &points[(i * 7919) % points.len()];
                let v: Vec<f32> = p.iter().zip(&noise[i]).map(|(a, b)| a + 0.5 * b).collect();
                normalised(&v).expect("non-zero")
            })
            .collect()
    }

    fn brute_force(points: &[Vec<f32>], live: &[bool], q: &[f32]) -> Option<u64> {
        points
            .iter()
            .enumerate()
            .filter(|(i, _)| live[*i])
            .max_by(|a, b| dot(q, a.1).total_cmp(&dot(q, b.1)))
            .map(|(i, _)| i as u64)
    }

    #[test]
    fn recall_against_brute_force_is_high() {
        let dims = 64;
        let points = cloud(3000, dims, 7);
        let mut graph = Hnsw::new(dims);
        for (i, p) in points.iter().enumerate() {
            graph.insert(p.clone(), i as u64).expect("inserted");
        }
        let live = vec![true; points.len()];
        let queries = near(&points, 300, 99);
        let found = queries
            .iter()
            .filter(|q| graph.search(q, 1).first().map(|r| r.1) == brute_force(&points, &live, q))
            .count();
        let recall = found as f64 / queries.len() as f64;
        eprintln!("recall@1 over 3000 vectors of 64 dimensions: {recall}");
        assert!(recall >= 0.95, "recall@1 {recall}");
        // Every stored vector finds itself.
        for (i, p) in points.iter().enumerate().step_by(37) {
            assert_eq!(graph.search(p, 1)[0].1, i as u64);
        }
    }

    #[test]
    fn deleted_nodes_are_never_returned_and_a_rebuild_keeps_recall() {
        let dims = 32;
        let points = cloud(1500, dims, 3);
        let mut graph = Hnsw::new(dims);
        let ids: Vec<u32> =
            points.iter().enumerate().map(|(i, p)| graph.insert(p.clone(), i as u64).expect("in")).collect();
        let mut live = vec![true; points.len()];
        for i in (0..points.len()).filter(|i| i % 3 != 0) {
            graph.delete(ids[i]);
            live[i] = false;
        }
        assert_eq!(graph.live(), 500);
        let queries = near(&points, 200, 11);
        let check = |g: &Hnsw| {
            let mut hits = 0;
            for q in &queries {
                let got = g.search(q, 3);
                assert!(got.iter().all(|(_, p)| live[*p as usize]), "a deleted node came back");
                hits += usize::from(got.first().map(|r| r.1) == brute_force(&points, &live, q));
            }
            hits as f64 / queries.len() as f64
        };
        assert!(check(&graph) >= 0.9, "with tombstones");
        let (rebuilt, moved) = graph.rebuilt();
        assert_eq!((rebuilt.live(), rebuilt.deleted(), moved.len()), (500, 0, 500));
        assert!(check(&rebuilt) >= 0.95, "rebuilt");
    }

    #[test]
    fn wrong_lengths_and_empty_graphs() {
        let mut graph = Hnsw::new(4);
        assert!(graph.search(&[1.0, 0.0, 0.0, 0.0], 1).is_empty());
        assert_eq!(graph.insert(vec![1.0, 0.0], 1), None);
        graph.insert(vec![1.0, 0.0, 0.0, 0.0], 1).expect("in");
        assert!(graph.search(&[1.0, 0.0], 1).is_empty());
        assert_eq!(graph.search(&[1.0, 0.0, 0.0, 0.0], 5), vec![(1.0, 1)]);
        assert_eq!(normalised(&[0.0, 0.0]), None);
        assert_eq!(normalised(&[3.0, 4.0]), Some(vec![0.6, 0.8]));
    }
}
