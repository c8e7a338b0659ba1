//! The QE cache replicas share: Redis behind the in-process LRU (a near cache).
//!
//! A QE pair scored by any replica is found by the others: `get_many` asks the near cache,
//! then Redis for what it lacks in one `MGET`; `put_many` fills the near cache and sends one
//! pipeline of `SET key score EX ttl`. Redis is an optimization, never a dependency: every
//! Redis call has a short timeout, and any error (refused, timed out, wrong password, a value
//! that is not a number) counts as a miss, so the model computes the score and the answer is
//! the same; after an error Redis is left alone for [`RETRY_AFTER`], so an outage costs
//! little time per request. Lives in the server, not in tandem-ebrm, which also builds for
//! the browser.
//!
//! Keys are `qe:{model}:{kind}:{query}:{value}` with `%` and `:` percent-encoded in each
//! part, so that no two keys collide; values are the raw score as text.

use anyhow::{Context, Result};
use redis::{Client, Connection, RedisResult};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tandem_ebrm::{CacheStats, LruQeCache, QeCache, QeKey};

/// How long Redis is skipped after an error.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Idle connections kept for reuse; concurrent requests beyond this open (and drop) more.
const POOL: usize = 8;

/// Counters of the Redis tier, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RedisStats {
    /// Keys the near cache lacked and Redis had.
    pub hits: u64,
    /// Keys neither had (the model computed them), or asked while Redis was skipped.
    pub misses: u64,
    /// Redis calls that failed (connect, timeout, auth, protocol, a bad value).
    pub errors: u64,
}

pub struct SharedQeCache {
    near: LruQeCache,
    redis: Redis,
}

struct Redis {
    client: Client,
    timeout: Duration,
    ttl_secs: u64,
    idle: Mutex<Vec<Connection>>,
    /// While set and in the future, Redis is not asked.
    skip_until: Mutex<Option<Instant>>,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
}

impl SharedQeCache {
    /// `url`: `redis://[:password@]host:port[/db]`. Checks the URL, not the server: a Redis
    /// that is down at start-up is an outage like any other.
    pub fn new(near: LruQeCache, url: &str, timeout: Duration, ttl_secs: u64) -> Result<SharedQeCache> {
        let client = Client::open(url).with_context(|| format!("relevance.qe_cache: {url:?} is not a Redis URL"))?;
        Ok(SharedQeCache {
            near,
            redis: Redis {
                client,
                timeout,
                ttl_secs,
                idle: Mutex::new(Vec::new()),
                skip_until: Mutex::new(None),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            },
        })
    }

    pub fn redis_stats(&self) -> RedisStats {
        let r = &self.redis;
        RedisStats {
            hits: r.hits.load(Ordering::Relaxed),
            misses: r.misses.load(Ordering::Relaxed),
            errors: r.errors.load(Ordering::Relaxed),
        }
    }
}

impl QeCache for SharedQeCache {
    fn get(&self, key: &QeKey) -> Option<f32> {
        self.get_many(std::slice::from_ref(key)).pop().flatten()
    }

    fn put(&self, key: QeKey, score: f32) {
        self.put_many(vec![(key, score)]);
    }

    /// The near cache's counters, with a Redis hit counted as a hit: `misses` is what the
    /// model had to compute.
    fn stats(&self) -> CacheStats {
        let mut stats = self.near.stats();
        let remote_hits = self.redis.hits.load(Ordering::Relaxed);
        stats.hits += remote_hits;
        stats.misses = stats.misses.saturating_sub(remote_hits);
        stats
    }

    /// Empties the near cache only: the Redis entries belong to every replica.
    fn clear(&self) {
        self.near.clear();
    }

    fn get_many(&self, keys: &[QeKey]) -> Vec<Option<f32>> {
        let mut scores = self.near.get_many(keys);
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| scores[i].is_none()).collect();
        if missing.is_empty() {
            return scores;
        }
        let names: Vec<String> = missing.iter().map(|&i| redis_key(&keys[i])).collect();
        let found = self.redis.call(|c| redis::cmd("MGET").arg(&names).query::<Vec<Option<String>>>(c));
        let Some(found) = found.filter(|f| f.len() == names.len()) else {
            self.redis.misses.fetch_add(missing.len() as u64, Ordering::Relaxed);
            return scores;
        };
        for (&i, value) in missing.iter().zip(found) {
            match value.as_deref().map(str::parse::<f32>) {
                Some(Ok(score)) if score.is_finite() => {
                    self.redis.hits.fetch_add(1, Ordering::Relaxed);
                    self.near.put(keys[i].clone(), score);
                    scores[i] = Some(score);
                }
                // Not written by tandem: recompute (and overwrite) rather than trust it.
                Some(_) => {
                    self.redis.errors.fetch_add(1, Ordering::Relaxed);
                    self.redis.misses.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.redis.misses.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        scores
    }

    fn put_many(&self, entries: Vec<(QeKey, f32)>) {
        if entries.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (key, score) in &entries {
            // Display of an f32 is the shortest text that parses back to the same value.
            pipe.cmd("SET").arg(redis_key(key)).arg(score.to_string()).arg("EX").arg(self.redis.ttl_secs).ignore();
        }
        self.redis.call(|c| pipe.query::<()>(c));
        for (key, score) in entries {
            self.near.put(key, score);
        }
    }
}

impl Redis {
    /// Runs `f` on a pooled connection; `None` (and a counted error) on any failure, or at
    /// once while Redis is being skipped after one.
    fn call<T>(&self, f: impl FnOnce(&mut Connection) -> RedisResult<T>) -> Option<T> {
        if self.skip_until.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let pooled = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let result = match pooled {
            Some(c) => Ok(c),
            None => self.connect(),
        }
        .and_then(|mut c| f(&mut c).map(|v| (c, v)));
        let mut skip = self.skip_until.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok((c, value)) => {
                if skip.take().is_some() {
                    eprintln!("tandem serve: QE cache: Redis answers again");
                }
                drop(skip);
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < POOL {
                    idle.push(c);
                }
                Some(value)
            }
            // The connection is dropped: after a timeout its reply may still be on the way.
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                // Said once per outage, not once per request.
                if skip.is_none() {
                    eprintln!(
                        "tandem serve: QE cache: Redis failed ({e}); computing scores, retrying in {RETRY_AFTER:?}"
                    );
                }
                *skip = Some(Instant::now() + RETRY_AFTER);
                None
            }
        }
    }

    fn connect(&self) -> RedisResult<Connection> {
        let c = self.client.get_connection_with_timeout(self.timeout)?;
        c.set_read_timeout(Some(self.timeout))?;
        c.set_write_timeout(Some(self.timeout))?;
        Ok(c)
    }
}

/// `qe:{model}:{kind}:{query}:{value}`, each part escaped so that `:` only separates.
fn redis_key(key: &QeKey) -> String {
    let mut out = String::from("qe");
    for part in [key.model.as_str(), key.kind.name(), &key.query, &key.value] {
        out.push(':');
        for ch in part.chars() {
            match ch {
                '%' => out.push_str("%25"),
                ':' => out.push_str("%3A"),
                _ => out.push(ch),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_ebrm::EntityKind;

    #[test]
    fn keys_are_unambiguous() {
        let key = |q: &str, v: &str| redis_key(&QeKey::new("minilm", q, EntityKind::Brand, v));
        assert_eq!(key("nike shoes", "nike"), "qe:minilm:brand:nike shoes:nike");
        assert_ne!(key("a:b", "c"), key("a", "b:c"));
        assert_eq!(key("50%:off", "x"), "qe:minilm:brand:50%25%3Aoff:x");
    }

    #[test]
    fn an_unreachable_redis_costs_misses_not_answers() {
        // Port 1 on loopback: connection refused at once.
        let cache =
            SharedQeCache::new(LruQeCache::new(10, 1 << 20), "redis://127.0.0.1:1", Duration::from_millis(50), 60)
                .unwrap();
        let k = QeKey::new("m", "q", EntityKind::Brand, "v");
        assert_eq!(cache.get(&k), None);
        cache.put(k.clone(), 0.25);
        assert_eq!(cache.get(&k), Some(0.25), "the near cache still serves");
        let r = cache.redis_stats();
        assert_eq!(r.errors, 1, "one failure, then Redis is skipped: {r:?}");
        assert_eq!((r.hits, r.misses), (0, 1));
        assert!(SharedQeCache::new(LruQeCache::new(1, 1), "http://x", Duration::from_millis(5), 1).is_err());
    }
}
