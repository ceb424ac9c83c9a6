package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/capsgate/capsgate/admission/client"
	"github.com/capsgate/capsgate/cmd/capsgate/node"
)

// exampleNode starts an in-process `capsgate --dev` on loopback ports the
// system picks; its service demo has 1000 CAPS and a burst of 100.
func exampleNode() (addr string, stop func()) {
	dir, _ := os.MkdirTemp("", "client-example-")
	cfg, err := node.Load([]string{"--dev", "--resp-addr", freeAddr(), "--admin-addr", freeAddr(),
		"--gossip-addr", freeAddr(), "--data-dir", filepath.Join(dir, "data")}, io.Discard)
	if err != nil {
		panic(err)
	}
	n, err := node.New(cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		err = n.Start()
	}
	if err != nil {
		panic(err)
	}
	return n.RESPAddr(), func() { _ = n.Stop(context.Background()); _ = os.RemoveAll(dir) }
}

// freeAddr returns a loopback address whose TCP and UDP ports are free
// (gossip takes both).
func freeAddr() string {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		u, err := net.ListenPacket("udp", l.Addr().String())
		l.Close()
		if err == nil {
			u.Close()
			return l.Addr().String()
		}
	}
}

func Example() {
	addr, stop := exampleNode()
	defer stop()
	ctx := context.Background()

	c, err := client.New(ctx, client.Config{Addr: addr})
	if err != nil {
		panic(err)
	}
	defer c.Close()

	d, err := c.Admit(ctx, "demo", client.AdmitOptions{Call: "call-1"})
	fmt.Println(d.Admitted, d.Reason, err)
	released, err := c.Release(ctx, "demo", "call-1", 0)
	fmt.Println(released, err)
	released, err = c.Release(ctx, "demo", "call-1", 0)
	fmt.Println(released, err)
	_, err = c.Admit(ctx, "no such service!", client.AdmitOptions{})
	fmt.Println(err)
	// Output:
	// true OK <nil>
	// true <nil>
	// false <nil>
	// ERR invalid service name
}

func ExamplePipeline() {
	addr, stop := exampleNode()
	defer stop()
	ctx := context.Background()

	conn, err := client.Dial(ctx, addr)
	if err != nil {
		panic(err)
	}
	defer conn.Close()

	// 150 ADMITs in one write: the burst of 100 passes, most of the rest
	// find the bucket empty.
	p := conn.Pipeline()
	frame := client.AppendCommand(nil, "ADMIT", "demo")
	for range 150 {
		p.AppendFrame(frame, 1)
	}
	if err := p.Exec(ctx); err != nil {
		panic(err)
	}
	reasons := map[string]int{}
	for i := range p.Len() {
		d, err := p.Reply(i).Decision()
		if err != nil {
			panic(err)
		}
		reasons[d.Reason]++
	}
	fmt.Println(p.Len(), reasons["OK"] >= 100, reasons["OK"]+reasons["CAPS"])
	// Output: 150 true 150
}
