package lock

import (
	"fmt"
	"log"
	"strconv"
	"sync"
	"time"

	"checksync/fixtures/internal/hist"
	"checksync/fixtures/internal/loadgen"
	"checksync/fixtures/internal/rclient"
	"checksync/fixtures/internal/wire"
)

// LoadOptions is the lock workload.
type LoadOptions struct {
	Addr       string
	WriteFrac  float64       // fraction of rounds that are acquire/hold/release (the rest: one HOLDER query)
	Locks      int           // lock space: <LockPrefix>0 .. <LockPrefix><Locks-1>
	LockPrefix string        //
	Wait       time.Duration // ACQUIRE wait
	Hold       time.Duration // hold a granted lock this long before releasing
	Lease      time.Duration // ACQUIRE lease (0: none)
	CheckHeld  bool          // ask HOLDER while holding and expect ourselves
}

// localHolders is this process's own view of who holds what: set when a grant
// arrives, cleared before RELEASE is sent. A grant arriving while another of
// our clients is recorded as holder is a mutual-exclusion violation the
// client can see by itself (counted in "wrong"). Not used with leases.
type localHolders struct {
	mu sync.Mutex
	m  map[string]uint64
}

// RunLoad drives the lock workload on run and returns the summary.
func RunLoad(run *loadgen.Run, o LoadOptions) loadgen.Summary {
	if o.Locks < 1 {
		o.Locks = 1
	}
	local := &localHolders{m: make(map[string]uint64)}
	seqBase := loadgen.SeqBase()
	var wrongOnce sync.Once
	wrong := func(format string, args ...interface{}) {
		run.Wrong.Add(1)
		msg := fmt.Sprintf(format, args...)
		wrongOnce.Do(func() { log.Printf("wrong answer: %s", msg) })
	}
	return run.Go(func(i int, lats *[]int64) {
		cid := run.F.ClientIDBase + uint64(i)
		rng := loadgen.NewRand(run.F.Seed, cid)
		conn := rclient.New(o.Addr, &run.Reconnects)
		defer conn.Close()
		seq := seqBase

		// do runs one operation and records it; false: stop this worker.
		do := func(rec *hist.Lock, op, args string, attempt time.Duration) (wire.Reply, bool) {
			seq++
			inv := run.Clock.Mono()
			rep, out := conn.Do(cid, seq, op, args, attempt, run.Deadline)
			comp := run.Clock.Mono()
			rec.Times = run.Clock.Span(inv, comp)
			switch out {
			case rclient.NotSent:
				rec.Status = hist.Fail
			case rclient.Unknown:
				rec.Status = hist.Unknown
			default:
				switch rep.Status {
				case wire.OK, wire.Timeout, wire.NotHeld:
					rec.Status = hist.OK
				default:
					rec.Status = hist.Fail
					log.Printf("client %d seq %d %s %s: %s %s", cid, seq, op, args, rep.Status, rep.Payload)
				}
			}
			return rep, out == rclient.Answered
		}
		finish := func(rec *hist.Lock, lats *[]int64) {
			run.Hist.Write(rec)
			run.Done(rec.Status, rec.CompleteNs-rec.InvokeNs, lats)
		}

		release := func(name string) bool {
			local.mu.Lock()
			if local.m[name] == cid {
				delete(local.m, name)
			}
			local.mu.Unlock()
			rec := hist.Lock{Client: cid, Op: "release", Lock: name}
			rep, ok := do(&rec, "RELEASE", name, run.F.OpTimeout)
			if rec.Status == hist.OK {
				rec.Released = hist.Bool(rep.Status == wire.OK)
				if rep.Status != wire.OK && o.Lease == 0 {
					wrong("client %d released %s it was granted: %s", cid, name, rep.Status)
				}
			}
			finish(&rec, lats)
			return ok
		}

		for run.Next() {
			name := o.LockPrefix + strconv.Itoa(rng.Intn(o.Locks))
			if rng.Float64() >= o.WriteFrac {
				rec := hist.Lock{Client: cid, Op: "holder", Lock: name}
				rep, ok := do(&rec, "HOLDER", name, run.F.OpTimeout)
				if rec.Status == hist.OK {
					rec.Output = hist.Str(rep.Payload)
				}
				finish(&rec, lats)
				if !ok {
					return
				}
			} else {
				rec := hist.Lock{Client: cid, Op: "acquire", Lock: name, LeaseMs: o.Lease.Milliseconds()}
				args := name + " " + strconv.FormatInt(o.Wait.Milliseconds(), 10)
				if o.Lease > 0 {
					args += " " + strconv.FormatInt(o.Lease.Milliseconds(), 10)
				}
				rep, ok := do(&rec, "ACQUIRE", args, o.Wait+run.F.OpTimeout)
				granted := rec.Status == hist.OK && rep.Status == wire.OK
				if rec.Status == hist.OK {
					rec.Granted = hist.Bool(granted)
				}
				if granted && o.Lease == 0 {
					local.mu.Lock()
					if h, held := local.m[name]; held && h != cid {
						wrong("client %d granted %s while client %d holds it", cid, name, h)
					}
					local.m[name] = cid
					local.mu.Unlock()
				}
				finish(&rec, lats)
				if !ok {
					return // unknown: we may hold it; the run is over anyway
				}
				if !granted {
					continue
				}
				if o.Hold > 0 {
					time.Sleep(o.Hold)
				}
				if o.CheckHeld && !run.Stopping() {
					hrec := hist.Lock{Client: cid, Op: "holder", Lock: name}
					hrep, ok := do(&hrec, "HOLDER", name, run.F.OpTimeout)
					if hrec.Status == hist.OK {
						hrec.Output = hist.Str(hrep.Payload)
						if o.Lease == 0 && hrep.Payload != strconv.FormatUint(cid, 10) {
							wrong("client %d holds %s but HOLDER says %q", cid, name, hrep.Payload)
						}
					}
					finish(&hrec, lats)
					if !ok {
						return
					}
				}
				if !release(name) {
					return
				}
			}
			if run.F.Think > 0 {
				time.Sleep(run.F.Think)
			}
		}
	})
}

// Call sends one anonymous request (client 0) or one as client cid.
func Call(addr string, cid uint64, op, args string, timeout time.Duration) (wire.Reply, error) {
	c := rclient.New(addr, nil)
	c.Quiet = true
	defer c.Close()
	deadline := time.Now().Add(timeout)
	rep, out := c.Do(cid, loadgen.SeqBase(), op, args, timeout, func() time.Time { return deadline })
	if out != rclient.Answered {
		return rep, fmt.Errorf("no answer from %s within %v", addr, timeout)
	}
	return rep, nil
}
