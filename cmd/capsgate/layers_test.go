package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/capsgate/capsgate/"

// layers are the module's packages from the bottom up (README,
// Architecture). A package imports packages of its own layer and of the
// layers it names, never others: data flows one way (licensing → cluster
// → engine; the node wires them; commands run the node), the decision core
// and licensing each compile without the other, and the cluster sees the
// meter only through the node. A path ending in "/..." takes the packages
// below it too; the most specific entry places a package.
var layers = []struct {
	name    string
	pkgs    []string
	imports []string // the layers below it that it may import
}{
	{"base", []string{"admission/bounded/...", "admission/loopback", "admission/durable", "admission/strictjson", "admission/sat", "admission/names", "admission/setsum"}, nil},
	{"decision core", []string{"admission", "admission/cell", "admission/resp", "admission/client", "admission/idstore", "admission/journal"},
		[]string{"base"}},
	{"licensing", []string{"licensing/..."}, []string{"base"}},
	{"metering", []string{"admission/meter"}, []string{"base", "decision core", "licensing"}},
	{"cluster", []string{"cluster", "cluster/sim", "cluster/trunks"}, []string{"base", "decision core", "licensing"}},
	{"test harness", []string{"cluster/farm"}, []string{"base", "decision core", "licensing", "cluster"}},
	{"bench", []string{"bench/..."}, []string{"base", "decision core", "licensing", "cluster", "test harness"}},
	{"node", []string{"cmd/capsgate/node"}, []string{"base", "decision core", "licensing", "metering", "cluster"}},
	{"commands", []string{"cmd/..."}, []string{"base", "decision core", "licensing", "metering", "cluster", "test harness",
		"bench", "node"}},
}

// layerOf returns the layer of pkg (a path inside the module), -1 when no
// entry places it.
func layerOf(pkg string) int {
	best, bestLen := -1, -1
	for i, l := range layers {
		for _, p := range l.pkgs {
			base, tree := strings.CutSuffix(p, "/...")
			if (pkg == base || tree && strings.HasPrefix(pkg, base+"/")) && len(base) > bestLen {
				best, bestLen = i, len(base)
			}
		}
	}
	return best
}

// importViolations returns, for the direct imports of each package (its
// path inside the module: the module's own imports only), the imports
// its layer may not make and the packages no layer places.
func importViolations(imports map[string][]string) []string {
	var bad []string
	for pkg, deps := range imports {
		from := layerOf(pkg)
		if from < 0 {
			bad = append(bad, pkg+": in no layer (place it in layers)")
			continue
		}
		for _, dep := range deps {
			to := layerOf(dep)
			if to >= 0 && (to == from || slices.Contains(layers[from].imports, layers[to].name)) {
				continue
			}
			name := "no layer"
			if to >= 0 {
				name = layers[to].name
			}
			bad = append(bad, pkg+" ("+layers[from].name+") imports "+dep+" ("+name+")")
		}
	}
	slices.Sort(bad)
	return bad
}

// Every package's imports (tests aside: a test may drive any layer) run
// down the layers.
func TestImportsRunDownTheLayers(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{if .GoFiles}}{{.ImportPath}}{{range .Imports}} {{.}}{{end}}{{end}}", module+"...").Output()
	require.NoError(t, err)
	imports := map[string][]string{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue // a package of tests only (deploy)
		}
		pkg := strings.TrimPrefix(f[0], module)
		imports[pkg] = []string{}
		for _, dep := range f[1:] {
			if rest, ok := strings.CutPrefix(dep, module); ok {
				imports[pkg] = append(imports[pkg], rest)
			}
		}
	}
	require.Contains(t, imports, "admission")
	require.Contains(t, imports, "cmd/capsgate/node")
	require.Empty(t, importViolations(imports))

	// The rule catches the layout it replaced: the node under the engine's
	// directory, the cluster importing the meter for one type, the
	// registry giving the engine its limits, and licensing using the
	// engine's helpers; and a layer named above itself.
	require.Equal(t, []string{
		"admission/node: in no layer (place it in layers)",
		"cluster (cluster) imports admission/meter (metering)",
		"licensing (licensing) imports admission (decision core)",
		"licensing/registry (licensing) imports admission (decision core)",
	}, importViolations(map[string][]string{
		"admission/node":     {"cluster", "licensing/registry"},
		"cluster":            {"admission", "admission/meter", "licensing/registry"},
		"licensing/registry": {"admission", "admission/durable", "licensing"},
		"licensing":          {"admission", "admission/bounded"},
	}))
	for i, l := range layers {
		for _, name := range l.imports {
			below := slices.IndexFunc(layers[:i], func(b struct {
				name    string
				pkgs    []string
				imports []string
			}) bool {
				return b.name == name
			})
			require.GreaterOrEqual(t, below, 0, "%s may import %s, which is not below it", l.name, name)
		}
	}
}
