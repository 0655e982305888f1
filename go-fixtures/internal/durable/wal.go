package durable

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// The write-ahead log: one file, DIR/wal/wal.log, opened without O_APPEND.
// Records are written with pwrite at the store's own offset, the file is
// preallocated (fallocate, mode 0: the size grows, the tail reads as zeros)
// PreallocChunk bytes ahead of the last record, and every commit fsyncs the
// file and the directory (whose descriptor the store keeps open for that).
//
// Record: u32 bodyLen | u32 crc32c(body) | body, little endian;
// body: u64 lsn | u64 client | u64 seq | u16 keyLen | key | value.
// LSNs start at 1 and are consecutive. Replay stops at the first record that
// is zero, too long, fails its checksum or breaks the LSN sequence; whatever
// follows (a torn batch, never acknowledged) is cut off and re-zeroed on open.

const (
	walHeader     = 8
	walBodyFixed  = 8 + 8 + 8 + 2
	maxRecordBody = 64 << 10
	// PreallocChunk is how far ahead of the last record the WAL is allocated.
	PreallocChunk = 1 << 20
	walName       = "wal.log"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record is one logged PUT.
type Record struct {
	LSN    uint64
	Client uint64
	Seq    uint64
	Key    string
	Value  string
}

func appendRecord(b []byte, r *Record) []byte {
	bodyLen := walBodyFixed + len(r.Key) + len(r.Value)
	start := len(b)
	b = append(b, make([]byte, walHeader+bodyLen)...)
	h := b[start:]
	body := h[walHeader:]
	binary.LittleEndian.PutUint64(body[0:], r.LSN)
	binary.LittleEndian.PutUint64(body[8:], r.Client)
	binary.LittleEndian.PutUint64(body[16:], r.Seq)
	binary.LittleEndian.PutUint16(body[24:], uint16(len(r.Key)))
	copy(body[walBodyFixed:], r.Key)
	copy(body[walBodyFixed+len(r.Key):], r.Value)
	binary.LittleEndian.PutUint32(h[0:], uint32(bodyLen))
	binary.LittleEndian.PutUint32(h[4:], crc32.Checksum(body, castagnoli))
	return b
}

// WAL is the open log.
type WAL struct {
	mu       sync.Mutex // Append and state
	dir      string
	path     string
	dirFd    int // the WAL directory, kept open to fsync it
	fd       int // the log, O_RDWR without O_APPEND
	off      int64
	alloc    int64 // bytes allocated (fallocate) from 0
	lastLSN  uint64
	dirSyncs int64
	syncs    int64
}

// OpenWAL opens (creating) DIR/wal/wal.log, replays it through fn (in LSN
// order), cuts off anything after the last good record and preallocates.
func OpenWAL(dataDir string, fn func(*Record)) (*WAL, error) {
	dir := filepath.Join(dataDir, "wal")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	w := &WAL{dir: dir, path: filepath.Join(dir, walName), dirFd: -1, fd: -1}
	var err error
	if w.dirFd, err = openFd(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0); err != nil {
		return nil, err
	}
	if w.fd, err = openFd(w.path, syscall.O_RDWR|syscall.O_CREAT, 0o644); err != nil {
		w.Close()
		return nil, err
	}
	if err := w.replay(fn); err != nil {
		w.Close()
		return nil, fmt.Errorf("replay %s: %w", w.path, err)
	}
	// Cut the tail (a torn, unacknowledged batch or old preallocation) and
	// allocate afresh, so that only zeros follow the last record.
	if err := syscall.Ftruncate(w.fd, w.off); err != nil {
		w.Close()
		return nil, &os.PathError{Op: "ftruncate", Path: w.path, Err: err}
	}
	if err := w.preallocate(w.off + PreallocChunk); err != nil {
		w.Close()
		return nil, err
	}
	if err := w.sync(); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

func (w *WAL) replay(fn func(*Record)) error {
	size, err := fstatSize(w.fd)
	if err != nil {
		return err
	}
	var hdr [walHeader]byte
	var body []byte
	off := int64(0)
	for off+walHeader <= size {
		if n, err := preadFull(w.fd, hdr[:], off); err != nil {
			return err
		} else if n < walHeader {
			break
		}
		bodyLen := int64(binary.LittleEndian.Uint32(hdr[0:]))
		if bodyLen < walBodyFixed || bodyLen > maxRecordBody || off+walHeader+bodyLen > size {
			break
		}
		if int64(cap(body)) < bodyLen {
			body = make([]byte, bodyLen)
		}
		body = body[:bodyLen]
		if n, err := preadFull(w.fd, body, off+walHeader); err != nil {
			return err
		} else if int64(n) < bodyLen {
			break
		}
		if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(hdr[4:]) {
			break
		}
		r := Record{
			LSN:    binary.LittleEndian.Uint64(body[0:]),
			Client: binary.LittleEndian.Uint64(body[8:]),
			Seq:    binary.LittleEndian.Uint64(body[16:]),
		}
		klen := int(binary.LittleEndian.Uint16(body[24:]))
		if r.LSN != w.lastLSN+1 || walBodyFixed+klen > len(body) {
			break
		}
		r.Key = string(body[walBodyFixed : walBodyFixed+klen])
		r.Value = string(body[walBodyFixed+klen:])
		if fn != nil {
			fn(&r)
		}
		w.lastLSN = r.LSN
		off += walHeader + bodyLen
	}
	w.off = off
	return nil
}

// preallocate makes sure [0, upto) is allocated (fallocate mode 0).
func (w *WAL) preallocate(upto int64) error {
	if upto <= w.alloc {
		return nil
	}
	from := w.alloc
	if from < w.off {
		from = w.off
	}
	for {
		err := syscall.Fallocate(w.fd, 0, from, upto-from)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "fallocate", Path: w.path, Err: err}
		}
		break
	}
	w.alloc = upto
	return nil
}

func (w *WAL) sync() error {
	if err := syscall.Fdatasync(w.fd); err != nil {
		return &os.PathError{Op: "fdatasync", Path: w.path, Err: err}
	}
	w.syncs++
	if err := syscall.Fsync(w.dirFd); err != nil {
		return &os.PathError{Op: "fsync", Path: w.dir, Err: err}
	}
	w.dirSyncs++
	return nil
}

// NextLSN is the LSN the next appended record must carry.
func (w *WAL) NextLSN() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastLSN + 1
}

// Append writes recs (LSNs NextLSN, NextLSN+1, ...; set here) at the current
// offset, extending the preallocation when needed, and makes them durable
// (fdatasync of the log, fsync of its directory) before returning.
func (w *WAL) Append(recs []*Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(recs) == 0 {
		return nil
	}
	var b []byte
	lsn := w.lastLSN
	for _, r := range recs {
		if walBodyFixed+len(r.Key)+len(r.Value) > maxRecordBody || len(r.Key) > 0xffff {
			return errors.New("wal: record too long")
		}
		lsn++
		r.LSN = lsn
		b = appendRecord(b, r)
	}
	end := w.off + int64(len(b))
	if end > w.alloc {
		if err := w.preallocate(end + PreallocChunk); err != nil {
			return err
		}
	}
	if err := pwriteFull(w.fd, b, w.off); err != nil {
		return &os.PathError{Op: "pwrite", Path: w.path, Err: err}
	}
	if err := w.sync(); err != nil {
		return err
	}
	w.off = end
	w.lastLSN = lsn
	return nil
}

// Close closes both descriptors.
func (w *WAL) Close() error {
	var err error
	if w.fd >= 0 {
		err = syscall.Close(w.fd)
		w.fd = -1
	}
	if w.dirFd >= 0 {
		if e := syscall.Close(w.dirFd); err == nil {
			err = e
		}
		w.dirFd = -1
	}
	return err
}

// WALState is the WAL's part of STATE.
type WALState struct {
	DirFd     int    `json:"dir_fd"`
	Dir       string `json:"dir"`
	Fd        int    `json:"fd"`
	Path      string `json:"path"`
	Offset    int64  `json:"offset"`
	Allocated int64  `json:"allocated"`
	LastLSN   uint64 `json:"last_lsn"`
	Syncs     int64  `json:"syncs"`
	DirSyncs  int64  `json:"dir_syncs"`
}

func (w *WAL) state() WALState {
	w.mu.Lock()
	defer w.mu.Unlock()
	return WALState{DirFd: w.dirFd, Dir: w.dir, Fd: w.fd, Path: w.path, Offset: w.off,
		Allocated: w.alloc, LastLSN: w.lastLSN, Syncs: w.syncs, DirSyncs: w.dirSyncs}
}
