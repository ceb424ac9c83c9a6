package main

import (
	"bytes"
	"fmt"
	"time"

	"github.com/capsgate/capsgate/admission/bounded"
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

// show reads every licence and revocation of a file with the given
// functions and prints each under a heading; a licence also gets its
// state now. A file of several documents prints them all, each headed
// "Document N of M (line L):", or, if one fails, none: the error names it.
func show(e *env, name string, data []byte,
	license func([]byte) (*licensing.License, error),
	revocation func([]byte) (*licensing.Revocation, error),
	heading func(noun, keyID string) string,
) error {
	docs, err := licensing.Split(data)
	if err != nil && bytes.Count(data, []byte("-----BEGIN CAPSGATE ")) > 1 {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err != nil || len(docs) == 1 {
		// One document (or none): the decoder says best what is wrong.
		docs = []licensing.Document{{Revocation: licensing.IsRevocation(data), Armored: data, Line: 1}}
	}
	var out bytes.Buffer
	for i, d := range docs {
		var noun, keyID string
		var fields []licensing.Field
		if d.Revocation {
			r, err := revocation(d.Armored)
			if err != nil {
				return docError(name, docs, i, err)
			}
			noun, keyID, fields = "revocation", r.KeyID, r.Fields()
		} else {
			l, err := license(d.Armored)
			if err != nil {
				return docError(name, docs, i, err)
			}
			now := e.now()
			noun, keyID, fields = "licence", l.KeyID, append(l.Fields(), licensing.Field{Name: "State",
				Value: fmt.Sprintf("%s at %s (revocations not checked)", l.State(now, false), now.UTC().Format(time.RFC3339))})
		}
		if len(docs) > 1 {
			if i > 0 {
				out.WriteByte('\n')
			}
			fmt.Fprintf(&out, "Document %d of %d (line %d):\n", i+1, len(docs), d.Line)
		}
		fmt.Fprintln(&out, heading(noun, keyID))
		for _, f := range fields {
			fmt.Fprintf(&out, "%-19s %s\n", f.Name+":", f.Value)
		}
	}
	_, err = e.stdout.Write(out.Bytes())
	return err
}

// docError names the document of a file that failed, when it has several.
func docError(name string, docs []licensing.Document, i int, err error) error {
	if len(docs) == 1 {
		return fmt.Errorf("%s: %w", name, err)
	}
	return fmt.Errorf("%s: document %d of %d (%s at line %d): %w", name, i+1, len(docs), docs[i].Noun(), docs[i].Line, err)
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
