package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"time"
)

// flags is a command's flag set, with the usage text --help prints.
type flags struct {
	*flag.FlagSet
	synopsis string
}

func newFlags(name, synopsis string) *flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported in one line by run
	return &flags{FlagSet: fs, synopsis: synopsis}
}

// parse parses args, flags and positional arguments in any order ("--"
// ends the flags), and returns the positional ones. --help prints the
// command's usage to stdout and returns flag.ErrHelp.
func (f *flags) parse(e *env, args []string) ([]string, error) {
	var pos []string
	for {
		err := f.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(e.stdout, "usage: capslicense %s %s\n\nflags:\n", f.Name(), f.synopsis)
			f.SetOutput(e.stdout)
			f.PrintDefaults()
			return nil, err
		}
		if err != nil {
			return nil, usageError{err}
		}
		rest := f.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// require reports the first of the named flags left unset.
func (f *flags) require(names ...string) error {
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	for _, n := range names {
		if !set[n] {
			return usagef("--%s is required (see capslicense %s --help)", n, f.Name())
		}
	}
	return nil
}

// count is a non-negative integer flag.
type count struct{ p *int64 }

func (c count) String() string {
	if c.p == nil {
		return "0"
	}
	return strconv.FormatInt(*c.p, 10)
}

func (c count) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return errors.New("want a whole number")
	}
	if n < 0 {
		return errors.New("must be >= 0")
	}
	*c.p = n
	return nil
}

// instant is an RFC 3339 time flag.
type instant struct{ p *time.Time }

func (t instant) String() string {
	if t.p == nil || t.p.IsZero() {
		return ""
	}
	return t.p.Format(time.RFC3339)
}

func (t instant) Set(s string) error {
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return errors.New("want an RFC 3339 time such as 2026-01-31T00:00:00Z")
	}
	*t.p = v.UTC()
	return nil
}

// duration is a non-negative Go duration flag ("72h", "90m").
type duration struct{ p *time.Duration }

func (d duration) String() string {
	if d.p == nil {
		return "0s"
	}
	return d.p.String()
}

func (d duration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("want a duration such as 72h or 90m")
	}
	if v < 0 {
		return errors.New("must be >= 0")
	}
	*d.p = v
	return nil
}

// list is a repeatable string flag.
type list struct{ p *[]string }

func (l list) String() string { return "" }

func (l list) Set(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	*l.p = append(*l.p, s)
	return nil
}
