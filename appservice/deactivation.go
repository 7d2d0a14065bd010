package appservice

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/privacy"
)

// deactivationRecheck is how long after checking a user's account the next leave event of
// theirs is not checked again: one deactivation sends a leave per room, in a burst.
const deactivationRecheck = time.Minute

// deactivationSweepPage is how many users one query of the sweep reads.
const deactivationSweepPage = 200

// setUpDeactivation prepares the client for the homeserver's admin API from
// privacy.deactivation, and says in the log whether deactivations can be confirmed.
func (svc *Service) setUpDeactivation(ctx context.Context) error {
	log := zerolog.Ctx(ctx)
	dc := &svc.cfg.Privacy.Deactivation
	switch {
	case dc.AdminTokenFile != nil:
		token, err := readTokenFile(*dc.AdminTokenFile, 1)
		if err != nil {
			return fmt.Errorf("privacy.deactivation.admin_token_file: %w", err)
		}
		cli, err := mautrix.NewClient(svc.cfg.Homeserver.Address, "", token)
		if err != nil {
			return fmt.Errorf("failed to create homeserver admin client: %w", err)
		}
		cli.Log = log.With().Str("component", "homeserver_admin").Logger()
		// It is for the admin API only, but guarded like every client the core makes.
		cli.Client.Transport = GuardPlaintext(cli.Client.Transport, svc.stateStore)
		svc.privacy.hsAdmin = cli
		log.Info().Msg("Account deactivations can be confirmed: the homeserver's admin API is asked, with the configured admin token")
	case dc.AdminLocalpart != nil:
		ghost := id.NewUserID(*dc.AdminLocalpart, svc.cfg.Homeserver.Domain)
		if svc.bridgeForUser(ghost) == nil {
			return fmt.Errorf("privacy.deactivation.admin_localpart: %s is not in any enabled bridge's user namespace", ghost)
		}
		svc.privacy.hsAdmin = svc.as.Client(ghost)
		log.Info().Stringer("admin_user", ghost).Msg("Account deactivations can be confirmed: the homeserver's admin API is asked, as a promoted ghost")
	default:
		log.Warn().Str("fix", "set privacy.deactivation.admin_token_file to a file holding a Synapse admin's access token (see README, \"Admin access for deactivation\")").
			Str("suspects", AdminAPIPrefix+"/deactivation-suspects").
			Msg("Account deactivations cannot be confirmed: no admin access to the homeserver (privacy.deactivation). " +
				"Nobody is erased on a guess; users whose profile is gone after a leave are recorded as suspects for admins to check")
	}
	return nil
}

// readTokenFile reads a bearer token from path: the file's content without surrounding white
// space, at least minLen bytes long.
func readTokenFile(path string, minLen int) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("failed to read token file: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if len(token) < minLen {
		return "", fmt.Errorf("token file %s holds %d characters, want at least %d", path, len(token), minLen)
	}
	return token, nil
}

// checkDeactivationAfterLeave is run when a user leaves a room by themselves: if they are a
// local user Custodian holds data about and the homeserver's admin API confirms their account
// is deactivated, the erasure of their data is queued (it runs on the erasure runner). Without
// admin access the user may be recorded as a suspect, never erased (suspectDeactivation).
func (svc *Service) checkDeactivationAfterLeave(ctx context.Context, user id.UserID) error {
	if user.Homeserver() != svc.cfg.Homeserver.Domain || svc.isOwnUser(user) {
		return nil
	}
	if exists, err := svc.db.User.Exists(ctx, user); err != nil {
		return fmt.Errorf("failed to check for the leaving user's data: %w", err)
	} else if !exists {
		return svc.forgetLeaveOfErasedUser(ctx, user)
	}
	now := svc.now()
	svc.privacy.lock.Lock()
	if svc.privacy.deactChecks == nil {
		svc.privacy.deactChecks = make(map[id.UserID]time.Time)
	}
	last, seen := svc.privacy.deactChecks[user]
	if seen && now.Sub(last) < deactivationRecheck {
		svc.privacy.lock.Unlock()
		return nil
	}
	for other, at := range svc.privacy.deactChecks {
		if now.Sub(at) >= deactivationRecheck {
			delete(svc.privacy.deactChecks, other)
		}
	}
	svc.privacy.deactChecks[user] = now
	svc.privacy.lock.Unlock()

	if svc.privacy.hsAdmin == nil {
		return svc.suspectDeactivation(ctx, user, now)
	}
	deactivated, err := svc.accountDeactivated(ctx, user)
	if err != nil {
		return err
	}
	if !deactivated {
		zerolog.Ctx(ctx).Debug().Msg("User left a room; the homeserver's admin API says their account is active")
		return svc.db.Privacy().ClearSuspect(ctx, user)
	}
	// The erasure runs on the erasure runner, not on this room's worker: it may take longer than
	// a handler may, and the runner finishes it whatever happens here.
	if _, err = svc.engine.QueueErasure(ctx, user, EraseRequest{Trigger: TriggerDeactivation}); err != nil {
		return err
	}
	zerolog.Ctx(ctx).Info().Str("method", "admin_api").Msg("Account of a leaving user is deactivated; queued the erasure of their data")
	return nil
}

// suspectDeactivation is the check after a leave without admin access to the homeserver. It
// never erases anyone. Synapse answers a profile lookup with 404 for any local user who has
// no display name and no avatar (synapse/handlers/profile.py, get_profile), so a missing
// profile is only a suspicion: it is recorded (as_deactivation_suspect), logged once, and shown
// to admins in the admin API. A profile found later clears it.
//
// M_USER_DEACTIVATED is not taken as a confirmation either: the specification defines it for
// login and registration, and Synapse does not answer profile lookups with it, so here it
// could only come from a homeserver whose meaning we cannot check.
func (svc *Service) suspectDeactivation(ctx context.Context, user id.UserID, now time.Time) error {
	lookupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err := svc.as.BotIntent().GetProfile(lookupCtx, user)
	cancel()
	var httpErr mautrix.HTTPError
	var reason string
	switch {
	case err == nil:
		return svc.db.Privacy().ClearSuspect(ctx, user)
	case errors.Is(err, mautrix.MUserDeactivated):
		reason = "profile_user_deactivated"
	case errors.Is(err, mautrix.MNotFound),
		errors.As(err, &httpErr) && httpErr.Response != nil && httpErr.Response.StatusCode == http.StatusNotFound:
		reason = "profile_not_found"
	default:
		// Homeservers may refuse profile lookups (limit_profile_requests_to_users_who_share_rooms);
		// that says nothing about the account.
		zerolog.Ctx(ctx).Debug().Err(err).Msg("Profile lookup after a leave failed; nothing to suspect")
		return nil
	}
	isNew, err := svc.db.Privacy().RecordSuspect(ctx, user, reason, now)
	if err != nil {
		return err
	}
	if isNew {
		zerolog.Ctx(ctx).Warn().Stringer("user_id", user).Str("reason", reason).
			Str("listed_at", AdminAPIPrefix+"/deactivation-suspects").
			Msg("Account of a leaving user looks deactivated; not erasing it without the homeserver's admin API to confirm (privacy.deactivation)")
	}
	return nil
}

// forgetLeaveOfErasedUser removes from the state cache the membership a leave event of an
// erased user just put there. A deactivation sends one leave per room; the first starts the
// erasure, and without this the others would bring the user's ID back into the cache. Users
// Custodian never held data about have no tombstone and are left alone.
func (svc *Service) forgetLeaveOfErasedUser(ctx context.Context, user id.UserID) error {
	hash, _, err := svc.engine.UserHash(ctx, user)
	if err != nil {
		return err
	}
	tombstones, err := svc.engine.Store().Tombstones(ctx, hash)
	if err != nil || len(tombstones) == 0 {
		return err
	}
	res, err := svc.rawDB.Exec(ctx, `DELETE FROM mx_user_profile WHERE user_id=$1`, user)
	if err != nil {
		return fmt.Errorf("failed to drop an erased user's membership from the state cache: %w", err)
	}
	n, _ := res.RowsAffected()
	zerolog.Ctx(ctx).Debug().Int64("rows", n).Msg("Dropped the cached membership of an erased user")
	return nil
}

// accountDeactivated asks Synapse's admin API (GET /_synapse/admin/v2/users/{id}) whether
// user's account is deactivated. It is the only confirmation of a deactivation Custodian acts
// on. It must be called only with admin access (svc.privacy.hsAdmin set).
func (svc *Service) accountDeactivated(ctx context.Context, user id.UserID) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cli := svc.privacy.hsAdmin
	if cli == nil {
		return false, errors.New("no admin access to the homeserver")
	}
	if cli.SetAppServiceUserID {
		// The promoted ghost must exist before it can make requests.
		if err := svc.intent(cli.UserID).EnsureRegistered(ctx); err != nil {
			return false, fmt.Errorf("failed to register the admin ghost: %w", err)
		}
	}
	var resp struct {
		Deactivated bool `json:"deactivated"`
	}
	_, err := cli.MakeRequest(ctx, http.MethodGet, cli.BuildURL(mautrix.SynapseAdminURLPath{"v2", "users", user}), nil, &resp)
	switch {
	case errors.Is(err, mautrix.MNotFound):
		// The homeserver does not know the user: nothing to confirm.
		return false, nil
	case err != nil:
		return false, fmt.Errorf("failed to ask the homeserver's admin API about an account: %w", err)
	}
	return resp.Deactivated, nil
}

// deactivationLoop checks every local user Custodian holds data about at start, then every
// privacy.deactivation.sweep_interval, if admin access to the homeserver is configured. The
// sweep at start catches accounts deactivated while Custodian was down or before admin access
// was configured.
func (svc *Service) deactivationLoop(ctx context.Context) {
	if svc.privacy.hsAdmin == nil {
		return
	}
	ticker := svc.clock().NewTicker(svc.cfg.Privacy.deactivationSweepInterval())
	defer ticker.Stop()
	for {
		_, erased, err := svc.sweepDeactivated(ctx)
		if err != nil && ctx.Err() == nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Deactivation sweep failed; will try again at the next interval")
		}
		// Every pass, also an empty one: a debug log shows the loop is alive.
		zerolog.Ctx(ctx).Debug().Int("erased", erased).Bool("failed", err != nil).Msg("Deactivation sweep pass finished")
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
	}
}

// sweepDeactivated asks the homeserver's admin API about every local user in the users table
// and erases those whose account is deactivated. It returns how many users it checked and
// erased. On PostgreSQL only one instance sweeps at a time. It stops at the first failed
// question: a wrong token would fail them all.
func (svc *Service) sweepDeactivated(ctx context.Context) (checked, erased int, err error) {
	if svc.privacy.hsAdmin == nil {
		return 0, 0, nil
	}
	start := time.Now()
	ran, err := privacy.WithSweepLock(ctx, svc.rawDB, "deactivation", func(ctx context.Context) error {
		var after id.UserID
		for {
			users, err := svc.db.Privacy().LocalUsers(ctx, svc.cfg.Homeserver.Domain, after, deactivationSweepPage)
			if err != nil {
				return err
			}
			if len(users) == 0 {
				return nil
			}
			after = users[len(users)-1]
			for _, user := range users {
				if svc.isOwnUser(user) {
					continue
				}
				checked++
				deactivated, err := svc.accountDeactivated(ctx, user)
				if err != nil {
					return err
				}
				if !deactivated {
					continue
				}
				if _, err = svc.engine.Erase(ctx, user, EraseRequest{Trigger: TriggerDeactivation}); err != nil {
					return err
				}
				erased++
			}
		}
	})
	if !ran {
		zerolog.Ctx(ctx).Debug().Msg("Another instance is sweeping for deactivated accounts")
		return 0, 0, nil
	}
	zerolog.Ctx(ctx).Info().Int("checked", checked).Int("erased", erased).Dur("duration", time.Since(start)).
		Msg("Swept for deactivated accounts")
	return checked, erased, err
}
