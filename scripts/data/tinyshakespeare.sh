#!/usr/bin/env bash
# Prepares the tiny Shakespeare corpus, char-level with a 90/10 train/val split (as nanoGPT's
# shakespeare_char), into datasets/tinyshakespeare_char/ at the repository root:
# train_000000.bin, val_000000.bin, vocab.json (see docs/data.md).
#
# Usage: scripts/data/tinyshakespeare.sh [PATH]   (works from any directory)
#   PATH given: use that local copy of the text.
#   Otherwise:  ../shared/data/tinyshakespeare.txt beside the repository if present, else a
#               download from the char-rnn repository (curl or wget), checked by sha256.
# Running it again does nothing when the output is up to date with the same input.
set -euo pipefail

SHA256=86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed
URL=https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT_REL=datasets/tinyshakespeare_char
OUT="$ROOT/$OUT_REL"
SHARED="$ROOT/../shared/data/tinyshakespeare.txt"
ARGS=(--tokenizer char --val-fraction 0.1)

die() { echo "tinyshakespeare.sh: error: $*" >&2; exit 1; }
sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
    else die "neither sha256sum nor shasum is installed"; fi
}

if [ $# -gt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    echo "usage: scripts/data/tinyshakespeare.sh [PATH]" >&2
    exit 2
fi

if [ $# -eq 1 ]; then
    [ -f "$1" ] || die "$1: no such file"
    INPUT="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
    SUM="$(sha256_of "$INPUT")"
    if [ "$SUM" != "$SHA256" ]; then
        echo "tinyshakespeare.sh: warning: $1 has sha256 $SUM, not the reference $SHA256; using it anyway" >&2
    fi
elif [ -f "$SHARED" ]; then
    INPUT="$(cd "$(dirname "$SHARED")" && pwd)/$(basename "$SHARED")"
    SUM="$(sha256_of "$INPUT")"
    [ "$SUM" = "$SHA256" ] || die "$INPUT has sha256 $SUM, expected $SHA256 (corrupt copy?)"
else
    INPUT="$OUT/input.txt"
    if [ ! -f "$INPUT" ] || [ "$(sha256_of "$INPUT")" != "$SHA256" ]; then
        mkdir -p "$OUT"
        echo "downloading $URL"
        if command -v curl >/dev/null 2>&1; then
            curl -fsSL --retry 2 -o "$INPUT.part" "$URL" || { rm -f "$INPUT.part"; die "download failed (offline?); pass a local copy: scripts/data/tinyshakespeare.sh PATH"; }
        elif command -v wget >/dev/null 2>&1; then
            wget -q -O "$INPUT.part" "$URL" || { rm -f "$INPUT.part"; die "download failed (offline?); pass a local copy: scripts/data/tinyshakespeare.sh PATH"; }
        else
            die "neither curl nor wget is installed; pass a local copy: scripts/data/tinyshakespeare.sh PATH"
        fi
        SUM="$(sha256_of "$INPUT.part")"
        if [ "$SUM" != "$SHA256" ]; then
            rm -f "$INPUT.part"
            die "downloaded file has sha256 $SUM, expected $SHA256"
        fi
        mv "$INPUT.part" "$INPUT"
    fi
    SUM="$SHA256"
fi

# Up to date: the same input (by content) and options, and every output present.
STAMP="$OUT/.prepared"
WANT="input_sha256=$SUM ${ARGS[*]}"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -f "$OUT/train_000000.bin" ] &&
    [ -f "$OUT/val_000000.bin" ] && [ -f "$OUT/vocab.json" ]; then
    echo "$OUT_REL is up to date (input $INPUT); nothing to do"
    exit 0
fi

cd "$ROOT"
if [ ! -x ./prepare_data ]; then
    echo "building prepare_data"
    make prepare_data
fi
rm -f "$STAMP"
./prepare_data --input "$INPUT" "${ARGS[@]}" --out "$OUT_REL"
echo "$WANT" >"$STAMP"
