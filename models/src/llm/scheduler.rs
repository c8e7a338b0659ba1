//! Continuous batching for a decoder: one thread owns the model and a pool of KV-cache slots,
//! and every step runs the next token of every decoding sequence together with a bounded
//! chunk of the prompts still being prefilled (iteration-level scheduling: sequences join
//! and leave the batch at any step, and a long prompt never stalls running decodes).
//!
//! - **Pool and admission**: `slots` sequences of up to `slot_tokens` tokens each. A job
//!   that cannot get a slot waits in a queue of at most `max_queue` jobs; past that,
//!   [`Scheduler::submit`] refuses it ([`Refused::Full`]), and the caller sheds it.
//! - **Prefix cache**: a finished sequence's slot keeps its keys and values. A new job takes
//!   the free slot sharing the longest prefix with its prompt, or copies a longer shared
//!   prefix from any slot on the device ([`Llm::copy_prefix`]); only the rest is computed.
//!   Jobs submitted together (the `n` choices of one request, the items of a grading
//!   request) first compute their common prefix once, then share it.
//! - **Cancellation**: a job whose [`Sink`] is closed (its client went away) leaves at the
//!   next step, freeing its slot.
//! - **Shutdown**: after [`Scheduler::close`] new jobs are refused; queued and running ones
//!   finish, then the thread exits.

use super::sampling::{Sampler, SamplingParams};
use super::{KvCache, Llm};
use crate::decoder::SampleRow;
use anyhow::Result;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences decoded at once (KV-cache slots).
    pub slots: usize,
    /// Tokens one slot holds: a job's prompt and output must fit.
    pub slot_tokens: usize,
    /// Jobs waiting for a slot; more are refused.
    pub max_queue: usize,
    /// Prompt tokens prefilled per step, over all sequences (decodes always run).
    pub prefill_tokens: usize,
}

/// A common prefix shorter than this is not worth a separate run and a copy.
const MIN_SHARED_PREFIX: usize = 8;

/// Where a job's results go, as they come.
pub trait Sink: Send {
    /// Delivers an event; false when nobody listens any more (the job is then dropped).
    fn send(&mut self, event: Event) -> bool;
    /// Whether the listener has gone (checked every step).
    fn is_closed(&self) -> bool;
}

/// A [`Sink`] for blocking callers: events tagged with the job's index into one channel.
pub struct ChannelSink {
    pub index: usize,
    pub tx: std::sync::mpsc::Sender<(usize, Event)>,
}

impl Sink for ChannelSink {
    fn send(&mut self, event: Event) -> bool {
        self.tx.send((self.index, event)).is_ok()
    }
    fn is_closed(&self) -> bool {
        // A std channel cannot tell without sending: `send` finds out.
        false
    }
}

/// The log-probability of a chosen token, and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    /// The `top` best `(id, logprob)`, best first.
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token (not in the text).
    EndOfGeneration,
    /// One of the job's stop strings (not in the text).
    Stop,
    /// `max_tokens` reached.
    Length,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text it completes (empty while a character is incomplete
    /// or while the text might be the start of a stop string).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The job is over. `logits`, `hidden`: for a prefill-only job (`max_tokens` 0) that
    /// asked for them, the next-token logits and the last hidden state after the prompt.
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
        logits: Vec<f32>,
        hidden: Vec<f32>,
    },
    Failed(String),
}

pub struct Job {
    pub prompt: Vec<u32>,
    /// Tokens to generate; 0 runs the prompt only.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Strings that end the generation (left out of the text).
    pub stop: Vec<String>,
    /// Report each token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    pub ignore_eos: bool,
    /// For `max_tokens` 0: send the logits after the prompt with `Done`.
    pub want_logits: bool,
    /// For `max_tokens` 0: send the last hidden state after the prompt with `Done` (an LLM
    /// embedding).
    pub want_hidden: bool,
    /// A photo (PNG or JPEG bytes) the sequence sees through the model's visual adapter. Its
    /// prompt then shares no cached prefix: keys and values depend on the picture.
    pub picture: Option<std::sync::Arc<[u8]>>,
    pub sink: Box<dyn Sink>,
}

/// Why `submit` refused jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Full,
    Closed,
    /// The job itself is wrong (empty prompt, does not fit a slot, bad sampling settings).
    Invalid(String),
}

/// What the scheduler is doing, for metrics.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    pub steps: AtomicU64,
    /// Sum over steps of the sequences in the step (÷ steps: the mean batch occupancy).
    pub sequence_steps: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens not computed because a cached or shared prefix held them.
    pub reused_prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub cancelled: AtomicU64,
    pub running: AtomicUsize,
    pub queued: AtomicUsize,
    /// Tokens the running sequences hold in the pool.
    pub kv_tokens_used: AtomicUsize,
}

/// Jobs submitted together, queued as one entry so that their common prefix is computed
/// once before they start.
struct Group {
    jobs: Vec<Job>,
    /// Computed first in a prefill-only run of its own, when long enough to be worth it.
    shared_prefix: Option<Vec<u32>>,
}

#[derive(Default)]
struct Queue {
    groups: VecDeque<Group>,
    jobs: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    config: SchedulerConfig,
    stats: SchedulerStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
    vocab: usize,
    sees_pictures: bool,
}

impl Scheduler {
    /// Makes the pool and starts the model thread.
    pub fn start(llm: Arc<Llm>, config: SchedulerConfig) -> Result<(Scheduler, JoinHandle<()>)> {
        anyhow::ensure!(config.max_queue > 0 && config.prefill_tokens > 0, "max_queue and prefill_tokens must be > 0");
        let cache = llm.new_cache(config.slots, config.slot_tokens)?;
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
            config,
            stats: SchedulerStats::default(),
        });
        let for_thread = shared.clone();
        let (vocab, sees_pictures) = (llm.config.vocab, llm.sees_pictures());
        let handle = std::thread::Builder::new()
            .name("tandem-llm".into())
            .spawn(move || Runner::new(&llm, cache, &for_thread).run())?;
        Ok((Scheduler { shared, vocab, sees_pictures }, handle))
    }

    pub fn config(&self) -> SchedulerConfig {
        self.shared.config
    }

    pub fn stats(&self) -> &SchedulerStats {
        &self.shared.stats
    }

    /// Queues jobs that start together (their common prompt prefix is computed once).
    pub fn submit(&self, jobs: Vec<Job>) -> Result<(), Refused> {
        let c = self.shared.config;
        for job in &jobs {
            self.check(job, &c).map_err(Refused::Invalid)?;
        }
        if jobs.is_empty() {
            return Ok(());
        }
        let with_pictures = jobs.iter().any(|j| j.picture.is_some());
        let shared_prefix =
            (jobs.len() > 1 && !with_pictures).then(|| common_prefix(&jobs)).filter(|p| p.len() >= MIN_SHARED_PREFIX);
        let mut q = self.shared.lock();
        if q.closed {
            return Err(Refused::Closed);
        }
        // An empty queue takes any group, so a request with more jobs than the bound runs.
        if q.jobs > 0 && q.jobs + jobs.len() > c.max_queue {
            return Err(Refused::Full);
        }
        q.jobs += jobs.len();
        self.shared.stats.queued.store(q.jobs, Ordering::Relaxed);
        q.groups.push_back(Group { jobs, shared_prefix });
        drop(q);
        self.shared.wake.notify_one();
        Ok(())
    }

    fn check(&self, job: &Job, c: &SchedulerConfig) -> Result<(), String> {
        if job.prompt.is_empty() {
            return Err("the prompt is empty".into());
        }
        if job.picture.is_some() && !self.sees_pictures {
            return Err("this model has no visual adapter: it cannot see pictures".into());
        }
        if let Some(&bad) = job.prompt.iter().find(|&&id| id as usize >= self.vocab) {
            return Err(format!("token id {bad} is past the vocabulary of {}", self.vocab));
        }
        // The cache holds the prompt and every generated token but the last.
        let needed = job.prompt.len() + job.max_tokens.saturating_sub(1);
        if needed > c.slot_tokens {
            return Err(format!(
                "the prompt ({} tokens) and {} new tokens need {} positions, more than the {} a sequence has here",
                job.prompt.len(),
                job.max_tokens,
                needed + 1,
                c.slot_tokens
            ));
        }
        job.sampling.check().map_err(|e| e.to_string())
    }

    /// Refuses new jobs; the thread finishes the queued and running ones and exits.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

fn common_prefix(jobs: &[Job]) -> Vec<u32> {
    let first = &jobs[0].prompt;
    // Every job must still run at least its last prompt token itself.
    let len = jobs.iter().map(|j| lcp(first, &j.prompt).min(j.prompt.len() - 1)).min().unwrap_or(0);
    first[..len].to_vec()
}

fn lcp(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A job on its way through a slot.
struct Sequence<'a> {
    job: Job,
    slot: usize,
    /// Tokens to run at the next step: the prompt's rest while prefilling, then the last token.
    pending: Vec<u32>,
    prefilling: bool,
    sampler: Sampler,
    generated: usize,
    text: super::tokenizer::TextStream<'a>,
    /// Text generated but not yet sent (held while it could start a stop string).
    held: String,
    /// The members of a group waiting for this (prefill-only) sequence's prefix.
    then: Option<Vec<Job>>,
}

struct Runner<'a> {
    llm: &'a Llm,
    cache: KvCache,
    shared: &'a Shared,
    running: Vec<Sequence<'a>>,
}

/// A sink for the internal prefill of a group's shared prefix.
struct Nobody;

impl Sink for Nobody {
    fn send(&mut self, _: Event) -> bool {
        true
    }
    fn is_closed(&self) -> bool {
        false
    }
}

impl<'a> Runner<'a> {
    fn new(llm: &'a Llm, cache: KvCache, shared: &'a Shared) -> Self {
        Runner { llm, cache, shared, running: Vec::new() }
    }

    fn run(mut self) {
        loop {
            self.admit();
            self.drop_cancelled();
            if self.running.is_empty() {
                let q = self.shared.lock();
                if q.groups.is_empty() {
                    if q.closed {
                        return;
                    }
                    drop(self.shared.wake.wait(q).unwrap_or_else(|e| e.into_inner()));
                }
                continue;
            }
            self.step();
            self.publish();
        }
    }

    fn publish(&self) {
        let s = &self.shared.stats;
        s.running.store(self.running.iter().filter(|q| q.then.is_none()).count(), Ordering::Relaxed);
        let used = self.running.iter().map(|q| self.cache.cached(q.slot).len()).sum();
        s.kv_tokens_used.store(used, Ordering::Relaxed);
    }

    fn free_slots(&self) -> Vec<usize> {
        (0..self.cache.slots()).filter(|&s| self.running.iter().all(|q| q.slot != s)).collect()
    }

    /// Moves queued groups into free slots while there are some.
    fn admit(&mut self) {
        loop {
            if self.free_slots().is_empty() {
                return;
            }
            let group = {
                let mut q = self.shared.lock();
                let Some(group) = q.groups.pop_front() else { return };
                // Members wait until the prefix run is done; they stay counted as queued.
                if group.shared_prefix.is_none() {
                    q.jobs -= group.jobs.len();
                }
                self.shared.stats.queued.store(q.jobs, Ordering::Relaxed);
                group
            };
            match group.shared_prefix {
                Some(prefix) => {
                    let job = Job {
                        prompt: prefix,
                        max_tokens: 0,
                        sampling: SamplingParams::default(),
                        stop: Vec::new(),
                        logprobs: None,
                        ignore_eos: false,
                        want_logits: false,
                        want_hidden: false,
                        picture: None,
                        sink: Box::new(Nobody),
                    };
                    self.start(job, Some(group.jobs));
                }
                None => {
                    let mut jobs = group.jobs.into_iter();
                    while let Some(job) = jobs.next() {
                        if self.free_slots().is_empty() {
                            // The rest go back to the head of the queue, in order.
                            let rest: Vec<Job> = std::iter::once(job).chain(jobs).collect();
                            let mut q = self.shared.lock();
                            q.jobs += rest.len();
                            self.shared.stats.queued.store(q.jobs, Ordering::Relaxed);
                            q.groups.push_front(Group { jobs: rest, shared_prefix: None });
                            return;
                        }
                        self.start(job, None);
                    }
                }
            }
        }
    }

    /// Puts `job` into the free slot that shares the most of its prompt, copying a longer
    /// shared prefix from another slot when one has it.
    fn start(&mut self, job: Job, then: Option<Vec<Job>>) {
        let prompt = &job.prompt;
        // At least the prompt's last token is run, for its logits. Slots that saw a picture,
        // and jobs with one, share nothing.
        let shared: Vec<usize> = (0..self.cache.slots())
            .map(|s| {
                if job.picture.is_some() || self.cache.has_picture(s) {
                    return 0;
                }
                lcp(self.cache.cached(s), prompt).min(prompt.len() - 1)
            })
            .collect();
        let free = self.free_slots();
        let slot = *free
            .iter()
            .max_by_key(|&&s| (shared[s], std::cmp::Reverse(self.cache.cached(s).len())))
            .expect("start is called with a free slot");
        let mut reused = shared[slot];
        let best = (0..shared.len()).max_by_key(|&s| shared[s]).unwrap_or(slot);
        if shared[best] > reused && self.llm.copy_prefix(&mut self.cache, best, slot, shared[best]).is_ok() {
            reused = shared[best];
        } else {
            self.cache.truncate(slot, reused);
        }
        let shown = match &job.picture {
            Some(photo) => self.llm.show_picture(&mut self.cache, slot, photo),
            None => {
                self.llm.hide_picture(&mut self.cache, slot);
                Ok(())
            }
        };
        if let Err(e) = shown {
            let mut job = job;
            job.sink.send(Event::Failed(format!("the picture: {e:#}")));
            return;
        }
        let stats = &self.shared.stats;
        stats.prompt_tokens.fetch_add(prompt.len() as u64, Ordering::Relaxed);
        stats.reused_prompt_tokens.fetch_add(reused as u64, Ordering::Relaxed);
        let mut sampler = match Sampler::new(job.sampling) {
            Ok(s) => s,
            Err(e) => {
                let mut job = job;
                job.sink.send(Event::Failed(format!("{e:#}")));
                return;
            }
        };
        sampler.observe(prompt);
        let pending = prompt[reused..].to_vec();
        self.running.push(Sequence {
            job,
            slot,
            pending,
            prefilling: true,
            sampler,
            generated: 0,
            text: self.llm.tokenizer.stream(),
            held: String::new(),
            then,
        });
    }

    fn drop_cancelled(&mut self) {
        let before = self.running.len();
        self.running.retain(|q| !q.job.sink.is_closed());
        let gone = before - self.running.len();
        if gone > 0 {
            self.shared.stats.cancelled.fetch_add(gone as u64, Ordering::Relaxed);
        }
    }

    /// One run: every decoding sequence's last token and up to `prefill_tokens` of prompts.
    fn step(&mut self) {
        let slots = self.cache.slots();
        let mut feeds = vec![Vec::new(); slots];
        let mut rows = vec![SampleRow::greedy(); slots];
        // Which sequences run, and whether their prompt is complete after this run.
        let mut ran: Vec<(usize, bool)> = Vec::new();
        let mut budget = self.shared.config.prefill_tokens;
        let mut reads = super::Reads::default();
        for (i, q) in self.running.iter_mut().enumerate() {
            let take = if q.prefilling { q.pending.len().min(budget) } else { 1 };
            if take == 0 {
                continue;
            }
            if q.prefilling {
                budget -= take;
            }
            let completes = take == q.pending.len();
            feeds[q.slot] = q.pending.drain(..take).collect();
            if completes && q.job.max_tokens > 0 {
                rows[q.slot] = q.sampler.next_row();
            }
            reads.logits |= completes && (q.job.logprobs.is_some() || q.job.want_logits);
            reads.hidden |= completes && q.job.want_hidden;
            ran.push((i, completes));
        }
        let stats = &self.shared.stats;
        stats.steps.fetch_add(1, Ordering::Relaxed);
        stats.sequence_steps.fetch_add(ran.len() as u64, Ordering::Relaxed);
        let outcome =
            catch_unwind(AssertUnwindSafe(|| self.llm.step_batch_reading(&mut self.cache, &feeds, &rows, reads)));
        let output = match outcome {
            Ok(Ok(output)) => output,
            failed => {
                let message = match failed {
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(_) => "the model panicked".to_string(),
                    Ok(Ok(_)) => unreachable!(),
                };
                // The batch's slots may hold half-written rows: forget them.
                let failed: Vec<usize> = ran.iter().map(|&(i, _)| i).collect();
                for &i in failed.iter().rev() {
                    let mut q = self.running.swap_remove(i);
                    self.cache.truncate(q.slot, 0);
                    q.job.sink.send(Event::Failed(message.clone()));
                    // A group's members run on without the shared prefix.
                    if let Some(jobs) = q.then {
                        self.shared.lock().groups.push_front(Group { jobs, shared_prefix: None });
                    }
                }
                return;
            }
        };
        let mut finished = Vec::new();
        for &(i, completes) in &ran {
            if !completes {
                continue;
            }
            let q = &mut self.running[i];
            let slot = q.slot;
            let logits = &output.logits[slot];
            if q.job.max_tokens == 0 {
                let logits = if q.job.want_logits { logits.clone() } else { Vec::new() };
                let hidden = if q.job.want_hidden { output.hidden[slot].clone() } else { Vec::new() };
                let prompt_tokens = q.job.prompt.len();
                let done = Event::Done { finish: Finish::Length, prompt_tokens, completion_tokens: 0, logits, hidden };
                q.job.sink.send(done);
                finished.push(i);
                continue;
            }
            q.prefilling = false;
            let Some(id) = output.next[slot] else { continue };
            let logprob = q.job.logprobs.map(|k| token_logprob(logits, id, k));
            if !self.advance(i, id, logprob) {
                finished.push(i);
            }
        }
        finished.sort_unstable();
        for &i in finished.iter().rev() {
            let q = self.running.swap_remove(i);
            if q.job.sink.is_closed() {
                self.shared.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(jobs) = q.then {
                // The shared prefix is in q's slot now: its members go first.
                let mut queue = self.shared.lock();
                queue.groups.push_front(Group { jobs, shared_prefix: None });
            }
        }
    }

    /// Takes sequence `i`'s new token: sends its text, and says whether it goes on.
    fn advance(&mut self, i: usize, id: u32, logprob: Option<TokenLogprob>) -> bool {
        let tokenizer = &self.llm.tokenizer;
        let q = &mut self.running[i];
        q.generated += 1;
        self.shared.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        q.sampler.observe(&[id]);
        let done = |q: &mut Sequence<'_>, finish| {
            let (prompt_tokens, completion_tokens) = (q.job.prompt.len(), q.generated);
            let (logits, hidden) = (Vec::new(), Vec::new());
            q.job.sink.send(Event::Done { finish, prompt_tokens, completion_tokens, logits, hidden });
            false
        };
        if !q.job.ignore_eos && tokenizer.is_end_of_generation(id) {
            let mut held = std::mem::take(&mut q.held);
            match q.text.finish() {
                Ok(rest) => held.push_str(&rest),
                Err(e) => {
                    q.job.sink.send(Event::Failed(format!("{e:#}")));
                    return false;
                }
            }
            if !held.is_empty() && !q.job.sink.send(Event::Token { id, text: held, logprob: None }) {
                return false;
            }
            return done(q, Finish::EndOfGeneration);
        }
        let last = q.generated == q.job.max_tokens;
        // The last token also flushes a character the stream still holds incomplete.
        let piece = q.text.push(id).and_then(|piece| if last { Ok(piece + &q.text.finish()?) } else { Ok(piece) });
        let piece = match piece {
            Ok(piece) => piece,
            Err(e) => {
                q.job.sink.send(Event::Failed(format!("{e:#}")));
                return false;
            }
        };
        q.held.push_str(&piece);
        let stop_at = q.job.stop.iter().filter_map(|s| q.held.find(s.as_str())).min();
        let ready = match stop_at {
            Some(at) => at,
            None if last => q.held.len(),
            // Hold back what could be the start of a stop string.
            None => safe_len(&q.held, &q.job.stop),
        };
        let text: String = q.held.drain(..ready).collect();
        if !q.job.sink.send(Event::Token { id, text, logprob }) {
            return false;
        }
        if stop_at.is_some() {
            return done(q, Finish::Stop);
        }
        if last {
            return done(q, Finish::Length);
        }
        q.pending = vec![id];
        true
    }
}

/// How much of `held` cannot be part of a stop string that continues after it: all but
/// its longest suffix that is a prefix of some stop string.
fn safe_len(held: &str, stop: &[String]) -> usize {
    let mut keep = 0;
    for s in stop {
        for (at, _) in held.char_indices() {
            let tail = &held[at..];
            if s.starts_with(tail) {
                keep = keep.max(tail.len());
                break;
            }
        }
    }
    held.len() - keep
}

/// The chosen token's log-probability under `logits` and the `k` best alternatives.
pub fn token_logprob(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32 + max;
    let lp = |l: f32| l - log_sum;
    let logprob = logits.get(id as usize).map_or(f32::NEG_INFINITY, |&l| lp(l));
    let top = super::sampling::top_logits(logits, k).into_iter().map(|(i, l)| (i, lp(l))).collect();
    TokenLogprob { logprob, top }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_text_is_what_could_start_a_stop_string() {
        let stop = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(safe_len("hello", &stop), 5);
        assert_eq!(safe_len("hello\n", &stop), 5);
        assert_eq!(safe_len("hello E", &stop), 6);
        assert_eq!(safe_len("hello EN", &stop), 6);
        assert_eq!(safe_len("héllo", &[]), "héllo".len());
    }

    #[test]
    fn logprobs_are_a_log_softmax() {
        let t = token_logprob(&[0.0, (2.0f32).ln(), f32::NEG_INFINITY], 1, 2);
        assert!((t.logprob - (2.0f32 / 3.0).ln()).abs() < 1e-6);
        assert_eq!(t.top[0].0, 1);
        assert!((t.top[1].1 - (1.0f32 / 3.0).ln()).abs() < 1e-6);
    }
}
