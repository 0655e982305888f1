package durable

import (
	"encoding/binary"
	"errors"
	"hash/fnv"
	"os"
	"sync"
	"syscall"
)

// The data file, DIR/data.db: held under flock(LOCK_EX) for the life of the
// store (a second store on the same directory is refused) and mapped
// read-write MAP_SHARED; every committed PUT is written into the mapping and
// GET reads it back from there. It is a cache of the WAL: rebuilt (zeroed,
// then replayed) on every start.
//
// Layout: a 4096-byte header ("CSDURDB1", u32 slot count) then SlotCount
// slots of 512 bytes, open addressing (FNV-1a 64 of the key, linear probing):
// u16 keyLen (0: empty) | u16 valLen | u32 0 | u64 lsn | key[96] | value[400].

const (
	tableHeader = 4096
	slotSize    = 512
	slotFixed   = 16
	// MaxKey and MaxValue are the longest key and value a PUT may carry.
	MaxKey   = 96
	MaxValue = slotSize - slotFixed - MaxKey
	dataName = "data.db"
)

var tableMagic = []byte("CSDURDB1")

// ErrTableFull is returned by Put for a new key when the table is 7/8 full.
var ErrTableFull = errors.New("data table full")

// Table is the mapped data file.
type Table struct {
	mu    sync.RWMutex
	path  string
	fd    int
	slots int
	used  int
	m     []byte // MAP_SHARED, PROT_READ|PROT_WRITE, the whole file
}

// OpenTable opens (creating) DIR/data.db, takes flock(LOCK_EX|LOCK_NB), sizes
// it for slots slots with every slot empty, and maps it shared read-write.
func OpenTable(path string, slots int) (*Table, error) {
	if slots < 16 {
		slots = 16
	}
	fd, err := openFd(path, syscall.O_RDWR|syscall.O_CREAT, 0o644)
	if err != nil {
		return nil, err
	}
	t := &Table{path: path, fd: fd, slots: slots}
	if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		syscall.Close(fd)
		if err == syscall.EWOULDBLOCK {
			return nil, &os.PathError{Op: "flock", Path: path, Err: errors.New("held by another store (data directory in use)")}
		}
		return nil, &os.PathError{Op: "flock", Path: path, Err: err}
	}
	size := int64(tableHeader + slots*slotSize)
	// Zero it: the WAL replay refills it.
	if err := syscall.Ftruncate(fd, 0); err == nil {
		err = syscall.Ftruncate(fd, size)
	}
	if err != nil {
		syscall.Close(fd)
		return nil, &os.PathError{Op: "ftruncate", Path: path, Err: err}
	}
	t.m, err = syscall.Mmap(fd, 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		syscall.Close(fd)
		return nil, &os.PathError{Op: "mmap", Path: path, Err: err}
	}
	copy(t.m, tableMagic)
	binary.LittleEndian.PutUint32(t.m[8:], uint32(slots))
	return t, nil
}

func (t *Table) slot(i int) []byte {
	off := tableHeader + i*slotSize
	return t.m[off : off+slotSize]
}

// find returns the slot holding key, or the empty slot where it would go.
func (t *Table) find(key string) (int, bool) {
	h := fnv.New64a()
	h.Write([]byte(key))
	i := int(h.Sum64() % uint64(t.slots))
	for n := 0; n < t.slots; n++ {
		s := t.slot(i)
		kl := int(binary.LittleEndian.Uint16(s[0:]))
		if kl == 0 {
			return i, false
		}
		if kl == len(key) && string(s[slotFixed:slotFixed+kl]) == key {
			return i, true
		}
		i = (i + 1) % t.slots
	}
	return -1, false
}

// Fits reports whether key=val can be Put once extra other new keys (the
// rest of a commit batch) are in: the key and value fit in a slot, and the key
// exists or the table stays at most 7/8 full. isNew says the key is not there yet.
func (t *Table) Fits(key, val string, extra int) (isNew bool, err error) {
	if len(key) == 0 || len(key) > MaxKey {
		return false, errors.New("key length must be 1..96")
	}
	if len(val) > MaxValue {
		return false, errors.New("value longer than 400 bytes")
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if _, ok := t.find(key); ok {
		return false, nil
	}
	if (t.used+extra+1)*8 > t.slots*7 {
		return true, ErrTableFull
	}
	return true, nil
}

// Put writes key=val (committed at lsn) into the mapping.
func (t *Table) Put(key, val string, lsn uint64) error {
	if _, err := t.Fits(key, val, 0); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	i, ok := t.find(key)
	if i < 0 {
		return ErrTableFull
	}
	s := t.slot(i)
	binary.LittleEndian.PutUint16(s[2:], uint16(len(val)))
	binary.LittleEndian.PutUint64(s[8:], lsn)
	copy(s[slotFixed+MaxKey:], val)
	if !ok {
		copy(s[slotFixed:], key)
		binary.LittleEndian.PutUint16(s[0:], uint16(len(key)))
		t.used++
	}
	return nil
}

// Get reads key's value back from the mapping.
func (t *Table) Get(key string) (string, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	i, ok := t.find(key)
	if !ok {
		return "", false
	}
	s := t.slot(i)
	vl := int(binary.LittleEndian.Uint16(s[2:]))
	return string(s[slotFixed+MaxKey : slotFixed+MaxKey+vl]), true
}

// Len is the number of keys.
func (t *Table) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.used
}

// Close unmaps and closes (releasing the flock).
func (t *Table) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var err error
	if t.m != nil {
		err = syscall.Munmap(t.m)
		t.m = nil
	}
	if t.fd >= 0 {
		if e := syscall.Close(t.fd); err == nil {
			err = e
		}
		t.fd = -1
	}
	return err
}

// TableState is the data file's part of STATE.
type TableState struct {
	Fd      int    `json:"fd"`
	Path    string `json:"path"`
	Lock    string `json:"lock"`
	MapAddr string `json:"map_addr"`
	MapLen  int    `json:"map_len"`
	Keys    int    `json:"keys"`
	Slots   int    `json:"slots"`
}

func (t *Table) state() TableState {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return TableState{Fd: t.fd, Path: t.path, Lock: "flock LOCK_EX", MapAddr: hexAddr(mapAddr(t.m)),
		MapLen: len(t.m), Keys: t.used, Slots: t.slots}
}
