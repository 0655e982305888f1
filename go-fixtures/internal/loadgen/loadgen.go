// Package loadgen is the part the load clients share: bounds (duration, op
// count, hard time limit), counters, latencies, the per-second throughput line
// on stderr and the one-line JSON summary on stdout.
package loadgen

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"checksync/fixtures/internal/hist"
	"checksync/fixtures/internal/svc"
)

// Flags are the bounds every load client takes.
type Flags struct {
	Conns        int
	Duration     time.Duration
	Ops          int64
	MaxTime      time.Duration
	OpTimeout    time.Duration
	ClientIDBase uint64
	Seed         int64
	History      string
	Think        time.Duration
	Quiet        bool
}

// Register adds the common flags to fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.IntVar(&f.Conns, "conns", 4, "connections (one worker and one client id each)")
	fs.DurationVar(&f.Duration, "duration", 5*time.Second, "issue operations for this long (0: no time bound, use -ops)")
	fs.Int64Var(&f.Ops, "ops", 0, "stop after this many operations in all (0: no bound)")
	fs.DurationVar(&f.MaxTime, "max-time", 0, "hard bound on the whole run; unanswered operations become \"unknown\" (0: duration+30s, or 5m without -duration)")
	fs.DurationVar(&f.OpTimeout, "op-timeout", 2*time.Second, "wait this long for a reply before reconnecting and resending")
	fs.Uint64Var(&f.ClientIDBase, "client-id-base", 1, "connection i uses client id base+i (keep ids unique across a run's client processes)")
	fs.Int64Var(&f.Seed, "seed", 1, "random seed (each worker derives its own)")
	fs.StringVar(&f.History, "history", "", "write every operation to this file (JSON Lines)")
	fs.DurationVar(&f.Think, "think", 0, "pause between a worker's operations")
	fs.BoolVar(&f.Quiet, "quiet", false, "no per-second throughput lines")
}

// Summary is the final JSON line.
type Summary struct {
	Ops        int64   `json:"ops"`
	OpsPerS    float64 `json:"ops_per_s"`
	P50Us      int64   `json:"p50_us"`
	P99Us      int64   `json:"p99_us"`
	MaxUs      int64   `json:"max_us"`
	Errors     int64   `json:"errors"`
	Reconnects int64   `json:"reconnects"`
	Wrong      int64   `json:"wrong"`
}

// Run is one load run.
type Run struct {
	Name  string
	F     Flags
	Clock *hist.Clock
	Hist  *hist.Writer

	Reconnects atomic.Int64
	OK         atomic.Int64 // answered ops
	Errors     atomic.Int64 // fail + unknown ops
	Wrong      atomic.Int64 // answers the client can tell are wrong

	issued   atomic.Int64
	stopMono atomic.Int64 // no new ops from this Clock.Mono() on
	hardMono atomic.Int64 // give up in-flight ops at this Clock.Mono()

	latMu sync.Mutex
	lats  []int64
}

// NewRun prepares a run (opens the history file).
func NewRun(name string, f Flags) (*Run, error) {
	if f.Conns < 1 {
		return nil, fmt.Errorf("-conns must be >= 1")
	}
	if f.Duration <= 0 && f.Ops <= 0 {
		return nil, fmt.Errorf("need -duration > 0 or -ops > 0")
	}
	h, err := hist.Create(f.History)
	if err != nil {
		return nil, err
	}
	r := &Run{Name: name, F: f, Clock: hist.NewClock(), Hist: h}
	max := f.MaxTime
	if max <= 0 {
		if f.Duration > 0 {
			max = f.Duration + 30*time.Second
		} else {
			max = 5 * time.Minute
		}
	}
	stop := int64(max)
	if f.Duration > 0 && int64(f.Duration) < stop {
		stop = int64(f.Duration)
	}
	r.stopMono.Store(stop)
	r.hardMono.Store(int64(max))
	return r, nil
}

// Next reserves one more operation; false when the run is over.
func (r *Run) Next() bool {
	if r.Clock.Mono() >= r.stopMono.Load() {
		return false
	}
	if r.F.Ops > 0 && r.issued.Add(1) > r.F.Ops {
		return false
	}
	return true
}

// Stopping reports whether no new operations should start.
func (r *Run) Stopping() bool { return r.Clock.Mono() >= r.stopMono.Load() }

// Deadline is the current hard deadline (for rclient.Conn.Do).
func (r *Run) Deadline() time.Time {
	return time.Now().Add(time.Duration(r.hardMono.Load() - r.Clock.Mono()))
}

// Done accounts one finished operation (latency in ns for answered ones).
func (r *Run) Done(status string, latency int64, lats *[]int64) {
	if status == hist.OK {
		r.OK.Add(1)
		*lats = append(*lats, latency)
	} else {
		r.Errors.Add(1)
	}
}

// Go runs worker(i, &lats) for i in [0, Conns), prints progress each second,
// handles SIGINT/SIGTERM (stop issuing; give up 2 s later), then prints the
// summary line on stdout and closes the history. It returns the summary.
func (r *Run) Go(worker func(i int, lats *[]int64)) Summary {
	svc.OnSignal(func(s os.Signal) {
		log.Printf("%v: stopping", s)
		now := r.Clock.Mono()
		if now < r.stopMono.Load() {
			r.stopMono.Store(now)
		}
		if h := now + int64(2*time.Second); h < r.hardMono.Load() {
			r.hardMono.Store(h)
		}
	})
	var wg sync.WaitGroup
	for i := 0; i < r.F.Conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var lats []int64
			worker(i, &lats)
			r.latMu.Lock()
			r.lats = append(r.lats, lats...)
			r.latMu.Unlock()
		}(i)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTicker(time.Second)
	last := int64(0)
	secs := 0
loop:
	for {
		select {
		case <-done:
			break loop
		case <-t.C:
			secs++
			ok := r.OK.Load()
			if !r.F.Quiet {
				log.Printf("t=%ds %d ops/s (ok %d, errors %d, reconnects %d, wrong %d)",
					secs, ok-last, ok, r.Errors.Load(), r.Reconnects.Load(), r.Wrong.Load())
			}
			last = ok
		}
	}
	t.Stop()
	end := r.Clock.Mono()
	if s := r.stopMono.Load(); s < end {
		end = s
	}
	if err := r.Hist.Close(); err != nil {
		log.Printf("history %s: %v", r.F.History, err)
		r.Errors.Add(1)
	}
	sum := r.summary(end)
	b, _ := json.Marshal(sum)
	fmt.Fprintln(os.Stdout, string(b))
	return sum
}

func (r *Run) summary(elapsed int64) Summary {
	sort.Slice(r.lats, func(i, j int) bool { return r.lats[i] < r.lats[j] })
	s := Summary{
		Ops:        r.OK.Load(),
		Errors:     r.Errors.Load(),
		Reconnects: r.Reconnects.Load(),
		Wrong:      r.Wrong.Load(),
	}
	if elapsed > 0 {
		s.OpsPerS = float64(s.Ops) / (float64(elapsed) / 1e9)
		s.OpsPerS = float64(int64(s.OpsPerS*10+0.5)) / 10
	}
	if n := len(r.lats); n > 0 {
		s.P50Us = r.lats[(n-1)*50/100] / 1000
		s.P99Us = r.lats[(n-1)*99/100] / 1000
		s.MaxUs = r.lats[n-1] / 1000
	}
	return s
}

// Rand is a small deterministic PRNG (SplitMix64) for workers.
type Rand struct{ x uint64 }

// NewRand seeds a Rand from a seed and a stream number.
func NewRand(seed int64, stream uint64) *Rand {
	r := &Rand{x: uint64(seed)*0x9E3779B97F4A7C15 ^ stream*0xD1B54A32D192ED03}
	r.Uint64()
	return r
}

// Uint64 returns the next value.
func (r *Rand) Uint64() uint64 {
	r.x += 0x9E3779B97F4A7C15
	z := r.x
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

// Intn returns a value in [0, n).
func (r *Rand) Intn(n int) int { return int(r.Uint64() % uint64(n)) }

// Float64 returns a value in [0, 1).
func (r *Rand) Float64() float64 { return float64(r.Uint64()>>11) / (1 << 53) }

// SeqBase is the first sequence number of this client process: the unix time
// in ns at start, so that a later run reusing the same client ids against the
// same server still sends increasing sequence numbers (the server answers an
// older seq than it has seen with STALE).
func SeqBase() uint64 { return uint64(time.Now().UnixNano()) }
