package example

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/astest/fakehost"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

const (
	testToken  = "acct-tok-5c1f9e0b7d"
	testAPIKey = "bridge-key-83a7"
	alice      = id.UserID("@alice:example.org")
	room       = id.RoomID("!room:example.org")
)

// fakeService is the remote service: subscriptions by key, with the account token that
// created them, and every request it answered.
type fakeService struct {
	lock    sync.Mutex
	subs    map[string]string
	posts   int
	deletes []string // "<key> <auth>"
}

func (fs *fakeService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fs.lock.Lock()
	defer fs.lock.Unlock()
	auth := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/subscriptions":
		fs.posts++
		key := r.Header.Get("Idempotency-Key")
		if key == "" || auth == "" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if _, ok := fs.subs[key]; !ok {
			fs.subs[key] = auth
		}
		w.WriteHeader(http.StatusCreated)
	case r.Method == http.MethodDelete && strings.HasPrefix(r.URL.Path, "/v1/subscriptions/"):
		key := strings.TrimPrefix(r.URL.Path, "/v1/subscriptions/")
		owner, ok := fs.subs[key]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		} else if auth != owner && auth != testAPIKey {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		delete(fs.subs, key)
		fs.deletes = append(fs.deletes, key+" "+auth)
		w.WriteHeader(http.StatusNoContent)
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

// state returns the live subscriptions (key → owner's token), the POSTs and the deletions.
func (fs *fakeService) state() (map[string]string, int, []string) {
	fs.lock.Lock()
	defer fs.lock.Unlock()
	subs := make(map[string]string, len(fs.subs))
	for k, v := range fs.subs {
		subs[k] = v
	}
	return subs, fs.posts, append([]string(nil), fs.deletes...)
}

type env struct {
	t   *testing.T
	h   *fakehost.Host
	br  *Bridge
	svc *fakeService
	ctx context.Context
}

func newEnv(t *testing.T, dialect string) *env {
	svc := &fakeService{subs: map[string]string{}}
	srv := httptest.NewServer(svc)
	t.Cleanup(srv.Close)
	br := New()
	h := fakehost.New(t, dialect, br)
	_, target := br.Config()
	*target.(*Config) = Config{URL: srv.URL + "/v1", APIKey: vault.NewSecret(testAPIKey)}
	if err := br.ValidateConfig(); err != nil {
		t.Fatalf("ValidateConfig = %v", err)
	}
	if err := br.Init(h); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(h.Logger().WithContext(context.Background()), 30*time.Second)
	t.Cleanup(cancel)
	return &env{t: t, h: h, br: br, svc: svc, ctx: ctx}
}

// link runs !example link <token> sent by sender as event eventID, as the bot would after its
// checks (and after redacting the message), and returns the event.
func (e *env) link(sender id.UserID, eventID id.EventID, token string) *event.Event {
	e.t.Helper()
	evt := &event.Event{
		ID: eventID, RoomID: room, Sender: sender, Type: event.EventMessage,
		Content: event.Content{Parsed: &event.MessageEventContent{MsgType: event.MsgText, Body: "!example link " + token}},
	}
	cmd := e.br.Commands()[0]
	ce := &appservice.CommandEvent{
		Event: evt, RoomID: room, Sender: sender, Group: BridgeID, Command: cmd.Name, Args: []string{token}, RawArgs: token,
	}
	if err := cmd.Handler(e.ctx, ce); err != nil {
		e.t.Fatalf("!example link = %v", err)
	}
	return evt
}

// tablesContaining returns the tables of the whole database (core, vault, state store, bridge)
// with a value that contains needle, as text or bytes.
func (e *env) tablesContaining(needle string) []string {
	e.t.Helper()
	q := "SELECT name FROM sqlite_master WHERE type='table'"
	if e.h.RawDB.Dialect == dbutil.Postgres {
		q = "SELECT table_name FROM information_schema.tables WHERE table_schema=current_schema()"
	}
	rows, err := e.h.RawDB.Query(e.ctx, q)
	if err != nil {
		e.t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err = rows.Scan(&name); err != nil {
			e.t.Fatal(err)
		}
		tables = append(tables, name)
	}
	if err = errors.Join(rows.Err(), rows.Close()); err != nil {
		e.t.Fatal(err)
	}
	var found []string
	for _, table := range tables {
		rows, err := e.h.RawDB.Query(e.ctx, fmt.Sprintf(`SELECT * FROM "%s"`, table))
		if err != nil {
			e.t.Fatal(err)
		}
		cols, _ := rows.Columns()
		hit := false
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err = rows.Scan(ptrs...); err != nil {
				e.t.Fatal(err)
			}
			for _, v := range vals {
				switch v := v.(type) {
				case string:
					hit = hit || strings.Contains(v, needle)
				case []byte:
					hit = hit || strings.Contains(string(v), needle)
				}
			}
		}
		if err = errors.Join(rows.Err(), rows.Close()); err != nil {
			e.t.Fatal(err)
		}
		if hit {
			found = append(found, table)
		}
	}
	return found
}

func TestExampleBridge(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			t.Run("LinkStoresRowWithProvenanceAndSealedToken", func(t *testing.T) {
				e := newEnv(t, dialect)
				evt := e.link(alice, "$link1", testToken)

				var roomID, source string
				var createdAt int64
				var sealed []byte
				err := e.h.BridgeDB.QueryRow(e.ctx, "SELECT room_id, source_event_id, created_at, token FROM example_link WHERE user_mxid=$1", alice).
					Scan(&roomID, &source, &createdAt, &sealed)
				if err != nil {
					t.Fatalf("link row: %v", err)
				}
				if roomID != string(room) || source != string(evt.ID) || createdAt == 0 {
					t.Errorf("provenance = %s %s %d, want %s %s and a time", roomID, source, createdAt, room, evt.ID)
				}
				if opened, err := e.h.Vault().Open(e.ctx, alice, tokenSecret, sealed); err != nil || !opened.Equal(testToken) {
					t.Errorf("sealed token does not open to the token: %v", err)
				}
				if tables := e.tablesContaining(testToken); len(tables) != 0 {
					t.Errorf("plaintext token stored in %v", tables)
				}
				if subs, _, _ := e.svc.state(); subs[string(evt.ID)] != testToken {
					t.Errorf("subscriptions = %v, want %s owned by the token", subs, evt.ID)
				}
				notices := e.h.Notices(alice)
				if len(notices) != 1 || notices[0].Notice.Cause != string(evt.ID) {
					t.Errorf("notices = %+v, want one caused by %s", notices, evt.ID)
				}
				if !e.h.CarriesSecret(evt) {
					t.Error("the link command is not treated as carrying a secret")
				}
				if strings.Contains(e.h.Logs(), testToken) {
					t.Error("the token was logged")
				}
			})

			t.Run("SameEventTwiceHasOneEffect", func(t *testing.T) {
				e := newEnv(t, dialect)
				e.link(alice, "$link1", testToken)
				e.link(alice, "$link1", testToken)
				if subs, posts, _ := e.svc.state(); posts != 1 || len(subs) != 1 {
					t.Errorf("posts = %d, subscriptions = %d, want 1 and 1", posts, len(subs))
				}
				if n := len(e.h.Notices(alice)); n != 1 {
					t.Errorf("notices = %d, want 1", n)
				}
			})

			t.Run("LinkingAgainReplacesTheSubscription", func(t *testing.T) {
				e := newEnv(t, dialect)
				e.link(alice, "$link1", testToken)
				e.link(alice, "$link2", testToken)
				if subs, _, _ := e.svc.state(); len(subs) != 1 || subs["$link2"] == "" {
					t.Errorf("subscriptions = %v, want only $link2", subs)
				}
			})

			t.Run("ExportNamesTheSecretWithoutItsValue", func(t *testing.T) {
				e := newEnv(t, dialect)
				e.link(alice, "$link1", testToken)
				table := e.h.Export(t, alice).Modules[BridgeID]["example_link"]
				if table == nil || table.RowCount != 1 || len(table.Rows) != 1 {
					t.Fatalf("export of example_link = %+v, want one row", table)
				}
				row := table.Rows[0]
				if row["source_event_id"] != "$link1" || row["room_id"] != string(room) {
					t.Errorf("exported row = %v, want its provenance", row)
				}
				if row["token"] != "[redacted]" || len(table.SecretColumns) != 1 || table.SecretColumns[0] != "token" {
					t.Errorf("exported secret = %v (columns %v), want named and [redacted]", row["token"], table.SecretColumns)
				}
			})

			t.Run("ForgetUndoesTheSubscriptionAndLeavesNoRow", func(t *testing.T) {
				e := newEnv(t, dialect)
				e.link(alice, "$link1", testToken)
				e.h.EraseUser(t, alice)
				subs, _, deletes := e.svc.state()
				if len(subs) != 0 || len(deletes) != 1 || deletes[0] != "$link1 "+testToken {
					t.Errorf("subscriptions = %v, deletions = %v, want $link1 deleted as the user", subs, deletes)
				}
				if tables := e.tablesContaining(string(alice)); len(tables) != 0 {
					t.Errorf("after erasure, %v still name the user", tables)
				}
				// A resumed erasure calls EraseRemote again: nothing to do, no error.
				if err := e.br.EraseRemote(e.ctx, alice); err != nil {
					t.Errorf("EraseRemote again = %v", err)
				}
			})

			t.Run("RedactionPurgesTheRowAndTheSubscription", func(t *testing.T) {
				e := newEnv(t, dialect)
				evt := e.link(alice, "$link1", testToken)
				redaction := &event.Event{
					ID: "$redact", RoomID: room, Sender: alice, Type: event.EventRedaction,
					Content: event.Content{Parsed: &event.RedactionEventContent{Redacts: evt.ID}},
				}
				purged := e.h.PurgeRedacted(t, redaction)
				if purged["example_link"] != 1 {
					t.Errorf("purged = %v, want one example_link row", purged)
				}
				var n int
				if err := e.h.BridgeDB.QueryRow(e.ctx, "SELECT COUNT(*) FROM example_link").Scan(&n); err != nil || n != 0 {
					t.Errorf("rows after purge = %d (%v), want 0", n, err)
				}
				subs, _, deletes := e.svc.state()
				if len(subs) != 0 || len(deletes) != 1 || deletes[0] != "$link1 "+testAPIKey {
					t.Errorf("subscriptions = %v, deletions = %v, want $link1 deleted with the API key", subs, deletes)
				}
			})

			t.Run("NoVaultRefusesBeforeAnyRemoteCall", func(t *testing.T) {
				e := newEnv(t, dialect)
				e.h.Secrets.SetDisabled(true)
				evt := &event.Event{ID: "$link1", RoomID: room, Sender: alice, Type: event.EventMessage}
				err := e.br.Commands()[0].Handler(e.ctx, &appservice.CommandEvent{
					Event: evt, RoomID: room, Sender: alice, Group: BridgeID, Command: "link", Args: []string{testToken}, RawArgs: testToken,
				})
				var userErr *appservice.UserError
				if !errors.As(err, &userErr) {
					t.Errorf("!example link without a vault = %v, want a message for the user", err)
				}
				if _, posts, _ := e.svc.state(); posts != 0 {
					t.Errorf("posts = %d, want none", posts)
				}
			})

			t.Run("SchemaMatchesInventory", func(t *testing.T) {
				e := newEnv(t, dialect)
				if err := e.h.Engine.CheckSchema(e.ctx); err != nil {
					t.Errorf("CheckSchema = %v", err)
				}
			})
		})
	}
}

func TestValidateConfig(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		paths []string
	}{
		{"valid", Config{URL: "https://api.example.com/v1", APIKey: vault.NewSecret("k")}, nil},
		{"relative url", Config{URL: "api.example.com", APIKey: vault.NewSecret("k")}, []string{"url"}},
		{"placeholder key", Config{URL: "http://127.0.0.1:8080", APIKey: vault.NewSecret("change-me")}, []string{"api_key"}},
		{"nothing set", Config{}, []string{"url", "api_key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := New()
			_, target := br.Config()
			*target.(*Config) = tt.cfg
			err := br.ValidateConfig()
			var paths []string
			for _, e := range unjoin(err) {
				var ce *appservice.ConfigError
				if !errors.As(e, &ce) {
					t.Fatalf("problem %v is not a *ConfigError", e)
				}
				paths = append(paths, ce.Path)
			}
			if fmt.Sprint(paths) != fmt.Sprint(tt.paths) {
				t.Errorf("problems at %v, want %v", paths, tt.paths)
			}
		})
	}
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	} else if err != nil {
		return []error{err}
	}
	return nil
}
