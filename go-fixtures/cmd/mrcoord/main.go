// Command mrcoord is the MapReduce coordinator (net/rpc over TCP), or, with
// -gen-inputs, the deterministic input generator. See go-fixtures/README.md.
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
	svc.Setup("mrcoord")
	addr := flag.String("addr", "127.0.0.1:7002", "listen address (port 0: any free port; the READY line tells which)")
	inputs := flag.String("inputs", "", "directory of input files (every regular file not starting with '.'); or give files as arguments")
	nreduce := flag.Int("nreduce", 4, "number of reduce tasks")
	timeout := flag.Duration("task-timeout", 10*time.Second, "reassign a task whose worker has been silent this long")
	linger := flag.Duration("linger", 0, "after the job is done keep answering \"done\" this long, then exit 0 (0: until killed)")
	bg := flag.Int("bg", 16, "housekeeping goroutines with their own timers")
	statsEvery := flag.Duration("log-stats", 5*time.Second, "log progress this often (0: never)")
	genDir := flag.String("gen-inputs", "", "instead of coordinating: write deterministic input files pg-<i>.txt into this directory and exit")
	genMiB := flag.Int("gen-mib", 8, "with -gen-inputs: total size in MiB")
	genKiB := flag.Int("gen-kib", 0, "with -gen-inputs: total size in KiB (overrides -gen-mib)")
	genFiles := flag.Int("gen-files", 8, "with -gen-inputs: number of files")
	seed := flag.Int64("seed", 1, "with -gen-inputs: random seed")
	flag.Parse()

	if *genDir != "" {
		kib := *genMiB * 1024
		if *genKiB > 0 {
			kib = *genKiB
		}
		start := time.Now()
		names, err := mr.GenerateInputs(*genDir, kib, *genFiles, *seed)
		if err != nil {
			log.Fatalf("generate: %v", err)
		}
		log.Printf("wrote %d files (%d KiB) to %s in %v", len(names), kib, *genDir, time.Since(start).Round(time.Millisecond))
		return
	}

	files := flag.Args()
	if *inputs != "" {
		fs, err := mr.InputFiles(*inputs)
		if err != nil {
			log.Fatalf("inputs: %v", err)
		}
		files = append(files, fs...)
	}
	if len(files) == 0 {
		fmt.Fprintln(os.Stderr, "mrcoord: no input files (-inputs dir or file arguments)")
		os.Exit(2)
	}
	start := time.Now()
	c, err := mr.NewCoordinator(mr.CoordOptions{
		Inputs: files, NReduce: *nreduce, TaskTimeout: *timeout,
		OnDone: func() {
			fmt.Fprintf(os.Stdout, "DONE %d\n", time.Since(start).Milliseconds())
			if *linger > 0 {
				log.Printf("job done; answering \"done\" for %v more, then exiting", *linger)
				time.Sleep(*linger)
				log.Printf("exiting")
				os.Exit(0)
			}
			log.Printf("job done; answering \"done\" until killed")
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	l, err := svc.Listen(*addr)
	if err != nil {
		log.Fatalf("listen %s: %v", *addr, err)
	}
	svc.Background(*bg)
	svc.LogStats(*statsEvery, func() string {
		var st mr.StatusReply
		c.Status(&mr.StatusArgs{}, &st)
		return fmt.Sprintf("status: phase=%s map %d/%d reduce %d/%d assignments=%d reassigned=%d",
			st.Phase, st.MapDone, st.NMap, st.ReduceDone, st.NReduce, st.Assignments, st.Reassigned)
	})
	svc.OnSignal(func(sig os.Signal) {
		log.Printf("%v: exiting", sig)
		os.Exit(0)
	})
	log.Printf("listening on %s (%s): %d map tasks, %d reduce tasks, task timeout %v",
		l.Addr(), svc.ListenerProto(l), len(files), *nreduce, *timeout)
	svc.Ready(l)
	if err := c.Serve(l); err != nil {
		log.Fatalf("serve: %v", err)
	}
}
