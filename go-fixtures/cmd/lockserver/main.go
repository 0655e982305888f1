// Command lockserver serves named locks over TCP (line protocol, see
// go-fixtures/README.md). It prints "READY <pid> <addr>" on stdout once it
// listens and logs to stderr.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"checksync/fixtures/internal/lock"
	"checksync/fixtures/internal/svc"
)

func main() {
	svc.Setup("lockserver")
	addr := flag.String("addr", "127.0.0.1:7001", "listen address (port 0: any free port; the READY line tells which)")
	maxWait := flag.Duration("max-wait", 60*time.Second, "cap on an ACQUIRE's wait")
	bg := flag.Int("bg", 16, "housekeeping goroutines with their own timers")
	statsEvery := flag.Duration("log-stats", 10*time.Second, "log a stats line this often (0: never)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "lockserver: unexpected arguments:", flag.Args())
		os.Exit(2)
	}
	s := lock.New(lock.Options{MaxWait: *maxWait})
	l, err := svc.Listen(*addr)
	if err != nil {
		log.Fatalf("listen %s: %v", *addr, err)
	}
	svc.Background(*bg)
	svc.LogStats(*statsEvery, func() string {
		st := s.Stats()
		return fmt.Sprintf("stats: locks=%d held=%d waiting=%d conns=%d ops=%d grants=%d timeouts=%d dedup_hits=%d goroutines=%d",
			st.Locks, st.Held, st.Waiting, st.Conns, st.Ops, st.Grants, st.Timeouts, st.DedupHits, st.Goroutines)
	})
	svc.OnSignal(func(sig os.Signal) {
		log.Printf("%v: exiting", sig)
		os.Exit(0)
	})
	log.Printf("listening on %s (%s)", l.Addr(), svc.ListenerProto(l))
	svc.Ready(l)
	if err := s.Serve(l); err != nil {
		log.Fatalf("serve: %v", err)
	}
}
