//! Checks a plugin file before anything runs: that it is a component, that
//! it targets a tandem:rules version this host speaks, and that it imports
//! nothing but the rule world's host interface.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The newest world version this host implements. Guests built against any
/// 0.2.x or 0.1.x are accepted (the linker and export lookup are
/// semver-aware); other versions are rejected by name.
pub const WORLD_VERSION: &str = "0.2.0";
const PACKAGE: &str = "tandem:rules";
const RULE_EXPORT: &str = "tandem:rules/rule";
/// Plugin files larger than this are refused unread.
pub const MAX_PLUGIN_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read plugin {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("plugin {path} is {size} bytes; the limit is {MAX_PLUGIN_BYTES}")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("plugin {path} is not WebAssembly (no \\0asm header)")]
    NotWasm { path: PathBuf },
    #[error(
        "plugin {path} is a core wasm module, not a component; build it with `wasm-tools component new` \
         against the {PACKAGE}@{WORLD_VERSION} world"
    )]
    CoreModule { path: PathBuf },
    #[error("plugin {path} does not compile: {message}")]
    Compile { path: PathBuf, message: String },
    #[error(
        "plugin {path} targets {PACKAGE}@{found}; this host speaks {PACKAGE}@{WORLD_VERSION} (accepts 0.2.x and 0.1.x)"
    )]
    WorldVersion { path: PathBuf, found: String },
    #[error("plugin {path} exports no `{RULE_EXPORT}` interface (its exports: {exports})")]
    NoRuleExport { path: PathBuf, exports: String },
    #[error("plugin {path} imports `{import}`: {why}")]
    ForbiddenImport { path: PathBuf, import: String, why: &'static str },
    #[error("plugin {path} cannot be instantiated: {message}")]
    Instantiate { path: PathBuf, message: String },
}

/// Reads a plugin file (bounded) and returns its bytes and SHA-256.
pub(crate) fn read(path: &Path) -> Result<(Vec<u8>, [u8; 32]), LoadError> {
    let read_err = |source| LoadError::Read { path: path.to_owned(), source };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    if size > MAX_PLUGIN_BYTES {
        return Err(LoadError::TooLarge { path: path.to_owned(), size });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    // The file may have grown between stat and read.
    if bytes.len() as u64 > MAX_PLUGIN_BYTES {
        return Err(LoadError::TooLarge { path: path.to_owned(), size: bytes.len() as u64 });
    }
    let digest = Sha256::digest(&bytes).into();
    Ok((bytes, digest))
}

/// Tells a component from a core module or garbage by the 8-byte preamble,
/// so that the error says what the file is instead of a parser message.
pub(crate) fn check_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm { path: path.to_owned() });
    }
    // Core modules have version 1 and layer 0; components set the layer to 1.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::CoreModule { path: path.to_owned() });
    }
    Ok(())
}

/// The world versions this host serves, by semver-compatible range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum World {
    /// 0.1.x: `check` only.
    V0_1,
    /// 0.2.x: `check` and `check-batch`.
    V0_2,
}

/// Returns the world version the component's `rule` export was built for.
pub(crate) fn check_world(path: &Path, engine: &Engine, component: &Component) -> Result<(String, World), LoadError> {
    let ty = component.component_type();
    let mut exports = Vec::new();
    let mut found = None;
    for (name, _) in ty.exports(engine) {
        if let Some(version) = interface_version(name, RULE_EXPORT) {
            found = Some(version.to_string());
        }
        exports.push(name.to_string());
    }
    let Some(version) = found else {
        let exports = if exports.is_empty() { "none".to_string() } else { exports.join(", ") };
        return Err(LoadError::NoRuleExport { path: path.to_owned(), exports });
    };
    let Some(world) = compatible(&version) else {
        return Err(LoadError::WorldVersion { path: path.to_owned(), found: version });
    };
    for (name, _) in ty.imports(engine) {
        let forbidden = |why| Err(LoadError::ForbiddenImport { path: path.to_owned(), import: name.to_string(), why });
        // `types` and `batch` only define types; a component imports them all the same.
        let allowed = ["tandem:rules/host", "tandem:rules/types", "tandem:rules/batch"];
        match allowed.iter().find_map(|iface| interface_version(name, iface)) {
            Some(v) if compatible(v).is_some() => {}
            Some(_) => return forbidden("a different tandem:rules version than this host speaks"),
            None if name.starts_with("wasi:") => {
                return forbidden("rule plugins get no WASI: no files, network, clock or randomness");
            }
            None => return forbidden("the rule world offers only tandem:rules/host (log, lookup)"),
        }
    }
    Ok((version, world))
}

/// `tandem:rules/rule@0.1.0` -> `Some("0.1.0")` for interface `tandem:rules/rule`.
/// An unversioned name reports version "none".
fn interface_version<'a>(name: &'a str, interface: &str) -> Option<&'a str> {
    let rest = name.strip_prefix(interface)?;
    if rest.is_empty() {
        return Some("none");
    }
    rest.strip_prefix('@')
}

/// Semver compatibility for 0.x: the same minor version (pre-release and
/// build suffixes ignored) as one of the worlds this host serves.
fn compatible(version: &str) -> Option<World> {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || parts[0] != "0" || parts[2].parse::<u64>().is_err() {
        return None;
    }
    match parts[1] {
        "1" => Some(World::V0_1),
        "2" => Some(World::V0_2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(compatible("0.1.0"), Some(World::V0_1));
        assert_eq!(compatible("0.1.7"), Some(World::V0_1));
        assert_eq!(compatible("0.1.2-rc1"), Some(World::V0_1));
        assert_eq!(compatible("0.2.0"), Some(World::V0_2));
        assert_eq!(compatible("0.2.3"), Some(World::V0_2));
        assert_eq!(compatible("0.3.0"), None);
        assert_eq!(compatible("1.1.0"), None);
        assert_eq!(compatible("1.2.0"), None);
        assert_eq!(compatible("none"), None);
        assert_eq!(compatible("0.10.0"), None);
        assert_eq!(interface_version("tandem:rules/rule@0.2.0", RULE_EXPORT), Some("0.2.0"));
        assert_eq!(interface_version("tandem:rules/rule", RULE_EXPORT), Some("none"));
        assert_eq!(interface_version("tandem:rules/rules@0.1.0", RULE_EXPORT), None);
    }

    #[test]
    fn headers() {
        let p = Path::new("x.wasm");
        assert!(matches!(check_header(p, b"hello world"), Err(LoadError::NotWasm { .. })));
        assert!(matches!(check_header(p, b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule { .. })));
        assert!(check_header(p, b"\0asm\x0d\0\x01\0").is_ok());
    }
}
