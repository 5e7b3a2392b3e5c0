#!/usr/bin/env bash
# Usage: tools/install-go-tool.sh NAME PACKAGE VERSION
#
# Builds the Go program PACKAGE@VERSION from the Go module proxy into
# $REPO/.tools/bin/NAME, or $TOOLS_BIN/NAME when set (an absolute path: third-party
# peers for tests/interop such as the nats CLI and grpcurl, and the protoc plugins the
# Go client is generated with). Idempotent: a stamp file beside the binary records what was built,
# and a matching stamp exits at once. Go's own caches stay in their default
# locations, so a rebuild on the same machine is fast; nothing but .tools/ is
# written under the repo.
set -euo pipefail

NAME="$1" PKG="$2" VERSION="$3"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${TOOLS_BIN:-$REPO/.tools/bin}"
STAMP="$BIN_DIR/.$NAME.version"

if [[ -x "$BIN_DIR/$NAME" && "$(cat "$STAMP" 2>/dev/null)" == "$PKG@$VERSION" ]]; then
    echo "$NAME ($PKG@$VERSION) already installed at $BIN_DIR/$NAME"
    exit 0
fi

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[[ -x "$GO" ]] || { echo "install-go-tool: no Go toolchain found (set GO=/path/to/go)" >&2; exit 1; }
# Go derives its default caches from HOME; CI may run with a minimal environment.
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"

mkdir -p "$BIN_DIR"
rm -f "$STAMP"
# Build outside the repo so no go.mod/go.work of ours is picked up.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/go-tool-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

echo "install-go-tool: building $PKG@$VERSION with $("$GO" version) ..." >&2
if ! GOBIN="$WORK/bin" GOWORK=off GO111MODULE=on "$GO" install "$PKG@$VERSION"; then
    # `go install pkg@version` refuses modules with replace directives: build the
    # program as a tool of a throwaway module instead.
    echo "install-go-tool: 'go install' failed; trying a throwaway module" >&2
    mkdir -p "$WORK/mod" "$WORK/bin" && cd "$WORK/mod"
    GOWORK=off "$GO" mod init go-tool-build.local
    GOWORK=off "$GO" get -tool "$PKG@$VERSION"
    GOWORK=off "$GO" build -o "$WORK/bin/$(basename "$PKG")" "$PKG"
fi
mv -f "$WORK/bin/$(basename "$PKG")" "$BIN_DIR/$NAME"
echo "$PKG@$VERSION" > "$STAMP"
echo "$NAME ($PKG@$VERSION) installed at $BIN_DIR/$NAME"
