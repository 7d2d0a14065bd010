package appservice

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/httpjson"
)

type testRequest struct {
	method, path, token, body string
}

func do(t testing.TB, base string, req testRequest) (int, httpjson.Error) {
	t.Helper()
	httpReq, err := http.NewRequest(req.method, base+req.path, strings.NewReader(req.body))
	if err != nil {
		t.Fatal(err)
	}
	if req.token != "" {
		httpReq.Header.Set("Authorization", "Bearer "+req.token)
	}
	resp, err := http.DefaultClient.Do(httpReq)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var merr httpjson.Error
	if resp.StatusCode != http.StatusOK {
		if err = json.Unmarshal(body, &merr); err != nil {
			t.Fatalf("%s %s: status %d with a non-JSON body %q", req.method, req.path, resp.StatusCode, body)
		}
	}
	return resp.StatusCode, merr
}

// messageEvent returns a timeline message event as the homeserver would send it.
func messageEvent(evtID, roomID, sender, body string) map[string]any {
	return map[string]any{
		"event_id": evtID, "room_id": roomID, "sender": sender, "type": "m.room.message",
		"origin_server_ts": 1700000000000, "content": map[string]any{"msgtype": "m.text", "body": body},
	}
}

func transaction(events ...map[string]any) string {
	data, _ := json.Marshal(map[string]any{"events": events})
	return string(data)
}

func countRows(t testing.TB, db *dbutil.Database, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(context.Background(), "SELECT COUNT(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestIngestRejectsBadRequests(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := newTestDB(t, dialect)
			cfg := testConfig(deadHomeserver(t).URL)
			cfg.AppService.MaxBodyBytes = 4096
			_, base := startTestService(t, db, cfg)
			valid := transaction(messageEvent("$1", "!r:example.org", "@alice:example.org", "hi"))

			tests := []struct {
				name       string
				req        testRequest
				wantStatus int
				wantCode   string
			}{
				{"missing token", testRequest{http.MethodPut, "/_matrix/app/v1/transactions/1", "", valid}, 401, "M_UNAUTHORIZED"},
				{"wrong token", testRequest{http.MethodPut, "/_matrix/app/v1/transactions/1", "nope", valid}, 403, "M_FORBIDDEN"},
				{"as token is not the hs token", testRequest{http.MethodPut, "/_matrix/app/v1/transactions/1", testASToken, valid}, 403, "M_FORBIDDEN"},
				{"not JSON", testRequest{http.MethodPut, "/_matrix/app/v1/transactions/1", testHSToken, "{nope"}, 400, "M_NOT_JSON"},
				{"JSON of the wrong shape", testRequest{http.MethodPut, "/_matrix/app/v1/transactions/1", testHSToken, `[1,2]`}, 400, "M_BAD_JSON"},
				{"trailing garbage", testRequest{http.MethodPut, "/_matrix/app/v1/transactions/1", testHSToken, `{} {}`}, 400, "M_NOT_JSON"},
				{"oversized", testRequest{http.MethodPut, "/_matrix/app/v1/transactions/1", testHSToken, transaction(messageEvent("$1", "!r:example.org", "@a:example.org", strings.Repeat("x", 5000)))}, 413, "M_TOO_LARGE"},
				{"unknown path", testRequest{http.MethodGet, "/_matrix/app/v1/nope", testHSToken, ""}, 404, "M_UNRECOGNIZED"},
				{"wrong method", testRequest{http.MethodPost, "/_matrix/app/v1/transactions/1", testHSToken, valid}, 405, "M_UNRECOGNIZED"},
				{"unknown user", testRequest{http.MethodGet, "/_matrix/app/v1/users/@nobody:example.org", testHSToken, ""}, 404, "M_NOT_FOUND"},
				{"unknown alias", testRequest{http.MethodGet, "/_matrix/app/v1/rooms/%23nothing:example.org", testHSToken, ""}, 404, "M_NOT_FOUND"},
				{"ping without token", testRequest{http.MethodPost, "/_matrix/app/v1/ping", "", "{}"}, 401, "M_UNAUTHORIZED"},
				{"ping", testRequest{http.MethodPost, "/_matrix/app/v1/ping", testHSToken, `{"transaction_id":"x"}`}, 200, ""},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					status, merr := do(t, base, tt.req)
					if status != tt.wantStatus || merr.ErrCode != tt.wantCode {
						t.Errorf("%s %s = %d %s, want %d %s", tt.req.method, tt.req.path, status, merr.ErrCode, tt.wantStatus, tt.wantCode)
					}
				})
			}
			if n := countRows(t, db, "as_txn"); n != 0 {
				t.Fatalf("as_txn has %d rows after only rejected transactions, want 0", n)
			}
			// The rejected attempts did not burn the transaction ID.
			if status, merr := do(t, base, testRequest{http.MethodPut, "/_matrix/app/v1/transactions/1", testHSToken, valid}); status != 200 {
				t.Fatalf("valid transaction after rejections = %d %s, want 200", status, merr.ErrCode)
			}
			if n := countRows(t, db, "as_txn"); n != 1 {
				t.Fatalf("as_txn has %d rows, want 1", n)
			}
		})
	}
}

func TestIngestDeliversInOrderOnceAndDropsEchoes(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := newTestDB(t, dialect)
			br := newRecordingBridge("rec")
			_, base := startTestService(t, db, testConfig(deadHomeserver(t).URL), br)
			ctx := context.Background()
			room := id.RoomID("!portal:example.org")
			if err := br.host.ClaimRoom(ctx, room, Provenance{Actor: "@alice:example.org", RoomID: room, EventID: "$cmd"}); err != nil {
				t.Fatal(err)
			}
			put := func(txnID string, events ...map[string]any) {
				t.Helper()
				status, merr := do(t, base, testRequest{http.MethodPut, "/_matrix/app/v1/transactions/" + txnID, testHSToken, transaction(events...)})
				if status != 200 {
					t.Fatalf("PUT transaction %s = %d %s, want 200", txnID, status, merr.ErrCode)
				}
			}
			put("1",
				messageEvent("$a", string(room), "@alice:example.org", "one"),
				messageEvent("$echo-bot", string(room), "@custodian:example.org", "from our bot"),
				messageEvent("$echo-ghost", string(room), "@rec_ghost:example.org", "from our ghost"),
				messageEvent("$b", string(room), "@alice:example.org", "two"),
			)
			put("1", messageEvent("$dup", string(room), "@alice:example.org", "retry of txn 1 with other content"))
			put("2", messageEvent("$b", string(room), "@alice:example.org", "two again"), messageEvent("$c", string(room), "@bob:example.org", "three"))

			var got []id.EventID
			for range 3 {
				got = append(got, br.next(t).ID)
			}
			if fmt.Sprint(got) != "[$a $b $c]" {
				t.Fatalf("bridge handled %v, want [$a $b $c] (echoes dropped, duplicates once, in order)", got)
			}
			br.assertNoEvent(t, 200*time.Millisecond)
		})
	}
}

func TestIngestReplaysUnfinishedEventsAfterCrash(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := newTestDB(t, dialect)
			ctx := context.Background()
			room := id.RoomID("!portal:example.org")

			// A first run acknowledges a transaction and dies before handling it: simulate that
			// by accepting it straight into the inbox of a migrated database.
			svc1, err := newService(testConfig(deadHomeserver(t).URL), testRegistration(), nil, testLogger(t), db)
			if err != nil {
				t.Fatal(err)
			}
			if err = svc1.upgradeDatabases(ctx); err != nil {
				t.Fatal(err)
			}
			if err = svc1.db.Room.Claim(ctx, room, "rec", "", "", time.Now()); err != nil {
				t.Fatal(err)
			}
			body := transaction(
				messageEvent("$1", string(room), "@alice:example.org", "one"),
				messageEvent("$2", string(room), "@alice:example.org", "two"),
				messageEvent("$3", string(room), "@alice:example.org", "three"),
			)
			events, _, err := parseTransaction("7", []byte(body))
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err = svc1.db.Inbox.Accept(ctx, "7", events, time.Now()); err != nil {
				t.Fatal(err)
			}

			br := newRecordingBridge("rec")
			_, base := startTestService(t, db, testConfig(deadHomeserver(t).URL), br)
			var got []id.EventID
			for range 3 {
				got = append(got, br.next(t).ID)
			}
			if fmt.Sprint(got) != "[$1 $2 $3]" {
				t.Fatalf("replay handled %v, want [$1 $2 $3]", got)
			}
			// The homeserver retrying the acknowledged transaction changes nothing.
			if status, _ := do(t, base, testRequest{http.MethodPut, "/_matrix/app/v1/transactions/7", testHSToken, body}); status != 200 {
				t.Fatalf("retried transaction = %d, want 200", status)
			}
			br.assertNoEvent(t, 200*time.Millisecond)
		})
	}
}

func TestParseTransactionSkipsMalformedEvents(t *testing.T) {
	tests := []struct {
		name        string
		body        string
		wantEvents  int
		wantSkipped int
		wantErr     bool
	}{
		{"empty object", `{}`, 0, 0, false},
		{"one event", transaction(messageEvent("$1", "!r:x", "@a:x", "hi")), 1, 0, false},
		{"event missing room", `{"events":[{"event_id":"$1","sender":"@a:x","type":"m.room.message"}]}`, 0, 1, false},
		{"event not an object", `{"events":[1,"two",null,{"event_id":"$1","room_id":"!r:x","sender":"@a:x","type":"t"}]}`, 1, 3, false},
		{"ephemeral without ids", `{"ephemeral":[{"type":"m.typing","room_id":"!r:x","content":{}}]}`, 1, 0, false},
		{"msc2409 ephemeral", `{"de.sorunome.msc2409.ephemeral":[{"type":"m.presence","sender":"@a:x","content":{}}]}`, 1, 0, false},
		{"events not a list", `{"events":{}}`, 0, 0, true},
		{"not an object", `"x"`, 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			events, skipped, err := parseTransaction("t", []byte(tt.body))
			if (err != nil) != tt.wantErr || len(events) != tt.wantEvents || skipped != tt.wantSkipped {
				t.Fatalf("parseTransaction(%s) = %d events, %d skipped, err %v; want %d, %d, err %v",
					tt.body, len(events), skipped, err, tt.wantEvents, tt.wantSkipped, tt.wantErr)
			}
			seen := map[int]bool{}
			for _, evt := range events {
				if seen[evt.Index] {
					t.Fatalf("duplicate index %d", evt.Index)
				}
				seen[evt.Index] = true
			}
		})
	}
}

func FuzzParseTransaction(f *testing.F) {
	f.Add([]byte(transaction(messageEvent("$1", "!r:x", "@a:x", "hi"))))
	f.Add([]byte(`{"events":[1,{"type":"x"}],"ephemeral":[{}]}`))
	f.Add([]byte(`{"events":null}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		events, skipped, err := parseTransaction("t", body)
		if err != nil {
			return
		}
		for _, evt := range events {
			if !evt.Ephemeral && (evt.EventID == "" || evt.RoomID == "") {
				t.Fatalf("accepted a PDU without IDs: %+v", evt)
			}
			if !json.Valid(evt.JSON) || !bytes.HasPrefix(evt.JSON, []byte("{")) {
				t.Fatalf("accepted a non-object event %q", evt.JSON)
			}
		}
		_ = skipped
	})
}

func TestMetricsEndpoint(t *testing.T) {
	db := newTestDB(t, astest.SQLite)
	cfg := testConfig(deadHomeserver(t).URL)
	listen := "127.0.0.1:0"
	cfg.Metrics.Listen = &listen
	svc, base := startTestService(t, db, cfg)
	if status, _ := do(t, base, testRequest{http.MethodPut, "/_matrix/app/v1/transactions/m1", testHSToken,
		transaction(messageEvent("$m1", "!r:example.org", "@alice:example.org", "secret body text"))}); status != 200 {
		t.Fatalf("PUT = %d, want 200", status)
	}
	do(t, base, testRequest{http.MethodPut, "/_matrix/app/v1/transactions/m2", "wrong", "{}"})
	resp, err := http.Get("http://" + svc.metricsAddr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`custodian_transactions_received_total{outcome="accepted"} 1`,
		`custodian_transactions_received_total{outcome="rejected"} 1`,
		`custodian_events_received_total{kind="pdu"} 1`,
		`custodian_ingest_duration_seconds_count 1`,
		`custodian_inbox_depth`,
		`custodian_handler_errors_total`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(string(body), "secret body text") {
		t.Error("/metrics contains a message body")
	}
}

// secretBridge is a recording bridge with a sensitive command, like !irc login.
type secretBridge struct{ *recordingBridge }

func (sb secretBridge) Commands() []*Command {
	return []*Command{{
		Name: "login", Args: "<password>", Help: "Log in.", Scope: ScopeDM, Sensitive: true,
		Handler: func(ctx context.Context, ce *CommandEvent) error { return nil },
	}}
}

func TestMessagesCarryingSecretsNeverReachBridges(t *testing.T) {
	db := newTestDB(t, astest.SQLite)
	br := secretBridge{newRecordingBridge("rec")}
	_, base := startTestService(t, db, testConfig(deadHomeserver(t).URL), br)
	room := id.RoomID("!portal:example.org")
	if err := br.host.ClaimRoom(context.Background(), room, Provenance{}); err != nil {
		t.Fatal(err)
	}
	body := transaction(
		messageEvent("$secret", string(room), "@alice:example.org", "!rec login hunter2"),
		messageEvent("$typo", string(room), "@alice:example.org", "rec logn hunter2"),
		messageEvent("$plain", string(room), "@alice:example.org", "just chatting"),
	)
	if status, _ := do(t, base, testRequest{http.MethodPut, "/_matrix/app/v1/transactions/s1", testHSToken, body}); status != 200 {
		t.Fatalf("PUT = %d, want 200", status)
	}
	if got := br.next(t).ID; got != "$plain" {
		t.Fatalf("bridge got %s first, want $plain (commands carrying secrets withheld)", got)
	}
	br.assertNoEvent(t, 200*time.Millisecond)
}
