package licensing

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"unicode"
)

// Armor is the text form of licences, revocations and keys, made to survive
// e-mail:
//
//	-----BEGIN CAPSGATE LICENSE-----
//	Id: 6f1c0d2e9a8b7c6d5e4f3a2b1c0d9e8f
//	Service: vpn
//	...
//
//	eyJsaWNlbnNlIjp7ImlkIjoi...   (base64, 64 columns)
//	-----END CAPSGATE LICENSE-----
//
// The "Name: value" header lines are for people. They are not what the
// signature covers, so a verifier checks them against the signed payload
// (see checkHeaders): a header edited to read "Caps: 5000" above a 500-CAPS
// licence is refused, so no one is misled by it. They may be left out. The decoder
// finds the block inside any surrounding text and accepts CRLF line ends,
// spaces and tabs around lines and the base64 re-wrapped at any width.

// armorWidth is the base64 line length, as in PEM and OpenPGP.
const armorWidth = 64

// maxArmorSize bounds the text the decoder reads: a licence is about 1 KiB.
const maxArmorSize = 1 << 20

// armor writes payload as an armored block with the given label.
func armor(label string, headers []Field, payload []byte) []byte {
	var b bytes.Buffer
	b.WriteString("-----BEGIN " + label + "-----\n")
	for _, h := range headers {
		if h.Value != "" {
			b.WriteString(headerLine(h) + "\n")
		}
	}
	b.WriteByte('\n')
	enc := base64.StdEncoding.EncodeToString(payload)
	for len(enc) > 0 {
		n := min(len(enc), armorWidth)
		b.WriteString(enc[:n] + "\n")
		enc = enc[n:]
	}
	b.WriteString("-----END " + label + "-----\n")
	return b.Bytes()
}

// unarmor finds the block with the given label in text and returns its
// payload and header lines. Every error wraps ErrMalformed.
func unarmor(label string, text []byte) ([]byte, []string, error) {
	if len(text) > maxArmorSize {
		return nil, nil, fmt.Errorf("%w: input is %d bytes, more than %d", ErrMalformed, len(text), maxArmorSize)
	}
	begin, end := "-----BEGIN "+label+"-----", "-----END "+label+"-----"
	lines := strings.Split(string(text), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	var blocks []string
	for _, l := range lines {
		if b, ok := armorLabel(l, "BEGIN"); ok && strings.HasPrefix(b, "CAPSGATE ") {
			blocks = append(blocks, blockNoun(b))
		}
	}
	if len(blocks) > 1 {
		// Reading the first and ignoring the rest would drop documents
		// without a word: see Split.
		return nil, nil, fmt.Errorf("%w: the text holds %d armored blocks (%s), not one", ErrMalformed, len(blocks), strings.Join(blocks, ", "))
	}
	first := indexOf(lines, begin, 0)
	if first < 0 {
		return nil, nil, fmt.Errorf("%w: no %s line", ErrMalformed, begin)
	}
	last := indexOf(lines, end, first+1)
	if last < 0 {
		return nil, nil, fmt.Errorf("%w: no %s line (truncated?)", ErrMalformed, end)
	}
	body := lines[first+1 : last]
	nh := headerLines(body)
	var headers []string
	for _, h := range body[:nh] {
		switch {
		case h == "":
		case !strings.Contains(h, ": ") && len(headers) > 0: // folded by a mailer
			headers[len(headers)-1] += " " + h
		default:
			headers = append(headers, h)
		}
	}
	data := strings.Join(body[nh:], "")
	data = strings.Join(strings.Fields(data), "")
	if data == "" {
		return nil, nil, fmt.Errorf("%w: no base64 payload between the BEGIN and END lines", ErrMalformed)
	}
	payload, err := base64.StdEncoding.Strict().DecodeString(data)
	if err != nil {
		if len(data)%4 != 0 {
			return nil, nil, fmt.Errorf("%w: bad base64 (%d characters, not a multiple of 4: truncated?): %v", ErrMalformed, len(data), err)
		}
		return nil, nil, fmt.Errorf("%w: bad base64: %v", ErrMalformed, err)
	}
	return payload, headers, nil
}

// headerLine is how armor writes a field.
func headerLine(f Field) string { return f.Name + ": " + strings.Map(printable, f.Value) }

// checkHeaders compares the header lines of a block with the ones its
// signed document gives: none at all, or exactly those.
func checkHeaders(fields []Field, headers []string) error {
	if len(headers) == 0 {
		return nil
	}
	var want []string
	for _, f := range fields {
		if f.Value != "" {
			want = append(want, strings.TrimSpace(headerLine(f)))
		}
	}
	for i, h := range headers {
		if i >= len(want) || h != want[i] {
			return fmt.Errorf("header line %q does not match the signed document (altered?)", h)
		}
	}
	if len(headers) != len(want) {
		return fmt.Errorf("header line %q is missing (altered?)", want[len(headers)])
	}
	return nil
}

// headerLines returns how many lines at the top of a block are headers. The
// headers end at the first blank line; when a mailer dropped it, at the
// first line without a colon (base64 has none).
func headerLines(block []string) int {
	if blank := indexOf(block, "", 0); blank >= 0 && (blank == 0 || strings.Contains(block[0], ":")) {
		return blank + 1
	}
	n := 0
	for n < len(block) && strings.Contains(block[n], ":") {
		n++
	}
	return n
}

func indexOf(lines []string, s string, from int) int {
	for i := from; i < len(lines); i++ {
		if lines[i] == s {
			return i
		}
	}
	return -1
}

// printable keeps header values on their line.
func printable(r rune) rune {
	if unicode.IsControl(r) {
		return '?'
	}
	return r
}
