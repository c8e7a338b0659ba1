//! Item 8 of the EBRM issue: bad input gets a clear error or a documented default, never a
//! panic.

use tandem_ebrm::cli::read_items;
use tandem_ebrm::vocab::{Brand, BrandList};
use tandem_ebrm::{CategorySearch, Ebrm, EntityKind, Extractor, Intervention, Item, NgramEncoder};

fn engine() -> Ebrm<NgramEncoder> {
    let list =
        BrandList { version: "t".into(), brands: vec![Brand { name: "Nike".into(), aliases: vec![], nsi: vec![] }] };
    Ebrm::new(NgramEncoder::default(), Extractor::new(&list).unwrap(), CategorySearch::Keywords)
}

#[test]
fn items_without_a_title_or_with_bad_fields_name_the_line() {
    let input = b"{\"title\": \"Nike shoes\"}\n{\"brand\": \"Nike\"}\n";
    let err = format!("{:#}", read_items(&input[..], "items.jsonl").unwrap_err());
    assert!(err.contains("items.jsonl line 2") && err.contains("no 'title'"), "{err}");
    for bad in
        [&b"{\"title\": null}"[..], b"{\"title\": [\"a\"]}", b"[]", b"\"just a string\"", b"{\"title\": \"\xc3\x28\"}"]
    {
        assert!(read_items(bad, "x").is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn empty_queries_are_errors() {
    let e = engine();
    for q in ["", "   ", "\t\n"] {
        assert!(e.rank(q, &[Item::new("x")]).unwrap_err().to_string().contains("the query is empty"));
    }
}

#[test]
fn attributes_are_read_by_the_checks_and_the_prior() {
    let item =
        Item::from_json(br#"{"title": "Nike Air running shoes", "attributes": {"gender": "Women", "vegan": true}}"#)
            .unwrap();
    let r = engine().rank("nike womens running shoes", std::slice::from_ref(&item)).unwrap();
    let audience = r.items[0].entities.iter().find(|e| e.entity.kind == EntityKind::Audience).unwrap();
    assert_eq!((audience.qe, audience.evidence.as_str()), (tandem_ebrm::constraints::MATCH, "item: women"));
    let text = tandem_ebrm::pipeline::similarity_text(&item);
    assert!(text.contains("gender: Women") && text.contains("vegan: true"), "{text}");
}

#[test]
fn huge_and_odd_fields_are_cut_not_fatal() {
    let title = format!("Nike {}", "ü€😀 ".repeat(50_000));
    let item =
        Item::from_json(serde_json::json!({"title": title, "color": "x".repeat(100_000)}).to_string().as_bytes())
            .unwrap();
    let r = engine().rank(&"nike ".repeat(100_000), &[item, Item::new("\u{0}\u{1} control chars")]).unwrap();
    assert!(r.items.iter().all(|i| i.score.is_finite() && (0.0..=1.0).contains(&i.score)));
}

#[test]
fn interventions_with_odd_values_are_clamped() {
    let r = engine().rank("nike shoes", &[Item::new("Nike shoes")]).unwrap();
    for qe in [f32::NAN, f32::INFINITY, -3.0, 7.0] {
        let iv = Intervention::SetQe { item: Some(99), kind: EntityKind::Brand, value: "nike".into(), qe };
        let out =
            r.intervene(&[iv, Intervention::SetQe { item: None, kind: EntityKind::Brand, value: "NIKE".into(), qe }]);
        assert!((0.0..=1.0).contains(&out.items[0].score), "{qe}: {}", out.items[0].score);
    }
}
