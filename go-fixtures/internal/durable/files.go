package durable

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// Two more files a storage server keeps:
//
//   - DIR/meta: an owner record, its first MetaLockLen bytes under a write OFD
//     lock (F_OFD_SETLK): the lock belongs to the open file description, not
//     to the process, unlike a classic POSIX record lock.
//   - DIR/index.dat: an IndexFileSize-byte index file mapped read-only
//     MAP_SHARED over IndexMapLen bytes (much more than the file: a reader
//     that would grow into it later; bytes past the end of the file are never
//     touched) with madvise(MADV_RANDOM).

const (
	// MetaLockLen is the OFD-locked range [0, MetaLockLen) of DIR/meta.
	MetaLockLen = 128
	// IndexFileSize is DIR/index.dat's size.
	IndexFileSize = 64 << 10
	// IndexMapLen is the length of its read-only mapping.
	IndexMapLen = 64 << 20
	metaName    = "meta"
	indexName   = "index.dat"
)

var indexMagic = []byte("CSDURIX1")

// Meta is DIR/meta with its OFD lock.
type Meta struct {
	path string
	fd   int
}

// OpenMeta opens (creating) path, takes the OFD write lock on
// [0, MetaLockLen) without waiting, and writes the owner record after it.
func OpenMeta(path string) (*Meta, error) {
	fd, err := openFd(path, syscall.O_RDWR|syscall.O_CREAT, 0o644)
	if err != nil {
		return nil, err
	}
	if err := ofdLock(fd, 0, MetaLockLen); err != nil {
		syscall.Close(fd)
		if err == syscall.EAGAIN || err == syscall.EACCES {
			return nil, &os.PathError{Op: "F_OFD_SETLK", Path: path, Err: errors.New("held by another store (data directory in use)")}
		}
		return nil, &os.PathError{Op: "F_OFD_SETLK", Path: path, Err: err}
	}
	rec := fmt.Sprintf("owner pid=%d started=%s\n", os.Getpid(), time.Now().UTC().Format(time.RFC3339Nano))
	hdr := make([]byte, MetaLockLen)
	copy(hdr, "CSDURMETA1\n")
	if err := pwriteFull(fd, append(hdr, rec...), 0); err != nil {
		syscall.Close(fd)
		return nil, &os.PathError{Op: "pwrite", Path: path, Err: err}
	}
	return &Meta{path: path, fd: fd}, nil
}

// Close closes the file (dropping the OFD lock with its last descriptor).
func (m *Meta) Close() error {
	if m.fd < 0 {
		return nil
	}
	err := syscall.Close(m.fd)
	m.fd = -1
	return err
}

// MetaState is STATE's view of DIR/meta.
type MetaState struct {
	Fd        int    `json:"fd"`
	Path      string `json:"path"`
	Lock      string `json:"lock"`
	LockStart int64  `json:"lock_start"`
	LockLen   int64  `json:"lock_len"`
}

func (m *Meta) state() MetaState {
	return MetaState{Fd: m.fd, Path: m.path, Lock: "ofd write", LockStart: 0, LockLen: MetaLockLen}
}

// Index is DIR/index.dat and its read-only mapping.
type Index struct {
	path   string
	fd     int
	m      []byte
	checks atomic.Int64
}

// OpenIndex creates DIR/index.dat if needed (magic, then a deterministic
// pattern), checks its size, maps it read-only MAP_SHARED over IndexMapLen
// bytes and advises MADV_RANDOM.
func OpenIndex(path string) (*Index, error) {
	fd, err := openFd(path, syscall.O_RDWR|syscall.O_CREAT, 0o644)
	if err != nil {
		return nil, err
	}
	fail := func(op string, err error) (*Index, error) {
		syscall.Close(fd)
		return nil, &os.PathError{Op: op, Path: path, Err: err}
	}
	size, err := fstatSize(fd)
	if err != nil {
		return fail("fstat", err)
	}
	if size != IndexFileSize {
		b := make([]byte, IndexFileSize)
		copy(b, indexMagic)
		for i := 4096; i < len(b); i++ {
			b[i] = byte(i * 7)
		}
		if err := syscall.Ftruncate(fd, 0); err != nil {
			return fail("ftruncate", err)
		}
		if err := pwriteFull(fd, b, 0); err != nil {
			return fail("pwrite", err)
		}
		if err := syscall.Fsync(fd); err != nil {
			return fail("fsync", err)
		}
	}
	m, err := syscall.Mmap(fd, 0, IndexMapLen, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return fail("mmap", err)
	}
	if err := syscall.Madvise(m, syscall.MADV_RANDOM); err != nil {
		syscall.Munmap(m)
		return fail("madvise MADV_RANDOM", err)
	}
	ix := &Index{path: path, fd: fd, m: m}
	if err := ix.Check(); err != nil {
		ix.Close()
		return nil, err
	}
	return ix, nil
}

// Check reads the header back through the mapping (only the file's first
// page: bytes past the file's end would fault with SIGBUS).
func (ix *Index) Check() error {
	if !bytes.Equal(ix.m[:len(indexMagic)], indexMagic) {
		return fmt.Errorf("%s: bad magic %q", ix.path, ix.m[:len(indexMagic)])
	}
	ix.checks.Add(1)
	return nil
}

// Close unmaps and closes.
func (ix *Index) Close() error {
	var err error
	if ix.m != nil {
		err = syscall.Munmap(ix.m)
		ix.m = nil
	}
	if ix.fd >= 0 {
		if e := syscall.Close(ix.fd); err == nil {
			err = e
		}
		ix.fd = -1
	}
	return err
}

// IndexState is STATE's view of DIR/index.dat.
type IndexState struct {
	Fd       int    `json:"fd"`
	Path     string `json:"path"`
	FileSize int    `json:"file_size"`
	MapAddr  string `json:"map_addr"`
	MapLen   int    `json:"map_len"`
	Advice   string `json:"advice"`
	Checks   int64  `json:"checks"`
}

func (ix *Index) state() IndexState {
	return IndexState{Fd: ix.fd, Path: ix.path, FileSize: IndexFileSize, MapAddr: hexAddr(mapAddr(ix.m)),
		MapLen: len(ix.m), Advice: "MADV_RANDOM", Checks: ix.checks.Load()}
}

func hexAddr(a uintptr) string { return "0x" + strconv.FormatUint(uint64(a), 16) }
