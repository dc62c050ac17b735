package benchreport

import (
	"runtime"
	"slices"
	"strconv"
	"time"
)

// gaugeKeys sizes one pass of Gauge: 30 to 50 ms on the 2-core machine the
// README's figures come from, depending on the minute.
const gaugeKeys = 100_000

// Gauge times a fixed piece of work that no code of this repository changes
// (formatting, map inserts and look-ups, a sort: allocation, hashing and
// cache misses, like the services' own) and returns the median of reps
// passes. Taken at the start and the end of a run, it tells a slower hour of
// the machine from slower code when two runs are compared: on a shared host
// the machine's speed moves by a third and more between hours.
func Gauge(reps int) time.Duration {
	times := make([]time.Duration, max(reps, 1))
	for i := range times {
		runtime.GC() // each pass starts from the same heap
		start := time.Now()
		if gaugePass() != gaugeKeys*(gaugeKeys-1)/2 {
			panic("benchreport: gauge pass lost keys") // keeps the work from being optimised away
		}
		times[i] = time.Since(start)
	}
	slices.Sort(times)
	return times[len(times)/2]
}

// gaugePass returns the sum of the values it stored, 0 + 1 + … + gaugeKeys-1.
func gaugePass() int {
	keys := make([]string, gaugeKeys)
	m := make(map[string]int)
	for i := range keys {
		keys[i] = strconv.Itoa(i * 7919)
		m[keys[i]] = i
	}
	slices.Sort(keys)
	sum := 0
	for _, k := range keys {
		sum += m[k]
	}
	return sum
}
