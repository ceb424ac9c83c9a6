package node

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"

	"gopkg.in/yaml.v3"

	"github.com/capsgate/capsgate/admission/bounded"
)

// readFile reads the YAML file at path over c. The keys are checked
// against Config first, so that an unknown or ill-typed key is reported by
// its full dotted name; then the file is decoded with KnownFields.
func (c *Config) readFile(path string) error {
	data, err := bounded.ReadFile(path, bounded.ConfigFile)
	if err != nil {
		return fmt.Errorf("cannot read config file: %w", err)
	}
	if err := c.parse(data); err != nil {
		return fmt.Errorf("invalid config file %s: %w", path, err)
	}
	if st, err := os.Stat(path); err == nil {
		c.TrunkLimitsAt = st.ModTime()
	}
	return nil
}

// parse reads a config file's YAML over c; the error is one line.
func (c *Config) parse(data []byte) error {
	fail := func(err error) error {
		return errors.New(oneLine(err))
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := dec.Decode(&doc); {
	case errors.Is(err, io.EOF):
		return nil // empty file: all defaults
	case err != nil:
		return fail(err)
	}
	var next yaml.Node
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
		if err != nil {
			return fail(err)
		}
		return fail(fmt.Errorf("line %d: a second YAML document; the file must hold one", next.Line))
	}
	if err := bounded.YAML(&doc, bounded.MaxYAMLValues); err != nil {
		return err
	}
	if err := checkNode(&doc, reflect.TypeOf(Config{}), "", 0); err != nil {
		return fail(err)
	}
	dec = yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fail(err)
	}
	return nil
}

// oneLine turns a yaml.v3 error into one line without its "yaml: " prefix.
func oneLine(err error) string { return bounded.YAMLError(err).Error() }

// checkNode checks a YAML node against type t: every mapping key must name
// a field, no key may repeat, and every value must decode into its field.
func checkNode(n *yaml.Node, t reflect.Type, path string, depth int) error {
	if depth > 32 {
		return fmt.Errorf("line %d: nested too deep", n.Line)
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		return checkNode(n.Content[0], t, path, depth+1)
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return checkNode(n.Alias, t, path, depth+1)
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil // no value: the default stays
	}
	if t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode {
		for i, e := range n.Content {
			if e.Kind == yaml.AliasNode && e.Alias != nil {
				e = e.Alias
			}
			var s string
			if e.Kind != yaml.ScalarNode || e.Decode(&s) != nil {
				return fmt.Errorf("line %d: %s entry %d must be a string, got %s", e.Line, path, i+1, describeNode(e))
			}
		}
		return nil
	}
	if !isSection(t) {
		// yaml.v3 would truncate 1.5 into an int: refuse anything but an integer.
		intOK := t.Kind() != reflect.Int || n.Kind != yaml.ScalarNode || n.ShortTag() == "!!int"
		if err := n.Decode(reflect.New(t).Interface()); err != nil || !intOK {
			return fmt.Errorf("line %d: %s %s", n.Line, path, wantOf(t, n, err))
		}
		return nil
	}
	if n.Kind != yaml.MappingNode {
		if path == "" {
			return fmt.Errorf("line %d: the file must be a mapping of keys, got %s", n.Line, describeNode(n))
		}
		return fmt.Errorf("line %d: %s must be a mapping of keys, got %s", n.Line, path, describeNode(n))
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.ShortTag() == "!!merge" {
			if err := checkMerge(v, t, path, depth+1); err != nil {
				return err
			}
			continue
		}
		key := k.Value
		if path != "" {
			key = path + "." + k.Value
		}
		f, ok := fieldByName(t, k.Value)
		if !ok || k.Kind != yaml.ScalarNode {
			return fmt.Errorf("line %d: unknown key %q", k.Line, key)
		}
		if first, dup := seen[k.Value]; dup {
			return fmt.Errorf("line %d: key %q repeated (first at line %d)", k.Line, key, first)
		}
		seen[k.Value] = k.Line
		if err := checkNode(v, f.Type, key, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// checkMerge checks the value of a YAML merge key (<<: *anchor).
func checkMerge(v *yaml.Node, t reflect.Type, path string, depth int) error {
	if v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	if v.Kind == yaml.SequenceNode {
		for _, m := range v.Content {
			if err := checkNode(m, t, path, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	return checkNode(v, t, path, depth)
}

// wantOf says what a key of type t must hold, for a value that did not
// decode.
func wantOf(t reflect.Type, n *yaml.Node, err error) string {
	switch {
	case t == durationType:
		var d Duration
		if e := d.UnmarshalYAML(n); e != nil {
			return e.Error()
		}
		return oneLine(err)
	case t.Kind() == reflect.Int:
		return "must be an integer, got " + describeNode(n)
	case t.Kind() == reflect.Float64:
		return "must be a number, got " + describeNode(n)
	case t.Kind() == reflect.Bool:
		return "must be true or false, got " + describeNode(n)
	case t.Kind() == reflect.String:
		return "must be a string, got " + describeNode(n)
	case t.Kind() == reflect.Slice:
		return "must be a list of strings such as [a, b], got " + describeNode(n)
	}
	return oneLine(err)
}

// describeNode describes a YAML value in an error message.
func describeNode(n *yaml.Node) string { return bounded.DescribeYAML(n) }
