package cell_test

import (
	"fmt"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/admission/cell"
)

// CL.THROTTLE user123 15 30 60 three times at one instant, then once a
// minute later: 30 per minute, 16 at once.
func Example() {
	tab := cell.NewTable(1000)
	args := [][]byte{[]byte("user123"), []byte("15"), []byte("30"), []byte("60")}
	a, _ := cell.ParseArgs(args, cell.DefaultBounds())
	r, _ := cell.NewRate(a.MaxBurst, a.Count, a.Period)
	now := int64(1e12)
	for _, at := range []int64{0, 0, 0, 60e9} {
		reply, _ := tab.Throttle(now+at, admission.KeyOf(a.Key), r, a.Quantity)
		fmt.Println(reply.Ints())
	}
	// Output:
	// [0 16 15 -1 2]
	// [0 16 14 -1 4]
	// [0 16 13 -1 6]
	// [0 16 15 -1 2]
}
