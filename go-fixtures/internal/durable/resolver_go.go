//go:build !cgo || !netcgo

package durable

// resolverName: without cgo, or without the netcgo build tag, package net's
// own resolver (reading /etc/hosts and DNS itself) answers.
const resolverName = "go"
