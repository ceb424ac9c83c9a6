// Command capsgate is the capsgate daemon: the RESP admission front end, the
// admin HTTP API and (in a cluster) gossip. See the README for its flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/capsgate/capsgate/cmd/capsgate/node"
)

// drainTimeout bounds how long SIGTERM waits for replies and flushes.
const drainTimeout = 15 * time.Second

func main() {
	cfg, err := node.Load(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "capsgate:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel()}))
	n, err := node.New(cfg, log)
	if err == nil {
		err = n.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "capsgate:", err)
		os.Exit(1)
	}
	if cfg.Dev {
		node.PrintDevBanner(os.Stdout, cfg, n)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	<-ctx.Done()
	cancel()
	log.Info("draining")
	sctx, scancel := context.WithTimeout(context.Background(), drainTimeout)
	defer scancel()
	if err := n.Stop(sctx); err != nil {
		fmt.Fprintln(os.Stderr, "capsgate:", err)
		os.Exit(1)
	}
	if cfg.Dev && cfg.DataDirIsTemp {
		_ = os.RemoveAll(cfg.DataDir)
	}
}
