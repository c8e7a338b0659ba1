//! Relevance grading with a decoder (TaoSR1's deployment): the prompt asks for the grade
//! label first, so one prefill per query–item pair gives the model's next-token
//! distribution, restricted here to the labels' first tokens. No decoding.
//!
//! Per item: each label's probability (renormalized over the labels), the expected grade
//! Σ p·grade, and the **CumPT tier**: labels sorted from the best grade down, probabilities
//! added up, the tier is the first label where the sum reaches β. A high β asks for more
//! confidence before calling an item relevant.

use super::{Llm, Message};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradeLabel {
    /// What the model answers (its first token identifies the label).
    pub label: String,
    /// Its numeric grade (higher is more relevant).
    pub grade: f32,
    /// What it means, told to the model in the instructions.
    pub meaning: String,
}

/// ESCI's four classes, Exact best.
pub fn esci_labels() -> Vec<GradeLabel> {
    let l = |label: &str, grade, meaning: &str| GradeLabel { label: label.into(), grade, meaning: meaning.into() };
    vec![
        l("E", 3.0, "Exact: the item is what the query asks for and meets every stated constraint"),
        l("S", 2.0, "Substitute: the same kind of product, but it misses a stated constraint"),
        l("C", 1.0, "Complement: not what was asked for, but used together with it"),
        l("I", 0.0, "Irrelevant: unrelated to the query"),
    ]
}

/// Labels resolved against a model's vocabulary, and the prompt that asks for them.
#[derive(Debug, Clone)]
pub struct Grader {
    /// Sorted from the best grade down.
    labels: Vec<GradeLabel>,
    tokens: Vec<u32>,
    instructions: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Grade {
    /// (label, probability), best grade first; probabilities sum to 1.
    pub probabilities: Vec<(String, f32)>,
    pub expected_grade: f32,
    /// The CumPT tier at the request's β.
    pub tier: String,
    /// How much of the model's whole next-token distribution the labels held (a low value
    /// says the model wanted to answer something else: the prompt does not suit it).
    pub label_mass: f32,
}

impl Grader {
    /// `instructions`: the system message; by default one that lists the labels and their
    /// meanings.
    pub fn new(llm: &Llm, mut labels: Vec<GradeLabel>, instructions: Option<&str>) -> Result<Self> {
        if labels.len() < 2 || labels.len() > 16 {
            bail!("grading needs 2 to 16 labels, not {}", labels.len());
        }
        if let Some(l) = labels.iter().find(|l| !l.grade.is_finite()) {
            bail!("label {:?}: the grade must be a finite number", l.label);
        }
        labels.sort_by(|a, b| b.grade.total_cmp(&a.grade));
        let mut tokens: Vec<u32> = Vec::with_capacity(labels.len());
        for label in &labels {
            let ids = llm.tokenizer.encode(label.label.trim())?;
            // A BOS the file adds is not part of the answer.
            let first = ids.iter().copied().find(|&id| llm.tokenizer.token_text(id) != Some(llm.tokenizer.bos_text()));
            let Some(first) = first else { bail!("label {:?} has no tokens", label.label) };
            if let Some(other) = tokens.iter().position(|&t| t == first) {
                bail!(
                    "labels {:?} and {:?} start with the same token: the first token must tell labels apart",
                    labels[other].label,
                    label.label
                );
            }
            tokens.push(first);
        }
        let listed: Vec<String> = labels.iter().map(|l| format!("{} = {}", l.label, l.meaning)).collect();
        let instructions = instructions.map(str::to_string).unwrap_or_else(|| {
            format!(
                "You judge whether a product matches a shopping search query. Answer with exactly one label first: {}.",
                listed.join("; ")
            )
        });
        Ok(Grader { labels, tokens, instructions })
    }

    pub fn labels(&self) -> &[GradeLabel] {
        &self.labels
    }

    /// The prompt of one query–item pair: the instructions as the system message, the pair
    /// as the user's, the assistant's turn opened (its first token is the label). The query
    /// comes before the item, so that the items of one query share the prompt's prefix.
    pub fn prompt(&self, llm: &Llm, query: &str, item: &str) -> Result<Vec<u32>> {
        let user = format!("Query: {query}\nProduct: {item}\nLabel:");
        let text = llm.chat_prompt(&[Message::new("system", &self.instructions), Message::new("user", &user)])?;
        llm.tokenizer.encode(&text)
    }

    /// The grade from the logits after the prompt.
    pub fn grade(&self, logits: &[f32], beta: f32) -> Result<Grade> {
        if !(beta > 0.0 && beta <= 1.0) {
            bail!("beta must be in (0, 1], not {beta}");
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let weights: Vec<f64> =
            self.tokens.iter().map(|&t| logits.get(t as usize).map_or(0.0, |&l| ((l - max) as f64).exp())).collect();
        let mass: f64 = weights.iter().sum();
        if !(mass > 0.0 && mass.is_finite()) {
            bail!("the labels have no probability under the model's distribution");
        }
        let probabilities: Vec<(String, f32)> =
            self.labels.iter().zip(&weights).map(|(l, w)| (l.label.clone(), (w / mass) as f32)).collect();
        let expected_grade =
            self.labels.iter().zip(&weights).map(|(l, w)| l.grade as f64 * w / mass).sum::<f64>() as f32;
        let mut cumulative = 0.0;
        let mut tier = self.labels.last().map(|l| l.label.clone()).unwrap_or_default();
        for (label, p) in &probabilities {
            cumulative += p;
            // (A rounding hair below β at the last label still ends there.)
            if cumulative >= beta - 1e-6 {
                tier = label.clone();
                break;
            }
        }
        Ok(Grade { probabilities, expected_grade, tier, label_mass: (mass / total) as f32 })
    }

    /// The token of `label` (for decoding a reason after it).
    pub fn token_of(&self, label: &str) -> Option<u32> {
        self.labels.iter().position(|l| l.label == label).map(|i| self.tokens[i])
    }
}

/// The text of an item to grade: a string as it is, or an object's `title` followed by its
/// other fields as `key: value` (attributes in marketplace style).
pub fn item_text(item: &serde_json::Value) -> Result<String> {
    match item {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Object(fields) => {
            let Some(serde_json::Value::String(title)) = fields.get("title") else {
                bail!("an item object needs a \"title\" string");
            };
            let mut text = title.clone();
            for (key, value) in fields.iter().filter(|(k, _)| *k != "title" && *k != "id") {
                let value = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                text.push_str(&format!("; {key}: {value}"));
            }
            Ok(text)
        }
        other => bail!("an item is a string or an object with a \"title\", not {other}"),
    }
}
