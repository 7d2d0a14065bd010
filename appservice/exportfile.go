package appservice

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/attachment"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/privacy"
)

// The export file that !export sends lives only as long as it is needed. It is always an
// encrypted attachment (AES-256-CTR with a SHA-256 hash, the Matrix attachment encryption), so
// the media repository holds ciphertext and the key is only in the message. Each file is tracked
// in as_export; when privacy.export_ttl passes, and before the user's data is erased, the
// message is redacted and, with admin access to the homeserver, the upload is deleted through
// Synapse's admin API. The engine keeps the schedule (privacy.Engine: the expiry loop, the
// withdrawal before an erasure); the core does the Matrix side (withdrawExport, through the
// engine's host).

// exportDB returns the queries on the tracked export files.
func (svc *Service) exportDB() *database.ExportQuery {
	return svc.db.Export()
}

// uploadExportFile encrypts data, uploads the ciphertext and records the upload in as_export
// as sent to user in roomID. It returns the m.file content that carries the file and its key,
// for [Service.sendExportFile]. The upload is recorded before its message is sent, so that even
// a file whose message failed is withdrawn at its expiry. A replayed command uploads again; the
// extra upload is recorded, and withdrawn with the first.
func (svc *Service) uploadExportFile(ctx context.Context, user id.UserID, roomID id.RoomID, fileName string, data []byte) (*event.MessageEventContent, error) {
	file := attachment.NewEncryptedFile()
	ciphertext := make([]byte, len(data))
	copy(ciphertext, data)
	file.EncryptInPlace(ciphertext)
	upload, err := svc.as.BotIntent().UploadMedia(ctx, mautrix.ReqUploadMedia{
		ContentBytes: ciphertext, ContentType: "application/octet-stream",
	})
	if err != nil {
		return nil, fmt.Errorf("failed to upload export: %w", err)
	}
	mxc := upload.ContentURI.CUString()
	if err = svc.db.User.Ensure(ctx, user); err != nil {
		return nil, fmt.Errorf("failed to record export file: %w", err)
	}
	now := svc.now()
	err = svc.exportDB().Put(ctx, &database.ExportFile{
		MXC: mxc, User: user, RoomID: roomID, CreatedAt: now, ExpiresAt: now.Add(svc.cfg.Privacy.exportTTL()),
	})
	if err != nil {
		return nil, err
	}
	return &event.MessageEventContent{
		MsgType:  event.MsgFile,
		Body:     fileName,
		FileName: fileName,
		File:     &event.EncryptedFileInfo{EncryptedFile: *file, URL: mxc},
		Info:     &event.FileInfo{MimeType: "application/json", Size: len(data)},
	}, nil
}

// sendExportFile sends content, made by [Service.uploadExportFile], to ce's sender through
// [Service.NotifyUser] (in the direct chat the command runs in, which becomes their management
// room), and records the message's room and event ID for the file's withdrawal. Its transaction
// ID derives from ce, so a replayed command sends it once.
func (svc *Service) sendExportFile(ctx context.Context, ce *CommandEvent, content *event.MessageEventContent) error {
	roomID, eventID, err := svc.NotifyUser(ctx, ce.Sender, Notice{Cause: string(ce.Event.ID), Purpose: "export-file", Content: content})
	if err != nil {
		return fmt.Errorf("failed to send export file: %w", err)
	}
	return svc.exportDB().SetEventID(ctx, content.File.URL, roomID, eventID)
}

// describeTTL writes an export TTL in words for users: "1 hour", "90 minutes".
func describeTTL(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return privacy.Plural(int64(d/time.Hour), "hour", "hours")
	case d%time.Minute == 0:
		return privacy.Plural(int64(d/time.Minute), "minute", "minutes")
	}
	return d.String()
}

// isPermanentHTTPError reports whether err is a homeserver answer that retrying will not change:
// a 4xx other than 429.
func isPermanentHTTPError(err error) bool {
	var httpErr mautrix.HTTPError
	if !errors.As(err, &httpErr) || httpErr.Response == nil {
		return false
	}
	code := httpErr.Response.StatusCode
	return code >= 400 && code < 500 && code != http.StatusTooManyRequests
}

// withdrawExport redacts the message carrying ef's key and, with admin access to the
// homeserver, deletes the upload from the media repository. It returns an error only for a
// failure worth retrying (the homeserver unreachable or failing); an answer that retrying
// cannot change (the bot no longer in the room, no admin rights) is logged and counts as done.
// It does not delete ef's row.
func (svc *Service) withdrawExport(ctx context.Context, ef *database.ExportFile) error {
	log := zerolog.Ctx(ctx)
	if ef.EventID != "" {
		_, err := svc.as.BotIntent().RedactEvent(ctx, ef.RoomID, ef.EventID, mautrix.ReqRedact{
			Reason: "Export file withdrawn",
			TxnID:  TxnIDFor(ef.EventID, "export-withdraw"),
		})
		switch {
		case err == nil:
		case isPermanentHTTPError(err):
			log.Warn().Err(err).Msg("The homeserver refused to redact an export file's message; its key stays in the room")
		default:
			return fmt.Errorf("failed to redact export message: %w", err)
		}
	}
	return svc.deleteExportMedia(ctx, ef.MXC)
}

// deleteExportMedia deletes mxc from the media repository through Synapse's admin API
// (DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}), if Custodian has admin access;
// without it, it does nothing. Media the homeserver no longer has counts as deleted.
func (svc *Service) deleteExportMedia(ctx context.Context, mxc id.ContentURIString) error {
	cli := svc.privacy.hsAdmin
	if cli == nil {
		return nil
	}
	uri, err := mxc.Parse()
	if err != nil {
		// Nothing Custodian uploaded has a malformed URI; there is nothing to delete.
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Export file has an invalid media URI; not deleting it")
		return nil
	}
	if cli.SetAppServiceUserID {
		// The promoted ghost must exist before it can make requests.
		if err = svc.intent(cli.UserID).EnsureRegistered(ctx); err != nil {
			return fmt.Errorf("failed to register the admin ghost: %w", err)
		}
	}
	_, err = cli.MakeRequest(ctx, http.MethodDelete, cli.BuildURL(mautrix.SynapseAdminURLPath{"v1", "media", uri.Homeserver, uri.FileID}), nil, nil)
	var httpErr mautrix.HTTPError
	switch {
	case err == nil, errors.Is(err, mautrix.MNotFound),
		errors.As(err, &httpErr) && httpErr.Response != nil && httpErr.Response.StatusCode == http.StatusNotFound:
		return nil
	case isPermanentHTTPError(err):
		zerolog.Ctx(ctx).Warn().Err(err).Msg("The homeserver's admin API refused to delete an export file; its ciphertext stays in the media repository")
		return nil
	default:
		return fmt.Errorf("failed to delete export media: %w", err)
	}
}
