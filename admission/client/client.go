package client

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"
)

// Config configures a Client.
type Config struct {
	// Addr is the server's host:port (capsgate's RESP port is 6390).
	Addr string
	// PoolSize bounds the open connections; a caller beyond it waits for
	// one to come back. 0 means 4 per CPU: a call holds a connection for
	// one round trip, so a few per core keep the cores busy.
	PoolSize int
	// Timeout bounds a call whose context has no deadline; 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// Password, when set, is sent with AUTH on every new connection, as
	// User's when User is set (AUTH user password).
	Password string
	User     string
}

// Client is a pool of connections to one server, safe for concurrent use.
// Each call takes a connection, runs its command and gives it back;
// Pipeline batches many commands on one connection.
type Client struct {
	cfg  Config
	idle chan *Conn    // connections ready for use
	slot chan struct{} // one token per open connection, PoolSize in all

	mu     sync.Mutex // guards closed
	closed bool
}

// New returns a client for cfg.Addr and checks that it answers by dialling
// the first connection.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Addr == "" {
		return nil, errors.New("cannot make a client: Config.Addr is empty")
	}
	if cfg.PoolSize <= 0 {
		cfg.PoolSize = 4 * runtime.GOMAXPROCS(0)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	c := &Client{cfg: cfg, idle: make(chan *Conn, cfg.PoolSize), slot: make(chan struct{}, cfg.PoolSize)}
	conn, err := c.Get(ctx)
	if err != nil {
		return nil, err
	}
	c.Put(conn)
	return c, nil
}

// Get takes a connection from the pool, dialling one when none is idle and
// the pool is not full, else waiting for one until ctx ends. Give it back
// with Put.
func (c *Client) Get(ctx context.Context) (*Conn, error) {
	for {
		select {
		case conn := <-c.idle:
			return conn, nil
		default:
		}
		select {
		case conn := <-c.idle:
			return conn, nil
		case c.slot <- struct{}{}:
			if c.isClosed() {
				<-c.slot
				return nil, ErrClosed
			}
			conn, err := Dial(ctx, c.cfg.Addr)
			if err != nil {
				<-c.slot
				return nil, err
			}
			conn.SetTimeout(c.cfg.Timeout)
			if c.cfg.Password != "" {
				if err := conn.auth(ctx, c.cfg.User, c.cfg.Password); err != nil {
					_ = conn.Close()
					<-c.slot
					return nil, err
				}
			}
			return conn, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("cannot get a connection to %s: %w: %w", c.cfg.Addr, ErrPoolBusy, ctx.Err())
		}
	}
}

// Put gives back a connection from Get; a broken one is closed and its
// place freed.
func (c *Client) Put(conn *Conn) {
	conn.one.Reset()
	if conn.err != nil || c.isClosed() {
		_ = conn.Close()
		<-c.slot
		return
	}
	c.idle <- conn // never blocks: at most PoolSize connections exist
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Close closes the idle connections; those in use close when Put back.
// It is safe to call twice.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	for {
		select {
		case conn := <-c.idle:
			_ = conn.Close()
			<-c.slot
		default:
			return nil
		}
	}
}

// Do sends one command and returns its reply (see Conn.Do).
func (c *Client) Do(ctx context.Context, args ...[]byte) (Reply, error) {
	conn, err := c.Get(ctx)
	if err != nil {
		return Reply{}, err
	}
	defer c.Put(conn)
	return conn.Do(ctx, args...)
}

// Admit asks whether a call attempt for service may go ahead (ADMIT).
func (c *Client) Admit(ctx context.Context, service string, opts AdmitOptions) (Decision, error) {
	conn, err := c.Get(ctx)
	if err != nil {
		return Decision{}, err
	}
	defer c.Put(conn)
	return conn.Admit(ctx, service, opts)
}

// Release ends a call's session (RELEASE); see Conn.Release.
func (c *Client) Release(ctx context.Context, service, callID string, seconds int64) (bool, error) {
	conn, err := c.Get(ctx)
	if err != nil {
		return false, err
	}
	defer c.Put(conn)
	return conn.Release(ctx, service, callID, seconds)
}

// Register registers a subscriber (REGISTER); see Conn.Register.
func (c *Client) Register(ctx context.Context, service, subscriber string, ttl time.Duration) (Decision, error) {
	conn, err := c.Get(ctx)
	if err != nil {
		return Decision{}, err
	}
	defer c.Put(conn)
	return conn.Register(ctx, service, subscriber, ttl)
}

// Deregister removes a subscriber (DEREGISTER).
func (c *Client) Deregister(ctx context.Context, service, subscriber string) (bool, error) {
	conn, err := c.Get(ctx)
	if err != nil {
		return false, err
	}
	defer c.Put(conn)
	return conn.Deregister(ctx, service, subscriber)
}

// Consume charges tokens (CONSUME); see Conn.Consume.
func (c *Client) Consume(ctx context.Context, service, account string, units int64, id string) (Decision, error) {
	conn, err := c.Get(ctx)
	if err != nil {
		return Decision{}, err
	}
	defer c.Put(conn)
	return conn.Consume(ctx, service, account, units, id)
}

// Quota returns a service's QUOTA fields.
func (c *Client) Quota(ctx context.Context, service string) (map[string]string, error) {
	conn, err := c.Get(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Put(conn)
	return conn.Quota(ctx, service)
}

// Pipeline runs fill's commands on one pooled connection in one round
// trip and passes their replies to read (valid only during read).
func (c *Client) Pipeline(ctx context.Context, fill func(*Pipeline), read func([]Reply) error) error {
	conn, err := c.Get(ctx)
	if err != nil {
		return err
	}
	defer c.Put(conn)
	p := &conn.one
	p.Reset()
	fill(p)
	if err := p.Exec(ctx); err != nil {
		return err
	}
	return read(p.replies)
}
