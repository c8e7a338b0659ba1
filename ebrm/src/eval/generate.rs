//! The evaluation set generator: ESCI-labelled query-item pairs whose truth follows from
//! structure, built from the real vocabularies.
//!
//! Each query names a real brand (from the NSI brand categories that sell the product, e.g.
//! `shop/shoes` for shoes) and a product of a Google taxonomy category, sometimes a model
//! number and a color. Its items are, by construction:
//!
//! | relation            | item                                                  | label |
//! |---------------------|-------------------------------------------------------|-------|
//! | exact (×2)          | same brand, category, model and color                 | E     |
//! | brand conflict (×2) | another brand, same product                           | S     |
//! | model conflict      | same brand, another model number                      | S     |
//! | attribute mismatch  | same product in another color (or material)           | S     |
//! | accessory           | an accessory for the product, accessory category      | C     |
//! | category conflict   | same brand, a product of another family               | I     |
//! | unrelated           | another brand, another family                         | I     |
//!
//! About half the items carry explicit attributes (brand, category, color); the rest are
//! title-only, so extraction is part of what is measured. Where the extractor would not
//! find an item's true brand in its title, the item gets an explicit brand attribute, so the
//! labels stay true. Model numbers and series names are synthetic (no registry ships a
//! catalogue of them); brands and categories are real. The generator is deterministic: the
//! same brand list and seed give the same file.

use super::{Pair, Relation};
use crate::entities::brands::{NameClass, classify, common_words};
use crate::entities::rules::{COLORS, MATERIALS};
use crate::entities::taxonomy::{self, find_path};
use crate::entities::{EntityKind, Extractor, Item, Source, product_vocabulary};
use crate::vocab::BrandList;
use anyhow::{Result, bail};
use std::collections::HashSet;

/// How a family writes model numbers.
#[derive(Debug, Clone, Copy)]
enum ModelStyle {
    /// "Pegasus 40": a series name and a number.
    Series,
    /// "KX-4821": letters, dash, digits.
    Code,
}

struct Family {
    name: &'static str,
    /// NSI brand categories whose brands sell this product.
    nsi: &'static [&'static str],
    path: &'static str,
    nouns: &'static [&'static str],
    model: ModelStyle,
    colors: bool,
    materials: &'static [&'static str],
    /// Sizes written after the product ("10.5 US", "128 GB").
    sizes: &'static [&'static str],
    accessory: Option<(&'static str, &'static [&'static str])>,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "shoes",
        nsi: &["shop/shoes", "shop/sports"],
        path: "Apparel & Accessories > Shoes",
        nouns: &["running shoes", "sneakers", "trail shoes", "walking shoes"],
        model: ModelStyle::Series,
        colors: true,
        materials: &["mesh", "leather", "suede"],
        sizes: &["9 US", "10 US", "10.5 US", "EU 42"],
        accessory: Some(("Apparel & Accessories > Shoe Accessories > Shoelaces", &["shoelaces", "replacement laces"])),
    },
    Family {
        name: "phones",
        nsi: &["shop/mobile_phone", "shop/electronics", "shop/telecommunication"],
        path: "Electronics > Communications > Telephony > Mobile Phones",
        nouns: &["smartphone", "mobile phone", "android phone"],
        model: ModelStyle::Series,
        colors: true,
        materials: &[],
        sizes: &["128 GB", "256 GB", "512 GB"],
        accessory: Some((
            "Electronics > Communications > Telephony > Mobile Phone Accessories > Mobile Phone Cases",
            &["phone case", "protective case"],
        )),
    },
    Family {
        name: "headphones",
        nsi: &["shop/hifi", "shop/electronics"],
        path: "Electronics > Audio > Audio Components > Headphones & Headsets > Headphones",
        nouns: &["wireless headphones", "noise cancelling headphones", "over-ear headphones"],
        model: ModelStyle::Code,
        colors: true,
        materials: &[],
        sizes: &[],
        accessory: Some((
            "Electronics > Audio > Audio Accessories > Headphone & Headset Accessories > Headphone Cushions & Tips",
            &["replacement ear pads", "ear cushions"],
        )),
    },
    Family {
        name: "laptops",
        nsi: &["shop/computer", "shop/electronics"],
        path: "Electronics > Computers > Laptops",
        nouns: &["laptop", "notebook computer", "ultrabook"],
        model: ModelStyle::Code,
        colors: true,
        materials: &[],
        sizes: &["14 inch", "15.6 inch", "16 GB"],
        accessory: Some((
            "Electronics > Electronics Accessories > Power > Power Adapters & Chargers",
            &["laptop charger", "power adapter"],
        )),
    },
    Family {
        name: "cameras",
        nsi: &["shop/photo", "shop/electronics"],
        path: "Cameras & Optics > Cameras > Digital Cameras",
        nouns: &["digital camera", "mirrorless camera", "compact camera"],
        model: ModelStyle::Code,
        colors: true,
        materials: &[],
        sizes: &[],
        accessory: Some((
            "Cameras & Optics > Camera & Optic Accessories > Camera Parts & Accessories > Camera Bags & Cases",
            &["camera bag", "camera case"],
        )),
    },
    Family {
        name: "watches",
        nsi: &["shop/watches", "shop/jewelry"],
        path: "Apparel & Accessories > Jewelry > Watches",
        nouns: &["watch", "wristwatch", "chronograph watch"],
        model: ModelStyle::Code,
        colors: true,
        materials: &["stainless steel", "titanium", "leather"],
        sizes: &["40mm", "42mm", "44mm"],
        accessory: Some((
            "Apparel & Accessories > Jewelry > Watch Accessories > Watch Bands",
            &["watch band", "replacement strap"],
        )),
    },
    Family {
        name: "bicycles",
        nsi: &["shop/bicycle", "shop/sports", "shop/outdoor"],
        path: "Sporting Goods > Outdoor Recreation > Cycling > Bicycles",
        nouns: &["mountain bike", "road bike", "city bike"],
        model: ModelStyle::Series,
        colors: true,
        materials: &["aluminium", "carbon fiber", "steel"],
        sizes: &[],
        accessory: Some((
            "Sporting Goods > Outdoor Recreation > Cycling > Bicycle Accessories > Bicycle Locks",
            &["bike lock", "cable lock"],
        )),
    },
    Family {
        name: "sofas",
        nsi: &["shop/furniture"],
        path: "Furniture > Sofas",
        nouns: &["sofa", "sectional sofa", "loveseat sofa"],
        model: ModelStyle::Series,
        colors: true,
        materials: &["velvet", "linen", "leather"],
        sizes: &[],
        accessory: Some(("Home & Garden > Decor > Slipcovers", &["sofa slipcover", "sofa cover"])),
    },
    Family {
        name: "mattresses",
        nsi: &["shop/bed", "shop/furniture"],
        path: "Furniture > Beds & Accessories > Mattresses",
        nouns: &["mattress", "memory foam mattress", "hybrid mattress"],
        model: ModelStyle::Series,
        colors: false,
        materials: &[],
        sizes: &[],
        accessory: Some((
            "Home & Garden > Linens & Bedding > Bedding > Mattress Protectors",
            &["mattress protector", "waterproof mattress cover"],
        )),
    },
    Family {
        name: "coffee makers",
        nsi: &["shop/houseware", "shop/appliance", "shop/electronics"],
        path: "Home & Garden > Kitchen & Dining > Kitchen Appliances > Coffee Makers & Espresso Machines",
        nouns: &["espresso machine", "coffee maker", "drip coffee maker"],
        model: ModelStyle::Code,
        colors: true,
        materials: &[],
        sizes: &[],
        accessory: Some((
            "Home & Garden > Kitchen & Dining > Kitchen Appliance Accessories > Coffee Maker & Espresso Machine Accessories > Coffee Filters",
            &["coffee filters", "paper coffee filters"],
        )),
    },
    Family {
        name: "perfume",
        nsi: &["shop/perfumery", "shop/cosmetics"],
        path: "Health & Beauty > Personal Care > Cosmetics > Perfume & Cologne",
        nouns: &["eau de parfum", "perfume", "eau de toilette"],
        model: ModelStyle::Series,
        colors: false,
        materials: &[],
        sizes: &["50 ml", "100 ml"],
        accessory: None,
    },
    Family {
        name: "dog food",
        nsi: &["shop/pet"],
        path: "Animals & Pet Supplies > Pet Supplies > Dog Supplies > Dog Food",
        nouns: &["dry dog food", "puppy food", "grain free dog food"],
        model: ModelStyle::Series,
        colors: false,
        materials: &[],
        sizes: &["2 kg", "12 kg"],
        accessory: Some((
            "Animals & Pet Supplies > Pet Supplies > Pet Bowls, Feeders & Waterers",
            &["dog bowl", "slow feeder bowl"],
        )),
    },
    Family {
        name: "jackets",
        nsi: &["shop/clothes", "shop/outdoor"],
        path: "Apparel & Accessories > Clothing > Outerwear > Coats & Jackets",
        nouns: &["rain jacket", "down jacket", "winter coat"],
        model: ModelStyle::Series,
        colors: true,
        materials: &["nylon", "wool", "polyester"],
        sizes: &["M", "L", "XL"],
        accessory: None,
    },
    Family {
        name: "t-shirts",
        nsi: &["shop/clothes"],
        path: "Apparel & Accessories > Clothing > Shirts & Tops",
        nouns: &["t-shirt", "polo shirt", "crew neck tee"],
        model: ModelStyle::Series,
        colors: true,
        materials: &["cotton", "linen", "merino wool"],
        sizes: &["S", "M", "XL"],
        accessory: None,
    },
    Family {
        name: "handbags",
        nsi: &["shop/bag", "shop/fashion_accessories"],
        path: "Apparel & Accessories > Handbags, Wallets & Cases > Handbags",
        nouns: &["handbag", "tote bag", "crossbody bag"],
        model: ModelStyle::Series,
        colors: true,
        materials: &["leather", "canvas", "suede"],
        sizes: &[],
        accessory: None,
    },
    Family {
        name: "sunglasses",
        nsi: &["shop/optician", "shop/fashion_accessories"],
        path: "Apparel & Accessories > Clothing Accessories > Sunglasses",
        nouns: &["sunglasses", "polarized sunglasses", "aviator sunglasses"],
        model: ModelStyle::Code,
        colors: true,
        materials: &[],
        sizes: &[],
        accessory: Some((
            "Health & Beauty > Personal Care > Vision Care > Eyewear Accessories > Eyewear Cases & Holders",
            &["sunglasses case", "glasses case"],
        )),
    },
    Family {
        name: "drills",
        nsi: &["shop/doityourself", "shop/hardware"],
        path: "Hardware > Tools > Drills",
        nouns: &["cordless drill", "hammer drill", "drill driver"],
        model: ModelStyle::Code,
        colors: false,
        materials: &[],
        sizes: &["18V", "20V"],
        accessory: Some((
            "Hardware > Tool Accessories > Drill & Screwdriver Accessories > Drill & Screwdriver Bits",
            &["drill bit set", "screwdriver bits"],
        )),
    },
    Family {
        name: "tires",
        nsi: &["shop/tyres", "shop/car_parts"],
        path: "Vehicles & Parts > Vehicle Parts & Accessories > Motor Vehicle Parts > Motor Vehicle Wheel Systems > Motor Vehicle Tires",
        nouns: &["all-season tire", "winter tire", "summer tire"],
        model: ModelStyle::Series,
        colors: false,
        materials: &[],
        sizes: &[],
        accessory: Some((
            "Vehicles & Parts > Vehicle Parts & Accessories > Motor Vehicle Parts > Motor Vehicle Wheel Systems > Motor Vehicle Tire Accessories",
            &["tire valve caps", "tire pressure gauge"],
        )),
    },
    Family {
        name: "strollers",
        nsi: &["shop/baby_goods"],
        path: "Baby & Toddler > Baby Transport > Baby Strollers",
        nouns: &["stroller", "jogging stroller", "travel stroller"],
        model: ModelStyle::Series,
        colors: true,
        materials: &[],
        sizes: &[],
        accessory: Some((
            "Baby & Toddler > Baby Transport Accessories > Baby Stroller Accessories",
            &["stroller rain cover", "stroller organizer"],
        )),
    },
    Family {
        name: "vacuums",
        nsi: &["shop/appliance", "shop/electronics", "shop/houseware"],
        path: "Home & Garden > Household Appliances > Vacuums",
        nouns: &["cordless vacuum", "robot vacuum", "stick vacuum"],
        model: ModelStyle::Code,
        colors: true,
        materials: &[],
        sizes: &[],
        accessory: Some((
            "Home & Garden > Household Appliance Accessories > Vacuum Accessories",
            &["vacuum filter", "replacement brush roll"],
        )),
    },
    Family {
        name: "toothbrushes",
        nsi: &["shop/chemist", "shop/cosmetics", "shop/medical_supply"],
        path: "Health & Beauty > Personal Care > Oral Care > Toothbrushes",
        nouns: &["electric toothbrush", "sonic toothbrush"],
        model: ModelStyle::Code,
        colors: true,
        materials: &[],
        sizes: &[],
        accessory: Some((
            "Health & Beauty > Personal Care > Oral Care > Toothbrush Accessories > Toothbrush Replacement Heads",
            &["replacement brush heads", "toothbrush heads"],
        )),
    },
    Family {
        name: "tents",
        nsi: &["shop/outdoor", "shop/sports"],
        path: "Sporting Goods > Outdoor Recreation > Camping & Hiking > Tents",
        nouns: &["camping tent", "backpacking tent", "dome tent"],
        model: ModelStyle::Series,
        colors: true,
        materials: &["nylon", "polyester"],
        sizes: &[],
        accessory: Some((
            "Sporting Goods > Outdoor Recreation > Camping & Hiking > Tent Accessories > Tent Poles & Stakes",
            &["tent stakes", "tent poles"],
        )),
    },
    Family {
        name: "backpacks",
        nsi: &["shop/bag", "shop/outdoor"],
        path: "Luggage & Bags > Backpacks",
        nouns: &["backpack", "hiking backpack", "laptop backpack"],
        model: ModelStyle::Series,
        colors: true,
        materials: &["nylon", "canvas", "leather"],
        sizes: &["20 l", "30 l"],
        accessory: None,
    },
];

/// Series names for synthetic model numbers ("Vantor 40"); chosen to be no English word.
const SERIES: &[&str] = &[
    "Pegasor", "Vantor", "Zelkon", "Aerix", "Stratix", "Korvan", "Lumio", "Quenta", "Tavor", "Brixo", "Nexar", "Orvex",
    "Caldor", "Myxa", "Torvin", "Elvaro", "Dravik", "Solvex",
];
const CODE_PREFIXES: &[&str] = &["KX", "TR", "WF", "MZ", "QV", "HB", "ZD", "RL", "VP", "GN"];
const GEN_COLORS: &[&str] =
    &["black", "white", "red", "blue", "green", "grey", "silver", "navy", "pink", "beige", "brown", "yellow"];

/// splitmix64: small, fast and fixed forever, unlike a library RNG whose stream may change
/// between versions (the set must be reproducible).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// A product as the generator knows it: the truth behind one title.
#[derive(Debug, Clone)]
struct Product {
    brand: String,
    family: usize,
    noun: String,
    model: String,
    color: Option<String>,
    material: Option<String>,
    size: Option<String>,
}

/// Brands usable for a family: single- or two-word ASCII names that the extractor matches
/// case-insensitively (so a lowercase query still finds them), without digits or color or
/// material words, and not contained in one another.
fn family_brands(list: &BrandList, family: &Family, vocab: &HashSet<String>) -> Vec<String> {
    let common = common_words();
    let lexicon: HashSet<String> = COLORS.iter().chain(MATERIALS).flat_map(|w| crate::text::words(w)).collect();
    let mut out: Vec<String> = Vec::new();
    for nsi in family.nsi {
        for b in list.in_category(nsi) {
            let n = b.name.trim();
            let ok = (4..=20).contains(&n.len())
                && n.chars().all(|c| c.is_ascii_alphabetic() || c == ' ')
                && n.split(' ').count() <= 2
                && n.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && classify(n, &common, vocab) == NameClass::CaseInsensitive
                && !crate::text::words(n).any(|w| lexicon.contains(&w) || vocab.contains(&w));
            let lower = n.to_lowercase();
            if ok && !out.iter().any(|o| o.to_lowercase().contains(&lower) || lower.contains(&o.to_lowercase())) {
                out.push(n.to_string());
            }
        }
    }
    out
}

fn model_number(rng: &mut Rng, style: ModelStyle) -> String {
    match style {
        ModelStyle::Series => format!("{} {}", rng.pick(SERIES), 10 + rng.below(90)),
        ModelStyle::Code => format!("{}-{}", rng.pick(CODE_PREFIXES), 100 + rng.below(9900)),
    }
}

/// Another model of the same line: the series (or prefix) kept, the number changed a little,
/// which is what makes model conflicts hard for plain cosine.
fn other_model(rng: &mut Rng, model: &str) -> String {
    let split = model.rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
    let (head, number) = model.split_at(split);
    let n: usize = number.parse().unwrap_or(10);
    let delta = 1 + rng.below(3);
    let m = if rng.chance(0.5) || n <= delta { n + delta } else { n - delta };
    format!("{head}{m}")
}

fn title(p: &Product, rng: &mut Rng) -> String {
    let mut parts = vec![p.brand.clone(), p.model.clone(), title_case(&p.noun)];
    if let Some(m) = &p.material {
        parts.insert(if rng.chance(0.5) { 2 } else { 3 }, title_case(m));
    }
    if let Some(c) = &p.color {
        parts.push(title_case(c));
    }
    if let Some(s) = &p.size {
        parts.push(s.clone());
    }
    parts.join(" ")
}

fn title_case(s: &str) -> String {
    s.split(' ')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
        })
        .collect::<Vec<String>>()
        .join(" ")
}

/// Generates `queries` queries of 10 items each. `extractor` must be built over `brands`.
pub fn generate(brands: &BrandList, extractor: &Extractor, queries: usize, seed: u64) -> Result<Vec<Pair>> {
    let vocab = product_vocabulary();
    for f in FAMILIES {
        if find_path(f.path).is_none() {
            bail!("family '{}': '{}' is not a taxonomy path", f.name, f.path);
        }
        if let Some((acc, _)) = f.accessory
            && find_path(acc).is_none()
        {
            bail!("family '{}': accessory '{acc}' is not a taxonomy path", f.name);
        }
    }
    let pools: Vec<Vec<String>> = FAMILIES.iter().map(|f| family_brands(brands, f, &vocab)).collect();
    let usable: Vec<usize> = (0..FAMILIES.len()).filter(|&f| pools[f].len() >= 3).collect();
    if usable.len() < 4 {
        bail!("the brand list has too few usable brands ({} families with 3 or more)", usable.len());
    }
    let all_brands: Vec<&String> = usable.iter().flat_map(|&f| &pools[f]).collect();
    let mut rng = Rng(seed);
    let mut pairs = Vec::new();
    for query_id in 0..queries {
        let fam = usable[query_id % usable.len()];
        let f = &FAMILIES[fam];
        let pool = &pools[fam];
        let brand = rng.pick(pool).clone();
        let product = Product {
            brand: brand.clone(),
            family: fam,
            noun: rng.pick(f.nouns).to_string(),
            model: model_number(&mut rng, f.model),
            color: f.colors.then(|| rng.pick(GEN_COLORS).to_string()),
            material: (!f.materials.is_empty() && rng.chance(0.5)).then(|| rng.pick(f.materials).to_string()),
            size: (!f.sizes.is_empty() && rng.chance(0.6)).then(|| rng.pick(f.sizes).to_string()),
        };
        let with_model = rng.chance(0.5);
        let with_color = product.color.is_some() && rng.chance(0.5);
        let with_material = !with_color && product.material.is_some() && rng.chance(0.5);
        let mut words = vec![brand.to_lowercase()];
        if with_model {
            words.push(product.model.to_lowercase());
        }
        if with_color {
            let c = product.color.clone().unwrap_or_default();
            if rng.chance(0.5) { words.insert(0, c) } else { words.push(c) }
        }
        if with_material {
            words.push(product.material.clone().unwrap_or_default());
        }
        words.insert(if rng.chance(0.7) { words.len() } else { 1 }, product.noun.clone());
        let query = words.join(" ");
        // The query must say what the generator thinks it says.
        let found = extractor.from_text(&query, Source::Query, false);
        if !found.iter().any(|e| e.kind == EntityKind::Brand && e.value == brand) {
            continue;
        }

        let mut items: Vec<(Product, Relation, Option<&str>)> = Vec::new();
        // Exact items: the product, and a variant differing only where the query is silent.
        items.push((product.clone(), Relation::Exact, None));
        let mut variant = product.clone();
        variant.noun = rng.pick(f.nouns).to_string();
        if !with_model {
            variant.model = model_number(&mut rng, f.model);
        }
        if !with_color && f.colors {
            variant.color = Some(rng.pick(GEN_COLORS).to_string());
        }
        if !with_material && !f.materials.is_empty() {
            variant.material = rng.chance(0.5).then(|| rng.pick(f.materials).to_string());
        }
        variant.size = (!f.sizes.is_empty() && rng.chance(0.5)).then(|| rng.pick(f.sizes).to_string());
        items.push((variant, Relation::Exact, None));
        // Brand conflicts: another brand of the same product.
        for _ in 0..2 {
            let other = other_brand(&mut rng, pool, &brand);
            let model = model_number(&mut rng, f.model);
            items.push((Product { brand: other, model, ..product.clone() }, Relation::BrandConflict, None));
        }
        // Model conflict where the query names a model, else a third brand conflict.
        if with_model {
            let model = other_model(&mut rng, &product.model);
            items.push((Product { model, ..product.clone() }, Relation::ModelConflict, None));
        } else {
            let other = other_brand(&mut rng, pool, &brand);
            items.push((Product { brand: other, ..product.clone() }, Relation::BrandConflict, None));
        }
        // Attribute mismatch: another color (or material) where the query names one.
        if with_color || with_material {
            let mut p = product.clone();
            if with_color {
                let now = p.color.clone().unwrap_or_default();
                p.color = Some(loop {
                    let c = rng.pick(GEN_COLORS);
                    if *c != now {
                        break c.to_string();
                    }
                });
            } else {
                let now = p.material.clone().unwrap_or_default();
                p.material = f.materials.iter().find(|m| **m != now).map(|m| m.to_string());
            }
            items.push((p, Relation::AttributeMismatch, None));
        }
        // Accessory for the product.
        if let Some((acc_path, acc_nouns)) = f.accessory {
            let acc_brand = if rng.chance(0.5) { brand.clone() } else { rng.pick(all_brands.as_slice()).to_string() };
            let noun = rng.pick(acc_nouns);
            let p = Product {
                brand: acc_brand,
                noun: noun.to_string(),
                color: None,
                material: None,
                size: None,
                ..product.clone()
            };
            items.push((p, Relation::Accessory, Some(acc_path)));
        }
        // Same brand, another family; another brand, another family.
        for (relation, same_brand) in [(Relation::CategoryConflict, true), (Relation::Unrelated, false)] {
            let other_fam = loop {
                let g = *rng.pick(usable.as_slice());
                if g != fam {
                    break g;
                }
            };
            let g = &FAMILIES[other_fam];
            let b = if same_brand { brand.clone() } else { rng.pick(pools[other_fam].as_slice()).clone() };
            let p = Product {
                brand: b,
                family: other_fam,
                noun: rng.pick(g.nouns).to_string(),
                model: model_number(&mut rng, g.model),
                color: g.colors.then(|| rng.pick(GEN_COLORS).to_string()),
                material: None,
                size: None,
            };
            items.push((p, relation, None));
        }

        for (p, relation, category) in items {
            let mut item = Item::new(match relation {
                Relation::Accessory => {
                    format!("{} {} for {} {}", p.brand, title_case(&p.noun), product.brand, product.model)
                }
                _ => title(&p, &mut rng),
            });
            let path = category.unwrap_or(FAMILIES[p.family].path);
            if relation == Relation::Accessory || rng.chance(0.5) {
                item = item.with_attribute("category", path);
            }
            let explicit = rng.chance(0.5);
            let extracted = extractor.item_entities(&item);
            let brand_found = extracted.iter().any(|e| e.kind == EntityKind::Brand && e.value == p.brand);
            if explicit || !brand_found {
                item = item.with_attribute("brand", &p.brand);
            }
            if explicit && let Some(c) = &p.color {
                item = item.with_attribute("color", c);
            }
            // Where the item disagrees with what the query names.
            let mut conflicts = Vec::new();
            if p.brand != product.brand {
                conflicts.push(EntityKind::Brand);
            }
            if category.is_some() || p.family != product.family {
                conflicts.push(EntityKind::Category);
            }
            if with_model && p.model != product.model {
                conflicts.push(EntityKind::Model);
            }
            if with_color && p.color != product.color {
                conflicts.push(EntityKind::Color);
            }
            if with_material && p.material != product.material {
                conflicts.push(EntityKind::Material);
            }
            item = item.with_id(format!("q{query_id}-{}", pairs.len()));
            pairs.push(Pair {
                query_id,
                query: query.clone(),
                item,
                label: relation.grade().letter().to_string(),
                relation,
                conflicts,
            });
        }
    }
    Ok(pairs)
}

fn other_brand(rng: &mut Rng, pool: &[String], brand: &str) -> String {
    loop {
        let b = rng.pick(pool);
        if b != brand {
            return b.clone();
        }
    }
}

/// Distinct taxonomy branches (first two levels) the set's categories come from.
pub fn branches(pairs: &[Pair]) -> usize {
    pairs
        .iter()
        .filter_map(|p| p.item.category())
        .filter_map(taxonomy::find_path)
        .map(|c| c.path.split(" > ").take(2).collect::<Vec<_>>().join(" > "))
        .collect::<HashSet<_>>()
        .len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Brand;

    fn brands() -> BrandList {
        let mut list = Vec::new();
        for (i, nsi) in
            ["shop/shoes", "shop/electronics", "shop/furniture", "shop/watches", "shop/clothes"].iter().enumerate()
        {
            for n in ["Alpharo", "Bentiva", "Corvana", "Delmiro"] {
                list.push(Brand { name: format!("{n}{}", "x".repeat(i)), aliases: vec![], nsi: vec![nsi.to_string()] });
            }
        }
        BrandList { version: "t".into(), brands: list }
    }

    #[test]
    fn generates_labelled_pairs_deterministically() {
        let b = brands();
        let x = Extractor::new(&b).unwrap();
        let pairs = generate(&b, &x, 20, 7).unwrap();
        assert!(pairs.len() >= 150, "{}", pairs.len());
        assert_eq!(pairs, generate(&b, &x, 20, 7).unwrap());
        for p in &pairs {
            assert_eq!(p.relation.grade().letter().to_string(), p.label);
            assert!(!p.item.title.is_empty());
        }
        let exact = pairs.iter().filter(|p| p.relation == Relation::Exact).count();
        assert!(exact >= 2 * 19);
        assert!(branches(&pairs) >= 4);
    }

    #[test]
    fn model_neighbours_stay_in_the_line() {
        let mut rng = Rng(1);
        for m in ["Vantor 40", "KX-4821", "Aerix 11"] {
            let o = other_model(&mut rng, m);
            assert_ne!(o, m);
            assert_eq!(o.split(|c: char| c.is_ascii_digit()).next(), m.split(|c: char| c.is_ascii_digit()).next());
        }
    }
}
