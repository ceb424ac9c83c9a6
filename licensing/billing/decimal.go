package billing

import (
	"fmt"
	"math/big"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxPlaces is the most decimal places a price may have.
const MaxPlaces = 9

// Decimal is an exact non-negative decimal number: an integer v scaled by
// 10^-places. Money is never a float. The zero value is 0. A Decimal keeps
// the places it was written with ("0.0010" prints as 0.0010).
type Decimal struct {
	v      *big.Int // nil is 0
	places int
}

// NewDecimal returns n as a Decimal with no places.
func NewDecimal(n uint64) Decimal { return Decimal{v: new(big.Int).SetUint64(n)} }

// ParseDecimal reads a non-negative decimal number: digits, optionally a
// point and 1 to MaxPlaces digits ("500", "0.0010"). Exponents, signs and
// separators are refused.
func ParseDecimal(s string) (Decimal, error) {
	intPart, frac, hasPoint := strings.Cut(s, ".")
	if intPart == "" || !digits(intPart) || hasPoint && (frac == "" || !digits(frac)) {
		return Decimal{}, fmt.Errorf("want a decimal number such as 12.50, got %q", s)
	}
	if len(frac) > MaxPlaces {
		return Decimal{}, fmt.Errorf("at most %d decimal places, got %q", MaxPlaces, s)
	}
	if len(intPart) > 30 {
		return Decimal{}, fmt.Errorf("number too large: %q", s)
	}
	v, _ := new(big.Int).SetString(intPart+frac, 10)
	return Decimal{v: v, places: len(frac)}, nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func (d Decimal) int() *big.Int {
	if d.v == nil {
		return new(big.Int)
	}
	return d.v
}

// scaled returns d's integer at places p >= d.places.
func (d Decimal) scaled(p int) *big.Int {
	return new(big.Int).Mul(d.int(), pow10(p-d.places))
}

func pow10(n int) *big.Int { return new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(n)), nil) }

// Add returns d + e, exactly.
func (d Decimal) Add(e Decimal) Decimal {
	p := max(d.places, e.places)
	return Decimal{v: new(big.Int).Add(d.scaled(p), e.scaled(p)), places: p}
}

// Mul returns d × e, exactly.
func (d Decimal) Mul(e Decimal) Decimal {
	return Decimal{v: new(big.Int).Mul(d.int(), e.int()), places: d.places + e.places}
}

// Round returns d rounded to places decimal places, half up (0.005 → 0.01).
func (d Decimal) Round(places int) Decimal {
	if d.places <= places {
		return Decimal{v: d.scaled(places), places: places}
	}
	div := pow10(d.places - places)
	q, r := new(big.Int).QuoRem(d.int(), div, new(big.Int))
	if new(big.Int).Mul(r, big.NewInt(2)).Cmp(div) >= 0 {
		q.Add(q, big.NewInt(1))
	}
	return Decimal{v: q, places: places}
}

// Cmp compares d and e: -1, 0 or +1.
func (d Decimal) Cmp(e Decimal) int {
	p := max(d.places, e.places)
	return d.scaled(p).Cmp(e.scaled(p))
}

// IsZero reports whether d is 0.
func (d Decimal) IsZero() bool { return d.int().Sign() == 0 }

// String writes d with its places ("1.50", "0.0010", "42").
func (d Decimal) String() string {
	s := d.int().String()
	if d.places == 0 {
		return s
	}
	if len(s) <= d.places {
		s = strings.Repeat("0", d.places-len(s)+1) + s
	}
	return s[:len(s)-d.places] + "." + s[len(s)-d.places:]
}

// MarshalText writes d as String does (JSON: a string, never a float).
func (d Decimal) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads what ParseDecimal reads.
func (d *Decimal) UnmarshalText(b []byte) error {
	v, err := ParseDecimal(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// UnmarshalYAML reads a price written as a string ("0.0010") or a plain
// number (0.0010), from its text: never through a float.
func (d *Decimal) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a decimal number such as \"12.50\"", n.Line)
	}
	if err := d.UnmarshalText([]byte(n.Value)); err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	return nil
}
