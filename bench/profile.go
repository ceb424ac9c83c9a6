package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime/pprof"
	"strings"
	"time"
)

// StartCPUProfile starts this process's CPU profile into path; stop ends
// it and closes the file.
func StartCPUProfile(path string) (stop func() error, err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cannot write the CPU profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("cannot start the CPU profile: %w", err)
	}
	return func() error { pprof.StopCPUProfile(); return f.Close() }, nil
}

// FetchProfile fetches a CPU profile of seconds from a Go server's
// net/http/pprof handler on adminAddr (GET /debug/pprof/profile, with
// token as the bearer token unless it is "") into path.
func FetchProfile(ctx context.Context, adminAddr, token string, seconds int, path string) error {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", adminAddr, seconds)
	ctx, cancel := context.WithTimeout(ctx, time.Duration(seconds)*time.Second+30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cannot fetch a CPU profile: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("cannot fetch a CPU profile: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("cannot fetch a CPU profile: GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	if err := os.WriteFile(path, body, 0o644); err != nil {
		return fmt.Errorf("cannot write the CPU profile: %w", err)
	}
	return nil
}

// ProfileTop returns `go tool pprof -top -nodecount=n path`, or, when go
// is not on PATH or fails, why not and the command that would show it.
func ProfileTop(path string, n int) (top string, ok bool) {
	cmdLine := fmt.Sprintf("go tool pprof -top -nodecount=%d %s", n, path)
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Sprintf("(go is not on PATH: run `%s`)", cmdLine), false
	}
	out, err := exec.Command(goBin, "tool", "pprof", "-top", fmt.Sprintf("-nodecount=%d", n), path).Output()
	if err != nil {
		return fmt.Sprintf("(`%s` failed: %v)", cmdLine, err), false
	}
	// Drop the header lines that name the file and the build.
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	var keep []string
	for _, l := range lines {
		if strings.HasPrefix(l, "File: ") || strings.HasPrefix(l, "Build ID: ") || strings.HasPrefix(l, "Time: ") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n"), true
}
