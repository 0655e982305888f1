//go:build cgo

package durable

// The cgo build (CGO_ENABLED=1) links against glibc dynamically: every thread
// is made by pthread_create, so glibc registers rseq on each of them.

/*
#include <gnu/libc-version.h>
*/
import "C"

const cgoEnabled = true

// libcVersion is glibc's version (gnu_get_libc_version), through cgo.
func libcVersion() string { return C.GoString(C.gnu_get_libc_version()) }
