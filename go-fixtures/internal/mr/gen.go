package mr

import (
	"bufio"
	"fmt"
	"io"
	"os"
)

type rng struct{ x uint64 }

func (r *rng) next() uint64 {
	r.x += 0x9E3779B97F4A7C15
	z := r.x
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	return z ^ (z >> 31)
}

func (r *rng) intn(n int) int        { return int(r.next() % uint64(n)) }
func (r *rng) float() float64        { return float64(r.next()>>11) / (1 << 53) }
func (r *rng) chance(p float64) bool { return r.float() < p }

// GenerateInputs writes files text files pg-0.txt .. pg-<files-1>.txt into dir,
// totalKiB KiB in all (each file ends at a line end once it reaches its share),
// deterministically from seed (SplitMix64; same bytes with every Go version):
// ASCII words from a 5000-word vocabulary with a skewed (Zipf-like)
// distribution, some capitalized, with punctuation and numbers in between.
func GenerateInputs(dir string, totalKiB, files int, seed int64) ([]string, error) {
	if files < 1 || totalKiB < 1 {
		return nil, fmt.Errorf("need files >= 1 and size > 0")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	r := &rng{x: uint64(seed)}
	const letters = "abcdefghijklmnopqrstuvwxyz"
	vocab := make([]string, 5000)
	for i := range vocab {
		n := 1 + r.intn(4) + r.intn(4) + r.intn(4) // 1..10, mostly 4..7
		b := make([]byte, n)
		for j := range b {
			b[j] = letters[r.intn(len(letters))]
		}
		vocab[i] = string(b)
	}
	per := int64(totalKiB) * 1024 / int64(files)
	var names []string
	for f := 0; f < files; f++ {
		name := fmt.Sprintf("pg-%d.txt", f)
		fr := &rng{x: uint64(seed)*1000003 + uint64(f)}
		err := WriteAtomic(dir, name, func(w io.Writer) error {
			bw := bufio.NewWriter(w)
			var written int64
			col := 0
			for written < per || col != 0 {
				var tok string
				switch {
				case fr.chance(0.02):
					tok = fmt.Sprintf("%d", fr.intn(3000))
				default:
					u := fr.float()
					tok = vocab[int(float64(len(vocab))*u*u*u)]
					if fr.chance(0.05) {
						tok = string(tok[0]-'a'+'A') + tok[1:]
					}
				}
				sep := " "
				switch {
				case fr.chance(0.03):
					sep = ". "
				case fr.chance(0.03):
					sep = ", "
				case fr.chance(0.01):
					sep = "; "
				case fr.chance(0.005):
					sep = "-"
				}
				if col+len(tok) > 72 {
					bw.WriteString("\n")
					written++
					col = 0
					if written >= per {
						break
					}
				}
				bw.WriteString(tok)
				bw.WriteString(sep)
				col += len(tok) + len(sep)
				written += int64(len(tok) + len(sep))
			}
			return bw.Flush()
		})
		if err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}
