//! The committed evaluation set: its shape, and an end-to-end run of the evaluation on it
//! with the model-free encoder (the MiniLM figures come from `ebrm_eval`, see the README).

use std::collections::HashSet;
use tandem_ebrm::eval::generate::branches;
use tandem_ebrm::eval::{Relation, eval_cache, evaluate, group, read_pairs};
use tandem_ebrm::vocab::{Brand, BrandList};
use tandem_ebrm::{CategorySearch, Ebrm, Extractor, Grade, NgramEncoder};

fn set() -> Vec<tandem_ebrm::eval::Pair> {
    read_pairs(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("eval/esci-generated.jsonl")).unwrap()
}

#[test]
fn the_set_is_large_varied_and_consistent() {
    let pairs = set();
    assert!(pairs.len() >= 500, "{} pairs", pairs.len());
    assert!(branches(&pairs) >= 20, "{} taxonomy branches", branches(&pairs));
    let brands: HashSet<&str> =
        pairs.iter().filter_map(|p| p.item.attributes.get("brand").map(String::as_str)).collect();
    assert!(brands.len() >= 100, "{} brands", brands.len());
    for p in &pairs {
        assert_eq!(p.grade(), p.relation.grade(), "{p:?}");
        assert_eq!(p.relation == Relation::Exact, p.conflicts.is_empty(), "{p:?}");
    }
    for q in group(pairs) {
        let grades: Vec<Grade> = q.pairs.iter().map(|p| p.grade()).collect();
        assert!(grades.contains(&Grade::Exact) && grades.iter().any(|g| *g != Grade::Exact), "query {}", q.id);
    }
}

#[test]
fn evaluation_runs_end_to_end_without_a_model() {
    let pairs = set();
    // Brands of the set, as the extractor would have them from the fetched list.
    let names: HashSet<String> = pairs.iter().filter_map(|p| p.item.attributes.get("brand").cloned()).collect();
    let list = BrandList {
        version: "from-set".into(),
        brands: names.into_iter().map(|name| Brand { name, aliases: vec![], nsi: vec![] }).collect(),
    };
    let engine = Ebrm::new(NgramEncoder::default(), Extractor::new(&list).unwrap(), CategorySearch::Keywords)
        .with_cache(eval_cache());
    let report = evaluate(&engine, &group(pairs)).unwrap();
    assert!(report.test_pairs >= 250);
    for scorer in ["cosine", "product", "goedel", "lukasiewicz"] {
        let m = report.test[scorer];
        assert!(m.ndcg > 0.8 && m.pairwise > 0.8, "{scorer}: {m:?}");
    }
    assert!(report.test["product"].pairwise >= report.test["cosine"].pairwise - 0.02, "{:?}", report.test);
}
