package cell

import (
	"bytes"
	"strconv"
	"testing"
)

// FuzzParseArgs: any arguments are parsed or refused without a panic;
// what is accepted is within the bounds, its integers are what strconv
// reads, and its rate is a valid one or refused by NewRate.
func FuzzParseArgs(f *testing.F) {
	f.Add([]byte("user123"), []byte("15"), []byte("30"), []byte("60"), []byte("1"), true)
	f.Add([]byte("k"), []byte("0"), []byte("1"), []byte("1"), []byte("0"), true)
	f.Add([]byte("k"), []byte("-1"), []byte("0"), []byte("86400"), []byte(""), false)
	f.Add([]byte(""), []byte("+9223372036854775807"), []byte("1000000"), []byte("86401"), []byte("-9223372036854775808"), true)
	b := DefaultBounds()
	f.Fuzz(func(t *testing.T, key, burst, count, period, quantity []byte, withQuantity bool) {
		args := [][]byte{key, burst, count, period}
		if withQuantity {
			args = append(args, quantity)
		}
		a, err := ParseArgs(args, b)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an empty error")
			}
			return
		}
		if !bytes.Equal(a.Key, key) || len(key) == 0 || len(key) > MaxKeyLen {
			t.Fatalf("key %q accepted as %q", key, a.Key)
		}
		want := func(b []byte, got int64) {
			v, err := strconv.ParseInt(string(b), 10, 64)
			if err != nil || v != got {
				t.Fatalf("%q read as %d (strconv: %d, %v)", b, got, v, err)
			}
		}
		want(burst, a.MaxBurst)
		want(count, a.Count)
		want(period, a.Period)
		if withQuantity {
			want(quantity, a.Quantity)
		} else if a.Quantity != 1 {
			t.Fatalf("quantity %d by default", a.Quantity)
		}
		if a.MaxBurst < 0 || a.MaxBurst > b.MaxBurst || a.Count < 1 || a.Count > b.MaxCount ||
			a.Period < 1 || a.Period > b.MaxPeriod || a.Quantity < 0 {
			t.Fatalf("out of bounds accepted: %+v", a)
		}
		r, err := NewRate(a.MaxBurst, a.Count, a.Period)
		if err != nil {
			if err != ErrSpan {
				t.Fatalf("%+v: %v", a, err)
			}
			return
		}
		if r.Emission < 1000 || r.Tolerance < r.Emission || r.Tolerance > MaxSpan || r.Limit != a.MaxBurst+1 {
			t.Fatalf("%+v: rate %+v", a, r)
		}
	})
}
