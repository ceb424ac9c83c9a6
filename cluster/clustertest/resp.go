package clustertest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"
)

// Do sends one RESP command to the node and returns its reply: a string
// (simple or bulk), an int64, a []any, nil, or an error for an error reply
// ("-ERR ..."), a closed connection or a second's silence.
func (n *Node) Do(args ...string) (any, error) {
	conn, err := net.DialTimeout("tcp", n.RESPAddr, time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write(encodeCommand(args)); err != nil {
		return nil, err
	}
	v, err := readReply(bufio.NewReader(conn))
	if e, ok := v.(respError); ok {
		return nil, fmt.Errorf("%s: %s", n.Name, string(e))
	}
	return v, err
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

// encodeCommand is args as a RESP array of bulk strings.
func encodeCommand(args []string) []byte {
	frame := []byte("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		frame = append(frame, "$"+strconv.Itoa(len(a))+"\r\n"+a+"\r\n"...)
	}
	return frame
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
	r *bufio.Reader
}

// Dial opens a connection to the node's RESP front end.
func (n *Node) Dial() (*Conn, error) {
	c, err := net.DialTimeout("tcp", n.RESPAddr, time.Second)
	if err != nil {
		return nil, err
	}
	return &Conn{c: c, r: bufio.NewReader(c)}, nil
}

// Do sends one command and reads its reply, as Node.Do.
func (c *Conn) Do(args ...string) (any, error) {
	_ = c.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.c.Write(encodeCommand(args)); err != nil {
		return nil, err
	}
	v, err := readReply(c.r)
	if e, ok := v.(respError); ok {
		return nil, fmt.Errorf("%s", string(e))
	}
	return v, err
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
func Seconds(t testing.TB, env string, def time.Duration) time.Duration {
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

// respError is a RESP error reply.
type respError string

func (e respError) String() string { return "-" + string(e) }

// maxBulk bounds a bulk reply Paced will read; decisions are tiny.
const maxBulk = 1 << 20

// readReply reads one RESP2 reply: a string (simple or bulk), a respError,
// an int64, nil, or an []any of those.
func readReply(r *bufio.Reader) (any, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("bad reply line %q", line)
	}
	kind, body := line[0], string(line[1:len(line)-2])
	switch kind {
	case '+':
		return body, nil
	case '-':
		return respError(body), nil
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$', '*':
		n, err := strconv.Atoi(body)
		if err != nil || n > maxBulk {
			return nil, fmt.Errorf("bad reply length %q", line)
		}
		if n < 0 {
			return nil, nil
		}
		if kind == '$' {
			b := make([]byte, n+2)
			if _, err := io.ReadFull(r, b); err != nil {
				return nil, err
			}
			return string(b[:n]), nil
		}
		a := make([]any, n)
		for i := range a {
			if a[i], err = readReply(r); err != nil {
				return nil, err
			}
		}
		return a, nil
	}
	return nil, fmt.Errorf("bad reply type %q", line)
}
