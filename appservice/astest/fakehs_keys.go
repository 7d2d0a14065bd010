package astest

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// The fake homeserver's end-to-end encryption endpoints: devices upload their keys, others
// query the device keys and claim one-time keys, and to-device messages are recorded for the
// test to deliver (see [FakeHomeserver.ToDevice] and [TestDevice.Receive]). Device keys are
// served as uploaded, signatures and all, so the clients' own checks run on them.

// Patterns of the fake homeserver's key endpoints, for [FakeHomeserver.RequestsTo] and
// [FakeHomeserver.Fail].
const (
	PatternKeysUpload   = "POST /_matrix/client/v3/keys/upload"
	PatternKeysQuery    = "POST /_matrix/client/v3/keys/query"
	PatternKeysClaim    = "POST /_matrix/client/v3/keys/claim"
	PatternSendToDevice = "PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnID}"
)

// ToDeviceMessage is one to-device message the fake homeserver accepted, for one device.
type ToDeviceMessage struct {
	Sender id.UserID
	// Type is the event type ("m.room.encrypted").
	Type string
	// Recipient and DeviceID address the message ("*" for all the recipient's devices).
	Recipient id.UserID
	DeviceID  id.DeviceID
	Content   json.RawMessage
}

type fakeKeys struct {
	devices  map[id.UserID]map[id.DeviceID]json.RawMessage
	otks     map[id.UserID]map[id.DeviceID]map[id.KeyID]json.RawMessage
	toDevice []ToDeviceMessage
	txnIDs   map[string]bool // sender + "\x00" + txn ID
}

func (hs *FakeHomeserver) handleKeys(handle func(pattern string, fn func(w http.ResponseWriter, r *http.Request, req *Request))) {
	hs.keys = fakeKeys{
		devices: make(map[id.UserID]map[id.DeviceID]json.RawMessage),
		otks:    make(map[id.UserID]map[id.DeviceID]map[id.KeyID]json.RawMessage),
		txnIDs:  make(map[string]bool),
	}
	handle(PatternKeysUpload, hs.postKeysUpload)
	handle(PatternKeysQuery, hs.postKeysQuery)
	handle(PatternKeysClaim, hs.postKeysClaim)
	handle(PatternSendToDevice, hs.putSendToDevice)
}

// ToDevice returns the to-device messages accepted so far for recipient (every recipient if
// empty), in order.
func (hs *FakeHomeserver) ToDevice(recipient id.UserID) []ToDeviceMessage {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	var out []ToDeviceMessage
	for _, msg := range hs.keys.toDevice {
		if recipient == "" || msg.Recipient == recipient {
			out = append(out, msg)
		}
	}
	return out
}

// Devices returns the IDs of the devices userID uploaded keys for, sorted.
func (hs *FakeHomeserver) Devices(userID id.UserID) []id.DeviceID {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	var out []id.DeviceID
	for deviceID := range hs.keys.devices[userID] {
		out = append(out, deviceID)
	}
	slices.Sort(out)
	return out
}

// postKeysUpload stores the device keys and one-time keys of the requester's device: the
// device named in the device keys, else the device_id query parameter (an appservice user's
// device, as MSC4190 clients send).
func (hs *FakeHomeserver) postKeysUpload(w http.ResponseWriter, _ *http.Request, req *Request) {
	var body struct {
		DeviceKeys  json.RawMessage              `json:"device_keys"`
		OneTimeKeys map[id.KeyID]json.RawMessage `json:"one_time_keys"`
	}
	if err := req.DecodeBody(&body); err != nil {
		writeError(w, http.StatusBadRequest, "M_NOT_JSON", "Body is not JSON")
		return
	}
	deviceID := id.DeviceID(req.Query.Get("device_id"))
	if len(body.DeviceKeys) > 0 && string(body.DeviceKeys) != "null" {
		var keys mautrix.DeviceKeys
		if err := json.Unmarshal(body.DeviceKeys, &keys); err != nil || keys.UserID != req.UserID || keys.DeviceID == "" {
			writeError(w, http.StatusBadRequest, "M_INVALID_PARAM", "Device keys of another user or device")
			return
		}
		deviceID = keys.DeviceID
	}
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if deviceID == "" {
		writeError(w, http.StatusBadRequest, "M_MISSING_PARAM", "No device to upload keys for")
		return
	}
	if len(body.DeviceKeys) > 0 && string(body.DeviceKeys) != "null" {
		if hs.keys.devices[req.UserID] == nil {
			hs.keys.devices[req.UserID] = make(map[id.DeviceID]json.RawMessage)
		}
		hs.keys.devices[req.UserID][deviceID] = body.DeviceKeys
	}
	if hs.keys.otks[req.UserID] == nil {
		hs.keys.otks[req.UserID] = make(map[id.DeviceID]map[id.KeyID]json.RawMessage)
	}
	otks := hs.keys.otks[req.UserID][deviceID]
	if otks == nil {
		otks = make(map[id.KeyID]json.RawMessage)
		hs.keys.otks[req.UserID][deviceID] = otks
	}
	for keyID, key := range body.OneTimeKeys {
		otks[keyID] = key
	}
	counts := map[string]int{}
	for keyID := range otks {
		algorithm, _ := keyID.Parse()
		counts[string(algorithm)]++
	}
	writeJSON(w, http.StatusOK, map[string]any{"one_time_key_counts": counts})
}

// postKeysQuery answers the uploaded device keys of the requested users (all their devices, or
// those listed). It serves no cross-signing keys.
func (hs *FakeHomeserver) postKeysQuery(w http.ResponseWriter, _ *http.Request, req *Request) {
	var body mautrix.ReqQueryKeys
	if err := req.DecodeBody(&body); err != nil {
		writeError(w, http.StatusBadRequest, "M_NOT_JSON", "Body is not JSON")
		return
	}
	hs.lock.Lock()
	defer hs.lock.Unlock()
	out := make(map[id.UserID]map[id.DeviceID]json.RawMessage)
	for userID, wanted := range body.DeviceKeys {
		out[userID] = make(map[id.DeviceID]json.RawMessage)
		for deviceID, keys := range hs.keys.devices[userID] {
			if len(wanted) == 0 || slices.Contains(wanted, deviceID) {
				out[userID][deviceID] = keys
			}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"device_keys": out, "failures": map[string]any{}})
}

// postKeysClaim hands out, and forgets, one one-time key of the requested algorithm for each
// requested device (the lowest key ID first).
func (hs *FakeHomeserver) postKeysClaim(w http.ResponseWriter, _ *http.Request, req *Request) {
	var body mautrix.ReqClaimKeys
	if err := req.DecodeBody(&body); err != nil {
		writeError(w, http.StatusBadRequest, "M_NOT_JSON", "Body is not JSON")
		return
	}
	hs.lock.Lock()
	defer hs.lock.Unlock()
	out := make(map[id.UserID]map[id.DeviceID]map[id.KeyID]json.RawMessage)
	for userID, devices := range body.OneTimeKeys {
		for deviceID, algorithm := range devices {
			var keyIDs []id.KeyID
			for keyID := range hs.keys.otks[userID][deviceID] {
				if strings.HasPrefix(string(keyID), string(algorithm)+":") {
					keyIDs = append(keyIDs, keyID)
				}
			}
			if len(keyIDs) == 0 {
				continue
			}
			slices.Sort(keyIDs)
			if out[userID] == nil {
				out[userID] = make(map[id.DeviceID]map[id.KeyID]json.RawMessage)
			}
			out[userID][deviceID] = map[id.KeyID]json.RawMessage{keyIDs[0]: hs.keys.otks[userID][deviceID][keyIDs[0]]}
			delete(hs.keys.otks[userID][deviceID], keyIDs[0])
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"one_time_keys": out, "failures": map[string]any{}})
}

// putSendToDevice records each message of the request, once per (sender, transaction ID).
func (hs *FakeHomeserver) putSendToDevice(w http.ResponseWriter, _ *http.Request, req *Request) {
	var body struct {
		Messages map[id.UserID]map[id.DeviceID]json.RawMessage `json:"messages"`
	}
	if err := req.DecodeBody(&body); err != nil {
		writeError(w, http.StatusBadRequest, "M_NOT_JSON", "Body is not JSON")
		return
	}
	hs.lock.Lock()
	defer hs.lock.Unlock()
	txnKey := req.UserID.String() + "\x00" + req.PathValues["txnID"]
	if hs.keys.txnIDs[txnKey] {
		writeJSON(w, http.StatusOK, map[string]any{})
		return
	}
	hs.keys.txnIDs[txnKey] = true
	recipients := make([]id.UserID, 0, len(body.Messages))
	for userID := range body.Messages {
		recipients = append(recipients, userID)
	}
	slices.Sort(recipients)
	for _, userID := range recipients {
		devices := make([]id.DeviceID, 0, len(body.Messages[userID]))
		for deviceID := range body.Messages[userID] {
			devices = append(devices, deviceID)
		}
		slices.Sort(devices)
		for _, deviceID := range devices {
			hs.keys.toDevice = append(hs.keys.toDevice, ToDeviceMessage{
				Sender: req.UserID, Type: req.PathValues["eventType"], Recipient: userID, DeviceID: deviceID,
				Content: body.Messages[userID][deviceID],
			})
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{})
}
