package main

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cpuSplit says where the machine's CPU went during a phase, in cores
// (CPU-seconds per second; the machine has cfg cores in all): the server
// host process (secretsd replicas), its PostgreSQL processes, this process
// and its other children (load generator, wrk, pgbench), everything else on
// the machine, and idle. From /proc (Linux); a process that ended during
// the phase counts with its parent once reaped.
type cpuSplit struct {
	Server   float64 `json:"server"`
	Postgres float64 `json:"postgres"`
	LoadGen  float64 `json:"load_generator"`
	Other    float64 `json:"other"`
	Idle     float64 `json:"idle"`
}

func (c cpuSplit) String() string {
	return fmt.Sprintf("CPU in cores: server %.2f, PostgreSQL %.2f, load generator %.2f, other processes %.2f, idle %.2f",
		c.Server, c.Postgres, c.LoadGen, c.Other, c.Idle)
}

// clockTicks is USER_HZ, 100 on Linux for every architecture Go supports.
const clockTicks = 100

type procTicks struct {
	ppid  int
	ticks uint64 // utime + stime
}

func readProcs() map[int]procTicks {
	out := map[int]procTicks{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command may hold spaces and parentheses: fields start after
		// the last ')'. Then: state ppid ... utime(14) stime(15) cutime(16)
		// cstime(17). The children's times count the reaped children (wrk,
		// pgbench) with their parent.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 15 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		var ticks uint64
		for _, v := range f[11:15] {
			n, _ := strconv.ParseUint(v, 10, 64)
			ticks += n
		}
		out[pid] = procTicks{ppid: ppid, ticks: ticks}
	}
	return out
}

// machineTicks returns busy and idle ticks summed over all CPUs.
func machineTicks() (busy, idle uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0
	}
	for i, s := range f[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		switch i {
		case 3, 4: // idle, iowait
			idle += v
		case 8, 9: // guest time is already counted in user
		default:
			busy += v
		}
	}
	return busy, idle
}

// cpuDuring runs fn and returns how the machine's CPU was split meanwhile.
func (b *bench) cpuDuring(fn func()) cpuSplit {
	before := readProcs()
	busy0, idle0 := machineTicks()
	t0 := time.Now()
	fn()
	el := time.Since(t0).Seconds()
	busy1, idle1 := machineTicks()
	after := readProcs()
	self, hostPID := os.Getpid(), b.host.cmd.Process.Pid
	group := func(pid int) string {
		for p, depth := pid, 0; p > 1 && depth < 64; depth++ {
			switch {
			case p == hostPID && p == pid:
				return "server"
			case p == hostPID:
				return "postgres"
			case p == self:
				return "load"
			}
			p = after[p].ppid
		}
		return ""
	}
	var c cpuSplit
	if el <= 0 {
		return c
	}
	var ours float64
	for pid, a := range after {
		d := a.ticks
		if p, ok := before[pid]; ok && p.ticks <= a.ticks {
			d -= p.ticks
		}
		cores := float64(d) / clockTicks / el
		switch group(pid) {
		case "server":
			c.Server += cores
		case "postgres":
			c.Postgres += cores
		case "load":
			c.LoadGen += cores
		default:
			continue
		}
		ours += cores
	}
	c.Other = max(0, float64(busy1-busy0)/clockTicks/el-ours)
	c.Idle = float64(idle1-idle0) / clockTicks / el
	r := func(x float64) float64 { return math.Round(x*100) / 100 }
	return cpuSplit{Server: r(c.Server), Postgres: r(c.Postgres), LoadGen: r(c.LoadGen), Other: r(c.Other), Idle: r(c.Idle)}
}
