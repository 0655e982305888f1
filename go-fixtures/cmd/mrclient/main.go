// Command mrclient checks a MapReduce run: -check compares the mr-out-* files
// with a sequential word count of the inputs; -status / -wait ask the
// coordinator for its progress.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/rpc"
	"os"
	"time"

	"checksync/fixtures/internal/mr"
	"checksync/fixtures/internal/svc"
)

func main() {
	svc.Setup("mrclient")
	check := flag.Bool("check", false, "compare -out's mr-out-* files with a sequential word count of -inputs")
	inputs := flag.String("inputs", "", "with -check: the input directory")
	out := flag.String("out", ".", "with -check: the output directory")
	status := flag.Bool("status", false, "print the coordinator's status as JSON")
	wait := flag.Bool("wait", false, "poll the coordinator until the job is done (or -timeout), then print its status")
	coord := flag.String("coord", "127.0.0.1:7002", "coordinator address (-status, -wait)")
	timeout := flag.Duration("timeout", 2*time.Minute, "with -wait: give up (exit 1) after this long")
	flag.Parse()

	switch {
	case *check:
		files, err := mr.InputFiles(*inputs)
		if err != nil {
			log.Fatal(err)
		}
		res, err := mr.Check(files, *out)
		if err != nil {
			log.Fatal(err)
		}
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
		if !res.OK {
			log.Printf("FAIL: %d mismatches; first: %s", res.Mismatches, res.First)
			os.Exit(1)
		}
	case *status, *wait:
		deadline := time.Now().Add(*timeout)
		for {
			st, err := getStatus(*coord)
			if err == nil && (st.Done || !*wait) {
				b, _ := json.Marshal(st)
				fmt.Println(string(b))
				return
			}
			if !*wait {
				log.Fatal(err)
			}
			if time.Now().After(deadline) {
				log.Fatalf("job not done after %v (last error: %v)", *timeout, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	default:
		fmt.Fprintln(os.Stderr, "mrclient: want -check, -status or -wait")
		os.Exit(2)
	}
}

func getStatus(addr string) (mr.StatusReply, error) {
	var st mr.StatusReply
	nc, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return st, err
	}
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	c := rpc.NewClient(nc)
	defer c.Close()
	err = c.Call("Coordinator.Status", &mr.StatusArgs{}, &st)
	return st, err
}
