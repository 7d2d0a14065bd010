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
// exactly as received and decoded by the dispatcher.
type transactionBody struct {
	Events           []json.RawMessage `json:"events"`
	Ephemeral        []json.RawMessage `json:"ephemeral"`
	MSC2409Ephemeral []json.RawMessage `json:"de.sorunome.msc2409.ephemeral"`
	// To-device events, device lists and one-time key counts are for end-to-end encryption,
	// which Custodian does not do; they are ignored.
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
	events, skipped, err := parseTransaction(txnID, body)
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
	if skipped > 0 {
		log.Warn().Int("skipped", skipped).Msg("Skipped malformed events in transaction")
	}

	svc.ingestLock.Lock()
	defer svc.ingestLock.Unlock()
	// Backpressure: while too much is queued, hold the transaction. Synapse sends one at a time,
	// so it waits with us instead of piling up more.
	if err = svc.dispatcher.waitBacklog(r.Context()); err != nil {
		svc.metrics.txnReceived.WithLabelValues("rejected").Inc()
		httpjson.WriteError(w, http.StatusServiceUnavailable, "M_LIMIT_EXCEEDED", "Backlog full, try again later")
		return
	}
	added, dup, err := svc.db.Inbox.Accept(ctx, txnID, events, svc.now())
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
	svc.metrics.txnReceived.WithLabelValues("accepted").Inc()
	var pdus, ephemeral int
	for _, evt := range added {
		if evt.Ephemeral {
			ephemeral++
		} else {
			pdus++
		}
	}
	svc.metrics.eventsReceived.WithLabelValues("pdu").Add(float64(pdus))
	svc.metrics.eventsReceived.WithLabelValues("ephemeral").Add(float64(ephemeral))
	elapsed := time.Since(start)
	svc.metrics.ingestLatency.Observe(elapsed.Seconds())
	log.Debug().
		Int("pdu", pdus).
		Int("ephemeral", ephemeral).
		Int("known", len(events)-len(added)).
		Dur("duration", elapsed).
		Msg("Accepted transaction")
	httpjson.Write(w, http.StatusOK, struct{}{})
}

// parseTransaction turns a transaction body into inbox events. It fails only if the body is not
// a JSON object of the transaction's shape; individual events that are not objects or lack the
// fields every event has are skipped and counted, so one bad event cannot block the homeserver's
// queue.
func parseTransaction(txnID string, body []byte) (events []*database.InboxEvent, skipped int, err error) {
	var txn transactionBody
	dec := json.NewDecoder(bytes.NewReader(body))
	if err = dec.Decode(&txn); err != nil {
		return nil, 0, err
	}
	if dec.More() {
		return nil, 0, errors.New("trailing data after transaction object")
	}
	ephemeral := txn.Ephemeral
	if ephemeral == nil {
		ephemeral = txn.MSC2409Ephemeral
	}
	events = make([]*database.InboxEvent, 0, len(txn.Events)+len(ephemeral))
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
	return events, skipped, nil
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
