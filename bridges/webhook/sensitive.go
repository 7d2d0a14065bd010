package webhook

import (
	"context"
	"net/http"

	"maunium.net/go/mautrix"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
)

// mautrix logs every request body it sends ("req_body": at debug level when a request succeeds,
// at error level when it fails) unless the request is marked as sensitive content. The bridge's
// sends carry webhook message bodies, usernames, and in direct chats URLs with tokens and
// signing secrets, none of which may reach a log. These helpers make the same requests as
// mautrix's SendMessageEvent and SetProfileField, marked sensitive.

// sendSensitive sends a message event as intent without logging its content (see
// [appservice.SendMessageSensitive]); in an encrypted room it is encrypted, with the core's
// device, when the core's encryption is active. The intent joins the room first if needed (the
// bot invites it when the room requires an invite). An empty txnID gets a fresh one.
func sendSensitive(ctx context.Context, intent *mxas.IntentAPI, roomID id.RoomID, content *event.MessageEventContent, txnID string) (*mautrix.RespSendEvent, error) {
	if err := intent.EnsureJoined(ctx, roomID); err != nil {
		return nil, err
	}
	if txnID == "" {
		txnID = intent.TxnID()
	}
	return appservice.SendMessageSensitive(ctx, intent.Client, roomID, event.EventMessage, content, txnID)
}

// setProfileSensitive sets one of intent's profile fields ("displayname", "avatar_url") without
// logging the value. The intent must be registered.
func setProfileSensitive(ctx context.Context, intent *mxas.IntentAPI, field string, value any) error {
	_, err := intent.MakeFullRequest(ctx, mautrix.FullRequest{
		Method:           http.MethodPut,
		URL:              intent.BuildClientURL("v3", "profile", intent.UserID, field),
		RequestJSON:      map[string]any{field: value},
		SensitiveContent: true,
	})
	return err
}
