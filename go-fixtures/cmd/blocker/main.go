// blocker: a test program whose OS threads sit blocked in different system calls
// (read on a blocking pipe, accept on a blocking socket, nanosleep, futex, epoll_wait),
// so that a checkpoint catches each kind mid-syscall. A control server (net, so the
// netpoller's epoll_wait is one of them) reports what every thread has done:
//
//	STATUS          -> one JSON line: sleeps, reads, accepts, wakes
//	WRITE <text>    -> writes text to the pipe the reader thread is blocked on
//	CONNECT         -> connects to the socket the acceptor thread is blocked on
//	WAKE            -> signals the condition the futex waiter is parked on
//
// Prints "READY <pid> <control addr>" when every blocked thread is in place.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type state struct {
	sleeps  int64
	reads   int64
	accepts int64
	wakes   int64
	lastRd  atomic.Value
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "control address")
	flag.Parse()
	st := &state{}
	st.lastRd.Store("")

	// Reader: a blocking read(2) on a pipe, on its own OS thread.
	var p [2]int
	if err := syscall.Pipe(p[:]); err != nil {
		panic(err)
	}
	go func() {
		runtime.LockOSThread()
		buf := make([]byte, 256)
		for {
			n, err := syscall.Read(p[0], buf)
			if err == syscall.EINTR {
				continue
			}
			if err != nil || n == 0 {
				fmt.Fprintf(os.Stderr, "reader: n=%d err=%v\n", n, err)
				return
			}
			st.lastRd.Store(string(buf[:n]))
			atomic.AddInt64(&st.reads, 1)
		}
	}()

	// Acceptor: a blocking accept(2) on a raw socket, on its own OS thread.
	lfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		panic(err)
	}
	if err := syscall.Bind(lfd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		panic(err)
	}
	if err := syscall.Listen(lfd, 16); err != nil {
		panic(err)
	}
	sa, _ := syscall.Getsockname(lfd)
	acceptPort := sa.(*syscall.SockaddrInet4).Port
	go func() {
		runtime.LockOSThread()
		for {
			nfd, _, err := syscall.Accept(lfd)
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "acceptor: %v\n", err)
				return
			}
			syscall.Close(nfd)
			atomic.AddInt64(&st.accepts, 1)
		}
	}()

	// Sleeper: nanosleep(2) in a loop, on its own OS thread.
	go func() {
		runtime.LockOSThread()
		for {
			ts := syscall.Timespec{Sec: 0, Nsec: 50 * 1000 * 1000}
			syscall.Nanosleep(&ts, nil)
			atomic.AddInt64(&st.sleeps, 1)
		}
	}()

	// Futex waiter: a locked OS thread parked on a condition variable (futex).
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	go func() {
		runtime.LockOSThread()
		mu.Lock()
		for {
			cond.Wait()
			atomic.AddInt64(&st.wakes, 1)
		}
	}()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		panic(err)
	}
	time.Sleep(100 * time.Millisecond) // let every thread reach its syscall
	fmt.Printf("READY %d %s\n", os.Getpid(), ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			panic(err)
		}
		go func(c net.Conn) {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				f := strings.SplitN(sc.Text(), " ", 2)
				switch f[0] {
				case "STATUS":
					b, _ := json.Marshal(map[string]interface{}{
						"sleeps": atomic.LoadInt64(&st.sleeps), "reads": atomic.LoadInt64(&st.reads),
						"accepts": atomic.LoadInt64(&st.accepts), "wakes": atomic.LoadInt64(&st.wakes),
						"last_read": st.lastRd.Load(), "accept_port": acceptPort,
					})
					fmt.Fprintf(c, "%s\n", b)
				case "WRITE":
					text := ""
					if len(f) > 1 {
						text = f[1]
					}
					syscall.Write(p[1], []byte(text))
					fmt.Fprintf(c, "OK\n")
				case "CONNECT":
					cc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", acceptPort))
					if err != nil {
						fmt.Fprintf(c, "ERR %v\n", err)
						continue
					}
					cc.Close()
					fmt.Fprintf(c, "OK\n")
				case "WAKE":
					mu.Lock()
					cond.Signal()
					mu.Unlock()
					fmt.Fprintf(c, "OK\n")
				default:
					fmt.Fprintf(c, "ERR unknown\n")
				}
			}
		}(c)
	}
}
