// Package loopback finds free loopback ports for the processes and
// memberlist nodes that tests and capsbench start.
package loopback

import (
	"fmt"
	"io"
	"net"
)

// FreeAddrs reserves n distinct loopback addresses whose TCP and UDP ports
// are both free (gossip binds both), then releases them for the processes.
func FreeAddrs(n int) ([]string, error) {
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	var addrs []string
	for tries := 0; len(addrs) < n; tries++ {
		if tries == 100*n {
			return nil, fmt.Errorf("cannot find %d free loopback ports for TCP and UDP", n)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("cannot reserve a loopback port: %w", err)
		}
		held = append(held, l)
		u, err := net.ListenPacket("udp", l.Addr().String())
		if err != nil {
			continue // the UDP port is taken; keep the TCP one held and try another
		}
		held = append(held, u)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}
