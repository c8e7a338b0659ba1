//! The CUDA kernels pair up with the WGSL kernels: the same file stems, the same entry-point
//! names, and params structs that mirror the Rust declarations field for field. These are
//! text checks, so they run in every build (no CUDA feature, toolkit or GPU needed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tandem_runtime::OpKind;
use tandem_runtime::ops::KernelParams;
use tandem_runtime::ops::elementwise::MAX_RANK;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text without `//` and `/* */` comments (string literals in these files hold no
/// comment markers, except `extern "C"`, which has none).
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while !rest.is_empty() {
        match (rest.find("//"), rest.find("/*")) {
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |n| &rest[l + n..]);
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                rest = rest[b..].find("*/").map_or("", |e| &rest[b + e + 2..]);
            }
            _ => {
                out.push_str(rest);
                rest = "";
            }
        }
    }
    out
}

/// Entry points of a WGSL file: the functions marked `@compute`.
fn wgsl_entry_points(src: &str) -> BTreeSet<String> {
    let src = strip_comments(src);
    let mut names = BTreeSet::new();
    let mut rest = src.as_str();
    while let Some(at) = rest.find("@compute") {
        rest = &rest[at..];
        let Some(f) = rest.find("fn ") else { break };
        rest = &rest[f + 3..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        names.insert(name);
    }
    names
}

/// Entry points of a CUDA file: the `extern "C" __global__` functions.
fn cuda_entry_points(src: &str) -> BTreeSet<String> {
    let src = strip_comments(src);
    let mut names = BTreeSet::new();
    for part in src.split("extern \"C\" __global__").skip(1) {
        // `void`, maybe `__launch_bounds__(...)`, then the name before the parameter list.
        let mut head = part;
        if let Some(lb) = head.find("__launch_bounds__")
            && head[..lb].trim() == "void"
        {
            head = head[lb..].find(')').map_or("", |c| &head[lb + c + 1..]);
        } else {
            head = head.trim_start().strip_prefix("void").unwrap_or(head);
        }
        let name: String = head.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        names.insert(name);
    }
    names
}

/// stem -> entry points, for every kernel file with extension `ext` in `dir`
/// (`shaders/common.wgsl`, the helpers prepended to every shader, is no kernel file).
fn kernels(dir: &Path, ext: &str, parse: fn(&str) -> BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut map = BTreeMap::new();
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.extension().and_then(|e| e.to_str()) == Some(ext) {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            if stem != "common" {
                map.insert(stem, parse(&read(&path)));
            }
        }
    }
    map
}

#[test]
fn every_wgsl_entry_point_has_a_cuda_twin_and_back() {
    let wgsl = kernels(&repo().join("shaders"), "wgsl", wgsl_entry_points);
    let cuda = kernels(&repo().join("cuda"), "cu", cuda_entry_points);
    assert!(!wgsl.is_empty(), "no shaders/*.wgsl found");
    assert!(!cuda.is_empty(), "no cuda/*.cu found");
    let mut problems = Vec::new();
    for stem in wgsl.keys().chain(cuda.keys()).collect::<BTreeSet<_>>() {
        let empty = BTreeSet::new();
        let (w, c) = (wgsl.get(stem).unwrap_or(&empty), cuda.get(stem).unwrap_or(&empty));
        if !wgsl.contains_key(stem) {
            problems.push(format!("cuda/{stem}.cu has no twin shaders/{stem}.wgsl"));
        }
        if !cuda.contains_key(stem) {
            problems.push(format!("shaders/{stem}.wgsl has no twin cuda/{stem}.cu"));
        }
        for e in w.difference(c) {
            problems.push(format!("WGSL entry point {stem}::{e} has no CUDA twin in cuda/{stem}.cu"));
        }
        for e in c.difference(w) {
            problems.push(format!("CUDA entry point {stem}::{e} has no WGSL twin in shaders/{stem}.wgsl"));
        }
    }
    assert!(problems.is_empty(), "kernel twins differ:\n{}", problems.join("\n"));
}

#[test]
fn every_op_kernel_exists_in_both_languages() {
    let wgsl = kernels(&repo().join("shaders"), "wgsl", wgsl_entry_points);
    let cuda = kernels(&repo().join("cuda"), "cu", cuda_entry_points);
    for kind in OpKind::ALL {
        let Some((stem, entry)) = kind.kernel() else { continue };
        for (lang, map) in [("WGSL", &wgsl), ("CUDA", &cuda)] {
            assert!(
                map.get(stem).is_some_and(|s| s.contains(entry)),
                "op '{}' has no {lang} kernel {stem}::{entry}",
                kind.name()
            );
        }
    }
    let stem = tandem_runtime::ops::STORED_WEIGHT_STEM;
    for (kind, entries) in tandem_runtime::ops::STORED_WEIGHT_KERNELS {
        for entry in *entries {
            for (lang, map) in [("WGSL", &wgsl), ("CUDA", &cuda)] {
                assert!(
                    map.get(stem).is_some_and(|s| s.contains(*entry)),
                    "op '{}' has no {lang} stored-weight kernel {stem}::{entry}",
                    kind.name()
                );
            }
        }
    }
}

#[test]
fn the_parsers_see_what_they_should() {
    let cu = "// extern \"C\" __global__ void commented(int)\nextern \"C\" __global__ void __launch_bounds__(256)\n  a(P p) {}\nextern \"C\" __global__ void b(P p) {}";
    assert_eq!(cuda_entry_points(cu), BTreeSet::from(["a".to_string(), "b".to_string()]));
    let wgsl = "/* @compute fn no() */\n@compute @workgroup_size(64)\nfn main_1(@builtin(x) i: u32) {}\nfn helper() {}";
    assert_eq!(wgsl_entry_points(wgsl), BTreeSet::from(["main_1".to_string()]));
}

/// A field as (name, element type, count).
type Field = (String, String, usize);

/// The `.rs` files under `dir`, op modules that are folders (`ops/qdot/`) included.
fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for path in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok().map(|e| e.path())) {
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// `#[repr(C)] pub struct XParams { ... }` declarations of the Rust op modules.
fn rust_structs() -> BTreeMap<String, Vec<Field>> {
    let mut structs = BTreeMap::new();
    for path in rust_files(&repo().join("runtime/src/ops")) {
        let src = strip_comments(&read(&path));
        for part in src.split("#[repr(C)]").skip(1) {
            let Some(at) = part.find("pub struct ") else { continue };
            let rest = &part[at + "pub struct ".len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let body = &rest[rest.find('{').unwrap() + 1..rest.find('}').unwrap()];
            let fields = body
                .split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(|f| {
                    let f = f.strip_prefix("pub ").unwrap_or(f);
                    let (field, ty) = f.split_once(':').unwrap_or_else(|| panic!("{name}: cannot parse field '{f}'"));
                    let ty = ty.trim();
                    let (elem, count) = match ty.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                        Some(arr) => {
                            let (e, n) = arr.split_once(';').unwrap();
                            let n = match n.trim() {
                                "MAX_RANK" => MAX_RANK,
                                other => other.parse().unwrap_or_else(|_| panic!("{name}: array length {other}")),
                            };
                            (e.trim().to_string(), n)
                        }
                        None => (ty.to_string(), 1),
                    };
                    (field.trim().to_string(), elem, count)
                })
                .collect();
            structs.insert(name, fields);
        }
    }
    structs
}

/// `struct X { ... };` declarations of cuda/params.cuh, and their `static_assert`ed sizes.
fn cuda_structs() -> (BTreeMap<String, Vec<Field>>, BTreeMap<String, usize>) {
    let src = strip_comments(&read(&repo().join("cuda/params.cuh")));
    let max_rank: usize = src
        .lines()
        .find_map(|l| l.trim().strip_prefix("#define TANDEM_MAX_RANK"))
        .and_then(|v| v.trim().parse().ok())
        .expect("params.cuh defines TANDEM_MAX_RANK");
    assert_eq!(max_rank, MAX_RANK, "TANDEM_MAX_RANK differs from ops::elementwise::MAX_RANK");
    let mut structs = BTreeMap::new();
    for part in src.split("\nstruct ").skip(1) {
        let name: String = part.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let body = &part[part.find('{').unwrap() + 1..part.find('}').unwrap()];
        let fields = body
            .split(';')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(|f| {
                let (ty, decl) = f.split_once(char::is_whitespace).unwrap_or_else(|| panic!("{name}: field '{f}'"));
                let decl = decl.trim();
                let (field, count) = match decl.split_once('[') {
                    Some((n, len)) => {
                        let len = len.trim_end_matches(']').trim();
                        let count = if len == "TANDEM_MAX_RANK" { max_rank } else { len.parse().unwrap() };
                        (n.trim().to_string(), count)
                    }
                    None => (decl.to_string(), 1),
                };
                (field, ty.to_string(), count)
            })
            .collect();
        structs.insert(name, fields);
    }
    let mut sizes = BTreeMap::new();
    for part in src.split("static_assert(sizeof(").skip(1) {
        let name: String = part.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let size = part.split("==").nth(1).and_then(|s| s.split(',').next()).and_then(|s| s.trim().parse().ok());
        sizes.insert(name, size.expect("static_assert(sizeof(X) == N, ...)"));
    }
    (structs, sizes)
}

fn rust_size(name: &str) -> Option<usize> {
    KernelParams::STRUCTS.iter().find(|(n, _)| *n == name).map(|&(_, size)| size)
}

#[test]
fn cuda_params_mirror_the_rust_structs() {
    let rust = rust_structs();
    let (cuda, sizes) = cuda_structs();
    assert!(rust.len() >= 12, "found only {:?} in runtime/src/ops", rust.keys());
    let names: BTreeSet<&String> = rust.keys().chain(cuda.keys()).collect();
    for name in names {
        let r = rust.get(name).unwrap_or_else(|| panic!("cuda/params.cuh declares {name}, which Rust does not"));
        let c = cuda.get(name).unwrap_or_else(|| panic!("{name} (runtime/src/ops) is not mirrored in cuda/params.cuh"));
        let r_names: Vec<_> = r.iter().map(|f| f.0.as_str()).collect();
        let c_names: Vec<_> = c.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(r_names, c_names, "{name}: field names or order differ (Rust vs CUDA)");
        for ((field, rty, rn), (_, cty, cn)) in r.iter().zip(c) {
            let same = matches!((rty.as_str(), cty.as_str()), ("u32", "u32") | ("f32", "f32") | ("f32", "float"));
            assert!(same, "{name}.{field}: Rust {rty} vs CUDA {cty}");
            assert_eq!(rn, cn, "{name}.{field}: array lengths differ");
        }
        let size = rust_size(name).unwrap_or_else(|| panic!("{name} is not listed in ops::kernel_params!"));
        let field_bytes: usize = r.iter().map(|f| 4 * f.2).sum();
        assert_eq!(field_bytes, size, "{name}: Rust adds padding the CUDA mirror would not");
        assert_eq!(sizes.get(name), Some(&size), "{name}: cuda/params.cuh must static_assert its size, {size}");
    }
}

/// `struct XParams { ... }` declarations of the WGSL kernels, per shader file. A WGSL
/// `array<vec4<u32>, N>` (uniform arrays need a 16-byte stride) stands for `[u32; 4·N]`.
fn wgsl_structs() -> Vec<(String, String, Vec<Field>)> {
    let mut structs = Vec::new();
    for (stem, _) in kernels(&repo().join("shaders"), "wgsl", wgsl_entry_points) {
        let src = strip_comments(&read(&repo().join("shaders").join(format!("{stem}.wgsl"))));
        for part in src.split("struct ").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.ends_with("Params") {
                continue;
            }
            let body = &part[part.find('{').unwrap() + 1..part.find('}').unwrap()];
            let fields = body
                .split(",\n")
                .map(str::trim)
                .map(|f| f.trim_end_matches(','))
                .filter(|f| !f.is_empty())
                .map(|f| {
                    let (field, ty) = f.split_once(':').unwrap_or_else(|| panic!("{stem}.wgsl {name}: field '{f}'"));
                    let ty = ty.trim();
                    let (elem, count) = match ty.strip_prefix("array<vec4<").and_then(|t| t.strip_suffix('>')) {
                        Some(arr) => {
                            let (e, n) = arr.split_once(">,").unwrap_or_else(|| panic!("{name}: type {ty}"));
                            (e.trim().to_string(), 4 * n.trim().parse::<usize>().unwrap())
                        }
                        None => (ty.to_string(), 1),
                    };
                    (field.trim().to_string(), elem, count)
                })
                .collect();
            structs.push((stem.clone(), name, fields));
        }
    }
    structs
}

/// Consecutive padding fields as one (`_pad: [u32; 3]` in Rust is `_pad0.._pad2` in WGSL,
/// whose uniform arrays cannot hold single words).
fn merge_padding(fields: &[Field]) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    for (name, ty, n) in fields {
        match out.last_mut() {
            Some((last, last_ty, count)) if last == "_pad" && name.starts_with("_pad") && last_ty == ty => *count += n,
            _ if name.starts_with("_pad") => out.push(("_pad".into(), ty.clone(), *n)),
            _ => out.push((name.clone(), ty.clone(), *n)),
        }
    }
    out
}

#[test]
fn wgsl_params_mirror_the_rust_structs() {
    let rust = rust_structs();
    let wgsl = wgsl_structs();
    for (stem, name, fields) in &wgsl {
        let r = rust.get(name).unwrap_or_else(|| panic!("shaders/{stem}.wgsl declares {name}, which Rust does not"));
        assert_eq!(
            merge_padding(r),
            merge_padding(fields),
            "shaders/{stem}.wgsl {name}: fields differ from Rust (name, type, count)"
        );
    }
    for name in rust.keys() {
        assert!(wgsl.iter().any(|(_, n, _)| n == name), "{name} (runtime/src/ops) is declared by no WGSL kernel");
    }
    assert!(wgsl.len() >= 13, "found only {} WGSL params structs", wgsl.len());
}
