package main

import (
	"bufio"
	"math"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// delayHistogram is the cumulative bucket counts of
// secrets_audit_sequencing_delay_seconds, summed over the replicas, by
// upper bound (seconds; +Inf included).
type delayHistogram map[float64]float64

// scrapeMetrics calls line with each line of every replica's /metrics;
// false if a replica did not answer.
func (b *bench) scrapeMetrics(line func(string)) bool {
	for _, r := range b.replicas {
		resp, err := http.Get("http://" + r.HTTP + "/metrics")
		if err != nil {
			return false
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line(sc.Text())
		}
		resp.Body.Close()
	}
	return true
}

// sequencingDelays scrapes the replicas' sequencing-delay histograms.
func (b *bench) sequencingDelays() delayHistogram {
	h := delayHistogram{}
	ok := b.scrapeMetrics(func(l string) {
		rest, ok := strings.CutPrefix(l, `secrets_audit_sequencing_delay_seconds_bucket{le="`)
		if !ok {
			return
		}
		le, val, ok := strings.Cut(rest, `"} `)
		if !ok {
			return
		}
		bound, err1 := strconv.ParseFloat(le, 64)
		v, err2 := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err1 == nil && err2 == nil {
			h[bound] += v
		}
	})
	if !ok {
		return nil
	}
	return h
}

// counters sums unlabelled counters over the replicas (nil if a replica
// did not answer).
func (b *bench) counters(names ...string) map[string]float64 {
	out := make(map[string]float64, len(names))
	ok := b.scrapeMetrics(func(l string) {
		name, val, found := strings.Cut(l, " ")
		if !found || !slices.Contains(names, name) {
			return
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] += v
		}
	})
	if !ok {
		return nil
	}
	return out
}

// auditGroups is the access audits' group commit over a phase.
type auditGroups struct {
	perSec, callersPerGroup, commitMs float64
}

var auditGroupCounters = []string{"secrets_audit_access_groups_total", "secrets_audit_access_group_callers_total",
	"secrets_audit_access_group_commit_seconds_total"}

// auditGroupsDuring runs fn and returns the access audit groups committed
// meanwhile: how many a second, their mean size, and their mean commit.
func (b *bench) auditGroupsDuring(fn func()) (auditGroups, bool) {
	before := b.counters(auditGroupCounters...)
	t0 := time.Now()
	fn()
	el := time.Since(t0)
	after := b.counters(auditGroupCounters...)
	n := after[auditGroupCounters[0]] - before[auditGroupCounters[0]]
	if before == nil || after == nil || n <= 0 {
		return auditGroups{}, false
	}
	return auditGroups{perSec: n / el.Seconds(),
		callersPerGroup: (after[auditGroupCounters[1]] - before[auditGroupCounters[1]]) / n,
		commitMs:        (after[auditGroupCounters[2]] - before[auditGroupCounters[2]]) * 1000 / n}, true
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
