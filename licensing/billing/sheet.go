package billing

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/capsgate/capsgate/admission/bounded"
)

// Pricing models, a plan's "model".
const (
	PayPerUse = "pay_per_use" // quantity × price
	Prepaid   = "prepaid"     // prepaid_price for prepaid_tokens, overage_price per unit beyond
	Hybrid    = "hybrid"      // fixed_fee, plus price per unit beyond included
	Tiered    = "tiered"      // graduated tiers: each unit at the price of the tier it falls in
)

// Units a plan can bill, a plan's "unit". Sums are over the period's
// usage records; peaks are the largest cluster-wide value (see Bill).
var units = map[string]string{
	"attempts":         "attempts",
	"admitted":         "admitted attempts",
	"rejected":         "rejected attempts",
	"tokens":           "tokens within the pool",
	"overage":          "overage tokens",
	"consumed":         "tokens consumed",
	"emergency":        "emergency attempts",
	"peak_caps":        "peak CAPS",
	"peak_sessions":    "peak sessions",
	"peak_subscribers": "peak subscribers",
}

// trunkUnits are the units a trunk key's records carry.
var trunkUnits = map[string]bool{"attempts": true, "admitted": true, "rejected": true, "peak_sessions": true}

// Sheet is a customer's price sheet (see configs/price-sheets/*.yaml).
type Sheet struct {
	// Currency is an ISO 4217 code: three upper-case letters (EUR).
	Currency string `yaml:"currency"`
	Customer string `yaml:"customer"`
	Plans    []Plan `yaml:"plans"`
}

// Plan prices one unit of one service (or account, or trunk key); a
// service may have several plans (e.g. admitted attempts and peak
// sessions), but one a unit: a second plan for the same units would bill
// them twice, and the sheet is refused.
type Plan struct {
	Service string `yaml:"service"`
	// Account bills one account's records; "" the service-level totals.
	Account string `yaml:"account"`
	// Trunk bills one trunk key's records (an operator billing its own
	// customer for ADMIT ... TRUNK key); "" the service-level totals.
	Trunk string `yaml:"trunk"`
	Model string `yaml:"model"`
	Unit  string `yaml:"unit"`
	// Price per unit (pay_per_use, hybrid).
	Price *Decimal `yaml:"price"`
	// FixedFee per period and Included units it covers (hybrid).
	FixedFee *Decimal `yaml:"fixed_fee"`
	Included Count    `yaml:"included"`
	// PrepaidTokens paid PrepaidPrice up front, OveragePrice per unit
	// beyond them (prepaid).
	PrepaidTokens Count    `yaml:"prepaid_tokens"`
	PrepaidPrice  *Decimal `yaml:"prepaid_price"`
	OveragePrice  *Decimal `yaml:"overage_price"`
	// Tiers, graduated (tiered).
	Tiers []Tier `yaml:"tiers"`
}

// Tier prices the units up to UpTo (nil: all the rest).
type Tier struct {
	UpTo  *Count   `yaml:"up_to"`
	Price *Decimal `yaml:"price"`
}

// Bounds of a price sheet, checked before it is billed: a real one has a
// handful of plans of a handful of tiers. The file is at most
// bounded.PriceSheet (1 MiB) and bounded.MaxYAMLValues (100000) values with
// its aliases expanded.
const (
	MaxPlans = 1000 // plans in a sheet
	MaxTiers = 1000 // tiers in a plan
)

// Count is a whole number of units in a price sheet (included,
// prepaid_tokens, up_to): 0 to 18446744073709551615, written in decimal
// digits. yaml.v3 would read 18446744073709551616 through a float as
// 9223372036854775808 and 1.5 as 1; a Count refuses both.
type Count uint64

// UnmarshalYAML reads a Count from its text.
func (c *Count) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.Value == "" || !digits(n.Value) {
		return fmt.Errorf("line %d: want a whole number such as 1000, got %s", n.Line, bounded.DescribeYAML(n))
	}
	v, err := strconv.ParseUint(n.Value, 10, 64)
	if err != nil {
		return fmt.Errorf("line %d: %s is more than %d, the largest count a price sheet takes", n.Line, n.Value, uint64(math.MaxUint64))
	}
	*c = Count(v)
	return nil
}

// LoadSheet reads a price sheet file of at most bounded.PriceSheet bytes.
func LoadSheet(path string) (Sheet, error) {
	data, err := bounded.ReadFile(path, bounded.PriceSheet)
	if err != nil {
		return Sheet{}, fmt.Errorf("cannot read price sheet: %w", err)
	}
	s, err := ParseSheet(data)
	if err != nil {
		return Sheet{}, fmt.Errorf("price sheet %s: %w", path, err)
	}
	return s, nil
}

// ParseSheet reads a price sheet: YAML, unknown keys refused, and checks
// it. Its size is checked before it is parsed, and its size with aliases
// expanded before it is decoded.
func ParseSheet(data []byte) (Sheet, error) {
	if len(data) > bounded.PriceSheet {
		return Sheet{}, fmt.Errorf("%w (%d bytes; the limit is %s)", bounded.ErrTooLarge, len(data), bounded.Size(bounded.PriceSheet))
	}
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return Sheet{}, errors.New("empty price sheet")
		}
		return Sheet{}, bounded.YAMLError(err)
	}
	if err := bounded.YAML(&doc, bounded.MaxYAMLValues); err != nil {
		return Sheet{}, err
	}
	var s Sheet
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return Sheet{}, bounded.YAMLError(err)
	}
	return s, s.validate()
}

func (s *Sheet) validate() error {
	if s.Currency == "" {
		return errors.New("currency is required (e.g. currency: EUR)")
	}
	if !isCurrencyCode(s.Currency) {
		return fmt.Errorf("currency must be an ISO 4217 code, three upper-case letters such as EUR or USD, got %q", s.Currency)
	}
	if len(s.Plans) == 0 {
		return errors.New("plans: at least one plan is required")
	}
	if len(s.Plans) > MaxPlans {
		return fmt.Errorf("plans: at most %d plans, got %d", MaxPlans, len(s.Plans))
	}
	// billed: which plan bills each unit of a service (or of one of its
	// accounts or trunk keys). A second plan would bill the same units
	// again.
	type what struct{ service, account, trunk, unit string }
	billed := make(map[what]int, len(s.Plans))
	for i := range s.Plans {
		p := &s.Plans[i]
		if err := p.validate(); err != nil {
			return fmt.Errorf("plans[%d]: %w", i, err)
		}
		w := what{p.Service, p.Account, p.Trunk, p.Unit}
		if j, dup := billed[w]; dup {
			return fmt.Errorf("plans[%d]: service %s: %s already billed by plans[%d]; two plans for the same units would bill them twice (merge them into one plan)", i, p.Service, p.describe(), j)
		}
		billed[w] = i
	}
	return nil
}

// isCurrencyCode reports whether s has the form of an ISO 4217 code:
// three upper-case ASCII letters.
func isCurrencyCode(s string) bool {
	if len(s) != 3 {
		return false
	}
	for i := range len(s) {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}

// describe names what a plan bills: its unit, and its account or trunk
// key if it has one.
func (p *Plan) describe() string {
	out := "unit " + p.Unit
	if p.Account != "" {
		out += " of account " + p.Account
	}
	if p.Trunk != "" {
		out += " of trunk " + p.Trunk
	}
	return out
}

func (p *Plan) validate() error {
	if p.Service == "" {
		return errors.New("service is required")
	}
	if p.Trunk != "" && p.Account != "" {
		return errors.New("account and trunk: a plan bills an account's records or a trunk key's, not both")
	}
	if p.Trunk != "" && !trunkUnits[p.Unit] {
		return fmt.Errorf("unit %s: a trunk key's records carry attempts, admitted, rejected and peak_sessions", p.Unit)
	}
	if p.Model == Prepaid && p.Unit == "" {
		p.Unit = "consumed"
	}
	if _, ok := units[p.Unit]; !ok {
		return fmt.Errorf("unit must be one of attempts, admitted, rejected, tokens, overage, consumed, emergency, peak_caps, peak_sessions, peak_subscribers, got %q", p.Unit)
	}
	// Which keys each model takes, and which it needs.
	type key struct {
		name string
		set  bool
	}
	keys := []key{{"price", p.Price != nil}, {"fixed_fee", p.FixedFee != nil}, {"included", p.Included != 0},
		{"prepaid_tokens", p.PrepaidTokens != 0}, {"prepaid_price", p.PrepaidPrice != nil},
		{"overage_price", p.OveragePrice != nil}, {"tiers", p.Tiers != nil}}
	var need, may []string
	switch p.Model {
	case PayPerUse:
		need = []string{"price"}
	case Prepaid:
		need, may = []string{"prepaid_tokens", "prepaid_price", "overage_price"}, nil
	case Hybrid:
		need, may = []string{"fixed_fee", "price"}, []string{"included"}
	case Tiered:
		need = []string{"tiers"}
	default:
		return fmt.Errorf("model must be pay_per_use, prepaid, hybrid or tiered, got %q", p.Model)
	}
	for _, k := range keys {
		switch {
		case slices.Contains(need, k.name) && !k.set:
			return fmt.Errorf("%s is required for model %s", k.name, p.Model)
		case !slices.Contains(need, k.name) && !slices.Contains(may, k.name) && k.set:
			return fmt.Errorf("%s does not apply to model %s", k.name, p.Model)
		}
	}
	if p.Model == Tiered {
		return validTiers(p.Tiers)
	}
	return nil
}

func validTiers(tiers []Tier) error {
	if len(tiers) == 0 {
		return errors.New("tiers: at least one tier is required")
	}
	if len(tiers) > MaxTiers {
		return fmt.Errorf("tiers: at most %d tiers, got %d", MaxTiers, len(tiers))
	}
	var last Count
	for i, t := range tiers {
		switch {
		case t.Price == nil:
			return fmt.Errorf("tiers[%d]: price is required", i)
		case i == len(tiers)-1 && t.UpTo != nil:
			return fmt.Errorf("tiers[%d]: the last tier has no up_to (it takes all the rest)", i)
		case i < len(tiers)-1 && t.UpTo == nil:
			return fmt.Errorf("tiers[%d]: up_to is required but in the last tier", i)
		case t.UpTo != nil && *t.UpTo <= last:
			return fmt.Errorf("tiers[%d]: up_to must be above the tier before (%d), got %d", i, last, *t.UpTo)
		}
		if t.UpTo != nil {
			last = *t.UpTo
		}
	}
	return nil
}
