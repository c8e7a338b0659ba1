//! Brand extraction: an aho-corasick matcher over the brand names (and their aliases) of the
//! name-suggestion-index brand list.
//!
//! The list holds about 15,000 real brand names, and many of them are also ordinary words
//! ("Next", "Gap", "Target", "Boots", "Max"). Matching them everywhere would give most titles a
//! spurious brand, so each name is classified when the matcher is built:
//!
//! 1. Too short or not a name: fewer than 2 letters or digits, no letter at all, or longer
//!    than 64 bytes: dropped.
//! 2. Product vocabulary: a one-word name that is, singular or plural, a word of the product
//!    taxonomy or of the color / material lexicons ("Boots", "Shoes", "Orange"): dropped; in
//!    a title such a word is far more often the product or its color than the brand. An
//!    explicit `brand` attribute still carries it.
//! 3. Ambiguous: a one-word name that is a common English word (the list below) or has at
//!    most 3 letters ("Gap", "Next", "JBL", "H&M"): matched only when the text spells it
//!    with the list's exact case, which must contain a capital ("Gap hoodie" yes,
//!    "mind the gap" no). Names spelled all-lowercase in the list are dropped in this class.
//! 4. Everything else: matched case-insensitively ("nike running shoes" finds Nike).
//!
//! All matches are whole words, and the leftmost-longest match wins ("New Balance" over
//! "New"). An item's brand is its first match; a query keeps every match.

use super::matcher::{Pattern, PhraseMatcher};
use crate::text::{singular, words};
use crate::vocab::BrandList;
use std::collections::HashSet;

/// Frequent English words that are also brand names somewhere; a one-word brand in this list
/// is ambiguous (rule 3). Lowercase.
#[rustfmt::skip]
const COMMON_WORDS: &[&str] = &[
    "a", "about", "above", "ace", "act", "action", "active", "adventure", "after", "age", "air", "all", "alpha",
    "always", "america", "american", "and", "angel", "any", "apple", "arena", "art", "as", "at", "atlas", "auto",
    "away", "baby", "back", "bank", "base", "basic", "basics", "bay", "be", "beacon", "bear", "beauty", "bed", "bee",
    "best", "better", "big", "bio", "bird", "bloom", "blue", "body", "bold", "bonus", "boss", "box", "bread",
    "bridge", "bright", "brother", "brothers", "budget", "buy", "by", "cafe", "camp", "can", "capital", "care",
    "carrier", "center", "central", "century", "champion", "change", "chef", "choice", "city", "classic", "clean",
    "clear", "club", "coach", "coast", "comfort", "common", "compass", "core", "corner", "country", "crown", "daily",
    "day", "deal", "delta", "design", "direct", "discount", "do", "dollar", "double", "dream", "drive", "dune",
    "eagle", "earth", "east", "easy", "echo", "edge", "element", "elite", "empire", "energy", "essential",
    "essentials", "ever", "everyday", "evolution", "express", "extra", "fair", "family", "fast", "field", "fine",
    "first", "fit", "fitness", "five", "flash", "flex", "flow", "fly", "focus", "for", "forever", "fox", "free",
    "fresh", "friends", "from", "fun", "future", "galaxy", "game", "garden", "gate", "general", "giant", "global",
    "go", "golden", "good", "grand", "great", "green", "group", "guess", "halo", "happy", "harmony", "health",
    "heart", "hello", "here", "hero", "high", "home", "horizon", "hot", "house", "hub", "icon", "ideal", "image",
    "in", "infinity", "inspire", "is", "it", "jet", "joy", "just", "key", "kids", "king", "kingdom", "lab", "land",
    "legacy", "legend", "less", "life", "light", "like", "lime", "line", "link", "little", "live", "local", "london",
    "look", "lotus", "love", "lucky", "luxury", "magic", "main", "mall", "man", "mango", "mark", "market", "master",
    "matrix", "max", "me", "mega", "metro", "micro", "mini", "mission", "mode", "modern", "moment", "more", "motion",
    "mountain", "move", "my", "nation", "native", "nature", "new", "next", "nice", "night", "no", "noble", "nomad",
    "north", "nova", "now", "oasis", "ocean", "of", "office", "on", "one", "only", "open", "optimum", "or", "origin",
    "original", "outdoor", "outlet", "over", "pacific", "palace", "paradise", "park", "peak", "pearl", "people",
    "perfect", "phoenix", "pilot", "pioneer", "planet", "play", "plaza", "plus", "point", "polo", "popular", "power",
    "premier", "premium", "prime", "pro", "pure", "quality", "quest", "quick", "rainbow", "rapid", "ready", "real",
    "red", "reform", "rest", "rise", "river", "rock", "royal", "rush", "safe", "save", "saver", "score", "sea",
    "second", "select", "service", "seven", "shell", "shop", "sierra", "signature", "simple", "simply", "sky",
    "smart", "snap", "so", "social", "solar", "solid", "sonic", "south", "space", "spark", "speed", "spirit", "sport",
    "sports", "spot", "spring", "square", "standard", "star", "start", "station", "stop", "store", "street", "studio",
    "style", "summit", "sun", "sunrise", "sunshine", "super", "supreme", "sure", "sweet", "swift", "system", "target",
    "team", "tech", "the", "thrive", "tiger", "time", "to", "today", "top", "total", "tower", "town", "trade",
    "trend", "triangle", "trio", "true", "trust", "twin", "ultra", "union", "unique", "unity", "universal", "up",
    "urban", "us", "valley", "value", "venture", "via", "victory", "view", "village", "vision", "vital", "vitality",
    "vogue", "wave", "way", "we", "well", "west", "wild", "win", "wing", "wise", "with", "wonder", "world", "yes",
    "you", "young", "your", "zen", "zero", "zone",
];

/// A brand found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrandMatch {
    /// The canonical brand name from the list.
    pub brand: String,
    /// Byte range in the searched text.
    pub start: usize,
    pub end: usize,
}

/// How a name is matched (rules 1-4 in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameClass {
    Dropped,
    CaseSensitive,
    CaseInsensitive,
}

pub struct BrandMatcher {
    matcher: PhraseMatcher,
    names: Vec<String>,
}

impl BrandMatcher {
    /// Builds the matcher; `vocabulary` is the product vocabulary of rule 2 (lowercase words).
    pub fn new(list: &BrandList, vocabulary: &HashSet<String>) -> anyhow::Result<BrandMatcher> {
        let common: HashSet<&str> = COMMON_WORDS.iter().copied().collect();
        let mut names = Vec::with_capacity(list.brands.len());
        let mut patterns = Vec::new();
        let mut seen = HashSet::new();
        for brand in &list.brands {
            let value = names.len();
            names.push(brand.name.clone());
            for text in std::iter::once(&brand.name).chain(&brand.aliases) {
                let text = text.trim();
                let case_sensitive = match classify(text, &common, vocabulary) {
                    NameClass::Dropped => continue,
                    NameClass::CaseSensitive => true,
                    NameClass::CaseInsensitive => false,
                };
                // One pattern per spelling (case-folded unless case matters): the first brand
                // listed under a spelling keeps it.
                let key = if case_sensitive { text.to_string() } else { text.to_lowercase() };
                if seen.insert(key) {
                    patterns.push(Pattern { text: text.to_string(), value, case_sensitive });
                }
            }
        }
        Ok(BrandMatcher { matcher: PhraseMatcher::new(patterns)?, names })
    }

    /// Patterns in the automaton (names and aliases that survived the rules).
    pub fn patterns(&self) -> usize {
        self.matcher.len()
    }

    pub fn find(&self, text: &str) -> Vec<BrandMatch> {
        self.matcher
            .find(text)
            .into_iter()
            .map(|f| BrandMatch { brand: self.names[f.value].clone(), start: f.start, end: f.end })
            .collect()
    }
}

/// Rules 1-3 of the module docs for one brand name or alias.
pub fn classify(name: &str, common: &HashSet<&str>, vocabulary: &HashSet<String>) -> NameClass {
    let alnum = name.chars().filter(|c| c.is_alphanumeric()).count();
    if alnum < 2 || !name.chars().any(char::is_alphabetic) || name.len() > 64 {
        return NameClass::Dropped;
    }
    let ws: Vec<String> = words(name).collect();
    if let [word] = ws.as_slice() {
        // A "word" made of letters only: "H&M" is two words and not product vocabulary.
        let lower = word.as_str();
        if vocabulary.contains(lower) || vocabulary.contains(singular(lower)) {
            return NameClass::Dropped;
        }
        if common.contains(lower) || alnum <= 3 {
            return if name.chars().any(char::is_uppercase) { NameClass::CaseSensitive } else { NameClass::Dropped };
        }
    } else if alnum <= 3 {
        // "H&M", "B&Q", "A.P.C": short initialisms are ambiguous too.
        return if name.chars().any(char::is_uppercase) { NameClass::CaseSensitive } else { NameClass::Dropped };
    }
    NameClass::CaseInsensitive
}

/// The common-word list, for callers that classify names themselves (the eval generator).
pub fn common_words() -> HashSet<&'static str> {
    COMMON_WORDS.iter().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Brand;

    fn list(names: &[&str]) -> BrandList {
        BrandList {
            version: "test".into(),
            brands: names.iter().map(|n| Brand { name: n.to_string(), aliases: vec![], nsi: vec![] }).collect(),
        }
    }

    fn vocab() -> HashSet<String> {
        ["shoe", "boot", "orange", "hoodie"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classification_rules() {
        let common = common_words();
        let v = vocab();
        let c = |n: &str| classify(n, &common, &v);
        assert_eq!(c("Nike"), NameClass::CaseInsensitive);
        assert_eq!(c("New Balance"), NameClass::CaseInsensitive);
        assert_eq!(c("Gap"), NameClass::CaseSensitive);
        assert_eq!(c("Next"), NameClass::CaseSensitive);
        assert_eq!(c("H&M"), NameClass::CaseSensitive);
        assert_eq!(c("JBL"), NameClass::CaseSensitive);
        assert_eq!(c("Boots"), NameClass::Dropped);
        assert_eq!(c("Orange"), NameClass::Dropped);
        assert_eq!(c("au"), NameClass::Dropped);
        assert_eq!(c("7"), NameClass::Dropped);
        assert_eq!(c("1-2-3"), NameClass::Dropped);
    }

    #[test]
    fn finds_brands_by_the_rules() {
        let m =
            BrandMatcher::new(&list(&["Nike", "Gap", "Boots", "New Balance", "New Look", "H&M"]), &vocab()).unwrap();
        let found = |t: &str| m.find(t).into_iter().map(|b| b.brand).collect::<Vec<_>>();
        assert_eq!(found("nike running shoes"), ["Nike"]);
        assert_eq!(found("NIKE Air"), ["Nike"]);
        assert_eq!(found("Gap hoodie"), ["Gap"]);
        assert!(found("mind the gap hoodie").is_empty());
        assert!(found("Hiking Boots").is_empty());
        assert_eq!(found("new balance 990v6"), ["New Balance"]);
        assert_eq!(found("H&M t-shirt, not Nikelab"), ["H&M"]);
    }

    #[test]
    fn aliases_map_to_the_brand() {
        let mut l = list(&["ABC Schuh-Center"]);
        l.brands[0].aliases.push("abc schuhe".into());
        let m = BrandMatcher::new(&l, &vocab()).unwrap();
        assert_eq!(m.find("ABC Schuhe Sandalen")[0].brand, "ABC Schuh-Center");
    }
}
