// Package rclient is the retrying client side of the wire protocol: one
// connection, one request at a time; on connection loss or a reply timeout it
// reconnects with backoff (10 ms doubling to 1 s) and resends the same request
// (same client id and seq, so the server's dedup answers a resend with the
// original answer), until a give-up deadline.
package rclient

import (
	"bufio"
	"errors"
	"fmt"
	"log"
	"net"
	"sync/atomic"
	"time"

	"checksync/fixtures/internal/wire"
)

// Outcome says what is known about a request after Do.
type Outcome int

const (
	// Answered: the server replied (the Reply is valid).
	Answered Outcome = iota
	// NotSent: no byte of the request ever reached a connection.
	NotSent
	// Unknown: sent at least once, no reply before the deadline.
	Unknown
)

// Conn is a reconnecting connection to one address. Not safe for concurrent use.
type Conn struct {
	Addr        string
	DialTimeout time.Duration // 0: 1 s
	MaxBackoff  time.Duration // 0: 1 s
	Reconnects  *atomic.Int64 // counts connections made after the first (may be shared)
	Logf        func(format string, args ...interface{})
	Quiet       bool

	c         net.Conn
	r         *bufio.Reader
	w         *bufio.Writer
	connected bool // a connection was made before (next one is a reconnect)
	lastLog   time.Time
}

// New returns a Conn for addr; nothing is dialed until the first Do.
func New(addr string, reconnects *atomic.Int64) *Conn {
	if reconnects == nil {
		reconnects = new(atomic.Int64)
	}
	return &Conn{Addr: addr, Reconnects: reconnects, Logf: log.Printf}
}

// Close closes the current connection, if any.
func (c *Conn) Close() {
	if c.c != nil {
		c.c.Close()
		c.c = nil
	}
}

func (c *Conn) logf(format string, args ...interface{}) {
	if c.Quiet || c.Logf == nil {
		return
	}
	// At most one line a second per connection: a dead server must not flood stderr.
	if time.Since(c.lastLog) < time.Second {
		return
	}
	c.lastLog = time.Now()
	c.Logf(format, args...)
}

func (c *Conn) dial(deadline time.Time) error {
	to := c.DialTimeout
	if to <= 0 {
		to = time.Second
	}
	if left := time.Until(deadline); left < to {
		to = left
	}
	if to <= 0 {
		return errors.New("deadline")
	}
	nc, err := net.DialTimeout("tcp", c.Addr, to)
	if err != nil {
		return err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if c.connected {
		c.Reconnects.Add(1)
	}
	c.connected = true
	c.c = nc
	c.r = bufio.NewReaderSize(nc, 64<<10)
	c.w = bufio.NewWriterSize(nc, 16<<10)
	return nil
}

// Do sends "<client> <seq> <op> <args>" and waits for the reply with that seq.
// Each attempt waits at most attempt for the reply; the whole call gives up at
// deadline (re-read through deadlineFn if non-nil, so it can be shortened while
// waiting, e.g. on SIGINT).
func (c *Conn) Do(client, seq uint64, op, args string, attempt time.Duration, deadlineFn func() time.Time) (wire.Reply, Outcome) {
	line := wire.FormatRequest(client, seq, op, args) + "\n"
	backoff := 10 * time.Millisecond
	maxBackoff := c.MaxBackoff
	if maxBackoff <= 0 {
		maxBackoff = time.Second
	}
	sent := false
	fail := func() Outcome {
		if sent {
			return Unknown
		}
		return NotSent
	}
	sleep := func(deadline time.Time) {
		d := backoff
		if left := time.Until(deadline); left < d {
			d = left
		}
		if d > 0 {
			time.Sleep(d)
		}
		backoff *= 2
		if backoff > maxBackoff {
			backoff = maxBackoff
		}
	}
	for {
		deadline := deadlineFn()
		if !time.Now().Before(deadline) {
			return wire.Reply{}, fail()
		}
		if c.c == nil {
			if err := c.dial(deadline); err != nil {
				c.logf("connect %s: %v (retrying)", c.Addr, err)
				sleep(deadline)
				continue
			}
		}
		sent = true // from here some bytes may reach the server
		c.c.SetWriteDeadline(time.Now().Add(attempt))
		_, err := c.w.WriteString(line)
		if err == nil {
			err = c.w.Flush()
		}
		if err != nil {
			c.logf("send to %s: %v (reconnecting)", c.Addr, err)
			c.Close()
			sleep(deadline)
			continue
		}
		rd := time.Now().Add(attempt)
		if rd.After(deadline) {
			rd = deadline
		}
		c.c.SetReadDeadline(rd)
		rep, err := c.readReply(seq)
		if err != nil {
			c.logf("reply from %s: %v (reconnecting, resending seq %d)", c.Addr, err, seq)
			c.Close()
			sleep(deadline)
			continue
		}
		return rep, Answered
	}
}

func (c *Conn) readReply(seq uint64) (wire.Reply, error) {
	for {
		line, err := wire.ReadLine(c.r)
		if err != nil {
			return wire.Reply{}, err
		}
		rep, err := wire.ParseReply(line)
		if err != nil {
			return wire.Reply{}, err
		}
		if rep.Seq == seq {
			return rep, nil
		}
		if rep.Seq > seq {
			return wire.Reply{}, fmt.Errorf("reply for seq %d while waiting for %d", rep.Seq, seq)
		}
		// An older seq: a late duplicate answer; skip it.
	}
}
