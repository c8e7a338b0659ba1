//! What one rule call produced: the verdict that applies (after the failure
//! policy), what it cost, and what went wrong if anything did.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// A rule's verdict on one query-item pair, as the host accepted it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Verdict {
    /// The model's view stands.
    Keep,
    /// Multiply the model score by `factor`, in (0, 1].
    Demote { factor: f32, reason: String },
    /// Remove the item.
    Veto { reason: String },
}

impl Verdict {
    /// "keep", "demote" or "veto".
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Keep => "keep",
            Verdict::Demote { .. } => "demote",
            Verdict::Veto { .. } => "veto",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Keep => None,
            Verdict::Demote { reason, .. } | Verdict::Veto { reason } => Some(reason),
        }
    }
}

/// Why a call did not produce the rule's own verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallErrorKind {
    /// The call used up its fuel budget.
    OutOfFuel,
    /// The call ran past its epoch deadline.
    Deadline,
    /// The guest tried to grow memory or a table past its cap.
    ResourceCap,
    /// The guest recursed past the wasm stack limit.
    StackOverflow,
    /// Any other trap: unreachable (a Rust panic), bad memory access, ...
    Trap,
    /// The guest returned something the host refuses: too large, or a
    /// demotion factor outside (0, 1].
    BadOutput,
    /// A fresh instance could not be created.
    Instantiate,
}

impl CallErrorKind {
    /// The kebab-case name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            CallErrorKind::OutOfFuel => "out-of-fuel",
            CallErrorKind::Deadline => "deadline",
            CallErrorKind::ResourceCap => "resource-cap",
            CallErrorKind::StackOverflow => "stack-overflow",
            CallErrorKind::Trap => "trap",
            CallErrorKind::BadOutput => "bad-output",
            CallErrorKind::Instantiate => "instantiate",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallError {
    pub kind: CallErrorKind,
    pub message: String,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for CallError {}

/// A message the guest logged through the host, after rate limiting.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LogLine {
    pub level: &'static str,
    pub message: String,
}

/// The result of running one rule on one query-item pair.
#[derive(Clone, Debug, Serialize)]
pub struct RuleReport {
    pub plugin: Arc<str>,
    /// The verdict that applies: the rule's own, or the failure policy's when
    /// `error` is set.
    #[serde(flatten)]
    pub verdict: Verdict,
    pub tags: Vec<String>,
    /// Fuel the call consumed; `None` when the plugin runs without fuel. For
    /// an item of a batch, the batch's fuel divided by its number of items.
    pub fuel: Option<u64>,
    /// Wall time of the call, serialised as `time_us`; for an item of a
    /// batch, the batch's time divided by its number of items.
    #[serde(rename = "time_us", serialize_with = "micros")]
    pub elapsed: Duration,
    pub error: Option<CallError>,
    /// What the guest logged during the call (for a batch: on the report of
    /// its first item).
    pub logs: Vec<LogLine>,
    /// Log messages the rate limit dropped during this call.
    pub logs_dropped: u32,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    // Nanosecond resolution is plenty; more digits are float noise.
    s.serialize_f64((d.as_secs_f64() * 1e9).round() / 1e3)
}

/// All rules' verdicts folded into one: any veto wins, demotions multiply.
#[derive(Clone, Debug, PartialEq)]
pub struct Combined {
    /// Multiply the model score by this (0 when vetoed).
    pub factor: f32,
    /// The plugins that vetoed, in order.
    pub vetoed_by: Vec<Arc<str>>,
}

pub fn combine(reports: &[RuleReport]) -> Combined {
    let mut factor = 1.0f32;
    let mut vetoed_by = Vec::new();
    for report in reports {
        match &report.verdict {
            Verdict::Keep => {}
            Verdict::Demote { factor: f, .. } => factor *= f,
            Verdict::Veto { .. } => vetoed_by.push(report.plugin.clone()),
        }
    }
    if !vetoed_by.is_empty() {
        factor = 0.0;
    }
    Combined { factor, vetoed_by }
}
