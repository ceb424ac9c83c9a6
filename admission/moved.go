package admission

import "sync/atomic"

// moveMark puts what carries it on a lock-free stack the first time it is
// marked since the stack was last drained, so that a reader of 1,000
// services or 100,000 keys visits only those that moved: the first mark
// is a compare-and-swap, the others only read a flag.
type moveMark[T any] struct {
	marked atomic.Bool
	next   *T
}

// markMoved marks x by m, its mark for the stack at head, pushing it on
// the stack if it was not marked. (One item may carry marks for several
// stacks.)
func markMoved[T any](head *atomic.Pointer[T], x *T, m *moveMark[T]) {
	if m.marked.Load() || !m.marked.CompareAndSwap(false, true) {
		return
	}
	for {
		h := head.Load()
		m.next = h
		if head.CompareAndSwap(h, x) {
			return
		}
	}
}

// drainMoved calls f for every item marked since the last drain of the
// stack at head, each once; mark returns an item's mark for this stack. An
// item marked again while f reads it is handed out again at the next
// drain. One caller at a time.
func drainMoved[T any](head *atomic.Pointer[T], mark func(*T) *moveMark[T], f func(*T)) {
	for x := head.Swap(nil); x != nil; {
		m := mark(x)
		next := m.next
		m.next = nil
		m.marked.Store(false) // before f reads it: a move from here on pushes it again
		f(x)
		x = next
	}
}
