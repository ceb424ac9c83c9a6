package main

import "encoding/base64"

func decodeB64(s string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	return string(b), err
}

func encodeB64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
