//! The wasmtime side shared by all plugins: engines, linkers, the epoch
//! ticker, the compiled-component cache, and the state each store carries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker, WasmStr};
use wasmtime::{Config, Engine, ResourceLimiter, StoreContextMut, StoreLimits, StoreLimitsBuilder};

use crate::config::{Limits, Tables};
use crate::report::LogLine;

/// The current world, tandem:rules@0.2.0: `check` and `check-batch`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../bindings/rules/wit",
        world: "rule-plugin",
    });
}

/// The first world, tandem:rules@0.1.x: `check` only. Its records are the
/// same as 0.2.0's, so they share 0.2.0's Rust types.
pub(crate) mod bindings_v0_1 {
    wasmtime::component::bindgen!({
        path: "../bindings/rules/wit/0.1.0",
        world: "rule-plugin",
        with: { "tandem:rules/types": super::bindings::tandem::rules::types },
    });
}

/// The host interface under each world version this host serves; a guest of
/// 0.x.y finds the one of 0.x.0 (the linker matches semver-compatible names).
const HOST_INTERFACES: [&str; 2] = ["tandem:rules/host@0.1.0", "tandem:rules/host@0.2.0"];

use bindings::tandem::rules::host::Level;

/// Log messages kept per call; more are dropped and counted.
pub const MAX_LOGS_PER_CALL: usize = 8;
/// Longer log messages are cut to this many bytes (plus an ellipsis).
pub const MAX_LOG_BYTES: usize = 512;
/// Log messages accepted per plugin per second, across all its instances.
const MAX_LOGS_PER_SECOND: u32 = 100;
/// How often the epoch advances; deadlines are whole ticks.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Compiled components kept around beyond the ones in use, so that flipping a
/// plugin file back and forth does not recompile every time.
const CACHE_ENTRIES: usize = 64;

/// Engines and linkers for rule plugins, plus a thread that advances the
/// engines' epochs so that deadlines fire. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    /// Fuel accounting changes the generated code, so plugins with and
    /// without fuel need distinct engines.
    fueled: Flavor,
    unfueled: Flavor,
    cache: Mutex<HashMap<(bool, [u8; 32]), Component>>,
    stop: Arc<AtomicBool>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

pub(crate) struct Flavor {
    pub engine: Engine,
    pub linker: Linker<GuestState>,
}

impl Host {
    pub fn new() -> wasmtime::Result<Host> {
        let fueled = Flavor::new(true)?;
        let unfueled = Flavor::new(false)?;
        let stop = Arc::new(AtomicBool::new(false));
        let engines = [fueled.engine.clone(), unfueled.engine.clone()];
        let flag = stop.clone();
        let ticker = std::thread::Builder::new()
            .name("tandem-rules-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engines.iter().for_each(Engine::increment_epoch);
                }
            })
            .map_err(|e| wasmtime::format_err!("cannot start the epoch thread: {e}"))?;
        Ok(Host {
            inner: Arc::new(HostInner {
                fueled,
                unfueled,
                cache: Mutex::new(HashMap::new()),
                stop,
                ticker: Mutex::new(Some(ticker)),
            }),
        })
    }

    pub(crate) fn flavor(&self, fuel: bool) -> &Flavor {
        if fuel { &self.inner.fueled } else { &self.inner.unfueled }
    }

    /// Epoch ticks that cover `deadline`: one more than the quotient, since
    /// the current tick may be about to end.
    pub(crate) fn deadline_ticks(deadline: Duration) -> u64 {
        (deadline.as_nanos() / EPOCH_TICK.as_nanos()) as u64 + 1
    }

    /// Compiles `bytes`, or returns the component compiled earlier from the
    /// same bytes (by SHA-256) for the same engine.
    pub(crate) fn compile(&self, fuel: bool, digest: [u8; 32], bytes: &[u8]) -> wasmtime::Result<Component> {
        let key = (fuel, digest);
        if let Some(c) = self.inner.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(c.clone());
        }
        // Compile without holding the lock: it can take a while, and two
        // threads compiling the same bytes at once only waste a little work.
        let component = Component::new(&self.flavor(fuel).engine, bytes)?;
        let mut cache = self.inner.cache.lock().unwrap_or_else(PoisonError::into_inner);
        // Crude but bounded: the cache only saves recompiles, and plugins in
        // use hold their own compiled component.
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, component.clone());
        Ok(component)
    }
}

impl Drop for HostInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = t.join();
        }
    }
}

impl Flavor {
    fn new(fuel: bool) -> wasmtime::Result<Flavor> {
        let mut config = Config::new();
        config.consume_fuel(fuel);
        config.epoch_interruption(true);
        // Deep recursion traps well before it could hurt the host thread.
        config.max_wasm_stack(512 << 10);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // Registered by hand rather than with the bindings' `add_to_linker`:
        // `lookup` then reads its arguments in place in guest memory instead
        // of copying each into a new String, which matters on the batch path.
        for name in HOST_INTERFACES {
            let mut host = linker.instance(name)?;
            // The message stays in guest memory: a dropped one is never read,
            // and a kept one is copied only up to its cut length, so a guest
            // logging huge lines costs the host at most MAX_LOG_BYTES a line.
            host.func_wrap("log", |mut store: StoreContextMut<'_, GuestState>, (level, message): (Level, WasmStr)| {
                if !store.data_mut().admit_log() {
                    return Ok(());
                }
                let kept = cut(&message.to_str(&store)?, MAX_LOG_BYTES);
                store.data_mut().push_log(level, kept);
                Ok(())
            })?;
            host.func_wrap("lookup", |store: StoreContextMut<'_, GuestState>, (table, key): (WasmStr, WasmStr)| {
                let (table, key) = (table.to_str(&store)?, key.to_str(&store)?);
                Ok((store.data().lookup(&table, &key),))
            })?;
        }
        Ok(Flavor { engine, linker })
    }
}

/// Shared by all instances of one plugin: its log budget for the current second.
#[derive(Debug)]
pub(crate) struct LogRate {
    window: Mutex<(Instant, u32)>,
}

impl LogRate {
    pub fn new() -> Self {
        LogRate { window: Mutex::new((Instant::now(), 0)) }
    }

    fn admit(&self) -> bool {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if w.0.elapsed() >= Duration::from_secs(1) {
            *w = (Instant::now(), 0);
        }
        w.1 += 1;
        w.1 <= MAX_LOGS_PER_SECOND
    }
}

/// The data of one plugin store: its limits, its tables, and what the
/// current call logged.
pub(crate) struct GuestState {
    pub limiter: Guard,
    tables: Tables,
    rate: Arc<LogRate>,
    pub logs: Vec<LogLine>,
    pub logs_dropped: u32,
}

impl GuestState {
    pub fn new(limits: &Limits, tables: Tables, rate: Arc<LogRate>) -> Self {
        let inner = StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .table_elements(limits.max_table_elements)
            .instances(limits.max_instances)
            .tables(limits.max_tables)
            .memories(limits.max_memories)
            .trap_on_grow_failure(true)
            .build();
        GuestState {
            limiter: Guard { inner, memory_cap: limits.memory_bytes, table_cap: limits.max_table_elements, hit: None },
            tables,
            rate,
            logs: Vec::new(),
            logs_dropped: 0,
        }
    }

    /// Counts a `host.log` call against this call's and this plugin's log
    /// limits; false when the message is to be dropped.
    fn admit_log(&mut self) -> bool {
        if self.logs.len() >= MAX_LOGS_PER_CALL || !self.rate.admit() {
            self.logs_dropped = self.logs_dropped.saturating_add(1);
            return false;
        }
        true
    }

    fn push_log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.logs.push(LogLine { level, message });
    }

    /// `host.lookup`: the value of `key` in `table`, if the plugin may read
    /// that table and it has the key.
    fn lookup(&self, table: &str, key: &str) -> Option<String> {
        self.tables.get(table)?.get(key).cloned()
    }
}

/// A new string of `text` cut to at most `max` bytes at a character
/// boundary, with an ellipsis when cut. Allocates only what it keeps.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut kept = String::with_capacity(end + '…'.len_utf8());
    kept.push_str(&text[..end]);
    kept.push('…');
    kept
}

/// StoreLimits with errors that say which cap was hit, and a record of it so
/// the failed call is reported as a resource cap rather than a plain trap.
pub(crate) struct Guard {
    inner: StoreLimits,
    memory_cap: usize,
    table_cap: usize,
    pub hit: Option<String>,
}

impl ResourceLimiter for Guard {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            let msg = format!("memory cap of {} bytes reached (growing {current} -> {desired} bytes)", self.memory_cap);
            self.hit = Some(msg.clone());
            wasmtime::bail!(msg);
        }
        self.inner.memory_growing(current, desired, maximum)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.table_cap {
            let msg = format!("table cap of {} elements reached (growing {current} -> {desired})", self.table_cap);
            self.hit = Some(msg.clone());
            wasmtime::bail!(msg);
        }
        self.inner.table_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}
