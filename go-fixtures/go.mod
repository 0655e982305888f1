module checksync/fixtures

// The `go` line selects the GODEBUG defaults of the binaries Go 1.27.3 builds:
// 1.27 means current defaults (MPTCP on listeners, ...). Go 1.19.8 builds with
// go119.mod (same module, `go 1.19`): see README.md and scripts/build-fixtures.sh.
go 1.27
