//go:build e2e

package e2e_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestIngestRejects: requests the homeserver would never send, or that an attacker would, get
// clear Matrix errors and change nothing; the transaction ID they used is still free afterwards.
func TestIngestRejects(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		const maxBody = 65536
		env := e2e.New(t, backend, e2e.WithConfigValue("appservice.max_body_bytes", maxBody))
		hsToken := env.HSToken(t)
		const path = "/_matrix/app/v1/transactions/t1"
		valid := []byte(fmt.Sprintf(`{"events":[{
			"type": "m.room.message",
			"room_id": "!e2e-ingest:localhost",
			"sender": "@e2e-ingest:localhost",
			"event_id": "$e2e-ingest-1",
			"origin_server_ts": %d,
			"content": {"msgtype": "m.text", "body": "not a command"}
		}]}`, time.Now().UnixMilli()))
		oversized := []byte(`{"events":[],"padding":"` + strings.Repeat("x", maxBody+1024) + `"}`)

		txnRows := func() int {
			t.Helper()
			var n int
			if err := env.DB(t).QueryRow(`SELECT COUNT(*) FROM as_txn`).Scan(&n); err != nil {
				t.Fatalf("counting as_txn rows: %v", err)
			}
			return n
		}
		t1Rows := func() int {
			t.Helper()
			var n int
			if err := env.DB(t).QueryRow(`SELECT COUNT(*) FROM as_txn WHERE txn_id=$1`, "t1").Scan(&n); err != nil {
				t.Fatalf("counting as_txn rows: %v", err)
			}
			return n
		}
		before := txnRows()

		tests := []struct {
			name       string
			token      string
			body       []byte
			wantStatus int
			wantCode   string // empty: any M_ code
		}{
			{"wrong hs_token", "not-the-" + hsToken, valid, http.StatusForbidden, ""},
			{"missing hs_token", "", valid, http.StatusUnauthorized, ""},
			{"oversized body", hsToken, oversized, http.StatusRequestEntityTooLarge, "M_TOO_LARGE"},
			{"malformed JSON", hsToken, []byte(`{"events": [`), http.StatusBadRequest, "M_NOT_JSON"},
		}
		for _, tt := range tests {
			status, body := env.ASRequest(t, http.MethodPut, path, tt.token, tt.body)
			if status != tt.wantStatus {
				t.Errorf("%s: PUT %s = %d, want %d: %s", tt.name, path, status, tt.wantStatus, body)
			}
			checkMatrixError(t, tt.name, body, tt.wantCode)
		}

		status, body := env.ASRequest(t, http.MethodGet, "/_matrix/app/v1/no-such-endpoint", hsToken, nil)
		if status != http.StatusNotFound && status != http.StatusMethodNotAllowed {
			t.Errorf("unknown endpoint: status %d, want 404 or 405: %s", status, body)
		}
		checkMatrixError(t, "unknown endpoint", body, "")

		if after := txnRows(); after != before {
			t.Errorf("as_txn has %d rows after the rejected requests, want %d as before", after, before)
		}
		if n := t1Rows(); n != 0 {
			t.Fatalf("a rejected request recorded transaction t1")
		}

		// The ID the rejected requests used is still free: a valid transaction with it is new.
		status, body = env.ASRequest(t, http.MethodPut, path, hsToken, valid)
		if status != http.StatusOK {
			t.Fatalf("valid transaction t1: status %d, want 200: %s", status, body)
		}
		if n := t1Rows(); n != 1 {
			t.Errorf("as_txn has %d rows for t1 after it was acknowledged, want 1", n)
		}
		// And repeating it is a no-op.
		afterValid := txnRows()
		status, body = env.ASRequest(t, http.MethodPut, path, hsToken, valid)
		if status != http.StatusOK {
			t.Errorf("repeated transaction t1: status %d, want 200: %s", status, body)
		}
		if n := txnRows(); n != afterValid {
			t.Errorf("as_txn has %d rows after t1 was repeated, want %d", n, afterValid)
		}
	})
}

// checkMatrixError checks that body is a Matrix error ({"errcode": "M_…", "error": "…"}), with
// errcode wantCode unless that is empty.
func checkMatrixError(t *testing.T, name string, body []byte, wantCode string) {
	t.Helper()
	var merr struct {
		ErrCode string `json:"errcode"`
		Err     string `json:"error"`
	}
	if err := json.Unmarshal(body, &merr); err != nil || !strings.HasPrefix(merr.ErrCode, "M_") {
		t.Errorf("%s: answer %q is not a Matrix error", name, body)
		return
	}
	if wantCode != "" && merr.ErrCode != wantCode {
		t.Errorf("%s: errcode %s, want %s", name, merr.ErrCode, wantCode)
	}
}
