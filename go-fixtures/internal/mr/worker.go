package mr

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/rpc"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// WorkerOptions configure a Worker.
type WorkerOptions struct {
	Coord       string        // coordinator address
	ID          string        // worker name (default "w<pid>")
	OutDir      string        // where mr-X-Y and mr-out-Y go
	MapDelay    time.Duration // extra time per map task (so a run can be interrupted mid-way)
	ReduceDelay time.Duration // extra time per reduce task
	Heartbeat   time.Duration // heartbeat period while working; 0: 1 s
	RPCTimeout  time.Duration // one RPC attempt; 0: 5 s
	MaxBackoff  time.Duration // retry backoff cap; 0: 1 s
	Logf        func(format string, args ...interface{})
	Stop        <-chan struct{} // closed: give up (tests)
}

// Worker runs tasks until the coordinator says done.
type Worker struct {
	opt WorkerOptions

	mu     sync.Mutex
	client *rpc.Client

	Tasks int // tasks completed by this worker
}

// ErrStopped is returned by Run when opt.Stop is closed.
var ErrStopped = errors.New("worker stopped")

// NewWorker builds a worker.
func NewWorker(opt WorkerOptions) *Worker {
	if opt.ID == "" {
		opt.ID = fmt.Sprintf("w%d", os.Getpid())
	}
	if opt.Heartbeat <= 0 {
		opt.Heartbeat = time.Second
	}
	if opt.RPCTimeout <= 0 {
		opt.RPCTimeout = 5 * time.Second
	}
	if opt.MaxBackoff <= 0 {
		opt.MaxBackoff = time.Second
	}
	if opt.Logf == nil {
		opt.Logf = log.Printf
	}
	return &Worker{opt: opt}
}

func (w *Worker) stopped() bool {
	select {
	case <-w.opt.Stop:
		return true
	default:
		return false
	}
}

// call performs one RPC, retrying forever (until Stop) with backoff 20 ms
// doubling to MaxBackoff, redialing after any transport error or timeout.
func (w *Worker) call(method string, args, reply interface{}) error {
	backoff := 20 * time.Millisecond
	lastLog := time.Time{}
	failures := 0
	for {
		if w.stopped() {
			return ErrStopped
		}
		c, err := w.conn()
		if err == nil {
			call := c.Go(method, args, reply, make(chan *rpc.Call, 1))
			t := time.NewTimer(w.opt.RPCTimeout)
			select {
			case <-call.Done:
				err = call.Error
			case <-t.C:
				err = fmt.Errorf("no reply within %v", w.opt.RPCTimeout)
			case <-w.opt.Stop:
				err = ErrStopped
			}
			t.Stop()
			if err == nil {
				if failures > 0 {
					w.opt.Logf("%s: coordinator reachable again after %d failed attempts", method, failures)
				}
				return nil
			}
			if err == ErrStopped {
				return err
			}
			if se, ok := err.(rpc.ServerError); ok {
				return se // the coordinator answered with an error: do not retry
			}
			w.drop(c)
		}
		failures++
		if time.Since(lastLog) > 5*time.Second {
			w.opt.Logf("%s: %v (retrying every <= %v)", method, err, w.opt.MaxBackoff)
			lastLog = time.Now()
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-w.opt.Stop:
			t.Stop()
			return ErrStopped
		}
		backoff *= 2
		if backoff > w.opt.MaxBackoff {
			backoff = w.opt.MaxBackoff
		}
	}
}

func (w *Worker) conn() (*rpc.Client, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.client != nil {
		return w.client, nil
	}
	nc, err := net.DialTimeout("tcp", w.opt.Coord, time.Second)
	if err != nil {
		return nil, err
	}
	w.client = rpc.NewClient(nc)
	return w.client, nil
}

func (w *Worker) drop(c *rpc.Client) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.client == c {
		w.client.Close()
		w.client = nil
	}
}

// Run asks for tasks and runs them until the coordinator answers Done (nil)
// or Stop is closed (ErrStopped). A task that fails locally (e.g. a missing
// intermediate file) is not reported; the coordinator reassigns it later.
func (w *Worker) Run() error {
	defer func() {
		w.mu.Lock()
		if w.client != nil {
			w.client.Close()
			w.client = nil
		}
		w.mu.Unlock()
	}()
	wait := 50 * time.Millisecond
	for {
		var task TaskReply
		if err := w.call("Coordinator.RequestTask", &RequestArgs{Worker: w.opt.ID}, &task); err != nil {
			if err == ErrStopped {
				return err
			}
			w.opt.Logf("RequestTask: %v", err)
			time.Sleep(time.Second)
			continue
		}
		switch task.Type {
		case DoneTask:
			w.opt.Logf("coordinator says done; %d tasks run here", w.Tasks)
			return nil
		case WaitTask:
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-w.opt.Stop:
				t.Stop()
				return ErrStopped
			}
			if wait < 500*time.Millisecond {
				wait *= 2
			}
			continue
		case MapTask, ReduceTask:
			wait = 50 * time.Millisecond
			if err := w.runTask(&task); err != nil {
				if err == ErrStopped {
					return err
				}
				w.opt.Logf("%s task %d failed here: %v (the coordinator will reassign it)", task.Type, task.ID, err)
				time.Sleep(200 * time.Millisecond)
			}
		default:
			w.opt.Logf("unknown task type %d", int(task.Type))
			time.Sleep(time.Second)
		}
	}
}

func (w *Worker) runTask(task *TaskReply) error {
	hb := ReportArgs{Worker: w.opt.ID, Type: task.Type, ID: task.ID, Epoch: task.Epoch}
	stopHB := make(chan struct{})
	var hbWG sync.WaitGroup
	hbWG.Add(1)
	go func() { // heartbeats while working
		defer hbWG.Done()
		t := time.NewTicker(w.opt.Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-stopHB:
				return
			case <-w.opt.Stop:
				return
			case <-t.C:
				var r HeartbeatReply
				w.callOnce("Coordinator.Heartbeat", &hb, &r)
			}
		}
	}()
	start := time.Now()
	var err error
	if task.Type == MapTask {
		err = w.doMap(task)
	} else {
		err = w.doReduce(task)
	}
	close(stopHB)
	hbWG.Wait()
	if err != nil {
		return err
	}
	var rep ReportReply
	if err := w.call("Coordinator.ReportTask", &hb, &rep); err != nil {
		return err
	}
	w.Tasks++
	w.opt.Logf("%s task %d done in %v (accepted=%v)", task.Type, task.ID, time.Since(start).Round(time.Millisecond), rep.Accepted)
	return nil
}

// callOnce is one attempt without retry (heartbeats: the next tick retries).
func (w *Worker) callOnce(method string, args, reply interface{}) {
	c, err := w.conn()
	if err != nil {
		return
	}
	call := c.Go(method, args, reply, make(chan *rpc.Call, 1))
	t := time.NewTimer(w.opt.RPCTimeout)
	defer t.Stop()
	select {
	case <-call.Done:
		if call.Error != nil {
			if _, ok := call.Error.(rpc.ServerError); !ok {
				w.drop(c)
			}
		}
	case <-t.C:
		w.drop(c)
	}
}

func (w *Worker) sleep(d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-w.opt.Stop:
		return ErrStopped
	}
}

// doMap counts the words of one input file and writes one intermediate file
// per reduce partition (all of them, possibly empty): "<word> <count>" lines.
func (w *Worker) doMap(task *TaskReply) error {
	counts := make(map[string]int64)
	if err := CountWords(task.File, counts); err != nil {
		return err
	}
	parts := make([]map[string]int64, task.NReduce)
	for i := range parts {
		parts[i] = make(map[string]int64)
	}
	for k, v := range counts {
		parts[Partition(k, task.NReduce)][k] = v
	}
	if err := w.sleep(w.opt.MapDelay); err != nil {
		return err
	}
	for r, p := range parts {
		p := p
		if err := WriteAtomic(w.opt.OutDir, IntermediateName(task.ID, r), func(wr io.Writer) error {
			return WriteCounts(wr, p)
		}); err != nil {
			return err
		}
	}
	return nil
}

// doReduce sums partition task.ID over every map task's intermediate file.
func (w *Worker) doReduce(task *TaskReply) error {
	counts := make(map[string]int64)
	for m := 0; m < task.NMap; m++ {
		if err := ReadCounts(filepath.Join(w.opt.OutDir, IntermediateName(m, task.ID)), counts, false); err != nil {
			return err
		}
	}
	if err := w.sleep(w.opt.ReduceDelay); err != nil {
		return err
	}
	return WriteAtomic(w.opt.OutDir, OutputName(task.ID), func(wr io.Writer) error {
		return WriteCounts(wr, counts)
	})
}
