//! EBRM over tandem-models' embedding pipeline: the tiny synthetic BERT always, the real
//! MiniLM when `tandem fetch minilm` has put it in the cache.

use tandem_ebrm::encoder::ModelEncoder;
use tandem_ebrm::vocab::{Brand, BrandList};
use tandem_ebrm::{CategorySearch, Ebrm, EntityKind, Extractor, Grade, Item, TextEncoder};
use tandem_models::BackendChoice;

fn extractor() -> Extractor {
    let brands = ["Nike", "Adidas", "Spigen"]
        .iter()
        .map(|n| Brand { name: n.to_string(), aliases: vec![], nsi: vec![] })
        .collect();
    Extractor::new(&BrandList { version: "t".into(), brands }).unwrap()
}

#[test]
fn ranks_with_a_model_encoder() {
    let dir = tempfile::tempdir().unwrap();
    tandem_models::testing::write_tiny_bert(dir.path(), "").unwrap();
    let encoder = ModelEncoder::load(dir.path(), BackendChoice::Cpu, "tiny").unwrap();
    assert_eq!(encoder.encode(&["red shoe", "phone case"]).unwrap().len(), 2);
    let engine = Ebrm::new(encoder, extractor(), CategorySearch::Keywords);
    let r =
        engine.rank("nike running shoes", &[Item::new("Nike running shoes"), Item::new("Adidas phone case")]).unwrap();
    assert!(r.encoded_texts > 0);
    assert!(r.items.iter().all(|i| (0.0..=1.0).contains(&i.score)));
}

#[test]
fn real_minilm_when_fetched() {
    let Ok(model) = tandem_models::registry::known_model("minilm") else { return };
    let Ok(dir) = tandem_models::fetch::model_dir(model) else { return };
    if !tandem_models::fetch::is_complete(&dir, model) {
        eprintln!("skipped: MiniLM is not in the cache (tandem fetch minilm)");
        return;
    }
    let encoder = ModelEncoder::load(&dir, BackendChoice::Cpu, "minilm").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let engine =
        Ebrm::new(encoder, extractor(), CategorySearch::Embedding { cache_dir: Some(cache.path().to_path_buf()) });
    let q = engine.analyze_query("nike running shoes").unwrap();
    let kinds: Vec<(EntityKind, &str)> = q.entities.iter().map(|e| (e.kind, e.value.as_str())).collect();
    assert!(kinds.contains(&(EntityKind::Brand, "Nike")), "{kinds:?}");
    let product = q.constraints.product.as_ref().expect("a product type");
    assert_eq!((product.head.as_str(), product.words.len()), ("shoe", 2), "{product:?}");
    let items = [
        Item::new("Nike Pegasus 40 Running Shoes Black"),
        Item::new("Adidas Ultraboost Running Shoes Black"),
        Item::new("Spigen Case for Nike Watch").with_attribute(
            "category",
            "Electronics > Communications > Telephony > Mobile Phone Accessories > Mobile Phone Cases",
        ),
    ];
    let r = engine.rank("nike running shoes", &items).unwrap();
    assert_eq!(r.order()[0], 0, "{:#?}", r.items);
    assert_eq!(r.items[0].grade, Grade::Exact);
    // The brand conflict vetoes; the case names Nike only as what it is made for.
    let s = r.scores();
    assert!(s[1] < 0.1 * s[0] && s[2] < 0.3 * s[0], "{s:?}");
}
