package kv

import "strconv"

// The preload value function (documented in go-fixtures/README.md; the Rust
// checker may reimplement it):
//
//	key(i)   = "pre/" + decimal(i)
//	len(i)   = 1024 + (i * 2654435761) mod 3073          (uint64 arithmetic; 1024..4096)
//	value(i) = first len(i) bytes of  key(i) + "=" + hex(z1) + hex(z2) + ...
//	           where hex is 16 lower-case hex digits and z1, z2, ... is the
//	           SplitMix64 stream seeded with i:
//	               x += 0x9E3779B97F4A7C15
//	               z = x; z = (z ^ z>>30) * 0xBF58476D1CE4E5B9
//	               z = (z ^ z>>27) * 0x94D049BB133111EB; z ^= z>>31
//	count(N) = the smallest n with len(0) + ... + len(n-1) >= N MiB  (0 for N = 0)

// PreloadKey is the key of preloaded value i.
func PreloadKey(i int) string { return "pre/" + strconv.Itoa(i) }

// PreloadLen is the length in bytes of preloaded value i (1024..4096).
func PreloadLen(i int) int { return 1024 + int(uint64(i)*2654435761%3073) }

// PreloadValue is the deterministic value of preloaded key i.
func PreloadValue(i int) string {
	n := PreloadLen(i)
	b := make([]byte, 0, n+16)
	b = append(b, "pre/"...)
	b = strconv.AppendInt(b, int64(i), 10)
	b = append(b, '=')
	x := uint64(i)
	const hexdig = "0123456789abcdef"
	for len(b) < n {
		x += 0x9E3779B97F4A7C15
		z := x
		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
		z = (z ^ (z >> 27)) * 0x94D049BB133111EB
		z ^= z >> 31
		for s := 60; s >= 0; s -= 4 {
			b = append(b, hexdig[(z>>uint(s))&0xf])
		}
	}
	return string(b[:n])
}

// PreloadCount is the number of preloaded keys for mib MiB of values.
func PreloadCount(mib int) int {
	want := int64(mib) << 20
	var total int64
	n := 0
	for total < want {
		total += int64(PreloadLen(n))
		n++
	}
	return n
}
