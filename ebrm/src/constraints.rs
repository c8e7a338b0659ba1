//! Query constraints and the exact checks of an item against them.
//!
//! A QE score is the probability that the item satisfies the query's constraint of one kind,
//! so the query is read first: its brand, model number (with its variant suffix), quantities
//! (units normalised), pack count, size, color, material, audience, "free-from" features and
//! product type. Each constraint is then checked against the item's title and attributes:
//! agreement gives a high QE, a contradiction a low one, and silence (the item does not say)
//! an uncertain one, never a veto. Kinds the query does not constrain are not checked at all.
//!
//! Checks are rules, not similarities: "17 fl oz" and "500 ml" are the same amount, "4070 Ti"
//! is not a "4070 Ti Super", "Case for iPhone 15 Pro" is a case, not a phone. English and
//! Chinese (and mixed) text go through the same lexer: ASCII words and numbers are tokens,
//! each CJK character is one, so Chinese needs no segmenter for these checks.

use crate::entities::EntityKind;
use crate::text::singular;

/// QE of a clear match, a clear conflict, and of silence for each kind of check.
pub const MATCH: f32 = 0.95;
pub const CONFLICT: f32 = 0.05;
pub const UNKNOWN: f32 = 0.5;
/// A free-from claim ("fragrance free", 无糖) is printed when true: silence leans to "no".
const FEATURE_SILENT: f32 = 0.2;
/// The item names other model numbers but not the queried one.
const OTHER_MODEL: f32 = 0.2;
/// The product type word is missing from the title (titles often omit it).
const TYPE_SILENT: f32 = 0.3;
/// The item is an accessory for (or a part of) what the query wants.
pub const ACCESSORY: f32 = 0.08;
/// Relative tolerance of quantity comparisons: 16.9 fl oz is 500 ml, 1/4 in is 6 mm.
const TOLERANCE: f64 = 0.065;

// ---------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A number (fractions "1/4" folded in), with its text.
    Num(f64, String),
    /// A lowercase ASCII (or other non-CJK) word.
    Word(String),
    /// One CJK character.
    Cjk(char),
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF)
}

/// Tokens of `text`: numbers, words and CJK characters; `"` after a number reads as "in",
/// `+` after a word or number as "plus", thousands commas are dropped ("5,000").
fn lex(text: &str) -> Vec<Tok> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() {
                let d = chars[i];
                let next_digit = chars.get(i + 1).is_some_and(char::is_ascii_digit);
                // "5,000" but not "3, 4"; "1/4"; "16.9"
                let thousands = d == ',' && next_digit && chars.get(i + 4).is_none_or(|c| !c.is_ascii_digit());
                if d.is_ascii_digit() || ((d == '.' || d == '/') && next_digit) || thousands {
                    i += 1;
                } else {
                    break;
                }
            }
            let s: String = chars[start..i].iter().filter(|&&c| c != ',').collect();
            if let Some(v) = number_value(&s) {
                out.push(Tok::Num(v, s));
            }
            if chars.get(i) == Some(&'"') {
                out.push(Tok::Word("in".into()));
                i += 1;
            }
        } else if is_cjk(c) {
            out.push(Tok::Cjk(c));
            i += 1;
        } else if c.is_alphabetic() {
            let start = i;
            while i < chars.len() && chars[i].is_alphabetic() && !is_cjk(chars[i]) {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().flat_map(|c| c.to_lowercase()).collect()));
        } else {
            if c == '+' && i > 0 && chars[i - 1].is_alphanumeric() {
                out.push(Tok::Word("plus".into()));
            }
            i += 1;
        }
    }
    out
}

/// "16.9" → 16.9, "1/4" → 0.25.
fn number_value(s: &str) -> Option<f64> {
    match s.split_once('/') {
        Some((a, b)) => {
            let (a, b) = (a.parse::<f64>().ok()?, b.parse::<f64>().ok()?);
            (b != 0.0).then(|| a / b)
        }
        None => s.parse().ok().filter(|v: &f64| v.is_finite()),
    }
}

fn cjk_numeral(c: char) -> Option<f64> {
    Some(match c {
        '一' | '单' => 1.0,
        '二' | '两' | '双' => 2.0,
        '三' => 3.0,
        '四' => 4.0,
        '五' => 5.0,
        '六' => 6.0,
        '七' => 7.0,
        '八' => 8.0,
        '九' => 9.0,
        '十' => 10.0,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Quantities and counts

/// What a quantity measures; values are held in the base unit of the dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// millilitres
    Volume,
    /// grams
    Mass,
    /// millimetres
    Length,
    Watts,
    Volts,
    /// gigabytes
    Storage,
    /// shelves or tiers of a piece of furniture
    Tiers,
}

impl Dim {
    /// A value of this dimension in a readable unit: 1.25e-4 g as "125 mcg".
    fn show(self, v: f64) -> String {
        match self {
            Dim::Mass if v < 1e-3 => format!("{} mcg", fmt_num(v * 1e6)),
            Dim::Mass if v < 1.0 => format!("{} mg", fmt_num(v * 1e3)),
            _ => format!("{} {}", fmt_num(v), self.unit()),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Dim::Volume => "ml",
            Dim::Mass => "g",
            Dim::Length => "mm",
            Dim::Watts => "W",
            Dim::Volts => "V",
            Dim::Storage => "GB",
            Dim::Tiers => "tiers",
        }
    }
}

/// Unit words: spelling → (dimension, factor to the base unit). "oz" is read both as fluid
/// and as weight ounces; the comparison takes whichever dimension the other side has.
const UNITS: &[(&str, Dim, f64)] = &[
    ("ml", Dim::Volume, 1.0),
    ("milliliter", Dim::Volume, 1.0),
    ("milliliters", Dim::Volume, 1.0),
    ("毫升", Dim::Volume, 1.0),
    ("cl", Dim::Volume, 10.0),
    ("l", Dim::Volume, 1000.0),
    ("liter", Dim::Volume, 1000.0),
    ("liters", Dim::Volume, 1000.0),
    ("litre", Dim::Volume, 1000.0),
    ("ltr", Dim::Volume, 1000.0),
    ("升", Dim::Volume, 1000.0),
    ("floz", Dim::Volume, 29.5735),
    ("oz", Dim::Volume, 29.5735),
    ("ounce", Dim::Volume, 29.5735),
    ("ounces", Dim::Volume, 29.5735),
    ("qt", Dim::Volume, 946.353),
    ("quart", Dim::Volume, 946.353),
    ("quarts", Dim::Volume, 946.353),
    ("gallon", Dim::Volume, 3785.41),
    ("gallons", Dim::Volume, 3785.41),
    ("gal", Dim::Volume, 3785.41),
    ("g", Dim::Mass, 1.0),
    ("gram", Dim::Mass, 1.0),
    ("grams", Dim::Mass, 1.0),
    ("克", Dim::Mass, 1.0),
    ("kg", Dim::Mass, 1000.0),
    ("kgs", Dim::Mass, 1000.0),
    ("公斤", Dim::Mass, 1000.0),
    ("千克", Dim::Mass, 1000.0),
    ("斤", Dim::Mass, 500.0),
    ("lb", Dim::Mass, 453.592),
    ("lbs", Dim::Mass, 453.592),
    ("pound", Dim::Mass, 453.592),
    ("pounds", Dim::Mass, 453.592),
    ("mg", Dim::Mass, 1e-3),
    ("mcg", Dim::Mass, 1e-6),
    ("ug", Dim::Mass, 1e-6),
    ("µg", Dim::Mass, 1e-6),
    ("微克", Dim::Mass, 1e-6),
    // International units, read as vitamin D (1 IU = 0.025 mcg), the supplement sold by IU
    // most; vitamin A and E have other factors.
    ("iu", Dim::Mass, 2.5e-8),
    ("mm", Dim::Length, 1.0),
    ("cm", Dim::Length, 10.0),
    ("m", Dim::Length, 1000.0),
    ("in", Dim::Length, 25.4),
    ("inch", Dim::Length, 25.4),
    ("inches", Dim::Length, 25.4),
    ("英寸", Dim::Length, 25.4),
    ("寸", Dim::Length, 25.4),
    ("ft", Dim::Length, 304.8),
    ("feet", Dim::Length, 304.8),
    ("w", Dim::Watts, 1.0),
    ("watt", Dim::Watts, 1.0),
    ("watts", Dim::Watts, 1.0),
    ("kw", Dim::Watts, 1000.0),
    ("v", Dim::Volts, 1.0),
    ("volt", Dim::Volts, 1.0),
    ("volts", Dim::Volts, 1.0),
    ("gb", Dim::Storage, 1.0),
    ("tb", Dim::Storage, 1000.0),
    ("shelf", Dim::Tiers, 1.0),
    ("shelves", Dim::Tiers, 1.0),
    ("tier", Dim::Tiers, 1.0),
    ("tiers", Dim::Tiers, 1.0),
    ("层", Dim::Tiers, 1.0),
];

/// Words after a number that count units sold together ("24 count", "4pk", 12罐).
#[rustfmt::skip]
const COUNT_WORDS: &[&str] = &[
    "pack", "packs", "pk", "count", "ct", "pcs", "pc", "pieces", "piece", "pods", "pod", "cans", "can", "softgels",
    "capsules", "tablets", "gummies", "bars", "pairs", "rolls", "bottles", "batteries", "battery", "cartridges",
    "refills", "bags", "cups", "罐", "听", "瓶", "盒", "杯", "片", "粒", "颗", "包", "袋", "块", "条", "支", "双", "件",
];

/// A measured amount: each reading (dimension, value in the base unit).
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    pub readings: Vec<(Dim, f64)>,
    pub text: String,
}

impl Quantity {
    fn agrees(&self, other: &Quantity) -> Option<bool> {
        let mut shared = false;
        for &(d, v) in &self.readings {
            for &(e, w) in &other.readings {
                if d == e {
                    shared = true;
                    if close(v, w) {
                        return Some(true);
                    }
                }
            }
        }
        shared.then_some(false)
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOLERANCE * a.abs().max(b.abs()) + 1e-12
}

fn fmt_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round())
    } else {
        format!("{v:.3}").trim_end_matches('0').to_string()
    }
}

/// Everything measurable in one text. `used[i]` marks tokens consumed.
#[derive(Debug, Default, Clone, PartialEq)]
struct Measures {
    quantities: Vec<Quantity>,
    counts: Vec<f64>,
    sizes: Vec<String>,
}

fn word_at(toks: &[Tok], i: usize) -> Option<&str> {
    match toks.get(i) {
        Some(Tok::Word(w)) => Some(w.as_str()),
        _ => None,
    }
}

/// The unit at `i` (one or two tokens: "fl oz", 毫升): (spelling, tokens used).
fn unit_at(toks: &[Tok], i: usize) -> Option<(&'static str, usize)> {
    if word_at(toks, i) == Some("fl") && word_at(toks, i + 1) == Some("oz") {
        return Some(("floz", 2));
    }
    if let (Some(Tok::Cjk(a)), Some(Tok::Cjk(b))) = (toks.get(i), toks.get(i + 1)) {
        let two: String = [*a, *b].iter().collect();
        if let Some(u) = UNITS.iter().find(|u| u.0 == two) {
            return Some((u.0, 2));
        }
    }
    let one = match toks.get(i)? {
        Tok::Word(w) => w.clone(),
        Tok::Cjk(c) => c.to_string(),
        Tok::Num(..) => return None,
    };
    UNITS.iter().find(|u| u.0 == one).map(|u| (u.0, 1))
}

fn count_word_at(toks: &[Tok], i: usize) -> bool {
    match toks.get(i) {
        Some(Tok::Word(w)) => COUNT_WORDS.contains(&w.as_str()),
        Some(Tok::Cjk(c)) => COUNT_WORDS.contains(&c.to_string().as_str()),
        _ => false,
    }
}

const LETTER_SIZES: &[(&str, &str)] =
    &[("xxs", "xxs"), ("xs", "xs"), ("xl", "xl"), ("xxl", "xxl"), ("xxxl", "xxxl"), ("2xl", "xxl"), ("3xl", "xxxl")];
const BED_SIZES: &[&str] = &["twin", "full", "queen", "king"];

/// `glued`: (previous, token) pairs written without a space ("67xl"): a letter size glued
/// to a number is a model suffix, not a size.
fn measures(toks: &[Tok], used: &mut [bool], item_side: bool, glued: &[(String, String)]) -> Measures {
    let mut m = Measures::default();
    let mut i = 0;
    while i < toks.len() {
        if used[i] {
            i += 1;
            continue;
        }
        match &toks[i] {
            Tok::Num(v, _) => {
                let mut v = *v;
                let mut j = i + 1;
                // Mixed fraction: "7 1/4", "7-1/4"
                if let Some(Tok::Num(f, s)) = toks.get(j)
                    && s.contains('/')
                    && *f < 1.0
                {
                    v += f;
                    j += 1;
                }
                if word_at(toks, j) == Some("w") && matches!(toks.get(j + 1), Some(Tok::Num(..))) {
                    // "5W-30" is a motor oil grade, kept for the model check.
                    i += 1;
                    continue;
                }
                if let Some((unit, n)) = unit_at(toks, j) {
                    let readings: Vec<(Dim, f64)> =
                        UNITS.iter().filter(|u| u.0 == unit).map(|u| (u.1, v * u.2)).collect();
                    let mut readings = readings;
                    if unit == "oz" || unit == "ounce" || unit == "ounces" {
                        readings.push((Dim::Mass, v * 28.3495));
                    }
                    let text = format!("{} {}", fmt_num(v), if unit == "floz" { "fl oz" } else { unit });
                    m.quantities.push(Quantity { readings, text });
                    used[i..j + n].iter_mut().for_each(|u| *u = true);
                    i = j + n;
                    continue;
                }
                if count_word_at(toks, j) {
                    m.counts.push(v);
                    used[i..=j].iter_mut().for_each(|u| *u = true);
                    i = j + 1;
                    continue;
                }
                // 330ml*12罐 / ×12听 are lexed as "12" then a count word: handled above.
            }
            Tok::Word(w) => {
                let next_num = match toks.get(i + 1) {
                    Some(Tok::Num(v, _)) => Some(*v),
                    _ => None,
                };
                // "pack of 4", "set of 2", "case of 12"
                if matches!(w.as_str(), "pack" | "set" | "case" | "box")
                    && word_at(toks, i + 1) == Some("of")
                    && let Some(Tok::Num(v, _)) = toks.get(i + 2)
                {
                    m.counts.push(*v);
                    used[i..i + 3].iter_mut().for_each(|u| *u = true);
                    i += 3;
                    continue;
                }
                if w == "pair" || (item_side && w == "single") {
                    m.counts.push(if w == "pair" { 2.0 } else { 1.0 });
                    used[i] = true;
                } else if w == "half" && word_at(toks, i + 1) == Some("gallon") {
                    m.quantities.push(Quantity { readings: vec![(Dim::Volume, 1892.7)], text: "half gallon".into() });
                    used[i..i + 2].iter_mut().for_each(|u| *u = true);
                    i += 2;
                    continue;
                } else if w == "size"
                    && let Some(v) = next_num
                {
                    m.sizes.push(fmt_num(v));
                    used[i..i + 2].iter_mut().for_each(|u| *u = true);
                    i += 2;
                    continue;
                } else if let Some((_, s)) = LETTER_SIZES.iter().find(|(k, _)| k == w)
                    && !(i > 0 && matches!(&toks[i - 1], Tok::Num(_, n) if glued.contains(&(n.clone(), w.clone()))))
                {
                    m.sizes.push(s.to_string());
                    used[i] = true;
                } else if w == "x" && word_at(toks, i + 1).is_some_and(|n| n == "large" || n == "small") {
                    m.sizes.push(if word_at(toks, i + 1) == Some("large") { "xl" } else { "xs" }.into());
                    used[i..i + 2].iter_mut().for_each(|u| *u = true);
                    i += 2;
                    continue;
                } else if w == "xx" && word_at(toks, i + 1) == Some("large") {
                    m.sizes.push("xxl".into());
                    used[i..i + 2].iter_mut().for_each(|u| *u = true);
                    i += 2;
                    continue;
                } else if BED_SIZES.contains(&w.as_str()) {
                    m.sizes.push(w.clone());
                    used[i] = true;
                } else if item_side && matches!(w.as_str(), "small" | "medium" | "large") {
                    m.sizes.push(w[..1].to_string());
                } else if item_side
                    && matches!(w.as_str(), "s" | "m" | "l")
                    && !(i > 0 && matches!(toks[i - 1], Tok::Num(..)))
                {
                    // A lone letter on the item side ("纸尿裤 L 64片"); "4L" was a unit above.
                    m.sizes.push(w.clone());
                } else if matches!(w.as_str(), "s" | "m" | "l") && toks.get(i + 1) == Some(&Tok::Cjk('码')) {
                    m.sizes.push(w.clone());
                    used[i..i + 2].iter_mut().for_each(|u| *u = true);
                }
            }
            Tok::Cjk(c) => {
                if let Some(v) = cjk_numeral(*c) {
                    if let Some((unit, n)) = unit_at(toks, i + 1).filter(|(u, _)| *u == "层") {
                        m.quantities.push(Quantity { readings: vec![(Dim::Tiers, v)], text: format!("{v} {unit}") });
                        used[i..i + 1 + n].iter_mut().for_each(|u| *u = true);
                        i += 1 + n;
                        continue;
                    }
                    if count_word_at(toks, i + 1) && *c != '双' {
                        m.counts.push(v);
                        used[i..i + 2].iter_mut().for_each(|u| *u = true);
                        i += 2;
                        continue;
                    }
                }
            }
        }
        i += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------
// Lexicons: colors, materials, audience, features, brand aliases

/// Color families: the first spelling names the family.
const COLORS: &[&[&str]] = &[
    &["white", "ivory", "cream", "off white", "starlight", "白色", "米白"],
    &["black", "onyx", "obsidian", "midnight", "jet black", "黑色", "黑棕色", "雅丹黑"],
    &["brown", "chestnut", "cognac", "tan", "mocha", "espresso", "chocolate", "camel", "棕色", "咖啡色", "驼色"],
    &["gray", "grey", "graphite", "charcoal", "space gray", "heather gray", "灰色", "深空灰色"],
    &["red", "burgundy", "maroon", "红色"],
    &["pink", "rose", "粉色"],
    &["blue", "navy", "teal", "turquoise", "蓝色"],
    &["green", "olive", "sage", "agave green", "绿色"],
    &["yellow", "mustard", "黄色"],
    &["purple", "lavender", "lilac", "紫色", "紫红色"],
    &["silver", "银色"],
    &["gold", "金色"],
    &["multicolor", "assorted", "tri-color", "tri color", "variety"],
];

const MATERIALS: &[&[&str]] = &[
    &["cotton", "percale", "纯棉", "棉"],
    &["leather", "真皮"],
    &["stainless steel", "steel", "不锈钢"],
    &["cast iron", "铸铁"],
    &["ceramic", "stoneware", "porcelain", "陶瓷"],
    &["wool", "merino", "cashmere", "羊毛"],
    &["down", "goose down", "羽绒"],
    &["polyester", "microfiber", "down alternative", "聚酯纤维"],
    &["glass", "玻璃"],
    &["plastic", "tritan", "melamine", "塑料"],
    &["silicone", "硅胶"],
    &["wood", "wooden", "oak", "walnut", "实木"],
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Men,
    Women,
    Kids,
    Adults,
}

impl Audience {
    fn name(self) -> &'static str {
        match self {
            Audience::Men => "men",
            Audience::Women => "women",
            Audience::Kids => "kids",
            Audience::Adults => "adults",
        }
    }
}

const AUDIENCE_WORDS: &[(&str, Audience)] = &[
    ("men", Audience::Men),
    ("mens", Audience::Men),
    ("man", Audience::Men),
    ("male", Audience::Men),
    ("男", Audience::Men),
    ("women", Audience::Women),
    ("womens", Audience::Women),
    ("woman", Audience::Women),
    ("ladies", Audience::Women),
    ("female", Audience::Women),
    ("女", Audience::Women),
    ("kids", Audience::Kids),
    ("kid", Audience::Kids),
    ("children", Audience::Kids),
    ("youth", Audience::Kids),
    ("boys", Audience::Kids),
    ("girls", Audience::Kids),
    ("toddler", Audience::Kids),
    ("toddlers", Audience::Kids),
    ("儿", Audience::Kids),
    ("童", Audience::Kids),
    ("adult", Audience::Adults),
    ("adults", Audience::Adults),
];

/// A feature the query requires: what says the item has it, what says it has not.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    pub name: String,
    yes: Vec<String>,
    no: Vec<String>,
}

/// (name, phrases that trigger it in a query and confirm it in an item, phrases that deny it).
const FEATURES: &[(&str, &[&str], &[&str])] = &[
    (
        "fragrance free",
        &["fragrance free", "fragrance-free", "unscented", "fragrance and paraben free", "无香精", "无香料", "无香"],
        &["scented", "scent", "fragrance", "香味", "玫瑰香", "香型", "香精"],
    ),
    (
        "sugar free",
        &[
            "sugar free",
            "sugar-free",
            "zero sugar",
            "no sugar",
            "diet",
            "zero",
            "无糖",
            "零糖",
            "0糖",
            "0%蔗糖",
            "零度",
        ],
        &["classic", "original taste", "regular", "原味"],
    ),
    ("unsweetened", &["unsweetened", "no sugar added"], &["original", "sweetened", "vanilla"]),
    ("decaf", &["decaf", "decaffeinated", "低因", "无咖啡因"], &[]),
    ("sulfate free", &["sulfate free", "sulfate-free", "无硫酸盐"], &[]),
    ("no pulp", &["no pulp", "pulp free", "pulp-free", "无果肉"], &["some pulp", "with pulp", "pulp"]),
    ("full synthetic", &["full synthetic", "fully synthetic", "全合成"], &["synthetic blend", "conventional"]),
];

/// Chinese (and other) spellings of brands whose list name is Latin: queries and titles
/// write both ("耐克" / "Nike"). Lowercase on the Latin side.
const BRAND_ALIASES: &[(&str, &str)] = &[
    ("耐克", "nike"),
    ("阿迪达斯", "adidas"),
    ("苹果", "apple"),
    ("小米", "xiaomi"),
    ("华为", "huawei"),
    ("戴森", "dyson"),
    ("多芬", "dove"),
    ("帮宝适", "pampers"),
    ("得伟", "dewalt"),
    ("皇家", "royal canin"),
    ("美的", "midea"),
    ("优衣库", "uniqlo"),
    ("索尼", "sony"),
    ("三星", "samsung"),
    ("雀巢", "nespresso"),
    ("自然之宝", "nature's bounty"),
];

/// Words that are not the product type: function words and packaging.
#[rustfmt::skip]
const STOP: &[&str] = &[
    "a", "an", "and", "the", "of", "for", "with", "in", "on", "to", "by", "new", "best", "set", "pack", "size",
    "bag", "s", "t", "inch", "non", "oz", "free", "no", "pair", "count",
];
/// Product types sold for another product; a query whose type is one of these wants the
/// accessory.
const ACCESSORY_MARKERS: &[&str] = &["for", "compatible", "fits", "适用", "适配", "兼容"];
/// Tier words: a model's variant ("4070 Ti" is not "4070 Ti Super", "15 Pro" not "15 Pro Max"),
/// and generations written as Roman numerals ("Z6 III" is not "Z6 II", "Alpha 7 IV").
#[rustfmt::skip]
const TIERS: &[&str] = &[
    "pro", "max", "plus", "ultra", "mini", "lite", "se", "air", "ti", "super", "xl", "oled", "evo", "fe", "neo",
    "ii", "iii", "iv",
];

/// Nouns of parts and accessories: a title naming one after the queried product type
/// ("Instant Pot Sealing Rings", "戴森吹风机 收纳支架") sells the part, not the product.
#[rustfmt::skip]
const PART_NOUNS: &[&str] = &[
    "case", "cover", "stand", "mount", "holder", "lid", "strap", "pad", "pads", "liner", "liners", "bracket",
    "protector", "ring", "rings", "mat", "sleeve", "lace", "laces", "storage", "organizer",
    "支架", "收纳", "杯套", "内胆", "保护套", "配件", "替换", "滤芯",
];

/// Product type synonyms (same thing, other words), all lowercase singulars.
const TYPE_SYNONYMS: &[&[&str]] = &[
    &["bookshelf", "bookcase", "书架"],
    &["t-shirt", "tee", "tshirt", "shirt", "t恤"],
    &["hoodie", "sweatshirt"],
    &["sneaker", "shoe", "鞋"],
    &["moisturizer", "cream", "lotion"],
    &["diaper", "纸尿裤", "尿不湿"],
    &["dumbbell", "weight"],
    &["phone", "smartphone", "手机"],
    &["charger", "充电器", "充电头"],
    &["电饭煲", "电饭锅"],
    &["手机壳", "保护壳", "保护套"],
    &["钢化膜", "玻璃膜"],
    &["k-cup", "pod"],
    &["animal", "plush", "毛绒"],
];

// ---------------------------------------------------------------------------------------
// Text views

/// Tokens of an item's or query's text as plain strings ("iphone", "15", "手"), the form the
/// model and type checks compare.
fn plain(toks: &[Tok]) -> Vec<String> {
    toks.iter()
        .map(|t| match t {
            Tok::Num(_, s) => s.clone(),
            Tok::Word(w) => w.clone(),
            Tok::Cjk(c) => c.to_string(),
        })
        .collect()
}

/// Finds the phrases of a lexicon in a lowercase text (whole words for Latin phrases):
/// indices of the families found, in order of first appearance.
fn families(text: &str, lexicon: &[&[&str]]) -> Vec<usize> {
    let mut found: Vec<(usize, usize)> = Vec::new();
    for (f, spellings) in lexicon.iter().enumerate() {
        if let Some(at) = spellings.iter().filter_map(|s| find_phrase(text, s)).min() {
            found.push((at, f));
        }
    }
    found.sort();
    found.into_iter().map(|(_, f)| f).collect()
}

/// Byte offset of `phrase` in `text` as whole words (a CJK phrase may sit anywhere).
fn find_phrase(text: &str, phrase: &str) -> Option<usize> {
    let cjk = phrase.chars().any(is_cjk);
    let mut from = 0;
    while let Some(pos) = text[from..].find(phrase) {
        let at = from + pos;
        if cjk || crate::text::at_word_boundary(text, at, at + phrase.len()) {
            return Some(at);
        }
        from = at + phrase.len().max(1);
        while !text.is_char_boundary(from) {
            from += 1;
        }
    }
    None
}

fn audiences(text: &str, toks: &[Tok]) -> Vec<Audience> {
    let mut out = Vec::new();
    for t in toks {
        let key = match t {
            Tok::Word(w) => w.clone(),
            Tok::Cjk(c) => c.to_string(),
            Tok::Num(..) => continue,
        };
        if let Some((_, a)) = AUDIENCE_WORDS.iter().find(|(w, _)| *w == key)
            && !out.contains(a)
        {
            out.push(*a);
        }
    }
    if find_phrase(text, "unisex").is_some() {
        out.extend([Audience::Men, Audience::Women]);
    }
    out
}

/// A model number of the query: its tokens ("iphone", "15", "pro"), the core without tier
/// words, and the tiers.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelKey {
    pub text: String,
    core: Vec<String>,
    tiers: Vec<String>,
}

fn is_num(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_digit())
}

/// Model numbers among the unused tokens: a number with the word before it when short
/// ("iPhone 15", "飞马40"), a long number alone ("75257"), letters glued to digits ("S24",
/// "WH-1000XM5", "67XL"), each with the tier words after it.
fn models(text: &str, toks: &[Tok], used: &mut [bool]) -> Vec<ModelKey> {
    let p = plain(toks);
    let glued = glued_pairs(text);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if used[i] || !matches!(toks[i], Tok::Num(..)) || p[i].contains('.') || p[i].contains('/') {
            i += 1;
            continue;
        }
        let mut start = i;
        // Letters glued before the number ("s24", "wh1000xm5", "tn-760"), or a word before a
        // short number ("iphone 15", "小米14": a brand's word too).
        if i > 0 {
            let prev_glued = glued.contains(&(p[i - 1].clone(), p[i].clone()));
            match &toks[i - 1] {
                Tok::Word(w) if prev_glued || (p[i].len() <= 2 && !STOP.contains(&w.as_str())) => start = i - 1,
                Tok::Cjk(_) if p[i].len() <= 2 => {
                    start = i - 1;
                    if i > 1 && matches!(toks[i - 2], Tok::Cjk(_)) {
                        start = i - 2;
                    }
                }
                _ => {}
            }
        }
        let mut end = i + 1;
        // Glued letters and digits after it: "1000xm5", "67xl", "3s".
        while end < toks.len() && !used[end] && glued.contains(&(p[end - 1].clone(), p[end].clone())) {
            end += 1;
        }
        let mut core: Vec<String> = p[start..end].to_vec();
        let mut tiers = Vec::new();
        // A glued tier ("67xl") is a tier.
        while core.len() > 1 && core.last().is_some_and(|t| TIERS.contains(&t.as_str())) {
            tiers.insert(0, core.pop().unwrap_or_default());
        }
        while end < toks.len() && !used[end] && TIERS.contains(&p[end].as_str()) {
            tiers.push(p[end].clone());
            end += 1;
        }
        // A lone short number is a count or a size, not a model ("5 shelf" was taken already).
        if core.len() == 1 && p[i].len() < 3 {
            i += 1;
            continue;
        }
        used[start..end].iter_mut().for_each(|u| *u = true);
        // A short line name before a long number ("RTX 4070", "HP 6755") names the model,
        // not the product type; it stays out of the core, which titles may write without it.
        if start == i && i > 0 && matches!(&toks[i - 1], Tok::Word(w) if w.len() <= 4 && !STOP.contains(&w.as_str())) {
            used[i - 1] = true;
        }
        let text = [core.clone(), tiers.clone()].concat().join(" ");
        out.push(ModelKey { text, core, tiers });
        i = end;
    }
    out
}

/// Adjacent (letters, digits) or (digits, letters) pairs written without a space or with a
/// hyphen ("S24", "WH-1000XM5", "TN-760"), as lowercase token strings.
fn glued_pairs(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')' || c == '/') {
        let toks = plain(&lex(word));
        for w in toks.windows(2) {
            if is_num(&w[0]) != is_num(&w[1]) {
                out.push((w[0].clone(), w[1].clone()));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The query

/// The product the query asks for: its words, the head (last) word, and whether it is an
/// accessory for another product.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductType {
    pub words: Vec<String>,
    pub head: String,
}

/// What the query asks of an item, by kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryConstraints {
    pub brands: Vec<String>,
    pub models: Vec<ModelKey>,
    pub quantities: Vec<Quantity>,
    pub counts: Vec<f64>,
    pub sizes: Vec<String>,
    /// Family indices into the color lexicon.
    colors: Vec<usize>,
    materials: Vec<usize>,
    pub audience: Option<Audience>,
    pub features: Vec<Feature>,
    pub product: Option<ProductType>,
}

impl QueryConstraints {
    /// Reads a query; `brands` are the brand names found in it by the brand matcher.
    pub fn parse(query: &str, brands: &[String]) -> QueryConstraints {
        let text = query.to_lowercase();
        let toks = lex(&text);
        let p = plain(&toks);
        let mut used = vec![false; toks.len()];
        let mut q = QueryConstraints::default();

        // Brands, with their other-script spellings; their tokens are not the product type.
        let mut brand_names: Vec<String> = brands.iter().map(|b| b.to_lowercase()).collect();
        for (alias, latin) in BRAND_ALIASES {
            if text.contains(alias) && !brand_names.iter().any(|b| b == latin) {
                brand_names.push(latin.to_string());
            }
        }
        for b in &brand_names {
            mark_phrase(&p, &plain(&lex(b)), &mut used);
        }
        for (alias, latin) in BRAND_ALIASES {
            if brand_names.iter().any(|b| b == latin) {
                mark_phrase(&p, &plain(&lex(alias)), &mut used);
            }
        }
        q.brands = brand_names;

        // Features before colors and materials ("fragrance free" is not a fragrance).
        for (name, yes, no) in FEATURES {
            if yes.iter().any(|y| find_phrase(&text, y).is_some()) {
                q.features.push(Feature {
                    name: name.to_string(),
                    yes: yes.iter().map(|s| s.to_string()).collect(),
                    no: no.iter().map(|s| s.to_string()).collect(),
                });
                for y in yes.iter() {
                    mark_phrase(&p, &plain(&lex(y)), &mut used);
                }
            }
        }
        let m = measures(&toks, &mut used, false, &glued_pairs(&text));
        (q.quantities, q.counts, q.sizes) = (m.quantities, m.counts, m.sizes);
        q.models = models(&text, &toks, &mut used);
        q.colors = families(&text, COLORS);
        q.materials = families(&text, MATERIALS);
        for lex_ in [COLORS, MATERIALS] {
            for spelling in lex_.iter().flat_map(|f| f.iter()) {
                if find_phrase(&text, spelling).is_some() {
                    mark_phrase(&p, &plain(&lex(spelling)), &mut used);
                }
            }
        }
        let aud = audiences(&text, &toks);
        q.audience = aud.first().copied();
        for (i, t) in p.iter().enumerate() {
            if AUDIENCE_WORDS.iter().any(|(w, _)| w == t) {
                used[i] = true;
            }
        }
        // Chinese audience words are two characters (男士, 女款, 儿童): the second is not a type.
        for i in 1..p.len() {
            if used[i - 1]
                && ["士", "款", "装", "子"].contains(&p[i].as_str())
                && ["男", "女"].contains(&p[i - 1].as_str())
            {
                used[i] = true;
            }
        }
        q.product = product_type(&toks, &p, &used);
        q
    }

    /// The constraints again with more brands: names the caller knows are brands (the items'
    /// brand attributes) that the query spells out as whole words. The brand list behind the
    /// matcher (name-suggestion-index) holds shop and amenity brands, few product brands
    /// ("Gillette", "Purina Pro Plan"), so a request's own items are the better evidence.
    pub fn with_brands_from<'a>(&self, query: &str, names: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let text = query.to_lowercase();
        let mut brands = self.brands.clone();
        let mut added = false;
        for n in names {
            let n = n.trim().to_lowercase();
            // "Generic" is how feeds say "no brand".
            if n.chars().count() >= 2 && n != "generic" && !brands.contains(&n) && find_phrase(&text, &n).is_some() {
                brands.push(n);
                added = true;
            }
        }
        added.then(|| QueryConstraints::parse(query, &brands))
    }

    /// Whether the query constrains nothing that can be checked.
    pub fn is_empty(&self) -> bool {
        self.brands.is_empty()
            && self.models.is_empty()
            && self.quantities.is_empty()
            && self.counts.is_empty()
            && self.sizes.is_empty()
            && self.colors.is_empty()
            && self.materials.is_empty()
            && self.audience.is_none()
            && self.features.is_empty()
            && self.product.is_none()
    }
}

fn mark_phrase(p: &[String], phrase: &[String], used: &mut [bool]) {
    if phrase.is_empty() || phrase.len() > p.len() {
        return;
    }
    for s in 0..=p.len() - phrase.len() {
        if p[s..s + phrase.len()] == *phrase {
            used[s..s + phrase.len()].iter_mut().for_each(|u| *u = true);
        }
    }
}

/// The product type: the unused content words before "for" (English: "loafers for men"),
/// CJK runs of two characters or more as words. The head is the last word of the first run
/// of adjacent type words ("yoga mat" in "yoga mat 6mm non slip"); later words modify it.
fn product_type(toks: &[Tok], p: &[String], used: &[bool]) -> Option<ProductType> {
    let stop_at = p.iter().position(|w| w == "for").unwrap_or(p.len());
    let mut words: Vec<String> = Vec::new();
    let mut head: Option<String> = None;
    let mut run = String::new();
    let mut in_run = false;
    // The unused tokens before "for", then an end marker that closes the last run.
    let free = toks[..stop_at].iter().zip(&used[..stop_at]).map(|(t, &u)| (!u).then_some(t));
    for tok in free.map(Some).chain(std::iter::once(None)) {
        if let Some(Some(Tok::Cjk(c))) = tok {
            run.push(*c);
            continue;
        }
        if run.chars().count() >= 2 {
            words.push(std::mem::take(&mut run));
            in_run = true;
        }
        run.clear();
        match tok {
            Some(Some(Tok::Word(w))) if !STOP.contains(&w.as_str()) && !TIERS.contains(&w.as_str()) => {
                words.push(singular(w).to_string());
                in_run = true;
            }
            _ => {
                if in_run && head.is_none() {
                    head = words.last().cloned();
                }
                in_run = false;
            }
        }
    }
    let head = head.or_else(|| words.last().cloned())?;
    Some(ProductType { words, head })
}

// ---------------------------------------------------------------------------------------
// The item

/// An item read once for every check: title and attributes together (attributes first; a
/// contradiction between them is reported by the checks).
pub struct ItemView {
    text: String,
    /// Lowercase title before an accessory marker ("Case for iPhone 15": "case").
    product_part: String,
    tokens: Vec<String>,
    glued: Vec<(String, String)>,
    measures: Measures,
    brand: Option<String>,
    colors: Vec<usize>,
    materials: Vec<usize>,
    audience: Vec<Audience>,
}

impl ItemView {
    /// `brand`: the item's brand from its attributes or title, if any; `attributes`: the
    /// values of its other attributes.
    pub fn new(title: &str, brand: Option<&str>, attributes: &[(&str, &str)]) -> ItemView {
        let mut text = title.to_lowercase();
        for (k, v) in attributes {
            text.push_str(" | ");
            if *k != "category" {
                text.push_str(&v.to_lowercase());
            }
        }
        let toks = lex(&text);
        let mut used = vec![false; toks.len()];
        let glued = glued_pairs(&text);
        let measures = measures(&toks, &mut used, true, &glued);
        let title_lower = title.to_lowercase();
        let product_part = product_part(&title_lower);
        // An explicit color or material attribute comes first.
        let mut colors = Vec::new();
        let mut materials = Vec::new();
        for (k, v) in attributes {
            let v = v.to_lowercase();
            match *k {
                "color" | "colour" => colors.extend(families(&v, COLORS)),
                "material" => materials.extend(families(&v, MATERIALS)),
                _ => {}
            }
        }
        colors.extend(families(&title_lower, COLORS));
        materials.extend(families(&title_lower, MATERIALS));
        let audience = audiences(&text, &toks);
        ItemView {
            glued,
            tokens: plain(&toks),
            text,
            product_part,
            measures,
            brand: brand.map(str::to_lowercase),
            colors,
            materials,
            audience,
        }
    }
}

/// The part of a lowercase title that names what is sold: before an English accessory
/// marker ("Case for iPhone 15" → "case"); a Chinese one ("倍思 适用苹果15手机壳 透明保护套")
/// only takes out its own segment, since Chinese titles name the product after it.
fn product_part(title: &str) -> String {
    let mut part = title.to_string();
    for m in ["适用", "适配", "兼容"] {
        while let Some(at) = part.find(m) {
            let end = part[at..].find(char::is_whitespace).map_or(part.len(), |e| at + e);
            // "适用苹果15手机壳": the target ends at its model number, the product follows it.
            let segment = &part[at + m.len()..end];
            let keep = match segment.rfind(|c: char| !is_cjk(c)) {
                Some(last) => segment[last..].chars().skip(1).collect::<String>(),
                None => String::new(),
            };
            part.replace_range(at..end, &format!(" {keep} "));
        }
    }
    match ACCESSORY_MARKERS.iter().filter(|m| m.is_ascii()).filter_map(|m| find_phrase(&part, m)).min() {
        Some(at) => part[..at].to_string(),
        None => part,
    }
}

/// One constraint checked: the QE and what the item said.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub kind: EntityKind,
    /// The query's value ("500 ml", "brand apple").
    pub value: String,
    pub qe: f32,
    /// What the item said, for the explanation ("item: 16.9 fl oz").
    pub evidence: String,
    /// The item's own value of the kind, where one was found ("adidas" for brand "nike"):
    /// interventions may name it.
    pub item_value: Option<String>,
}

fn check(kind: EntityKind, value: impl Into<String>, qe: f32, evidence: impl Into<String>) -> Check {
    Check { kind, value: value.into(), qe, evidence: evidence.into(), item_value: None }
}

impl Check {
    fn item_said(mut self, v: impl Into<String>) -> Check {
        self.item_value = Some(v.into());
        self
    }
}

/// Checks every constraint of the query against the item.
pub fn check_item(q: &QueryConstraints, item: &ItemView) -> Vec<Check> {
    let mut out = Vec::new();
    if !q.brands.is_empty() {
        out.push(check_brand(q, item));
    }
    for m in &q.models {
        out.push(check_model(m, item));
    }
    for want in &q.quantities {
        let agree: Vec<Option<bool>> = item.measures.quantities.iter().map(|h| want.agrees(h)).collect();
        let said: Vec<&str> = item
            .measures
            .quantities
            .iter()
            .zip(&agree)
            .filter(|(_, a)| a.is_some())
            .map(|(h, _)| h.text.as_str())
            .collect();
        let (qe, ev) = if agree.contains(&Some(true)) {
            (MATCH, format!("item: {}", said.join(", ")))
        } else if agree.contains(&Some(false)) {
            (CONFLICT, format!("item: {}", said.join(", ")))
        } else {
            (UNKNOWN, "item does not say".into())
        };
        let value = match want.readings.first() {
            Some((d, v)) if want.readings.len() == 1 && !want.text.ends_with(d.unit()) => {
                format!("{} (= {})", want.text, d.show(*v))
            }
            _ => want.text.clone(),
        };
        out.push(check(EntityKind::Size, value, qe, ev));
    }
    for &want in &q.counts {
        let have = &item.measures.counts;
        let (qe, ev) = if have.iter().any(|&h| close(h, want)) {
            (MATCH, format!("item: {}", fmt_num(want)))
        } else if let Some(h) = have.first() {
            (CONFLICT, format!("item: {}", fmt_num(*h)))
        } else if want == 1.0 {
            (0.7, "item does not say (a single unit is the default)".into())
        } else {
            (UNKNOWN, "item does not say".into())
        };
        out.push(check(EntityKind::Count, format!("{} count", fmt_num(want)), qe, ev));
    }
    for want in &q.sizes {
        let have = &item.measures.sizes;
        let (qe, ev) = if have.contains(want) {
            (MATCH, format!("item: {want}"))
        } else if let Some(h) = have.iter().find(|h| is_num(h) == is_num(want) && h.len() <= 5) {
            (CONFLICT, format!("item: {h}"))
        } else {
            (UNKNOWN, "item does not say".into())
        };
        out.push(check(EntityKind::Size, format!("size {want}"), qe, ev));
    }
    for (kind, want, have, lexicon) in [
        (EntityKind::Color, &q.colors, &item.colors, COLORS),
        (EntityKind::Material, &q.materials, &item.materials, MATERIALS),
    ] {
        for &f in want {
            // The item's first-named color (or material) is what it is: "Black/White" is black.
            let (qe, ev) = match have.first() {
                _ if have.first() == Some(&f) => (MATCH, format!("item: {}", lexicon[f][0])),
                _ if kind == EntityKind::Material && have.contains(&f) => (0.8, format!("item: {}", lexicon[f][0])),
                Some(&h) => (CONFLICT, format!("item: {}", lexicon[h][0])),
                None => (UNKNOWN, "item does not say".into()),
            };
            let c = check(kind, lexicon[f][0], qe, ev);
            out.push(match have.first() {
                Some(&h) => c.item_said(lexicon[h][0]),
                None => c,
            });
        }
    }
    if let Some(a) = q.audience {
        let (qe, ev) = if item.audience.contains(&a) {
            (MATCH, format!("item: {}", a.name()))
        } else if let Some(h) = item.audience.first() {
            (CONFLICT, format!("item: {}", h.name()))
        } else {
            (UNKNOWN, "item does not say".into())
        };
        let c = check(EntityKind::Audience, a.name(), qe, ev);
        out.push(match item.audience.first() {
            Some(h) => c.item_said(h.name()),
            None => c,
        });
    }
    for f in &q.features {
        let yes = f.yes.iter().find(|y| find_phrase(&item.text, y).is_some());
        let no = f.no.iter().find(|n| denies(&item.text, n, &f.yes));
        let (qe, ev) = match (yes, no) {
            (Some(y), _) => (MATCH, format!("item: {y}")),
            (None, Some(n)) => (CONFLICT, format!("item: {n}")),
            (None, None) => (FEATURE_SILENT, "item does not claim it".into()),
        };
        out.push(check(EntityKind::Feature, f.name.clone(), qe, ev));
    }
    if let Some(t) = &q.product {
        out.push(check_type(t, item));
    }
    out
}

/// Whether `no` occurs in `text` as a denial: not inside one of the confirming phrases
/// ("fragrance" in "fragrance free" confirms).
fn denies(text: &str, no: &str, yes: &[String]) -> bool {
    let Some(at) = find_phrase(text, no) else { return false };
    !yes.iter().any(|y| find_phrase(text, y).is_some_and(|p| p <= at && at < p + y.len()))
}

fn check_brand(q: &QueryConstraints, item: &ItemView) -> Check {
    let value = q.brands.join(" / ");
    let aliases = |b: &str| -> Vec<String> {
        let mut v = vec![b.to_string()];
        v.extend(BRAND_ALIASES.iter().filter(|(_, l)| *l == b).map(|(a, _)| a.to_string()));
        v
    };
    let named_in = |text: &str| q.brands.iter().any(|b| aliases(b).iter().any(|a| find_phrase(text, a).is_some()));
    let same = |have: &str| {
        q.brands.iter().any(|b| {
            aliases(b).iter().any(|a| {
                let (a, h) = (a.as_str(), have);
                a == h || find_phrase(h, a).is_some() || find_phrase(a, h).is_some()
            })
        })
    };
    // A brand that is also an ordinary word ("apple", "dove", "boss"), found in the title of an
    // item that declares another brand, is most likely the word ("Apple Cinnamon Candle" by
    // Yankee Candle): it is evidence only where it names what the item is made for ("Band
    // compatible with Apple Watch").
    let word_brand = q.brands.iter().all(|b| is_common_word(b));
    let made_for = |text: &str| match word_brand {
        true => {
            ACCESSORY_MARKERS.iter().filter_map(|m| find_phrase(text, m)).min().is_some_and(|at| named_in(&text[at..]))
        }
        false => named_in(text),
    };
    match &item.brand {
        Some(h) => {
            let c = if same(h) {
                check(EntityKind::Brand, value, MATCH, format!("item: {h}"))
            } else if !word_brand && named_in(&item.product_part) {
                check(EntityKind::Brand, value, 0.6, format!("item's brand is {h}, the title names the queried one"))
            } else if made_for(&item.text) {
                check(EntityKind::Brand, value, 0.4, format!("item: {h}, made for the queried brand"))
            } else {
                check(EntityKind::Brand, value, CONFLICT, format!("item: {h}"))
            };
            c.item_said(h.clone())
        }
        None if named_in(&item.product_part) => check(EntityKind::Brand, value, 0.85, "named in the title"),
        None => check(EntityKind::Brand, value, UNKNOWN, "item does not say"),
    }
}

/// Whether a (lowercase) brand name is also a frequent English word.
fn is_common_word(brand: &str) -> bool {
    static WORDS: std::sync::OnceLock<std::collections::HashSet<&'static str>> = std::sync::OnceLock::new();
    WORDS.get_or_init(crate::entities::brands::common_words).contains(brand)
}

fn find_seq(hay: &[String], needle: &[String]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    (0..=hay.len() - needle.len()).find(|&s| hay[s..s + needle.len()] == *needle)
}

fn check_model(m: &ModelKey, item: &ItemView) -> Check {
    let t = &item.tokens;
    let value = m.text.clone();
    let tiers_after =
        |at: usize| -> Vec<String> { t[at..].iter().take_while(|w| TIERS.contains(&w.as_str())).cloned().collect() };
    if let Some(at) = find_seq(t, &m.core) {
        // Every occurrence counts: "Case for iPhone 15 Pro Max, iPhone 15 Pro" fits both.
        let mut s = at;
        let mut seen = Vec::new();
        loop {
            let after = tiers_after(s + m.core.len());
            if after == m.tiers {
                return check(EntityKind::Model, value, MATCH, format!("item: {}", m.text));
            }
            seen.push([m.core.clone(), after].concat().join(" "));
            match find_seq(&t[s + 1..], &m.core) {
                Some(n) => s = s + 1 + n,
                None => break,
            }
        }
        return check(EntityKind::Model, value, 0.1, format!("item: {} (another variant)", seen[0]));
    }
    // The same line with another number ("Pegasus 41" for "Pegasus 40", "RTX 4060").
    if m.core.len() >= 2 && !is_num(&m.core[0]) {
        let family = &m.core[..m.core.len() - 1];
        if let Some(at) = find_seq(t, family)
            && t.get(at + family.len()).is_some_and(|n| is_num(n))
        {
            let other = t[at..(at + family.len() + 1).min(t.len())].join(" ");
            return check(EntityKind::Model, value, CONFLICT, format!("item: {other}"));
        }
    }
    let models_said = item.glued.iter().any(|(a, b)| is_num(a) || is_num(b));
    if models_said {
        check(EntityKind::Model, value, OTHER_MODEL, "item names other model numbers")
    } else {
        check(EntityKind::Model, value, 0.4, "item names no model number")
    }
}

/// Whether `word` (a type word) appears in `text`: as a whole word or its plural, as the
/// end of a compound ("oatmilk"), through a synonym, or for Chinese every character in order.
fn type_word_in(text: &str, word: &str) -> bool {
    let words: Vec<String> = crate::text::words(text).collect();
    let has = |w: &str| -> bool {
        if w.chars().any(is_cjk) {
            return text.contains(w) || in_order(text, w);
        }
        let parts: Vec<String> = crate::text::words(w).collect();
        if parts.len() > 1 {
            let joined = parts.concat();
            return text.contains(&parts.join(" ")) || text.contains(&parts.join("-")) || text.contains(&joined);
        }
        words.iter().any(|x| singular(x) == w || (x.len() > w.len() + 2 && x.ends_with(w)))
    };
    if has(word) {
        return true;
    }
    TYPE_SYNONYMS.iter().filter(|s| s.contains(&word)).flat_map(|s| s.iter()).any(|s| *s != word && has(s))
}

/// The text after the first mention of a type word (its compound or synonym included).
fn after_type_word(text: &str, word: &str) -> Option<String> {
    let mut spellings: Vec<&str> = vec![word];
    spellings.extend(TYPE_SYNONYMS.iter().filter(|s| s.contains(&word)).flat_map(|s| s.iter().copied()));
    let lower = text.to_lowercase();
    let found = |w: &str| find_phrase(&lower, w).or_else(|| find_phrase(&lower, &format!("{w}s")).map(|at| at + 1));
    spellings.iter().filter_map(|w| found(w).map(|at| at + w.len())).min().map(|end| lower[end..].to_string())
}

/// Every character of `w` in `text`, in order ("跑鞋" in "公路跑步鞋").
fn in_order(text: &str, w: &str) -> bool {
    let mut rest = text;
    for c in w.chars() {
        match rest.find(c) {
            Some(at) => rest = &rest[at + c.len_utf8()..],
            None => return false,
        }
    }
    true
}

fn check_type(t: &ProductType, item: &ItemView) -> Check {
    let value = t.words.join(" ");
    let title_has = |w: &str| type_word_in(&item.text, w);
    let head_in_product = type_word_in(&item.product_part, &t.head);
    if head_in_product {
        // A part named after the product ("Tumbler Lid Replacement") is a part.
        let after_head = after_type_word(&item.product_part, &t.head);
        if let Some(part) = PART_NOUNS.iter().find(|p| {
            !t.words.iter().any(|w| w.contains(*p))
                && after_head.as_deref().is_some_and(|a| find_phrase(a, p).is_some())
        }) {
            return check(EntityKind::Category, value, ACCESSORY, format!("item is a {part} for a {}", t.head));
        }
        let others = t.words.iter().filter(|w| **w != t.head).count();
        let found = t.words.iter().filter(|w| **w != t.head && type_word_in(&item.product_part, w)).count();
        let qe = if others == 0 { MATCH } else { 0.7 + 0.25 * found as f32 / others as f32 };
        return check(EntityKind::Category, value, qe, format!("item is a {}", t.head));
    }
    if title_has(&t.head) {
        return check(EntityKind::Category, value, ACCESSORY, format!("item is made for a {}", t.head));
    }
    check(EntityKind::Category, value, TYPE_SILENT, format!("item does not say it is a {}", t.head))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> QueryConstraints {
        QueryConstraints::parse(s, &[])
    }

    fn qe(query: &str, title: &str, kind: EntityKind) -> f32 {
        let c = check_item(&q(query), &ItemView::new(title, None, &[]));
        c.iter().find(|c| c.kind == kind).unwrap_or_else(|| panic!("no {kind:?} check in {c:?}")).qe
    }

    fn brand_qe(query_brand: &str, title: &str, declared: &str) -> f32 {
        let q = QueryConstraints::parse(&format!("{query_brand} thing"), &[query_brand.to_string()]);
        let c = check_item(&q, &ItemView::new(title, Some(declared), &[]));
        c.iter().find(|c| c.kind == EntityKind::Brand).expect("a brand check").qe
    }

    #[test]
    fn a_brand_that_is_a_word_needs_evidence_beside_another_declared_brand() {
        // The word, in a title whose item declares its own brand: a conflict.
        assert_eq!(brand_qe("apple", "Apple Cinnamon Scented Jar Candle, 22 oz", "Yankee Candle"), CONFLICT);
        assert_eq!(brand_qe("boss", "Boss Level Gaming Chair", "GTRACING"), CONFLICT);
        // Named as what the item is made for: the accessory reading stays.
        assert_eq!(brand_qe("apple", "Nike Sport Band Compatible with Apple Watch 45mm", "Generic"), 0.4);
        // The declared brand itself, and a name that is no word, are read as before.
        assert_eq!(brand_qe("apple", "Apple Watch Sport Band 45mm", "Apple"), MATCH);
        assert_eq!(brand_qe("sony", "Sony WH-1000XM5 Headphones", "Renewed Store"), 0.6);
        assert_eq!(brand_qe("sony", "Ear Pads for Sony WH-1000XM5", "Geekria"), 0.4);
    }

    #[test]
    fn units_convert() {
        assert_eq!(qe("body wash 500 ml", "Body Wash, 16.9 fl oz", EntityKind::Size), MATCH);
        assert_eq!(qe("body wash 500 ml", "Body Wash, 22 fl oz", EntityKind::Size), CONFLICT);
        assert_eq!(qe("vitamin d3 5000 iu", "Vitamin D3 125 mcg Softgels", EntityKind::Size), MATCH);
        assert_eq!(qe("water bottle 32 oz", "Water Bottle 946 ml", EntityKind::Size), MATCH);
        assert_eq!(qe("circular saw blade 7 1/4 inch", "Saw Blade 7-1/4-Inch", EntityKind::Size), MATCH);
        assert_eq!(qe("不锈钢保温杯 500ml", "保温杯 0.5L", EntityKind::Size), MATCH);
        assert_eq!(qe("shampoo 500 ml", "Shampoo", EntityKind::Size), UNKNOWN);
    }

    #[test]
    fn counts_and_sizes() {
        assert_eq!(qe("baby bottles 4 pack", "Baby Bottle, 9oz, 4pk", EntityKind::Count), MATCH);
        assert_eq!(qe("baby bottles 4 pack", "Baby Bottles, 2 Pack", EntityKind::Count), CONFLICT);
        assert_eq!(qe("无糖可乐 12罐", "可乐 330ml*12罐", EntityKind::Count), MATCH);
        assert_eq!(qe("得伟 20V 电池 两块装", "得伟 电池 单块", EntityKind::Count), CONFLICT);
        assert_eq!(qe("hoodie xl", "Hoodie, X-Large", EntityKind::Size), MATCH);
        assert_eq!(qe("hoodie xl", "Hoodie, Small", EntityKind::Size), CONFLICT);
        assert_eq!(qe("white bookshelf 5 shelf", "5-Tier Open Shelf Bookcase, White", EntityKind::Size), MATCH);
    }

    #[test]
    fn model_variants() {
        let m = |query: &str, title: &str| qe(query, title, EntityKind::Model);
        assert_eq!(m("rtx 4070 ti graphics card", "MSI GeForce RTX 4070 Ti 12GB GDDR6X 192-Bit"), MATCH);
        assert!(m("rtx 4070 ti graphics card", "GIGABYTE GeForce RTX 4070 Ti SUPER 16G") < 0.2);
        assert!(m("rtx 4070 ti graphics card", "ZOTAC GeForce RTX 4070 SUPER 12GB") < 0.2);
        assert!(m("iphone 15 pro case", "Case for iPhone 15 Pro Max") < 0.2);
        assert_eq!(m("iphone 15 pro case", "Case Compatible with iPhone 15 Pro - Clear"), MATCH);
        assert_eq!(m("sony wh-1000xm5", "Sony WH1000XM5/S Headphones"), MATCH);
        assert!(m("sony wh-1000xm5", "Sony WH-1000XM4 Headphones") < 0.3);
        assert!(m("nike pegasus 40", "Nike Pegasus 41 Road Running Shoes") < 0.2);
        assert_eq!(m("耐克 跑鞋 飞马40", "耐克 NIKE 飞马40 男鞋"), MATCH);
        // Generations as Roman numerals, spaced or glued.
        assert_eq!(m("nikon z6 iii camera body", "Nikon Z6III Mirrorless Camera Body"), MATCH);
        assert_eq!(m("nikon z6 iii camera body", "Nikon Z 6III Mirrorless Camera Body"), MATCH);
        assert!(m("nikon z6 iii camera body", "Nikon Z6II Full Frame Mirrorless Camera Body") < 0.2);
        assert!(m("sony a7 iv", "Sony Alpha A7 III Mirrorless Camera") < 0.2);
        assert_eq!(q("rtx 4070 ti graphics card").product.unwrap().head, "card");
    }

    #[test]
    fn accessories_features_and_audience() {
        let t = |query: &str, title: &str| qe(query, title, EntityKind::Category);
        assert_eq!(t("sony wh-1000xm5 headphones", "Ear Pads for Sony WH-1000XM5 Headphones"), ACCESSORY);
        assert_eq!(t("iphone 15 pro case", "Spigen Case Compatible with iPhone 15 Pro"), MATCH);
        assert_eq!(t("苹果15手机壳", "倍思 适用苹果15手机壳 透明"), MATCH);
        let f = |query: &str, title: &str| qe(query, title, EntityKind::Feature);
        assert_eq!(f("fragrance free moisturizer", "Moisturizing Cream, Fragrance Free"), MATCH);
        assert_eq!(f("fragrance free moisturizer", "Lotion, Lightly Scented"), CONFLICT);
        assert_eq!(f("无糖可乐", "可口可乐 零度 无糖 汽水"), MATCH);
        assert_eq!(f("decaf coffee pods", "House Blend Coffee Pods"), FEATURE_SILENT);
        let a = |query: &str, title: &str| qe(query, title, EntityKind::Audience);
        assert_eq!(a("loafers for men", "Women's Loafer"), CONFLICT);
        assert_eq!(a("loafers for men", "Men's Penny Loafer"), MATCH);
        assert_eq!(a("男士 T恤", "优衣库 女装 T恤"), CONFLICT);
    }

    #[test]
    fn odd_text_does_not_panic() {
        for s in ["", "   ", "1/0", "5,", ",5", "…", "x 5 5 5", "é5é", "5/5/5", "+", "1.2.3", "ｘｌ", "\u{4e00}"]
        {
            let c = q(s);
            let _ = check_item(&c, &ItemView::new(s, Some(s), &[("color", s)]));
        }
    }
}
