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

// markable is what carries a moveMark.
type markable[T any] interface {
	*T
	moveMark() *moveMark[T]
}

// markMoved marks x, pushing it on the stack at head if it was not marked.
func markMoved[T any, P markable[T]](head *atomic.Pointer[T], x P) {
	m := x.moveMark()
	if m.marked.Load() || !m.marked.CompareAndSwap(false, true) {
		return
	}
	for {
		h := head.Load()
		m.next = h
		if head.CompareAndSwap(h, (*T)(x)) {
			return
		}
	}
}

// drainMoved calls f for every item marked since the last drain of the
// stack at head, each once. An item marked again while f reads it is
// handed out again at the next drain. One caller at a time.
func drainMoved[T any, P markable[T]](head *atomic.Pointer[T], f func(P)) {
	for x := P(head.Swap(nil)); x != nil; {
		m := x.moveMark()
		next := P(m.next)
		m.next = nil
		m.marked.Store(false) // before f reads it: a move from here on pushes it again
		f(x)
		x = next
	}
}
