package durable

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

// Raw constants the syscall package lacks (golang.org/x/sys is not available).
const (
	soReuseport = 15 // SO_REUSEPORT
	fOFDSetlk   = 37 // F_OFD_SETLK
	fOFDGetlk   = 36 // F_OFD_GETLK

	tfdCloexec  = syscall.O_CLOEXEC  // TFD_CLOEXEC
	tfdNonblock = syscall.O_NONBLOCK // TFD_NONBLOCK
	clockMono   = 1                  // CLOCK_MONOTONIC

	ipprotoMPTCP = 262
)

// errnoOf unwraps an *os.SyscallError / *net.OpError to its errno, if any.
func errnoOf(err error) (syscall.Errno, bool) {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e, true
	}
	return 0, false
}

// openFd opens path with flags (O_CLOEXEC added) and returns the raw fd. The
// store keeps its files as raw descriptors, not *os.File: no finalizer can
// close them behind its back and their numbers never move.
func openFd(path string, flags int, mode uint32) (int, error) {
	fd, err := syscall.Open(path, flags|syscall.O_CLOEXEC, mode)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

// pwriteFull writes all of b at off.
func pwriteFull(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := syscall.Pwrite(fd, b, off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("pwrite wrote 0 bytes")
		}
		b = b[n:]
		off += int64(n)
	}
	return nil
}

// preadFull reads len(b) bytes at off; io.ErrUnexpectedEOF-like short reads
// return the count read.
func preadFull(fd int, b []byte, off int64) (int, error) {
	got := 0
	for got < len(b) {
		n, err := syscall.Pread(fd, b[got:], off+int64(got))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return got, err
		}
		if n == 0 {
			return got, nil
		}
		got += n
	}
	return got, nil
}

// fstatSize is the file's size.
func fstatSize(fd int) (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return st.Size, nil
}

// ofdLock takes a write OFD lock (F_OFD_SETLK, no wait) on [start, start+length).
func ofdLock(fd int, start, length int64) error {
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: start, Len: length}
	return syscall.FcntlFlock(uintptr(fd), fOFDSetlk, &lk)
}

// timerfdCreate makes a non-blocking CLOCK_MONOTONIC timerfd.
func timerfdCreate() (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_TIMERFD_CREATE, clockMono, tfdCloexec|tfdNonblock, 0)
	if e != 0 {
		return -1, os.NewSyscallError("timerfd_create", e)
	}
	return int(r), nil
}

type itimerspec struct {
	interval syscall.Timespec
	value    syscall.Timespec
}

// timerfdSet arms fd to expire every periodMs (first expiry after periodMs).
func timerfdSet(fd int, periodMs int) error {
	ts := syscall.NsecToTimespec(int64(periodMs) * 1e6)
	spec := itimerspec{interval: ts, value: ts}
	_, _, e := syscall.Syscall6(syscall.SYS_TIMERFD_SETTIME, uintptr(fd), 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0)
	if e != 0 {
		return os.NewSyscallError("timerfd_settime", e)
	}
	return nil
}

// connFd returns the descriptor behind a net.Conn / net.Listener / net.PacketConn.
func connFd(c interface{}) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1
	}
	return fd
}

// sockProto is "mptcp", "tcp", "unix" or "proto-N": the socket's SO_PROTOCOL.
func sockProto(c interface{}) string {
	fd := connFd(c)
	if fd < 0 {
		return "unknown"
	}
	p, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_PROTOCOL)
	switch {
	case err != nil:
		return "unknown"
	case p == ipprotoMPTCP:
		return "mptcp"
	case p == syscall.IPPROTO_TCP:
		return "tcp"
	case p == 0:
		return "unix"
	default:
		return fmt.Sprintf("proto-%d", p)
	}
}

// reusePort is a net.ListenConfig Control function setting SO_REUSEPORT before bind.
func reusePort(network, address string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soReuseport, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("setsockopt SO_REUSEPORT", serr)
	}
	return nil
}

// mapAddr is the address of a mapping's first byte (0 for an empty slice).
func mapAddr(b []byte) uintptr {
	if len(b) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(&b[0]))
}
