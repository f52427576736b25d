package main

import (
	"bufio"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
)

// delayHistogram is the cumulative bucket counts of
// secrets_audit_sequencing_delay_seconds, summed over the replicas, by
// upper bound (seconds; +Inf included).
type delayHistogram map[float64]float64

// sequencingDelays scrapes the replicas' sequencing-delay histograms.
func (b *bench) sequencingDelays() delayHistogram {
	h := delayHistogram{}
	for _, r := range b.replicas {
		resp, err := http.Get("http://" + r.HTTP + "/metrics")
		if err != nil {
			return nil
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			rest, ok := strings.CutPrefix(sc.Text(), `secrets_audit_sequencing_delay_seconds_bucket{le="`)
			if !ok {
				continue
			}
			le, val, ok := strings.Cut(rest, `"} `)
			if !ok {
				continue
			}
			bound, err1 := strconv.ParseFloat(le, 64)
			v, err2 := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err1 == nil && err2 == nil {
				h[bound] += v
			}
		}
		resp.Body.Close()
	}
	return h
}

// since is the histogram of the observations after before.
func (h delayHistogram) since(before delayHistogram) delayHistogram {
	out := delayHistogram{}
	for le, v := range h {
		out[le] = v - before[le]
	}
	return out
}

// quantile estimates the q-quantile in seconds the way Prometheus's
// histogram_quantile does (linear within a bucket); NaN without data.
func (h delayHistogram) quantile(q float64) float64 {
	bounds := make([]float64, 0, len(h))
	for le := range h {
		bounds = append(bounds, le)
	}
	sort.Float64s(bounds)
	if len(bounds) == 0 || h[bounds[len(bounds)-1]] <= 0 {
		return math.NaN()
	}
	total := h[bounds[len(bounds)-1]]
	rank := q * total
	prevBound, prevCount := 0.0, 0.0
	for _, le := range bounds {
		c := h[le]
		if c >= rank {
			if math.IsInf(le, 1) {
				return prevBound
			}
			if c == prevCount {
				return le
			}
			return prevBound + (le-prevBound)*(rank-prevCount)/(c-prevCount)
		}
		prevBound, prevCount = le, c
	}
	return prevBound
}

// count is the number of observations.
func (h delayHistogram) count() float64 { return h[math.Inf(1)] }
