// Command durableclient drives the durable store: a load run (default; every
// operation recorded with -history), a check that every acknowledged write of
// an earlier run is there (-verify HISTORY), or one command (-cmd "STATE").
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"checksync/fixtures/internal/durable"
	"checksync/fixtures/internal/kv"
	"checksync/fixtures/internal/loadgen"
	"checksync/fixtures/internal/svc"
	"checksync/fixtures/internal/wire"
)

func main() {
	svc.Setup("durableclient")
	var lf loadgen.Flags
	lf.Register(flag.CommandLine)
	var o durable.LoadOptions
	flag.StringVar(&o.Addr, "addr", "127.0.0.1:7100", "durable store address")
	flag.Float64Var(&o.WriteFrac, "write-frac", 0.7, "fraction of operations that are PUTs (the rest are GETs)")
	flag.IntVar(&o.Keys, "keys", 32, "keys per connection: <key-prefix><client>-0 .. <key-prefix><client>-<N-1>")
	flag.StringVar(&o.KeyPrefix, "key-prefix", "d", "key name prefix")
	flag.IntVar(&o.ValueSize, "value-size", 0, "pad written values to this many bytes (0: no padding; at most 400)")
	verify := flag.String("verify", "", "instead of a load run: check that every key with an acknowledged PUT in this history file holds its last acknowledged value")
	cmd := flag.String("cmd", "", "instead of a load run: send one request as client 0 (e.g. \"STATE\", \"STATS\", \"RELOAD\", \"GET k\") and print the reply payload")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "durableclient: unexpected arguments:", flag.Args())
		os.Exit(2)
	}
	switch {
	case *cmd != "":
		op, args := wire.Word(strings.TrimSpace(*cmd))
		to := lf.MaxTime
		if to <= 0 {
			to = 10 * time.Second
		}
		rep, err := kv.Call(o.Addr, strings.ToUpper(op), args, to)
		if err != nil {
			log.Fatal(err)
		}
		switch rep.Status {
		case wire.OK:
			fmt.Println(rep.Payload)
		case wire.NotFound:
			fmt.Fprintln(os.Stderr, "NOTFOUND")
			os.Exit(3)
		default:
			fmt.Fprintln(os.Stderr, rep.Status, rep.Payload)
			os.Exit(1)
		}
	case *verify != "":
		to := lf.MaxTime
		if to <= 0 {
			to = 2 * time.Minute
		}
		res, err := durable.Verify(o.Addr, *verify, lf.Conns, to)
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
		if err != nil {
			log.Fatal(err)
		}
		if res.Bad > 0 {
			log.Printf("FAIL: %d of %d keys lost an acknowledged write; first %s: %s", res.Bad, res.Keys, res.FirstBad, res.Reason)
			os.Exit(1)
		}
		if res.Acked == 0 {
			log.Printf("FAIL: %s has no acknowledged PUT: nothing was verified", *verify)
			os.Exit(1)
		}
		log.Printf("ok: all %d keys hold their last acknowledged value (%d acknowledged PUTs)", res.Keys, res.Acked)
	default:
		run, err := loadgen.NewRun("durableclient", lf)
		if err != nil {
			log.Fatal(err)
		}
		sum := durable.RunLoad(run, o)
		if sum.Wrong > 0 {
			os.Exit(1)
		}
	}
}
