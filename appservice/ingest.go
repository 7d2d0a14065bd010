package appservice

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/httpjson"
)

// defaultMaxBodyBytes bounds a transaction body when the config does not: Synapse sends at most
// 100 PDUs and 100 ephemeral events per transaction, each at most 64 KiB.
const defaultMaxBodyBytes = 16 << 20

// router returns the handler for the appservice listener: the Application Service API
// (transactions, user and alias queries, ping) and liveness/readiness probes. Every error is a
// Matrix error JSON.
func (svc *Service) router() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /_matrix/app/v1/transactions/{txnID}", svc.putTransaction)
	mux.HandleFunc("GET /_matrix/app/v1/users/{userID}", svc.getUser)
	mux.HandleFunc("GET /_matrix/app/v1/rooms/{roomAlias}", svc.getRoomAlias)
	mux.HandleFunc("POST /_matrix/app/v1/ping", svc.postPing)
	mux.HandleFunc("GET /_matrix/mau/live", func(w http.ResponseWriter, r *http.Request) {
		httpjson.Write(w, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("GET /_matrix/mau/ready", func(w http.ResponseWriter, r *http.Request) {
		if svc.isReady() {
			httpjson.Write(w, http.StatusOK, struct{}{})
		} else {
			httpjson.WriteError(w, http.StatusServiceUnavailable, "M_NOT_READY", "Custodian is starting or stopping")
		}
	})
	// The same paths without a method, so a wrong method gets a Matrix error instead of the
	// mux's plain-text 405.
	for _, path := range []string{
		"/_matrix/app/v1/transactions/{txnID}", "/_matrix/app/v1/users/{userID}",
		"/_matrix/app/v1/rooms/{roomAlias}", "/_matrix/app/v1/ping",
	} {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			httpjson.WriteError(w, http.StatusMethodNotAllowed, "M_UNRECOGNIZED", "Method not allowed on this endpoint")
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpjson.WriteError(w, http.StatusNotFound, "M_UNRECOGNIZED", "Unrecognized request")
	})
	return mux
}

// checkToken checks the homeserver's token in constant time. It writes the error response and
// returns false if the request is not authorized.
func (svc *Service) checkToken(w http.ResponseWriter, r *http.Request) bool {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		// Deprecated by the spec but still sent by older homeservers.
		token = r.URL.Query().Get("access_token")
	}
	if token == "" {
		httpjson.WriteError(w, http.StatusUnauthorized, "M_UNAUTHORIZED", "Missing homeserver token")
		return false
	}
	if subtle.ConstantTimeCompare([]byte(token), []byte(svc.reg.ServerToken)) != 1 {
		zerolog.Ctx(r.Context()).Warn().Str("remote_addr", r.RemoteAddr).Str("path", r.URL.Path).Msg("Rejected request with a wrong homeserver token")
		httpjson.WriteError(w, http.StatusForbidden, "M_FORBIDDEN", "Invalid homeserver token")
		return false
	}
	return true
}

// transactionBody is what Custodian reads of a transaction. Events stay raw: they are stored
// exactly as received and decoded by the dispatcher. To-device events, device lists, one-time
// key counts and unused fallback key types are for end-to-end encryption (MSC2409, MSC3202);
// each is read from its stable field, or from its unstable one when the stable one is absent.
type transactionBody struct {
	Events           []json.RawMessage `json:"events"`
	Ephemeral        []json.RawMessage `json:"ephemeral"`
	MSC2409Ephemeral []json.RawMessage `json:"de.sorunome.msc2409.ephemeral"`

	ToDevice        []json.RawMessage `json:"to_device"`
	MSC2409ToDevice []json.RawMessage `json:"de.sorunome.msc2409.to_device"`

	DeviceLists        *mautrix.DeviceLists `json:"device_lists"`
	MSC3202DeviceLists *mautrix.DeviceLists `json:"org.matrix.msc3202.device_lists"`

	OTKCounts        mxas.OTKCountMap `json:"device_one_time_keys_count"`
	MSC3202OTKCounts mxas.OTKCountMap `json:"org.matrix.msc3202.device_one_time_keys_count"`

	FallbackKeys        mxas.FallbackKeyMap `json:"device_unused_fallback_key_types"`
	MSC3202FallbackKeys mxas.FallbackKeyMap `json:"org.matrix.msc3202.device_unused_fallback_key_types"`
}

// toDeviceEnvelope is the part of a to-device event that says who sent it to which device.
type toDeviceEnvelope struct {
	Sender     id.UserID   `json:"sender"`
	Type       string      `json:"type"`
	ToUserID   id.UserID   `json:"to_user_id"`
	ToDeviceID id.DeviceID `json:"to_device_id"`
}

// deviceTarget is the bot's device, to which the to-device events, one-time key counts and
// fallback key types Custodian keeps are addressed. A zero deviceTarget (encryption off) keeps
// none of them.
type deviceTarget struct {
	user   id.UserID
	device id.DeviceID
}

// parsedTransaction is what parseTransactionFor makes of a transaction body.
type parsedTransaction struct {
	// events are the inbox events: room events (PDUs, then ephemeral events), then to-device
	// events for the bot's device.
	events []*database.InboxEvent
	// skipped counts malformed events left out.
	skipped int
	// toDevice counts the to-device events kept; otherDevice those addressed elsewhere, or
	// received while encryption is off, which are dropped.
	toDevice, otherDevice int
	// memberRooms are the rooms of the transaction's membership events, in order, repeated.
	memberRooms []id.RoomID
	// changedDevices are the users whose device lists changed.
	changedDevices []id.UserID
	// otkCounts is the bot's device's one-time key count, nil if the transaction has none.
	otkCounts *mautrix.OTKCount
	// fallbackKeys are the bot's device's unused fallback key types; hasFallback tells whether
	// the transaction said anything about them.
	fallbackKeys []id.KeyAlgorithm
	hasFallback  bool
}

// eventEnvelope is the part of an event the inbox indexes.
type eventEnvelope struct {
	EventID id.EventID `json:"event_id"`
	RoomID  id.RoomID  `json:"room_id"`
	Sender  id.UserID  `json:"sender"`
	Type    string     `json:"type"`
}

func (svc *Service) putTransaction(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if !svc.checkToken(w, r) {
		svc.metrics.txnReceived.WithLabelValues("rejected").Inc()
		return
	}
	txnID := r.PathValue("txnID")
	// Transactions run on a background context carrying the logger, not the request's: once
	// started, a commit should finish even if the homeserver hangs up (it will retry, and the
	// retry is then a recognised duplicate).
	log := svc.log.With().Str("transaction_id", txnID).Logger()
	ctx := log.WithContext(context.Background())

	maxBody := svc.cfg.AppService.MaxBodyBytes
	if maxBody <= 0 {
		maxBody = defaultMaxBodyBytes
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		svc.metrics.txnReceived.WithLabelValues("rejected").Inc()
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			log.Warn().Int64("limit_bytes", maxBody).Msg("Rejected oversized transaction")
			httpjson.WriteError(w, http.StatusRequestEntityTooLarge, "M_TOO_LARGE", "Transaction body exceeds the configured limit")
		} else {
			httpjson.WriteError(w, http.StatusBadRequest, "M_BAD_JSON", "Failed to read request body")
		}
		return
	}
	var target deviceTarget
	if svc.cryptoPresent() {
		target.user, target.device = svc.crypto.Device()
	} else if svc.cryptoState.waitingDevice != "" {
		// Encryption is enabled, but its olm machine is missing in this run: the to-device
		// events stay in the inbox for a start that has it (handleToDeviceRow).
		target.user, target.device = svc.as.BotMXID(), svc.cryptoState.waitingDevice
	}
	parsed, err := parseTransactionFor(txnID, body, target)
	if err != nil {
		svc.metrics.txnReceived.WithLabelValues("rejected").Inc()
		log.Warn().Err(err).Int("body_bytes", len(body)).Msg("Rejected malformed transaction")
		if !json.Valid(body) {
			httpjson.WriteError(w, http.StatusBadRequest, "M_NOT_JSON", "Transaction body is not valid JSON")
		} else {
			httpjson.WriteError(w, http.StatusBadRequest, "M_BAD_JSON", "Transaction body is not a transaction object")
		}
		return
	}
	events := parsed.events
	if parsed.skipped > 0 {
		log.Warn().Int("skipped", parsed.skipped).Msg("Skipped malformed events in transaction")
	}
	if parsed.otherDevice > 0 {
		svc.metrics.eventsReceived.WithLabelValues("to_device_dropped").Add(float64(parsed.otherDevice))
		log.Debug().Int("to_device_dropped", parsed.otherDevice).Msg("Dropped to-device events not for the bot's device")
	}

	svc.ingestLock.Lock()
	defer svc.ingestLock.Unlock()
	// Backpressure: while too much is queued, hold the transaction. Synapse sends one at a time,
	// so it waits with us instead of piling up more. A transaction with to-device events is let
	// in above the limit (up to twice it): the room keys it may carry are what queued encrypted
	// events wait for, and holding it would keep them waiting until their key wait ends.
	limit := svc.dispatcher.maxBacklog()
	if parsed.toDevice > 0 {
		limit *= 2
	}
	if err = svc.dispatcher.waitBacklog(r.Context(), limit); err != nil {
		svc.metrics.txnReceived.WithLabelValues("rejected").Inc()
		httpjson.WriteError(w, http.StatusServiceUnavailable, "M_LIMIT_EXCEEDED", "Backlog full, try again later")
		return
	}
	// A room's members change with these events: no event of the room handled from now on may
	// use the direct-chat verdict from before them (a group room whose third member left is a
	// direct chat now, whatever the cache knew).
	for _, roomID := range parsed.memberRooms {
		svc.directChats.invalidate(roomID)
	}
	added, dup, err := svc.db.Inbox.AcceptWith(ctx, txnID, events, svc.now(), svc.deviceListsInTxn(parsed))
	if err != nil {
		svc.metrics.txnReceived.WithLabelValues("rejected").Inc()
		log.Error().Err(err).Msg("Failed to store transaction")
		httpjson.WriteError(w, http.StatusInternalServerError, "M_UNKNOWN", "Failed to store transaction")
		return
	}
	if dup {
		svc.metrics.txnReceived.WithLabelValues("duplicate").Inc()
		log.Debug().Msg("Ignoring repeated transaction")
		httpjson.Write(w, http.StatusOK, struct{}{})
		return
	}
	svc.dispatcher.enqueue(ctx, added)
	svc.afterEncryptionData(ctx, parsed)
	svc.metrics.txnReceived.WithLabelValues("accepted").Inc()
	var pdus, ephemeral, toDevice int
	for _, evt := range added {
		switch {
		case evt.ToDevice:
			toDevice++
		case evt.Ephemeral:
			ephemeral++
		default:
			pdus++
		}
	}
	svc.metrics.eventsReceived.WithLabelValues("pdu").Add(float64(pdus))
	svc.metrics.eventsReceived.WithLabelValues("ephemeral").Add(float64(ephemeral))
	svc.metrics.eventsReceived.WithLabelValues("to_device").Add(float64(toDevice))
	elapsed := time.Since(start)
	svc.metrics.ingestLatency.Observe(elapsed.Seconds())
	log.Debug().
		Int("pdu", pdus).
		Int("ephemeral", ephemeral).
		Int("to_device", toDevice).
		Int("known", len(events)-len(added)).
		Dur("duration", elapsed).
		Msg("Accepted transaction")
	httpjson.Write(w, http.StatusOK, struct{}{})
}

// parseTransaction turns a transaction body into inbox events, keeping no to-device event (as
// with encryption off). See [parseTransactionFor].
func parseTransaction(txnID string, body []byte) (events []*database.InboxEvent, skipped int, err error) {
	pt, err := parseTransactionFor(txnID, body, deviceTarget{})
	if err != nil {
		return nil, 0, err
	}
	return pt.events, pt.skipped, nil
}

// parseTransactionFor turns a transaction body into inbox events and the encryption data for
// the bot's device target. It fails only if the body is not a JSON object of the transaction's
// shape; individual events that are not objects or lack the fields every event has are skipped
// and counted, so one bad event cannot block the homeserver's queue. To-device events become
// inbox events only when they are addressed to target (to_user_id and to_device_id); others are
// counted in otherDevice and dropped.
func parseTransactionFor(txnID string, body []byte, target deviceTarget) (*parsedTransaction, error) {
	var txn transactionBody
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&txn); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after transaction object")
	}
	ephemeral := txn.Ephemeral
	if ephemeral == nil {
		ephemeral = txn.MSC2409Ephemeral
	}
	toDevice := txn.ToDevice
	if toDevice == nil {
		toDevice = txn.MSC2409ToDevice
	}
	pt := &parsedTransaction{}
	events := make([]*database.InboxEvent, 0, len(txn.Events)+len(ephemeral))
	skipped := 0
	add := func(raw json.RawMessage, isEphemeral bool) {
		var env eventEnvelope
		if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &env) != nil || env.Type == "" {
			skipped++
			return
		}
		if !isEphemeral && (env.EventID == "" || env.RoomID == "" || env.Sender == "") {
			skipped++
			return
		}
		if isEphemeral {
			env.EventID = ""
		} else if env.Type == event.StateMember.Type {
			pt.memberRooms = append(pt.memberRooms, env.RoomID)
		}
		events = append(events, &database.InboxEvent{
			TxnID:     txnID,
			Index:     len(events) + skipped,
			EventID:   env.EventID,
			RoomID:    env.RoomID,
			Sender:    env.Sender,
			Ephemeral: isEphemeral,
			JSON:      raw,
		})
	}
	for _, raw := range txn.Events {
		add(raw, false)
	}
	for _, raw := range ephemeral {
		add(raw, true)
	}
	for _, raw := range toDevice {
		var env toDeviceEnvelope
		if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &env) != nil || env.Type == "" || env.Sender == "" {
			skipped++
			continue
		}
		if target.device == "" || env.ToUserID != target.user || env.ToDeviceID != target.device {
			pt.otherDevice++
			continue
		}
		pt.toDevice++
		events = append(events, &database.InboxEvent{
			TxnID:    txnID,
			Index:    len(events) + skipped + pt.otherDevice,
			Sender:   env.Sender,
			ToDevice: true,
			JSON:     raw,
		})
	}
	pt.events, pt.skipped = events, skipped
	if target.device == "" {
		return pt, nil
	}
	dl := txn.DeviceLists
	if dl == nil {
		dl = txn.MSC3202DeviceLists
	}
	if dl != nil {
		pt.changedDevices = dl.Changed
	}
	counts := txn.OTKCounts
	if counts == nil {
		counts = txn.MSC3202OTKCounts
	}
	if c, ok := counts[target.user][target.device]; ok {
		c.UserID, c.DeviceID = target.user, target.device
		pt.otkCounts = &c
	}
	fallback := txn.FallbackKeys
	if fallback == nil {
		fallback = txn.MSC3202FallbackKeys
	}
	pt.fallbackKeys, pt.hasFallback = fallback[target.user][target.device]
	return pt, nil
}

func (svc *Service) getUser(w http.ResponseWriter, r *http.Request) {
	if !svc.checkToken(w, r) {
		return
	}
	userID := id.UserID(r.PathValue("userID"))
	ctx := svc.log.With().Stringer("user_id", userID).Logger().WithContext(r.Context())
	if userID == svc.as.BotMXID() {
		if err := svc.as.BotIntent().EnsureRegistered(ctx); err != nil {
			zerolog.Ctx(ctx).Error().Err(err).Msg("Failed to register bot on user query")
			httpjson.WriteError(w, http.StatusInternalServerError, "M_UNKNOWN", "Failed to register user")
			return
		}
		httpjson.Write(w, http.StatusOK, struct{}{})
		return
	}
	bh := svc.bridgeForUser(userID)
	querier, ok := bridgeAs[UserQuerier](bh)
	if !ok {
		httpjson.WriteError(w, http.StatusNotFound, "M_NOT_FOUND", "No such user")
		return
	}
	exists, err := querier.QueryUser(ctx, userID)
	if err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Str("bridge", bh.id).Msg("User query failed")
		httpjson.WriteError(w, http.StatusInternalServerError, "M_UNKNOWN", "User query failed")
	} else if exists {
		httpjson.Write(w, http.StatusOK, struct{}{})
	} else {
		httpjson.WriteError(w, http.StatusNotFound, "M_NOT_FOUND", "No such user")
	}
}

func (svc *Service) getRoomAlias(w http.ResponseWriter, r *http.Request) {
	if !svc.checkToken(w, r) {
		return
	}
	alias := id.RoomAlias(r.PathValue("roomAlias"))
	ctx := svc.log.With().Stringer("alias", alias).Logger().WithContext(r.Context())
	bh := svc.bridgeForAlias(alias)
	querier, ok := bridgeAs[AliasQuerier](bh)
	if !ok {
		httpjson.WriteError(w, http.StatusNotFound, "M_NOT_FOUND", "No such room alias")
		return
	}
	exists, err := querier.QueryAlias(ctx, alias)
	if err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Str("bridge", bh.id).Msg("Alias query failed")
		httpjson.WriteError(w, http.StatusInternalServerError, "M_UNKNOWN", "Alias query failed")
	} else if exists {
		httpjson.Write(w, http.StatusOK, struct{}{})
	} else {
		httpjson.WriteError(w, http.StatusNotFound, "M_NOT_FOUND", "No such room alias")
	}
}

func (svc *Service) postPing(w http.ResponseWriter, r *http.Request) {
	if !svc.checkToken(w, r) {
		return
	}
	var req struct {
		TxnID string `json:"transaction_id"`
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil || (len(body) > 0 && json.Unmarshal(body, &req) != nil) {
		httpjson.WriteError(w, http.StatusBadRequest, "M_NOT_JSON", "Ping body is not valid JSON")
		return
	}
	svc.log.Debug().Str("ping_txn_id", req.TxnID).Msg("Answered homeserver ping")
	httpjson.Write(w, http.StatusOK, struct{}{})
}

// bridgeAs returns bh's bridge as the optional interface T, if it implements it.
func bridgeAs[T any](bh *bridgeHost) (T, bool) {
	var zero T
	if bh == nil {
		return zero, false
	}
	t, ok := bh.br.(T)
	return t, ok
}
