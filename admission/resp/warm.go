package resp

import (
	"bytes"

	"github.com/capsgate/capsgate/admission"
)

// A read holding a pipeline of REGISTERs or ADMIT ... CALLs has its keys'
// places in the tables touched first, all at once (Engine.Warm), so that
// their cache misses overlap: at millions of entries nearly every
// command's look-up misses the cache, one after the other when each
// command runs alone. warmAhead commands are looked at ahead; a read
// shorter than warmFrom bytes (one or two commands: nothing to overlap)
// is not.
// A read whose first warmGiveUp commands name no key is left alone.
const (
	warmAhead  = 32
	warmFrom   = 128
	warmGiveUp = 4
)

var callOpt = []byte("CALL")

// warm parses up to warmAhead commands at the head of in and warms the
// keys of the REGISTERs and ADMIT ... CALLs among them, a run of commands
// on one service and table at a time. It only reads, with peek (Parse
// would unescape inline quotes in place, and Handle then parse the
// rewritten bytes): it stops at an inline command with quotes, and leaves
// a malformed command to Handle, which answers it.
func (h *Handler) warm(cs *ConnState, in []byte) {
	var service []byte
	subs := false
	keys := cs.warmKeys[:0]
	flush := func() {
		if len(keys) >= 2 {
			h.eng.Warm(service, subs, keys)
		}
		keys = keys[:0]
	}
	found := false
	for i, off := 0, 0; i < warmAhead && off < len(in); i++ {
		if i == warmGiveUp && !found {
			break // a pipeline of keyless commands (ADMIT without CALL, PING)
		}
		args, used, err := peek(in[off:], cs.warmArgs)
		if err != nil || used == 0 {
			break
		}
		cs.warmArgs = args[:0]
		off += used
		if len(args) < 3 {
			continue
		}
		var nb [16]byte
		var key []byte
		isSub := false
		switch string(lower(&nb, args[0])) {
		case "register":
			key, isSub = args[2], true
		case "admit":
			for j := 2; j+1 < len(args); j += 2 {
				if bytes.EqualFold(args[j], callOpt) {
					key = args[j+1]
					break
				}
			}
		}
		if key == nil {
			continue
		}
		found = true
		if len(keys) > 0 && (isSub != subs || !bytes.Equal(service, args[1])) {
			flush()
		}
		service, subs = args[1], isSub
		keys = append(keys, admission.KeyOf(key))
	}
	flush()
	clear(cs.warmArgs[:cap(cs.warmArgs)])
	cs.warmKeys = keys[:0]
}
