//! Items, queries and their entities.
//!
//! An item is JSON with a `title` and optional attributes. Attributes given explicitly win;
//! a kind not given is extracted from the title: brands by the NSI brand matcher
//! ([`brands`]), colors, materials, sizes and model numbers by rules ([`rules`]), the category
//! by the nearest taxonomy path ([`taxonomy`], done by the pipeline, which owns the encoder).
//! The same extraction runs on the query.

pub mod brands;
pub mod matcher;
pub mod rules;
pub mod taxonomy;

use crate::text::{MAX_KEY_BYTES, MAX_TITLE_BYTES, MAX_VALUE_BYTES, truncate};
use crate::vocab::BrandList;
use anyhow::{Result, anyhow, bail};
use brands::BrandMatcher;
use rules::Rules;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Most attributes one item may carry.
pub const MAX_ATTRIBUTES: usize = 32;
/// Most entities of one kind taken from one text (a title listing ten colors is a list, not
/// ten constraints).
pub const MAX_PER_KIND: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityKind {
    Brand,
    Category,
    Model,
    Color,
    Material,
    Size,
    /// An attribute EBRM has no rule for ("pattern": "striped"); its value reads "key: value".
    Other,
    /// How many units are sold together ("4 pack", 12罐).
    Count,
    /// Who the product is for (men, women, kids).
    Audience,
    /// A required feature or free-from claim ("fragrance free", "decaf", 无糖).
    Feature,
    /// The encoder's similarity of the whole query and the whole item: the semantic prior.
    Similarity,
}

impl EntityKind {
    pub const COUNT: usize = 11;
    pub const ALL: [EntityKind; EntityKind::COUNT] = [
        EntityKind::Brand,
        EntityKind::Category,
        EntityKind::Model,
        EntityKind::Color,
        EntityKind::Material,
        EntityKind::Size,
        EntityKind::Other,
        EntityKind::Count,
        EntityKind::Audience,
        EntityKind::Feature,
        EntityKind::Similarity,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            EntityKind::Brand => "brand",
            EntityKind::Category => "category",
            EntityKind::Model => "model",
            EntityKind::Color => "color",
            EntityKind::Material => "material",
            EntityKind::Size => "size",
            EntityKind::Other => "other",
            EntityKind::Count => "count",
            EntityKind::Audience => "audience",
            EntityKind::Feature => "feature",
            EntityKind::Similarity => "similarity",
        }
    }

    /// The kind an attribute name stands for; `None` for names EBRM has no rule for.
    pub fn from_attribute(key: &str) -> Option<EntityKind> {
        Some(match key.trim().to_lowercase().replace([' ', '-'], "_").as_str() {
            "brand" | "brand_name" | "manufacturer" => EntityKind::Brand,
            "category" | "category_path" | "product_type" => EntityKind::Category,
            "model" | "model_number" | "mpn" => EntityKind::Model,
            "color" | "colour" => EntityKind::Color,
            "material" => EntityKind::Material,
            "size" => EntityKind::Size,
            "gender" | "audience" | "department" => EntityKind::Audience,
            _ => return None,
        })
    }
}

/// Where an entity came from: what an explanation tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// An attribute of the item.
    Explicit,
    /// Extracted from the item's title.
    Title,
    /// Extracted from the query.
    Query,
    /// Stands for a kind the query constrains and the item lacks (see the pipeline).
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entity {
    pub kind: EntityKind,
    pub value: String,
    pub source: Source,
}

impl Entity {
    pub fn new(kind: EntityKind, value: impl Into<String>, source: Source) -> Entity {
        Entity { kind, value: value.into(), source }
    }

    /// The text the QE model reads: "brand: nike", "category: Apparel & Accessories > Shoes";
    /// `other` entities already read "key: value".
    pub fn text(&self) -> String {
        match self.kind {
            EntityKind::Other => self.value.clone(),
            kind => format!("{}: {}", kind.name(), self.value),
        }
    }
}

/// An item to rank. Build it with [`Item::new`] or parse it with [`Item::from_json`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    /// Attribute name (lowercase) → value. Names EBRM knows (brand, category, model, color,
    /// material, size and their synonyms) become entities of that kind; any other becomes an
    /// `other` entity reading "name: value".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

impl Item {
    pub fn new(title: impl Into<String>) -> Item {
        Item { id: None, title: title.into(), price: None, attributes: BTreeMap::new() }
    }

    pub fn with_attribute(mut self, key: &str, value: &str) -> Item {
        self.attributes.insert(key.trim().to_lowercase(), value.to_string());
        self
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Item {
        self.id = Some(id.into());
        self
    }

    /// Parses one item from JSON text (see [`Item::from_value`]).
    pub fn from_json(json: &[u8]) -> Result<Item> {
        let value: Value = serde_json::from_slice(json).map_err(|e| anyhow!("not valid JSON: {e}"))?;
        Item::from_value(&value)
    }

    /// An item from a JSON object:
    ///
    /// - `title` (string, required, non-blank; cut to 2,048 bytes),
    /// - `id` (string or number, optional), `price` (non-negative number, optional),
    /// - `category` (a taxonomy path string, or an array of its levels),
    /// - `brand`, `model`, `color`/`colour`, `material`, `size` at the top level, and any
    ///   attribute in an `attributes` object (string, number or boolean values).
    ///
    /// Other top-level fields (descriptions, images, ...) are ignored. Values are cut to 256
    /// bytes; blank values are dropped; attribute names over 64 bytes, more than 32
    /// attributes, or values of the wrong type are errors naming the field.
    pub fn from_value(value: &Value) -> Result<Item> {
        let Value::Object(obj) = value else { bail!("an item must be a JSON object, got {}", type_name(value)) };
        let title = match obj.get("title") {
            None | Some(Value::Null) => bail!("the item has no 'title'"),
            Some(Value::String(s)) if s.trim().is_empty() => bail!("the item's 'title' is empty"),
            Some(Value::String(s)) => truncate(s.trim(), MAX_TITLE_BYTES).to_string(),
            Some(v) => bail!("the item's 'title' must be a string, got {}", type_name(v)),
        };
        let id = match obj.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(truncate(s, MAX_VALUE_BYTES).to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(v) => bail!("the item's 'id' must be a string or a number, got {}", type_name(v)),
        };
        let price = match obj.get("price") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(p) if p.is_finite() && p >= 0.0 => Some(p),
                _ => bail!("the item's 'price' must be a non-negative number, got {n}"),
            },
            Some(v) => bail!("the item's 'price' must be a number, got {}", type_name(v)),
        };
        let mut item = Item { id, title, price, attributes: BTreeMap::new() };
        for (key, v) in obj {
            if key == "category" {
                let path = match v {
                    Value::Array(levels) => levels
                        .iter()
                        .map(|l| l.as_str().ok_or_else(|| anyhow!("the item's 'category' levels must be strings")))
                        .collect::<Result<Vec<_>>>()?
                        .join(" > "),
                    v => scalar(v)
                        .ok_or_else(|| anyhow!("the item's 'category' must be a string or an array of strings"))?,
                };
                item.set_attribute("category", &path)?;
            } else if key != "attributes" && EntityKind::from_attribute(key).is_some() {
                let s = scalar(v).ok_or_else(|| anyhow!("the item's '{key}' must be a string, number or boolean"))?;
                item.set_attribute(key, &s)?;
            }
        }
        match obj.get("attributes") {
            None | Some(Value::Null) => {}
            Some(Value::Object(attrs)) => {
                for (key, v) in attrs {
                    let s = scalar(v).ok_or_else(|| {
                        anyhow!("attribute '{}' must be a string, number or boolean", truncate(key, 64))
                    })?;
                    item.set_attribute(key, &s)?;
                }
            }
            Some(v) => bail!("the item's 'attributes' must be an object, got {}", type_name(v)),
        }
        Ok(item)
    }

    fn set_attribute(&mut self, key: &str, value: &str) -> Result<()> {
        let key = key.trim().to_lowercase();
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            bail!("attribute name '{}' is empty or longer than {MAX_KEY_BYTES} bytes", truncate(&key, MAX_KEY_BYTES));
        }
        let value = truncate(value.trim(), MAX_VALUE_BYTES);
        if value.is_empty() {
            return Ok(());
        }
        if !self.attributes.contains_key(&key) && self.attributes.len() >= MAX_ATTRIBUTES {
            bail!("the item has more than {MAX_ATTRIBUTES} attributes");
        }
        self.attributes.insert(key, value.to_string());
        Ok(())
    }

    /// The explicit category, if any.
    pub fn category(&self) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| EntityKind::from_attribute(k) == Some(EntityKind::Category))
            .map(|(_, v)| v.as_str())
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Extraction of every kind except the category (which needs the encoder: the pipeline adds
/// it).
pub struct Extractor {
    brands: BrandMatcher,
    rules: Rules,
}

impl Extractor {
    pub fn new(brands: &BrandList) -> Result<Extractor> {
        Ok(Extractor { brands: BrandMatcher::new(brands, &product_vocabulary())?, rules: Rules::new() })
    }

    /// Patterns of the brand matcher (names and aliases kept by its rules).
    pub fn brand_patterns(&self) -> usize {
        self.brands.patterns()
    }

    /// The first brand a text names (an item's brand), if any.
    pub fn first_brand(&self, text: &str) -> Option<String> {
        self.brands.find(text).into_iter().next().map(|b| b.brand)
    }

    /// Entities found in free text; `first_brand_only` for titles (an item has one brand:
    /// the first named; "Spigen case for Apple iPhone 15" is a Spigen item).
    pub fn from_text(&self, text: &str, source: Source, first_brand_only: bool) -> Vec<Entity> {
        let mut out = Vec::new();
        let mut brands: Vec<String> = Vec::new();
        for b in self.brands.find(text) {
            if !brands.contains(&b.brand) {
                brands.push(b.brand);
            }
        }
        brands.truncate(if first_brand_only { 1 } else { MAX_PER_KIND });
        out.extend(brands.into_iter().map(|b| Entity::new(EntityKind::Brand, b, source)));
        let r = self.rules.extract(text);
        for (kind, values) in [
            (EntityKind::Model, r.models),
            (EntityKind::Color, r.colors),
            (EntityKind::Material, r.materials),
            (EntityKind::Size, r.sizes),
        ] {
            out.extend(values.into_iter().take(MAX_PER_KIND).map(|v| Entity::new(kind, v, source)));
        }
        out
    }

    /// An item's entities, category aside: explicit attributes, then for each kind not given
    /// explicitly, what the title yields.
    pub fn item_entities(&self, item: &Item) -> Vec<Entity> {
        let mut out: Vec<Entity> = Vec::new();
        for (key, value) in &item.attributes {
            match EntityKind::from_attribute(key) {
                Some(EntityKind::Category) => {}
                Some(kind) => out.push(Entity::new(kind, value.clone(), Source::Explicit)),
                None => out.push(Entity::new(EntityKind::Other, format!("{key}: {value}"), Source::Explicit)),
            }
        }
        let explicit: Vec<EntityKind> = out.iter().map(|e| e.kind).collect();
        out.extend(
            self.from_text(&item.title, Source::Title, true).into_iter().filter(|e| !explicit.contains(&e.kind)),
        );
        out
    }
}

/// The words brand matching keeps clear of: the taxonomy's words and the color and material
/// lexicons (rule 2 of [`brands`]).
pub fn product_vocabulary() -> std::collections::HashSet<String> {
    let mut v = taxonomy::vocabulary().clone();
    for w in rules::COLORS.iter().chain(rules::MATERIALS) {
        v.extend(crate::text::words(w));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Brand;

    fn extractor() -> Extractor {
        let brands = ["Nike", "Adidas", "Spigen", "Apple Store", "Gap", "Boots"]
            .iter()
            .map(|n| Brand { name: n.to_string(), aliases: vec![], nsi: vec![] })
            .collect();
        Extractor::new(&BrandList { version: "t".into(), brands }).unwrap()
    }

    fn kinds(es: &[Entity]) -> Vec<(EntityKind, &str)> {
        es.iter().map(|e| (e.kind, e.value.as_str())).collect()
    }

    #[test]
    fn explicit_attributes_win() {
        let item = Item::new("Nike Pegasus 40 running shoes red")
            .with_attribute("brand", "Adidas")
            .with_attribute("pattern", "striped");
        let es = extractor().item_entities(&item);
        assert_eq!(
            kinds(&es),
            [
                (EntityKind::Brand, "Adidas"),
                (EntityKind::Other, "pattern: striped"),
                (EntityKind::Model, "Pegasus 40"),
                (EntityKind::Color, "red")
            ]
        );
        assert_eq!(es[0].text(), "brand: Adidas");
    }

    #[test]
    fn an_item_has_its_first_brand_a_query_all() {
        let x = extractor();
        let title = x.from_text("Spigen case for Nike watch", Source::Title, true);
        assert_eq!(kinds(&title), [(EntityKind::Brand, "Spigen")]);
        let query = x.from_text("nike or adidas", Source::Query, false);
        assert_eq!(kinds(&query), [(EntityKind::Brand, "Nike"), (EntityKind::Brand, "Adidas")]);
        assert!(x.from_text("hiking boots", Source::Query, false).is_empty());
    }

    #[test]
    fn parses_items() {
        let item = Item::from_json(
            br#"{"id": 7, "title": " Nike Air ", "price": 99.5, "brand": "Nike", "colour": "Red",
                 "category": ["Apparel & Accessories", "Shoes"], "description": "ignored",
                 "attributes": {"Gender": "women", "size": 10, "waterproof": true}}"#,
        )
        .unwrap();
        assert_eq!(item.id.as_deref(), Some("7"));
        assert_eq!(item.title, "Nike Air");
        assert_eq!(item.category(), Some("Apparel & Accessories > Shoes"));
        assert_eq!(item.attributes.len(), 6);
        assert_eq!(item.attributes["size"], "10");
    }

    #[test]
    fn bad_items_get_clear_errors() {
        let err = |j: &str| Item::from_json(j.as_bytes()).unwrap_err().to_string();
        assert!(err(r#"{"brand": "Nike"}"#).contains("no 'title'"));
        assert!(err(r#"{"title": "   "}"#).contains("empty"));
        assert!(err(r#"{"title": 5}"#).contains("must be a string"));
        assert!(err(r#"[1, 2]"#).contains("JSON object"));
        assert!(err(r#"{"title": "x", "price": -1}"#).contains("non-negative"));
        assert!(err(r#"{"title": "x", "attributes": {"a": [1]}}"#).contains("attribute 'a'"));
        assert!(err(r#"{"title": "x", "attributes": 3}"#).contains("must be an object"));
        assert!(err("{\"title\": \"x\"").contains("not valid JSON"));
        assert!(Item::from_json(b"{\"title\": \"\xff\xfe\"}").unwrap_err().to_string().contains("not valid JSON"));
        let many: String = (0..40).map(|i| format!("\"k{i}\": \"v\"")).collect::<Vec<_>>().join(",");
        assert!(err(&format!(r#"{{"title": "x", "attributes": {{{many}}}}}"#)).contains("more than 32"));
        let long_key = "k".repeat(100);
        assert!(err(&format!(r#"{{"title": "x", "attributes": {{"{long_key}": "v"}}}}"#)).contains("longer than"));
    }

    #[test]
    fn huge_fields_are_cut() {
        let title = "é".repeat(10_000);
        let item =
            Item::from_json(format!(r#"{{"title": "{title}", "brand": "{}"}}"#, "b".repeat(5000)).as_bytes()).unwrap();
        assert!(item.title.len() <= MAX_TITLE_BYTES);
        assert!(item.attributes["brand"].len() <= MAX_VALUE_BYTES);
    }
}
