//! `tandem grade --model NAME|FILE.gguf --query Q --items items.jsonl`: LLM relevance grading
//! (see `tandem_models::llm::grade`), one JSON line per item: the label probabilities, the
//! expected grade and the CumPT tier at `--beta`. Items are JSON lines, each a string or an
//! object with a `title` (other fields are attributes; `id` is echoed back). All items go
//! through the continuous-batching scheduler as one group, so the query's prompt prefix is
//! computed once.

use super::generate::ModelArgs;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use tandem_models::llm::grade::{GradeLabel, Grader, esci_labels, item_text};
use tandem_models::llm::sampling::SamplingParams;
use tandem_models::llm::scheduler::{ChannelSink, Event, Job, Scheduler, SchedulerConfig};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The search query.
    #[arg(long)]
    query: String,
    /// Items to grade: JSON lines, each a string or an object with a "title".
    #[arg(long, value_name = "FILE")]
    items: PathBuf,
    /// CumPT threshold: the tier is the first label, from the best down, where the
    /// cumulative probability reaches it.
    #[arg(long, default_value_t = 0.5)]
    beta: f32,
    /// Labels as a JSON list of {"label", "grade", "meaning"} [default: ESCI's E, S, C, I].
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// The system message instead of the default one listing the labels.
    #[arg(long)]
    instructions: Option<String>,
    /// Items graded at once (KV-cache slots).
    #[arg(long, default_value_t = 8)]
    slots: usize,
}

pub fn run(args: Args) -> Result<()> {
    if !(args.beta > 0.0 && args.beta <= 1.0) {
        bail!("--beta must be in (0, 1], not {}", args.beta);
    }
    let labels: Vec<GradeLabel> = match &args.labels {
        None => esci_labels(),
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: expected a list of labels", path.display()))?
        }
    };
    let text = std::fs::read_to_string(&args.items).with_context(|| format!("cannot read {}", args.items.display()))?;
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let item: Value =
            serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", args.items.display(), n + 1))?;
        let text = item_text(&item).with_context(|| format!("{} line {}", args.items.display(), n + 1))?;
        items.push((item.get("id").cloned(), text));
    }
    if items.is_empty() {
        bail!("{} has no items", args.items.display());
    }
    let llm = Arc::new(args.model.load()?);
    let grader = Grader::new(&llm, labels, args.instructions.as_deref())?;
    let prompts = items.iter().map(|(_, text)| grader.prompt(&llm, &args.query, text)).collect::<Result<Vec<_>>>()?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(1);
    if longest > llm.config.context {
        bail!("a prompt has {longest} tokens, more than the model's context of {}", llm.config.context);
    }
    let config = SchedulerConfig {
        slots: args.slots.max(1),
        slot_tokens: longest,
        max_queue: prompts.len(),
        prefill_tokens: 512,
    };
    let (scheduler, thread) = Scheduler::start(llm.clone(), config)?;
    let (tx, rx) = mpsc::channel();
    let jobs = prompts
        .iter()
        .enumerate()
        .map(|(index, prompt)| Job {
            prompt: prompt.clone(),
            max_tokens: 0,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            logprobs: None,
            ignore_eos: false,
            want_logits: true,
            want_hidden: false,
            picture: None,
            sink: Box::new(ChannelSink { index, tx: tx.clone() }),
        })
        .collect();
    drop(tx);
    scheduler.submit(jobs).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut logits = vec![None; prompts.len()];
    for (index, event) in rx.iter() {
        match event {
            Event::Done { logits: l, .. } => logits[index] = Some(l),
            Event::Failed(e) => bail!("item {}: {e}", index + 1),
            Event::Token { .. } => {}
        }
    }
    scheduler.close();
    thread.join().map_err(|_| anyhow::anyhow!("the decoder thread panicked"))?;
    let mut stdout = std::io::stdout().lock();
    for (index, ((id, text), l)) in items.iter().zip(logits).enumerate() {
        let l = l.with_context(|| format!("item {} got no answer", index + 1))?;
        let g = grader.grade(&l, args.beta)?;
        let probabilities: serde_json::Map<String, Value> =
            g.probabilities.iter().map(|(label, p)| (label.clone(), json!(p))).collect();
        let mut line = json!({
            "index": index,
            "text": text,
            "probabilities": probabilities,
            "expected_grade": g.expected_grade,
            "tier": g.tier,
            "label_mass": g.label_mass,
        });
        if let Some(id) = id {
            line["id"] = id.clone();
        }
        writeln!(stdout, "{line}")?;
    }
    Ok(())
}
