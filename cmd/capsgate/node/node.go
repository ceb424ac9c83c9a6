package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/bounded"
	"github.com/capsgate/capsgate/admission/cell"
	"github.com/capsgate/capsgate/admission/idstore"
	"github.com/capsgate/capsgate/admission/journal"
	"github.com/capsgate/capsgate/admission/meter"
	"github.com/capsgate/capsgate/admission/resp"
	"github.com/capsgate/capsgate/cluster"
	"github.com/capsgate/capsgate/cluster/trunks"
	"github.com/capsgate/capsgate/licensing"
	"github.com/capsgate/capsgate/licensing/ledger"
	"github.com/capsgate/capsgate/licensing/registry"
)

// DevService is the service that --dev licenses.
const DevService = "demo"

// Node is one running capsgate: engine, RESP front end, admin API.
type Node struct {
	cfg Config
	log *slog.Logger
	clk *admission.SystemClock
	eng *admission.Engine

	// renders holds a slot for each /metrics exposition being rendered
	// (metricsRenders), and rendered the last one's size.
	renders  chan struct{}
	rendered atomic.Int64

	resp    *resp.Server
	handler *resp.Handler
	// cells are CL.THROTTLE's keys (throttle.go); nil: disabled.
	cells  *cell.Table
	reg    *registry.Registry
	shares *cluster.Shares
	// respPassword is resp.password_file's password ("": none).
	respPassword string
	cluster      *cluster.Cluster
	admin        *http.Server
	adminLn      net.Listener

	adminToken string       // for asking peers' admin APIs (GET /v1/usage)
	peerHTTP   *http.Client // the client for them

	reserveWake <-chan struct{}
	// idsKick asks stepIDs for a commit now (a client waits for one).
	idsKick chan struct{}
	// What the background steps keep between runs (background.go), each
	// touched by its own task only.
	meterNext, meterSampled time.Time
	reserveFailing          bool
	reserveRetry            time.Time
	// stepped: Start runs no background task; a test calls the steps.
	stepped bool

	ledger *ledger.Ledger
	// ledgerBroken is what the background check of the ledger's earlier
	// segments found wrong (nil: nothing yet): usage summaries and exports
	// are refused while it is set (verifyLedgerHistory).
	ledgerBroken atomic.Pointer[error]
	reserver     *meter.Reserver
	meter        *meter.Meter
	journal      *journal.Journal // open sessions and registrations, across restarts
	trunks       *trunks.Book     // the keys' limits (ADMIT ... TRUNK)
	ids          *idstore.Store   // CONSUME ID keys for the idempotency window

	ready atomic.Bool
	stop  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

// New builds a node from a validated configuration. It listens on nothing
// until Start.
func New(cfg Config, log *slog.Logger) (*Node, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create data_dir %s (--data-dir): %w", cfg.DataDir, err)
	}
	clk := admission.NewSystemClock()
	wake := make(chan struct{}, 1)
	ids, err := idstore.Open(idstore.Config{Dir: filepath.Join(cfg.DataDir, idstore.Dir), Clock: clk, Log: log})
	if err != nil {
		return nil, err
	}
	var n *Node
	// A charge its pool's reservation does not cover waits for the next
	// (n.reserver is set before the node serves).
	await := func() bool { return n.reserver != nil && n.reserver.Await() }
	eng := admission.NewEngine(admission.Config{
		Burst:                cfg.Admission.Burst.Duration,
		SessionTTL:           cfg.Admission.SessionTTL.Duration,
		SubscriberTTL:        cfg.Admission.SubscriberTTL.Duration,
		IdempotencyWindow:    cfg.Admission.IdempotencyWindow.Duration,
		HighHeadroomPercent:  cfg.Priority.HighHeadroomPercent,
		MaxEmergencySessions: cfg.Priority.MaxEmergencySessions,
		MaxCAPS:              cfg.Node.MaxCAPS,
		Clock:                clk,
		DurableTokens:        true,
		ReserveWake:          wake,
		AwaitReserve:         await,
		JournalState:         true,
		Keys:                 ids,
	})
	var password string
	if cfg.RESP.PasswordFile != "" {
		p, err := ReadSecretFile("resp.password_file", cfg.RESP.PasswordFile)
		if err != nil {
			return nil, err
		}
		password = p
	}
	n = &Node{cfg: cfg, log: log, clk: clk, eng: eng, reserveWake: wake, peerHTTP: &http.Client{Timeout: 5 * time.Second, CheckRedirect: noRedirect}, shares: cluster.NewShares(eng), stop: make(chan struct{})}
	n.ids = ids
	n.idsKick = make(chan struct{}, 1)
	n.respPassword = password
	if len(cfg.Join) > 0 {
		// A node that joins a farm enforces no licence before its first
		// plan: the licences on its disk are the farm's, held by the others.
		n.shares.AwaitPlan()
	}
	n.handler = resp.NewHandler(eng, password)
	n.handler.SetCommitKick(func() {
		select {
		case n.idsKick <- struct{}{}:
		default:
		}
	})
	n.resp = resp.NewServer(resp.Config{
		Addr:        cfg.RESP.Addr,
		MaxConns:    cfg.RESP.MaxConns,
		IdleTimeout: cfg.RESP.IdleTimeout.Duration,
		EventLoops:  cfg.RESP.EventLoops,
		Logger:      log,
	}, n.handler, clk)
	n.handler.SetClientLister(n.resp)
	n.setThrottle()
	var devKey *licensing.VendorKey
	if cfg.Dev {
		var err error
		if devKey, err = devVendorKey(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	keys, err := loadVendorKeys(cfg.VendorKeys, devKey)
	if err != nil {
		return nil, err
	}
	n.reg, err = registry.Open(registry.Config{
		Dir:            filepath.Join(cfg.DataDir, "licenses"),
		ClusterID:      cfg.ClusterID,
		Keys:           keys,
		ClockTolerance: cfg.Licensing.ClockTolerance.Duration,
		Wall:           wallClock(),
		Sink:           n.shares,
		Log:            log,
	})
	if err != nil {
		return nil, err
	}
	if cfg.Dev {
		if err := loadDevLicense(n.reg, devKey); err != nil {
			return nil, err
		}
	}
	if err := n.openTrunks(); err != nil {
		n.reg.Close()
		return nil, err
	}
	if err := n.openMetering(); err != nil {
		n.trunks.Close()
		n.reg.Close()
		return nil, err
	}
	return n, nil
}

// openMetering opens the usage ledger (with the node key, made on first
// start) and the token reservations, and gives the engine back the tokens
// charged before a restart.
func (n *Node) openMetering() error {
	key, err := ledger.LoadOrCreateNodeKey(n.cfg.DataDir)
	if err != nil {
		return err
	}
	n.ledger, err = ledger.Open(ledger.Options{Dir: filepath.Join(n.cfg.DataDir, "ledger"), Node: n.cfg.NodeName,
		Cluster: n.cfg.ClusterID, Key: key, Logger: n.log, Genesis: true})
	if err != nil {
		return err
	}
	if rec := n.ledger.Recovered(); rec != nil {
		n.log.Warn("the ledger's last record was torn by a crash and cut off; the chain continues from the one before", "recovery", rec.String())
	}
	n.reserver, err = meter.OpenReserver(n.eng, n.cfg.DataDir, n.log)
	if err != nil {
		n.ledger.Close()
		return err
	}
	n.reserver.Restore()
	n.applyConfigPools()
	if err := n.reserver.Step(time.Now()); err != nil {
		n.ledger.Close()
		return err
	}
	n.meter, err = meter.New(n.eng, n.ledger, n.reserver, n.witnesses, time.Now())
	if err != nil {
		n.ledger.Close()
		return err
	}
	// Sessions and registrations come back after the accounts they charge.
	restoring := time.Now()
	n.journal, err = journal.Open(journal.Config{Dir: filepath.Join(n.cfg.DataDir, journal.Dir),
		Engine: n.eng, Clock: n.clk, Log: n.log})
	if err != nil {
		n.ledger.Close()
		return err
	}
	if rec := n.journal.Recovered(); rec.Sessions+rec.Subscribers > 0 || rec.Torn != "" {
		n.log.Info("open sessions and registrations restored", "sessions", rec.Sessions, "subscribers", rec.Subscribers,
			"journal_records", rec.Records, "torn_bytes_cut", rec.Cut, "seconds", time.Since(restoring).Seconds())
	}
	return nil
}

// witnesses are the peers' ledger heads to write into this node's ledger.
func (n *Node) witnesses() []ledger.Witness {
	if n.cluster == nil {
		return nil
	}
	return n.cluster.Witnesses()
}

// Registry returns the node's loaded licences.
func (n *Node) Registry() *registry.Registry { return n.reg }

// Engine returns the node's admission engine.
func (n *Node) Engine() *admission.Engine { return n.eng }

// RESPAddr returns the address the RESP front end listens on.
func (n *Node) RESPAddr() string { return n.resp.Addr() }

// AdminAddr returns the address the admin HTTP API listens on.
func (n *Node) AdminAddr() string { return n.adminLn.Addr().String() }

// Start opens the admin API and the RESP front end and starts housekeeping.
func (n *Node) Start() error {
	// Read every secret before opening anything.
	token := ""
	if n.cfg.Admin.TokenFile != "" { // --dev too: its flags apply
		var err error
		if token, err = ReadSecretFile("admin.token_file", n.cfg.Admin.TokenFile); err != nil {
			return err
		}
	}
	var gossipKey []byte
	if n.cfg.Gossip.KeyFile != "" {
		var err error
		if gossipKey, err = ReadGossipKey(n.cfg.Gossip.KeyFile); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", n.cfg.Admin.Addr)
	if err != nil {
		return fmt.Errorf("cannot listen for the admin API on %s (admin.addr, --admin-addr): %w", n.cfg.Admin.Addr, err)
	}
	limit := newConnLimit(ln, n.cfg.Admin.MaxConns)
	ln = limit
	scheme := "http"
	if n.cfg.Admin.TLSCertFile != "" {
		tc, err := adminTLS(n.cfg.Admin.TLSCertFile, n.cfg.Admin.TLSKeyFile)
		if err != nil {
			ln.Close()
			return err
		}
		ln, scheme = tls.NewListener(ln, tc), "https"
		n.peerHTTP = peerClient(tc)
	}
	n.adminLn = ln
	// The cluster exists before the RESP front end serves, so every event
	// loop sees the forwarder; it joins once RESP answers.
	policy, err := cluster.ParsePartitionPolicy(n.cfg.Cluster.PartitionPolicy)
	if err != nil {
		ln.Close()
		return err
	}
	n.cluster, err = cluster.New(cluster.Config{
		NodeName: n.cfg.NodeName, BindAddr: n.cfg.Gossip.Addr, Key: gossipKey, Join: n.cfg.Join,
		RESPAddr: n.cfg.RESP.Addr, RESPPassword: n.respPassword, AdminAddr: scheme + "://" + ln.Addr().String(), MaxCAPS: n.cfg.Node.MaxCAPS,
		Engine: n.eng, Clock: n.clk, Shares: n.shares, Licences: n.reg, Log: n.log,
		Policy: cluster.PolicyConfig{Policy: policy, FailOpenFor: n.cfg.Cluster.FailOpenFor.Duration,
			ReclaimAfter: n.cfg.Cluster.ReclaimAfter.Duration},
		LedgerHead:     n.ledger.Head,
		LedgerIdentity: n.ledger.Identity,
		Accounts:       n.reserver,
		Trunks:         n.trunks,
		LastAlive:      n.ids.LastAlive(),
	})
	if err != nil {
		ln.Close()
		return err
	}
	n.handler.SetForwarder(n.cluster)
	n.handler.SetSpiller(n.cluster)
	n.handler.SetRouter(n.cluster)
	if len(gossipKey) > 0 {
		n.handler.SetMemberSecret(cluster.MemberSecret(gossipKey))
	}
	n.handler.SetThrottleRouter(n.cluster)
	err = n.resp.Start()
	if err != nil {
		err = respListenError(n.cfg.RESP.Addr, err)
	}
	if err == nil {
		err = n.cluster.Start()
	}
	if err != nil {
		ln.Close()
		_ = n.cluster.Stop()
		_ = n.resp.Stop(context.Background())
		return err
	}
	n.adminToken = token
	n.admin = &http.Server{
		Handler:           n.adminHandler(token),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    adminMaxHeaderBytes,
		ConnState:         limit.ConnState,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}
	tasks := n.tasks()
	if n.stepped {
		tasks = nil // a test steps them
	}
	n.wg.Add(len(tasks) + 2)
	for _, t := range tasks {
		go n.run(t)
	}
	ledgerHistoryRecords.Set(0)
	ledgerHistoryChecked.Set(0)
	ledgerHistoryBroken.Set(0)
	go n.verifyLedgerHistory()
	go func() {
		defer n.wg.Done()
		if err := n.admin.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("admin API stopped", "err", err)
		}
	}()
	n.ready.Store(true)
	n.log.Info("capsgate started", "node", n.cfg.NodeName, "cluster", n.cfg.ClusterID,
		"resp", n.RESPAddr(), "admin", n.AdminAddr(), "data_dir", n.cfg.DataDir, "dev", n.cfg.Dev)
	return nil
}

// respListenError explains why the RESP front end did not start. gnet
// reports an address in use as "setsockopt: bad file descriptor", so the
// address is bound once with package net, whose error names the cause as
// the admin API's and gossip's do ("bind: address already in use",
// "bind: permission denied"); if that bind succeeds, err is the cause.
func respListenError(addr string, err error) error {
	ln, lerr := net.Listen("tcp", addr)
	if lerr != nil {
		return fmt.Errorf("cannot listen for RESP on %s (resp.addr, --resp-addr): %w", addr, lerr)
	}
	_ = ln.Close()
	return err
}

// verifyLedgerHistory verifies the ledger's segments before the last,
// record by record, with at most ledgerHistoryShare of a core, until done
// or the node stops: the ledger's Open checked only their ends, so that a
// start does not wait for a history of millions of records. A break (or
// a segment that cannot be read) is logged as an error, naming the file,
// line and seq, raises capsgate_ledger_history_broken and has usage
// summaries and exports refused; the node goes on appending to the chain.
func (n *Node) verifyLedgerHistory() {
	defer n.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-n.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	start := time.Now()
	var records int
	err := n.ledger.VerifyHistory(ctx, ledgerHistoryShare, func(done int) {
		records = done
		ledgerHistoryRecords.Set(uint64(done))
	})
	switch {
	case err == nil:
		ledgerHistoryChecked.Set(1)
		if records > 0 {
			n.log.Info("ledger: the earlier segments verify", "records", records, "took", time.Since(start).Round(time.Millisecond))
		}
	case ctx.Err() == nil:
		n.ledgerBroken.Store(&err)
		ledgerHistoryBroken.Set(1)
		n.log.Error("ledger: an earlier segment does not verify (altered, removed or unreadable?); usage summaries and exports are refused, the ledger goes on from its head, and capslicense usage verify names the same record", "err", err)
	}
}

// refuseBrokenLedger answers 503 ledger_broken, and returns true, when the
// background check found the ledger's earlier segments broken: a summary
// or an export would pass on records nothing verified.
func (n *Node) refuseBrokenLedger(w http.ResponseWriter) bool {
	err := n.ledgerBroken.Load()
	if err == nil {
		return false
	}
	writeError(w, http.StatusServiceUnavailable, "ledger_broken",
		"this node's ledger does not verify ("+(*err).Error()+"); restore the segment or move the ledger directory aside, and verify GET /v1/ledger with capslicense usage verify")
	return true
}

// ledgerHistoryShare is the part of a core verifyLedgerHistory may use: a
// record costs about 65 µs (its signature most of it), 2.6 million about
// three minutes of a core, once (a segment verified is only hashed again
// at later starts).
const ledgerHistoryShare = 0.25

// Stop drains the node: it reports not ready, stops accepting, answers
// what it had received, closes the admin API and stops housekeeping. Safe to
// call more than once.
func (n *Node) Stop(ctx context.Context) error {
	var errs []error
	n.once.Do(func() {
		n.ready.Store(false)
		if err := n.resp.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("cannot stop the RESP front end: %w", err))
		}
		if n.admin != nil {
			if err := n.admin.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("cannot stop the admin API: %w", err))
			}
		}
		// The background work ends before the cluster is left: no exchange
		// runs on a memberlist that is shutting down.
		close(n.stop)
		n.wg.Wait()
		if n.cluster != nil {
			// Leaving is a courtesy to the members that stay: what the
			// node owes (ledger, journal, reservations) is flushed below
			// either way. Its one failure, memberlist's leave notice
			// finding no member to carry it (every other one stopping at
			// the same time, or gone), is what the others make of a
			// silent member anyway, so it is a warning and the drain
			// still succeeds (SIGTERM exits 0).
			if err := n.cluster.Stop(); err != nil {
				n.log.Warn("left the cluster without the members hearing of it; they will find this node gone", "err", err)
			}
		}
		if err := n.meter.Flush(time.Now()); err != nil {
			errs = append(errs, fmt.Errorf("cannot flush the ledger: %w", err))
		}
		if err := n.journal.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := n.ids.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := n.reserver.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := n.ledger.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := n.reg.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := n.trunks.Close(); err != nil {
			errs = append(errs, err)
		}
		n.log.Info("capsgate stopped", "node", n.cfg.NodeName)
	})
	return errors.Join(errs...)
}

// adminTLS is the admin API's TLS configuration: the certificate chain and
// key of admin.tls_cert_file and admin.tls_key_file, TLS 1.2 or later.
func adminTLS(certFile, keyFile string) (*tls.Config, error) {
	cert, err := loadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("cannot load admin.tls_cert_file and admin.tls_key_file: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// loadX509KeyPair is tls.LoadX509KeyPair reading each file with
// bounded.ReadFile, so that a device or a FIFO is refused rather than
// read until memory runs out or a writer comes.
func loadX509KeyPair(certFile, keyFile string) (tls.Certificate, error) {
	cert, err := bounded.ReadFile(certFile, bounded.CertFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := bounded.ReadFile(keyFile, bounded.CertFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(cert, key)
}

// peerClient asks the other members' admin APIs over HTTPS, trusting the
// system's roots and every certificate of this node's own chain (members
// of a farm share a CA, or one certificate).
func peerClient(own *tls.Config) *http.Client {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, c := range own.Certificates {
		for _, der := range c.Certificate {
			if cert, err := x509.ParseCertificate(der); err == nil {
				pool.AddCert(cert)
			}
		}
	}
	return &http.Client{Timeout: 5 * time.Second, CheckRedirect: noRedirect,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
}

// noRedirect: a member's admin API is asked at the address it advertised
// (checkPeerAdmin), not wherever it redirects, with the token.
func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
