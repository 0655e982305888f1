// Package svc holds what every fixture service does the same way: logging to
// stderr, listening, the READY line, signals and background housekeeping.
package svc

import (
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

// Setup makes the standard logger write "<name>: <time> ..." lines to stderr.
func Setup(name string) {
	log.SetOutput(os.Stderr)
	log.SetPrefix(name + ": ")
	log.SetFlags(log.Ldate | log.Lmicroseconds)
}

// Listen opens a TCP listener. With Go >= 1.24 and a go.mod `go` line >= 1.24
// this is a Multipath TCP listener when the kernel allows it (net's default).
func Listen(addr string) (net.Listener, error) {
	return net.Listen("tcp", addr)
}

// Ready prints "READY <pid> <addr>" on stdout. os.Stdout is unbuffered in Go,
// so the line is written by the time Ready returns.
func Ready(l net.Listener) {
	fmt.Fprintf(os.Stdout, "READY %d %s\n", os.Getpid(), l.Addr().String())
	_ = os.Stdout.Sync() // flush where it means something (files); harmless on pipes
}

// OnSignal calls fn once on SIGINT or SIGTERM (in its own goroutine).
func OnSignal(fn func(os.Signal)) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-ch
		fn(s)
	}()
}

// Background starts n housekeeping goroutines, each with its own ticker (periods
// 50 ms .. 1.6 s), doing a little bookkeeping work, so that the runtime has
// many goroutines and timers like a real service. The work is tiny (a few
// hundred wake-ups per second at most for n = 16).
func Background(n int) *BackgroundStats {
	st := &BackgroundStats{}
	for i := 0; i < n; i++ {
		period := time.Duration(50<<uint(i%6)) * time.Millisecond
		go housekeeper(i, period, st)
	}
	return st
}

// BackgroundStats counts housekeeping wake-ups.
type BackgroundStats struct {
	Wakeups atomic.Int64
}

func housekeeper(i int, period time.Duration, st *BackgroundStats) {
	t := time.NewTicker(period)
	defer t.Stop()
	// A little private state that changes with every tick (some heap churn).
	ring := make([][]byte, 8)
	n := 0
	for range t.C {
		st.Wakeups.Add(1)
		ring[n%len(ring)] = make([]byte, 256+64*(i%8))
		ring[n%len(ring)][0] = byte(n)
		n++
		if i == 0 && n%200 == 0 {
			runtime.Gosched()
		}
	}
}

// LogStats logs fn's result every period until the process exits.
func LogStats(period time.Duration, fn func() string) {
	if period <= 0 {
		return
	}
	go func() {
		t := time.NewTicker(period)
		defer t.Stop()
		for range t.C {
			log.Print(fn())
		}
	}()
}
