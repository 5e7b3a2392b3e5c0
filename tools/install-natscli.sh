#!/usr/bin/env bash
# Build the real `nats` CLI (github.com/nats-io/natscli, pinned version) into
# $REPO/.tools/bin/nats. Idempotent: exits at once when the right version is
# already there. Needs only a Go toolchain and the Go module proxy. Go's own
# caches (module cache, build cache) stay in their default locations, so a
# rebuild on the same machine is fast; nothing but .tools/ is written under
# the repo.
set -euo pipefail

NATSCLI_MODULE="github.com/nats-io/natscli"
NATSCLI_PKG="${NATSCLI_MODULE}/nats"
NATSCLI_VERSION="v0.5.0"   # exactly this one (not v0.5.1)

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="$REPO/.tools/bin"
NATS="$BIN_DIR/nats"

installed_ok() {
    [[ -x "$NATS" ]] || return 1
    local v
    v="$("$NATS" --version 2>/dev/null | head -n1 | tr -d '[:space:]')" || return 1
    [[ "${v#v}" == "${NATSCLI_VERSION#v}" ]]
}

if installed_ok; then
    echo "nats CLI ${NATSCLI_VERSION} already installed at $NATS"
    exit 0
fi

# Locate Go: $GO, then PATH, then the usual install location.
GO="${GO:-}"
if [[ -z "$GO" ]]; then
    if command -v go >/dev/null 2>&1; then
        GO="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
        GO=/usr/local/go/bin/go
    else
        echo "install-natscli: no Go toolchain found (set GO=/path/to/go)" >&2
        exit 1
    fi
fi

# Go derives its default caches from HOME; make sure it is set (CI may run
# with a minimal environment).
if [[ -z "${HOME:-}" ]]; then
    HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
    export HOME="${HOME:-/root}"
fi

mkdir -p "$BIN_DIR"

# Build from outside the repo so no go.mod/go.work of ours is picked up.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/natscli-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

echo "install-natscli: building ${NATSCLI_PKG}@${NATSCLI_VERSION} with $("$GO" version) ..." >&2

# Plan A: plain `go install pkg@version` straight into .tools/bin.
if ! GOBIN="$BIN_DIR" GOWORK=off GO111MODULE=on \
        "$GO" install "${NATSCLI_PKG}@${NATSCLI_VERSION}"; then
    # Plan B (e.g. the module grows replace directives, which `go install
    # pkg@version` refuses): a throwaway module in the temp dir that
    # requires natscli as a tool, then build that tool.
    echo "install-natscli: 'go install ...@${NATSCLI_VERSION}' failed; trying a throwaway module" >&2
    mkdir -p "$WORK/mod"
    cd "$WORK/mod"
    GOWORK=off "$GO" mod init natscli-build.local
    GOWORK=off "$GO" get -tool "${NATSCLI_PKG}@${NATSCLI_VERSION}"
    GOWORK=off "$GO" build -o "$WORK/nats" "$NATSCLI_PKG"
    mv -f "$WORK/nats" "$NATS"
fi

if ! installed_ok; then
    echo "install-natscli: built $NATS but '$NATS --version' does not report ${NATSCLI_VERSION}" >&2
    "$NATS" --version >&2 || true
    exit 1
fi

echo "nats CLI ${NATSCLI_VERSION} installed at $NATS"
