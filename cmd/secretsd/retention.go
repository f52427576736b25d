package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// retentionFlag is a duration that also takes whole days ("90d"), as
// retention periods are usually given.
type retentionFlag time.Duration

func (r *retentionFlag) String() string { return time.Duration(*r).String() }

func (r *retentionFlag) Set(v string) error {
	d, err := parseRetention(v)
	if err != nil {
		return err
	}
	*r = retentionFlag(d)
	return nil
}

func parseRetention(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if days, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 100*366 {
			return 0, fmt.Errorf("retention %q: want a number of days (90d) or a Go duration (720h)", v)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("retention %q: want a number of days (90d) or a Go duration (720h)", v)
	}
	return d, nil
}
