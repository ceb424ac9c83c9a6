// Package node wires a capsgate node together: configuration, the admission
// engine, the RESP front end, the admin HTTP API and their lifecycle.
package node
