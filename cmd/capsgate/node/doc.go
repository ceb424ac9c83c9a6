// Package node wires a capsgate node together: configuration, the admission
// engine, the RESP front end, licensing, the cluster, metering, the admin
// HTTP API and their lifecycle. It is the top of the import layers (README,
// Architecture): it imports what it wires, and nothing imports it but the
// capsgate command (and tests).
//
// Files by concept: the configuration's schema and defaults (config.go,
// each default taken from the package that uses it), its flags
// (flags.go), its file (configfile.go), its validation (validate.go) and
// the secret files it names (secrets.go); the node's lifecycle (node.go);
// its background work as step functions in one table (background.go);
// the admin API (admin.go, licenses.go, usage.go, export.go) and metrics
// (metrics.go, exposition.go); --dev (dev.go).
package node
