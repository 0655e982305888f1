// Command lockclient drives lockserver: a load run (default) or one command
// (-cmd "HOLDER L1").
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"checksync/fixtures/internal/loadgen"
	"checksync/fixtures/internal/lock"
	"checksync/fixtures/internal/svc"
	"checksync/fixtures/internal/wire"
)

func main() {
	svc.Setup("lockclient")
	var lf loadgen.Flags
	lf.Register(flag.CommandLine)
	var o lock.LoadOptions
	flag.StringVar(&o.Addr, "addr", "127.0.0.1:7001", "lockserver address")
	flag.Float64Var(&o.WriteFrac, "write-frac", 0.8, "fraction of rounds that acquire, hold and release a lock (the rest: one HOLDER query)")
	flag.IntVar(&o.Locks, "locks", 8, "lock space size: locks <lock-prefix>0 .. <lock-prefix>N-1")
	flag.StringVar(&o.LockPrefix, "lock-prefix", "L", "lock name prefix")
	flag.DurationVar(&o.Wait, "acquire-timeout", 500*time.Millisecond, "how long ACQUIRE waits for the lock")
	flag.DurationVar(&o.Hold, "hold", time.Millisecond, "hold a granted lock this long before releasing it")
	flag.DurationVar(&o.Lease, "lease", 0, "ACQUIRE with this lease (the server frees the lock after it; 0: no lease)")
	flag.BoolVar(&o.CheckHeld, "check-held", true, "while holding, ask HOLDER and expect ourselves")
	cmd := flag.String("cmd", "", "instead of a load run: send one request (e.g. \"STATS\", \"HOLDER L1\", \"ACQUIRE L1 1000\", \"RELEASE L1\") as client -client-id-base, or 0 for STATS/HOLDER/PING, and print the reply")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "lockclient: unexpected arguments:", flag.Args())
		os.Exit(2)
	}
	if *cmd != "" {
		op, args := wire.Word(strings.TrimSpace(*cmd))
		op = strings.ToUpper(op)
		cid := lf.ClientIDBase
		if op == "STATS" || op == "HOLDER" || op == "PING" {
			cid = 0
		}
		to := lf.MaxTime
		if to <= 0 {
			to = 70 * time.Second
		}
		rep, err := lock.Call(o.Addr, cid, op, args, to)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(strings.TrimSpace(rep.Status + " " + rep.Payload))
		if rep.Status == wire.Err || rep.Status == wire.Stale {
			os.Exit(1)
		}
		return
	}
	run, err := loadgen.NewRun("lockclient", lf)
	if err != nil {
		log.Fatal(err)
	}
	if sum := lock.RunLoad(run, o); sum.Wrong > 0 {
		os.Exit(1)
	}
}
