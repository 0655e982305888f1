// Command mrworker runs word-count map and reduce tasks for mrcoord until it
// says done (then exits 0). It retries RPCs forever with backoff, so it
// survives a coordinator that goes away and comes back at the same address.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"checksync/fixtures/internal/mr"
	"checksync/fixtures/internal/svc"
)

func main() {
	svc.Setup(fmt.Sprintf("mrworker[%d]", os.Getpid()))
	var o mr.WorkerOptions
	flag.StringVar(&o.Coord, "coord", "127.0.0.1:7002", "coordinator address")
	flag.StringVar(&o.OutDir, "out", ".", "directory for intermediate (mr-X-Y) and output (mr-out-Y) files")
	flag.StringVar(&o.ID, "id", "", "worker name (default w<pid>)")
	flag.DurationVar(&o.MapDelay, "map-delay", 200*time.Millisecond, "extra time spent on each map task")
	flag.DurationVar(&o.ReduceDelay, "reduce-delay", 0, "extra time spent on each reduce task")
	flag.DurationVar(&o.Heartbeat, "heartbeat", time.Second, "heartbeat period while working on a task")
	flag.DurationVar(&o.RPCTimeout, "rpc-timeout", 5*time.Second, "give up on one RPC attempt after this long (then redial and retry)")
	flag.DurationVar(&o.MaxBackoff, "max-backoff", time.Second, "cap of the retry backoff")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "mrworker: unexpected arguments:", flag.Args())
		os.Exit(2)
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		log.Fatal(err)
	}
	svc.OnSignal(func(sig os.Signal) {
		log.Printf("%v: exiting", sig)
		os.Exit(1)
	})
	w := mr.NewWorker(o)
	if err := w.Run(); err != nil {
		log.Fatal(err)
	}
}
