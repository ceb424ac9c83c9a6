//go:build race

package ledger

// raceEnabled: the race detector slows Ed25519 about tenfold, so the
// exhaustive tests sample under -race (the plain run is exhaustive).
const raceEnabled = true
