//go:build !cgo

package durable

const cgoEnabled = false

// libcVersion is "" without cgo: the static build has no libc.
func libcVersion() string { return "" }
