package farm

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/capsgate/capsgate/admission/client"
)

// Do sends one RESP command to the node and returns its reply: a string
// (simple or bulk), an int64, a []any, nil, or an error for an error reply
// ("-ERR ..."), a closed connection or a second's silence.
func (n *Node) Do(args ...string) (any, error) {
	conn, err := n.Dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	v, err := conn.do(time.Second, args)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n.Name, err)
	}
	return v, nil
}

// Decision sends a command answered by a decision (ADMIT, REGISTER,
// CONSUME) and returns whether it was admitted, the reason and remaining.
func (n *Node) Decision(args ...string) (admitted bool, reason string, remaining int64, err error) {
	v, err := n.Do(args...)
	if err != nil {
		return false, "", 0, err
	}
	a, ok := v.([]any)
	if !ok || len(a) != 4 {
		return false, "", 0, fmt.Errorf("%s: %v answered %v, not a decision", n.Name, args, v)
	}
	adm, _ := a[0].(int64)
	reason, _ = a[1].(string)
	remaining, _ = a[3].(int64)
	return adm == 1, reason, remaining, nil
}

// value is a reply as Do returns it; an error reply is a
// *client.ServerError.
func value(r *client.Reply) (any, error) {
	switch {
	case r.Kind == client.Err:
		return nil, r.Err()
	case r.Nil:
		return nil, nil
	case r.Kind == client.Integer:
		return r.Int, nil
	case r.Kind == client.Array:
		a := make([]any, len(r.Elems))
		for i := range r.Elems {
			v, err := value(&r.Elems[i])
			if err != nil {
				return nil, err
			}
			a[i] = v
		}
		return a, nil
	}
	return string(r.Str), nil
}

// GetJSON sends GET path to the node's admin API (with the cluster's
// token) and decodes the JSON answer into v.
func (n *Node) GetJSON(path string, v any) error {
	_, err := n.request("GET", path, nil, v)
	return err
}

// Conn is one RESP connection to a node, for many commands.
type Conn struct {
	c net.Conn
	r *client.ReplyReader
}

// Dial opens a connection to the node's RESP front end (through the
// cluster's dialler: from another network namespace when it is one).
func (n *Node) Dial() (*Conn, error) {
	c, err := DialTimeout(n.dial, n.RESPAddr, time.Second)
	if err != nil {
		return nil, err
	}
	return &Conn{c: c, r: client.NewReplyReader(c)}, nil
}

// Do sends one command and reads its reply, as Node.Do.
func (c *Conn) Do(args ...string) (any, error) { return c.do(5*time.Second, args) }

func (c *Conn) do(timeout time.Duration, args []string) (any, error) {
	_ = c.c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.c.Write(client.AppendCommand(nil, args...)); err != nil {
		return nil, err
	}
	r, err := c.r.Read()
	if err != nil {
		return nil, err
	}
	return value(r)
}

// Close closes the connection.
func (c *Conn) Close() error { return c.c.Close() }

// GetRaw sends GET path to the node's admin API (with the cluster's token)
// and returns the body of a 200 answer as it is.
func (n *Node) GetRaw(path string) ([]byte, error) {
	req, err := http.NewRequest("GET", "http://"+n.AdminAddr+path, nil)
	if err != nil {
		return nil, err
	}
	if n.token != "" {
		req.Header.Set("Authorization", "Bearer "+n.token)
	}
	resp, err := n.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return b, nil
}

// Seconds reads a test's length from the environment variable env (whole
// seconds), def when it is unset; a bad value fails the test.
func Seconds(t TB, env string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(env)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a whole number of seconds above 0", env, v)
	}
	return time.Duration(n) * time.Second
}
