package kv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"checksync/fixtures/internal/loadgen"
	"checksync/fixtures/internal/wire"
)

func quiet(string, ...interface{}) {}

func start(t *testing.T, opt Options) (*Server, string) {
	t.Helper()
	if opt.Logf == nil {
		opt.Logf = quiet
	}
	s := New(opt)
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

// do sends one line and returns the reply line.
func (rc *rawConn) do(line string) string {
	rc.t.Helper()
	if _, err := rc.c.Write([]byte(line + "\n")); err != nil {
		rc.t.Fatal(err)
	}
	rep, err := wire.ReadLine(rc.r)
	if err != nil {
		rc.t.Fatalf("%q: %v", line, err)
	}
	return rep
}

func (rc *rawConn) expect(line, want string) {
	rc.t.Helper()
	if got := rc.do(line); got != want {
		rc.t.Errorf("%q -> %q, want %q", line, got, want)
	}
}

func TestProtocol(t *testing.T) {
	_, addr := start(t, Options{TickPeriod: -1})
	c := dial(t, addr)
	c.expect("0 1 GET a", "1 NOTFOUND")
	c.expect("0 2 PUT a hello world", "2 OK")
	c.expect("0 3 GET a", "3 OK hello world")
	c.expect("0 4 APPEND a !", "4 OK")
	c.expect("0 5 get a", "5 OK hello world!")
	c.expect("0 6 APPEND b x", "6 OK") // append to a missing key creates it
	c.expect("0 7 GET b", "7 OK x")
	c.expect("0 8 PUT e ", "8 OK") // empty value
	c.expect("0 9 GET e", "9 OK")
	c.expect("0 10 DEL a", "10 OK")
	c.expect("0 11 DEL a", "11 NOTFOUND")
	c.expect("0 12 GET a", "12 NOTFOUND")
	c.expect("0 13 PING", "13 OK PONG")
	if got := c.do("0 14 FROB a"); !strings.HasPrefix(got, "14 ERR ") {
		t.Errorf("unknown op: %q", got)
	}
	if got := c.do("garbage"); !strings.HasPrefix(got, "0 ERR ") {
		t.Errorf("garbage: %q", got)
	}
	if got := c.do("0 15 PUTTTL k nope v"); !strings.HasPrefix(got, "15 ERR ") {
		t.Errorf("bad ttl: %q", got)
	}
	// Pipelined requests are answered in order.
	c.c.Write([]byte("0 20 PUT p 1\n0 21 APPEND p 2\n0 22 GET p\n"))
	for _, want := range []string{"20 OK", "21 OK", "22 OK 12"} {
		if got, _ := wire.ReadLine(c.r); got != want {
			t.Errorf("pipelined: %q, want %q", got, want)
		}
	}
}

func TestDedup(t *testing.T) {
	s, addr := start(t, Options{TickPeriod: -1})
	c := dial(t, addr)
	c.expect("7 100 PUT k a", "100 OK")
	c.expect("7 101 APPEND k b", "101 OK")
	c.expect("7 101 APPEND k b", "101 OK") // resend: not applied again
	c.expect("0 1 GET k", "1 OK ab")
	c.expect("7 102 GET k", "102 OK ab")
	c.expect("8 1 PUT k changed", "1 OK")
	c.expect("7 102 GET k", "102 OK ab") // resent read: the original answer
	if got := c.do("7 100 PUT k again"); !strings.HasPrefix(got, "100 STALE") {
		t.Errorf("older seq: %q", got)
	}
	c.expect("0 2 GET k", "2 OK changed")
	c.expect("7 103 DEL k", "103 OK")
	c.expect("7 103 DEL k", "103 OK") // the original answer, not NOTFOUND
	// A resend on another connection (after a reconnect) also gets the original answer.
	d := dial(t, addr)
	d.expect("7 103 DEL k", "103 OK")
	if st := s.Stats(); st.DedupHits != 4 {
		t.Errorf("dedup hits %d, want 4", st.DedupHits)
	}
	// Client 0 is never deduplicated.
	c.expect("0 5 APPEND z x", "5 OK")
	c.expect("0 5 APPEND z x", "5 OK")
	c.expect("0 6 GET z", "6 OK xx")
}

func TestTTL(t *testing.T) {
	s, addr := start(t, Options{TickPeriod: -1, SweepPeriod: 20 * time.Millisecond})
	c := dial(t, addr)
	c.expect("0 1 PUTTTL short 100 v1", "1 OK")
	c.expect("0 2 PUTTTL long 60000 v2", "2 OK")
	c.expect("0 3 PUTTTL swept 50 v3", "3 OK")
	c.expect("0 4 PUTTTL cleared 50 v4", "4 OK")
	c.expect("0 5 PUT cleared v5", "5 OK") // a plain PUT removes the TTL
	c.expect("0 6 APPEND long +", "6 OK")  // APPEND keeps it
	c.expect("0 7 GET short", "7 OK v1")
	time.Sleep(250 * time.Millisecond)
	c.expect("0 8 GET short", "8 NOTFOUND")
	c.expect("0 9 GET long", "9 OK v2+")
	c.expect("0 10 GET cleared", "10 OK v5")
	// "swept" was never read after expiry: the sweep goroutine removed it.
	s.mu.Lock()
	_, still := s.data["swept"]
	s.mu.Unlock()
	if still {
		t.Error("expired key not swept")
	}
	if st := s.Stats(); st.Expired < 2 {
		t.Errorf("expired %d, want >= 2", st.Expired)
	}
}

func TestTick(t *testing.T) {
	_, addr := start(t, Options{TickPeriod: 10 * time.Millisecond})
	c := dial(t, addr)
	time.Sleep(150 * time.Millisecond)
	rep := c.do("0 1 GET " + TickKey)
	f := strings.Fields(rep)
	if len(f) != 4 || f[1] != "OK" {
		t.Fatalf("tick: %q", rep)
	}
	n, err1 := strconv.Atoi(f[2])
	ns, err2 := strconv.ParseInt(f[3], 10, 64)
	if err1 != nil || err2 != nil || n < 5 {
		t.Fatalf("tick: %q", rep)
	}
	if d := time.Since(time.Unix(0, ns)); d < 0 || d > 5*time.Second {
		t.Errorf("tick time %v off", d)
	}
}

func TestAdmin(t *testing.T) {
	_, addr := start(t, Options{TickPeriod: -1})
	c := dial(t, addr)
	var st Stats
	rep := c.do("0 1 STATS")
	if !strings.HasPrefix(rep, "1 OK {") || json.Unmarshal([]byte(rep[5:]), &st) != nil {
		t.Fatalf("STATS: %q", rep)
	}
	if st.Goroutines < 3 || st.GoVersion == "" || st.Listener == "" {
		t.Errorf("STATS: %+v", st)
	}
	var a AllocReply
	rep = c.do("0 2 ALLOC 8")
	if !strings.HasPrefix(rep, "2 OK {") || json.Unmarshal([]byte(rep[5:]), &a) != nil {
		t.Fatalf("ALLOC: %q", rep)
	}
	if a.NumGC <= st.NumGC || a.MiB != 8 || a.Kept {
		t.Errorf("ALLOC did not run a GC: %+v (before: %d)", a, st.NumGC)
	}
	rep = c.do("0 3 ALLOC 4 keep")
	if json.Unmarshal([]byte(rep[5:]), &a) != nil || a.BallastMiB != 4 {
		t.Errorf("ALLOC keep: %q", rep)
	}
	rep = c.do("0 4 FREE")
	if json.Unmarshal([]byte(rep[5:]), &a) != nil || a.BallastMiB != 0 {
		t.Errorf("FREE: %q", rep)
	}
	rep = c.do("0 5 RAND 16")
	f := strings.Fields(rep)
	if len(f) != 3 || f[1] != "OK" || len(f[2]) != 32 {
		t.Errorf("RAND: %q", rep)
	}
	if rep2 := c.do("0 6 RAND 16"); rep2[5:] == rep[5:] {
		t.Errorf("RAND repeated itself: %q", rep2)
	}
	if got := c.do("0 7 ALLOC 999999"); !strings.HasPrefix(got, "7 ERR") {
		t.Errorf("huge ALLOC: %q", got)
	}
}

func fnv64(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// The preload function is a contract with the Rust checker: pin it.
func TestPreloadFunction(t *testing.T) {
	if !strings.HasPrefix(PreloadValue(0), "pre/0=e220a8397b1dcdaf6e789e6aa1b965f4") {
		t.Errorf("value(0) starts %.40q", PreloadValue(0))
	}
	for _, c := range []struct{ mib, n int }{{0, 0}, {1, 417}, {8, 3279}, {64, 26231}} {
		if got := PreloadCount(c.mib); got != c.n {
			t.Errorf("count(%d) = %d, want %d", c.mib, got, c.n)
		}
	}
	// (i, len, last 20 bytes, FNV-1a 64 of the value); the same golden values
	// pin the Rust reimplementation (tests/src/check/preload.rs).
	for _, g := range []struct {
		i, n int
		tail string
		hash uint64
	}{
		{0, 1024, "4929a88f1de255b237b8", 0x383f55b642904499},
		{1, 3969, "cf0cfdfd4c0752fda6b1", 0xcdd475ec170d0fd4},
		{7, 3201, "adc91b1f79620fdc5293", 0xf62bf3b96bd9ae34},
		{12345, 3459, "536044e1fd14dc4713dd", 0xad961d65be4984e8},
	} {
		v := PreloadValue(g.i)
		if PreloadLen(g.i) != g.n || len(v) != g.n || !strings.HasPrefix(v, PreloadKey(g.i)+"=") ||
			v[len(v)-20:] != g.tail || fnv64(v) != g.hash {
			t.Errorf("value(%d): len %d tail %q fnv %#x; want %d %q %#x", g.i, len(v), v[len(v)-20:], fnv64(v), g.n, g.tail, g.hash)
		}
	}
	for i := 0; i < 5000; i++ {
		if n := PreloadLen(i); n < 1024 || n > 4096 {
			t.Fatalf("len(%d) = %d", i, n)
		}
	}
}

func TestPreloadVerify(t *testing.T) {
	_, addr := start(t, Options{TickPeriod: -1, PreloadMiB: 1})
	res, err := VerifyPreload(addr, 1, 3, 20*time.Second)
	if err != nil || res.Bad != 0 || res.Checked != 417 || res.ServerKeys != 417 {
		t.Fatalf("intact preload: %+v %v", res, err)
	}
	c := dial(t, addr)
	c.expect("0 1 PUT pre/300 broken", "1 OK")
	c.expect("0 2 DEL pre/7", "2 OK")
	res, err = VerifyPreload(addr, 1, 3, 20*time.Second)
	if err != nil || res.Bad != 2 || res.FirstBad != "pre/7" || res.Reason != "missing" {
		t.Fatalf("broken preload: %+v %v", res, err)
	}
}

func TestCheckValue(t *testing.T) {
	issued := func(c uint64) (uint64, bool) { return 10, c == 3 }
	for _, c := range []struct {
		v  string
		ok bool
	}{
		{"v-3-1", true}, {"v-3-1+3-2+4-99", true}, {"+3-2", true}, {"v-3-4~xxxx+5-1~xx", true},
		{"v-3-11", false}, {"v-3-1+3-1", false}, {"x-3-1", false}, {"v-3-1+zz", false}, {"v-3-1~xy", false},
	} {
		if why := checkValue(c.v, issued); (why == "") != c.ok {
			t.Errorf("checkValue(%q) = %q, want ok=%v", c.v, why, c.ok)
		}
	}
}

// A load run across a "failover": the server drops every connection and
// listens again at the same address (same state, as a restored copy would).
// The clients reconnect, resend, and every operation ends answered.
func TestLoadSurvivesReconnect(t *testing.T) {
	s, addr := start(t, Options{TickPeriod: -1})
	histPath := filepath.Join(t.TempDir(), "h.jsonl")
	run, err := loadgen.NewRun("kvclient", loadgen.Flags{
		Conns: 3, Duration: 1200 * time.Millisecond, OpTimeout: time.Second,
		ClientIDBase: 100, Seed: 1, History: histPath, Quiet: true, Think: 200 * time.Microsecond,
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
	sum := RunLoad(run, LoadOptions{Addr: addr, WriteFrac: 0.5, AppendFrac: 0.4, DeleteFrac: 0.1, Keys: 10, KeyPrefix: "k"})
	if sum.Ops < 100 || sum.Errors != 0 || sum.Wrong != 0 || sum.Reconnects < 3 {
		t.Errorf("summary %+v", sum)
	}
	checkHistory(t, histPath, int(sum.Ops+sum.Errors))
}

func checkHistory(t *testing.T, path string, want int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		var m map[string]interface{}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d: %v", n, err)
		}
		for _, k := range []string{"client", "op", "key", "invoke_ns", "complete_ns", "invoke_wall_ns", "complete_wall_ns", "status"} {
			if _, ok := m[k]; !ok {
				t.Fatalf("line %d lacks %q: %s", n, k, sc.Text())
			}
		}
		op := m["op"].(string)
		_, hasValue := m["value"]
		_, hasOutput := m["output"]
		_, hasFound := m["found"]
		switch op {
		case "put", "append":
			if !hasValue || hasOutput {
				t.Fatalf("line %d: %s", n, sc.Text())
			}
		case "delete":
			if hasValue || hasOutput {
				t.Fatalf("line %d: %s", n, sc.Text())
			}
		case "get":
			if m["status"] == "ok" && (!hasOutput || !hasFound) {
				t.Fatalf("line %d: %s", n, sc.Text())
			}
		default:
			t.Fatalf("line %d: op %q", n, op)
		}
		if m["complete_ns"].(float64) < m["invoke_ns"].(float64) {
			t.Fatalf("line %d: completes before invoke", n)
		}
	}
	if n != want {
		t.Errorf("history has %d lines, want %d", n, want)
	}
}

func Example_protocol() {
	s := New(Options{TickPeriod: -1, Logf: quiet})
	defer s.Close()
	for _, line := range []string{"5 1 PUT k v", "5 2 APPEND k w", "5 2 APPEND k w", "5 3 GET k"} {
		seq, status, payload := s.Handle(line)
		fmt.Println(strings.TrimSpace(fmt.Sprint(seq, " ", status, " ", payload)))
	}
	// Output:
	// 1 OK
	// 2 OK
	// 2 OK
	// 3 OK vw
}

// Two runs with the same client ids against the same store: the second must
// not take the first run's values for wrong answers.
func TestLoadTwiceSameIDs(t *testing.T) {
	_, addr := start(t, Options{TickPeriod: -1})
	for i := 0; i < 2; i++ {
		run, err := loadgen.NewRun("kvclient", loadgen.Flags{
			Conns: 2, Ops: 400, OpTimeout: time.Second, ClientIDBase: 1, Seed: int64(i), Quiet: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		sum := RunLoad(run, LoadOptions{Addr: addr, WriteFrac: 0.6, AppendFrac: 0.5, Keys: 5, KeyPrefix: "k"})
		if sum.Ops != 400 || sum.Errors != 0 || sum.Wrong != 0 {
			t.Errorf("run %d: %+v", i, sum)
		}
	}
}
