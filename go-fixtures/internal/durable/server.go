// Package durable is the "durable store" fixture (cmd/durable): a small
// key-value server that holds the kernel objects a storage server holds, so
// that CheckSync's tests can check they survive a checkpoint and restore:
//
//   - a WAL directory fd kept for fsync, and the WAL file written with pwrite
//     at an explicit offset (no O_APPEND), preallocated ahead (fallocate);
//   - the data file under flock(LOCK_EX), mapped read-write MAP_SHARED, which
//     every committed PUT is written into and every GET reads from;
//   - DIR/meta under an OFD write lock on [0, 128);
//   - DIR/index.dat mapped read-only MAP_SHARED over 64 MiB (the file is
//     64 KiB) with MADV_RANDOM;
//   - an unconnected unix datagram socket bound to an autobind name, which
//     sends itself a heartbeat on every timer tick;
//   - a TCP connection to its own main listener (both ends in this process),
//     exchanging a PING on every timer tick;
//   - two listeners with SO_REUSEPORT (main and admin); a config reload binds
//     a new admin listener (while the old one still listens: SO_REUSEPORT)
//     and closes the old one;
//   - a timerfd (CLOCK_MONOTONIC, tick_ms from the config) driving the ticks;
//   - an inotify watch on the config file: writing the file reloads it;
//   - os/user (user.Current) and a DNS lookup of "localhost", once at start
//     (with cgo and -tags netcgo: getpwuid_r and getaddrinfo in glibc).
//
// Protocol: package wire's lines. PUT <key> <value> (acknowledged once in the
// WAL, fsynced, and in the mapping), GET <key>, PING, STATS, STATE (JSON:
// which fd holds what, see State), RELOAD (as SIGHUP: reload the config).
// Both listeners serve every operation. PUTs of one client id are applied in
// seq order: a lower seq than the client's last applied PUT is STALE, the
// same seq is a duplicate (answered OK, not written again).
package durable

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"checksync/fixtures/internal/wire"
)

// Options configure a Server.
type Options struct {
	DataDir    string // created if missing
	Addr       string // main listener
	AdminAddr  string // admin listener (the config's admin_addr, if set, wins)
	ConfigPath string // "" means DataDir/durable.json
	Slots      int    // data table slots; 0: 16384 (8 MiB data file)
	Logf       func(format string, args ...interface{})
	// Fatal is called when the WAL cannot be written (the store cannot go
	// on without losing acknowledged writes). Default: log, then exit 1.
	Fatal func(err error)
}

// Config is the JSON config file.
type Config struct {
	// AdminAddr is where the admin listener binds; "" keeps the current one
	// (a reload then binds a new socket to the same address).
	AdminAddr string `json:"admin_addr"`
	// TickMs is the timerfd period (heartbeats, self pings, index checks).
	TickMs int `json:"tick_ms"`
}

const defaultTickMs = 200

type putReq struct {
	client, seq uint64
	key, val    string
	done        chan reply
}

type reply struct{ status, payload string }

type listener struct {
	name string
	l    net.Listener
	fd   int
}

// Server is one running store.
type Server struct {
	opt     Options
	dataDir string
	cfgPath string

	wal   *WAL
	table *Table
	meta  *Meta
	index *Index

	commitCh   chan *putReq
	commitQuit chan struct{}
	commitDone chan struct{}
	committing bool              // the committer goroutine runs
	lastSeq    map[uint64]uint64 // committer only (and replay before it starts)

	lmu       sync.Mutex
	main      listener
	admin     listener
	adminAddr string // the admin listener's actual address
	conns     map[net.Conn]struct{}
	closing   bool

	reloadMu sync.Mutex
	cfg      Config
	reloads  atomic.Int64
	reloadBy sync.Map // reason -> *atomic.Int64 (only for STATS)

	dgram     *net.UnixConn
	dgramAddr *net.UnixAddr
	dgramSent atomic.Int64
	dgramRecv atomic.Int64

	selfToken    string
	selfClient   net.Conn
	selfBuf      *bufio.Reader
	selfReady    chan struct{}
	selfServerFd atomic.Int64
	selfPings    atomic.Int64
	selfErr      atomic.Value // string
	pingCh       chan struct{}

	timerFd    int
	timerFile  *os.File
	timerTicks atomic.Int64

	inoFd   int
	inoFile *os.File
	inoMu   sync.Mutex
	inoWd   int32
	inoEvts atomic.Int64

	userInfo UserState
	dnsInfo  DNSState

	puts, gets, dups, stale, ops atomic.Int64

	start  time.Time
	closed chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
}

// New opens the data directory (replaying the WAL), binds the listeners,
// creates the sockets, timerfd and inotify watch, makes the self-connection,
// and starts serving. Close releases everything.
func New(opt Options) (s *Server, err error) {
	if opt.Logf == nil {
		opt.Logf = log.Printf
	}
	if opt.Slots <= 0 {
		opt.Slots = 16384
	}
	if opt.Fatal == nil {
		opt.Fatal = func(err error) { log.Fatalf("FATAL: %v", err) }
	}
	dir, err := filepath.Abs(opt.DataDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s = &Server{
		opt: opt, dataDir: dir, lastSeq: make(map[uint64]uint64),
		commitCh: make(chan *putReq, 1024), commitQuit: make(chan struct{}), commitDone: make(chan struct{}),
		conns: make(map[net.Conn]struct{}), pingCh: make(chan struct{}, 1), selfReady: make(chan struct{}),
		timerFd: -1, inoFd: -1, start: time.Now(), closed: make(chan struct{}),
	}
	s.selfServerFd.Store(-1)
	s.selfErr.Store("")
	s.cfgPath = opt.ConfigPath
	if s.cfgPath == "" {
		s.cfgPath = filepath.Join(dir, "durable.json")
	}
	if s.cfgPath, err = filepath.Abs(s.cfgPath); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.Close()
			s = nil
		}
	}()

	// Files: the flock first, so a second store on the directory stops here.
	if s.table, err = OpenTable(filepath.Join(dir, dataName), opt.Slots); err != nil {
		return s, err
	}
	if s.meta, err = OpenMeta(filepath.Join(dir, metaName)); err != nil {
		return s, err
	}
	var replayErr error
	replayed := 0
	s.wal, err = OpenWAL(dir, func(r *Record) {
		if replayErr != nil {
			return
		}
		if e := s.table.Put(r.Key, r.Value, r.LSN); e != nil {
			replayErr = fmt.Errorf("WAL record %d (key %q): %v", r.LSN, r.Key, e)
		}
		if r.Client != 0 && r.Seq > s.lastSeq[r.Client] {
			s.lastSeq[r.Client] = r.Seq
		}
		replayed++
	})
	if err != nil {
		return s, err
	}
	if replayErr != nil {
		return s, replayErr
	}
	if replayed > 0 {
		opt.Logf("replayed %d WAL records (%d keys)", replayed, s.table.Len())
	}
	if s.index, err = OpenIndex(filepath.Join(dir, indexName)); err != nil {
		return s, err
	}
	s.committing = true
	go s.committer()

	// Config (created with defaults if missing).
	if s.cfg, err = loadConfig(s.cfgPath, true); err != nil {
		return s, err
	}

	// Listeners.
	ml, err := listenReusePort(opt.Addr)
	if err != nil {
		return s, fmt.Errorf("listen %s: %w", opt.Addr, err)
	}
	s.main = listener{name: "main", l: ml, fd: connFd(ml)}
	adminAt := opt.AdminAddr
	if s.cfg.AdminAddr != "" {
		adminAt = s.cfg.AdminAddr
	}
	al, err := listenReusePort(adminAt)
	if err != nil {
		ml.Close()
		s.main = listener{}
		return s, fmt.Errorf("listen (admin) %s: %w", adminAt, err)
	}
	s.admin = listener{name: "admin", l: al, fd: connFd(al)}
	s.adminAddr = al.Addr().String()

	// Unix datagram socket, autobind (bind with an empty sun_path).
	if s.dgram, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: "", Net: "unixgram"}); err != nil {
		return s, fmt.Errorf("unix datagram socket: %w", err)
	}
	s.dgramAddr, _ = s.dgram.LocalAddr().(*net.UnixAddr)
	if s.dgramAddr == nil || len(s.dgramAddr.Name) < 2 || s.dgramAddr.Name[0] != '@' {
		return s, fmt.Errorf("unix datagram socket: not autobound (local address %v)", s.dgram.LocalAddr())
	}

	// timerfd, read through the netpoller (non-blocking fd => os.NewFile polls it).
	if s.timerFd, err = timerfdCreate(); err != nil {
		return s, err
	}
	s.timerFile = os.NewFile(uintptr(s.timerFd), "timerfd")
	if err = timerfdSet(s.timerFd, s.cfg.TickMs); err != nil {
		return s, err
	}

	// inotify on the config file.
	if s.inoFd, err = syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK); err != nil {
		s.inoFd = -1
		return s, os.NewSyscallError("inotify_init1", err)
	}
	s.inoFile = os.NewFile(uintptr(s.inoFd), "inotify")
	if err = s.watchConfig(); err != nil {
		return s, err
	}

	// os/user and the resolver, once.
	s.userInfo = lookupUser()
	s.dnsInfo = lookupDNS("localhost")

	s.serve(s.main)
	s.serve(s.admin)
	s.wg.Add(4)
	go s.timerLoop()
	go s.inotifyLoop()
	go s.dgramLoop()
	go s.pingLoop()

	if err = s.connectSelf(); err != nil {
		return s, err
	}
	opt.Logf("listening on %s (%s), admin %s (%s); data %s; %s resolver, cgo=%v",
		ml.Addr(), sockProto(ml), al.Addr(), sockProto(al), dir, resolverName, cgoEnabled)
	return s, nil
}

// Addr is the main listener's address.
func (s *Server) Addr() net.Addr { return s.main.l.Addr() }

// AdminAddr is the admin listener's current address.
func (s *Server) AdminAddr() string {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	return s.adminAddr
}

// MainListener is the main listener (for the READY line).
func (s *Server) MainListener() net.Listener { return s.main.l }

func listenReusePort(addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: reusePort}
	return lc.Listen(context.Background(), "tcp", addr)
}

func loadConfig(path string, create bool) (Config, error) {
	cfg := Config{TickMs: defaultTickMs}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && create {
		out, _ := json.MarshalIndent(cfg, "", "  ")
		if err := os.WriteFile(path, append(out, '\n'), 0o644); err != nil {
			return cfg, err
		}
		return cfg, nil
	}
	if err != nil {
		return cfg, err
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	if cfg.TickMs <= 0 {
		cfg.TickMs = defaultTickMs
	}
	if cfg.TickMs < 10 {
		cfg.TickMs = 10
	}
	return cfg, nil
}

// ---- serving ----

func (s *Server) serve(ln listener) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.l.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				select {
				case <-s.closed:
					return
				default:
				}
				s.opt.Logf("accept on %s listener: %v", ln.name, err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			s.lmu.Lock()
			if s.closing {
				s.lmu.Unlock()
				c.Close()
				return
			}
			s.conns[c] = struct{}{}
			s.wg.Add(1)
			s.lmu.Unlock()
			go s.serveConn(c)
		}
	}()
}

func (s *Server) serveConn(c net.Conn) {
	defer func() {
		c.Close()
		s.lmu.Lock()
		delete(s.conns, c)
		s.lmu.Unlock()
		s.wg.Done()
	}()
	r := bufio.NewReaderSize(c, 16<<10)
	w := bufio.NewWriterSize(c, 16<<10)
	var out []byte
	for {
		line, err := wire.ReadLine(r)
		if err != nil {
			return
		}
		seq, status, payload := s.handle(c, line)
		out = wire.AppendReply(out[:0], seq, status, payload)
		if _, err := w.Write(out); err != nil {
			return
		}
		if r.Buffered() == 0 {
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

func (s *Server) handle(c net.Conn, line string) (uint64, string, string) {
	req, err := wire.ParseRequest(line)
	if err != nil {
		return 0, wire.Err, err.Error()
	}
	s.ops.Add(1)
	switch req.Op {
	case "PUT":
		key, val := wire.Word(req.Args)
		if !wire.ValidName(key) {
			return req.Seq, wire.Err, "bad key"
		}
		if _, err := s.table.Fits(key, val, 0); err != nil && err != ErrTableFull {
			return req.Seq, wire.Err, err.Error()
		}
		pr := &putReq{client: req.Client, seq: req.Seq, key: key, val: val, done: make(chan reply, 1)}
		select {
		case s.commitCh <- pr:
		case <-s.closed:
			return req.Seq, wire.Err, "closing"
		}
		rep := <-pr.done
		return req.Seq, rep.status, rep.payload
	case "GET":
		key, _ := wire.Word(req.Args)
		s.gets.Add(1)
		v, ok := s.table.Get(key)
		if !ok {
			return req.Seq, wire.NotFound, ""
		}
		return req.Seq, wire.OK, v
	case "PING":
		return req.Seq, wire.OK, "PONG"
	case "STATE":
		b, _ := json.Marshal(s.State())
		return req.Seq, wire.OK, string(b)
	case "STATS":
		b, _ := json.Marshal(s.Stats())
		return req.Seq, wire.OK, string(b)
	case "RELOAD":
		if err := s.Reload("RELOAD"); err != nil {
			return req.Seq, wire.Err, err.Error()
		}
		b, _ := json.Marshal(s.State().Listeners)
		return req.Seq, wire.OK, string(b)
	case "SELF":
		if req.Args != s.selfToken || s.selfToken == "" {
			return req.Seq, wire.Err, "not the self-connection token"
		}
		s.selfServerFd.Store(int64(connFd(c)))
		return req.Seq, wire.OK, "SELF"
	default:
		return req.Seq, wire.Err, "unknown op " + strconv.Quote(req.Op)
	}
}

// committer is the only writer: it batches PUTs, logs them (one pwrite, one
// fdatasync of the WAL, one fsync of its directory), writes them into the
// mapping, then acknowledges them.
func (s *Server) committer() {
	defer close(s.commitDone)
	for {
		var batch []*putReq
		select {
		case r := <-s.commitCh:
			batch = append(batch, r)
		case <-s.commitQuit:
			return
		}
	drain:
		for len(batch) < 256 {
			select {
			case r := <-s.commitCh:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		var recs []*Record
		var logged, dups []*putReq
		newKeys := map[string]bool{}
		for _, r := range batch {
			if r.client != 0 {
				last, seen := s.lastSeq[r.client]
				if seen && r.seq < last {
					s.stale.Add(1)
					r.done <- reply{wire.Stale, "seq " + strconv.FormatUint(r.seq, 10) + " < latest " + strconv.FormatUint(last, 10)}
					continue
				}
				if seen && r.seq == last {
					dups = append(dups, r)
					continue
				}
			}
			isNew, err := s.table.Fits(r.key, r.val, len(newKeys))
			if err != nil {
				r.done <- reply{wire.Err, err.Error()}
				continue
			}
			if isNew {
				newKeys[r.key] = true
			}
			if r.client != 0 {
				s.lastSeq[r.client] = r.seq
			}
			recs = append(recs, &Record{Client: r.client, Seq: r.seq, Key: r.key, Value: r.val})
			logged = append(logged, r)
		}
		if err := s.wal.Append(recs); err != nil {
			s.opt.Fatal(fmt.Errorf("WAL append of %d records: %w", len(recs), err))
			for _, r := range append(logged, dups...) {
				r.done <- reply{wire.Err, "WAL: " + err.Error()}
			}
			continue
		}
		for _, r := range recs {
			if err := s.table.Put(r.Key, r.Value, r.LSN); err != nil {
				s.opt.Fatal(fmt.Errorf("data table after WAL record %d: %w", r.LSN, err))
			}
		}
		s.puts.Add(int64(len(logged)))
		s.dups.Add(int64(len(dups)))
		for _, r := range logged {
			r.done <- reply{wire.OK, ""}
		}
		for _, r := range dups {
			r.done <- reply{wire.OK, ""}
		}
	}
}

// ---- timer, heartbeat datagrams, self-connection ----

func (s *Server) timerLoop() {
	defer s.wg.Done()
	var b [8]byte
	for {
		n, err := s.timerFile.Read(b[:])
		if err != nil {
			return // closed
		}
		if n != 8 {
			continue
		}
		s.timerTicks.Add(int64(*(*uint64)(unsafe.Pointer(&b[0]))))
		if err := s.index.Check(); err != nil {
			s.opt.Logf("index: %v", err)
		}
		msg := []byte("heartbeat " + strconv.FormatInt(s.timerTicks.Load(), 10))
		if _, err := s.dgram.WriteToUnix(msg, s.dgramAddr); err == nil {
			s.dgramSent.Add(1)
		}
		select {
		case s.pingCh <- struct{}{}:
		default:
		}
	}
}

func (s *Server) dgramLoop() {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	for {
		if _, _, err := s.dgram.ReadFromUnix(buf); err != nil {
			return
		}
		s.dgramRecv.Add(1)
	}
}

// connectSelf dials the main listener, tells the server end which
// connection it is (SELF <token>), and leaves the pings to pingLoop.
func (s *Server) connectSelf() error {
	s.selfToken = strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	c, err := net.DialTimeout("tcp", s.main.l.Addr().String(), 5*time.Second)
	if err != nil {
		return fmt.Errorf("self-connection: %w", err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	if _, err := c.Write([]byte(wire.FormatRequest(0, 1, "SELF", s.selfToken) + "\n")); err != nil {
		c.Close()
		return fmt.Errorf("self-connection: %w", err)
	}
	line, err := wire.ReadLine(r)
	if err != nil || line != "1 OK SELF" {
		c.Close()
		return fmt.Errorf("self-connection handshake: %q, %v", line, err)
	}
	c.SetDeadline(time.Time{})
	s.lmu.Lock()
	s.selfClient = c
	s.lmu.Unlock()
	s.selfBuf = r
	close(s.selfReady)
	return nil
}

func (s *Server) pingLoop() {
	defer s.wg.Done()
	select {
	case <-s.selfReady:
	case <-s.closed:
		return
	}
	c, r := s.selfClient, s.selfBuf
	seq := uint64(1)
	for {
		select {
		case <-s.pingCh:
		case <-s.closed:
			return
		}
		seq++
		c.SetDeadline(time.Now().Add(10 * time.Second))
		want := strconv.FormatUint(seq, 10) + " OK PONG"
		_, err := c.Write([]byte(wire.FormatRequest(0, seq, "PING", "") + "\n"))
		var line string
		if err == nil {
			line, err = wire.ReadLine(r)
		}
		if err == nil && line != want {
			err = fmt.Errorf("answer %q, want %q", line, want)
		}
		if err != nil {
			select {
			case <-s.closed:
			default:
				s.selfErr.Store(err.Error())
				s.opt.Logf("self-connection: %v (no more pings)", err)
			}
			return
		}
		s.selfPings.Add(1)
	}
}

// ---- config reload and inotify ----

func (s *Server) watchConfig() error {
	wd, err := syscall.InotifyAddWatch(s.inoFd, s.cfgPath,
		syscall.IN_CLOSE_WRITE|syscall.IN_MOVE_SELF|syscall.IN_DELETE_SELF|syscall.IN_ATTRIB)
	if err != nil {
		return &os.PathError{Op: "inotify_add_watch", Path: s.cfgPath, Err: err}
	}
	s.inoMu.Lock()
	s.inoWd = int32(wd)
	s.inoMu.Unlock()
	return nil
}

func (s *Server) inotifyLoop() {
	defer s.wg.Done()
	buf := make([]byte, 4096)
	for {
		n, err := s.inoFile.Read(buf)
		if err != nil {
			return
		}
		reload, rewatch := false, false
		s.inoMu.Lock()
		wd := s.inoWd
		s.inoMu.Unlock()
		for off := 0; off+syscall.SizeofInotifyEvent <= n; {
			ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
			off += syscall.SizeofInotifyEvent + int(ev.Len)
			if ev.Wd != wd {
				continue
			}
			s.inoEvts.Add(1)
			switch {
			case ev.Mask&(syscall.IN_IGNORED|syscall.IN_DELETE_SELF|syscall.IN_MOVE_SELF) != 0:
				rewatch, reload = true, true
			case ev.Mask&syscall.IN_CLOSE_WRITE != 0:
				reload = true
			}
		}
		if rewatch {
			// Replaced by rename or removed: watch whatever is at the path now.
			syscall.InotifyRmWatch(s.inoFd, uint32(wd))
			for i := 0; i < 100; i++ {
				if err := s.watchConfig(); err == nil {
					break
				}
				select {
				case <-s.closed:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
		if reload {
			if err := s.Reload("inotify"); err != nil {
				s.opt.Logf("reload (inotify): %v", err)
			}
		}
	}
}

// Reload re-reads the config, binds a new admin listener (at the config's
// admin_addr, or the current address: SO_REUSEPORT lets the new socket bind
// while the old one still listens), closes the old one, and re-arms the
// timerfd if tick_ms changed.
func (s *Server) Reload(reason string) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	cfg, err := loadConfig(s.cfgPath, false)
	if err != nil {
		return err
	}
	s.lmu.Lock()
	target := s.adminAddr
	closing := s.closing
	s.lmu.Unlock()
	if closing {
		return errors.New("closing")
	}
	if cfg.AdminAddr != "" {
		target = cfg.AdminAddr
	}
	nl, err := listenReusePort(target)
	if err != nil {
		return fmt.Errorf("rebind admin listener at %s: %w", target, err)
	}
	nln := listener{name: "admin", l: nl, fd: connFd(nl)}
	s.lmu.Lock()
	old := s.admin
	s.admin = nln
	s.adminAddr = nl.Addr().String()
	s.lmu.Unlock()
	s.serve(nln)
	old.l.Close()
	if cfg.TickMs != s.cfg.TickMs {
		if err := timerfdSet(s.timerFd, cfg.TickMs); err != nil {
			return err
		}
	}
	s.cfg = cfg
	s.reloads.Add(1)
	v, _ := s.reloadBy.LoadOrStore(reason, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
	s.opt.Logf("reload (%s): admin listener %s fd %d (was fd %d), tick %d ms", reason, nl.Addr(), connFd(nl), old.fd, cfg.TickMs)
	return nil
}

// ---- os/user and DNS ----

// UserState is what user.Current said.
type UserState struct {
	Uid      string `json:"uid"`
	Username string `json:"username"`
	Err      string `json:"err,omitempty"`
}

// DNSState is what the resolver said about a name.
type DNSState struct {
	Host     string   `json:"host"`
	Addrs    []string `json:"addrs"`
	Resolver string   `json:"resolver"`
	Err      string   `json:"err,omitempty"`
}

func lookupUser() UserState {
	u, err := user.Current()
	if err != nil {
		return UserState{Err: err.Error()}
	}
	return UserState{Uid: u.Uid, Username: u.Username}
}

func lookupDNS(host string) DNSState {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, host)
	st := DNSState{Host: host, Addrs: addrs, Resolver: resolverName}
	sort.Strings(st.Addrs)
	if err != nil {
		st.Err = err.Error()
	}
	return st
}

// ---- STATE and STATS ----

// ListenerState is one listener.
type ListenerState struct {
	Fd    int    `json:"fd"`
	Addr  string `json:"addr"`
	Proto string `json:"proto"`
}

// SelfState is the self-connection.
type SelfState struct {
	ClientFd   int    `json:"client_fd"`
	ServerFd   int    `json:"server_fd"`
	ClientAddr string `json:"client_addr"` // the client end's local address
	ServerAddr string `json:"server_addr"` // the main listener's address
	Pings      int64  `json:"pings"`
	Err        string `json:"err,omitempty"`
}

// State is the STATE reply: what the process believes it holds.
type State struct {
	Pid       int                      `json:"pid"`
	GoVersion string                   `json:"go_version"`
	Cgo       bool                     `json:"cgo"`
	Libc      string                   `json:"libc"`
	DataDir   string                   `json:"data_dir"`
	WAL       WALState                 `json:"wal"`
	Data      TableState               `json:"data"`
	Meta      MetaState                `json:"meta"`
	Index     IndexState               `json:"index"`
	Listeners map[string]ListenerState `json:"listeners"`
	Self      SelfState                `json:"self"`
	Dgram     struct {
		Fd   int    `json:"fd"`
		Addr string `json:"addr"`
		Sent int64  `json:"sent"`
		Recv int64  `json:"recv"`
	} `json:"dgram"`
	Timerfd struct {
		Fd          int   `json:"fd"`
		IntervalMs  int   `json:"interval_ms"`
		Expirations int64 `json:"expirations"`
	} `json:"timerfd"`
	Inotify struct {
		Fd     int    `json:"fd"`
		Wd     int32  `json:"wd"`
		Path   string `json:"path"`
		Events int64  `json:"events"`
	} `json:"inotify"`
	Config struct {
		Path    string `json:"path"`
		Reloads int64  `json:"reloads"`
		Config
	} `json:"config"`
	User UserState `json:"user"`
	DNS  DNSState  `json:"dns"`
}

// State reports every object's descriptor (and address, where it has one).
func (s *Server) State() State {
	st := State{Pid: os.Getpid(), GoVersion: runtime.Version(), Cgo: cgoEnabled, Libc: libcVersion(), DataDir: s.dataDir}
	st.WAL = s.wal.state()
	st.Data = s.table.state()
	st.Meta = s.meta.state()
	st.Index = s.index.state()
	s.lmu.Lock()
	st.Listeners = map[string]ListenerState{
		"main":  {Fd: s.main.fd, Addr: s.main.l.Addr().String(), Proto: sockProto(s.main.l)},
		"admin": {Fd: s.admin.fd, Addr: s.admin.l.Addr().String(), Proto: sockProto(s.admin.l)},
	}
	st.Self = SelfState{ClientFd: -1, ServerFd: int(s.selfServerFd.Load()), ServerAddr: s.main.l.Addr().String(),
		Pings: s.selfPings.Load(), Err: s.selfErr.Load().(string)}
	if s.selfClient != nil {
		st.Self.ClientFd = connFd(s.selfClient)
		st.Self.ClientAddr = s.selfClient.LocalAddr().String()
	}
	s.lmu.Unlock()
	st.Dgram.Fd = connFd(s.dgram)
	st.Dgram.Addr = s.dgramAddr.String()
	st.Dgram.Sent, st.Dgram.Recv = s.dgramSent.Load(), s.dgramRecv.Load()
	s.reloadMu.Lock()
	st.Config.Config = s.cfg
	s.reloadMu.Unlock()
	st.Timerfd.Fd, st.Timerfd.IntervalMs, st.Timerfd.Expirations = s.timerFd, st.Config.TickMs, s.timerTicks.Load()
	s.inoMu.Lock()
	st.Inotify.Fd, st.Inotify.Wd, st.Inotify.Path = s.inoFd, s.inoWd, s.cfgPath
	s.inoMu.Unlock()
	st.Inotify.Events = s.inoEvts.Load()
	st.Config.Path, st.Config.Reloads = s.cfgPath, s.reloads.Load()
	st.User, st.DNS = s.userInfo, s.dnsInfo
	return st
}

// Stats is the STATS reply.
type Stats struct {
	Keys       int              `json:"keys"`
	Puts       int64            `json:"puts"`
	Dups       int64            `json:"dups"`
	Stale      int64            `json:"stale"`
	Gets       int64            `json:"gets"`
	Ops        int64            `json:"ops"`
	Conns      int              `json:"conns"`
	Reloads    map[string]int64 `json:"reloads"`
	Goroutines int              `json:"goroutines"`
	UptimeMs   int64            `json:"uptime_ms"`
	Pid        int              `json:"pid"`
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	st := Stats{Keys: s.table.Len(), Puts: s.puts.Load(), Dups: s.dups.Load(), Stale: s.stale.Load(),
		Gets: s.gets.Load(), Ops: s.ops.Load(), Reloads: map[string]int64{},
		Goroutines: runtime.NumGoroutine(), UptimeMs: time.Since(s.start).Milliseconds(), Pid: os.Getpid()}
	s.lmu.Lock()
	st.Conns = len(s.conns)
	s.lmu.Unlock()
	s.reloadBy.Range(func(k, v interface{}) bool {
		st.Reloads[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return st
}

// ---- shutdown ----

// Close stops serving and releases every descriptor, mapping and lock.
func (s *Server) Close() {
	s.once.Do(s.close)
}

func (s *Server) close() {
	close(s.closed)
	s.reloadMu.Lock() // no reload in flight from here on
	s.lmu.Lock()
	s.closing = true
	for _, ln := range []listener{s.main, s.admin} {
		if ln.l != nil {
			ln.l.Close()
		}
	}
	for c := range s.conns {
		c.Close()
	}
	if s.selfClient != nil {
		s.selfClient.Close()
	}
	s.lmu.Unlock()
	s.reloadMu.Unlock()
	if s.dgram != nil {
		s.dgram.Close()
	}
	if s.timerFile != nil {
		s.timerFile.Close()
	} else if s.timerFd >= 0 {
		syscall.Close(s.timerFd)
	}
	if s.inoFile != nil {
		s.inoFile.Close()
	} else if s.inoFd >= 0 {
		syscall.Close(s.inoFd)
	}
	s.wg.Wait()
	if s.committing {
		close(s.commitQuit)
		<-s.commitDone
	}
	if s.wal != nil {
		s.wal.Close()
	}
	if s.index != nil {
		s.index.Close()
	}
	if s.meta != nil {
		s.meta.Close()
	}
	if s.table != nil {
		s.table.Close()
	}
}
