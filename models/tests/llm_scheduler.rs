//! Continuous batching on the tiny synthetic decoder: whatever else shares the batch, a job
//! gets the tokens it gets alone; shared prefixes are computed once; stop strings, logprobs,
//! cancellation, a full queue and shutdown behave as documented.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use tandem_models::llm::sampling::SamplingParams;
use tandem_models::llm::scheduler::{Event, Finish, Job, Refused, Scheduler, SchedulerConfig, Sink};
use tandem_models::llm::{GenerateRequest, Llm};
use tandem_models::testing::tiny_llama_gguf;
use tandem_models::{BackendChoice, Device};
use tandem_runtime::weights::gguf;

fn tiny_llm() -> (tempfile::TempDir, Arc<Llm>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let (metadata, tensors) = tiny_llama_gguf();
    std::fs::write(&path, gguf::to_bytes(&metadata, &tensors, 32).unwrap()).unwrap();
    let llm = Llm::load(&path, &Device::open_blocking(BackendChoice::Cpu).unwrap()).unwrap();
    (dir, Arc::new(llm))
}

/// Events into a channel; `closed` plays the client that went away.
struct ChannelSink {
    tx: mpsc::Sender<Event>,
    closed: Arc<AtomicBool>,
}

impl Sink for ChannelSink {
    fn send(&mut self, event: Event) -> bool {
        self.tx.send(event).is_ok() && !self.closed.load(Ordering::Relaxed)
    }
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

struct Pending {
    rx: mpsc::Receiver<Event>,
    closed: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Outcome {
    ids: Vec<u32>,
    text: String,
    finish: Option<Finish>,
    logprobs: Vec<f32>,
    logits: Vec<f32>,
    completion_tokens: usize,
}

impl Pending {
    fn wait(self) -> Outcome {
        let mut out = Outcome::default();
        for event in self.rx.iter() {
            match event {
                Event::Token { id, text, logprob } => {
                    out.ids.push(id);
                    out.text.push_str(&text);
                    out.logprobs.extend(logprob.map(|l| l.logprob));
                }
                Event::Done { finish, completion_tokens, logits, .. } => {
                    out.finish = Some(finish);
                    out.completion_tokens = completion_tokens;
                    out.logits = logits;
                    return out;
                }
                Event::Failed(e) => panic!("job failed: {e}"),
            }
        }
        out
    }
}

fn job(prompt: Vec<u32>, max_tokens: usize) -> (Job, Pending) {
    let (tx, rx) = mpsc::channel();
    let closed = Arc::new(AtomicBool::new(false));
    let sink = Box::new(ChannelSink { tx, closed: closed.clone() });
    let job = Job {
        prompt,
        max_tokens,
        sampling: SamplingParams::default(),
        stop: Vec::new(),
        logprobs: None,
        ignore_eos: true,
        want_logits: false,
        want_hidden: false,
        picture: None,
        sink,
    };
    (job, Pending { rx, closed })
}

fn config(slots: usize) -> SchedulerConfig {
    SchedulerConfig { slots, slot_tokens: 128, max_queue: 64, prefill_tokens: 7 }
}

fn alone(llm: &Llm, prompt: &[u32], max_tokens: usize, sampling: SamplingParams) -> Vec<u32> {
    let mut seq = llm.new_sequence(128).unwrap();
    let request =
        GenerateRequest { prompt_ids: prompt.to_vec(), max_tokens, sampling, ignore_eos: true, top_logits: 0 };
    llm.generate(&mut seq, &request, &mut |_| Ok(())).unwrap().ids
}

#[test]
fn jobs_batched_together_give_what_they_give_alone() {
    let (_dir, llm) = tiny_llm();
    let (scheduler, thread) = Scheduler::start(llm.clone(), config(3)).unwrap();
    // More jobs than slots, prompts longer than a step's prefill budget, some sampled.
    let texts = ["a", "blue denim jacket for men", "xyz 42", "running shoes, size 10, wide fit", "q", "red"];
    let mut expected = Vec::new();
    let (mut jobs, mut pending) = (Vec::new(), Vec::new());
    for (i, t) in texts.iter().enumerate() {
        let prompt = llm.tokenizer.encode(t).unwrap();
        let sampling = if i % 2 == 1 {
            SamplingParams { temperature: 1.2, top_k: 20, seed: i as u64, ..Default::default() }
        } else {
            SamplingParams::default()
        };
        let max_tokens = 5 + i;
        expected.push(alone(&llm, &prompt, max_tokens, sampling));
        let (mut j, p) = job(prompt, max_tokens);
        j.sampling = sampling;
        jobs.push(j);
        pending.push(p);
    }
    // One at a time, as separate requests would come.
    for j in jobs {
        scheduler.submit(vec![j]).unwrap();
    }
    for (i, (p, want)) in pending.into_iter().zip(expected).enumerate() {
        let got = p.wait();
        assert_eq!(got.ids, want, "job {i}");
        assert_eq!(got.finish, Some(Finish::Length));
        let text = llm.tokenizer.decode(&want).unwrap();
        // (Invalid bytes become U+FFFD per piece, which may differ in count from one decode.)
        if !text.contains('\u{FFFD}') {
            assert_eq!(got.text, text, "job {i}: streamed text");
        }
    }
    let stats = scheduler.stats();
    let steps = stats.steps.load(Ordering::Relaxed);
    let occupancy = stats.sequence_steps.load(Ordering::Relaxed) as f64 / steps as f64;
    assert!(occupancy > 1.5, "sequences shared steps: mean occupancy {occupancy}");
    scheduler.close();
    thread.join().unwrap();
}

#[test]
fn a_group_computes_its_common_prefix_once() {
    let (_dir, llm) = tiny_llm();
    let (scheduler, thread) = Scheduler::start(llm.clone(), config(4)).unwrap();
    let prefix = "query: hiking boots; item: ";
    let items = ["leather boots", "rain jacket", "boot laces", "tent", "hiking socks"];
    let mut jobs = Vec::new();
    let mut pending = Vec::new();
    let mut expected = Vec::new();
    for item in items {
        let prompt = llm.tokenizer.encode(&format!("{prefix}{item}")).unwrap();
        let mut fresh = llm.new_sequence(128).unwrap();
        expected.push(llm.feed(&mut fresh, &prompt).unwrap());
        let (mut j, p) = job(prompt, 0);
        j.want_logits = true;
        jobs.push(j);
        pending.push(p);
    }
    let prefix_len = llm.tokenizer.encode(prefix).unwrap().len();
    scheduler.submit(jobs).unwrap();
    for (p, want) in pending.into_iter().zip(expected) {
        let got = p.wait();
        let diff = got.logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert_eq!(got.logits.len(), want.len());
        assert!(diff < 1e-4, "logits after a shared prefix differ by {diff}");
    }
    // Five items: the prefix ran once and each item reused it.
    let reused = scheduler.stats().reused_prompt_tokens.load(Ordering::Relaxed) as usize;
    assert!(reused >= 5 * (prefix_len - 1), "reused {reused} prompt tokens of a {prefix_len}-token prefix");
    scheduler.close();
    thread.join().unwrap();
}

#[test]
fn stop_strings_logprobs_and_end_of_generation() {
    let (_dir, llm) = tiny_llm();
    let (scheduler, thread) = Scheduler::start(llm.clone(), config(2)).unwrap();
    let prompt = llm.tokenizer.encode("query: lamp").unwrap();
    let full = llm.tokenizer.decode(&alone(&llm, &prompt, 12, SamplingParams::default())).unwrap();
    // Stop at a piece of the greedy text that starts after its first character.
    let stop: String = full.chars().skip(3).take(2).collect();
    let cut = full.find(&stop).unwrap();
    let (mut j, p) = job(prompt.clone(), 12);
    j.stop = vec!["never-there".into(), stop.clone()];
    j.logprobs = Some(2);
    scheduler.submit(vec![j]).unwrap();
    let got = p.wait();
    assert_eq!(got.finish, Some(Finish::Stop));
    assert_eq!(got.text, full[..cut], "the text stops before {stop:?}");
    assert_eq!(got.logprobs.len(), got.ids.len());
    assert!(got.logprobs.iter().all(|&l| l <= 0.0 && l.is_finite()));
    scheduler.close();
    thread.join().unwrap();
}

#[test]
fn cancelled_jobs_leave_and_full_queues_refuse() {
    let (_dir, llm) = tiny_llm();
    let (scheduler, thread) =
        Scheduler::start(llm.clone(), SchedulerConfig { slots: 1, slot_tokens: 64, max_queue: 2, prefill_tokens: 64 })
            .unwrap();
    let prompt = llm.tokenizer.encode("query: chair").unwrap();
    let (long, long_pending) = job(prompt.clone(), 50);
    scheduler.submit(vec![long]).unwrap();
    // Wait for the first token: the one slot is busy.
    let first = long_pending.rx.recv().unwrap();
    assert!(matches!(first, Event::Token { .. }));
    let (a, pa) = job(prompt.clone(), 3);
    let (b, pb) = job(prompt.clone(), 3);
    scheduler.submit(vec![a]).unwrap();
    scheduler.submit(vec![b]).unwrap();
    let (c, _) = job(prompt.clone(), 3);
    assert_eq!(scheduler.submit(vec![c]).err(), Some(Refused::Full));
    // Invalid jobs are refused with a reason.
    let (too_long, _) = job(vec![65; 60], 10);
    assert!(matches!(scheduler.submit(vec![too_long]), Err(Refused::Invalid(e)) if e.contains("more than the 64")));
    let (bad_id, _) = job(vec![1_000_000], 1);
    assert!(matches!(scheduler.submit(vec![bad_id]), Err(Refused::Invalid(e)) if e.contains("past the vocabulary")));
    // The long job's client leaves: the queued ones get its slot.
    long_pending.closed.store(true, Ordering::Relaxed);
    assert_eq!(pa.wait().completion_tokens, 3);
    assert_eq!(pb.wait().completion_tokens, 3);
    assert_eq!(scheduler.stats().cancelled.load(Ordering::Relaxed), 1);
    let remaining: Vec<Event> = long_pending.rx.try_iter().collect();
    assert!(remaining.len() < 49, "the cancelled job stopped early ({} more events)", remaining.len());
    // Closing refuses new work, finishes what is queued, and ends the thread.
    let (d, pd) = job(prompt.clone(), 4);
    scheduler.submit(vec![d]).unwrap();
    scheduler.close();
    let (e, _) = job(prompt, 1);
    assert_eq!(scheduler.submit(vec![e]).err(), Some(Refused::Closed));
    assert_eq!(pd.wait().completion_tokens, 4);
    thread.join().unwrap();
}

#[test]
fn grades_are_the_label_distribution_with_cumulative_tiers() {
    use tandem_models::llm::grade::{GradeLabel, Grader, esci_labels};
    let (_dir, llm) = tiny_llm();
    let grader = Grader::new(&llm, esci_labels(), None).unwrap();
    let token = |label: &str| grader.token_of(label).unwrap() as usize;
    // E 0.2, S 0.4, C 0.1, I 0.3 of the labels' mass; another token holds as much again.
    let mut logits = vec![f32::NEG_INFINITY; llm.config.vocab];
    for (label, p) in [("E", 0.2f32), ("S", 0.4), ("C", 0.1), ("I", 0.3)] {
        logits[token(label)] = p.ln();
    }
    logits[b'x' as usize] = 0.0;
    let g = grader.grade(&logits, 0.5).unwrap();
    let probs: Vec<f32> = g.probabilities.iter().map(|(_, p)| *p).collect();
    for (got, want) in probs.iter().zip([0.2, 0.4, 0.1, 0.3]) {
        assert!((got - want).abs() < 1e-6, "{probs:?}");
    }
    assert!((g.expected_grade - (0.2 * 3.0 + 0.4 * 2.0 + 0.1)).abs() < 1e-5);
    assert!((g.label_mass - 0.5).abs() < 1e-5);
    // Cumulative from E down: 0.2, 0.6, 0.7, 1.0.
    assert_eq!(g.tier, "S");
    assert_eq!(grader.grade(&logits, 0.15).unwrap().tier, "E");
    assert_eq!(grader.grade(&logits, 0.65).unwrap().tier, "C");
    assert_eq!(grader.grade(&logits, 1.0).unwrap().tier, "I");
    assert!(grader.grade(&logits, 0.0).is_err());
    // Labels must be told apart by their first token.
    let same = vec![
        GradeLabel { label: "Exact".into(), grade: 1.0, meaning: "x".into() },
        GradeLabel { label: "Excellent".into(), grade: 0.0, meaning: "y".into() },
    ];
    let e = Grader::new(&llm, same, None).unwrap_err().to_string();
    assert!(e.contains("start with the same token"), "{e}");
    // The prompt puts the query before the item: items of a query share a prefix.
    let a = grader.prompt(&llm, "red shoes", "sneaker").unwrap();
    let b = grader.prompt(&llm, "red shoes", "boot").unwrap();
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let tail = llm.tokenizer.encode("sneaker\nLabel:<|im_end|>\n<|im_start|>assistant\n").unwrap().len();
    assert_eq!(shared, a.len() - tail, "the prompts differ from the item on");
}

#[test]
fn the_last_hidden_state_is_what_the_tied_head_reads() {
    let (dir, llm) = tiny_llm();
    let (scheduler, thread) = Scheduler::start(llm.clone(), config(2)).unwrap();
    let prompt = llm.tokenizer.encode("user history: trail shoes; rain jacket").unwrap();
    let (mut j, p) = job(prompt.clone(), 0);
    j.want_hidden = true;
    scheduler.submit(vec![j]).unwrap();
    let hidden = match p.rx.iter().last().unwrap() {
        Event::Done { hidden, .. } => hidden,
        other => panic!("{other:?}"),
    };
    assert_eq!(hidden.len(), llm.config.d_model);
    // The tiny model ties its head to the embedding: logits = hidden · Eᵀ.
    let file = tandem_runtime::weights::Gguf::open(&dir.path().join("tiny.gguf")).unwrap();
    let table = file.tensor("token_embd.weight").unwrap().to_f32();
    let mut seq = llm.new_sequence(128).unwrap();
    let logits = llm.feed(&mut seq, &prompt).unwrap();
    for (id, &want) in logits.iter().enumerate().step_by(37) {
        let row = &table[id * hidden.len()..(id + 1) * hidden.len()];
        let got: f32 = row.iter().zip(&hidden).map(|(a, b)| a * b).sum();
        assert!((got - want).abs() < 1e-3 * want.abs().max(1.0), "token {id}: {got} from the hidden state, {want}");
    }
    scheduler.close();
    thread.join().unwrap();
}
