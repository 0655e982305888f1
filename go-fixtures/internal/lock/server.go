// Package lock is the lock server served by cmd/lockserver: named locks granted
// to client ids, FIFO waiting with a timeout, optional leases, and
// retry-safe requests (client id + seq: a resent request gets the original
// answer, even while the original is still waiting).
package lock

import (
	"bufio"
	"encoding/json"
	"errors"
	"log"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"checksync/fixtures/internal/svc"
	"checksync/fixtures/internal/wire"
)

// Options configure a Server.
type Options struct {
	MaxWait       time.Duration // cap on an ACQUIRE's wait; 0: 60 s
	Logf          func(format string, args ...interface{})
	WriteDeadline time.Duration // 0: 10 s
}

type waiter struct {
	client  uint64
	lease   time.Duration
	granted bool
	ch      chan struct{}
}

type lockState struct {
	holder  uint64 // 0: free
	epoch   uint64 // bumped on every grant
	waiters []*waiter
	lease   *time.Timer
}

type dedupEntry struct {
	seq     uint64
	done    chan struct{} // closed when status/payload are set
	status  string
	payload string
}

// Server is one lock server.
type Server struct {
	opt Options

	mu    sync.Mutex
	locks map[string]*lockState

	dmu   sync.Mutex
	dedup map[uint64]*dedupEntry

	start     time.Time
	ops       atomic.Int64
	grants    atomic.Int64
	timeouts  atomic.Int64
	leaseEnds atomic.Int64
	dedupHits atomic.Int64
	conns     atomic.Int64

	lmu       sync.Mutex
	listeners []net.Listener
	proto     string
	open      map[net.Conn]struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

// New builds a server.
func New(opt Options) *Server {
	if opt.MaxWait <= 0 {
		opt.MaxWait = 60 * time.Second
	}
	if opt.WriteDeadline <= 0 {
		opt.WriteDeadline = 10 * time.Second
	}
	if opt.Logf == nil {
		opt.Logf = log.Printf
	}
	return &Server{
		opt:    opt,
		locks:  make(map[string]*lockState),
		dedup:  make(map[uint64]*dedupEntry),
		start:  time.Now(),
		open:   make(map[net.Conn]struct{}),
		closed: make(chan struct{}),
	}
}

// Serve accepts connections on l until Close.
func (s *Server) Serve(l net.Listener) error {
	proto := svc.ListenerProto(l)
	s.lmu.Lock()
	s.listeners = append(s.listeners, l)
	if s.proto == "" {
		s.proto = proto
	}
	s.lmu.Unlock()
	for {
		c, err := l.Accept()
		if err != nil {
			select {
			case <-s.closed:
				return nil
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return nil // Drop
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		s.lmu.Lock()
		s.open[c] = struct{}{}
		s.lmu.Unlock()
		go s.serveConn(c)
	}
}

// Close stops listening, closes every connection and wakes every waiter
// (they answer TIMEOUT to nobody). Lock state stays in memory.
func (s *Server) Close() {
	s.closeOnce.Do(func() { close(s.closed) })
	s.Drop()
}

// Drop closes the listeners and every connection but keeps serving state and
// background work: the next Serve on a new listener continues where this left
// off (tests use it to simulate a failover to a restored copy).
func (s *Server) Drop() {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	for _, l := range s.listeners {
		l.Close()
	}
	s.listeners = nil
	for c := range s.open {
		c.Close()
	}
}

// serveConn reads requests and answers them in order. A waiting ACQUIRE
// blocks the connection's later requests (one request at a time per client).
func (s *Server) serveConn(c net.Conn) {
	s.conns.Add(1)
	defer func() {
		c.Close()
		s.conns.Add(-1)
		s.lmu.Lock()
		delete(s.open, c)
		s.lmu.Unlock()
	}()
	r := bufio.NewReaderSize(c, 16<<10)
	w := bufio.NewWriterSize(c, 16<<10)
	var out []byte
	for {
		line, err := wire.ReadLine(r)
		if err != nil {
			return
		}
		seq, status, payload := s.Handle(line)
		out = wire.AppendReply(out[:0], seq, status, payload)
		if _, err := w.Write(out); err != nil {
			return
		}
		if r.Buffered() == 0 {
			c.SetWriteDeadline(time.Now().Add(s.opt.WriteDeadline))
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

// Handle executes one request line and returns the reply's seq, status, payload.
func (s *Server) Handle(line string) (uint64, string, string) {
	req, err := wire.ParseRequest(line)
	if err != nil {
		return 0, wire.Err, err.Error()
	}
	s.ops.Add(1)
	switch req.Op {
	case "PING":
		return req.Seq, wire.OK, "PONG"
	case "STATS":
		return req.Seq, wire.OK, s.statsJSON()
	case "ACQUIRE", "RELEASE", "HOLDER":
	default:
		return req.Seq, wire.Err, "unknown op " + strconv.Quote(req.Op)
	}
	name, rest := wire.Word(req.Args)
	if !wire.ValidName(name) {
		return req.Seq, wire.Err, "bad lock name"
	}
	var wait, lease time.Duration
	if req.Op == "ACQUIRE" {
		if req.Client == 0 {
			return req.Seq, wire.Err, "ACQUIRE needs a client id > 0"
		}
		ws, ls := wire.Word(rest)
		ms, err := strconv.ParseInt(ws, 10, 64)
		if err != nil || ms < 0 {
			return req.Seq, wire.Err, "ACQUIRE wants <lock> <wait-ms> [lease-ms]"
		}
		wait = time.Duration(ms) * time.Millisecond
		if wait > s.opt.MaxWait {
			wait = s.opt.MaxWait
		}
		if ls != "" {
			ms, err := strconv.ParseInt(ls, 10, 64)
			if err != nil || ms < 0 {
				return req.Seq, wire.Err, "ACQUIRE wants <lock> <wait-ms> [lease-ms]"
			}
			lease = time.Duration(ms) * time.Millisecond
		}
	}
	if req.Op == "RELEASE" && req.Client == 0 {
		return req.Seq, wire.Err, "RELEASE needs a client id > 0"
	}

	// Deduplicate: the first request with a given (client, seq) executes; any
	// resend waits for it and gets the same answer.
	var d *dedupEntry
	if req.Client != 0 {
		s.dmu.Lock()
		d = s.dedup[req.Client]
		if d != nil && req.Seq == d.seq {
			s.dmu.Unlock()
			s.dedupHits.Add(1)
			<-d.done
			return req.Seq, d.status, d.payload
		}
		if d != nil && req.Seq < d.seq {
			s.dmu.Unlock()
			return req.Seq, wire.Stale, "seq " + strconv.FormatUint(req.Seq, 10) + " < latest " + strconv.FormatUint(d.seq, 10)
		}
		d = &dedupEntry{seq: req.Seq, done: make(chan struct{})}
		s.dedup[req.Client] = d
		s.dmu.Unlock()
	}
	var status, payload string
	switch req.Op {
	case "ACQUIRE":
		status = s.acquire(req.Client, name, wait, lease)
	case "RELEASE":
		status = s.release(req.Client, name)
	default:
		status, payload = wire.OK, s.holder(name)
	}
	if d != nil {
		d.status, d.payload = status, payload
		close(d.done)
	}
	return req.Seq, status, payload
}

// grant makes client the holder; s.mu is held.
func (s *Server) grant(name string, l *lockState, client uint64, lease time.Duration) {
	l.holder = client
	l.epoch++
	s.grants.Add(1)
	if lease > 0 {
		epoch := l.epoch
		l.lease = time.AfterFunc(lease, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if l.holder == client && l.epoch == epoch {
				s.leaseEnds.Add(1)
				s.opt.Logf("lease of %s by client %d expired", name, client)
				s.releaseLocked(name, l)
			}
		})
	}
}

// releaseLocked frees l and hands it to the first waiter; s.mu is held.
func (s *Server) releaseLocked(name string, l *lockState) {
	if l.lease != nil {
		l.lease.Stop()
		l.lease = nil
	}
	l.holder = 0
	if len(l.waiters) > 0 {
		w := l.waiters[0]
		l.waiters[0] = nil
		l.waiters = l.waiters[1:]
		w.granted = true
		s.grant(name, l, w.client, w.lease)
		close(w.ch)
		return
	}
	if s.locks[name] == l {
		delete(s.locks, name)
	}
}

func (s *Server) acquire(client uint64, name string, wait, lease time.Duration) string {
	s.mu.Lock()
	l := s.locks[name]
	if l == nil {
		l = &lockState{}
		s.locks[name] = l
	}
	if l.holder == client { // re-entrant: already yours
		s.mu.Unlock()
		return wire.OK
	}
	if l.holder == 0 && len(l.waiters) == 0 {
		s.grant(name, l, client, lease)
		s.mu.Unlock()
		return wire.OK
	}
	if wait <= 0 {
		s.timeouts.Add(1)
		s.mu.Unlock()
		return wire.Timeout
	}
	w := &waiter{client: client, lease: lease, ch: make(chan struct{})}
	l.waiters = append(l.waiters, w)
	s.mu.Unlock()

	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-w.ch:
		return wire.OK
	case <-t.C:
	case <-s.closed:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.granted { // granted just as the timer fired
		return wire.OK
	}
	for i, x := range l.waiters {
		if x == w {
			l.waiters = append(l.waiters[:i], l.waiters[i+1:]...)
			break
		}
	}
	if l.holder == 0 && len(l.waiters) == 0 && s.locks[name] == l {
		delete(s.locks, name)
	}
	s.timeouts.Add(1)
	return wire.Timeout
}

func (s *Server) release(client uint64, name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.locks[name]
	if l == nil || l.holder != client {
		return wire.NotHeld
	}
	s.releaseLocked(name, l)
	return wire.OK
}

func (s *Server) holder(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.locks[name]; l != nil && l.holder != 0 {
		return strconv.FormatUint(l.holder, 10)
	}
	return ""
}

// Stats is the STATS reply (JSON).
type Stats struct {
	Goroutines int    `json:"goroutines"`
	NumGC      uint32 `json:"num_gc"`
	HeapAlloc  uint64 `json:"heap_alloc"`
	Locks      int    `json:"locks"`
	Held       int    `json:"held"`
	Waiting    int    `json:"waiting"`
	Ops        int64  `json:"ops"`
	Grants     int64  `json:"grants"`
	Timeouts   int64  `json:"timeouts"`
	LeaseEnds  int64  `json:"lease_expiries"`
	DedupHits  int64  `json:"dedup_hits"`
	Conns      int64  `json:"conns"`
	UptimeMs   int64  `json:"uptime_ms"`
	GoVersion  string `json:"go_version"`
	Listener   string `json:"listener_proto"`
	Pid        int    `json:"pid"`
}

// Stats returns the current statistics.
func (s *Server) Stats() Stats {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := Stats{
		Goroutines: runtime.NumGoroutine(),
		NumGC:      ms.NumGC,
		HeapAlloc:  ms.HeapAlloc,
		Ops:        s.ops.Load(),
		Grants:     s.grants.Load(),
		Timeouts:   s.timeouts.Load(),
		LeaseEnds:  s.leaseEnds.Load(),
		DedupHits:  s.dedupHits.Load(),
		Conns:      s.conns.Load(),
		UptimeMs:   time.Since(s.start).Milliseconds(),
		GoVersion:  runtime.Version(),
		Pid:        os.Getpid(),
	}
	s.mu.Lock()
	st.Locks = len(s.locks)
	for _, l := range s.locks {
		if l.holder != 0 {
			st.Held++
		}
		st.Waiting += len(l.waiters)
	}
	s.mu.Unlock()
	s.lmu.Lock()
	st.Listener = s.proto
	s.lmu.Unlock()
	return st
}

func (s *Server) statsJSON() string {
	b, _ := json.Marshal(s.Stats())
	return string(b)
}
