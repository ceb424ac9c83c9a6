package node

import (
	"fmt"
	"io"
	"log/slog"
	"net"
)

// PrintDevBanner tells a --dev user what is running and how to query it.
func PrintDevBanner(w io.Writer, cfg Config, n *Node) {
	host, port, _ := net.SplitHostPort(n.RESPAddr())
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	auth := "no token needed in --dev"
	if cfg.Admin.TokenFile != "" {
		auth = "bearer token of " + cfg.Admin.TokenFile
	}
	if warn := devAdminWarning(n.AdminAddr(), cfg.Admin.TokenFile != ""); warn != "" {
		n.log.Warn(warn)
		fmt.Fprintf(w, "  WARNING: %s\n", warn)
	}
	fmt.Fprintf(w, `capsgate --dev: node %q, data in %s
  service %q licensed for 1000 CAPS, 500 sessions, 10000 subscribers, 1000000 tokens
  RESP   %s      admin %s (%s)
  licences you issue with %s/%s are trusted here
try:
  redis-cli -h %s -p %s ADMIT %s
  redis-cli -h %s -p %s QUOTA %s
  curl -s http://%s/metrics | grep capsgate_admissions_total
`, cfg.NodeName, cfg.DataDir, DevService, n.RESPAddr(), n.AdminAddr(), auth, cfg.DataDir, DevVendorKeyFile,
		host, port, DevService, host, port, DevService, n.AdminAddr())
}

// LogLevel returns the configured log level for slog.
func (c Config) LogLevel() slog.Level {
	switch c.Log.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// devAdminWarning is what a --dev node says of an admin API it serves
// without a token beyond loopback (--admin-addr 0.0.0.0:...): anyone who
// reaches it may load licences and allocate tokens. "" when there is a
// token or only loopback listens.
func devAdminWarning(adminAddr string, token bool) string {
	host, _, err := net.SplitHostPort(adminAddr)
	if token || err != nil {
		return ""
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		return ""
	}
	return "the admin API listens on " + adminAddr + " without a token: anyone who reaches it may load licences and allocate tokens (give --admin-token-file, or a loopback --admin-addr)"
}
