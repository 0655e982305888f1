// Package mr is a MapReduce word count in the style of the classic teaching
// lab: a coordinator (net/rpc over TCP) hands map and reduce tasks to worker
// processes, reassigns tasks whose worker went silent, and answers "done" at
// the end. Workers write intermediate and final files atomically.
package mr

import (
	"bufio"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

// Words calls fn for every word of text: a maximal run of letters
// (unicode.IsLetter; the generated inputs are ASCII, so [A-Za-z]+), case kept.
func Words(text string, fn func(w string)) {
	start := -1
	for i, r := range text {
		if unicode.IsLetter(r) {
			if start < 0 {
				start = i
			}
			continue
		}
		if start >= 0 {
			fn(text[start:i])
			start = -1
		}
	}
	if start >= 0 {
		fn(text[start:])
	}
}

// CountWords adds the word counts of the file at path to counts.
func CountWords(path string, counts map[string]int64) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	Words(string(b), func(w string) { counts[w]++ })
	return nil
}

// Partition is the reduce partition of a word: fnv32a(word) & 0x7fffffff mod R.
func Partition(word string, nreduce int) int {
	h := fnv.New32a()
	h.Write([]byte(word))
	return int(h.Sum32()&0x7fffffff) % nreduce
}

// IntermediateName is map task m's output for reduce partition r.
func IntermediateName(m, r int) string { return fmt.Sprintf("mr-%d-%d", m, r) }

// OutputName is reduce task r's output.
func OutputName(r int) string { return fmt.Sprintf("mr-out-%d", r) }

// WriteAtomic writes a file through a temporary file in the same directory and
// a rename, so readers see either nothing or the whole file.
func WriteAtomic(dir, name string, write func(w io.Writer) error) error {
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	f.Chmod(0o644)
	bw := bufio.NewWriterSize(f, 256<<10)
	err = write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// WriteCounts writes "<word> <count>\n" lines sorted by word.
func WriteCounts(w io.Writer, counts map[string]int64) error {
	words := make([]string, 0, len(counts))
	for k := range counts {
		words = append(words, k)
	}
	sort.Strings(words)
	for _, k := range words {
		if _, err := io.WriteString(w, k+" "+strconv.FormatInt(counts[k], 10)+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// ReadCounts adds the "<word> <count>" lines of a file to counts. With
// disjoint=true a word already present is an error (reduce outputs must not
// overlap).
func ReadCounts(path string, counts map[string]int64, disjoint bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		w, c, ok := strings.Cut(sc.Text(), " ")
		n, err := strconv.ParseInt(c, 10, 64)
		if !ok || err != nil || w == "" {
			return fmt.Errorf("%s:%d: want \"<word> <count>\", got %q", path, line, sc.Text())
		}
		if _, dup := counts[w]; dup && disjoint {
			return fmt.Errorf("%s:%d: word %q appears in more than one output line", path, line, w)
		}
		counts[w] += n
	}
	return sc.Err()
}

// InputFiles lists the regular files of dir (not starting with '.'), sorted.
func InputFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out, nil
}

// SequentialCount is the reference word count of a set of files.
func SequentialCount(files []string) (map[string]int64, error) {
	counts := make(map[string]int64)
	for _, f := range files {
		if err := CountWords(f, counts); err != nil {
			return nil, err
		}
	}
	return counts, nil
}

// ReadOutputs merges every mr-out-* file in dir.
func ReadOutputs(dir string) (map[string]int64, int, error) {
	files, err := filepath.Glob(filepath.Join(dir, "mr-out-*"))
	if err != nil {
		return nil, 0, err
	}
	counts := make(map[string]int64)
	for _, f := range files {
		if err := ReadCounts(f, counts, true); err != nil {
			return nil, 0, err
		}
	}
	return counts, len(files), nil
}

// CheckResult compares MapReduce output with the sequential count.
type CheckResult struct {
	OK          bool   `json:"ok"`
	InputFiles  int    `json:"input_files"`
	OutputFiles int    `json:"output_files"`
	Words       int    `json:"distinct_words"`
	Total       int64  `json:"total_words"`
	Mismatches  int    `json:"mismatches"`
	First       string `json:"first_mismatch"`
}

// Check compares the mr-out-* files in outDir with a sequential word count of inputs.
func Check(inputs []string, outDir string) (CheckResult, error) {
	res := CheckResult{InputFiles: len(inputs)}
	want, err := SequentialCount(inputs)
	if err != nil {
		return res, err
	}
	got, nout, err := ReadOutputs(outDir)
	res.OutputFiles = nout
	if err != nil {
		return res, err
	}
	res.Words = len(want)
	var keys []string
	for w, n := range want {
		res.Total += n
		if got[w] != n {
			keys = append(keys, w)
		}
	}
	for w := range got {
		if _, ok := want[w]; !ok {
			keys = append(keys, w)
		}
	}
	sort.Strings(keys)
	res.Mismatches = len(keys)
	if len(keys) > 0 {
		res.First = fmt.Sprintf("%q: want %d, got %d", keys[0], want[keys[0]], got[keys[0]])
	}
	res.OK = len(keys) == 0 && nout > 0
	return res, nil
}
