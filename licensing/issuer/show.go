package issuer

import (
	"fmt"
	"time"

	"github.com/capsgate/capsgate/internal/bounded"
	"github.com/capsgate/capsgate/licensing"
)

// verify checks a licence or revocation against the given public keys.
func verify(e *env, args []string) error {
	var pubs []string
	f := newFlags("verify", "--pub vendor.pub [--pub other.pub ...] FILE")
	f.Var(list{&pubs}, "pub", "a trusted vendor public key `file` (repeat for several)")
	data, name, err := oneFile(f, e, args, "pub")
	if err != nil {
		return err
	}
	ring, err := licensing.LoadKeyring(pubs...)
	if err != nil {
		return err
	}
	return show(e, name, data, ring.Verify, ring.VerifyRevocation, func(noun, keyID string) string {
		return "Signature: good, " + noun + " signed by key " + keyID
	})
}

// inspect prints a licence or revocation without verifying it.
func inspect(e *env, args []string) error {
	f := newFlags("inspect", "FILE")
	data, name, err := oneFile(f, e, args)
	if err != nil {
		return err
	}
	decode := func(b []byte) (*licensing.License, error) {
		s, err := licensing.Decode(b)
		if err != nil {
			return nil, err
		}
		return s.License, nil
	}
	decodeRevocation := func(b []byte) (*licensing.Revocation, error) {
		s, err := licensing.DecodeRevocation(b)
		if err != nil {
			return nil, err
		}
		return s.Revocation, nil
	}
	return show(e, name, data, decode, decodeRevocation, func(string, string) string {
		return "NOT VERIFIED: the signature was not checked (use capslicense verify)"
	})
}

// show reads a licence or a revocation with the given functions and prints
// it under a heading; a licence also gets its state now.
func show(e *env, name string, data []byte,
	license func([]byte) (*licensing.License, error),
	revocation func([]byte) (*licensing.Revocation, error),
	heading func(noun, keyID string) string,
) error {
	var noun, keyID string
	var fields []licensing.Field
	if licensing.IsRevocation(data) {
		r, err := revocation(data)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		noun, keyID, fields = "revocation", r.KeyID, r.Fields()
	} else {
		l, err := license(data)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		now := e.now()
		noun, keyID, fields = "licence", l.KeyID, append(l.Fields(), licensing.Field{Name: "State",
			Value: fmt.Sprintf("%s at %s (revocations not checked)", l.State(now, false), now.UTC().Format(time.RFC3339))})
	}
	fmt.Fprintln(e.stdout, heading(noun, keyID))
	for _, f := range fields {
		fmt.Fprintf(e.stdout, "%-19s %s\n", f.Name+":", f.Value)
	}
	return nil
}

// oneFile parses a command taking exactly one FILE and the required
// flags, and reads the file.
func oneFile(f *flags, e *env, args []string, required ...string) (data []byte, name string, err error) {
	pos, err := f.parse(e, args)
	if err != nil {
		return nil, "", err
	}
	if err := f.require(required...); err != nil {
		return nil, "", err
	}
	if len(pos) != 1 {
		return nil, "", usagef("want exactly one FILE (or - for standard input), got %d (see capslicense %s --help)", len(pos), f.Name())
	}
	data, err = readInput(e, pos[0], "licence", bounded.LicenceFile)
	return data, pos[0], err
}
