//! Text helpers shared by extraction, cache keys and the pipeline: normalisation, word
//! boundaries and bounded field lengths.

/// Longest title kept, in bytes; longer titles are cut at a character boundary. The encoder
/// sees at most 128 tokens anyway, and matchers run in time linear in the text.
pub const MAX_TITLE_BYTES: usize = 2048;
/// Longest query kept, in bytes; longer queries are cut at a character boundary.
pub const MAX_QUERY_BYTES: usize = 512;
/// Longest attribute value (brand, color, category path, ...) kept, in bytes.
pub const MAX_VALUE_BYTES: usize = 256;
/// Longest attribute name accepted, in bytes; longer names are an error.
pub const MAX_KEY_BYTES: usize = 64;

/// Lowercase, whitespace runs collapsed to one space, trimmed: the form cache keys and
/// comparisons use.
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether `text[start..end]` stands as whole words: no letter or digit touches it on either
/// side.
pub fn at_word_boundary(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
}

/// Words of `s`: maximal runs of letters and digits, lowercased.
pub fn words(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase())
}

/// A crude English singular, enough to match "shoes" with "Shoe" and "watches" with "Watch".
pub fn singular(word: &str) -> &str {
    if word.len() > 4 && ["ches", "shes", "sses", "xes"].iter().any(|e| word.ends_with(e)) {
        &word[..word.len() - 2]
    } else if word.len() > 3 && word.ends_with('s') && !word.ends_with("ss") {
        &word[..word.len() - 1]
    } else {
        word
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_and_space() {
        assert_eq!(normalize("  Nike\tRunning   SHOES \n"), "nike running shoes");
        assert_eq!(normalize("ÉCRU"), "écru");
        assert_eq!(normalize(""), "");
    }

    #[test]
    fn truncates_at_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn word_boundaries() {
        let t = "Nike's Nikes";
        assert!(at_word_boundary(t, 0, 4));
        assert!(!at_word_boundary(t, 7, 11));
        assert!(at_word_boundary("x-Nike", 2, 6));
    }

    #[test]
    fn singulars() {
        assert_eq!(singular("shoes"), "shoe");
        assert_eq!(singular("watches"), "watch");
        assert_eq!(singular("glass"), "glass");
        assert_eq!(singular("bus"), "bus");
        assert_eq!(singular("dresses"), "dress");
    }
}
