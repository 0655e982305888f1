package wire

import (
	"bufio"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	r, err := ParseRequest("12 34 put k a b  c")
	if err != nil || r.Client != 12 || r.Seq != 34 || r.Op != "PUT" || r.Args != "k a b  c" {
		t.Errorf("%+v %v", r, err)
	}
	for _, bad := range []string{"", "1", "1 2", "x 2 GET k", "1 -2 GET k"} {
		if _, err := ParseRequest(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	p, err := ParseReply("34 OK a b")
	if err != nil || p.Seq != 34 || p.Status != "OK" || p.Payload != "a b" {
		t.Errorf("%+v %v", p, err)
	}
	if got := string(AppendReply(nil, 5, NotFound, "")); got != "5 NOTFOUND\n" {
		t.Errorf("%q", got)
	}
	if FormatRequest(1, 2, "GET", "k") != "1 2 GET k" || FormatRequest(0, 3, "STATS", "") != "0 3 STATS" {
		t.Error("FormatRequest")
	}
}

func TestReadLine(t *testing.T) {
	long := strings.Repeat("x", 100000)
	r := bufio.NewReaderSize(strings.NewReader("a\r\n"+long+"\nlast"), 16)
	for _, want := range []string{"a", long} {
		if got, err := ReadLine(r); err != nil || got != want {
			t.Errorf("got %d bytes, %v", len(got), err)
		}
	}
	if _, err := ReadLine(r); err == nil {
		t.Error("unterminated line read")
	}
	if !ValidName("k1") || ValidName("a b") || ValidName("") || ValidValue("a\nb") || !ValidValue("a b") {
		t.Error("validation")
	}
}
