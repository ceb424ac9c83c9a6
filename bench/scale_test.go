package bench

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/cluster/farm"
)

// Every flag at its edges; bad values refused in one line naming the flag.
func TestParseScaleFlags(t *testing.T) {
	f := func(args string, redisInstalled bool, wantErr string) ScaleOptions {
		t.Helper()
		o, err := ParseScale(strings.Fields(args), io.Discard, redisInstalled)
		if wantErr != "" {
			require.EqualError(t, err, wantErr, args)
			require.NotContains(t, err.Error(), "\n")
			return o
		}
		require.NoError(t, err, args)
		return o
	}
	o := f("", true, "")
	require.Equal(t, []int{1_000_000, 2_000_000}, o.Entries)
	require.Equal(t, filepath.Join("bench", "results", "scale"), o.Out)
	require.True(t, o.Redis, "--redis defaults to whether redis-server is installed")
	require.Empty(t, o.Bin)
	require.False(t, f("", false, "").Redis)

	require.Equal(t, []int{2}, f("--entries 2", true, "").Entries)
	require.Equal(t, []int{20000, 100000}, f("--entries 20000,100000", true, "").Entries)
	require.Equal(t, []int{4, 2}, f("--entries 4,2", true, "").Entries, "the runs in the order given")
	require.Equal(t, []int{50_000_000}, f("--entries 50000000", true, "").Entries)
	f("--entries 50000002", true, `invalid value "50000002" for flag -entries: 50000002 is above 50000000, what the scenario's licence holds`)
	f("--entries 0", true, `invalid value "0" for flag -entries: 0 is not positive`)
	f("--entries -2", true, `invalid value "-2" for flag -entries: -2 is not positive`)
	f("--entries 3", true, `invalid value "3" for flag -entries: 3 is odd: half the entries are loaded by each command`)
	f("--entries 2,2", true, `invalid value "2,2" for flag -entries: 2 is given twice`)
	f("--entries 2,,4", true, `invalid value "2,,4" for flag -entries: "" is not a whole number: want entry counts, comma-separated`)
	f("--entries 1e6", true, `invalid value "1e6" for flag -entries: "1e6" is not a whole number: want entry counts, comma-separated`)

	require.False(t, f("--redis=false", true, "").Redis)
	require.True(t, f("--redis=true", true, "").Redis)
	require.False(t, f("--redis=false", false, "").Redis)
	f("--redis=true", false, "--redis=true, but redis-server is not installed (Debian: apt-get install redis-server); or run with --redis=false")
	f("--redis", false, "--redis=true, but redis-server is not installed (Debian: apt-get install redis-server); or run with --redis=false")

	require.Equal(t, "/tmp/x", f("--out /tmp/x --bin /opt/bin", true, "").Out)
	require.Equal(t, "/opt/bin", f("--bin /opt/bin", true, "").Bin)
	f("--out=", true, "--out must name a directory")
	f("--seconds 3", true, "flag provided but not defined: -seconds")
	f("extra", true, `unexpected argument "extra"`)

	var help strings.Builder
	_, err := ParseScale([]string{"-h"}, &help, true)
	require.True(t, errors.Is(err, flag.ErrHelp))
	require.Contains(t, help.String(), "usage: "+ScaleUsage)
	require.Contains(t, help.String(), "-entries")
}

func TestScaleCommandLine(t *testing.T) {
	require.Equal(t, "capsbench scale --entries 20000,40000 --out bench/results/scale",
		CommandLine([]string{"/tmp/go-build/capsbench", "scale", "--entries", "20000,40000", "--out", "bench/results/scale"}))
	require.Equal(t, `capsbench scale --out 'my dir' --bin '' --x 'it'\''s'`,
		CommandLine([]string{"capsbench", "scale", "--out", "my dir", "--bin", "", "--x", "it's"}))
	require.Equal(t, "", CommandLine(nil))
}

// p99 is the sorted latencies' element at 0.99 × (n-1); the
// longest gap is between two answers (send + latency), so a slow answer
// widens the gap after the one before it.
func TestScaleSummarizeProbes(t *testing.T) {
	require.Equal(t, ProbeSummary{}, summarizeProbes(nil))
	require.Equal(t, ProbeSummary{Probes: 1, P99Ms: 3, WorstMs: 3}, summarizeProbes([]ProbeSample{{AtS: 0.01, Ms: 3}}))

	var ps []ProbeSample
	for i := range 200 { // every 50 ms, 1 ms each
		ps = append(ps, ProbeSample{AtS: float64(i) * 0.05, Ms: 1})
	}
	ps[100].Ms = 400 // a stall: the answer sent at 5.0 s comes at 5.4 s
	ps[150].Ms = 20
	ps[151].Ms = 30
	s := summarizeProbes(ps)
	require.Equal(t, 200, s.Probes)
	require.Equal(t, 400.0, s.WorstMs)
	require.Equal(t, 20.0, s.P99Ms, "element 197 of 200 sorted: the third largest")
	require.InDelta(t, 449, s.LongestGapMs, 1e-9, "from the answer at 4.951 s to the one at 5.4 s")

	s = summarizeProbes(ps[:100])
	require.Equal(t, 1.0, s.WorstMs)
	require.InDelta(t, 50, s.LongestGapMs, 1e-9)
}

func TestScaleBenchmarkRate(t *testing.T) {
	f := func(out string, want float64, wantErr string) {
		t.Helper()
		got, err := benchmarkRate(out)
		if wantErr != "" {
			require.ErrorContains(t, err, wantErr)
			return
		}
		require.NoError(t, err)
		require.Equal(t, want, got)
	}
	// redis-benchmark -q: progress lines ended by \r, then the result.
	f("\rSET sub:__rand_int__ v EX 3600: rps=0.0 (overall: 0.0) avg_msec=-nan (overall: -nan)\r"+strings.Repeat(" ", 40)+
		"\rSET sub:__rand_int__ v EX 3600: 131578.95 requests per second, p50=4.687 msec\n", 131578.95, "")
	f("REGISTER voice sub:__rand_int__ TTL 3600: 370370.38 requests per second, p50=1.119 msec\n", 370370.38, "")
	f("\rADMIT voice: rps=0.0 (overall: 0.0)\r", 0, `no "requests per second"`)
	f(" requests per second", 0, "no rate")
	f("X: abc requests per second", 0, `cannot read the rate "abc"`)
}

func TestScaleParsers(t *testing.T) {
	require.Equal(t, "7.0.15", redisVersion("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=ae4d7c971a948f0\n"))
	require.Equal(t, "", redisVersion("something else"))

	rss, err := parseVmRSS("Name:\tcapsgate\nVmPeak:\t  99 kB\nVmRSS:\t   31116 kB\nRssAnon:\t 1 kB\n")
	require.NoError(t, err)
	require.Equal(t, int64(31116*1024), rss)
	_, err = parseVmRSS("Name:\tx\n")
	require.EqualError(t, err, "no VmRSS in /proc/PID/status")
	_, err = parseVmRSS("VmRSS:\t12 MB\n")
	require.ErrorContains(t, err, "cannot read the RSS")
	rss, err = readRSS(os.Getpid())
	require.NoError(t, err)
	require.Greater(t, rss, int64(1<<20))

	metrics := "# HELP capsgate_state_restore_seconds capsgate state restore seconds.\n" +
		"# TYPE capsgate_state_restore_seconds gauge\ncapsgate_state_restore_seconds 5.1979e-05\n" +
		"capsgate_state_restored_sessions 10000\ncapsgate_state_restored_subscribers_x 3\n"
	v, ok := metricValue(metrics, "capsgate_state_restore_seconds")
	require.True(t, ok)
	require.Equal(t, 5.1979e-05, v)
	v, ok = metricValue(metrics, "capsgate_state_restored_sessions")
	require.True(t, ok)
	require.Equal(t, 10000.0, v)
	_, ok = metricValue(metrics, "capsgate_state_restored_subscribers")
	require.False(t, ok, "a longer name is another metric")

	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1998947: "1,998,947", -20000: "-20,000", 100000: "100,000"} {
		require.Equal(t, want, commas(n))
	}
	for v, want := range map[float64]string{0: "0", 0.30000000000000004: "0.3", 500: "500", 5000: "5k", 250000: "250k", 1.5e6: "1.5M", 2e6: "2M"} {
		require.Equal(t, want, tickLabel(v))
	}
}

// scaleFixture is a report as RunScale makes it: capsgate and both Redis
// runs at two entry counts, the Redis AOF run at 2 M not back in time.
func scaleFixture() ScaleReport {
	rep := ScaleReport{CommandLine: "capsbench scale --entries 1000000,2000000", CPUs: 2,
		Started: time.Date(2026, 12, 5, 9, 18, 0, 0, time.UTC), RedisVersion: "7.0.15", Entries: []int{1_000_000, 2_000_000}}
	for _, n := range rep.Entries {
		scale := float64(n) / 1e6
		for i, target := range []string{ScaleCapsgate, ScaleRedisAOF, ScaleRedis} {
			held := int64(n) - int64(i)
			r := ScaleRun{Target: target, Label: target + " row", Entries: n, Persistent: target != ScaleRedis,
				Phases: []ScalePhase{
					{Command: "A", Requests: n / 2, PerSec: 396354.4 - float64(i)*1e5},
					{Command: "B", Requests: n / 2, PerSec: 368053.6 - float64(i)*1e5},
				},
				RSSBefore: 30e6, RSSAfter: 30e6 + 124*held, Held: held, BytesPerEntry: 124,
				Probe: ProbeSummary{Probes: 100, P99Ms: 17.34, WorstMs: 18.2, LongestGapMs: 67.8},
				Restart: ScaleRestart{FirstAnswerS: 1.7 * scale * float64(3-i) / 3, AllBackS: 1.7 * scale, Back: held,
					ReadyS: 1.75 * scale, RestoreSeconds: 0.435 * scale, Restored: held},
			}
			if target == ScaleRedis {
				r.Restart.AllBackS, r.Restart.Back = 0, 0
			}
			if target == ScaleRedisAOF && n == 2_000_000 {
				r.Restart.Back, r.Restart.Failure = 1_500_000, "1500000 of 1999999 entries back after 2m0s"
			}
			for k := range 5 {
				r.Probes = append(r.Probes, ProbeSample{AtS: float64(k) * 0.05, Ms: float64(k + i)})
				r.Samples = append(r.Samples, ScaleSample{AtS: float64(k) * 0.25, RSS: 30e6 + int64(k)*124*held/4, Held: int64(k) * held / 4})
			}
			rep.Runs = append(rep.Runs, r)
		}
	}
	return rep
}

func TestScaleMarkdown(t *testing.T) {
	md := ScaleMarkdown(scaleFixture())
	require.Contains(t, md, "Produced by `capsbench scale --entries 1000000,2000000` on a machine with 2 cores, 2026-12-05 09:18 UTC.")
	require.Contains(t, md, "sends `PING` every 50 ms")
	require.Contains(t, md, "are read every 250 ms. 1 s after the load")
	require.Contains(t, md, "\n| 2 cores | entries | first phase | second phase | bytes per entry (RSS growth) | `PING` p99 / worst during the load "+
		"| longest gap between answers | `kill -9` to first answer | to all back | entries back |\n"+
		"|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"+
		"| capsgate row | 1,000,000 | 396,354/s | 368,054/s | 124 | 17.3 / 18 ms | 68 ms | 1.70 s | 1.70 s | 1,000,000 of 1,000,000 |\n"+
		"| redis-aof row | 1,000,000 | 296,354/s | 268,054/s | 124 | 17.3 / 18 ms | 68 ms | 1.13 s | 1.70 s | 999,999 of 999,999 |\n"+
		"| redis row | 1,000,000 | 196,354/s | 168,054/s | 124 | 17.3 / 18 ms | 68 ms | 0.57 s | – | 0 of 999,998 |\n"+
		"| capsgate row | 2,000,000 | 396,354/s | 368,054/s | 124 | 17.3 / 18 ms | 68 ms | 3.40 s | 3.40 s | 2,000,000 of 2,000,000 |\n"+
		"| redis-aof row | 2,000,000 | 296,354/s | 268,054/s | 124 | 17.3 / 18 ms | 68 ms | 2.27 s | **not within 2m0s** | 1,500,000 of 1,999,999 |\n"+
		"| redis row | 2,000,000 | 196,354/s | 168,054/s | 124 | 17.3 / 18 ms | 68 ms | 1.13 s | – | 0 of 1,999,998 |\n")
	require.Contains(t, md, "| entries | `/readyz` ready after | `capsgate_state_restore_seconds` | restored (sessions + subscribers gauges) |\n"+
		"|---:|---:|---:|---:|\n| 1,000,000 | 1.75 s | 0.435 s | 1,000,000 |\n| 2,000,000 | 3.50 s | 0.870 s | 2,000,000 |\n")
	require.Contains(t, md, "**Restarts that did not come back:**\n\n- redis-aof at 2,000,000 entries: 1500000 of 1999999 entries back after 2m0s\n")
	for _, f := range []string{ScaleMemorySVGFile, ScaleLatencySVGFile, ScaleRestartSVGFile} {
		require.Contains(t, md, "]("+f+")")
	}
	require.EqualError(t, scaleFixture().Err(), "redis-aof at 2000000 entries: 1500000 of 1999999 entries back after 2m0s")
}

// Each plot draws one path per target, with the target in the legend;
// the load plots from the largest runs.
func TestScaleSVGs(t *testing.T) {
	rep := scaleFixture()
	for name, svg := range map[string]string{
		"memory": scaleMemorySVG(rep), "latency": scaleLatencySVG(rep), "restart": scaleRestartSVG(rep),
	} {
		require.True(t, strings.HasPrefix(svg, "<svg ") && strings.HasSuffix(svg, "</svg>\n"), name)
		require.Equal(t, 3, strings.Count(svg, "<path "), name)
		for _, target := range []string{ScaleCapsgate, ScaleRedisAOF, ScaleRedis} {
			require.Contains(t, svg, `stroke="`+scaleColors[target]+`"`, name)
			require.Contains(t, svg, ">"+scaleLegend(target)+"</text>", name)
		}
	}
	require.Contains(t, scaleMemorySVG(rep), "(2,000,000-entry runs)")
	require.Contains(t, scaleLatencySVG(rep), "PING every 50 ms during the load (2,000,000-entry runs)")
	// The restart plot: a point per entry count and target, in order.
	restart := scaleRestartSVG(rep)
	require.Equal(t, 6, strings.Count(restart, `<rect x=`))
	require.Contains(t, restart, ">2M</text>")

	// No runs (every run failed to start): axes and nothing on them.
	empty := scaleRestartSVG(ScaleReport{})
	require.Zero(t, strings.Count(empty, "<path "))

	dir := t.TempDir()
	require.NoError(t, WriteScale(rep, dir))
	for _, f := range []string{ScaleJSONFile, ScaleMarkdownFile, ScaleMemorySVGFile, ScaleLatencySVGFile, ScaleRestartSVGFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		require.Positive(t, st.Size(), f)
	}
}

// needScaleTools skips without redis-benchmark and redis-server, except
// under CI, which installs them.
func needScaleTools(t *testing.T) {
	t.Helper()
	var missing []string
	if _, err := exec.LookPath("redis-benchmark"); err != nil {
		missing = append(missing, "redis-benchmark")
	}
	if !RedisInstalled() {
		missing = append(missing, "redis-server")
	}
	if len(missing) == 0 {
		return
	}
	msg := "capsbench scale needs " + strings.Join(missing, " and ") + " (Debian: apt-get install redis-server redis-tools)"
	if os.Getenv("CI") == "true" {
		t.Fatal("CI must install them: " + msg)
	}
	t.Skip(msg)
}

// The whole scenario against real processes, small: capsgate and both
// Redis runs at 20,000 entries, every entry back where it should be, the
// report written, and nothing left running.
func TestScaleEndToEnd(t *testing.T) {
	needScaleTools(t)
	bin, err := farm.BuildOnce()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var log strings.Builder
	o := ScaleOptions{Entries: []int{20000}, Redis: true, Bin: filepath.Dir(bin.Capsgate), Out: t.TempDir(),
		CommandLine: "capsbench scale --entries 20000"}
	start := time.Now()
	rep, err := RunScale(ctx, o, &log)
	require.NoError(t, err, log.String())
	t.Logf("in %.1f s:\n%s\n%s", time.Since(start).Seconds(), log.String(), ScaleTable(rep))
	require.NoError(t, rep.Err())
	require.Empty(t, scaleChildren(t), "everything RunScale started is gone")

	require.Positive(t, rep.CPUs)
	require.NotEmpty(t, rep.RedisVersion)
	require.Len(t, rep.Runs, 3)
	for i, target := range []string{ScaleCapsgate, ScaleRedisAOF, ScaleRedis} {
		r := rep.Runs[i]
		require.Equal(t, target, r.Target)
		require.Equal(t, 20000, r.Entries)
		require.Len(t, r.Phases, 2)
		for _, p := range r.Phases {
			require.Equal(t, 10000, p.Requests)
			require.Positive(t, p.PerSec, "%+v", p)
		}
		require.InDelta(t, 20000, r.Held, 10, "random keys from 1e9: a repeat is rare")
		require.Positive(t, r.RSSAfter-r.RSSBefore, target)
		require.Positive(t, r.BytesPerEntry, target)
		require.NotEmpty(t, r.Probes, target)
		require.Equal(t, len(r.Probes), r.Probe.Probes)
		require.GreaterOrEqual(t, len(r.Samples), 2, "one before the load, one after")
		require.Equal(t, r.Held, r.Samples[len(r.Samples)-1].Held)
		require.Positive(t, r.Restart.FirstAnswerS, target)
		require.Less(t, r.Restart.FirstAnswerS, 30.0, target)
		if r.Persistent {
			require.Equal(t, r.Held, r.Restart.Back, target)
			require.GreaterOrEqual(t, r.Restart.AllBackS, r.Restart.FirstAnswerS, target)
		} else {
			require.Zero(t, r.Restart.Back, "Redis without persistence keeps nothing")
		}
	}
	cg := rep.Runs[0].Restart
	require.Positive(t, cg.ReadyS, "/readyz answered 200")
	require.Positive(t, cg.RestoreSeconds)
	require.Equal(t, rep.Runs[0].Held, cg.Restored)

	require.NoError(t, WriteScale(rep, o.Out))
	md, err := os.ReadFile(filepath.Join(o.Out, ScaleMarkdownFile))
	require.NoError(t, err)
	require.Contains(t, string(md), "| capsgate (`REGISTER`, then `ADMIT ... CALL`; journal) | 20,000 |")
	require.Contains(t, string(md), "| Redis "+rep.RedisVersion+" (`SET ... EX`, twice; no persistence) | 20,000 |")
}

// scaleChildren lists this process's children that RunScale starts.
func scaleChildren(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("/proc/self/task/*/children")
	require.NoError(t, err)
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread has ended
		}
		for pid := range strings.FieldsSeq(string(b)) {
			comm, err := os.ReadFile("/proc/" + pid + "/comm")
			if err != nil {
				continue // reaped meanwhile
			}
			name := strings.TrimSpace(string(comm))
			if strings.HasPrefix(name, "capsgate") || strings.HasPrefix(name, "redis-") {
				out = append(out, pid+" "+name)
			}
		}
	}
	return out
}
