package appservice

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"testing"

	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// queryBridge answers user and alias queries from fixed sets and records what it was asked.
type queryBridge struct {
	*recordingBridge
	users   map[id.UserID]bool
	aliases map[id.RoomAlias]bool

	lock    sync.Mutex
	queried []string
}

var (
	_ UserQuerier  = (*queryBridge)(nil)
	_ AliasQuerier = (*queryBridge)(nil)
)

func (qb *queryBridge) Namespaces() Namespaces {
	return Namespaces{UserPrefix: qb.id + "_", AliasPrefix: qb.id + "_"}
}

func (qb *queryBridge) QueryUser(ctx context.Context, userID id.UserID) (bool, error) {
	qb.record(string(userID))
	if userID == "@"+id.UserID(qb.id)+"_broken:example.org" {
		return false, errors.New("remote network unreachable")
	}
	return qb.users[userID], nil
}

func (qb *queryBridge) QueryAlias(ctx context.Context, alias id.RoomAlias) (bool, error) {
	qb.record(string(alias))
	return qb.aliases[alias], nil
}

func (qb *queryBridge) record(what string) {
	qb.lock.Lock()
	defer qb.lock.Unlock()
	qb.queried = append(qb.queried, what)
}

// takeQueried returns and forgets what the bridge was asked.
func (qb *queryBridge) takeQueried() []string {
	qb.lock.Lock()
	defer qb.lock.Unlock()
	out := qb.queried
	qb.queried = nil
	return out
}

func TestUserAndAliasQueriesReachTheOwningBridge(t *testing.T) {
	q := &queryBridge{
		recordingBridge: newRecordingBridge("q"),
		users:           map[id.UserID]bool{"@q_known:example.org": true},
		aliases:         map[id.RoomAlias]bool{"#q_known:example.org": true},
	}
	other := &queryBridge{
		recordingBridge: newRecordingBridge("other"),
		users:           map[id.UserID]bool{"@other_known:example.org": true},
		aliases:         map[id.RoomAlias]bool{"#other_known:example.org": true},
	}
	// plain claims a namespace but answers no queries.
	plain := newRecordingBridge("plain")
	_, base := startTestService(t, astest.TestDB(t, astest.SQLite), testConfig(deadHomeserver(t).URL), q, other, plain)

	userPath := func(user string) string { return "/_matrix/app/v1/users/" + url.PathEscape(user) }
	aliasPath := func(alias string) string { return "/_matrix/app/v1/rooms/" + url.PathEscape(alias) }
	tests := []struct {
		name        string
		path        string
		wantStatus  int
		wantQ       []string // what bridge q was asked
		wantOther   []string // what bridge other was asked
		wantErrCode string
	}{
		{"user the bridge has", userPath("@q_known:example.org"), 200, []string{"@q_known:example.org"}, nil, ""},
		{"user the bridge does not have", userPath("@q_unknown:example.org"), 404, []string{"@q_unknown:example.org"}, nil, "M_NOT_FOUND"},
		{"user query failing in the bridge", userPath("@q_broken:example.org"), 500, []string{"@q_broken:example.org"}, nil, "M_UNKNOWN"},
		{"user of the other bridge", userPath("@other_known:example.org"), 200, nil, []string{"@other_known:example.org"}, ""},
		{"user of a bridge without UserQuerier", userPath("@plain_x:example.org"), 404, nil, nil, "M_NOT_FOUND"},
		{"user in no namespace", userPath("@alice:example.org"), 404, nil, nil, "M_NOT_FOUND"},
		{"user with the prefix on another server", userPath("@q_known:elsewhere.example"), 404, nil, nil, "M_NOT_FOUND"},
		{"alias the bridge has", aliasPath("#q_known:example.org"), 200, []string{"#q_known:example.org"}, nil, ""},
		{"alias the bridge does not have", aliasPath("#q_unknown:example.org"), 404, []string{"#q_unknown:example.org"}, nil, "M_NOT_FOUND"},
		{"alias of the other bridge", aliasPath("#other_known:example.org"), 200, nil, []string{"#other_known:example.org"}, ""},
		{"alias of the other bridge it does not have", aliasPath("#other_nope:example.org"), 404, nil, []string{"#other_nope:example.org"}, "M_NOT_FOUND"},
		{"alias of a bridge without AliasQuerier", aliasPath("#plain_x:example.org"), 404, nil, nil, "M_NOT_FOUND"},
		{"alias in no namespace", aliasPath("#lobby:example.org"), 404, nil, nil, "M_NOT_FOUND"},
		{"alias with the prefix on another server", aliasPath("#q_known:elsewhere.example"), 404, nil, nil, "M_NOT_FOUND"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, merr := do(t, base, testRequest{http.MethodGet, tt.path, testHSToken, ""})
			if status != tt.wantStatus || merr.ErrCode != tt.wantErrCode {
				t.Errorf("GET %s = %d %s, want %d %s", tt.path, status, merr.ErrCode, tt.wantStatus, tt.wantErrCode)
			}
			if got := q.takeQueried(); !slices.Equal(got, tt.wantQ) {
				t.Errorf("bridge q was asked %q, want %q", got, tt.wantQ)
			}
			if got := other.takeQueried(); !slices.Equal(got, tt.wantOther) {
				t.Errorf("bridge other was asked %q, want %q", got, tt.wantOther)
			}
		})
	}
	// Queries need the homeserver's token like everything else.
	if status, _ := do(t, base, testRequest{http.MethodGet, userPath("@q_known:example.org"), "wrong", ""}); status != http.StatusForbidden {
		t.Errorf("user query with a wrong token = %d, want 403", status)
	}
	if got := q.takeQueried(); len(got) != 0 {
		t.Errorf("bridge q was asked %q by a request with a wrong token", got)
	}
}
