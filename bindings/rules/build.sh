#!/usr/bin/env bash
# Builds every guest in this workspace (example rules, hostile guests,
# compatibility fixtures) into a WebAssembly component.
#
#   bindings/rules/build.sh [OUT_DIR]      (default: bindings/rules/out)
#
# Each crate `rule-NAME`, `hostile-NAME`, `compat-NAME` or `bench-NAME`
# becomes OUT_DIR/KIND/NAME.wasm (KIND: rules, hostile, compat, bench), and each
# hostile-wat/NAME.wat becomes OUT_DIR/hostile/NAME.wasm. Two more hostile
# fixtures are written that need no compiler: hostile/not-wasm.wasm (text) and
# hostile/core-module.wasm (a core module, not a component).
#
# Needs the wasm32-unknown-unknown target (added if missing) and wasm-tools
# (installed from crates.io if missing or of another version). The plugins
# crate's tests read OUT_DIR (TANDEM_RULES_COMPONENTS overrides the default).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/out}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# Same wasmparser generation as wasmtime 48, so the component encoding it
# writes is one the host reads.
wasm_tools_version="1.254.0"

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi

if [[ "$(wasm-tools --version 2>/dev/null | awk '{print $2}')" != "$wasm_tools_version" ]]; then
    echo "installing wasm-tools $wasm_tools_version (takes a few minutes)" >&2
    cargo install "wasm-tools@$wasm_tools_version" --locked --no-default-features \
        --features component,validate,print,parse,metadata
fi

target_dir="${CARGO_TARGET_DIR:-$here/target}"
(cd "$here" && cargo build --release --target wasm32-unknown-unknown --workspace --exclude tandem-rules-sdk)

rm -rf "$out/rules" "$out/hostile" "$out/compat" "$out/bench"
mkdir -p "$out/rules" "$out/hostile" "$out/compat" "$out/bench"
for manifest in "$here"/{examples,hostile,compat,bench}/*/Cargo.toml; do
    crate="$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)"
    case "$crate" in
        rule-*) dir=rules name="${crate#rule-}" ;;
        hostile-*) dir=hostile name="${crate#hostile-}" ;;
        compat-*) dir=compat name="${crate#compat-}" ;;
        bench-*) dir=bench name="${crate#bench-}" ;;
        *) echo "unexpected crate $crate in $manifest" >&2; exit 1 ;;
    esac
    core="$target_dir/wasm32-unknown-unknown/release/${crate//-/_}.wasm"
    wasm-tools component new "$core" -o "$out/$dir/$name.wasm"
    wasm-tools validate --features component-model "$out/$dir/$name.wasm"
    # Keep the example cases next to the component so `tandem rules check`
    # can be pointed at one folder.
    if [[ -f "$(dirname "$manifest")/cases.jsonl" ]]; then
        cp "$(dirname "$manifest")/cases.jsonl" "$out/$dir/$name.cases.jsonl"
    fi
done

# Hostile guests a Rust guest cannot express, written as core modules in WAT
# (hostile-wat/): wasm-tools embeds the rule world in each and wraps it into a
# component the way it wraps a Rust guest.
for wat in "$here"/hostile-wat/*.wat; do
    name="$(basename "$wat" .wat)"
    wasm-tools component embed "$here/wit" --world rule-plugin "$wat" -o "$out/hostile/$name.core.wasm"
    wasm-tools component new "$out/hostile/$name.core.wasm" -o "$out/hostile/$name.wasm"
    rm "$out/hostile/$name.core.wasm"
    wasm-tools validate --features component-model "$out/hostile/$name.wasm"
done

printf 'this is not a WebAssembly file\n' > "$out/hostile/not-wasm.wasm"
cp "$target_dir/wasm32-unknown-unknown/release/rule_price_band.wasm" "$out/hostile/core-module.wasm"

echo "components written to $out" >&2
ls -l "$out"/rules "$out"/hostile "$out"/compat "$out"/bench >&2
