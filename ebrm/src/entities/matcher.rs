//! Multi-pattern phrase matching over titles and queries (aho-corasick), with whole-word and
//! per-pattern case rules and leftmost-longest selection.

use crate::text::at_word_boundary;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// One pattern: the text to find, what it stands for, and whether case must match exactly.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub text: String,
    /// Index into the caller's table of canonical values.
    pub value: usize,
    pub case_sensitive: bool,
}

/// A found phrase: byte range in the searched text and the pattern's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub value: usize,
}

pub struct PhraseMatcher {
    automaton: Option<AhoCorasick>,
    patterns: Vec<Pattern>,
}

impl PhraseMatcher {
    /// Patterns are searched ASCII-case-insensitively, then case-sensitive ones are checked
    /// byte for byte. Non-ASCII letters always match case-sensitively (aho-corasick folds
    /// ASCII only), which is the safe side for brand names such as "Müller".
    pub fn new(patterns: Vec<Pattern>) -> anyhow::Result<PhraseMatcher> {
        let patterns: Vec<Pattern> = patterns.into_iter().filter(|p| !p.text.is_empty()).collect();
        let automaton = if patterns.is_empty() {
            None
        } else {
            // Standard semantics are what overlapping search needs: we pick leftmost-longest
            // ourselves among the matches that pass the word and case rules, so a rejected
            // long match never hides a valid shorter one at the same place.
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .build(patterns.iter().map(|p| p.text.as_bytes()))?,
            )
        };
        Ok(PhraseMatcher { automaton, patterns })
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Non-overlapping whole-word matches, leftmost first, the longest at each place.
    pub fn find(&self, text: &str) -> Vec<Found> {
        let Some(ac) = &self.automaton else { return Vec::new() };
        let mut valid: Vec<Found> = ac
            .find_overlapping_iter(text)
            .filter(|m| {
                let p = &self.patterns[m.pattern().as_usize()];
                at_word_boundary(text, m.start(), m.end())
                    && (!p.case_sensitive || &text.as_bytes()[m.start()..m.end()] == p.text.as_bytes())
            })
            .map(|m| Found { start: m.start(), end: m.end(), value: self.patterns[m.pattern().as_usize()].value })
            .collect();
        valid.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
        let mut out: Vec<Found> = Vec::new();
        for f in valid {
            if out.last().is_none_or(|last| f.start >= last.end) {
                out.push(f);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(pats: &[(&str, bool)]) -> PhraseMatcher {
        PhraseMatcher::new(
            pats.iter()
                .enumerate()
                .map(|(i, &(t, cs))| Pattern { text: t.into(), value: i, case_sensitive: cs })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn leftmost_longest_whole_words() {
        let m = matcher(&[("new", false), ("new balance", false), ("balance", false), ("nike", false)]);
        let found = m.find("New Balance 990 vs NIKE; nikes");
        assert_eq!(found.iter().map(|f| f.value).collect::<Vec<_>>(), [1, 3]);
        assert_eq!((found[0].start, found[0].end), (0, 11));
    }

    #[test]
    fn a_rejected_long_match_leaves_the_shorter_one() {
        let m = matcher(&[("apple", false), ("apple store", false)]);
        let found = m.find("apple storeroom");
        assert_eq!(found.iter().map(|f| f.value).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn case_sensitive_patterns() {
        let m = matcher(&[("Gap", true)]);
        assert_eq!(m.find("Gap hoodie").len(), 1);
        assert!(m.find("gap filler").is_empty());
        assert!(m.find("GAP").is_empty());
    }

    #[test]
    fn empty_matcher_finds_nothing() {
        assert!(matcher(&[]).find("anything").is_empty());
    }
}
