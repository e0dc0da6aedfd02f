#!/usr/bin/env bash
# Build btcd (and btcctl) from the Go module proxy at a pinned version into the build cache.
#
#   scripts/build-btcd.sh
#
# Output: $AUTOPILOTD_BUILD_CACHE/btcd/<key>/bin/{btcd,btcctl} (default cache
# ~/.cache/autopilotd), keyed by the btcd version and the Go toolchain. The devnet finds
# the binary there (autopilotd.devnet.btcd.find_btcd). Cached: a no-op in well under a second.
set -euo pipefail

BTCD_VERSION=v0.26.2

CACHE="${AUTOPILOTD_BUILD_CACHE:-$HOME/.cache/autopilotd}"
log() { printf '[build-btcd] %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go not found: install Go first"; exit 1; }
export GOTOOLCHAIN=local
go_id="$(go env GOVERSION GOOS GOARCH | tr '\n' '-' | sed 's/-$//')"
KEY="btcd-${BTCD_VERSION}-${go_id}"
OUT="$CACHE/btcd/$KEY"

if [[ -f "$OUT/.complete" ]]; then
    log "cached: $OUT"
    exit 0
fi

log "building btcd $BTCD_VERSION with $go_id (1-3 min cold)"
mkdir -p "$CACHE/btcd"
tmp="$(mktemp -d "$CACHE/btcd/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
GOBIN="$tmp/bin" go install -trimpath \
    "github.com/btcsuite/btcd@${BTCD_VERSION}" \
    "github.com/btcsuite/btcd/cmd/btcctl@${BTCD_VERSION}"
printf '%s\n' "$KEY" >"$tmp/KEY"
touch "$tmp/.complete"
rm -rf "$OUT"
mv "$tmp" "$OUT"
trap - EXIT
# A stable name the devnet looks up first; the keyed folder stays for other toolchains.
ln -sfn "$KEY" "$CACHE/btcd/current"
log "built in $((SECONDS - start)) s -> $OUT"
