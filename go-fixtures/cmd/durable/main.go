// Command durable is the "durable store" fixture: a key-value server that
// logs every PUT to a write-ahead log (fsynced) before acknowledging it and
// holds the kernel objects a storage server holds (see package durable and
// go-fixtures/README.md). It prints "READY <pid> <addr>" on stdout once it
// listens (addr: the main listener), reloads its config on SIGHUP, on the
// RELOAD command and when the config file is written, and exits 0 on
// SIGTERM/SIGINT.
//
// Built twice: `durable` (CGO_ENABLED=0, static) and `durable-cgo`
// (CGO_ENABLED=1 -tags netcgo: dynamically linked against glibc).
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"checksync/fixtures/internal/durable"
	"checksync/fixtures/internal/svc"
)

func main() {
	svc.Setup("durable")
	data := flag.String("data", "", "data directory (created if missing; required)")
	addr := flag.String("addr", "127.0.0.1:7100", "main listen address (port 0: any free port; the READY line tells which)")
	admin := flag.String("admin-addr", "127.0.0.1:0", "admin listen address (the config's admin_addr, if set, wins)")
	config := flag.String("config", "", "config file (JSON: admin_addr, tick_ms; created with defaults if missing; default DATA/durable.json)")
	slots := flag.Int("slots", 16384, "data table slots (512 bytes each)")
	bg := flag.Int("bg", 8, "housekeeping goroutines with their own timers")
	statsEvery := flag.Duration("log-stats", 10*time.Second, "log a stats line this often (0: never)")
	flag.Parse()
	if flag.NArg() > 0 || *data == "" {
		fmt.Fprintln(os.Stderr, "durable: need -data DIR and no other arguments")
		flag.Usage()
		os.Exit(2)
	}
	s, err := durable.New(durable.Options{DataDir: *data, Addr: *addr, AdminAddr: *admin, ConfigPath: *config, Slots: *slots})
	if err != nil {
		log.Fatalf("start: %v", err)
	}
	svc.Background(*bg)
	svc.LogStats(*statsEvery, func() string {
		st := s.Stats()
		return fmt.Sprintf("stats: keys=%d puts=%d gets=%d conns=%d goroutines=%d", st.Keys, st.Puts, st.Gets, st.Conns, st.Goroutines)
	})
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			if err := s.Reload("SIGHUP"); err != nil {
				log.Printf("reload (SIGHUP): %v", err)
			}
		}
	}()
	svc.OnSignal(func(sig os.Signal) {
		log.Printf("%v: exiting", sig)
		os.Exit(0)
	})
	svc.Ready(s.MainListener())
	select {}
}
