package svc

import (
	"net"
	"syscall"
)

const ipprotoMPTCP = 262 // IPPROTO_MPTCP

// ListenerProto returns "mptcp" or "tcp": the listening socket's SO_PROTOCOL,
// read with getsockopt. Go >= 1.24 with a go.mod `go` line >= 1.24 listens
// with Multipath TCP by default when the kernel has it (net.mptcp_enabled=1);
// Go 1.19 never does.
func ListenerProto(l net.Listener) string {
	tl, ok := l.(*net.TCPListener)
	if !ok {
		return "not-tcp"
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return "unknown"
	}
	proto := -1
	rc.Control(func(fd uintptr) {
		proto, err = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PROTOCOL)
	})
	switch {
	case err != nil:
		return "unknown"
	case proto == ipprotoMPTCP:
		return "mptcp"
	case proto == syscall.IPPROTO_TCP:
		return "tcp"
	default:
		return "proto-" + itoa(proto)
	}
}

func itoa(n int) string {
	if n < 0 {
		return "-" + itoa(-n)
	}
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}
