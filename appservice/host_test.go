package appservice

import (
	"errors"
	"testing"

	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// prefixBridge is a recordingBridge with the namespaces it is given.
type prefixBridge struct {
	*recordingBridge
	ns Namespaces
}

func (pb prefixBridge) Namespaces() Namespaces { return pb.ns }

func TestHostIntentRefusesLocalpartsOutsideTheNamespace(t *testing.T) {
	rec := newRecordingBridge("rec")
	noGhosts := prefixBridge{recordingBridge: newRecordingBridge("bot_only"), ns: Namespaces{}}
	svc, err := newService(testConfig(deadHomeserver(t).URL), testRegistration(), []Bridge{rec, noGhosts},
		testLogger(t), astest.TestDB(t, astest.SQLite))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		bridge    string
		localpart string
		want      id.UserID // empty: refused
		wantErr   error     // nil: any error
	}{
		{"own ghost", "rec", "rec_alice", "@rec_alice:example.org", nil},
		{"own ghost with allowed punctuation", "rec", "rec_a.b=c-d/e", "@rec_a.b=c-d/e:example.org", nil},
		{"bare prefix", "rec", "rec_", "", ErrOutsideNamespace},
		{"another bridge's namespace", "rec", "bot_only_x", "", ErrOutsideNamespace},
		{"prefix without its underscore", "rec", "recalice", "", ErrOutsideNamespace},
		{"prefix in another case", "rec", "REC_alice", "", ErrOutsideNamespace},
		{"prefix inside the localpart", "rec", "x_rec_alice", "", ErrOutsideNamespace},
		{"the Custodian bot", "rec", "custodian", "", ErrOutsideNamespace},
		{"a real user", "rec", "alice", "", ErrOutsideNamespace},
		{"empty", "rec", "", "", ErrOutsideNamespace},
		{"inside the prefix but not a valid localpart", "rec", "rec_Alice Smith", "", nil},
		{"inside the prefix but naming a server", "rec", "rec_alice:evil.example", "", nil},
		{"a bridge without ghosts", "bot_only", "bot_only_x", "", ErrOutsideNamespace},
		{"a bridge without ghosts, empty", "bot_only", "", "", ErrOutsideNamespace},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			intent, err := svc.bridgeByID[tt.bridge].Intent(tt.localpart)
			if tt.want != "" {
				if err != nil || intent == nil || intent.UserID != tt.want {
					t.Fatalf("Intent(%q) = %v, %v; want an intent for %s", tt.localpart, intent, err, tt.want)
				}
				return
			}
			if err == nil || intent != nil {
				t.Fatalf("Intent(%q) = %v, %v; want it refused", tt.localpart, intent, err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Intent(%q) error = %v, want %v", tt.localpart, err, tt.wantErr)
			}
		})
	}
}
