package durable

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"checksync/fixtures/internal/loadgen"
	"checksync/fixtures/internal/wire"
)

func quiet(string, ...interface{}) {}

// fdFlags is the "flags:" field of /proc/self/fdinfo/<fd> (octal).
func fdFlags(t *testing.T, fd int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v := strings.TrimPrefix(l, "flags:"); v != l {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("fdinfo %d has no flags", fd)
	return 0
}

func link(t *testing.T, fd int) string {
	t.Helper()
	l, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		t.Fatalf("fd %d: %v", fd, err)
	}
	return l
}

func TestWALReplayTornTailAndPreallocation(t *testing.T) {
	dir := t.TempDir()
	w, err := OpenWAL(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fl := fdFlags(t, w.fd); fl&syscall.O_APPEND != 0 {
		t.Errorf("WAL opened with O_APPEND (flags %o)", fl)
	}
	if got := link(t, w.dirFd); got != filepath.Join(dir, "wal") {
		t.Errorf("dir fd -> %s", got)
	}
	var want []Record
	for b := 0; b < 3; b++ {
		var batch []*Record
		for i := 0; i < 5; i++ {
			r := &Record{Client: uint64(b + 1), Seq: uint64(i + 10), Key: fmt.Sprintf("k%d-%d", b, i), Value: strings.Repeat("v", b*i)}
			batch = append(batch, r)
		}
		if err := w.Append(batch); err != nil {
			t.Fatal(err)
		}
		for _, r := range batch {
			want = append(want, *r)
		}
	}
	st := w.state()
	if st.LastLSN != 15 || st.Syncs < 4 || st.DirSyncs < 4 {
		t.Errorf("state %+v", st)
	}
	if size, _ := fstatSize(w.fd); size < st.Offset+PreallocChunk/2 {
		t.Errorf("file size %d: not preallocated ahead of offset %d", size, st.Offset)
	}
	if pos, _ := syscall.Seek(w.fd, 0, 1); pos != 0 {
		t.Errorf("file position moved to %d: records must be written with pwrite", pos)
	}
	end := st.Offset
	w.Close()

	// A torn record after the last good one (never acknowledged): a header
	// promising 100 bytes with a wrong checksum.
	fd, err := syscall.Open(filepath.Join(dir, "wal", walName), syscall.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	garbage := []byte{100, 0, 0, 0, 1, 2, 3, 4, 16, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9}
	if err := pwriteFull(fd, garbage, end); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd)

	var got []Record
	w, err = OpenWAL(dir, func(r *Record) { got = append(got, *r) })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("replayed %d records, want %d", len(got), len(want))
	}
	for i := range want {
		want[i].LSN = uint64(i + 1)
		if got[i] != want[i] {
			t.Errorf("record %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if w.state().Offset != end {
		t.Errorf("offset after replay %d, want %d", w.state().Offset, end)
	}
	// The tail was re-zeroed: the garbage is gone.
	b := make([]byte, len(garbage))
	if _, err := preadFull(w.fd, b, end); err != nil || strings.Trim(string(b), "\x00") != "" {
		t.Errorf("tail after reopen %v (%v), want zeros", b, err)
	}
	if err := w.Append([]*Record{{Key: "after", Value: "torn"}}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	got = nil
	w, err = OpenWAL(dir, func(r *Record) { got = append(got, *r) })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if len(got) != 16 || got[15].Key != "after" || got[15].LSN != 16 {
		t.Errorf("after the torn tail: %d records, last %+v", len(got), got[len(got)-1])
	}
}

func TestTableMappingAndFlock(t *testing.T) {
	path := filepath.Join(t.TempDir(), dataName)
	tb, err := OpenTable(path, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	if _, err := OpenTable(path, 64); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second OpenTable on a flocked file: %v", err)
	}
	if err := tb.Put("a", "1", 1); err != nil {
		t.Fatal(err)
	}
	if err := tb.Put("a", "22", 2); err != nil {
		t.Fatal(err)
	}
	if v, ok := tb.Get("a"); !ok || v != "22" {
		t.Errorf("Get(a) = %q %v", v, ok)
	}
	if _, ok := tb.Get("b"); ok {
		t.Error("Get(b) found")
	}
	// Through the file, not the mapping: MAP_SHARED writes are in the file.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "22") || string(b[:8]) != string(tableMagic) {
		t.Error("the file does not show what was written through the mapping")
	}
	if err := tb.Put(strings.Repeat("k", MaxKey+1), "v", 3); err == nil {
		t.Error("over-long key accepted")
	}
	if err := tb.Put("k", strings.Repeat("v", MaxValue+1), 3); err == nil {
		t.Error("over-long value accepted")
	}
	n := 0
	for ; n < 64; n++ {
		if err := tb.Put("key"+strconv.Itoa(n), "v", uint64(n)); err != nil {
			if err != ErrTableFull {
				t.Fatal(err)
			}
			break
		}
	}
	if n+1 != 56 { // "a" + n keys fill 7/8 of 64 slots
		t.Errorf("table took %d keys", n+1)
	}
}

type conn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &conn{t: t, c: c, r: bufio.NewReader(c)}
}

func (c *conn) do(line string) string {
	c.t.Helper()
	if _, err := c.c.Write([]byte(line + "\n")); err != nil {
		c.t.Fatal(err)
	}
	rep, err := wire.ReadLine(c.r)
	if err != nil {
		c.t.Fatalf("%q: %v", line, err)
	}
	return rep
}

func (c *conn) state() State {
	c.t.Helper()
	rep := c.do("0 1 STATE")
	var st State
	if !strings.HasPrefix(rep, "1 OK ") || json.Unmarshal([]byte(rep[5:]), &st) != nil {
		c.t.Fatalf("STATE: %q", rep)
	}
	return st
}

func start(t *testing.T, dir string) *Server {
	t.Helper()
	s, err := New(Options{DataDir: dir, Addr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Slots: 1024, Logf: quiet,
		Fatal: func(err error) { t.Errorf("fatal: %v", err) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestServerObjectsProtocolAndRestart(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir)
	c := dial(t, s.Addr().String())
	for _, x := range []struct{ req, want string }{
		{"7 10 PUT a hello world", "10 OK"},
		{"7 11 GET a", "11 OK hello world"},
		{"7 10 PUT a resent", "10 OK"}, // seq 10 again (GETs do not count): a duplicate, not rewritten
		{"7 11 GET a", "11 OK hello world"},
		{"7 12 PUT a again", "12 OK"},
		{"7 12 PUT a again", "12 OK"}, // duplicate: answered, not rewritten
		{"0 1 GET nope", "1 NOTFOUND"},
		{"0 2 PUT " + strings.Repeat("k", 97) + " v", "2 ERR key length must be 1..96"},
		{"0 3 PING", "3 OK PONG"},
		{"0 4 FOO", `4 ERR unknown op "FOO"`},
	} {
		if got := c.do(x.req); !strings.HasPrefix(got, x.want) {
			t.Errorf("%q -> %q, want %q", x.req, got, x.want)
		}
	}
	// A lower seq than the last applied PUT's is STALE.
	if got := c.do("7 9 PUT a old"); got != "9 STALE seq 9 < latest 12" {
		t.Errorf("lower seq: %q", got)
	}
	if got := c.do("7 13 GET a"); got != "13 OK again" {
		t.Errorf("after dup and stale: %q", got)
	}

	st := c.state()
	if st.Pid != os.Getpid() || st.Cgo != cgoEnabled || st.DNS.Resolver != resolverName {
		t.Errorf("state header %+v", st)
	}
	for what, x := range map[string]struct {
		fd   int
		want string
	}{
		"wal dir": {st.WAL.DirFd, filepath.Join(dir, "wal")},
		"wal":     {st.WAL.Fd, filepath.Join(dir, "wal", walName)},
		"data":    {st.Data.Fd, filepath.Join(dir, dataName)},
		"meta":    {st.Meta.Fd, filepath.Join(dir, metaName)},
		"index":   {st.Index.Fd, filepath.Join(dir, indexName)},
		"timerfd": {st.Timerfd.Fd, "anon_inode:[timerfd]"},
		"inotify": {st.Inotify.Fd, "anon_inode:inotify"},
		"main":    {st.Listeners["main"].Fd, "socket:["},
		"admin":   {st.Listeners["admin"].Fd, "socket:["},
		"self c":  {st.Self.ClientFd, "socket:["},
		"self s":  {st.Self.ServerFd, "socket:["},
		"dgram":   {st.Dgram.Fd, "socket:["},
	} {
		if got := link(t, x.fd); !strings.HasPrefix(got, x.want) {
			t.Errorf("%s: fd %d -> %s, want %s", what, x.fd, got, x.want)
		}
	}
	if !strings.HasPrefix(st.Dgram.Addr, "@") || len(st.Dgram.Addr) != 6 {
		t.Errorf("dgram address %q is not an autobind name (@ + 5 hex digits)", st.Dgram.Addr)
	}
	if st.Index.MapLen != IndexMapLen || st.Data.MapLen != tableHeader+1024*slotSize {
		t.Errorf("mappings %+v %+v", st.Index, st.Data)
	}
	if st.User.Err != "" || st.User.Uid != strconv.Itoa(os.Getuid()) {
		t.Errorf("user %+v", st.User)
	}
	if st.DNS.Err != "" || len(st.DNS.Addrs) == 0 {
		t.Errorf("dns %+v", st.DNS)
	}
	// The ticks drive the pings over the self-connection and the datagrams.
	waitFor(t, "self pings and datagrams", func() bool {
		st := c.state()
		return st.Self.Pings >= 2 && st.Dgram.Recv >= 2 && st.Timerfd.Expirations >= 2 && st.Index.Checks >= 2
	})
	if st := c.state(); st.Self.Err != "" {
		t.Errorf("self-connection: %s", st.Self.Err)
	}

	// A second store on the same directory is refused (flock).
	if _, err := New(Options{DataDir: dir, Addr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", Logf: quiet}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second store on %s: %v", dir, err)
	}

	// Restart: the WAL brings everything back, and the dedup table.
	s.Close()
	s2 := start(t, dir)
	c2 := dial(t, s2.Addr().String())
	if got := c2.do("7 14 GET a"); got != "14 OK again" {
		t.Errorf("after restart: %q", got)
	}
	if got := c2.do("7 11 PUT a older"); !strings.HasPrefix(got, "11 STALE") {
		t.Errorf("after restart, a lower seq: %q", got)
	}
}

func TestReloadRebindsAdminListener(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir)
	c := dial(t, s.Addr().String())
	st0 := c.state()
	admin0 := st0.Listeners["admin"]

	// RELOAD: a new socket bound to the same address while the old one
	// still listened (SO_REUSEPORT), then the old one closed.
	if rep := c.do("0 2 RELOAD"); !strings.HasPrefix(rep, "2 OK ") {
		t.Fatalf("RELOAD: %q", rep)
	}
	st1 := c.state()
	admin1 := st1.Listeners["admin"]
	if admin1.Fd == admin0.Fd || admin1.Addr != admin0.Addr || st1.Config.Reloads != 1 {
		t.Errorf("after RELOAD: admin %+v (was %+v), reloads %d", admin1, admin0, st1.Config.Reloads)
	}
	if _, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(admin0.Fd)); err == nil && link(t, admin0.Fd) == link(t, admin1.Fd) {
		t.Errorf("old admin fd %d still the same socket", admin0.Fd)
	}
	if got := dial(t, admin1.Addr).do("0 1 PING"); got != "1 OK PONG" {
		t.Errorf("new admin listener: %q", got)
	}

	// Writing the config file reloads through inotify: tick_ms changes.
	cfg := Config{TickMs: 50}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(st0.Config.Path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the inotify reload", func() bool { return c.state().Config.Reloads == 2 })
	st2 := c.state()
	if st2.Timerfd.IntervalMs != 50 || st2.Inotify.Events < 1 || st2.Listeners["admin"].Fd == admin1.Fd {
		t.Errorf("after writing the config: %+v %+v %+v", st2.Timerfd, st2.Inotify, st2.Listeners)
	}
	// Replaced by rename: the watch follows the path.
	tmp := st0.Config.Path + ".tmp"
	b, _ = json.Marshal(Config{TickMs: 70})
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, st0.Config.Path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reload after a rename", func() bool { return c.state().Timerfd.IntervalMs == 70 })
	// A bad config is refused and the old one kept.
	if err := os.WriteFile(st0.Config.Path, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if rep := c.do("0 3 RELOAD"); !strings.HasPrefix(rep, "3 ERR config") {
		t.Errorf("RELOAD of a bad config: %q", rep)
	}
	if st := c.state(); st.Timerfd.IntervalMs != 70 {
		t.Errorf("bad config changed the tick: %+v", st.Timerfd)
	}
}

func TestLoadThenVerifyAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	s := start(t, dir)
	addr := s.Addr().String()
	histPath := filepath.Join(t.TempDir(), "h.jsonl")
	run, err := loadgen.NewRun("durableclient", loadgen.Flags{
		Conns: 3, Ops: 300, OpTimeout: 5 * time.Second, ClientIDBase: 1, Seed: 1, History: histPath, Quiet: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	sum := RunLoad(run, LoadOptions{Addr: addr, WriteFrac: 0.7, Keys: 8, KeyPrefix: "d"})
	if sum.Ops != 300 || sum.Errors != 0 || sum.Wrong != 0 {
		t.Fatalf("load summary %+v", sum)
	}
	res, err := Verify(addr, histPath, 2, time.Minute)
	if err != nil || res.Bad != 0 || res.Acked == 0 || res.Checked != res.Keys || res.Keys == 0 {
		t.Fatalf("verify: %+v %v", res, err)
	}
	s.Close()
	s = start(t, dir)
	if res2, err := Verify(s.Addr().String(), histPath, 2, time.Minute); err != nil || res2 != res {
		t.Errorf("verify after restart: %+v %v, want %+v", res2, err, res)
	}
	// A lost write is caught: one key put back to an older value (as client 0,
	// which has no seq order), and a store that never saw the run.
	exp, _, err := Expected(histPath)
	if err != nil {
		t.Fatal(err)
	}
	var victim string
	for k := range exp {
		if victim == "" || k < victim {
			victim = k
		}
	}
	c := dial(t, s.Addr().String())
	if got := c.do("0 1 PUT " + victim + " v-0-0"); got != "1 OK" {
		t.Fatal(got)
	}
	res3, err := Verify(s.Addr().String(), histPath, 2, time.Minute)
	if err != nil || res3.Bad != 1 || res3.FirstBad != victim || !strings.Contains(res3.Reason, "v-0-0") {
		t.Errorf("verify after overwriting %s: %+v %v", victim, res3, err)
	}
	empty := start(t, t.TempDir())
	res4, err := Verify(empty.Addr().String(), histPath, 2, time.Minute)
	if err != nil || res4.Bad != res4.Keys || !strings.HasPrefix(res4.Reason, "missing") {
		t.Errorf("verify against an empty store: %+v %v", res4, err)
	}
}

func TestExpected(t *testing.T) {
	p := filepath.Join(t.TempDir(), "h.jsonl")
	lines := []string{
		`{"client":1,"op":"put","key":"a","value":"v1","status":"ok"}`,
		`{"client":1,"op":"put","key":"a","value":"v2","status":"ok"}`,
		`{"client":1,"op":"put","key":"a","value":"v3","status":"unknown"}`,
		`{"client":2,"op":"put","key":"b","value":"w1","status":"unknown"}`,
		`{"client":2,"op":"put","key":"c","value":"x1","status":"fail"}`,
		`{"client":2,"op":"get","key":"a","output":"v2","found":true,"status":"ok"}`,
	}
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	exp, acks, err := Expected(p)
	if err != nil {
		t.Fatal(err)
	}
	if acks != 2 || len(exp) != 1 || exp["a"].Acked != "v2" || len(exp["a"].Unknown) != 1 || exp["a"].Unknown[0] != "v3" {
		t.Errorf("Expected = %v %d", exp, acks)
	}
	for _, x := range []struct {
		rep wire.Reply
		ok  bool
	}{
		{wire.Reply{Status: wire.OK, Payload: "v2"}, true},
		{wire.Reply{Status: wire.OK, Payload: "v3"}, true},
		{wire.Reply{Status: wire.OK, Payload: "v1"}, false},
		{wire.Reply{Status: wire.NotFound}, false},
		{wire.Reply{Status: wire.Err, Payload: "x"}, false},
	} {
		if why := judge(exp["a"], x.rep); (why == "") != x.ok {
			t.Errorf("judge(%+v) = %q", x.rep, why)
		}
	}
	if err := os.WriteFile(p, []byte("{bad\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Expected(p); err == nil || !strings.Contains(err.Error(), ":1:") {
		t.Errorf("bad line: %v", err)
	}
}
