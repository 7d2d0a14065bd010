package privacy

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/httpjson"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// AdminAPIPrefix is the path prefix of every admin API endpoint.
const AdminAPIPrefix = "/_custodian/admin/v1"

// maxAdminBodyBytes bounds an admin API request body.
const maxAdminBodyBytes = 64 << 10

// AdminForgetRequest is the optional JSON body of POST …/users/{userId}/forget.
type AdminForgetRequest struct {
	// Modules limits the erasure to these bridges; empty erases everything.
	Modules []string `json:"modules,omitempty"`
}

// AdminKeyStatus is the answer of GET …/keys.
type AdminKeyStatus struct {
	// Enabled is false when the vault has no master key configured.
	Enabled bool `json:"enabled"`
	// Keys is the vault's status report, as the vault gives it: for each master key, its ID,
	// how many data keys it wraps and whether it is loaded.
	Keys any `json:"keys,omitempty"`
}

// AdminTombstones is the answer of GET …/users/{userId}/erasures.
type AdminTombstones struct {
	// UserHash is the keyed hash the tombstones are filed under.
	UserHash string `json:"user_hash"`
	// Erasures are the tombstones, oldest first.
	Erasures []*EraseReceipt `json:"erasures"`
}

// AdminSuspects is the answer of GET …/deactivation-suspects: the users whose account looked
// deactivated after they left a room, while Custodian had no admin access to the homeserver to
// confirm it. Nobody on the list was erased; an admin who confirms a deactivation erases the user
// with POST …/users/{userId}/forget (or gives Custodian admin access, see the README).
type AdminSuspects struct {
	// Suspects are the suspicions, oldest first; empty, never null, if there are none.
	Suspects []*database.DeactivationSuspect `json:"suspects"`
}

// AdminAPIOptions configure [Engine.AdminHandler].
type AdminAPIOptions struct {
	// Token is the bearer token every request must carry. Required.
	Token string
	// Log is the logger of the requests.
	Log zerolog.Logger
	// Vault is the credential vault whose key status GET …/keys reports; nil when no master key
	// is configured.
	Vault any
	// Mount, if set, adds more routes to the handler's mux (under [AdminAPIPrefix]) behind the
	// same token: the core mounts the bridges' admin endpoints with it.
	Mount func(mux *http.ServeMux)
}

// AdminHandler is the admin API (export, erasure, tombstones, erasure status, key status,
// deactivation suspects under [AdminAPIPrefix]): every request needs the bearer token; without
// it, or with a wrong one, the answer is the same 401 whatever the path, so nothing is revealed.
func (e *Engine) AdminHandler(opts AdminAPIOptions) http.Handler {
	token, log := opts.Token, opts.Log
	api := &adminAPI{e: e, vault: opts.Vault}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+AdminAPIPrefix+"/users/{userID}/export", api.export)
	mux.HandleFunc("POST "+AdminAPIPrefix+"/users/{userID}/forget", api.forget)
	mux.HandleFunc("GET "+AdminAPIPrefix+"/users/{userID}/erasures", api.tombstones)
	mux.HandleFunc("GET "+AdminAPIPrefix+"/erasures/{jobID}", api.erasure)
	mux.HandleFunc("GET "+AdminAPIPrefix+"/keys", api.keys)
	mux.HandleFunc("GET "+AdminAPIPrefix+"/deactivation-suspects", api.suspects)
	if opts.Mount != nil {
		opts.Mount(mux)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpjson.WriteError(w, http.StatusNotFound, "M_UNRECOGNIZED", "Unrecognized request")
	})
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := log.WithContext(r.Context())
		r = r.WithContext(ctx)
		given, isBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !isBearer {
			given = ""
		}
		// Comparing hashes keeps the comparison constant-time whatever the lengths.
		got := sha256.Sum256([]byte(given))
		if given == "" || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			if given != "" {
				log.Warn().Str("remote_addr", r.RemoteAddr).Msg("Rejected admin API request with a wrong token")
			}
			httpjson.WriteError(w, http.StatusUnauthorized, "M_UNAUTHORIZED", "Unauthorized")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// adminAPI serves the admin API's endpoints.
type adminAPI struct {
	e     *Engine
	vault any
}

// adminUser parses the {userID} path value, answering 400 if it is not a user ID.
func adminUser(w http.ResponseWriter, r *http.Request) (id.UserID, bool) {
	user := id.UserID(r.PathValue("userID"))
	if err := CheckUserID(user); err != nil {
		httpjson.WriteError(w, http.StatusBadRequest, "M_INVALID_PARAM", "Not a valid Matrix user ID")
		return "", false
	}
	return user, true
}

func (api *adminAPI) export(w http.ResponseWriter, r *http.Request) {
	user, ok := adminUser(w, r)
	if !ok {
		return
	}
	export, err := api.e.Export(r.Context(), user)
	if err != nil {
		zerolog.Ctx(r.Context()).Error().Err(err).Msg("Admin export failed")
		httpjson.WriteError(w, http.StatusInternalServerError, "M_UNKNOWN", "Export failed; see the log")
		return
	}
	zerolog.Ctx(r.Context()).Info().Stringer("user_id", user).Msg("Exported user data for an admin")
	httpjson.Write(w, http.StatusOK, export)
}

func (api *adminAPI) forget(w http.ResponseWriter, r *http.Request) {
	user, ok := adminUser(w, r)
	if !ok {
		return
	}
	var req AdminForgetRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, maxAdminBodyBytes))
	if err != nil {
		httpjson.WriteError(w, http.StatusBadRequest, "M_BAD_JSON", "Failed to read the body")
		return
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		if err = json.Unmarshal(body, &req); err != nil {
			httpjson.WriteError(w, http.StatusBadRequest, "M_NOT_JSON", "The body is not a JSON object with an optional modules list")
			return
		}
	}
	// The erasure runs to the end even if the admin's client goes away; its ctx keeps only the
	// logger of the request.
	ctx := context.WithoutCancel(r.Context())
	receipt, err := api.e.Erase(ctx, user, EraseRequest{Trigger: TriggerAdmin, Modules: req.Modules})
	switch {
	case errors.Is(err, ErrUnknownModule):
		httpjson.WriteError(w, http.StatusBadRequest, "M_INVALID_PARAM", "Unknown module; use bridge IDs")
		return
	case err != nil:
		zerolog.Ctx(ctx).Error().Err(err).Msg("Admin erasure failed")
		httpjson.WriteError(w, http.StatusInternalServerError, "M_UNKNOWN", "Erasure failed; see the log. It is retried in the background.")
		return
	}
	httpjson.Write(w, http.StatusOK, receipt)
}

func (api *adminAPI) tombstones(w http.ResponseWriter, r *http.Request) {
	user, ok := adminUser(w, r)
	if !ok {
		return
	}
	hash, _, err := api.e.UserHash(r.Context(), user)
	var tombstones []*Tombstone
	if err == nil {
		tombstones, err = api.e.queries().Tombstones(r.Context(), hash)
	}
	if err != nil {
		zerolog.Ctx(r.Context()).Error().Err(err).Msg("Failed to look up tombstones")
		httpjson.WriteError(w, http.StatusInternalServerError, "M_UNKNOWN", "Lookup failed; see the log")
		return
	}
	out := &AdminTombstones{UserHash: hash, Erasures: []*EraseReceipt{}}
	for _, ts := range tombstones {
		receipt, err := ReceiptOf(&ErasureJob{
			JobID: ts.JobID, UserHash: ts.UserHash, Trigger: ts.Trigger, Modules: ts.Modules,
			State: ErasureDone, Counts: ts.Counts, CreatedAt: ts.ErasedAt, FinishedAt: ts.ErasedAt,
		})
		if err != nil {
			zerolog.Ctx(r.Context()).Error().Err(err).Msg("Invalid tombstone")
			continue
		}
		out.Erasures = append(out.Erasures, receipt)
	}
	httpjson.Write(w, http.StatusOK, out)
}

func (api *adminAPI) erasure(w http.ResponseWriter, r *http.Request) {
	receipt, err := api.e.ErasureStatus(r.Context(), r.PathValue("jobID"))
	switch {
	case errors.Is(err, ErrUnknownErasure):
		httpjson.WriteError(w, http.StatusNotFound, "M_NOT_FOUND", "No such erasure job")
	case err != nil:
		zerolog.Ctx(r.Context()).Error().Err(err).Msg("Failed to get erasure status")
		httpjson.WriteError(w, http.StatusInternalServerError, "M_UNKNOWN", "Lookup failed; see the log")
	default:
		httpjson.Write(w, http.StatusOK, receipt)
	}
}

func (api *adminAPI) suspects(w http.ResponseWriter, r *http.Request) {
	suspects, err := api.e.db.Privacy().Suspects(r.Context())
	if err != nil {
		zerolog.Ctx(r.Context()).Error().Err(err).Msg("Failed to list deactivation suspects")
		httpjson.WriteError(w, http.StatusInternalServerError, "M_UNKNOWN", "Lookup failed; see the log")
		return
	}
	httpjson.Write(w, http.StatusOK, &AdminSuspects{Suspects: suspects})
}

func (api *adminAPI) keys(w http.ResponseWriter, r *http.Request) {
	if api.vault == nil {
		httpjson.Write(w, http.StatusOK, &AdminKeyStatus{Enabled: false})
		return
	}
	keys, ok, err := vaultStatus(r.Context(), api.vault)
	switch {
	case !ok:
		httpjson.WriteError(w, http.StatusNotImplemented, "M_UNRECOGNIZED", "This vault does not report key status")
	case err != nil:
		zerolog.Ctx(r.Context()).Error().Err(err).Msg("Failed to get key status")
		httpjson.WriteError(w, http.StatusInternalServerError, "M_UNKNOWN", "Key status failed; see the log")
	default:
		httpjson.Write(w, http.StatusOK, &AdminKeyStatus{Enabled: true, Keys: keys})
	}
}

// vaultStatus asks the vault for its key status report, if it gives one: either the vault
// package's per-key report or a plain map of key ID to data key count. ok is false if the vault
// has neither method.
func vaultStatus(ctx context.Context, v any) (report any, ok bool, err error) {
	switch statuser := v.(type) {
	case interface {
		Status(ctx context.Context) ([]vault.KeyStatus, error)
	}:
		report, err = statuser.Status(ctx)
		return report, true, err
	case interface {
		Status(ctx context.Context) (map[string]int, error)
	}:
		report, err = statuser.Status(ctx)
		return report, true, err
	}
	return nil, false, nil
}
