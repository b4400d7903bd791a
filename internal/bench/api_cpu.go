package bench

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is Linux's USER_HZ, the unit of CPU times in /proc.
const clockTicks = 100

// cpuOf returns the CPU time (user and system, all threads) process pid
// has used (Linux).
func cpuOf(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces and parentheses:
	// count fields after its last ')'. utime and stime are fields 14 and
	// 15 of the line.
	end := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[end+1:]))
	if end < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// machineBusy returns the CPU time all CPUs of the machine have spent
// outside idle and iowait since boot (Linux).
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("/proc/stat: unexpected format")
	}
	var busy int64
	// user nice system idle iowait irq softirq steal: all but idle and
	// iowait (guest time is already in user).
	for i, v := range f[1:9] {
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		busy += n
	}
	return time.Duration(busy) * time.Second / clockTicks, nil
}

// cpuMeter tells how much CPU processes other than the given ones used
// between two readings.
type cpuMeter struct {
	pids  []int
	begin time.Time
	// busy is machineBusy less the processes' CPU time, at begin.
	busy time.Duration
}

func newCPUMeter(pids ...int) (*cpuMeter, error) {
	m := &cpuMeter{pids: pids}
	busy, err := m.othersBusy()
	if err != nil {
		return nil, err
	}
	m.begin, m.busy = time.Now(), busy
	return m, nil
}

// Others returns the share of the machine's CPU capacity (0 to 1) that
// other processes used since newCPUMeter.
func (m *cpuMeter) Others(cores int) (float64, error) {
	busy, err := m.othersBusy()
	if err != nil {
		return 0, err
	}
	capacity := time.Since(m.begin) * time.Duration(cores)
	if capacity <= 0 {
		return 0, nil
	}
	return max(0, float64(busy-m.busy)/float64(capacity)), nil
}

func (m *cpuMeter) othersBusy() (time.Duration, error) {
	busy, err := machineBusy()
	if err != nil {
		return 0, err
	}
	for _, pid := range m.pids {
		used, err := cpuOf(pid)
		if err != nil {
			return 0, err
		}
		busy -= used
	}
	return busy, nil
}
