package mr

import (
	"net"
	"net/rpc"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"
)

func quiet(string, ...interface{}) {}

func TestWords(t *testing.T) {
	var got []string
	Words("Hello, world! it's 42 foo-bar\nBaz", func(w string) { got = append(got, w) })
	want := []string{"Hello", "world", "it", "s", "foo", "bar", "Baz"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Words = %q", got)
	}
	if Partition("hello", 10) != Partition("hello", 10) || Partition("x", 1) != 0 {
		t.Error("Partition")
	}
}

func TestGenerateIsDeterministic(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		if _, err := GenerateInputs(d, 64, 2, 7); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"pg-0.txt", "pg-1.txt"} {
		x, _ := os.ReadFile(filepath.Join(a, n))
		y, _ := os.ReadFile(filepath.Join(b, n))
		if len(x) < 32*1024 || string(x) != string(y) {
			t.Errorf("%s: %d vs %d bytes", n, len(x), len(y))
		}
	}
}

type job struct {
	c      *Coordinator
	addr   string
	inputs []string
	out    string
	done   chan struct{}
}

func startJob(t *testing.T, kib, files, nreduce int, timeout time.Duration) *job {
	t.Helper()
	in := t.TempDir()
	if _, err := GenerateInputs(in, kib, files, 1); err != nil {
		t.Fatal(err)
	}
	inputs, err := InputFiles(in)
	if err != nil {
		t.Fatal(err)
	}
	j := &job{inputs: inputs, out: t.TempDir(), done: make(chan struct{})}
	var once sync.Once
	j.c, err = NewCoordinator(CoordOptions{Inputs: inputs, NReduce: nreduce, TaskTimeout: timeout, Logf: quiet,
		OnDone: func() { once.Do(func() { close(j.done) }) }})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	j.addr = l.Addr().String()
	go j.c.Serve(l)
	t.Cleanup(j.c.Close)
	return j
}

// workers runs n workers and returns a channel closed when all returned.
func (j *job) workers(t *testing.T, n int, mapDelay time.Duration, stop chan struct{}) chan struct{} {
	all := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			w := NewWorker(WorkerOptions{Coord: j.addr, ID: "w" + string(rune('a'+i)), OutDir: j.out,
				MapDelay: mapDelay, Heartbeat: 50 * time.Millisecond, RPCTimeout: time.Second,
				MaxBackoff: 100 * time.Millisecond, Logf: quiet, Stop: stop})
			if err := w.Run(); err != nil && err != ErrStopped {
				t.Errorf("worker %d: %v", i, err)
			}
		}(i)
	}
	go func() { wg.Wait(); close(all) }()
	return all
}

func (j *job) wait(t *testing.T, workersDone chan struct{}) {
	t.Helper()
	select {
	case <-workersDone:
	case <-time.After(20 * time.Second):
		t.Fatal("workers did not finish")
	}
	if !j.c.Done() {
		t.Fatal("workers exited but the job is not done")
	}
	res, err := Check(j.inputs, j.out)
	if err != nil || !res.OK {
		t.Fatalf("check: %+v %v", res, err)
	}
	if res.OutputFiles != len(j.c.reduces) || res.Total < 1000 {
		t.Errorf("check: %+v", res)
	}
}

func TestWordCount(t *testing.T) {
	j := startJob(t, 512, 5, 3, 10*time.Second)
	j.wait(t, j.workers(t, 3, 0, nil))
	var st StatusReply
	j.c.Status(&StatusArgs{}, &st)
	if !st.Done || st.MapDone != 5 || st.ReduceDone != 3 || st.Reassigned != 0 {
		t.Errorf("status %+v", st)
	}
	// Workers arriving after the end are told done at once.
	j.wait(t, j.workers(t, 1, 0, nil))
	// No temporary files left behind.
	left, _ := filepath.Glob(filepath.Join(j.out, ".*tmp*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// A worker takes a map task and goes silent: after the task timeout the
// coordinator hands the task to another worker and the job completes.
func TestTaskReassignment(t *testing.T) {
	j := startJob(t, 256, 4, 2, 300*time.Millisecond)
	silent, err := rpc.Dial("tcp", j.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var task TaskReply
	if err := silent.Call("Coordinator.RequestTask", &RequestArgs{Worker: "silent"}, &task); err != nil || task.Type != MapTask {
		t.Fatalf("RequestTask: %+v %v", task, err)
	}
	j.wait(t, j.workers(t, 2, 20*time.Millisecond, nil))
	var st StatusReply
	j.c.Status(&StatusArgs{}, &st)
	if st.Reassigned < 1 {
		t.Errorf("no reassignment: %+v", st)
	}
	// The silent worker's late heartbeat is refused and its late report ignored.
	var hb HeartbeatReply
	if err := silent.Call("Coordinator.Heartbeat", &HeartbeatArgs{Worker: "silent", Type: MapTask, ID: task.ID, Epoch: task.Epoch}, &hb); err != nil || hb.StillYours {
		t.Errorf("heartbeat after reassignment: %+v %v", hb, err)
	}
	var rep ReportReply
	if err := silent.Call("Coordinator.ReportTask", &ReportArgs{Worker: "silent", Type: MapTask, ID: task.ID, Epoch: task.Epoch}, &rep); err != nil || rep.Accepted {
		t.Errorf("late report: %+v %v", rep, err)
	}
}

// Heartbeats keep a slow task (longer than the timeout) from being reassigned.
func TestHeartbeatsPreventReassignment(t *testing.T) {
	j := startJob(t, 64, 2, 1, 200*time.Millisecond)
	j.wait(t, j.workers(t, 1, 500*time.Millisecond, nil))
	var st StatusReply
	j.c.Status(&StatusArgs{}, &st)
	if st.Reassigned != 0 {
		t.Errorf("slow but live worker lost its task: %+v", st)
	}
}

// The coordinator disappears mid-run (listener and connections closed) and
// comes back at the same address with its state (as a restored copy would):
// the workers keep retrying and finish the job.
func TestCoordinatorComesBack(t *testing.T) {
	j := startJob(t, 256, 6, 2, 10*time.Second)
	done := j.workers(t, 2, 100*time.Millisecond, nil)
	time.Sleep(150 * time.Millisecond)
	j.c.Drop()
	time.Sleep(400 * time.Millisecond)
	var st StatusReply
	j.c.Status(&StatusArgs{}, &st)
	if st.Done {
		t.Fatal("job finished before the coordinator went away; make it slower")
	}
	l, err := net.Listen("tcp", j.addr)
	if err != nil {
		t.Fatal(err)
	}
	go j.c.Serve(l)
	j.wait(t, done)
}
