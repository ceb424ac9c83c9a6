// Package billing turns verified usage ledgers into invoices, with the
// customer's price sheet (YAML; configs/price-sheets/*.yaml documents
// every field, one example per model).
//
//	sheet, err := billing.LoadSheet("acme.yaml")
//	rep := ledger.Verify(inputs, ledger.VerifyOptions{}) // bill only what verifies
//	inv, err := billing.Bill(records, sheet, from, to)
//	inv.WriteTable(os.Stdout) // or WriteCSV, WriteJSON
//
// Models: pay_per_use (quantity × price), prepaid (a pool paid up front,
// overage per unit beyond it), hybrid (a fixed fee, usage beyond what it
// includes), tiered (graduated: each unit at its tier's price).
//
// # Guarantees
//
//   - Money is exact: prices are decimals (at most 9 places) held as
//     integers, never floats; each line's amount is quantity × unit price
//     rounded to 2 places half up (0.005 → 0.01), and the total is the sum
//     of the rounded lines.
//   - The same records and sheet give the same invoice, byte for byte:
//     lines follow the sheet's plans in order, then the unbilled emergency
//     lines, then notes sorted by service.
//   - Emergency attempts are metered on their own and billed only by a plan
//     whose unit is emergency; otherwise they appear at no charge.
package billing
