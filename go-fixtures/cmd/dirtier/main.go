// dirtier: a synthetic live heap with a fixed write rate, for the epoch benchmarks
// (benches/benches/epochs.rs).
//
// It allocates -heap-mib MiB of Go memory in 1 MiB chunks (large objects, so every
// 4 KiB page of a chunk is page-aligned), writes every page once, chooses a hot
// set of -percent % of those pages at random (once, seeded by -seed), prints
// "READY <pid> -" (no listener: the address field is a placeholder), and then
// every -period-ms writes one byte into every page of the hot set (a counter, so
// the contents change each time). Any window of at least one period, such as a
// checkpoint epoch, sees about that dirty set. It allocates nothing after READY
// (no garbage, no GC cycles) and runs until killed.
package main

import (
	"flag"
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"time"
)

const (
	pageSize  = 4096
	chunkSize = 1 << 20
	perChunk  = chunkSize / pageSize
)

func main() {
	heapMiB := flag.Int("heap-mib", 256, "MiB of heap to allocate and touch")
	percent := flag.Float64("percent", 1, "percent of the heap's pages written every period (may be fractional)")
	periodMs := flag.Int("period-ms", 10, "milliseconds between two passes over the hot set")
	seed := flag.Int64("seed", 1, "seed of the hot set's choice")
	flag.Parse()
	if *heapMiB <= 0 || *percent < 0 || *percent > 100 || *periodMs <= 0 {
		fmt.Fprintln(os.Stderr, "dirtier: want -heap-mib > 0, 0 <= -percent <= 100, -period-ms > 0")
		os.Exit(2)
	}

	chunks := make([][]byte, *heapMiB)
	for i := range chunks {
		c := make([]byte, chunkSize)
		for off := 0; off < chunkSize; off += pageSize {
			c[off] = 1
		}
		chunks[i] = c
	}
	npages := *heapMiB * perChunk

	// The hot set: the first nhot entries of a partial Fisher-Yates shuffle.
	nhot := int(float64(npages)*(*percent)/100 + 0.5)
	idx := make([]int32, npages)
	for i := range idx {
		idx[i] = int32(i)
	}
	rng := rand.New(rand.NewSource(*seed))
	for i := 0; i < nhot; i++ {
		j := i + rng.Intn(npages-i)
		idx[i], idx[j] = idx[j], idx[i]
	}
	hot := make([]int32, nhot)
	copy(hot, idx[:nhot])
	idx = nil
	runtime.GC() // the shuffle's array is garbage: collect it before READY

	fmt.Fprintf(os.Stderr, "dirtier: %d MiB, %d pages, hot set %d pages (%.3g%%), every %d ms\n",
		*heapMiB, npages, nhot, *percent, *periodMs)
	fmt.Fprintf(os.Stdout, "READY %d -\n", os.Getpid())

	tick := time.NewTicker(time.Duration(*periodMs) * time.Millisecond)
	var n byte
	for range tick.C {
		n++
		for _, p := range hot {
			chunks[p/perChunk][int(p%perChunk)*pageSize+int(n)%pageSize] = n
		}
	}
}
