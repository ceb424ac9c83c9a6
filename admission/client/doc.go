// Package client is a Go client for capsgate's RESP2 front end, built on
// cloudwego/netpoll's zero-copy connections: commands are encoded straight
// into netpoll's output buffer and replies are parsed in its input buffer.
//
// A Client is a pool of connections for concurrent callers, with typed
// helpers for the admission commands:
//
//	c, err := client.New(ctx, client.Config{Addr: "127.0.0.1:6390"})
//	...
//	d, err := c.Admit(ctx, "voice", client.AdmitOptions{Call: callID})
//	if err != nil { ... }          // I/O, deadline, or a *ServerError with the server's text
//	if !d.Admitted { reject(d.Reason, d.RetryAfterMs) }
//	...
//	c.Release(ctx, "voice", callID, seconds)
//
// A Pipeline puts many commands in flight on one connection and reads
// their replies in order; reused batch after batch it allocates nothing,
// which is what capsbench's load loops rely on:
//
//	conn, _ := client.Dial(ctx, addr)
//	p := conn.Pipeline()
//	frame := client.AppendCommand(nil, "ADMIT", "voice")
//	for {
//		for range 64 {
//			p.AppendFrame(frame, 1)
//		}
//		if err := p.Exec(ctx); err != nil { ... }
//		for i := range p.Len() { d, _ := p.Reply(i).Decision(); ... }
//	}
//
// Conn.Split gives an open-loop generator a sending and a receiving side
// on one connection. A ReplyReader parses replies, with the same parser
// and bounds, from a connection dialled some other way (from inside a
// network namespace, as the test harness does), fed commands made with
// AppendCommand.
//
// Deadlines: a call's context deadline bounds it (else Config.Timeout or
// DefaultTimeout); a context cancelled mid-call closes that connection.
// Any I/O or protocol error breaks a connection for good — the pool then
// dials a new one — while a RESP error reply is a *ServerError and leaves
// the connection in use. The reply parser bounds what a server can make it
// allocate (MaxBulk, MaxArray, MaxDepth).
package client
