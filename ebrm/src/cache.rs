//! The QE cache: query-entity scores repeat across items and requests ("brand: nike" against
//! "nike running shoes" is the same wherever Nike appears), so each is computed once.
//!
//! What is cached is the encoder's raw cosine, not the calibrated score: calibration is cheap
//! and may change without invalidating anything. Keys hold the model id, so two encoders never
//! share entries.

use crate::entities::EntityKind;
use crate::text::normalize;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;

/// What a QE score depends on: the model, the normalised query, the entity kind and the
/// normalised entity value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QeKey {
    pub model: String,
    pub query: String,
    pub kind: EntityKind,
    pub value: String,
}

impl QeKey {
    /// Normalises query and value (lowercase, whitespace collapsed).
    pub fn new(model: &str, query: &str, kind: EntityKind, value: &str) -> QeKey {
        QeKey { model: model.to_string(), query: normalize(query), kind, value: normalize(value) }
    }

    /// The bytes this key accounts for: its strings, held twice by the LRU (map and list),
    /// plus a fixed overhead per entry.
    fn cost(&self) -> usize {
        2 * (self.model.len() + self.query.len() + self.value.len()) + ENTRY_OVERHEAD
    }
}

/// Fixed bytes charged per entry for the map slot, the list node and the allocations.
const ENTRY_OVERHEAD: usize = 128;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub entries: usize,
    pub bytes: usize,
    pub max_entries: usize,
    pub max_bytes: usize,
}

/// A store of QE scores. The in-process [`LruQeCache`] is the default; a shared one (Redis)
/// implements the same trait, and may override the batch methods with one round trip.
pub trait QeCache: Send + Sync {
    /// The cached score, counting a hit or a miss.
    fn get(&self, key: &QeKey) -> Option<f32>;
    fn put(&self, key: QeKey, score: f32);
    fn stats(&self) -> CacheStats;
    /// Drops every entry; counters stay.
    fn clear(&self);

    fn get_many(&self, keys: &[QeKey]) -> Vec<Option<f32>> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    fn put_many(&self, entries: Vec<(QeKey, f32)>) {
        entries.into_iter().for_each(|(k, s)| self.put(k, s));
    }
}

/// A least-recently-used cache bounded by entries and by (estimated) bytes, whichever binds
/// first.
pub struct LruQeCache {
    inner: Mutex<Lru>,
}

const NIL: usize = usize::MAX;

struct Node {
    key: QeKey,
    score: f32,
    prev: usize,
    next: usize,
}

/// A doubly linked list over a slab (most recent at `head`) plus a map into it.
struct Lru {
    map: HashMap<QeKey, usize>,
    nodes: Vec<Node>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
    stats: CacheStats,
}

impl LruQeCache {
    /// A cache of at most `max_entries` entries and about `max_bytes` bytes. An entry larger
    /// than `max_bytes` by itself is not stored.
    pub fn new(max_entries: usize, max_bytes: usize) -> LruQeCache {
        LruQeCache {
            inner: Mutex::new(Lru {
                map: HashMap::new(),
                nodes: Vec::new(),
                free: Vec::new(),
                head: NIL,
                tail: NIL,
                stats: CacheStats { max_entries, max_bytes, ..CacheStats::default() },
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // A panic elsewhere while holding the lock leaves a consistent list (every mutation
        // completes before returning), so the cache stays usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for LruQeCache {
    /// 100,000 entries or 64 MiB.
    fn default() -> Self {
        LruQeCache::new(100_000, 64 << 20)
    }
}

impl Lru {
    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        if prev == NIL {
            self.head = next
        } else {
            self.nodes[prev].next = next
        }
        if next == NIL { self.tail = prev } else { self.nodes[next].prev = prev }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn evict_tail(&mut self) {
        let i = self.tail;
        if i == NIL {
            return;
        }
        self.unlink(i);
        let key = std::mem::replace(&mut self.nodes[i].key, QeKey::new("", "", EntityKind::Other, ""));
        self.stats.bytes -= key.cost();
        self.stats.entries -= 1;
        self.stats.evictions += 1;
        self.map.remove(&key);
        self.free.push(i);
    }
}

impl QeCache for LruQeCache {
    fn get(&self, key: &QeKey) -> Option<f32> {
        let mut lru = self.lock();
        match lru.map.get(key).copied() {
            Some(i) => {
                lru.stats.hits += 1;
                lru.unlink(i);
                lru.push_front(i);
                Some(lru.nodes[i].score)
            }
            None => {
                lru.stats.misses += 1;
                None
            }
        }
    }

    fn put(&self, key: QeKey, score: f32) {
        let mut lru = self.lock();
        let cost = key.cost();
        if lru.stats.max_entries == 0 || cost > lru.stats.max_bytes {
            return;
        }
        if let Some(&i) = lru.map.get(&key) {
            lru.nodes[i].score = score;
            lru.unlink(i);
            lru.push_front(i);
            return;
        }
        while lru.stats.entries >= lru.stats.max_entries || lru.stats.bytes + cost > lru.stats.max_bytes {
            lru.evict_tail();
        }
        let node = Node { key: key.clone(), score, prev: NIL, next: NIL };
        let i = match lru.free.pop() {
            Some(i) => {
                lru.nodes[i] = node;
                i
            }
            None => {
                lru.nodes.push(node);
                lru.nodes.len() - 1
            }
        };
        lru.push_front(i);
        lru.map.insert(key, i);
        lru.stats.entries += 1;
        lru.stats.bytes += cost;
    }

    fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    fn clear(&self) {
        let mut lru = self.lock();
        let stats = lru.stats;
        *lru = Lru {
            map: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            stats: CacheStats { entries: 0, bytes: 0, ..stats },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: &str) -> QeKey {
        QeKey::new("m", "nike shoes", EntityKind::Brand, v)
    }

    #[test]
    fn keys_are_normalised() {
        assert_eq!(
            QeKey::new("m", " Nike  SHOES", EntityKind::Brand, "NIKE"),
            QeKey::new("m", "nike shoes", EntityKind::Brand, "nike")
        );
        assert_ne!(key("nike"), QeKey::new("other", "nike shoes", EntityKind::Brand, "nike"));
    }

    #[test]
    fn counts_hits_and_misses() {
        let c = LruQeCache::new(10, 1 << 20);
        assert_eq!(c.get(&key("nike")), None);
        c.put(key("nike"), 0.9);
        assert_eq!(c.get(&key("NIKE")), Some(0.9));
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
        assert_eq!(c.get_many(&[key("nike"), key("puma")]), [Some(0.9), None]);
    }

    #[test]
    fn evicts_least_recently_used_by_entries() {
        let c = LruQeCache::new(2, 1 << 20);
        c.put(key("a"), 0.1);
        c.put(key("b"), 0.2);
        c.get(&key("a"));
        c.put(key("c"), 0.3);
        assert_eq!(c.get(&key("b")), None, "b was least recently used");
        assert_eq!(c.get(&key("a")), Some(0.1));
        assert_eq!(c.get(&key("c")), Some(0.3));
        assert_eq!(c.stats().evictions, 1);
    }

    #[test]
    fn bounded_by_bytes() {
        let one = key("a").cost();
        let c = LruQeCache::new(1000, 3 * one);
        for v in ["a", "b", "c", "d", "e"] {
            c.put(key(v), 0.5);
        }
        let s = c.stats();
        assert_eq!(s.entries, 3);
        assert!(s.bytes <= 3 * one);
        c.put(QeKey::new("m", &"q".repeat(10 * one), EntityKind::Brand, "x"), 1.0);
        assert_eq!(c.stats().entries, 3, "an entry larger than the whole cache is not stored");
        c.clear();
        assert_eq!((c.stats().entries, c.stats().bytes), (0, 0));
        assert_eq!(LruQeCache::new(0, 1 << 20).stats().entries, 0);
    }

    #[test]
    fn updates_in_place() {
        let c = LruQeCache::new(2, 1 << 20);
        c.put(key("a"), 0.1);
        c.put(key("a"), 0.7);
        assert_eq!((c.get(&key("a")), c.stats().entries), (Some(0.7), 1));
    }

    #[test]
    fn many_random_operations_keep_the_bounds() {
        let c = LruQeCache::new(50, 50 * 200);
        let mut x: u64 = 7;
        for _ in 0..5000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let k = key(&format!("v{}", (x >> 33) % 200));
            if x.is_multiple_of(3) {
                c.put(k, 0.5)
            } else {
                c.get(&k);
            }
            let s = c.stats();
            assert!(s.entries <= 50 && s.bytes <= 50 * 200);
        }
    }
}
