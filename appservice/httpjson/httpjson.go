// Package httpjson writes JSON answers, and errors in the Matrix APIs' shape, for Custodian's
// HTTP endpoints: the homeserver-facing API of the core and the admin API of the privacy
// engine. It is a leaf: it imports only the standard library, so every layer may use it.
package httpjson

import (
	"encoding/json"
	"net/http"
)

// Error is the body of an error answer, in the Matrix APIs' shape.
type Error struct {
	// ErrCode is the Matrix error code, e.g. "M_FORBIDDEN".
	ErrCode string `json:"errcode"`
	// Err is the human-readable message.
	Err string `json:"error"`
}

// WriteError answers with status and an [Error] of errcode and msg.
func WriteError(w http.ResponseWriter, status int, errcode, msg string) {
	Write(w, status, Error{ErrCode: errcode, Err: msg})
}

// Write answers with status and body encoded as JSON. An encoding or write error is dropped:
// the status line is already sent, and the client sees a truncated body.
func Write(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
