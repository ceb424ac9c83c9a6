package usageevents_test

import (
	"bufio"
	"fmt"
	"os"

	"github.com/capsgate/capsgate/licensing/ledger"
	"github.com/capsgate/capsgate/licensing/usageevents"
)

// A node's ledger (here a file of its records, as GET /v1/ledger serves
// them) as CloudEvents, one JSON line per usage record.
func ExampleWriter() {
	f, err := os.Open("testdata/ledger.jsonl")
	if err != nil {
		panic(err)
	}
	defer f.Close()
	w := usageevents.NewWriter(os.Stdout, usageevents.Lines)
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, ledger.MaxLineBytes)
	for sc.Scan() && w.Count() < 1 {
		r, err := ledger.Decode(sc.Bytes())
		if err != nil {
			panic(err)
		}
		if _, err := w.Write(r); err != nil {
			panic(err)
		}
	}
	if err := w.Close(); err != nil {
		fmt.Println(err)
	}
	// Output:
	// {"specversion":"1.0","id":"d6543066-b14f-5a9f-8fb2-6286b558795f","source":"capsgate:prod-eu/n1","type":"io.capsgate.usage.v1","subject":"voice","time":"2025-06-01T01:00:00Z","datacontenttype":"application/json","sequence":"00000000000000000001","data":{"service":"voice","attempts":9025,"admitted":9000,"emergency":2,"peak_caps":5,"peak_sessions":40,"peak_subscribers":700,"tokens":9000,"overage":0,"from":"2025-06-01T00:00:00Z","to":"2025-06-01T01:00:00Z","rejected":{"CAPS":20,"OVERLOAD":0,"SESSIONS":5,"SUBSCRIBERS":0,"TOKENS":0,"UNLICENSED":0},"rejected_total":25,"cluster":"prod-eu","node":"n1","ledger_seq":1,"ledger_hash":"504d8a578f604d9880901ee88456b6dc18772af1c1c996bd66559ce72960419a"}}
}
