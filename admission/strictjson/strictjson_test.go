package strictjson

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

type account struct {
	Tokens  *int64 `json:"tokens"`
	Overage string `json:"overage"`
}

type nested struct {
	Name  string            `json:"name"`
	Parts []account         `json:"parts"`
	Tags  map[string]string `json:"tags"`
	Raw   json.RawMessage   `json:"raw"`
	Any   any               `json:"any"`
	Skip  int               `json:"-"`
}

func TestDecode(t *testing.T) {
	f := func(body, wantErr string) {
		t.Helper()
		var n nested
		err := Decode([]byte(body), &n)
		if wantErr == "" {
			require.NoError(t, err, body)
			return
		}
		require.EqualError(t, err, wantErr, body)
	}
	f(`{"name":"a","parts":[{"tokens":1,"overage":"none"}],"tags":{"a":"1","A":"2"},"raw":{"x":[1,2]},"any":[{"k":1}]}`, "")
	f(" {} \r\n\t", "")
	f(`{} {}`, "data after the JSON value at offset 3")
	f(`{}x`, "data after the JSON value at offset 2")
	f(`{}`+"\x00", "data after the JSON value at offset 2")
	f(`{}`+"\u00a0", "data after the JSON value at offset 2")
	f(`{"name":"a","name":"b"}`, `duplicate key "name"`)
	f(`{"name":"a","n\u0061me":"b"}`, `duplicate key "name"`)
	f(`{"parts":[{"tokens":1},{"tokens":1,"tokens":2}]}`, `duplicate key "tokens"`)
	f(`{"tags":{"a":"1","a":"2"}}`, `duplicate key "a"`)
	f(`{"raw":{"x":1,"x":2}}`, `duplicate key "x"`)
	f(`{"any":[[{"k":{"j":1,"j":1}}]]}`, `duplicate key "j"`)
	f(`{"Name":"a"}`, `unknown key "Name"`)
	f(`{"parts":[{"TOKENS":1}]}`, `unknown key "TOKENS"`)
	f(`{"Skip":1}`, `unknown key "Skip"`)
	f(`{"name":1}`, "json: cannot unmarshal number into Go struct field nested.name of type string")
	f(``, "no JSON value")
	f(`   `, "no JSON value")
	f(`{"name":`, "the JSON value is cut short (truncated?)")
	f(`[1,`, "the JSON value is cut short (truncated?)")
	f(`{"name" "a"}`, "invalid character '\"' after object key")
	f(strings.Repeat(`{"any":`, MaxDepth)+"1"+strings.Repeat("}", MaxDepth), "")
	f(strings.Repeat(`{"any":`, MaxDepth+1)+"1"+strings.Repeat("}", MaxDepth+1), "nested more than 32 deep")
	f(strings.Repeat("[", 100000), "nested more than 32 deep")
	f(`{"any":`+strings.Repeat("[", 100000), "nested more than 32 deep")
	require.EqualError(t, Check([]byte(`[1,{"a":1,"a":1}]`)), `duplicate key "a"`)
	require.NoError(t, Check([]byte(`[1,{"a":1,"b":1}] `)))
}

// FuzzDecode: any bytes give a value or a one-line error, never a panic;
// what Decode takes, encoding/json takes too, to the same value.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"tokens": 10, "overage": "none"}`, `{"tokens": 1, "tokens": 2}`, `{"tokens": 1} x`, `{"TOKENS": 1}`,
		`{"name":"a","parts":[{"tokens":1}],"tags":{"a":"b"},"raw":[1,{"x":null}],"any":{"k":[true]}}`,
		`[]`, `null`, `"x"`, `1e999`, "\xff", strings.Repeat("[", 5000), strings.Repeat(`{"any":`, 40) + "0" + strings.Repeat("}", 40),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var a, b nested
		err := Decode(data, &a)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error of more than one line: %q", err)
			}
			return
		}
		if err := json.Unmarshal(data, &b); err != nil {
			t.Fatalf("Decode took what encoding/json refuses: %v", err)
		}
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if string(ja) != string(jb) {
			t.Fatalf("Decode and encoding/json disagree: %s vs %s", ja, jb)
		}
	})
}
