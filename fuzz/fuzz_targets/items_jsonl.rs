//! The JSON-lines files of the command line, fed the same bytes:
//! - `tandem relevance --items`: `read_items` (line limits, UTF-8, each item), then the items
//!   ranked by the EBRM pipeline with a model-free encoder, as the command ranks them (entity
//!   extraction, constraints, aggregation, the output lines) and turned into the rule
//!   plugins' candidates (`--rules`);
//! - `tandem rules check --cases`: every line parsed (`CaseLines`) and made a plugin input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use tandem_ebrm::rules::{candidates, plugin_query};
use tandem_ebrm::cli::{ranking_lines, read_items};
use tandem_ebrm::vocab::{Brand, BrandList};
use tandem_ebrm::{CategorySearch, Ebrm, Extractor, NgramEncoder};
use tandem_plugins::cli::{CaseLine, CaseLines};

/// A query with an entity of each kind the constraints check: brand, size, color, price.
const QUERY: &str = "nike black running shoes size 44 under $100";

static ENGINE: LazyLock<Ebrm<NgramEncoder>> = LazyLock::new(|| {
    let brand = |name: &str, nsi: &str| Brand { name: name.into(), aliases: Vec::new(), nsi: vec![nsi.into()] };
    let brands = BrandList {
        version: "fuzz".into(),
        brands: vec![brand("Nike", "shop/shoes"), brand("Adidas", "shop/shoes"), brand("Apple", "shop/electronics")],
    };
    let extractor = Extractor::new(&brands).expect("the fuzz brand list is valid");
    Ebrm::new(NgramEncoder::new(64), extractor, CategorySearch::Keywords)
});

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = read_items(data, "items.jsonl")
        && !items.is_empty()
    {
        // Items that parsed must rank: the command would fail on them otherwise.
        let ranking = ENGINE.rank(QUERY, &items).expect("parsed items rank");
        ranking_lines(&ranking, true).expect("ranking lines");
        let _ = (plugin_query(&ranking), candidates(&ranking, &items));
        // The first title as a query too: the query side of extraction sees the input.
        let _ = ENGINE.analyze_query(&items[0].title);
    }
    for line in CaseLines::new(data, "cases.jsonl".into()) {
        if let Ok((_, CaseLine::Case(case))) = line {
            let _ = case.input();
        }
    }
});
