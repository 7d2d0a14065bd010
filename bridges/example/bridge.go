// Package example is a complete, minimal Custodian bridge, the one docs/BRIDGES.md walks
// through. It is not wired into cmd/custodian: it exists to be read and to be tested.
//
// It has exactly one of everything a bridge that keeps data about people has: one table about
// users (example_link), one command (!example link <token>, Sensitive, since it carries a
// secret), one secret (the user's account token at a remote service, sealed in the vault) and
// one remote side effect (a subscription registered at the service), plus a private
// confirmation through Host.NotifyUser.
//
// The remote service is made up; its API is:
//
//	POST   {url}/subscriptions        Authorization: Bearer <account token>, Idempotency-Key: <key>
//	                                  creates the account's subscription, whose ID is the key; the
//	                                  same key again changes nothing.
//	DELETE {url}/subscriptions/{key}  Authorization: Bearer <account token or the bridge's API key>
//	                                  deletes it; 404 if there is none.
package example

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// BridgeID is the bridge's permanent ID: its config key, table prefix and command group.
const BridgeID = "example"

// tokenSecret is the vault name of the account token (one per user, so no row key is needed).
const tokenSecret = "token"

//go:embed example-config.yaml
var exampleConfig string

//go:embed upgrades/*.sql
var upgradesFS embed.FS

var upgradeTable = dbutil.BuildUpgradeTable().WithFSPath(upgradesFS, "upgrades").Finish()

// Config is the bridge's section of the configuration, bridges.example.
type Config struct {
	// URL is the remote service's API base URL (http or https).
	URL string `yaml:"url"`
	// APIKey is the bridge's own key at the service.
	APIKey vault.Secret `yaml:"api_key"`
}

// Bridge is the example bridge. Create it with [New].
type Bridge struct {
	cfg    Config
	host   appservice.Host
	log    zerolog.Logger
	client *http.Client
}

var (
	_ appservice.ConfigValidator = (*Bridge)(nil)
	_ appservice.CommandProvider = (*Bridge)(nil)
	_ appservice.Eraser          = (*Bridge)(nil)
	_ appservice.RedactionPurger = (*Bridge)(nil)
)

// New returns the bridge, unconfigured: the core decodes its section into Config's target.
func New() *Bridge {
	return &Bridge{client: &http.Client{Timeout: 10 * time.Second}}
}

// ID returns [BridgeID].
func (br *Bridge) ID() string { return BridgeID }

// Namespaces returns the zero value: the bridge has no ghosts and no aliases.
func (br *Bridge) Namespaces() appservice.Namespaces { return appservice.Namespaces{} }

// Config returns the embedded example configuration and the struct the core decodes into.
func (br *Bridge) Config() (string, any) { return exampleConfig, &br.cfg }

// ValidateConfig reports one *appservice.ConfigError per problem of the decoded section.
func (br *Bridge) ValidateConfig() error {
	var errs []error
	if u, err := url.Parse(br.cfg.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, &appservice.ConfigError{Path: "url", Message: "must be an absolute http or https URL"})
	}
	if br.cfg.APIKey.IsZero() || br.cfg.APIKey.Equal("change-me") {
		errs = append(errs, &appservice.ConfigError{Path: "api_key", Message: "set the bridge's API key at the service"})
	}
	return errors.Join(errs...)
}

// Migrations returns the schema upgrades in upgrades/.
func (br *Bridge) Migrations() dbutil.UpgradeTable { return upgradeTable }

// PersonalData declares example_link, the bridge's one table about users.
func (br *Bridge) PersonalData() []appservice.UserTable {
	return []appservice.UserTable{{
		Table:             "example_link",
		UserColumn:        "user_mxid",
		Export:            []string{"room_id", "source_event_id", "created_at"},
		Secret:            []string{"token"},
		SourceEventColumn: "source_event_id",
		RoomColumn:        "room_id",
		Description:       "your link to the remote service: where and when you linked; your account token is kept only sealed",
	}}
}

// Init stores the host. It does no I/O.
func (br *Bridge) Init(host appservice.Host) error {
	br.host = host
	br.log = *host.Log()
	return nil
}

// Start does nothing: the bridge has no background work.
func (br *Bridge) Start(context.Context) error { return nil }

// Stop does nothing.
func (br *Bridge) Stop(context.Context) error { return nil }

// HandleEvent ignores events: the bridge claims no rooms and has no ghosts, and its command
// reaches it through the bot.
func (br *Bridge) HandleEvent(context.Context, *event.Event, appservice.Route) error { return nil }

// Commands returns !example link.
func (br *Bridge) Commands() []*appservice.Command {
	return []*appservice.Command{{
		Name:      "link",
		Args:      "<token>",
		Help:      "Link your account at the remote service (the bot redacts your message at once).",
		Sensitive: true,
		Handler:   br.cmdLink,
	}}
}

// cmdLink links the sender's account: it seals the token, registers the subscription, stores
// the row with the command's provenance and confirms privately. It is idempotent on the event
// ID: a row naming this event means it ran before, and the remote call's Idempotency-Key covers
// a crash between the call and the row.
func (br *Bridge) cmdLink(ctx context.Context, ce *appservice.CommandEvent) error {
	if len(ce.Args) != 1 {
		return appservice.UserErrorf("Usage: `!example link <token>`")
	}
	token := vault.NewSecret(ce.Args[0])
	old, _, err := br.link(ctx, ce.Sender)
	if err != nil {
		return err
	}
	if old != ce.Event.ID {
		// The users row first: the vault's key and example_link's foreign key need it.
		if err = br.host.EnsureUser(ctx, ce.Sender); err != nil {
			return err
		}
		sealed, err := br.host.Vault().Seal(ctx, ce.Sender, tokenSecret, token)
		if errors.Is(err, appservice.ErrVaultDisabled) {
			return &appservice.UserError{Message: "This Custodian cannot store credentials: its admin has not set up the vault.", Err: err}
		} else if err != nil {
			return fmt.Errorf("failed to seal token: %w", err)
		}
		if err = br.remote(ctx, http.MethodPost, "/subscriptions", token, ce.Event.ID); err != nil {
			return fmt.Errorf("failed to register subscription: %w", err)
		}
		_, err = br.host.DB().Exec(ctx, `
			INSERT INTO example_link (user_mxid, room_id, source_event_id, created_at, token) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (user_mxid) DO UPDATE SET room_id=excluded.room_id,
				source_event_id=excluded.source_event_id, created_at=excluded.created_at, token=excluded.token`,
			ce.Sender, ce.RoomID, ce.Event.ID, time.Now().UnixMilli(), sealed)
		if err != nil {
			return fmt.Errorf("failed to store link: %w", err)
		}
		if old != "" {
			// The new link replaces the old one, whose subscription goes too.
			if err = br.remote(ctx, http.MethodDelete, "/subscriptions/"+url.PathEscape(string(old)), br.cfg.APIKey, ""); err != nil {
				br.log.Warn().Err(err).Msg("Failed to delete replaced subscription")
			}
		}
	}
	content := format.RenderMarkdown("Your account at the remote service is linked. Redact your `!example link` "+
		"message to unlink it.", true, false)
	content.MsgType = event.MsgNotice
	_, _, err = br.host.NotifyUser(ctx, ce.Sender, appservice.Notice{Cause: string(ce.Event.ID), Purpose: "linked", Content: &content})
	return err
}

// link returns the user's link: its source event (the subscription's key) and sealed token;
// "" when the user has none.
func (br *Bridge) link(ctx context.Context, user id.UserID) (id.EventID, []byte, error) {
	var source id.EventID
	var sealed []byte
	err := br.host.DB().QueryRow(ctx, "SELECT source_event_id, token FROM example_link WHERE user_mxid=$1", user).Scan(&source, &sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil, nil
	} else if err != nil {
		return "", nil, fmt.Errorf("failed to get link: %w", err)
	}
	return source, sealed, nil
}

// EraseRemote deletes the user's subscription, as the user, before the core deletes their row.
// A subscription already gone counts as deleted, so running it again succeeds.
func (br *Bridge) EraseRemote(ctx context.Context, user id.UserID) error {
	source, sealed, err := br.link(ctx, user)
	if err != nil || source == "" {
		return err
	}
	token, err := br.host.Vault().Open(ctx, user, tokenSecret, sealed)
	if err != nil {
		// Without the token, the bridge's own key still may.
		token = br.cfg.APIKey
	}
	return br.remote(ctx, http.MethodDelete, "/subscriptions/"+url.PathEscape(string(source)), token, "")
}

// RedactionPurged deletes the subscription of a link whose command was redacted. The row and
// its sealed token are gone already, so it authenticates with the bridge's API key; the
// subscription's ID is the redacted event's ID.
func (br *Bridge) RedactionPurged(ctx context.Context, _ id.RoomID, redacted id.EventID, purged map[string]int64) error {
	if purged["example_link"] == 0 {
		return nil
	}
	return br.remote(ctx, http.MethodDelete, "/subscriptions/"+url.PathEscape(string(redacted)), br.cfg.APIKey, "")
}

// remote calls the service. An Idempotency-Key is sent when key is set; a DELETE of something
// already gone succeeds. Errors name the status only, never the URL's secrets or the token.
func (br *Bridge) remote(ctx context.Context, method, path string, auth vault.Secret, key id.EventID) error {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(br.cfg.URL, "/")+path, nil)
	if err != nil {
		return fmt.Errorf("failed to build request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+auth.Reveal())
	if key != "" {
		req.Header.Set("Idempotency-Key", string(key))
	}
	resp, err := br.client.Do(req)
	if err != nil {
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return fmt.Errorf("remote %s failed: %w", method, err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode/100 == 2 || (method == http.MethodDelete && resp.StatusCode == http.StatusNotFound) {
		return nil
	}
	return fmt.Errorf("remote %s: unexpected status %d", method, resp.StatusCode)
}
