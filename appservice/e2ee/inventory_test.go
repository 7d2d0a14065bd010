package e2ee

import (
	"slices"
	"testing"
)

// TestInventoryExportsNoKeyMaterial checks that no declared crypto table exports a column that
// holds key material (keys, pickles, signatures), whether as an export, time, room or provenance
// column.
func TestInventoryExportsNoKeyMaterial(t *testing.T) {
	keyColumns := []string{"identity_key", "signing_key", "sender_key", "session", "key", "first_seen_key",
		"signature", "secret", "account", "signed_key", "signer_key", "forwarding_chains"}
	for _, ut := range Inventory() {
		for _, col := range slices.Concat(ut.Export, ut.Secret, []string{ut.TimeColumn, ut.RoomColumn, ut.SourceEventColumn}) {
			if slices.Contains(keyColumns, col) {
				t.Errorf("%s exports the key column %s", ut.Table, col)
			}
		}
	}
}
