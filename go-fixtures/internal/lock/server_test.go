package lock

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"checksync/fixtures/internal/loadgen"
	"checksync/fixtures/internal/wire"
)

func quiet(string, ...interface{}) {}

func start(t *testing.T) (*Server, string) {
	t.Helper()
	s := New(Options{Logf: quiet})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(s.Close)
	return s, l.Addr().String()
}

type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t: t, c: c, r: bufio.NewReader(c)}
}

func (rc *rawConn) do(line string) string {
	if _, err := rc.c.Write([]byte(line + "\n")); err != nil {
		rc.t.Error(err)
		return ""
	}
	rep, err := wire.ReadLine(rc.r)
	if err != nil {
		rc.t.Errorf("%q: %v", line, err)
	}
	return rep
}

func (rc *rawConn) expect(line, want string) {
	rc.t.Helper()
	if got := rc.do(line); got != want {
		rc.t.Errorf("%q -> %q, want %q", line, got, want)
	}
}

func TestAcquireRelease(t *testing.T) {
	_, addr := start(t)
	a, b := dial(t, addr), dial(t, addr)
	a.expect("1 1 ACQUIRE L 0", "1 OK")
	a.expect("1 2 ACQUIRE L 0", "2 OK") // re-entrant
	b.expect("0 1 HOLDER L", "1 OK 1")
	b.expect("0 2 HOLDER M", "2 OK")
	b.expect("2 1 ACQUIRE L 0", "1 TIMEOUT")
	t0 := time.Now()
	b.expect("2 2 ACQUIRE L 100", "2 TIMEOUT")
	if d := time.Since(t0); d < 90*time.Millisecond || d > 2*time.Second {
		t.Errorf("ACQUIRE with 100 ms wait took %v", d)
	}
	b.expect("2 3 RELEASE L", "3 NOTHELD")
	a.expect("1 3 RELEASE L", "3 OK")
	a.expect("1 4 RELEASE L", "4 NOTHELD")
	b.expect("2 4 ACQUIRE L 0", "4 OK")
	b.expect("0 3 HOLDER L", "3 OK 2")
	for _, bad := range []string{"0 9 ACQUIRE L 10", "1 9 ACQUIRE L", "1 10 ACQUIRE L x", "0 11 RELEASE L", "1 12 FROB L", "1 13 HOLDER"} {
		if got := a.do(bad); !strings.Contains(got, " ERR ") {
			t.Errorf("%q -> %q, want ERR", bad, got)
		}
	}
}

func TestWaitersAreGrantedInOrder(t *testing.T) {
	_, addr := start(t)
	a := dial(t, addr)
	a.expect("1 1 ACQUIRE L 0", "1 OK")
	var wg sync.WaitGroup
	order := make(chan int, 2)
	for _, cid := range []int{2, 3} {
		c := dial(t, addr)
		wg.Add(1)
		go func(cid int, c *rawConn) {
			defer wg.Done()
			got := c.do(string(rune('0'+cid)) + " 1 ACQUIRE L 5000")
			if got != "1 OK" {
				t.Errorf("client %d: %q", cid, got)
			}
			order <- cid
			time.Sleep(30 * time.Millisecond)
			c.expect(string(rune('0'+cid))+" 2 RELEASE L", "2 OK")
		}(cid, c)
		time.Sleep(50 * time.Millisecond) // 2 queues before 3
	}
	a.expect("1 2 RELEASE L", "2 OK")
	wg.Wait()
	if first, second := <-order, <-order; first != 2 || second != 3 {
		t.Errorf("grant order %d, %d", first, second)
	}
	a.expect("0 3 HOLDER L", "3 OK")
}

func TestLease(t *testing.T) {
	s, addr := start(t)
	a, b := dial(t, addr), dial(t, addr)
	a.expect("1 1 ACQUIRE L 0 100", "1 OK")
	t0 := time.Now()
	b.expect("2 1 ACQUIRE L 2000", "1 OK") // granted when a's lease runs out
	if d := time.Since(t0); d < 80*time.Millisecond || d > 1500*time.Millisecond {
		t.Errorf("lease handover after %v", d)
	}
	a.expect("1 2 RELEASE L", "2 NOTHELD")
	b.expect("0 2 HOLDER L", "2 OK 2")
	if st := s.Stats(); st.LeaseEnds != 1 {
		t.Errorf("lease expiries %d", st.LeaseEnds)
	}
}

func TestDedup(t *testing.T) {
	s, addr := start(t)
	a, b := dial(t, addr), dial(t, addr)
	a.expect("1 10 ACQUIRE L 0", "10 OK")
	a.expect("1 11 RELEASE L", "11 OK")
	a.expect("1 10 ACQUIRE L 0", "10 STALE seq 10 < latest 11")
	a.expect("1 11 RELEASE L", "11 OK") // the original answer, not NOTHELD
	b.expect("0 1 HOLDER L", "1 OK")    // and nothing was re-acquired

	// A resend while the original is still waiting gets the same answer once
	// the original is decided, and the lock is granted only once.
	b.expect("2 1 ACQUIRE L 0", "1 OK")
	a2 := dial(t, addr)
	var wg sync.WaitGroup
	for _, c := range []*rawConn{a, a2} {
		wg.Add(1)
		go func(c *rawConn) {
			defer wg.Done()
			c.expect("1 20 ACQUIRE L 3000", "20 OK")
		}(c)
		time.Sleep(50 * time.Millisecond)
	}
	b.expect("2 2 RELEASE L", "2 OK")
	wg.Wait()
	b.expect("0 3 HOLDER L", "3 OK 1")
	a.expect("1 21 RELEASE L", "21 OK")
	b.expect("0 4 HOLDER L", "4 OK")
	if st := s.Stats(); st.DedupHits != 2 || st.Waiting != 0 {
		t.Errorf("stats %+v", st)
	}
}

type interval struct {
	client   float64
	from, to float64
}

// A load run across a "failover" (connections dropped, same state, same
// address): no wrong answers, no lost operations, and the history shows
// mutual exclusion.
func TestLoadSurvivesReconnect(t *testing.T) {
	s, addr := start(t)
	histPath := filepath.Join(t.TempDir(), "h.jsonl")
	run, err := loadgen.NewRun("lockclient", loadgen.Flags{
		Conns: 4, Duration: 1200 * time.Millisecond, OpTimeout: time.Second,
		ClientIDBase: 10, Seed: 2, History: histPath, Quiet: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(400 * time.Millisecond)
		s.Drop()
		time.Sleep(300 * time.Millisecond)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("relisten: %v", err)
			return
		}
		s.Serve(l)
	}()
	sum := RunLoad(run, LoadOptions{Addr: addr, WriteFrac: 0.8, Locks: 2, LockPrefix: "L",
		Wait: 300 * time.Millisecond, Hold: time.Millisecond, CheckHeld: true})
	if sum.Ops < 50 || sum.Errors != 0 || sum.Wrong != 0 || sum.Reconnects < 4 {
		t.Errorf("summary %+v", sum)
	}

	// Mutual exclusion from the history: per lock, the intervals from a granted
	// acquire's completion to the holder's next release's invocation are disjoint.
	f, err := os.Open(histPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type key struct {
		client float64
		lock   string
	}
	open := map[key]float64{}
	held := map[string][]interval{}
	sc := bufio.NewScanner(f)
	var recs []map[string]interface{}
	for sc.Scan() {
		var m map[string]interface{}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		if m["status"] != "ok" {
			t.Fatalf("not ok: %s", sc.Text())
		}
		recs = append(recs, m)
	}
	if len(recs) != int(sum.Ops) {
		t.Errorf("history %d lines, summary %d ops", len(recs), sum.Ops)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i]["invoke_ns"].(float64) < recs[j]["invoke_ns"].(float64) })
	for _, m := range recs {
		k := key{m["client"].(float64), m["lock"].(string)}
		switch m["op"] {
		case "acquire":
			if m["granted"].(bool) {
				open[k] = m["complete_ns"].(float64)
			}
		case "release":
			if from, ok := open[k]; ok {
				held[k.lock] = append(held[k.lock], interval{k.client, from, m["invoke_ns"].(float64)})
				delete(open, k)
			}
			if !m["released"].(bool) {
				t.Errorf("release not released: %v", m)
			}
		case "holder":
			if _, ok := m["output"].(string); !ok {
				t.Errorf("holder without output: %v", m)
			}
		}
	}
	n := 0
	for name, iv := range held {
		sort.Slice(iv, func(i, j int) bool { return iv[i].from < iv[j].from })
		for i := 1; i < len(iv); i++ {
			if iv[i].from < iv[i-1].to {
				t.Errorf("%s held by %v and %v at once", name, iv[i-1], iv[i])
			}
		}
		n += len(iv)
	}
	if n < 20 {
		t.Errorf("only %d hold intervals", n)
	}
}
