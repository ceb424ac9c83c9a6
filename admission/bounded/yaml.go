package bounded

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxYAMLValues bounds the values a YAML file (config, price sheet) may
// hold once its aliases (*a) and merge keys (<<: *a) are expanded. A real
// file holds a few hundred; 760 bytes of nested merge keys expand to 9^13
// and kept yaml.v3 (whose alias-ratio check allows this) busy for minutes.
const MaxYAMLValues = 100000

// YAML checks a parsed YAML document before it is decoded: the values it
// expands to, aliases followed, are at most limit; no alias refers to a
// node that holds it; and every mapping key is a plain value, not a list,
// a mapping or an alias (yaml.v3 panics decoding an alias to a mapping as
// a key, and no file here has a use for one). It takes time linear in the
// nodes of the document as written, however far it would expand.
func YAML(doc *yaml.Node, limit int) error {
	c := yamlCounter{limit: limit, memo: map[*yaml.Node]int{}}
	c.count(doc)
	return c.err
}

type yamlCounter struct {
	limit int
	memo  map[*yaml.Node]int // values under each node seen; -1 while being counted
	err   error
}

// count returns the values n expands to, at most c.limit+1.
func (c *yamlCounter) count(n *yaml.Node) int {
	if c.err != nil {
		return c.limit + 1
	}
	switch v, ok := c.memo[n]; {
	case ok && v < 0:
		c.err = fmt.Errorf("line %d: an alias refers to the node that holds it", n.Line)
		return c.limit + 1
	case ok:
		return v
	}
	c.memo[n] = -1
	size := 1
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		size += c.count(n.Alias)
	}
	for i, e := range n.Content {
		if n.Kind == yaml.MappingNode && i%2 == 0 && e.Kind != yaml.ScalarNode && c.err == nil {
			c.err = fmt.Errorf("line %d: a mapping key must be a plain value, got %s", e.Line, DescribeYAML(e))
		}
		size += c.count(e)
		if size > c.limit {
			break
		}
	}
	if size > c.limit && c.err == nil {
		c.err = fmt.Errorf("line %d: the document expands to more than %d values (aliases and merge keys followed); write the values out", n.Line, c.limit)
	}
	size = min(size, c.limit+1)
	c.memo[n] = size
	return size
}

// YAMLError turns a yaml.v3 error into one line, without its "yaml: "
// prefix; the errors of several keys are joined with "; ".
func YAMLError(err error) error {
	s := strings.TrimPrefix(err.Error(), "yaml: ")
	s = strings.TrimPrefix(s, "unmarshal errors:\n")
	s = strings.ReplaceAll(strings.TrimSpace(s), "\n  ", "; ")
	return errors.New(strings.ReplaceAll(s, "\n", " "))
}

// DescribeYAML describes a YAML value in an error message: "a mapping",
// "a list", "an alias (*name)" or the quoted value.
func DescribeYAML(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias (*" + n.Value + ")"
	}
	return strconv.Quote(n.Value)
}
