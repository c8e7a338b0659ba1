//! Dynamic batching: requests that arrive while the model is busy (or within `max_wait` of
//! each other while it is idle) go through one forward pass together.
//!
//! Generic over the work item and the forward pass, one implementation for every encoder
//! route: `/embed`, `/v1/embeddings`, `/rerank` and `/relevance`'s QE misses all queue
//! token ids on the same [`EmbedBatcher`], so they share forward passes and queue bounds.
//! Each text is tokenized once before it queues (by the route, or by `/relevance`'s
//! encoder); the forward pass takes ids, so it cannot tokenize again. An item's cost in the budgets is its
//! [`BatchItem::tokens`].
//!
//! The model runs on one dedicated thread, never on a tokio worker. Handlers push a `Job`
//! (all items of one request, kept together) onto a bounded queue and await a oneshot
//! reply; the model thread takes the oldest job and adds later ones in arrival order while
//! they fit `max_batch_tokens` and `max_batch_requests` (first fit: a job too large for the
//! remaining budget is passed over for a smaller one behind it, and goes first next time).
//! The oldest job always goes, so nothing starves and a request larger than the budget
//! still runs, alone.
//!
//! Length grouping is unnecessary here: the runtime packs the sequences of a batch end to
//! end with no padding (see the README's "Packed sequences"), so a batch costs its real
//! tokens whatever mix of lengths it holds, and the budget counts real tokens.
//!
//! A job whose client went away (its reply receiver dropped) is removed before the forward
//! pass. If a batch fails, its jobs are retried one by one so that one bad request cannot
//! fail the requests it happened to be batched with; a panic in the model is caught and
//! answered as a backend error.
//!
//! The decoder's scheduler (`tandem_models::llm::scheduler`, behind `--llm`) sits beside
//! this, not on it: it batches at the iteration level, keeping each sequence's KV cache
//! between steps so that sequences join and leave the running batch at every token. This
//! batcher is request-level and stateless: a job is one forward pass, answered whole.

use super::errors::ApiError;
use super::metrics::{BatchStats, Metrics};
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tandem_models::tokenizer::TokenizedText;
use tokio::sync::oneshot;

/// A unit of work: one text's token ids, for the encoder.
pub trait BatchItem: Send + 'static {
    /// What the item costs against `max_batch_tokens` and `max_queue_tokens`.
    fn tokens(&self) -> usize;
}

impl BatchItem for TokenizedText {
    fn tokens(&self) -> usize {
        self.len()
    }
}

/// The encoder's batcher, which every encoder route shares.
pub type EmbedBatcher = Batcher<TokenizedText, Vec<f32>>;

/// The model's forward pass: the items of a batch in, one output per item, in order.
pub type Forward<I, O> = Box<dyn FnMut(&[&I]) -> anyhow::Result<Vec<O>> + Send>;
pub type Reply<O> = Result<Vec<O>, ApiError>;

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub max_batch_tokens: usize,
    pub max_batch_requests: usize,
    pub max_wait: Duration,
    pub max_queue_tokens: usize,
}

/// Why `submit` refused a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queued tokens would pass `max_queue_tokens`.
    Full,
    /// Shutting down.
    Closed,
}

struct Job<I, O> {
    items: Vec<I>,
    /// Tokens of all items.
    tokens: usize,
    reply: oneshot::Sender<Reply<O>>,
    enqueued: Instant,
}

impl<I, O> Job<I, O> {
    fn finish(self, outcome: Reply<O>) {
        // The client may have left during the forward pass; nothing to do then.
        let _ = self.reply.send(outcome);
    }
}

struct Queue<I, O> {
    jobs: VecDeque<Job<I, O>>,
    tokens: usize,
    closed: bool,
}

impl<I, O> Default for Queue<I, O> {
    fn default() -> Self {
        Queue { jobs: VecDeque::new(), tokens: 0, closed: false }
    }
}

struct Shared<I, O> {
    queue: Mutex<Queue<I, O>>,
    wake: Condvar,
    policy: Policy,
    metrics: Arc<Metrics>,
}

impl<I, O> Shared<I, O> {
    fn lock(&self) -> MutexGuard<'_, Queue<I, O>> {
        // Nothing panics while holding the lock; if something did, the queue is still valid.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Batcher<I, O> {
    shared: Arc<Shared<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher { shared: self.shared.clone() }
    }
}

impl<I: BatchItem, O: Send + 'static> Batcher<I, O> {
    /// Starts the model thread. It exits after `close` once the queue is empty.
    pub fn start(
        policy: Policy,
        metrics: Arc<Metrics>,
        forward: Forward<I, O>,
    ) -> std::io::Result<(Batcher<I, O>, JoinHandle<()>)> {
        let shared = Arc::new(Shared { queue: Mutex::default(), wake: Condvar::new(), policy, metrics });
        let for_thread = shared.clone();
        let handle =
            std::thread::Builder::new().name("tandem-model".into()).spawn(move || run(&for_thread, forward))?;
        Ok((Batcher { shared }, handle))
    }

    /// Queues one request's items; the reply (one output per item, in order) arrives on the
    /// returned receiver. Dropping the receiver cancels the job if its forward pass has not
    /// started.
    ///
    /// The caller holds its admission slot while it waits, so a client that leaves frees
    /// its slot at once; its job, dead in the queue until the model thread prunes it, still
    /// counts against `max_queue_tokens`, which bounds the queue either way.
    pub fn submit(&self, items: Vec<I>) -> Result<oneshot::Receiver<Reply<O>>, Refused> {
        let tokens = items.iter().map(BatchItem::tokens).sum();
        let (reply, rx) = oneshot::channel();
        let mut q = self.shared.lock();
        if q.closed {
            return Err(Refused::Closed);
        }
        // An empty queue takes any job, so one request larger than the bound still runs.
        let max = self.shared.policy.max_queue_tokens;
        if !q.jobs.is_empty() && q.tokens + tokens > max {
            // Dead jobs may be what fills it.
            drop_cancelled(&mut q, &self.shared.metrics);
            if !q.jobs.is_empty() && q.tokens + tokens > max {
                return Err(Refused::Full);
            }
        }
        q.tokens += tokens;
        q.jobs.push_back(Job { items, tokens, reply, enqueued: Instant::now() });
        drop(q);
        self.shared.wake.notify_one();
        Ok(rx)
    }

    /// (requests, tokens) waiting.
    pub fn depth(&self) -> (usize, usize) {
        let q = self.shared.lock();
        (q.jobs.len(), q.tokens)
    }

    /// Refuses new jobs; the model thread finishes the queued ones and exits.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

fn run<I, O>(shared: &Shared<I, O>, mut forward: Forward<I, O>) {
    while let Some(batch) = next_batch(shared) {
        let started = Instant::now();
        for job in &batch {
            shared.metrics.observe_queue_wait(started.saturating_duration_since(job.enqueued));
        }
        let stats = BatchStats {
            requests: batch.len(),
            inputs: batch.iter().map(|j| j.items.len()).sum(),
            tokens: batch.iter().map(|j| j.tokens).sum(),
            forward: Duration::ZERO,
        };
        answer(&mut forward, batch, &shared.metrics);
        shared.metrics.observe_batch(BatchStats { forward: started.elapsed(), ..stats });
    }
}

/// Waits for work, then for company (up to `max_wait` after the oldest job arrived, unless
/// a full batch is already there), and takes a batch off the queue. `None` once closed and
/// empty.
fn next_batch<I, O>(shared: &Shared<I, O>) -> Option<Vec<Job<I, O>>> {
    let p = shared.policy;
    let mut q = shared.lock();
    loop {
        drop_cancelled(&mut q, &shared.metrics);
        let Some(oldest) = q.jobs.front() else {
            if q.closed {
                return None;
            }
            q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        let waited = oldest.enqueued.elapsed();
        let full = q.tokens >= p.max_batch_tokens || q.jobs.len() >= p.max_batch_requests;
        if full || q.closed || waited >= p.max_wait {
            return Some(take_batch(&mut q, &p));
        }
        q = shared.wake.wait_timeout(q, p.max_wait - waited).unwrap_or_else(|e| e.into_inner()).0;
    }
}

fn drop_cancelled<I, O>(q: &mut Queue<I, O>, metrics: &Metrics) {
    let Queue { jobs, tokens, .. } = q;
    let before = jobs.len();
    jobs.retain(|j| {
        let gone = j.reply.is_closed();
        if gone {
            *tokens -= j.tokens;
        }
        !gone
    });
    if jobs.len() < before {
        metrics.observe_cancelled((before - jobs.len()) as u64);
    }
}

/// The oldest job, then later ones in order while they fit (first fit).
fn take_batch<I, O>(q: &mut Queue<I, O>, p: &Policy) -> Vec<Job<I, O>> {
    let Some(first) = q.jobs.pop_front() else { return Vec::new() };
    let mut tokens = first.tokens;
    let mut batch = vec![first];
    let mut i = 0;
    while i < q.jobs.len() && batch.len() < p.max_batch_requests {
        if tokens + q.jobs[i].tokens <= p.max_batch_tokens
            && let Some(job) = q.jobs.remove(i)
        {
            tokens += job.tokens;
            batch.push(job);
        } else {
            i += 1;
        }
    }
    q.tokens -= tokens;
    batch
}

/// Runs one forward pass for `batch` and replies to each job; on failure of a batch of
/// several jobs, retries them one by one to find the one at fault.
fn answer<I, O>(forward: &mut Forward<I, O>, batch: Vec<Job<I, O>>, metrics: &Metrics) {
    let items: Vec<&I> = batch.iter().flat_map(|j| &j.items).collect();
    let outcome = match catch_unwind(AssertUnwindSafe(|| forward(&items))) {
        Ok(Ok(outputs)) if outputs.len() == items.len() => Ok(outputs),
        Ok(Ok(outputs)) => Err(format!("the model returned {} outputs for {} inputs", outputs.len(), items.len())),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => Err(format!("the model panicked: {}", panic_message(&*panic))),
    };
    drop(items);
    match outcome {
        Ok(outputs) => {
            let mut outputs = outputs.into_iter();
            for job in batch {
                let mine: Vec<O> = outputs.by_ref().take(job.items.len()).collect();
                job.finish(Ok(mine));
            }
        }
        Err(_) if batch.len() > 1 => {
            for job in batch {
                answer(forward, vec![job], metrics);
            }
        }
        Err(message) => {
            metrics.observe_backend_error();
            for job in batch {
                job.finish(Err(ApiError::backend(message.clone())));
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str)).unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A stand-in text with the cost a test gives it.
    struct Text {
        text: String,
        tokens: usize,
    }

    impl BatchItem for Text {
        fn tokens(&self) -> usize {
            self.tokens
        }
    }

    type Model = Batcher<Text, Vec<f32>>;

    fn policy(max_batch_tokens: usize, max_batch_requests: usize) -> Policy {
        Policy { max_batch_tokens, max_batch_requests, max_wait: Duration::from_millis(5), max_queue_tokens: 1000 }
    }

    /// A stand-in model with a vector [len] per text that records each batch's texts. It
    /// fails on "bad" and panics on "panic"; on "busy" it says so and waits for a release,
    /// so a test can queue work behind a running pass without guessing at timing.
    struct Harness {
        batcher: Model,
        thread: Option<JoinHandle<()>>,
        batches: Arc<Mutex<Vec<Vec<String>>>>,
        metrics: Arc<Metrics>,
        started: mpsc::Receiver<()>,
        release: mpsc::Sender<()>,
    }

    impl Harness {
        fn new(p: Policy) -> Self {
            let batches = Arc::new(Mutex::new(Vec::new()));
            let metrics = Arc::new(Metrics::default());
            let (started_tx, started) = mpsc::channel();
            let (release, release_rx) = mpsc::channel::<()>();
            let seen = batches.clone();
            let forward: Forward<Text, Vec<f32>> = Box::new(move |items: &[&Text]| {
                let texts: Vec<&str> = items.iter().map(|t| t.text.as_str()).collect();
                seen.lock().unwrap().push(texts.iter().map(|t| t.to_string()).collect());
                if texts.contains(&"busy") {
                    started_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                }
                if texts.contains(&"panic") {
                    panic!("boom");
                }
                if texts.contains(&"bad") {
                    anyhow::bail!("cannot embed 'bad'");
                }
                Ok(texts.iter().map(|t| vec![t.len() as f32]).collect())
            });
            let (batcher, thread) = Batcher::start(p, metrics.clone(), forward).unwrap();
            Harness { batcher, thread: Some(thread), batches, metrics, started, release }
        }

        /// Submits `texts` as one job of `tokens` tokens (carried by its first text).
        fn submit(&self, texts: &[&str], tokens: usize) -> Result<oneshot::Receiver<Reply<Vec<f32>>>, Refused> {
            let items = texts.iter().enumerate();
            self.batcher.submit(
                items.map(|(i, t)| Text { text: t.to_string(), tokens: if i == 0 { tokens } else { 0 } }).collect(),
            )
        }

        /// Starts a forward pass that runs until `release`.
        fn hold(&self) -> oneshot::Receiver<Reply<Vec<f32>>> {
            let rx = self.submit(&["busy"], 1).unwrap();
            self.started.recv().unwrap();
            rx
        }

        fn release(&self, held: oneshot::Receiver<Reply<Vec<f32>>>) {
            self.release.send(()).unwrap();
            held.blocking_recv().unwrap().unwrap();
        }

        fn batch_sizes(&self) -> Vec<usize> {
            self.batches.lock().unwrap().iter().map(Vec::len).collect()
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.batcher.close();
            self.thread.take().unwrap().join().unwrap();
        }
    }

    fn wait(rx: oneshot::Receiver<Reply<Vec<f32>>>) -> Reply<Vec<f32>> {
        rx.blocking_recv().unwrap()
    }

    #[test]
    fn requests_waiting_during_a_forward_pass_share_the_next_one() {
        let h = Harness::new(policy(1000, 64));
        let held = h.hold();
        let rest: Vec<_> = (0..9).map(|i| h.submit(&[&"x".repeat(i + 1), "y"], 4).unwrap()).collect();
        h.release(held);
        for (i, rx) in rest.into_iter().enumerate() {
            // Each request gets its own texts' vectors back, in order.
            assert_eq!(wait(rx).unwrap(), vec![vec![(i + 1) as f32], vec![1.0]]);
        }
        assert_eq!(h.batch_sizes(), vec![1, 18]);
    }

    #[test]
    fn budgets_split_batches_first_fit_and_oldest_first() {
        let h = Harness::new(policy(10, 3));
        let held = h.hold();
        let rxs: Vec<_> = [("a", 6), ("b", 6), ("c", 3), ("d", 1), ("e", 1), ("f", 1)]
            .map(|(t, n)| h.submit(&[t], n).unwrap())
            .into();
        h.release(held);
        rxs.into_iter().for_each(|rx| drop(wait(rx).unwrap()));
        let batches = h.batches.lock().unwrap().clone();
        // a(6) + c(3) + d(1) fill 10 tokens, passing over b; b goes first next time.
        assert_eq!(batches[1..], [vec!["a", "c", "d"], vec!["b", "e", "f"]]);
    }

    #[test]
    fn one_request_per_batch_turns_batching_off() {
        let h = Harness::new(policy(1000, 1));
        let held = h.hold();
        let rxs: Vec<_> = (0..5).map(|_| h.submit(&["t", "u"], 2).unwrap()).collect();
        h.release(held);
        rxs.into_iter().for_each(|rx| drop(wait(rx).unwrap()));
        assert_eq!(h.batch_sizes(), vec![1, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn a_job_whose_client_left_is_skipped() {
        let h = Harness::new(policy(1000, 64));
        let held = h.hold();
        drop(h.submit(&["gone"], 1).unwrap());
        let kept = h.submit(&["kept"], 1).unwrap();
        h.release(held);
        wait(kept).unwrap();
        assert_eq!(h.batches.lock().unwrap()[1], vec!["kept"]);
        assert!(h.metrics.render(Default::default(), &[]).contains("tandem_cancelled_total 1"));
    }

    #[test]
    fn a_failing_or_panicking_request_does_not_fail_its_batchmates() {
        let h = Harness::new(policy(1000, 64));
        let held = h.hold();
        let good = h.submit(&["good"], 1).unwrap();
        let bad = h.submit(&["bad"], 1).unwrap();
        let panics = h.submit(&["panic"], 1).unwrap();
        h.release(held);
        assert_eq!(wait(good).unwrap(), vec![vec![4.0]]);
        let err = wait(bad).unwrap_err();
        assert_eq!(err.status.as_u16(), 424);
        assert!(err.message.contains("cannot embed 'bad'"), "{err}");
        let panicked = wait(panics).unwrap_err();
        assert!(panicked.message.contains("the model panicked: boom"), "{panicked}");
        // And the model thread is still serving.
        assert_eq!(wait(h.submit(&["ok"], 1).unwrap()).unwrap(), vec![vec![2.0]]);
    }

    #[test]
    fn the_queue_is_bounded_in_tokens_and_closes() {
        let h = Harness::new(policy(1000, 64));
        let held = h.hold();
        let a = h.submit(&["a"], 900).unwrap();
        assert_eq!(h.submit(&["b"], 200).unwrap_err(), Refused::Full);
        assert_eq!(h.batcher.depth(), (1, 900));
        // A job whose client left no longer takes room.
        drop(a);
        let c = h.submit(&["c"], 200).unwrap();
        assert_eq!(h.batcher.depth(), (1, 200));
        h.release(held);
        wait(c).unwrap();
        h.batcher.close();
        assert_eq!(h.submit(&["d"], 1).unwrap_err(), Refused::Closed);
    }
}
