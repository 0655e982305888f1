// Package hist writes operation histories as JSON Lines (one object per
// operation) for the Rust checkers. The format is a contract: see
// go-fixtures/README.md ("History files").
package hist

import (
	"bufio"
	"encoding/json"
	"os"
	"sync"
	"time"
)

// Status values.
const (
	OK      = "ok"      // the server answered
	Fail    = "fail"    // definitely not applied
	Unknown = "unknown" // sent, no answer: may or may not have taken effect
)

// Clock is one monotonic clock for a whole client process. Mono is the time
// since the clock's start in ns; Wall is the unix time in ns derived from the
// same monotonic reading (wall time at start + Mono), so Wall never goes
// backwards within a process and complete_wall_ns >= invoke_wall_ns always.
type Clock struct {
	start     time.Time
	startWall int64
}

// NewClock starts a clock now.
func NewClock() *Clock {
	now := time.Now()
	return &Clock{start: now, startWall: now.UnixNano()}
}

// Mono is ns since the clock's start.
func (c *Clock) Mono() int64 { return int64(time.Since(c.start)) }

// Wall converts a Mono reading to unix ns.
func (c *Clock) Wall(mono int64) int64 { return c.startWall + mono }

// Times is the four timestamps every record carries.
type Times struct {
	InvokeNs       int64 `json:"invoke_ns"`
	CompleteNs     int64 `json:"complete_ns"`
	InvokeWallNs   int64 `json:"invoke_wall_ns"`
	CompleteWallNs int64 `json:"complete_wall_ns"`
}

// Span fills Times from two Mono readings.
func (c *Clock) Span(invoke, complete int64) Times {
	return Times{InvokeNs: invoke, CompleteNs: complete, InvokeWallNs: c.Wall(invoke), CompleteWallNs: c.Wall(complete)}
}

// KV is one key-value operation. Field order is the documented one.
type KV struct {
	Client uint64  `json:"client"`
	Op     string  `json:"op"` // get|put|append|delete
	Key    string  `json:"key"`
	Value  *string `json:"value,omitempty"`  // put, append: the argument
	Output *string `json:"output,omitempty"` // get: the value read ("" when not found)
	Found  *bool   `json:"found,omitempty"`  // get: whether the key existed
	Times
	Status string `json:"status"`
}

// Lock is one lock operation.
type Lock struct {
	Client   uint64  `json:"client"`
	Op       string  `json:"op"` // acquire|release|holder
	Lock     string  `json:"lock"`
	Granted  *bool   `json:"granted,omitempty"`  // acquire: granted (false: wait timed out)
	Released *bool   `json:"released,omitempty"` // release: the client held it and gave it back
	Output   *string `json:"output,omitempty"`   // holder: holder's client id, "" if free
	LeaseMs  int64   `json:"lease_ms,omitempty"` // acquire with a lease
	Times
	Status string `json:"status"`
}

// Writer appends records to a file; safe for concurrent use. A nil *Writer
// discards everything.
type Writer struct {
	mu  sync.Mutex
	f   *os.File
	w   *bufio.Writer
	enc *json.Encoder
	err error
}

// Create opens (truncates) path; "" gives a nil Writer.
func Create(path string) (*Writer, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(f, 256<<10)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return &Writer{f: f, w: w, enc: enc}, nil
}

// Write appends one record (a KV or Lock) as one line.
func (h *Writer) Write(rec interface{}) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err == nil {
		h.err = h.enc.Encode(rec) // Encode adds the '\n'
	}
}

// Close flushes and closes the file, returning the first error.
func (h *Writer) Close() error {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.w.Flush(); err != nil && h.err == nil {
		h.err = err
	}
	if err := h.f.Close(); err != nil && h.err == nil {
		h.err = err
	}
	return h.err
}

// Str and Bool return pointers for the optional fields.
func Str(s string) *string { return &s }

// Bool returns a pointer to b.
func Bool(b bool) *bool { return &b }
