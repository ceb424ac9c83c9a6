package client

import "strconv"

// arg is what a command is made of: the typed helpers pass strings, Do
// passes bytes.
type arg interface{ ~string | ~[]byte }

// commandSize returns the length of args encoded as a RESP multibulk.
func commandSize[T arg](args []T) int {
	n := 1 + decLen(len(args)) + 2
	for _, a := range args {
		n += 1 + decLen(len(a)) + 2 + len(a) + 2
	}
	return n
}

// putCommand encodes args as a RESP multibulk into dst, which has
// commandSize(args) bytes.
func putCommand[T arg](dst []byte, args []T) {
	b := dst[:0]
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
}

// AppendCommand appends args encoded as a RESP multibulk to dst: a frame
// to send many times with Pipeline.AppendFrame.
func AppendCommand(dst []byte, args ...string) []byte {
	n := len(dst)
	dst = append(dst, make([]byte, commandSize(args))...)
	putCommand(dst[n:], args)
	return dst
}

// decLen returns the number of decimal digits of n ≥ 0.
func decLen(n int) int {
	d := 1
	for n >= 10 {
		n /= 10
		d++
	}
	return d
}
