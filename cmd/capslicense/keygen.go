package main

import (
	"fmt"
	"path/filepath"

	"github.com/capsgate/capsgate/licensing"
)

// keygen writes a new vendor key pair.
func keygen(e *env, args []string) error {
	f := newFlags("keygen", "--out DIR")
	out := f.String("out", "", "`dir`ectory for vendor.key and vendor.pub (created if missing)")
	if err := noArgs(f, e, args); err != nil {
		return err
	}
	if err := f.require("out"); err != nil {
		return err
	}
	key, err := licensing.GenerateVendorKey()
	if err != nil {
		return err
	}
	if err := licensing.WriteKeyFiles(*out, key); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "wrote %s (secret, mode 0600) and %s\nkey id %s\n",
		filepath.Join(*out, licensing.PrivateKeyFile), filepath.Join(*out, licensing.PublicKeyFile), key.ID())
	return nil
}

// noArgs parses a command that takes flags only.
func noArgs(f *flags, e *env, args []string) error {
	pos, err := f.parse(e, args)
	if err == nil && len(pos) > 0 {
		err = usagef("unexpected argument %q (see capslicense %s --help)", pos[0], f.Name())
	}
	return err
}
