package kv

import (
	"encoding/json"
	"fmt"
	"log"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"checksync/fixtures/internal/hist"
	"checksync/fixtures/internal/loadgen"
	"checksync/fixtures/internal/rclient"
	"checksync/fixtures/internal/wire"
)

// LoadOptions is the kv workload.
type LoadOptions struct {
	Addr       string
	WriteFrac  float64 // fraction of operations that write (the rest are GETs)
	AppendFrac float64 // fraction of writes that are APPENDs
	DeleteFrac float64 // fraction of writes that are DELETEs (the rest are PUTs)
	Keys       int     // key space: <KeyPrefix>0 .. <KeyPrefix><Keys-1>
	KeyPrefix  string
	ValueSize  int // pad written values with '~' and 'x' up to this many bytes
}

// Values written by the load client (unique per client id and seq, and seqs
// start at the unix time in ns, so also unique across runs):
//
//	put:    "v-<client>-<seq>"   append: "+<client>-<seq>"
//
// optionally padded with "~xxx..." up to -value-size bytes. A stored value is
// therefore "[v-<c>-<s>[~x*]](+<c>-<s>[~x*])*", which lets a client spot some
// wrong answers on its own: malformed values, a token appearing twice (an
// APPEND applied twice) or a token of one of its client ids with a seq it has
// not sent yet.

func pad(v string, size int) string {
	if len(v)+1 >= size {
		return v
	}
	return v + "~" + strings.Repeat("x", size-len(v)-1)
}

type tokenKey struct{ c, n uint64 }

// checkValue returns "" if v could have been produced by this workload, else why not.
// issued(c) reports the highest seq client c has invoked, ok=false for
// clients not in this process.
func checkValue(v string, issued func(c uint64) (uint64, bool)) string {
	parts := strings.Split(v, "+")
	seen := make(map[tokenKey]bool, len(parts))
	for i, p := range parts {
		if i == 0 {
			if p == "" {
				continue // value started with an append
			}
			if !strings.HasPrefix(p, "v-") {
				return fmt.Sprintf("token %q is not v-<client>-<n>", p)
			}
			p = p[2:]
		}
		if j := strings.IndexByte(p, '~'); j >= 0 {
			if strings.Trim(p[j+1:], "x") != "" {
				return fmt.Sprintf("bad padding in %q", p)
			}
			p = p[:j]
		}
		cs, ns, ok := strings.Cut(p, "-")
		c, err1 := strconv.ParseUint(cs, 10, 64)
		n, err2 := strconv.ParseUint(ns, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			return fmt.Sprintf("token %q is not <client>-<n>", p)
		}
		k := tokenKey{c, n}
		if seen[k] {
			return fmt.Sprintf("token %d-%d appears twice", c, n)
		}
		seen[k] = true
		if max, mine := issued(c); mine && n > max {
			return fmt.Sprintf("token %d-%d was never sent (client %d is at seq %d)", c, n, c, max)
		}
	}
	return ""
}

// RunLoad drives the kv workload on run and returns the summary.
func RunLoad(run *loadgen.Run, o LoadOptions) loadgen.Summary {
	if o.Keys < 1 {
		o.Keys = 1
	}
	base := run.F.ClientIDBase
	issued := make([]atomic.Uint64, run.F.Conns)
	issuedFn := func(c uint64) (uint64, bool) {
		if c < base || c >= base+uint64(len(issued)) {
			return 0, false
		}
		return issued[c-base].Load(), true
	}
	seqBase := loadgen.SeqBase()
	var wrongOnce sync.Once
	return run.Go(func(i int, lats *[]int64) {
		cid := base + uint64(i)
		rng := loadgen.NewRand(run.F.Seed, cid)
		conn := rclient.New(o.Addr, &run.Reconnects)
		defer conn.Close()
		seq := seqBase
		for run.Next() {
			seq++
			issued[i].Store(seq)
			key := o.KeyPrefix + strconv.Itoa(rng.Intn(o.Keys))
			rec := hist.KV{Client: cid, Key: key}
			var op, args string
			if rng.Float64() < o.WriteFrac {
				w := rng.Float64()
				switch {
				case w < o.DeleteFrac:
					rec.Op, op, args = "delete", "DEL", key
				case w < o.DeleteFrac+o.AppendFrac:
					v := pad("+"+strconv.FormatUint(cid, 10)+"-"+strconv.FormatUint(seq, 10), o.ValueSize)
					rec.Op, rec.Value, op, args = "append", hist.Str(v), "APPEND", key+" "+v
				default:
					v := pad("v-"+strconv.FormatUint(cid, 10)+"-"+strconv.FormatUint(seq, 10), o.ValueSize)
					rec.Op, rec.Value, op, args = "put", hist.Str(v), "PUT", key+" "+v
				}
			} else {
				rec.Op, op, args = "get", "GET", key
			}
			inv := run.Clock.Mono()
			rep, out := conn.Do(cid, seq, op, args, run.F.OpTimeout, run.Deadline)
			comp := run.Clock.Mono()
			rec.Times = run.Clock.Span(inv, comp)
			switch out {
			case rclient.NotSent:
				rec.Status = hist.Fail
			case rclient.Unknown:
				rec.Status = hist.Unknown
			default:
				switch rep.Status {
				case wire.OK, wire.NotFound:
					rec.Status = hist.OK
					if op == "GET" {
						found := rep.Status == wire.OK
						rec.Found = hist.Bool(found)
						if found {
							rec.Output = hist.Str(rep.Payload)
						} else {
							rec.Output = hist.Str("")
						}
						if found {
							if why := checkValue(rep.Payload, issuedFn); why != "" {
								run.Wrong.Add(1)
								wrongOnce.Do(func() { log.Printf("wrong answer: GET %s = %.200q: %s", key, rep.Payload, why) })
							}
						}
					} else if op != "DEL" && rep.Status != wire.OK {
						run.Wrong.Add(1)
						wrongOnce.Do(func() { log.Printf("wrong answer: %s %s -> %s", op, key, rep.Status) })
					}
				default: // ERR, STALE: refused before executing
					rec.Status = hist.Fail
					log.Printf("client %d seq %d %s %s: %s %s", cid, seq, op, key, rep.Status, rep.Payload)
				}
			}
			run.Hist.Write(&rec)
			run.Done(rec.Status, comp-inv, lats)
			if out != rclient.Answered {
				return // hard deadline reached
			}
			if run.F.Think > 0 {
				time.Sleep(run.F.Think)
			}
		}
	})
}

// Call sends one anonymous request (client id 0) and returns the reply.
func Call(addr, op, args string, timeout time.Duration) (wire.Reply, error) {
	c := rclient.New(addr, nil)
	c.Quiet = true
	defer c.Close()
	deadline := time.Now().Add(timeout)
	rep, out := c.Do(0, 1, op, args, timeout, func() time.Time { return deadline })
	if out != rclient.Answered {
		return rep, fmt.Errorf("no answer from %s within %v", addr, timeout)
	}
	return rep, nil
}

// VerifyResult is the outcome of VerifyPreload.
type VerifyResult struct {
	PreloadMiB int    `json:"preload_mib"`
	Keys       int    `json:"keys"`
	Checked    int    `json:"checked"`
	Bad        int    `json:"bad"`
	FirstBad   string `json:"first_bad"`
	Reason     string `json:"reason"`
	ServerKeys int    `json:"server_preload_keys"`
}

// VerifyPreload reads every preloaded key over conns connections (anonymous
// requests) and compares it with PreloadValue. FirstBad is the bad key with
// the lowest index ("" if none).
func VerifyPreload(addr string, mib, conns int, timeout time.Duration) (VerifyResult, error) {
	n := PreloadCount(mib)
	res := VerifyResult{PreloadMiB: mib, Keys: n, ServerKeys: -1}
	deadline := time.Now().Add(timeout)
	dl := func() time.Time { return deadline }
	if conns < 1 {
		conns = 1
	}
	var mu sync.Mutex
	firstBad := -1
	var wg sync.WaitGroup
	var fatal error
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := rclient.New(addr, nil)
			defer c.Close()
			checked, bad := 0, 0
			for i := w; i < n; i += conns {
				key := PreloadKey(i)
				rep, out := c.Do(0, uint64(i+1), "GET", key, 5*time.Second, dl)
				if out != rclient.Answered {
					mu.Lock()
					if fatal == nil {
						fatal = fmt.Errorf("no answer for GET %s before the deadline", key)
					}
					mu.Unlock()
					break
				}
				checked++
				why := ""
				switch {
				case rep.Status == wire.NotFound:
					why = "missing"
				case rep.Status != wire.OK:
					why = rep.Status + " " + rep.Payload
				case rep.Payload != PreloadValue(i):
					why = fmt.Sprintf("value differs (len %d, want %d; starts %.40q)", len(rep.Payload), PreloadLen(i), rep.Payload)
				}
				if why != "" {
					bad++
					mu.Lock()
					if firstBad < 0 || i < firstBad {
						firstBad, res.FirstBad, res.Reason = i, key, why
					}
					mu.Unlock()
				}
			}
			mu.Lock()
			res.Checked += checked
			res.Bad += bad
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	if rep, err := Call(addr, "STATS", "", time.Until(deadline)+time.Second); err == nil && rep.Status == wire.OK {
		var st struct {
			PreloadKeys int `json:"preload_keys"`
		}
		if json.Unmarshal([]byte(rep.Payload), &st) == nil {
			res.ServerKeys = st.PreloadKeys
		}
	}
	return res, fatal
}
