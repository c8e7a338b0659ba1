//! Shared by the plugin tests: where the guest components are, and inputs.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};

use tandem_plugins::{Attribute, Entity, Input, Item, ModelView, Price, Query};

/// The folder bindings/rules/build.sh writes components to.
pub fn components_dir() -> PathBuf {
    match std::env::var_os("TANDEM_RULES_COMPONENTS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../bindings/rules/out"),
    }
}

/// A built guest, e.g. `fixture("rules/brand-conflict.wasm")`. Fails loudly
/// when missing: these tests must never pass vacuously.
pub fn fixture(relative: &str) -> PathBuf {
    let path = components_dir().join(relative);
    assert!(
        path.is_file(),
        "test fixture {} is missing: run bindings/rules/build.sh first (it builds the guest components; \
         TANDEM_RULES_COMPONENTS points the tests at another output folder)",
        path.display()
    );
    path
}

/// The example's cases file in the source tree.
pub fn example_cases(example: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bindings/rules/examples").join(example).join("cases.jsonl")
}

/// A typical item: a query with two entities, an item with a handful of
/// attributes and a four-level category path.
pub fn typical_input() -> Input {
    let entity = |kind: &str, value: &str| Entity { kind: kind.into(), value: value.into() };
    let attr = |name: &str, value: &str| Attribute { name: name.into(), value: value.into() };
    Input {
        query: Query {
            text: "apple iphone 15 128gb".into(),
            entities: vec![entity("brand", "apple"), entity("model", "iphone 15")],
        },
        item: Item {
            id: "sku-123456".into(),
            title: "Apple iPhone 15 128GB Black, unlocked".into(),
            attributes: vec![
                attr("brand", "Apple"),
                attr("model", "iPhone 15"),
                attr("color", "black"),
                attr("storage", "128 GB"),
            ],
            category_path: vec![
                "Electronics".into(),
                "Communications".into(),
                "Telephony".into(),
                "Mobile Phones".into(),
            ],
            price: Some(Price { amount: 799.0, currency: "USD".into() }),
        },
        model: ModelView { score: 0.93, entity_scores: vec![] },
    }
}

/// An input with every string empty and every list empty.
pub fn minimal_input() -> Input {
    Input {
        query: Query { text: String::new(), entities: vec![] },
        item: Item { id: String::new(), title: String::new(), attributes: vec![], category_path: vec![], price: None },
        model: ModelView { score: 0.0, entity_scores: vec![] },
    }
}
