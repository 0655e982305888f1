module checksync/fixtures

// Go 1.19.8 builds with `-modfile=go119.mod`; keep in sync with go.mod (no
// requirements: standard library only).
go 1.19
