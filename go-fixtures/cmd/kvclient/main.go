// Command kvclient drives kvstore: a load run (default), a preload check
// (-verify-preload N) or one admin command (-cmd "STATS").
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"checksync/fixtures/internal/kv"
	"checksync/fixtures/internal/loadgen"
	"checksync/fixtures/internal/svc"
	"checksync/fixtures/internal/wire"
)

func main() {
	svc.Setup("kvclient")
	var lf loadgen.Flags
	lf.Register(flag.CommandLine)
	var o kv.LoadOptions
	flag.StringVar(&o.Addr, "addr", "127.0.0.1:7000", "kvstore address")
	flag.Float64Var(&o.WriteFrac, "write-frac", 0.5, "fraction of operations that write (the rest are GETs)")
	flag.Float64Var(&o.AppendFrac, "append-frac", 0.2, "fraction of writes that are APPENDs")
	flag.Float64Var(&o.DeleteFrac, "delete-frac", 0.1, "fraction of writes that are DELETEs (the rest are PUTs)")
	flag.IntVar(&o.Keys, "keys", 100, "key space size: keys <key-prefix>0 .. <key-prefix>N-1")
	flag.StringVar(&o.KeyPrefix, "key-prefix", "k", "key name prefix")
	flag.IntVar(&o.ValueSize, "value-size", 0, "pad written values to this many bytes (0: no padding)")
	verify := flag.Int("verify-preload", -1, "instead of a load run: check every key preloaded by kvstore -preload-mib N")
	cmd := flag.String("cmd", "", "instead of a load run: send one request as client 0 (e.g. \"STATS\", \"GET k1\", \"PUTTTL k 500 v\", \"ALLOC 64\", \"RAND 32\") and print the reply payload")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "kvclient: unexpected arguments:", flag.Args())
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
	case *verify >= 0:
		to := lf.MaxTime
		if to <= 0 {
			to = 5 * time.Minute
		}
		res, err := kv.VerifyPreload(o.Addr, *verify, lf.Conns, to)
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
		if err != nil {
			log.Fatal(err)
		}
		if res.Bad > 0 {
			log.Printf("FAIL: %d of %d preloaded keys bad; first bad key %s: %s", res.Bad, res.Keys, res.FirstBad, res.Reason)
			os.Exit(1)
		}
		if res.ServerKeys >= 0 && res.ServerKeys != res.Keys {
			log.Printf("FAIL: server preloaded %d keys, -verify-preload %d means %d", res.ServerKeys, *verify, res.Keys)
			os.Exit(1)
		}
		log.Printf("ok: all %d preloaded keys intact", res.Keys)
	default:
		run, err := loadgen.NewRun("kvclient", lf)
		if err != nil {
			log.Fatal(err)
		}
		sum := kv.RunLoad(run, o)
		if sum.Wrong > 0 {
			os.Exit(1)
		}
	}
}
