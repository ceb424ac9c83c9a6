package admission_test

import (
	"fmt"
	"time"

	"github.com/capsgate/capsgate/admission"
)

// The engine decides at instants the caller passes in: here a fake clock
// steps through them, as the tests do.
func Example() {
	clk := admission.NewFakeClock()
	cfg := admission.DefaultConfig()
	cfg.Clock = clk
	e := admission.NewEngine(cfg)
	_ = e.SetLimits("voice", admission.Limits{Licensed: true, CAPS: 1, Sessions: 2,
		Subscribers: admission.Unlimited, Tokens: admission.Unlimited})

	call := func(id string) admission.Decision {
		return e.Admit(clk.Now(), []byte("voice"), []byte(id), nil, admission.Normal)
	}
	fmt.Println(call("a@pbx")) // the bucket holds one attempt (1 CAPS)
	fmt.Println(call("a@pbx")) // a retransmission: the same answer, not counted
	fmt.Println(call("b@pbx")) // too soon: the next token is due in 1 s
	clk.Advance(time.Second)
	fmt.Println(call("b@pbx")) // admitted: the second session
	clk.Advance(time.Second)
	fmt.Println(call("c@pbx")) // both sessions in use
	e.Release(clk.Now(), []byte("voice"), []byte("a@pbx"), 0)
	fmt.Println(call("c@pbx"))
	fmt.Println(e.Admit(clk.Now(), []byte("voice"), nil, nil, admission.Emergency)) // never refused by the licence
	// Output:
	// {OK 0 0}
	// {OK 0 0}
	// {CAPS 1000 0}
	// {OK 0 0}
	// {SESSIONS 1000 0}
	// {OK 0 0}
	// {OK 0 -1}
}
