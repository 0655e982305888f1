#!/usr/bin/env bash
# `go test ./...` in go-fixtures with Go 1.27.3 (go.mod) and Go 1.19.8
# (go119.mod), then the durable store's package once more with cgo (as
# durable-cgo is built). Extra arguments go to `go test` (e.g. -count=1 -v
# -run TestKV).
set -euo pipefail
fx=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/env.sh
. "$fx/../scripts/env.sh"
cd "$fx"
rc=0
for spec in "$CS_GO127 go.mod" "$CS_GO119 go119.mod"; do
  read -r goroot modfile <<<"$spec"
  echo "==> $("$goroot/bin/go" env GOVERSION): go test ./... ($modfile)"
  CGO_ENABLED=0 GOFLAGS= GOTOOLCHAIN=local GOPROXY=off \
    "$goroot/bin/go" test -modfile="$modfile" "$@" ./... || rc=1
  echo "==> $("$goroot/bin/go" env GOVERSION): CGO_ENABLED=1 -tags netcgo go test ./internal/durable ($modfile)"
  CGO_ENABLED=1 GOFLAGS= GOTOOLCHAIN=local GOPROXY=off \
    "$goroot/bin/go" test -modfile="$modfile" -tags netcgo "$@" ./internal/durable || rc=1
done
exit $rc
