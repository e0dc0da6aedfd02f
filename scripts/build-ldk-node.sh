#!/usr/bin/env bash
# Build ldk-node's Python bindings from the crates.io release and make `import ldk_node`
# work in the given Python environment; build the devnet's LSPS2 provider (`ldk-lsp`,
# native/ldk-lsp) on the same release and install it next to that Python.
#
#   scripts/build-ldk-node.sh [PYTHON]      (default: .venv/bin/python)
#
# The build lands in $AUTOPILOTD_BUILD_CACHE (default ~/.cache/autopilotd), keyed by the
# pinned versions, the Rust toolchain and the wrapper crates' sources, so a repeat run is a
# copy (seconds). The cargo target directory lives in the cache too, so a key change only
# rebuilds what changed. Release profile without LTO (see native/ldk-node-py/Cargo.toml).
set -euo pipefail

LDK_NODE_VERSION=0.7.1
UNIFFI_VERSION=0.28.3

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${1:-$ROOT/.venv/bin/python}"
CACHE="${AUTOPILOTD_BUILD_CACHE:-$HOME/.cache/autopilotd}"
WRAPPER="$ROOT/native/ldk-node-py"
BINDGEN="$ROOT/native/uniffi-bindgen"
LSP="$ROOT/native/ldk-lsp"

log() { printf '[build-ldk-node] %s\n' "$*" >&2; }

command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup) first"; exit 1; }
"$PYTHON" -c 'import sys' || { log "python not usable: $PYTHON"; exit 1; }

# Cache key: pinned versions + toolchain + every file of the two crates (lockfiles included).
rust_id="$(rustc -vV | sha256sum | cut -c1-12)"
src_id="$(cd "$ROOT/native" && find ldk-node-py uniffi-bindgen ldk-lsp -type f \
    \( -name '*.rs' -o -name '*.toml' -o -name 'Cargo.lock' \) -not -path '*/target/*' \
    | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)"
KEY="ldk-node-${LDK_NODE_VERSION}-uniffi-${UNIFFI_VERSION}-rust-${rust_id}-src-${src_id}"
OUT="$CACHE/ldk-node/$KEY"
export CARGO_TARGET_DIR="$CACHE/cargo-target/ldk-node"

locked=()
[[ -f "$WRAPPER/Cargo.lock" ]] && locked=(--locked)

if [[ ! -f "$OUT/.complete" ]]; then
    log "no cached build for $KEY; building (cold: 15-25 min on 2 cores)"
    log "cargo target dir: $CARGO_TARGET_DIR"
    mkdir -p "$CACHE/ldk-node"
    start=$SECONDS

    log "step 1/4: ldk-node $LDK_NODE_VERSION cdylib (release, no LTO)"
    cargo build --release "${locked[@]}" --manifest-path "$WRAPPER/Cargo.toml"

    log "step 2/4: uniffi-bindgen $UNIFFI_VERSION"
    bindgen_locked=()
    [[ -f "$BINDGEN/Cargo.lock" ]] && bindgen_locked=(--locked)
    cargo build --release "${bindgen_locked[@]}" --manifest-path "$BINDGEN/Cargo.toml"

    log "step 3/4: generating ldk_node.py from the crate's bindings/ldk_node.udl"
    crate_dir="$(cargo metadata --format-version 1 "${locked[@]}" \
        --manifest-path "$WRAPPER/Cargo.toml" | "$PYTHON" -c '
import json, os, sys
meta = json.load(sys.stdin)
for pkg in meta["packages"]:
    if pkg["name"] == "ldk-node":
        print(os.path.dirname(pkg["manifest_path"]))
        break
else:
    sys.exit("ldk-node not found in cargo metadata")
')"
    udl="$crate_dir/bindings/ldk_node.udl"
    [[ -f "$udl" ]] || { log "missing UDL: $udl"; exit 1; }
    lib="$CARGO_TARGET_DIR/release/libldk_node_py.so"
    tmp="$(mktemp -d "$CACHE/ldk-node/.tmp.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    "$CARGO_TARGET_DIR/release/uniffi-bindgen" generate "$udl" --language python \
        --no-format --lib-file "$lib" --out-dir "$tmp"
    cp "$lib" "$tmp/libldk_node.so"

    log "step 4/4: ldk-lsp, the devnet's LSPS2 service (same ldk-node, same target dir)"
    cargo build --release --locked --manifest-path "$LSP/Cargo.toml"
    cp "$CARGO_TARGET_DIR/release/ldk-lsp" "$tmp/ldk-lsp"
    printf '%s\n' "$KEY" >"$tmp/KEY"
    touch "$tmp/.complete"
    rm -rf "$OUT"
    mv "$tmp" "$OUT"
    trap - EXIT
    log "built in $((SECONDS - start)) s -> $OUT"
else
    log "cached: $OUT"
fi

# Install into the interpreter's site-packages (a copy, so the venv does not depend on
# the cache staying put). Skipped when the installed copy already matches.
site="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if cmp -s "$OUT/KEY" "$site/ldk_node.KEY" 2>/dev/null \
    && [[ -f "$site/ldk_node.py" && -f "$site/libldk_node.so" ]]; then
    log "already installed in $site"
else
    # Copy, then rename over the old files: processes that have the old library mapped
    # keep their inode instead of seeing it rewritten under them.
    for name in ldk_node.py libldk_node.so; do
        cp "$OUT/$name" "$site/.$name.tmp"
        mv -f "$site/.$name.tmp" "$site/$name"
    done
    cp "$OUT/KEY" "$site/ldk_node.KEY"
    log "installed ldk_node.py + libldk_node.so into $site"
fi
bindir="$(dirname "$PYTHON")"
if ! cmp -s "$OUT/ldk-lsp" "$bindir/ldk-lsp" 2>/dev/null; then
    cp "$OUT/ldk-lsp" "$bindir/.ldk-lsp.tmp"
    mv -f "$bindir/.ldk-lsp.tmp" "$bindir/ldk-lsp"
    log "installed ldk-lsp into $bindir"
fi
"$PYTHON" -c 'import ldk_node; ldk_node.default_config()' \
    || { log "import check failed"; exit 1; }
log "ok: import ldk_node"
