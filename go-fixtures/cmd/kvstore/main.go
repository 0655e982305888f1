// Command kvstore is an in-memory key-value store over TCP (line protocol, see
// go-fixtures/README.md). It prints "READY <pid> <addr>" on stdout once it
// listens and logs to stderr.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"checksync/fixtures/internal/kv"
	"checksync/fixtures/internal/svc"
)

func main() {
	svc.Setup("kvstore")
	addr := flag.String("addr", "127.0.0.1:7000", "listen address (port 0: any free port; the READY line tells which)")
	preload := flag.Int("preload-mib", 0, "preload this many MiB of deterministic values (keys pre/<i>, see README)")
	tick := flag.Duration("tick", 100*time.Millisecond, "update key \"tick\" with \"<count> <unix-nanos>\" this often")
	sweep := flag.Duration("sweep", time.Second, "TTL expiry sweep period")
	bg := flag.Int("bg", 16, "housekeeping goroutines with their own timers")
	statsEvery := flag.Duration("log-stats", 10*time.Second, "log a stats line this often (0: never)")
	idle := flag.Duration("idle-timeout", 0, "close connections idle this long (0: never)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "kvstore: unexpected arguments:", flag.Args())
		os.Exit(2)
	}

	s := kv.New(kv.Options{PreloadMiB: *preload, TickPeriod: *tick, SweepPeriod: *sweep, IdleTimeout: *idle})
	l, err := svc.Listen(*addr)
	if err != nil {
		log.Fatalf("listen %s: %v", *addr, err)
	}
	svc.Background(*bg)
	svc.LogStats(*statsEvery, func() string {
		st := s.Stats()
		return fmt.Sprintf("stats: keys=%d conns=%d ops=%d dedup_hits=%d goroutines=%d num_gc=%d heap=%dMiB",
			st.Keys, st.Conns, st.Ops, st.DedupHits, st.Goroutines, st.NumGC, st.HeapAlloc>>20)
	})
	svc.OnSignal(func(sig os.Signal) {
		log.Printf("%v: exiting", sig)
		os.Exit(0)
	})
	log.Printf("listening on %s (%s), preload %d keys", l.Addr(), svc.ListenerProto(l), s.PreloadKeys())
	svc.Ready(l)
	if err := s.Serve(l); err != nil {
		log.Fatalf("serve: %v", err)
	}
}
