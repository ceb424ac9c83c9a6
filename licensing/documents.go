package licensing

import (
	"bytes"
	"fmt"
	"strings"
)

// A licence file may hold several documents: a licence and its add-ons,
// or a new licence and the revocation of the one it replaces, pasted one
// after the other. Split finds them all, so that a reader loads every one
// of them or refuses the file, and never loads the first and silently
// drops the rest.

// MaxDocuments bounds the documents of one text: a file of a few
// licences and revocations, not a bulk import.
const MaxDocuments = 64

// Document is one armored licence or revocation of a text.
type Document struct {
	// Revocation says the block is a revocation; else it is a licence.
	Revocation bool
	// Armored is the block, from its BEGIN line to its END line.
	Armored []byte
	// Line is the number of its BEGIN line in the text, from 1.
	Line int
}

// Noun is "licence" or "revocation".
func (d Document) Noun() string {
	if d.Revocation {
		return revocationKind.noun
	}
	return licenseKind.noun
}

// Split returns every licence and revocation in text, in order. Text
// around and between the blocks is ignored (a mail's body), as for a
// single document, and so are other armored blocks that are not
// capsgate's (a PGP signature). It refuses the text, saying what it
// holds, when a block has no END line, when a capsgate block is not a
// licence or revocation (a key), when there is none, or when there are
// more than MaxDocuments. Every error wraps ErrMalformed.
func Split(text []byte) ([]Document, error) {
	if len(text) > maxArmorSize {
		return nil, fmt.Errorf("%w: input is %d bytes, more than %d", ErrMalformed, len(text), maxArmorSize)
	}
	var docs []Document
	var open *Document // the block whose END line is due
	var openLabel string
	start := 0 // offset of the open block's BEGIN line
	for i, off := 0, 0; off < len(text); i++ {
		end := bytes.IndexByte(text[off:], '\n')
		next := off + end + 1
		if end < 0 {
			next = len(text)
		}
		line := strings.TrimSpace(string(text[off:next]))
		label, begin := armorLabel(line, "BEGIN")
		switch {
		case open != nil && begin && strings.HasPrefix(label, "CAPSGATE "):
			return nil, fmt.Errorf("%w: the %s at line %d has no END line before the BEGIN line at line %d (truncated?); %s",
				ErrMalformed, open.Noun(), open.Line, i+1, holds(docs, open))
		case open != nil:
			if l, ok := armorLabel(line, "END"); ok && l == openLabel {
				open.Armored = text[start:next]
				docs = append(docs, *open)
				open = nil
			}
		case begin && (label == licenseKind.label || label == revocationKind.label):
			if len(docs) == MaxDocuments {
				return nil, fmt.Errorf("%w: more than %d documents in one file", ErrMalformed, MaxDocuments)
			}
			open, openLabel, start = &Document{Revocation: label == revocationKind.label, Line: i + 1}, label, off
		case begin && strings.HasPrefix(label, "CAPSGATE "):
			return nil, fmt.Errorf("%w: line %d begins a %s, which is not a licence or revocation; %s",
				ErrMalformed, i+1, blockNoun(label), holds(docs, nil))
		}
		off = next
	}
	if open != nil {
		return nil, fmt.Errorf("%w: the %s at line %d has no -----END %s----- line (truncated?); %s",
			ErrMalformed, open.Noun(), open.Line, openLabel, holds(docs, open))
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("%w: no -----BEGIN %s----- or -----BEGIN %s----- line", ErrMalformed, licenseKind.label, revocationKind.label)
	}
	return docs, nil
}

// blockNoun names an armored block's kind for people: "licence",
// "revocation", "vendor public key".
func blockNoun(label string) string {
	switch label {
	case licenseKind.label:
		return licenseKind.noun
	case revocationKind.label:
		return revocationKind.noun
	}
	return strings.ToLower(strings.TrimPrefix(label, "CAPSGATE "))
}

// armorLabel returns the label of a "-----BEGIN label-----" (or END) line.
func armorLabel(line, what string) (string, bool) {
	rest, ok := strings.CutPrefix(line, "-----"+what+" ")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "-----")
}

// Describe says what documents a text holds, for messages: "2 documents:
// licence (line 1), revocation (line 14)".
func Describe(docs []Document) string {
	parts := make([]string, len(docs))
	for i, d := range docs {
		parts[i] = fmt.Sprintf("%s (line %d)", d.Noun(), d.Line)
	}
	n := "1 document"
	if len(docs) != 1 {
		n = fmt.Sprintf("%d documents", len(docs))
	}
	if len(docs) == 0 {
		return n
	}
	return n + ": " + strings.Join(parts, ", ")
}

// holds says what a refused text held up to the point of refusal.
func holds(docs []Document, open *Document) string {
	if open != nil {
		docs = append(docs, *open)
	}
	return "the file holds " + Describe(docs)
}
