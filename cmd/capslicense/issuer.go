package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/capsgate/capsgate/admission/bounded"
)

const usage = `usage: capslicense COMMAND [FLAGS] [FILE]

commands:
  keygen  --out DIR
        write DIR/vendor.key (secret, mode 0600) and DIR/vendor.pub; never overwrites
  issue   --key vendor.key --service S [--caps N] [--sessions N] [--subscribers N]
          [--tokens N] [--tokens-per-attempt N] [--tokens-per-minute N]
          [--overage none|percent:N|unlimited] [--unlimited] [--not-before T]
          [--not-after T] [--grace DURATION] [--customer C] [--cluster ID] [--id ID]
          [--period monthly|none]
        print a signed licence (times in RFC 3339, durations like 72h)
  verify  --pub vendor.pub [--pub other.pub ...] FILE
        check a licence (or revocation) and print it; exit 0 only for a good signature
  inspect FILE
        print a licence (or revocation) without verifying it
  revoke  --key vendor.key --id ID [--id ID ...] [--reason TEXT]
        print a signed revocation of the given licence ids
  usage verify --ledger FILE [--ledger FILE ...] [--node-pub NODE=FILE ...]
          [--since NODE=SEQ:HASH,...] [--trust-on-first-use FILE]
          [--accept-no-genesis] [--accept-unwitnessed-tail] [--require-proof] [FILE ...]
        check usage ledgers (node segment files, GET /v1/ledger exports): print
        each node's records and head, or its first altered, missing, reordered,
        duplicated or re-signed record, and what proves it whole and authentic
        (genesis or billed head, pinned or witnessed key, newest witness), or
        UNPROVEN (also a node a given ledger witnessed, or pinned, whose ledger
        is not given); exit 0 only if every record verifies, and with
        --require-proof only if nothing is UNPROVEN and there are records
  bill    --ledger FILE [--ledger FILE ...] --price-sheet FILE [--from T] [--to T]
          [--format table|json|csv] [the flags of usage verify]
        verify the ledgers, then print the invoice and the heads it billed up to
        (refused if they do not verify, something is unproven or they hold no
        records); with --since, the records up to the heads given are not
        billed again

FILE may be - for standard input. "capslicense COMMAND --help" shows a command's flags.
Exit status: 0 ok, 1 failed (e.g. bad signature), 2 bad usage.
`

// Exit statuses.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

// env is what a command may touch: its streams and the clock.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	now            func() time.Time
}

// command is one subcommand: it parses its own flags from args.
type command func(e *env, args []string) error

var commands = map[string]command{
	"keygen":  keygen,
	"issue":   issue,
	"verify":  verify,
	"inspect": inspect,
	"revoke":  revoke,
	"bill":    bill,

	"usage verify": usageVerify,
}

// run runs capslicense with args (without the program name) and returns
// the exit status.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return dispatch(&env{stdin: stdin, stdout: stdout, stderr: stderr, now: time.Now}, args)
}

func dispatch(e *env, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, usage)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(e.stdout, usage)
		return exitOK
	case "usage":
		if len(args) < 2 || args[1] != "verify" {
			fmt.Fprintln(e.stderr, "capslicense usage: want a subcommand: usage verify (see capslicense --help)")
			return exitUsage
		}
		name, args = "usage verify", args[1:]
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(e.stderr, "capslicense: unknown command %q (see capslicense --help)\n", name)
		return exitUsage
	}
	err := cmd(e, args[1:])
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(e.stderr, "capslicense %s: %v\n", name, err)
		return exitUsage
	}
	fmt.Fprintf(e.stderr, "capslicense %s: %v\n", name, err)
	return exitFailed
}

// usageError marks a failure that exits 2: the command line is wrong.
type usageError struct{ error }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// readInput reads FILE, or standard input for "-": what (licence, ledger)
// names it in the error, of at most limit bytes.
func readInput(e *env, name, what string, limit int64) ([]byte, error) {
	if name == "-" {
		data, err := bounded.ReadAll(e.stdin, limit)
		if err != nil {
			return nil, fmt.Errorf("cannot read %s from standard input: %w", what, err)
		}
		return data, nil
	}
	data, err := bounded.ReadFile(name, limit)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %w", what, err)
	}
	return data, nil
}
