package cluster

import (
	"encoding/binary"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/capsgate/capsgate/admission"
	"github.com/capsgate/capsgate/licensing"
	"github.com/capsgate/capsgate/licensing/registry"
)

// A licence file a member loaded and sent on, holding several documents,
// loads whole on the members it reaches: a member used to take one
// document (and refused the file once a text of several was refused).
func TestSpreadLicenceFileLoadsEveryDocument(t *testing.T) {
	c, eng, reg, msg := licenceMessage(t, "a", "b")
	(*delegate)(c).NotifyMsg(msg)
	require.Len(t, reg.List(), 2)
	require.Equal(t, 1000.0, eng.Service("voice").Stats().Limits.CAPS)
}

// licenceMessage returns a cluster whose licences are an empty registry
// over eng, and the message a member sends it when a licence file is
// loaded there: a licence of 500 CAPS for voice for each id.
func licenceMessage(t *testing.T, ids ...string) (*Cluster, *admission.Engine, *registry.Registry, []byte) {
	key, err := licensing.GenerateVendorKey()
	require.NoError(t, err)
	keys, err := licensing.NewKeyring(key.Public())
	require.NoError(t, err)
	eng := admission.NewEngine(admission.DefaultConfig())
	reg, err := registry.Open(registry.Config{Dir: t.TempDir(), Keys: keys, Sink: NewShares(eng), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	var file []byte
	for _, id := range ids {
		b, err := key.Sign(&licensing.License{ID: id, Service: "voice", CAPS: 500}, time.Now())
		require.NoError(t, err)
		file = append(file, b...)
	}
	c := &Cluster{cfg: Config{Licences: reg}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return c, eng, reg, slices.Concat([]byte{msgLicence}, binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano())), file)
}
