//go:build cgo && netcgo

package durable

// resolverName: with cgo and the netcgo build tag, package net resolves
// through glibc's getaddrinfo.
const resolverName = "cgo"
