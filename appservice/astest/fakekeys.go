package astest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Patterns of the fake homeserver's device and key endpoints (see [FakeHomeserver.RequestsTo]).
const (
	PatternPutDevice          = "PUT /_matrix/client/v3/devices/{deviceID}"
	PatternLogin              = "POST /_matrix/client/v3/login"
	PatternKeysUpload         = "POST /_matrix/client/v3/keys/upload"
	PatternKeysQuery          = "POST /_matrix/client/v3/keys/query"
	PatternDeviceSigning      = "POST /_matrix/client/v3/keys/device_signing/upload"
	PatternSignaturesUpload   = "POST /_matrix/client/v3/keys/signatures/upload"
	PatternPutAccountData     = "PUT /_matrix/client/v3/user/{userID}/account_data/{eventType}"
	PatternGetAccountData     = "GET /_matrix/client/v3/user/{userID}/account_data/{eventType}"
	PatternSendToDevice       = "PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnID}"
	PatternKeysClaim          = "POST /_matrix/client/v3/keys/claim"
	patternGetLoginFlows      = "GET /_matrix/client/v3/login"
	fakeDeviceTokenPrefix     = "fake_device_token_"
	appserviceLoginType       = "m.login.application_service"
	signaturesField           = "signatures"
	crossSigningUsageMaster   = "master"
	crossSigningUsageSelfSign = "self_signing"
	crossSigningUsageUserSign = "user_signing"
)

// ToDeviceMessage is one message sent through the fake homeserver's sendToDevice endpoint.
type ToDeviceMessage struct {
	// Sender is the user who sent it; SenderDevice the device it was sent from (the device_id
	// an appservice masquerades as, or the logged-in device).
	Sender       id.UserID
	SenderDevice id.DeviceID
	// Type is the event type; UserID and DeviceID the recipient.
	Type     string
	UserID   id.UserID
	DeviceID id.DeviceID
	Content  json.RawMessage
}

// fakeKeys is the fake homeserver's device and key server: devices, uploaded device keys,
// cross-signing keys with their signatures, and account data. Guarded by FakeHomeserver.lock.
type fakeKeys struct {
	devices      map[id.UserID]map[id.DeviceID]bool
	deviceKeys   map[id.UserID]map[id.DeviceID]map[string]any
	crossSigning map[id.UserID]map[string]map[string]any // usage → key object
	accountData  map[id.UserID]map[string]json.RawMessage
	tokens       map[string]deviceRef // access token of an appservice login → device
	otks         map[id.UserID]map[id.DeviceID]map[id.KeyID]json.RawMessage
	toDevice     []ToDeviceMessage
	txnIDs       map[string]bool // sender + "\x00" + transaction ID of sendToDevice
	onToDevice   func(ToDeviceMessage)
}

type deviceRef struct {
	user   id.UserID
	device id.DeviceID
}

func newFakeKeys() fakeKeys {
	return fakeKeys{
		devices:      make(map[id.UserID]map[id.DeviceID]bool),
		deviceKeys:   make(map[id.UserID]map[id.DeviceID]map[string]any),
		crossSigning: make(map[id.UserID]map[string]map[string]any),
		accountData:  make(map[id.UserID]map[string]json.RawMessage),
		tokens:       make(map[string]deviceRef),
		otks:         make(map[id.UserID]map[id.DeviceID]map[id.KeyID]json.RawMessage),
		txnIDs:       make(map[string]bool),
	}
}

func (hs *FakeHomeserver) handleKeys(handle func(pattern string, fn func(w http.ResponseWriter, r *http.Request, req *Request))) {
	handle(PatternPutDevice, hs.putDevice)
	handle(patternGetLoginFlows, hs.getLoginFlows)
	handle(PatternLogin, hs.postLogin)
	handle(PatternKeysUpload, hs.postKeysUpload)
	handle(PatternKeysQuery, hs.postKeysQuery)
	handle(PatternDeviceSigning, hs.postDeviceSigning)
	handle(PatternSignaturesUpload, hs.postSignaturesUpload)
	handle(PatternPutAccountData, hs.putAccountData)
	handle(PatternGetAccountData, hs.getAccountData)
	handle(PatternSendToDevice, hs.putSendToDevice)
	handle(PatternKeysClaim, hs.postKeysClaim)
}

// ToDevice returns the to-device messages accepted so far for recipient (every recipient if
// empty), in order.
func (hs *FakeHomeserver) ToDevice(recipient id.UserID) []ToDeviceMessage {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	var out []ToDeviceMessage
	for _, msg := range hs.keys.toDevice {
		if recipient == "" || msg.UserID == recipient {
			out = append(out, msg)
		}
	}
	return out
}

// Devices returns the device IDs userID has on the fake homeserver.
func (hs *FakeHomeserver) Devices(userID id.UserID) []id.DeviceID {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	var out []id.DeviceID
	for dev := range hs.keys.devices[userID] {
		out = append(out, dev)
	}
	return out
}

// HasDeviceKeys reports whether userID's device deviceID has uploaded its identity keys.
func (hs *FakeHomeserver) HasDeviceKeys(userID id.UserID, deviceID id.DeviceID) bool {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	return hs.keys.deviceKeys[userID][deviceID] != nil
}

// DeleteDevice removes userID's device deviceID and its keys, as an administrator deleting it
// would.
func (hs *FakeHomeserver) DeleteDevice(userID id.UserID, deviceID id.DeviceID) {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	delete(hs.keys.devices[userID], deviceID)
	delete(hs.keys.deviceKeys[userID], deviceID)
}

// DeviceSignedBy reports whether userID's device deviceID carries a signature by signerUserID's
// key keyID (such as "ed25519:<self-signing public key>").
func (hs *FakeHomeserver) DeviceSignedBy(userID id.UserID, deviceID id.DeviceID, signerUserID id.UserID, keyID string) bool {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	return hasSignature(hs.keys.deviceKeys[userID][deviceID], signerUserID, keyID)
}

// CrossSigningKey returns the public key of userID's cross-signing key of usage ("master",
// "self_signing", "user_signing"), or "" if none was uploaded.
func (hs *FakeHomeserver) CrossSigningKey(userID id.UserID, usage string) string {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	return publicKeyOf(hs.keys.crossSigning[userID][usage])
}

// ToDeviceMessages returns the to-device messages sent so far, in order.
func (hs *FakeHomeserver) ToDeviceMessages() []ToDeviceMessage {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	return append([]ToDeviceMessage(nil), hs.keys.toDevice...)
}

// OnToDevice makes the fake call fn (in the request's goroutine, after the request is answered
// as accepted) for every to-device message sent, for example to deliver it to an appservice
// in a transaction. nil stops it.
func (hs *FakeHomeserver) OnToDevice(fn func(ToDeviceMessage)) {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	hs.keys.onToDevice = fn
}

// requestDevice returns the device a request was made from: the device_id an appservice
// masquerades as, or the device of a login's access token.
func requestDevice(req *Request) id.DeviceID {
	return id.DeviceID(req.Query.Get("device_id"))
}

func (hs *FakeHomeserver) addDevice(userID id.UserID, deviceID id.DeviceID) {
	if hs.keys.devices[userID] == nil {
		hs.keys.devices[userID] = make(map[id.DeviceID]bool)
	}
	hs.keys.devices[userID][deviceID] = true
}

// putDevice creates (MSC4190) or renames a device of the appservice user.
func (hs *FakeHomeserver) putDevice(w http.ResponseWriter, _ *http.Request, req *Request) {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	hs.addDevice(req.UserID, id.DeviceID(req.PathValues["deviceID"]))
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (hs *FakeHomeserver) getLoginFlows(w http.ResponseWriter, _ *http.Request, _ *Request) {
	writeJSON(w, http.StatusOK, map[string]any{"flows": []map[string]any{{"type": appserviceLoginType}}})
}

// postLogin does appservice logins: a device (new unless device_id names one) and its own
// access token, which the fake accepts from then on.
func (hs *FakeHomeserver) postLogin(w http.ResponseWriter, _ *http.Request, req *Request) {
	var body struct {
		Type       string `json:"type"`
		Identifier struct {
			User string `json:"user"`
		} `json:"identifier"`
		DeviceID id.DeviceID `json:"device_id"`
	}
	if err := req.DecodeBody(&body); err != nil || body.Type != appserviceLoginType {
		writeError(w, http.StatusBadRequest, "M_UNKNOWN", "Only appservice login is supported")
		return
	}
	userID := id.UserID(body.Identifier.User)
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if body.DeviceID == "" {
		hs.nextID++
		body.DeviceID = id.DeviceID(fmt.Sprintf("FAKEDEV%d", hs.nextID))
	}
	hs.addDevice(userID, body.DeviceID)
	hs.nextID++
	token := fmt.Sprintf("%s%d", fakeDeviceTokenPrefix, hs.nextID)
	hs.keys.tokens[token] = deviceRef{user: userID, device: body.DeviceID}
	writeJSON(w, http.StatusOK, map[string]any{"user_id": userID, "device_id": body.DeviceID, "access_token": token})
}

// postKeysUpload stores the device keys and one-time keys of the requester's device: the
// device_id an appservice masquerades as, or the device of a login's token, which must exist;
// else (a test user's own device, see [TestDevice]) the device its device keys name.
func (hs *FakeHomeserver) postKeysUpload(w http.ResponseWriter, _ *http.Request, req *Request) {
	var body struct {
		DeviceKeys  map[string]any               `json:"device_keys"`
		OneTimeKeys map[id.KeyID]json.RawMessage `json:"one_time_keys"`
		Fallback    map[string]map[string]any    `json:"fallback_keys"`
	}
	if err := req.DecodeBody(&body); err != nil {
		writeError(w, http.StatusBadRequest, "M_BAD_JSON", err.Error())
		return
	}
	deviceID := requestDevice(req)
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if deviceID == "" && body.DeviceKeys != nil {
		if user, _ := body.DeviceKeys["user_id"].(string); user == req.UserID.String() {
			named, _ := body.DeviceKeys["device_id"].(string)
			deviceID = id.DeviceID(named)
			if deviceID != "" {
				hs.addDevice(req.UserID, deviceID)
			}
		}
	}
	if deviceID == "" || !hs.keys.devices[req.UserID][deviceID] {
		writeError(w, http.StatusBadRequest, "M_UNKNOWN", "No such device")
		return
	}
	if body.DeviceKeys != nil {
		if hs.keys.deviceKeys[req.UserID] == nil {
			hs.keys.deviceKeys[req.UserID] = make(map[id.DeviceID]map[string]any)
		}
		hs.keys.deviceKeys[req.UserID][deviceID] = body.DeviceKeys
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

func (hs *FakeHomeserver) postKeysQuery(w http.ResponseWriter, _ *http.Request, req *Request) {
	var body struct {
		DeviceKeys map[id.UserID][]id.DeviceID `json:"device_keys"`
	}
	if err := req.DecodeBody(&body); err != nil {
		writeError(w, http.StatusBadRequest, "M_BAD_JSON", err.Error())
		return
	}
	hs.lock.Lock()
	defer hs.lock.Unlock()
	resp := map[string]map[id.UserID]any{
		"device_keys": {}, "master_keys": {}, "self_signing_keys": {}, "user_signing_keys": {},
	}
	for userID, devices := range body.DeviceKeys {
		keys := make(map[id.DeviceID]map[string]any)
		for dev, obj := range hs.keys.deviceKeys[userID] {
			if len(devices) == 0 || containsDevice(devices, dev) {
				keys[dev] = obj
			}
		}
		resp["device_keys"][userID] = keys
		for usage, field := range map[string]string{
			crossSigningUsageMaster: "master_keys", crossSigningUsageSelfSign: "self_signing_keys", crossSigningUsageUserSign: "user_signing_keys",
		} {
			if obj := hs.keys.crossSigning[userID][usage]; obj != nil {
				resp[field][userID] = obj
			}
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

func containsDevice(devices []id.DeviceID, dev id.DeviceID) bool {
	for _, d := range devices {
		if d == dev {
			return true
		}
	}
	return false
}

// postDeviceSigning stores the user's cross-signing keys, replacing earlier ones without
// user-interactive authentication, as Synapse does for appservice users.
func (hs *FakeHomeserver) postDeviceSigning(w http.ResponseWriter, _ *http.Request, req *Request) {
	var body map[string]map[string]any
	if err := req.DecodeBody(&body); err != nil {
		writeError(w, http.StatusBadRequest, "M_BAD_JSON", err.Error())
		return
	}
	hs.lock.Lock()
	defer hs.lock.Unlock()
	keys := make(map[string]map[string]any)
	for field, usage := range map[string]string{
		"master_key": crossSigningUsageMaster, "self_signing_key": crossSigningUsageSelfSign, "user_signing_key": crossSigningUsageUserSign,
	} {
		if obj := body[field]; obj != nil {
			keys[usage] = obj
		}
	}
	hs.keys.crossSigning[req.UserID] = keys
	writeJSON(w, http.StatusOK, map[string]any{})
}

// postSignaturesUpload merges the uploaded signatures into the signed device keys or
// cross-signing keys.
func (hs *FakeHomeserver) postSignaturesUpload(w http.ResponseWriter, _ *http.Request, req *Request) {
	var body map[id.UserID]map[string]map[string]any
	if err := req.DecodeBody(&body); err != nil {
		writeError(w, http.StatusBadRequest, "M_BAD_JSON", err.Error())
		return
	}
	hs.lock.Lock()
	defer hs.lock.Unlock()
	failures := make(map[id.UserID]map[string]any)
	for userID, objs := range body {
		for keyID, signed := range objs {
			target := hs.keys.deviceKeys[userID][id.DeviceID(keyID)]
			if target == nil {
				for _, obj := range hs.keys.crossSigning[userID] {
					if publicKeyOf(obj) == keyID {
						target = obj
					}
				}
			}
			if target == nil {
				if failures[userID] == nil {
					failures[userID] = make(map[string]any)
				}
				failures[userID][keyID] = map[string]string{"errcode": "M_NOT_FOUND", "error": "Unknown key"}
				continue
			}
			mergeSignatures(target, signed)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"failures": failures})
}

func (hs *FakeHomeserver) putAccountData(w http.ResponseWriter, _ *http.Request, req *Request) {
	userID := id.UserID(req.PathValues["userID"])
	if userID != req.UserID {
		writeError(w, http.StatusForbidden, "M_FORBIDDEN", "Cannot add account data for other users")
		return
	}
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if hs.keys.accountData[userID] == nil {
		hs.keys.accountData[userID] = make(map[string]json.RawMessage)
	}
	hs.keys.accountData[userID][req.PathValues["eventType"]] = append(json.RawMessage(nil), req.Body...)
	writeJSON(w, http.StatusOK, map[string]any{})
}

func (hs *FakeHomeserver) getAccountData(w http.ResponseWriter, _ *http.Request, req *Request) {
	hs.lock.Lock()
	data, ok := hs.keys.accountData[id.UserID(req.PathValues["userID"])][req.PathValues["eventType"]]
	hs.lock.Unlock()
	if !ok || id.UserID(req.PathValues["userID"]) != req.UserID {
		writeError(w, http.StatusNotFound, "M_NOT_FOUND", "Account data not found")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data)
}

// putSendToDevice records each message of the request, once per (sender, transaction ID), in
// the order of recipients and devices.
func (hs *FakeHomeserver) putSendToDevice(w http.ResponseWriter, _ *http.Request, req *Request) {
	var body struct {
		Messages map[id.UserID]map[id.DeviceID]json.RawMessage `json:"messages"`
	}
	if err := req.DecodeBody(&body); err != nil {
		writeError(w, http.StatusBadRequest, "M_BAD_JSON", err.Error())
		return
	}
	var sent []ToDeviceMessage
	hs.lock.Lock()
	txnKey := req.UserID.String() + "\x00" + req.PathValues["txnID"]
	if hs.keys.txnIDs[txnKey] {
		hs.lock.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{})
		return
	}
	hs.keys.txnIDs[txnKey] = true
	users := make([]id.UserID, 0, len(body.Messages))
	for userID := range body.Messages {
		users = append(users, userID)
	}
	slices.Sort(users)
	for _, userID := range users {
		devices := make([]id.DeviceID, 0, len(body.Messages[userID]))
		for deviceID := range body.Messages[userID] {
			devices = append(devices, deviceID)
		}
		slices.Sort(devices)
		for _, deviceID := range devices {
			msg := ToDeviceMessage{
				Sender: req.UserID, SenderDevice: requestDevice(req), Type: req.PathValues["eventType"],
				UserID: userID, DeviceID: deviceID, Content: body.Messages[userID][deviceID],
			}
			hs.keys.toDevice = append(hs.keys.toDevice, msg)
			sent = append(sent, msg)
		}
	}
	onToDevice := hs.keys.onToDevice
	hs.lock.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{})
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	if onToDevice != nil {
		for _, msg := range sent {
			onToDevice(msg)
		}
	}
}

// publicKeyOf returns the single public key of a cross-signing key object.
func publicKeyOf(obj map[string]any) string {
	keys, _ := obj["keys"].(map[string]any)
	for _, v := range keys {
		s, _ := v.(string)
		return s
	}
	return ""
}

func hasSignature(obj map[string]any, signer id.UserID, keyID string) bool {
	sigs, _ := obj[signaturesField].(map[string]any)
	bySigner, _ := sigs[signer.String()].(map[string]any)
	_, ok := bySigner[keyID]
	return ok
}

func mergeSignatures(target, signed map[string]any) {
	sigs, _ := target[signaturesField].(map[string]any)
	if sigs == nil {
		sigs = make(map[string]any)
		target[signaturesField] = sigs
	}
	newSigs, _ := signed[signaturesField].(map[string]any)
	for signer, bySigner := range newSigs {
		existing, _ := sigs[signer].(map[string]any)
		if existing == nil {
			existing = make(map[string]any)
			sigs[signer] = existing
		}
		m, _ := bySigner.(map[string]any)
		for k, v := range m {
			if strings.HasPrefix(k, "ed25519:") {
				existing[k] = v
			}
		}
	}
}
