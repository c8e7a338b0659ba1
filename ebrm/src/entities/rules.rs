//! Rule-based extraction of colors, materials, sizes and model numbers from titles and
//! queries.
//!
//! - Colors and materials: whole-word, case-insensitive lexicon matches, leftmost-longest
//!   ("rose gold" over "gold", "stainless steel" over "steel").
//! - Sizes: a number with a unit, in one token or two ("500ml", "500 ml", "65W", "2m",
//!   "15.6\"", "10.5 US", "US 10.5", "EU 42", "3 pack"); "size 10" / "size M"; letter sizes
//!   XXS..XXXL and 2XL..6XL anywhere, S/M/L only after "size". Values are normalised to
//!   `"<number> <unit>"` in lowercase ("10.5 us", "500 ml", "xl").
//! - Model numbers: (a) a token with both letters and digits, at least 3 characters, that is
//!   not a size, an ordinal ("2nd") or a spec word ("4k", "1080p", "5g", "usb-c"), e.g.
//!   "WF-1000XM5", "S24", "990v6"; (b) a word followed by a bare number of 1-4 digits that is
//!   not a size, e.g. "iPhone 15", "Pegasus 40", optionally with a tier word after it
//!   ("iPhone 15 Pro"); the word must not be a function word ("pack of 3"). Values keep their
//!   spelling, trimmed of punctuation.

use super::matcher::{Pattern, PhraseMatcher};

pub const COLORS: &[&str] = &[
    "beige",
    "black",
    "blue",
    "bronze",
    "brown",
    "burgundy",
    "charcoal",
    "cream",
    "gold",
    "gray",
    "green",
    "grey",
    "ivory",
    "khaki",
    "lavender",
    "lilac",
    "magenta",
    "maroon",
    "mint",
    "multicolor",
    "navy",
    "olive",
    "orange",
    "pink",
    "purple",
    "red",
    "rose gold",
    "silver",
    "space gray",
    "space grey",
    "tan",
    "teal",
    "turquoise",
    "white",
    "yellow",
    "navy blue",
    "sky blue",
    "light blue",
    "dark blue",
    "royal blue",
    "light grey",
    "dark grey",
    "light gray",
    "dark gray",
    "dark green",
    "forest green",
    "off white",
    "off-white",
    "coral",
    "mustard",
    "champagne",
    "copper",
    "graphite",
    "midnight",
    "transparent",
    "clear",
];

pub const MATERIALS: &[&str] = &[
    "acrylic",
    "aluminium",
    "aluminum",
    "bamboo",
    "canvas",
    "carbon fiber",
    "carbon fibre",
    "cashmere",
    "ceramic",
    "chrome",
    "copper",
    "cork",
    "corduroy",
    "cotton",
    "denim",
    "down",
    "faux leather",
    "felt",
    "fleece",
    "foam",
    "glass",
    "granite",
    "hemp",
    "iron",
    "jersey",
    "latex",
    "leather",
    "linen",
    "marble",
    "memory foam",
    "merino",
    "merino wool",
    "mesh",
    "metal",
    "microfiber",
    "nylon",
    "oak",
    "organic cotton",
    "pine",
    "plastic",
    "polyester",
    "porcelain",
    "rattan",
    "rubber",
    "satin",
    "silicone",
    "silk",
    "spandex",
    "stainless steel",
    "steel",
    "stone",
    "suede",
    "teak",
    "titanium",
    "tpu",
    "velvet",
    "vinyl",
    "walnut",
    "wood",
    "wooden",
    "wool",
];

/// Units a size may carry, lowercase; the first spelling in a group is the normal form.
const UNITS: &[(&str, &[&str])] = &[
    ("ml", &["ml", "millilitre", "milliliter"]),
    ("cl", &["cl"]),
    ("l", &["l", "litre", "liter", "litres", "liters", "ltr"]),
    ("fl oz", &["floz", "fl.oz", "fl.oz."]),
    ("oz", &["oz", "ounce", "ounces"]),
    ("mg", &["mg"]),
    ("g", &["g", "gram", "grams", "gr"]),
    ("kg", &["kg", "kgs", "kilo", "kilos"]),
    ("lb", &["lb", "lbs", "pound", "pounds"]),
    ("mm", &["mm"]),
    ("cm", &["cm"]),
    ("m", &["m", "meter", "metre", "meters", "metres"]),
    ("in", &["in", "inch", "inches", "\""]),
    ("ft", &["ft", "feet", "foot"]),
    ("w", &["w", "watt", "watts"]),
    ("kw", &["kw"]),
    ("v", &["v", "volt", "volts"]),
    ("mah", &["mah"]),
    ("wh", &["wh"]),
    ("mb", &["mb"]),
    ("gb", &["gb"]),
    ("tb", &["tb"]),
    ("hz", &["hz"]),
    ("ghz", &["ghz"]),
    ("us", &["us"]),
    ("uk", &["uk"]),
    ("eu", &["eu"]),
    ("pack", &["pack", "pk", "pcs", "pc", "pieces", "count", "ct"]),
];

/// Shoe and clothing size systems, written before or after the number.
const SIZE_SYSTEMS: &[&str] = &["us", "uk", "eu"];
const LETTER_SIZES: &[&str] = &["xxs", "xs", "xl", "xxl", "xxxl", "2xl", "3xl", "4xl", "5xl", "6xl"];
const SMALL_LETTER_SIZES: &[&str] = &["s", "m", "l"];
const SPEC_WORDS: &[&str] =
    &["4k", "8k", "2k", "5g", "4g", "3g", "3d", "2d", "usb-c", "usb3", "wi-fi6", "wifi6", "hdmi2", "h264", "h265"];
const TIER_WORDS: &[&str] = &["pro", "max", "plus", "ultra", "mini", "lite", "se", "air", "neo"];
const FUNCTION_WORDS: &[&str] = &[
    "a", "an", "and", "for", "of", "the", "to", "with", "in", "on", "by", "at", "or", "x", "size", "set", "pack",
    "age", "ages", "up", "from", "under", "over", "top", "no", "number", "vol", "volume", "part", "version",
];

/// One text's rule-found values, in order of appearance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleEntities {
    pub colors: Vec<String>,
    pub materials: Vec<String>,
    pub sizes: Vec<String>,
    pub models: Vec<String>,
}

pub struct Rules {
    colors: PhraseMatcher,
    materials: PhraseMatcher,
}

impl Rules {
    pub fn new() -> Rules {
        let lexicon = |words: &[&str]| {
            let patterns = words
                .iter()
                .enumerate()
                .map(|(value, w)| Pattern { text: w.to_string(), value, case_sensitive: false })
                .collect();
            PhraseMatcher::new(patterns).expect("the built-in lexicons build")
        };
        Rules { colors: lexicon(COLORS), materials: lexicon(MATERIALS) }
    }

    pub fn extract(&self, text: &str) -> RuleEntities {
        let lexicon = |m: &PhraseMatcher, words: &[&str]| -> Vec<String> {
            let mut out: Vec<String> = Vec::new();
            for f in m.find(text) {
                let w = words[f.value].replace('-', " ");
                if !out.contains(&w) {
                    out.push(w);
                }
            }
            out
        };
        let (sizes, models) = sizes_and_models(text);
        RuleEntities {
            colors: lexicon(&self.colors, COLORS),
            materials: lexicon(&self.materials, MATERIALS),
            sizes,
            models,
        }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules::new()
    }
}

/// A whitespace token with surrounding punctuation trimmed (except a trailing inch mark).
fn tokens(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '|' || c == '(' || c == ')')
        .map(|t| t.trim_matches(|c: char| !c.is_alphanumeric() && c != '"' && c != '-' && c != '.'))
        .map(|t| t.trim_start_matches(['"', '-', '.']).trim_end_matches(['-', '.']))
        .filter(|t| !t.is_empty())
        .collect()
}

fn unit_of(word: &str) -> Option<&'static str> {
    UNITS.iter().find(|(_, spellings)| spellings.contains(&word)).map(|(norm, _)| *norm)
}

fn is_number(word: &str) -> bool {
    let mut dots = 0;
    !word.is_empty()
        && word.chars().next().is_some_and(|c| c.is_ascii_digit())
        && word.chars().all(|c| {
            dots += usize::from(c == '.');
            c.is_ascii_digit() || c == '.'
        })
        && dots <= 1
        && !word.ends_with('.')
}

/// "500ml" → ("500", "ml"), "15.6\"" → ("15.6", "in").
fn number_with_unit(word: &str) -> Option<(&str, &'static str)> {
    let split = word.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = word.split_at(split);
    (is_number(number) && split > 0).then_some(())?;
    Some((number, unit_of(unit)?))
}

fn has_letter_and_digit(word: &str) -> bool {
    word.chars().any(|c| c.is_ascii_digit()) && word.chars().any(char::is_alphabetic)
}

fn is_ordinal(word: &str) -> bool {
    ["st", "nd", "rd", "th"].iter().any(|s| word.strip_suffix(s).is_some_and(|n| !n.is_empty() && is_number(n)))
}

fn is_spec(word: &str) -> bool {
    SPEC_WORDS.contains(&word) || word.strip_suffix('p').is_some_and(|n| is_number(n) && n.len() >= 3) // 1080p
}

fn sizes_and_models(text: &str) -> (Vec<String>, Vec<String>) {
    let toks = tokens(text);
    let lower: Vec<String> = toks.iter().map(|t| t.to_lowercase()).collect();
    let mut used = vec![false; toks.len()];
    let mut sizes: Vec<String> = Vec::new();
    // Sizes first: what is a size is not a model number.
    for i in 0..toks.len() {
        if used[i] {
            continue;
        }
        let w = lower[i].as_str();
        let next = lower.get(i + 1).map(String::as_str);
        if let Some((n, unit)) = number_with_unit(w) {
            push(&mut sizes, format!("{n} {unit}"));
            used[i] = true;
        } else if is_number(w)
            && let Some(unit) = next.and_then(unit_of)
        {
            push(&mut sizes, format!("{w} {unit}"));
            (used[i], used[i + 1]) = (true, true);
        } else if is_number(w) && next == Some("fl") && lower.get(i + 2).is_some_and(|u| u == "oz") {
            push(&mut sizes, format!("{w} fl oz"));
            (used[i], used[i + 1], used[i + 2]) = (true, true, true);
        } else if SIZE_SYSTEMS.contains(&w) && next.is_some_and(is_number) {
            push(&mut sizes, format!("{} {w}", next.unwrap_or_default()));
            (used[i], used[i + 1]) = (true, true);
        } else if w == "size"
            && let Some(v) = next.filter(|v| is_number(v) || LETTER_SIZES.contains(v) || SMALL_LETTER_SIZES.contains(v))
        {
            push(&mut sizes, v.to_string());
            (used[i], used[i + 1]) = (true, true);
        } else if LETTER_SIZES.contains(&w) {
            push(&mut sizes, w.to_string());
            used[i] = true;
        }
    }
    let mut models: Vec<String> = Vec::new();
    for i in 0..toks.len() {
        if used[i] {
            continue;
        }
        let w = lower[i].as_str();
        if has_letter_and_digit(w) && w.chars().count() >= 3 && !is_ordinal(w) && !is_spec(w) {
            push(&mut models, toks[i].to_string());
            used[i] = true;
        } else if is_number(w)
            && !w.contains('.')
            && w.len() <= 4
            && i > 0
            && !used[i - 1]
            && lower[i - 1].chars().all(char::is_alphabetic)
            && lower[i - 1].chars().count() >= 2
            && !FUNCTION_WORDS.contains(&lower[i - 1].as_str())
        {
            let mut model = format!("{} {}", toks[i - 1], toks[i]);
            if lower.get(i + 1).is_some_and(|t| TIER_WORDS.contains(&t.as_str())) {
                model.push(' ');
                model.push_str(toks[i + 1]);
                used[i + 1] = true;
            }
            push(&mut models, model);
            (used[i - 1], used[i]) = (true, true);
        }
    }
    (sizes, models)
}

fn push(list: &mut Vec<String>, value: String) {
    if !list.contains(&value) {
        list.push(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(t: &str) -> RuleEntities {
        Rules::new().extract(t)
    }

    #[test]
    fn colors_and_materials() {
        let e = extract("Apple Watch Rose Gold aluminum case, Off-White silicone band");
        assert_eq!(e.colors, ["rose gold", "off white"]);
        assert_eq!(e.materials, ["aluminum", "silicone"]);
        assert_eq!(extract("stainless steel bottle").materials, ["stainless steel"]);
        assert!(extract("redwood reddish").colors.is_empty());
    }

    #[test]
    fn sizes() {
        let s = |t: &str| extract(t).sizes;
        assert_eq!(s("Pegasus 40 running shoes 10.5 US"), ["10.5 us"]);
        assert_eq!(s("US 9 trail shoe"), ["9 us"]);
        assert_eq!(s("water bottle 500ml"), ["500 ml"]);
        assert_eq!(s("charger 65W USB-C 2m cable"), ["65 w", "2 m"]);
        assert_eq!(s("hoodie XL"), ["xl"]);
        assert_eq!(s("t-shirt size M"), ["m"]);
        assert_eq!(s("M&M candy"), Vec::<String>::new());
        assert_eq!(s("15.6\" laptop 16 GB"), ["15.6 in", "16 gb"]);
        assert_eq!(s("shampoo 12 fl oz, 3 pack"), ["12 fl oz", "3 pack"]);
    }

    #[test]
    fn model_numbers() {
        let m = |t: &str| extract(t).models;
        assert_eq!(m("Sony WF-1000XM5 earbuds"), ["WF-1000XM5"]);
        assert_eq!(m("Apple iPhone 15 Pro 256 GB"), ["iPhone 15 Pro"]);
        assert_eq!(m("Nike Pegasus 40, size 10"), ["Pegasus 40"]);
        assert_eq!(m("Samsung Galaxy S24 Ultra 5G"), ["S24"]);
        assert_eq!(m("pack of 3 socks"), Vec::<String>::new());
        assert_eq!(m("4K TV 1080p 2nd gen"), Vec::<String>::new());
        assert_eq!(m("New Balance 990v6"), ["990v6"]);
    }

    #[test]
    fn odd_text_does_not_panic() {
        for t in ["", "   ", "\"\"\"", "1.2.3", "...", "size", "US", "ü 5 ü", "x 5", "é5é"] {
            let _ = extract(t);
        }
    }
}
