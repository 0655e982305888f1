#!/usr/bin/env bash
# Builds the Go fixture services and clients (go-fixtures/) with both pinned
# toolchains, statically (CGO_ENABLED=0) and with -trimpath, into
#   go-fixtures/build/go1.27.3/   (go.mod, `go 1.27`: current GODEBUG defaults)
#   go-fixtures/build/go1.19.8/   (go119.mod, `go 1.19`)
# Binaries: lockserver lockclient mrcoord mrworker mrclient kvstore kvclient
# blocker dirtier durable durableclient, plus durable-cgo: the durable store
# built with CGO_ENABLED=1 -tags netcgo (dynamically linked against glibc, cgo
# resolver), next to its static twin `durable`.
# Idempotent and fast when nothing changed (go's build cache; unchanged
# binaries are not rewritten). Safe to run concurrently (flock).
# Prints the build folder (go-fixtures/build, absolute) on stdout.
#
#   scripts/build-fixtures.sh          build
#   scripts/build-fixtures.sh test     build, then `go test ./...` with both toolchains
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/env.sh
. "$root/scripts/env.sh"
fx="$root/go-fixtures"
out="$fx/build"
mkdir -p "$out"

want127=go1.27.3
want119=go1.19.8

# name GOROOT modfile
toolchains() {
  printf '%s %s %s\n' "$want127" "$CS_GO127" go.mod "$want119" "$CS_GO119" go119.mod
}

check_go() { # name goroot
  local v
  v=$("$2/bin/go" env GOVERSION 2>/dev/null) || { echo "build-fixtures: no Go at $2 (run scripts/setup.sh)" >&2; exit 1; }
  if [ "$v" != "$1" ]; then
    echo "build-fixtures: $2/bin/go is $v, want $1 (run scripts/setup.sh)" >&2
    exit 1
  fi
}

exec 9>"$out/.lock"
flock 9

cd "$fx"
while read -r name goroot modfile; do
  check_go "$name" "$goroot"
  mkdir -p "$out/$name"
  start=$(date +%s%N)
  # GOFLAGS cleared so a caller's setting cannot change the binaries.
  CGO_ENABLED=0 GOFLAGS= GOTOOLCHAIN=local GOPROXY=off \
    "$goroot/bin/go" build -modfile="$modfile" -trimpath -buildvcs=false -o "$out/.new-$name/" ./cmd/...
  # The cgo twin of the durable store: glibc's pthread_create makes every
  # thread (so glibc registers rseq on each), os/user and the resolver
  # (netcgo) go through glibc.
  CGO_ENABLED=1 GOFLAGS= GOTOOLCHAIN=local GOPROXY=off \
    "$goroot/bin/go" build -modfile="$modfile" -trimpath -buildvcs=false -tags netcgo \
    -o "$out/.new-$name/durable-cgo" ./cmd/durable
  # Only binaries that changed replace the old ones: `go build -o` rewrites every
  # file, and a new mtime makes restore refuse images of programs started from the
  # old one (the executable's identity check), e.g. a benchmark running meanwhile.
  for f in "$out/.new-$name"/*; do
    b=$(basename "$f")
    if cmp -s "$f" "$out/$name/$b"; then rm -f "$f"; else mv -f "$f" "$out/$name/$b"; fi
  done
  rmdir "$out/.new-$name"
  echo "build-fixtures: $name -> $out/$name ($(( ($(date +%s%N) - start) / 1000000 )) ms)" >&2
done < <(toolchains)

if [ "${1:-}" = test ]; then
  flock -u 9
  bash "$fx/run-go-tests.sh" >&2
fi
echo "$out"
