// Package strictjson decodes a JSON document the way an API that must not
// guess should: exactly one value (nothing but white space after it), no
// key twice in any object at any depth, no key that the Go type does not
// name exactly (encoding/json alone matches names without regard to case,
// so {"tokens":1,"TOKENS":2} would set one field twice), and a bound on
// nesting. The input is bounded by the caller, before it is read.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// MaxDepth bounds how deeply arrays and objects nest: the documents read
// this way are a level or two deep.
const MaxDepth = 32

// Decode sets v (a pointer) from data, refusing what Check refuses and
// what does not fit v. Every error is one line.
func Decode(data []byte, v any) error {
	if err := check(data, reflect.TypeOf(v)); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return oneLine(err)
	}
	return nil
}

// Check reports the first reason data is not one strict JSON value: a
// syntax error, trailing data, a duplicate key or nesting past MaxDepth.
func Check(data []byte) error { return check(data, nil) }

// frame is an open array or object while the tokens are walked.
type frame struct {
	object  bool
	wantKey bool            // an object expects a key next
	keys    map[string]bool // the keys seen in this object
	fields  map[string]reflect.Type
	elem    reflect.Type // the type of the values (nil: not known)
	next    reflect.Type // the type of the value after the last key
}

// check walks the tokens of data. t, when known, is the type the value
// decodes into: an object key must then be one of its struct fields'
// names, exactly.
func check(data []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var stack []*frame
	done := false
	for !done {
		tok, err := dec.Token()
		if err == io.EOF && len(stack) > 0 {
			return errors.New("the JSON value is cut short (truncated?)")
		}
		if err == io.EOF {
			return errors.New("no JSON value")
		}
		if err != nil {
			return oneLine(err)
		}
		// The type this token's value decodes into.
		cur := t
		if n := len(stack); n > 0 {
			top := stack[n-1]
			if top.object && top.wantKey {
				if d, ok := tok.(json.Delim); ok && d == '}' {
					stack = stack[:n-1]
					done = closeValue(stack)
					continue
				}
				key := tok.(string) // the decoder allows nothing else here
				if top.keys[key] {
					return fmt.Errorf("duplicate key %q", key)
				}
				top.keys[key] = true
				top.next = top.elem
				if top.fields != nil {
					ft, ok := top.fields[key]
					if !ok {
						return fmt.Errorf("unknown key %q", key)
					}
					top.next = ft
				}
				top.wantKey = false
				continue
			}
			cur = top.elem
			if top.object {
				cur = top.next
			}
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if len(stack) == MaxDepth {
				return fmt.Errorf("nested more than %d deep", MaxDepth)
			}
			f := &frame{object: tok == json.Delim('{'), wantKey: true, keys: map[string]bool{}}
			cur = deref(cur)
			switch {
			case cur == nil:
			case f.object && cur.Kind() == reflect.Struct:
				f.fields = fieldsOf(cur)
			case f.object && cur.Kind() == reflect.Map, !f.object && (cur.Kind() == reflect.Slice || cur.Kind() == reflect.Array):
				f.elem = cur.Elem()
			}
			stack = append(stack, f)
			continue
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		done = closeValue(stack)
	}
	if rest := bytes.TrimLeft(data[dec.InputOffset():], " \t\r\n"); len(rest) > 0 {
		return fmt.Errorf("data after the JSON value at offset %d", len(data)-len(rest))
	}
	return nil
}

// closeValue notes that a value ended inside the innermost open container,
// and reports whether it was the top-level value.
func closeValue(stack []*frame) bool {
	if len(stack) == 0 {
		return true
	}
	if top := stack[len(stack)-1]; top.object {
		top.wantKey = true
	}
	return false
}

// deref follows pointers; an interface, json.RawMessage or a type with its
// own UnmarshalJSON is not known (nil): anything goes beneath it but the
// rules of every document.
func deref(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() == reflect.Interface || reflect.PointerTo(t).Implements(unmarshaler) {
		return nil
	}
	return t
}

var unmarshaler = reflect.TypeFor[json.Unmarshaler]()

// fieldsOf maps the JSON names of a struct's fields to their types, as
// encoding/json names them (tag name, else the Go name; "-" skipped;
// embedded structs' fields promoted).
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		if f.Anonymous && name == "" {
			if et := deref(f.Type); et != nil && et.Kind() == reflect.Struct {
				for k, v := range fieldsOf(et) {
					out[k] = v
				}
				continue
			}
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

// oneLine keeps an error on one line (a JSON error can quote input).
func oneLine(err error) error {
	return errors.New(strings.ReplaceAll(err.Error(), "\n", " "))
}
