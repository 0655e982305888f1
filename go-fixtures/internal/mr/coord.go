package mr

import (
	"errors"
	"fmt"
	"log"
	"net"
	"net/rpc"
	"sync"
	"time"
)

// TaskType is what RequestTask hands out.
type TaskType int

// Task types.
const (
	MapTask    TaskType = 1
	ReduceTask TaskType = 2
	WaitTask   TaskType = 3 // nothing to do right now: ask again soon
	DoneTask   TaskType = 4 // the job is finished: exit
)

func (t TaskType) String() string {
	switch t {
	case MapTask:
		return "map"
	case ReduceTask:
		return "reduce"
	case WaitTask:
		return "wait"
	case DoneTask:
		return "done"
	}
	return fmt.Sprintf("task(%d)", int(t))
}

// RPC argument and reply types (gob-encoded by net/rpc).
type (
	RequestArgs struct{ Worker string }
	TaskReply   struct {
		Type    TaskType
		ID      int    // map: input index; reduce: partition
		File    string // map: input file path
		NMap    int
		NReduce int
		Epoch   int // assignment number of this task
	}
	ReportArgs struct {
		Worker string
		Type   TaskType
		ID     int
		Epoch  int
	}
	ReportReply    struct{ Accepted bool }
	HeartbeatArgs  = ReportArgs
	HeartbeatReply struct{ StillYours bool }
	StatusArgs     struct{}
	StatusReply    struct {
		Phase       string // "map", "reduce", "done"
		NMap        int
		NReduce     int
		MapDone     int
		ReduceDone  int
		Reassigned  int
		Assignments int
		Done        bool
		UptimeMs    int64
	}
)

type taskState int

const (
	idle taskState = iota
	running
	completed
)

type task struct {
	state     taskState
	worker    string
	epoch     int
	lastHeard time.Time
}

// CoordOptions configure a Coordinator.
type CoordOptions struct {
	Inputs      []string
	NReduce     int
	TaskTimeout time.Duration // reassign a running task after this much silence; 0: 10 s
	Logf        func(format string, args ...interface{})
	OnDone      func() // called once when the last reduce task completes
}

// Coordinator is the net/rpc service "Coordinator".
type Coordinator struct {
	opt CoordOptions

	mu          sync.Mutex
	maps        []task
	reduces     []task
	mapDone     int
	reduceDone  int
	reassigned  int
	assignments int
	start       time.Time
	doneOnce    sync.Once

	lmu    sync.Mutex
	ls     []net.Listener
	conns  map[net.Conn]struct{}
	closed chan struct{}
	cOnce  sync.Once
}

// NewCoordinator builds a coordinator and starts its timeout scanner.
func NewCoordinator(opt CoordOptions) (*Coordinator, error) {
	if len(opt.Inputs) == 0 {
		return nil, fmt.Errorf("no input files")
	}
	if opt.NReduce < 1 {
		return nil, fmt.Errorf("nreduce must be >= 1")
	}
	if opt.TaskTimeout <= 0 {
		opt.TaskTimeout = 10 * time.Second
	}
	if opt.Logf == nil {
		opt.Logf = log.Printf
	}
	c := &Coordinator{
		opt:     opt,
		maps:    make([]task, len(opt.Inputs)),
		reduces: make([]task, opt.NReduce),
		start:   time.Now(),
		conns:   make(map[net.Conn]struct{}),
		closed:  make(chan struct{}),
	}
	go c.scanner()
	return c, nil
}

func (c *Coordinator) scanner() {
	period := c.opt.TaskTimeout / 4
	if period < 20*time.Millisecond {
		period = 20 * time.Millisecond
	}
	if period > time.Second {
		period = time.Second
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-c.closed:
			return
		case now := <-t.C:
			c.mu.Lock()
			c.expire(now, MapTask, c.maps)
			c.expire(now, ReduceTask, c.reduces)
			c.mu.Unlock()
		}
	}
}

// expire puts silent running tasks back to idle; c.mu is held.
func (c *Coordinator) expire(now time.Time, tt TaskType, ts []task) {
	for i := range ts {
		t := &ts[i]
		if t.state == running && now.Sub(t.lastHeard) > c.opt.TaskTimeout {
			c.opt.Logf("%s task %d: worker %s silent for %v, reassigning", tt, i, t.worker, now.Sub(t.lastHeard).Round(time.Millisecond))
			t.state = idle
			t.worker = ""
			c.reassigned++
		}
	}
}

// RequestTask hands out an idle task of the current phase, or Wait, or Done.
func (c *Coordinator) RequestTask(args *RequestArgs, reply *TaskReply) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	reply.NMap, reply.NReduce = len(c.maps), len(c.reduces)
	pick := func(tt TaskType, ts []task) bool {
		for i := range ts {
			if ts[i].state == idle {
				t := &ts[i]
				t.state, t.worker, t.lastHeard = running, args.Worker, time.Now()
				t.epoch++
				c.assignments++
				reply.Type, reply.ID, reply.Epoch = tt, i, t.epoch
				if tt == MapTask {
					reply.File = c.opt.Inputs[i]
				}
				return true
			}
		}
		return false
	}
	switch {
	case c.mapDone < len(c.maps):
		if !pick(MapTask, c.maps) {
			reply.Type = WaitTask
		}
	case c.reduceDone < len(c.reduces):
		if !pick(ReduceTask, c.reduces) {
			reply.Type = WaitTask
		}
	default:
		reply.Type = DoneTask
	}
	return nil
}

func (c *Coordinator) tasks(tt TaskType) []task {
	switch tt {
	case MapTask:
		return c.maps
	case ReduceTask:
		return c.reduces
	}
	return nil
}

// ReportTask marks a task completed. A report from any worker is accepted
// (also from one whose task was reassigned: its output files are complete,
// since workers rename them into place before reporting).
func (c *Coordinator) ReportTask(args *ReportArgs, reply *ReportReply) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.tasks(args.Type)
	if args.ID < 0 || args.ID >= len(ts) {
		return fmt.Errorf("no %s task %d", args.Type, args.ID)
	}
	t := &ts[args.ID]
	if t.state == completed {
		return nil
	}
	t.state, t.worker = completed, args.Worker
	reply.Accepted = true
	if args.Type == MapTask {
		c.mapDone++
		if c.mapDone == len(c.maps) {
			c.opt.Logf("map phase done (%d tasks) after %v", len(c.maps), time.Since(c.start).Round(time.Millisecond))
		}
	} else {
		c.reduceDone++
		if c.reduceDone == len(c.reduces) {
			c.opt.Logf("reduce phase done (%d tasks) after %v: job done", len(c.reduces), time.Since(c.start).Round(time.Millisecond))
			if c.opt.OnDone != nil {
				c.doneOnce.Do(func() { go c.opt.OnDone() })
			}
		}
	}
	return nil
}

// Heartbeat records that a worker is still working on its task.
func (c *Coordinator) Heartbeat(args *HeartbeatArgs, reply *HeartbeatReply) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := c.tasks(args.Type)
	if args.ID < 0 || args.ID >= len(ts) {
		return nil
	}
	t := &ts[args.ID]
	if t.state == running && t.epoch == args.Epoch && t.worker == args.Worker {
		t.lastHeard = time.Now()
		reply.StillYours = true
	}
	return nil
}

// Status reports progress.
func (c *Coordinator) Status(args *StatusArgs, reply *StatusReply) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	*reply = StatusReply{
		NMap: len(c.maps), NReduce: len(c.reduces),
		MapDone: c.mapDone, ReduceDone: c.reduceDone,
		Reassigned: c.reassigned, Assignments: c.assignments,
		UptimeMs: time.Since(c.start).Milliseconds(),
	}
	switch {
	case c.mapDone < len(c.maps):
		reply.Phase = "map"
	case c.reduceDone < len(c.reduces):
		reply.Phase = "reduce"
	default:
		reply.Phase, reply.Done = "done", true
	}
	return nil
}

// Done reports whether every task has completed.
func (c *Coordinator) Done() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reduceDone == len(c.reduces)
}

// Serve registers the coordinator with a fresh rpc.Server and serves
// connections from l (one goroutine each) until Close.
func (c *Coordinator) Serve(l net.Listener) error {
	srv := rpc.NewServer()
	if err := srv.RegisterName("Coordinator", c); err != nil {
		return err
	}
	c.lmu.Lock()
	c.ls = append(c.ls, l)
	c.lmu.Unlock()
	for {
		conn, err := l.Accept()
		if err != nil {
			select {
			case <-c.closed:
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
		c.lmu.Lock()
		c.conns[conn] = struct{}{}
		c.lmu.Unlock()
		go func(conn net.Conn) {
			srv.ServeConn(conn)
			c.lmu.Lock()
			delete(c.conns, conn)
			c.lmu.Unlock()
		}(conn)
	}
}

// Close stops listening, closes connections and stops the scanner.
func (c *Coordinator) Close() {
	c.cOnce.Do(func() { close(c.closed) })
	c.Drop()
}

// Drop closes listeners and connections but keeps the state and the scanner:
// a later Serve continues the job (tests: a coordinator that disappears and
// comes back at the same address).
func (c *Coordinator) Drop() {
	c.lmu.Lock()
	defer c.lmu.Unlock()
	for _, l := range c.ls {
		l.Close()
	}
	c.ls = nil
	for conn := range c.conns {
		conn.Close()
	}
}
