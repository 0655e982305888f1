// Package wire is the line protocol shared by kvstore and lockserver.
//
// A request is one line: "<client-id> <seq> <OP>[ <args>]\n"; a reply is one
// line: "<seq> <STATUS>[ <payload>]\n". Client ids and sequence numbers are
// unsigned decimal integers. Client id 0 means "anonymous": the request is not
// deduplicated. See go-fixtures/README.md for the operations.
package wire

import (
	"bufio"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MaxLine is the longest line (without its newline) either side accepts.
const MaxLine = 16 << 20

// ErrLineTooLong is returned by ReadLine for a line longer than MaxLine.
var ErrLineTooLong = errors.New("wire: line too long")

// Reply statuses.
const (
	OK       = "OK"       // done; payload depends on the op
	NotFound = "NOTFOUND" // kv: key absent (GET, DEL)
	Timeout  = "TIMEOUT"  // lock: not granted within the wait
	NotHeld  = "NOTHELD"  // lock: release by a client that does not hold it
	Err      = "ERR"      // refused before doing anything (bad request)
	Stale    = "STALE"    // seq older than the client's latest: not executed
)

// Request is one parsed request line.
type Request struct {
	Client uint64
	Seq    uint64
	Op     string // upper case
	Args   string // everything after "<OP> " (may contain spaces)
}

// Reply is one parsed reply line.
type Reply struct {
	Seq     uint64
	Status  string
	Payload string
}

// ReadLine reads one '\n'-terminated line (without the '\n' and a trailing '\r').
func ReadLine(r *bufio.Reader) (string, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			buf = append(buf, chunk...)
			if len(buf) > MaxLine {
				return "", ErrLineTooLong
			}
			continue
		}
		if err != nil {
			return "", err
		}
		if buf != nil {
			buf = append(buf, chunk...)
			chunk = buf
		}
		chunk = chunk[:len(chunk)-1]
		if n := len(chunk); n > 0 && chunk[n-1] == '\r' {
			chunk = chunk[:n-1]
		}
		if len(chunk) > MaxLine {
			return "", ErrLineTooLong
		}
		return string(chunk), nil
	}
}

// ParseRequest parses "<client> <seq> <OP>[ <args>]".
func ParseRequest(line string) (Request, error) {
	var req Request
	f := strings.SplitN(line, " ", 4)
	if len(f) < 3 {
		return req, fmt.Errorf("want \"<client> <seq> <OP> [args]\", got %q", trunc(line))
	}
	var err error
	if req.Client, err = strconv.ParseUint(f[0], 10, 64); err != nil {
		return req, fmt.Errorf("bad client id %q", trunc(f[0]))
	}
	if req.Seq, err = strconv.ParseUint(f[1], 10, 64); err != nil {
		return req, fmt.Errorf("bad seq %q", trunc(f[1]))
	}
	req.Op = strings.ToUpper(f[2])
	if len(f) == 4 {
		req.Args = f[3]
	}
	return req, nil
}

// FormatRequest renders a request line without the newline.
func FormatRequest(client, seq uint64, op, args string) string {
	if args == "" {
		return strconv.FormatUint(client, 10) + " " + strconv.FormatUint(seq, 10) + " " + op
	}
	return strconv.FormatUint(client, 10) + " " + strconv.FormatUint(seq, 10) + " " + op + " " + args
}

// ParseReply parses "<seq> <STATUS>[ <payload>]".
func ParseReply(line string) (Reply, error) {
	var rep Reply
	f := strings.SplitN(line, " ", 3)
	if len(f) < 2 {
		return rep, fmt.Errorf("want \"<seq> <STATUS> [payload]\", got %q", trunc(line))
	}
	var err error
	if rep.Seq, err = strconv.ParseUint(f[0], 10, 64); err != nil {
		return rep, fmt.Errorf("bad reply seq %q", trunc(f[0]))
	}
	rep.Status = f[1]
	if len(f) == 3 {
		rep.Payload = f[2]
	}
	return rep, nil
}

// AppendReply appends a reply line including its newline.
func AppendReply(b []byte, seq uint64, status, payload string) []byte {
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, ' ')
	b = append(b, status...)
	if payload != "" {
		b = append(b, ' ')
		b = append(b, payload...)
	}
	return append(b, '\n')
}

// Word splits off the first space-separated word of s.
func Word(s string) (word, rest string) {
	if i := strings.IndexByte(s, ' '); i >= 0 {
		return s[:i], s[i+1:]
	}
	return s, ""
}

// ValidName reports whether s can be a key or lock name: non-empty, at most
// 1024 bytes, no spaces or control characters.
func ValidName(s string) bool {
	if s == "" || len(s) > 1024 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// ValidValue reports whether s can be sent as a value: no '\n', no trailing '\r'.
func ValidValue(s string) bool {
	return strings.IndexByte(s, '\n') < 0 && !strings.HasSuffix(s, "\r") && len(s) < MaxLine-1100
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
