package durable

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"checksync/fixtures/internal/hist"
	"checksync/fixtures/internal/loadgen"
	"checksync/fixtures/internal/rclient"
	"checksync/fixtures/internal/wire"
)

// LoadOptions is the durable store's workload.
type LoadOptions struct {
	Addr      string
	WriteFrac float64 // fraction of operations that are PUTs (the rest are GETs)
	Keys      int     // keys per client: <KeyPrefix><client>-0 .. <KeyPrefix><client>-<Keys-1>
	KeyPrefix string
	ValueSize int // pad values with "~xxx..." up to this many bytes (at most MaxValue)
}

// Each client writes only its own keys, one operation at a time, so the
// history of a key is one client's sequence: the last acknowledged PUT of a
// key is the value the store must hold, unless a later PUT of the same
// client was sent but never answered ("unknown": it may have been applied).
// Values are "v-<client>-<seq>" (seqs start at the unix time in ns: unique
// across runs). A GET of a key this run has written must return the last
// acknowledged value (the client counts anything else as wrong).

// ClientKey is client c's key number k.
func ClientKey(prefix string, c uint64, k int) string {
	return prefix + strconv.FormatUint(c, 10) + "-" + strconv.Itoa(k)
}

func padValue(v string, size int) string {
	if size > MaxValue {
		size = MaxValue
	}
	if len(v)+1 >= size {
		return v
	}
	return v + "~" + strings.Repeat("x", size-len(v)-1)
}

// RunLoad drives the workload on run and returns the summary.
func RunLoad(run *loadgen.Run, o LoadOptions) loadgen.Summary {
	if o.Keys < 1 {
		o.Keys = 1
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = "d"
	}
	seqBase := loadgen.SeqBase()
	var wrongOnce sync.Once
	return run.Go(func(i int, lats *[]int64) {
		cid := run.F.ClientIDBase + uint64(i)
		rng := loadgen.NewRand(run.F.Seed, cid)
		conn := rclient.New(o.Addr, &run.Reconnects)
		defer conn.Close()
		acked := make(map[string]string)
		seq := seqBase
		for run.Next() {
			seq++
			key := ClientKey(o.KeyPrefix, cid, rng.Intn(o.Keys))
			rec := hist.KV{Client: cid, Key: key}
			op, args := "GET", key
			var val string
			if rng.Float64() < o.WriteFrac {
				val = padValue("v-"+strconv.FormatUint(cid, 10)+"-"+strconv.FormatUint(seq, 10), o.ValueSize)
				rec.Op, rec.Value = "put", hist.Str(val)
				op, args = "PUT", key+" "+val
			} else {
				rec.Op = "get"
			}
			inv := run.Clock.Mono()
			rep, out := conn.Do(cid, seq, op, args, run.F.OpTimeout, run.Deadline)
			comp := run.Clock.Mono()
			rec.Times = run.Clock.Span(inv, comp)
			switch {
			case out == rclient.NotSent:
				rec.Status = hist.Fail
			case out == rclient.Unknown:
				rec.Status = hist.Unknown
			case rep.Status == wire.OK && op == "PUT":
				rec.Status = hist.OK
				acked[key] = val
			case (rep.Status == wire.OK || rep.Status == wire.NotFound) && op == "GET":
				rec.Status = hist.OK
				found := rep.Status == wire.OK
				rec.Found = hist.Bool(found)
				if found {
					rec.Output = hist.Str(rep.Payload)
				} else {
					rec.Output = hist.Str("")
				}
				if want, ok := acked[key]; ok && (!found || rep.Payload != want) {
					run.Wrong.Add(1)
					wrongOnce.Do(func() {
						log.Printf("wrong answer: GET %s = %q (found %v), last acknowledged PUT was %q", key, rep.Payload, found, want)
					})
				}
			default: // ERR, STALE: not applied
				rec.Status = hist.Fail
				log.Printf("client %d seq %d %s %s: %s %s", cid, seq, op, key, rep.Status, rep.Payload)
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

// Expectation is what a key must hold after a run: its last acknowledged
// value, or one of the PUTs sent after it that were never answered.
type Expectation struct {
	Acked   string
	Unknown []string
}

// Expected reads a history file (JSON Lines, package hist) and returns, for
// every key with at least one acknowledged PUT, what the store must hold,
// and the number of acknowledged PUTs.
func Expected(path string) (map[string]*Expectation, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	exp := make(map[string]*Expectation)
	acks := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		if len(strings.TrimSpace(sc.Text())) == 0 {
			continue
		}
		var r hist.KV
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, 0, fmt.Errorf("%s:%d: %v", path, lineNo, err)
		}
		if r.Op != "put" || r.Value == nil {
			continue
		}
		switch r.Status {
		case hist.OK:
			exp[r.Key] = &Expectation{Acked: *r.Value}
			acks++
		case hist.Unknown:
			if e := exp[r.Key]; e != nil {
				e.Unknown = append(e.Unknown, *r.Value)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, 0, fmt.Errorf("%s: %v", path, err)
	}
	return exp, acks, nil
}

// VerifyResult is the outcome of Verify (one JSON line on stdout).
type VerifyResult struct {
	History  string `json:"history"`
	Acked    int    `json:"acked_writes"`
	Keys     int    `json:"keys"`
	Checked  int    `json:"checked"`
	Bad      int    `json:"bad"`
	FirstBad string `json:"first_bad"`
	Reason   string `json:"reason"`
}

// Verify reads every key with an acknowledged PUT in the history at path
// (anonymous GETs over conns connections) and checks it holds its last
// acknowledged value (or a later unanswered one). FirstBad is the
// alphabetically first bad key.
func Verify(addr, path string, conns int, timeout time.Duration) (VerifyResult, error) {
	res := VerifyResult{History: path}
	exp, acks, err := Expected(path)
	if err != nil {
		return res, err
	}
	res.Acked, res.Keys = acks, len(exp)
	keys := make([]string, 0, len(exp))
	for k := range exp {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if conns < 1 {
		conns = 1
	}
	deadline := time.Now().Add(timeout)
	dl := func() time.Time { return deadline }
	var mu sync.Mutex
	var wg sync.WaitGroup
	var fatal error
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := rclient.New(addr, nil)
			defer c.Close()
			for i := w; i < len(keys); i += conns {
				key := keys[i]
				rep, out := c.Do(0, uint64(i+1), "GET", key, 5*time.Second, dl)
				if out != rclient.Answered {
					mu.Lock()
					if fatal == nil {
						fatal = fmt.Errorf("no answer for GET %s before the deadline", key)
					}
					mu.Unlock()
					return
				}
				why := judge(exp[key], rep)
				mu.Lock()
				res.Checked++
				if why != "" {
					res.Bad++
					if res.FirstBad == "" || key < res.FirstBad {
						res.FirstBad, res.Reason = key, why
					}
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	return res, fatal
}

func judge(e *Expectation, rep wire.Reply) string {
	switch rep.Status {
	case wire.OK:
	case wire.NotFound:
		return fmt.Sprintf("missing (last acknowledged PUT: %q)", e.Acked)
	default:
		return "GET answered " + rep.Status + " " + rep.Payload
	}
	if rep.Payload == e.Acked {
		return ""
	}
	for _, u := range e.Unknown {
		if rep.Payload == u {
			return ""
		}
	}
	return fmt.Sprintf("holds %q, last acknowledged PUT was %q", rep.Payload, e.Acked)
}
