// Package kv is the key-value store served by cmd/kvstore: an in-memory map
// behind one mutex, the line protocol of package wire, deduplication by client
// id + sequence number, TTLs with a sweep goroutine, a ticker key and a few
// admin operations (ALLOC, FREE, RAND, STATS, PING).
package kv

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"checksync/fixtures/internal/svc"
	"checksync/fixtures/internal/wire"
)

// TickKey is updated every TickPeriod with "<count> <unix-nanos>".
const TickKey = "tick"

// Options configure a Server.
type Options struct {
	PreloadMiB    int           // fill with PreloadCount(PreloadMiB) deterministic values
	TickPeriod    time.Duration // 0: 100 ms; < 0: no ticker
	SweepPeriod   time.Duration // TTL sweep period; 0: 1 s
	MaxAllocMiB   int           // cap for ALLOC; 0: 4096
	Logf          func(format string, args ...interface{})
	IdleTimeout   time.Duration // close connections idle this long; 0: never
	WriteDeadline time.Duration // per reply; 0: 10 s
}

type entry struct {
	val string
	exp time.Time // zero: no TTL
}

type dedupEntry struct {
	seq     uint64
	status  string
	payload string
}

// Server is one key-value store.
type Server struct {
	opt Options

	mu      sync.Mutex
	data    map[string]entry
	ttlKeys map[string]struct{}
	dedup   map[uint64]*dedupEntry

	ballastMu sync.Mutex
	ballast   [][]byte

	start       time.Time
	preloadKeys int
	ticks       atomic.Int64
	ops         atomic.Int64
	dedupHits   atomic.Int64
	expired     atomic.Int64
	conns       atomic.Int64

	lmu       sync.Mutex
	listeners []net.Listener
	proto     string // first listener's protocol: "tcp" or "mptcp"
	open      map[net.Conn]struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

// New builds a server, preloading values, and starts its background goroutines.
func New(opt Options) *Server {
	if opt.TickPeriod == 0 {
		opt.TickPeriod = 100 * time.Millisecond
	}
	if opt.SweepPeriod <= 0 {
		opt.SweepPeriod = time.Second
	}
	if opt.MaxAllocMiB <= 0 {
		opt.MaxAllocMiB = 4096
	}
	if opt.WriteDeadline <= 0 {
		opt.WriteDeadline = 10 * time.Second
	}
	if opt.Logf == nil {
		opt.Logf = log.Printf
	}
	s := &Server{
		opt:     opt,
		ttlKeys: make(map[string]struct{}),
		dedup:   make(map[uint64]*dedupEntry),
		start:   time.Now(),
		open:    make(map[net.Conn]struct{}),
		closed:  make(chan struct{}),
	}
	n := PreloadCount(opt.PreloadMiB)
	s.data = make(map[string]entry, n+1024)
	for i := 0; i < n; i++ {
		s.data[PreloadKey(i)] = entry{val: PreloadValue(i)}
	}
	s.preloadKeys = n
	if n > 0 {
		s.opt.Logf("preloaded %d keys (%d MiB of values) in %v", n, opt.PreloadMiB, time.Since(s.start).Round(time.Millisecond))
	}
	if opt.TickPeriod > 0 {
		go s.ticker()
	}
	go s.sweeper()
	return s
}

// PreloadKeys is how many keys were preloaded.
func (s *Server) PreloadKeys() int { return s.preloadKeys }

func (s *Server) ticker() {
	t := time.NewTicker(s.opt.TickPeriod)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case now := <-t.C:
			n := s.ticks.Add(1)
			v := strconv.FormatInt(n, 10) + " " + strconv.FormatInt(now.UnixNano(), 10)
			s.mu.Lock()
			s.data[TickKey] = entry{val: v}
			s.mu.Unlock()
		}
	}
}

func (s *Server) sweeper() {
	t := time.NewTicker(s.opt.SweepPeriod)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
			s.sweep(time.Now())
		}
	}
}

func (s *Server) sweep(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k := range s.ttlKeys {
		e, ok := s.data[k]
		if !ok || e.exp.IsZero() {
			delete(s.ttlKeys, k)
			continue
		}
		if !now.Before(e.exp) {
			delete(s.data, k)
			delete(s.ttlKeys, k)
			n++
		}
	}
	if n > 0 {
		s.expired.Add(int64(n))
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

// Close stops listening and closes every connection (state stays in memory).
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

func (s *Server) serveConn(c net.Conn) {
	s.conns.Add(1)
	defer func() {
		c.Close()
		s.conns.Add(-1)
		s.lmu.Lock()
		delete(s.open, c)
		s.lmu.Unlock()
	}()
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriterSize(c, 64<<10)
	var out []byte
	for {
		if s.opt.IdleTimeout > 0 {
			c.SetReadDeadline(time.Now().Add(s.opt.IdleTimeout))
		}
		line, err := wire.ReadLine(r)
		if err != nil {
			return
		}
		seq, status, payload := s.Handle(line)
		out = wire.AppendReply(out[:0], seq, status, payload)
		if _, err := w.Write(out); err != nil {
			return
		}
		if r.Buffered() == 0 { // pipelined requests: reply in one write
			c.SetWriteDeadline(time.Now().Add(s.opt.WriteDeadline))
			if err := w.Flush(); err != nil {
				return
			}
		}
		if cap(out) > 1<<20 {
			out = nil
		}
	}
}

// Handle executes one request line and returns the reply's seq, status and payload.
func (s *Server) Handle(line string) (uint64, string, string) {
	req, err := wire.ParseRequest(line)
	if err != nil {
		return 0, wire.Err, err.Error()
	}
	s.ops.Add(1)
	switch req.Op {
	case "GET", "PUT", "PUTTTL", "APPEND", "DEL", "DELETE":
	case "PING":
		return req.Seq, wire.OK, "PONG"
	case "STATS":
		return req.Seq, wire.OK, s.statsJSON()
	case "RAND":
		st, p := s.random(req.Args)
		return req.Seq, st, p
	case "ALLOC":
		st, p := s.alloc(req.Args)
		return req.Seq, st, p
	case "FREE":
		st, p := s.free(req.Args)
		return req.Seq, st, p
	default:
		return req.Seq, wire.Err, "unknown op " + strconv.Quote(req.Op)
	}

	// Data operations: parse fully before touching state, so that ERR means
	// "not applied".
	key, rest := wire.Word(req.Args)
	if !wire.ValidName(key) {
		return req.Seq, wire.Err, "bad key"
	}
	var ttl time.Duration
	val := rest
	if req.Op == "PUTTTL" {
		ms, v := wire.Word(rest)
		n, err := strconv.ParseInt(ms, 10, 64)
		if err != nil || n <= 0 {
			return req.Seq, wire.Err, "bad ttl-ms"
		}
		ttl = time.Duration(n) * time.Millisecond
		val = v
	}

	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var d *dedupEntry
	if req.Client != 0 {
		d = s.dedup[req.Client]
		if d != nil {
			if req.Seq == d.seq {
				s.dedupHits.Add(1)
				return req.Seq, d.status, d.payload
			}
			if req.Seq < d.seq {
				return req.Seq, wire.Stale, "seq " + strconv.FormatUint(req.Seq, 10) + " < latest " + strconv.FormatUint(d.seq, 10)
			}
		} else {
			d = &dedupEntry{}
			s.dedup[req.Client] = d
		}
	}
	status, payload := s.apply(req.Op, key, val, ttl, now)
	if d != nil {
		d.seq, d.status, d.payload = req.Seq, status, payload
	}
	return req.Seq, status, payload
}

// apply runs one data operation; s.mu is held.
func (s *Server) apply(op, key, val string, ttl time.Duration, now time.Time) (string, string) {
	e, ok := s.data[key]
	if ok && !e.exp.IsZero() && !now.Before(e.exp) { // expired, not swept yet
		delete(s.data, key)
		delete(s.ttlKeys, key)
		s.expired.Add(1)
		ok = false
	}
	switch op {
	case "GET":
		if !ok {
			return wire.NotFound, ""
		}
		return wire.OK, e.val
	case "PUT":
		s.data[key] = entry{val: val}
		delete(s.ttlKeys, key)
		return wire.OK, ""
	case "PUTTTL":
		s.data[key] = entry{val: val, exp: now.Add(ttl)}
		s.ttlKeys[key] = struct{}{}
		return wire.OK, ""
	case "APPEND": // keeps an existing TTL
		e.val += val
		s.data[key] = e
		return wire.OK, ""
	default: // DEL, DELETE
		if !ok {
			return wire.NotFound, ""
		}
		delete(s.data, key)
		delete(s.ttlKeys, key)
		return wire.OK, ""
	}
}

// Stats is the STATS reply (JSON).
type Stats struct {
	Goroutines  int    `json:"goroutines"`
	NumGC       uint32 `json:"num_gc"`
	HeapAlloc   uint64 `json:"heap_alloc"`
	HeapSys     uint64 `json:"heap_sys"`
	Keys        int    `json:"keys"`
	PreloadKeys int    `json:"preload_keys"`
	Ticks       int64  `json:"ticks"`
	Conns       int64  `json:"conns"`
	Ops         int64  `json:"ops"`
	DedupHits   int64  `json:"dedup_hits"`
	Expired     int64  `json:"expired"`
	BallastMiB  int    `json:"ballast_mib"`
	UptimeMs    int64  `json:"uptime_ms"`
	GoVersion   string `json:"go_version"`
	Listener    string `json:"listener_proto"`
	Pid         int    `json:"pid"`
}

// Stats returns the current statistics.
func (s *Server) Stats() Stats {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.mu.Lock()
	keys := len(s.data)
	s.mu.Unlock()
	s.ballastMu.Lock()
	ballast := len(s.ballast)
	s.ballastMu.Unlock()
	s.lmu.Lock()
	proto := s.proto
	s.lmu.Unlock()
	return Stats{
		Listener:    proto,
		Goroutines:  runtime.NumGoroutine(),
		NumGC:       ms.NumGC,
		HeapAlloc:   ms.HeapAlloc,
		HeapSys:     ms.HeapSys,
		Keys:        keys,
		PreloadKeys: s.preloadKeys,
		Ticks:       s.ticks.Load(),
		Conns:       s.conns.Load(),
		Ops:         s.ops.Load(),
		DedupHits:   s.dedupHits.Load(),
		Expired:     s.expired.Load(),
		BallastMiB:  ballast,
		UptimeMs:    time.Since(s.start).Milliseconds(),
		GoVersion:   runtime.Version(),
		Pid:         os.Getpid(),
	}
}

func (s *Server) statsJSON() string {
	b, _ := json.Marshal(s.Stats())
	return string(b)
}

func (s *Server) random(args string) (string, string) {
	n, err := strconv.Atoi(args)
	if err != nil || n < 1 || n > 1<<20 {
		return wire.Err, "RAND wants a byte count 1..1048576"
	}
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return wire.Err, "crypto/rand: " + err.Error()
	}
	return wire.OK, hex.EncodeToString(b)
}

// AllocReply is the ALLOC and FREE reply (JSON).
type AllocReply struct {
	MiB        int    `json:"mib"`
	Kept       bool   `json:"kept"`
	BallastMiB int    `json:"ballast_mib"`
	NumGC      uint32 `json:"num_gc"`
	HeapAlloc  uint64 `json:"heap_alloc"`
}

// alloc: "ALLOC <mib> [keep]": allocate mib MiB in 1 MiB slices and write
// every 4 KiB page; without "keep" drop it and run runtime.GC(), with "keep"
// hold on to it (until FREE).
func (s *Server) alloc(args string) (string, string) {
	ms, rest := wire.Word(args)
	n, err := strconv.Atoi(ms)
	if err != nil || n < 0 || n > s.opt.MaxAllocMiB {
		return wire.Err, fmt.Sprintf("ALLOC wants <mib> 0..%d [keep]", s.opt.MaxAllocMiB)
	}
	keep := rest == "keep"
	if rest != "" && !keep {
		return wire.Err, "ALLOC wants <mib> [keep]"
	}
	chunks := make([][]byte, n)
	for i := range chunks {
		c := make([]byte, 1<<20)
		for j := 0; j < len(c); j += 4096 {
			c[j] = byte(i + j>>12 + 1)
		}
		chunks[i] = c
	}
	if keep {
		s.ballastMu.Lock()
		s.ballast = append(s.ballast, chunks...)
		s.ballastMu.Unlock()
	}
	chunks = nil
	if !keep {
		runtime.GC()
	}
	return wire.OK, s.allocReply(n, keep)
}

func (s *Server) free(args string) (string, string) {
	if args != "" && args != "os" {
		return wire.Err, "FREE wants [os]"
	}
	s.ballastMu.Lock()
	s.ballast = nil
	s.ballastMu.Unlock()
	runtime.GC()
	if args == "os" {
		// Hands the freed heap back to the kernel now (MADV_DONTNEED), as the
		// background scavenger would over minutes.
		debug.FreeOSMemory()
	}
	return wire.OK, s.allocReply(0, false)
}

func (s *Server) allocReply(n int, keep bool) string {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.ballastMu.Lock()
	b := len(s.ballast)
	s.ballastMu.Unlock()
	out, _ := json.Marshal(AllocReply{MiB: n, Kept: keep, BallastMiB: b, NumGC: ms.NumGC, HeapAlloc: ms.HeapAlloc})
	return string(out)
}
