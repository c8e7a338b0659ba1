//! The crate's modules import each other without cycles: traits live with what they
//! describe (TextEncoder and PairScorer in `encoder`), so the pipeline depends on encoders
//! and never the other way round. Read from the sources, as `crate::<module>` paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
            if path.extension().is_none_or(|e| e != "rs") || first == "lib" || first == "bin" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let uses: &mut BTreeSet<String> = graph.entry(first.clone()).or_default();
            for (at, _) in text.match_indices("crate::") {
                assert!(!text[at..].starts_with("crate::{"), "{}: name modules one path at a time", rel.display());
                let name: String =
                    text[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if name != first {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle through `from`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    fn walk(g: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, goal: &str) -> bool {
        let last = path.last().unwrap().clone();
        for next in g.get(&last).into_iter().flatten() {
            if next == goal {
                path.push(next.clone());
                return true;
            }
            if !path.contains(next) {
                path.push(next.clone());
                if walk(g, path, goal) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_string()];
    walk(graph, &mut path, from).then_some(path)
}

#[test]
fn modules_import_each_other_without_cycles() {
    let graph = module_graph();
    assert!(graph.get("pipeline").is_some_and(|u| u.contains("encoder")), "the reader sees imports: {graph:?}");
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let edge = |a: &str, b: &str| (a.to_string(), BTreeSet::from([b.to_string()]));
    let graph = BTreeMap::from([edge("encoder", "pipeline"), edge("pipeline", "encoder"), edge("cli", "pipeline")]);
    assert_eq!(cycle_from(&graph, "encoder").unwrap(), ["encoder", "pipeline", "encoder"]);
    assert!(cycle_from(&graph, "cli").is_none());
}
